"""Why Deep Retrieval loses recall at a small share of items scored: the beam or the reranker? (validation only)

For one DR setting (default: the headline's D=3, K=12, J=1, alpha 0.01) and some training variants
(``--variants``), on MovieLens-100k's **validation** positives (leave-last-out, as ``bench/deep_retrieval.py``),
for each beam B:

* ``coverage``: the share of validation targets that lie on the beam's paths (the most any reranker can
  reach at that B);
* ``dr``: DR's recall@20 (its reranker over the beam's items, the served output);
* ``two_tower_on_beam``: the brute-force two-tower's recall@20 when it may only rank the same beam items
  (is DR's reranker worse than the two-tower on the same candidates?);
* ``reranker_all`` / ``two_tower_all``: both rankers over all items (no beam);
* ``two_tower_top_m``: the share of targets in the two-tower's own top M, M = the user's number of beam
  items (what an ideal candidate set of the same size would cover);
* ``covered_dr`` / ``covered_two_tower``: recall@20 of the two rankers among the covered targets only.

The two-tower is trained once with the setting chosen on validation in ``bench/deep_retrieval.py``
(lr 0.003, 20 epochs, 256 sampled negatives). Writes ``bench/results/deep_retrieval_diagnose.json``.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/deep_retrieval_diagnose.py
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

import common
from deep_retrieval import HISTORY, fit_dr, fit_two_tower
from reprlab.recsys.data import load_leave_last_out
from reprlab.recsys.deep_retrieval import DRModelConfig, beam_candidates
from reprlab.recsys.path_mapping import PathIndex, path_codes, path_statistics
from reprlab.train.recipe import read_metrics

NAME = "deep_retrieval_diagnose"


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(device=None, threads=1, append=False,
                                                              work_dir="/tmp/reprlab-bench-dr-diagnose")])
    p.add_argument("--data", default=str(common.data_path("movielens_100k", check=False)))
    p.add_argument("--shape", default="3:1", help="D:J")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beams", default="10,20")
    p.add_argument("--budgets", default="", help="item budgets (items per user, comma-separated) served from a beam "
                   "of --budget-beam paths: paths best first while their items fit (reported as 'B<beam>/M<budget>')")
    p.add_argument("--budget-beam", type=int, default=50)
    p.add_argument("--variants", default='{"baseline": {}}',
                   help="JSON object: variant name -> DeepRetrievalConfig overrides (e.g. {\"em_stop\": 0.8})")
    args = common.parse(p, argv)
    if args.quick:
        args.epochs = 1
    args.variants = json.loads(args.variants)
    args.beams = [int(b) for b in args.beams.split(",")]
    args.budgets = [int(m) for m in args.budgets.split(",") if m]
    return args


def _ranks(scores: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among the allowed items (U, N); 0 where the target is not allowed."""
    s = scores.masked_fill(~allowed, float("-inf"))
    target = s.gather(1, targets[:, None])  # (U, 1)
    rank = (s > target).sum(1) + 1
    return torch.where(allowed.gather(1, targets[:, None])[:, 0], rank, torch.zeros_like(rank))


@torch.no_grad()
def diagnose(dr, tt, data, beams: list[int], budgets: list[int] = (), budget_beam: int = 50) -> dict:
    examples = data.examples("val")
    batch = data.batch(examples, range(len(examples)), HISTORY)
    n, targets = data.num_items, batch["targets"]
    u = len(targets)
    seen = torch.zeros(u, n + 1, dtype=torch.bool)
    seen.scatter_(1, batch["seen"], True)
    unseen = ~seen[:, 1:]  # (U, N) items the user may be recommended
    x = dr.encode(batch)
    rerank = dr.rerank_scores(dr.rerank_input(batch, x), torch.arange(n).expand(u, n))  # (U, N)
    tower = tt.query_matrix(batch) @ tt.item_matrix().T  # (U, N)
    everything = _ranks(rerank, targets, unseen), _ranks(tower, targets, unseen)
    out = {"reranker_all": float(((everything[0] > 0) & (everything[0] <= 20)).float().mean()),
           "two_tower_all": float(((everything[1] > 0) & (everything[1] <= 20)).float().mean()), "beams": {}}
    index = PathIndex(path_codes(dr.item_paths, dr.config.width), dr.config.num_paths)
    served = [(str(b), b, None) for b in beams] + [(f"B{budget_beam}/M{m}", budget_beam, m) for m in budgets]
    for key, beam, budget in served:
        cand, _, counts = beam_candidates(dr, index, x, beam, budget)  # (U, M)
        on_beam = torch.zeros(u, n + 1, dtype=torch.bool)
        on_beam.scatter_(1, cand + 1, True)  # -1 padding lands in column 0
        allowed = on_beam[:, 1:] & unseen
        covered = allowed.gather(1, targets[:, None])[:, 0]
        r_dr, r_tt = _ranks(rerank, targets, allowed), _ranks(tower, targets, allowed)
        hit_dr, hit_tt = (r_dr > 0) & (r_dr <= 20), (r_tt > 0) & (r_tt <= 20)
        top_m = everything[1]  # the two-tower's rank over all unseen items, against M = allowed items
        m = allowed.sum(1)
        out["beams"][key] = {
            "items_scored": float(counts.float().mean()), "share_scored": float(counts.float().mean()) / n,
            "coverage": float(covered.float().mean()), "dr": float(hit_dr.float().mean()),
            "two_tower_on_beam": float(hit_tt.float().mean()),
            "two_tower_top_m": float(((top_m > 0) & (top_m <= m)).float().mean()),
            "covered_dr": float(hit_dr[covered].float().mean()) if covered.any() else 0.0,
            "covered_two_tower": float(hit_tt[covered].float().mean()) if covered.any() else 0.0}
    return {k: ({b: {kk: round(vv, 4) for kk, vv in v.items()} for b, v in val.items()} if isinstance(val, dict)
                else round(val, 4)) for k, val in out.items()}


def main(argv=None) -> None:
    args = options(argv)
    data = load_leave_last_out(common.require(args.data, "MovieLens-100k"))
    work = args.work_dir
    tt, _ = fit_two_tower(data, work / "two-tower", lr=0.003, epochs=args.epochs, seed=args.seed, negatives=256)
    depth, paths = (int(v) for v in args.shape.split(":"))
    width = max(2, math.ceil(data.num_items ** (1.0 / depth) - 1e-9))
    base = dict(negatives=256, batch_size=256, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=None, lr=0.003,
                epochs=args.epochs, alpha=args.alpha, log_every=1)  # every M-step logged
    record = {"setting": {"D": depth, "K": width, "J": paths, "alpha": args.alpha, "epochs": args.epochs,
                          "seed": args.seed}, "variants": {}}
    for name, overrides in args.variants.items():
        config = DRModelConfig(num_items=data.num_items, depth=depth, width=width, paths_per_item=paths,
                               seed=args.seed)
        dr, seconds, stats = fit_dr(data, work / "dr", config, **{**base, **overrides})
        m_steps = [r for r in read_metrics(work / "dr") if "paths_changed" in r]
        result = diagnose(dr, tt, data, args.beams, args.budgets, args.budget_beam)
        result.update(overrides=overrides, train_s=round(seconds, 1), path_stats=stats,
                      final_paths=path_statistics(path_codes(dr.item_paths, width), width ** depth),
                      m_steps=[{"step": r.get("step"), "paths_changed": round(r["paths_changed"], 4),
                                "path_max": r["path_max"], "paths_used": round(r["paths_used"], 4)} for r in m_steps],
                      total_steps=max((r.get("step", 0) for r in read_metrics(work / "dr")), default=0))
        record["variants"][name] = result
        print(name, json.dumps({k: v for k, v in result.items() if k != "m_steps"}), flush=True)
        print("  last M-steps", result["m_steps"][-3:], flush=True)
    common.write_result(NAME, record, args, argv)


if __name__ == "__main__":
    main()
