"""Deep Retrieval on MovieLens-100k against brute force, ANN and the implicit library; then the scaling.

Part ``movielens`` (leave-last-out, rating >= 4 positive; the same examples and the same exclusion of
each user's earlier positives for every row; user input = the latest 50 earlier positives):

* popularity; a two-tower model (the same user tower as DR, an item embedding + bias) scored over all
  items (brute force); FAISS IVF over its vectors (``nprobe`` lists of ``nlist``); ``implicit``'s ALS
  (user factors recomputed from the history) and BPR, the library peers;
* DR for D in {2, 3} (K the smallest with K^D >= the number of items), J in {1, 3}, with and without the
  size penalty, each trained once with its reranker and served with B in {10, 20, 50}, with and without
  the reranker.

Every setting (learning rates, epochs, ALS factors, the penalty alpha) is chosen on the validation
positives (each user's one-before-last); the tables report the test positives (the last). The headline
compares the DR configuration chosen on validation among those scoring <= 20% of the items with the
brute-force two-tower, over ``--seeds`` training seeds, with a paired bootstrap over test users.

Part ``scaling``: synthetic catalogues (:mod:`reprlab.recsys.synthetic`, a known latent model) of
``--sizes`` items; brute-force two-tower, FAISS IVF and DR (D = 3, K^D ~ N, B = 50, reranker) trained
on the same examples; recall@20 (with the oracle's ceiling), items scored and time per 1,000 users;
a plot of cost against catalogue size with recall alongside.

Timings: median (and spread) of >= 3 passes of the recommender over the test users (inputs prebuilt),
one thread (``--threads``), under the shared lock.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/deep_retrieval.py       # MovieLens + scaling
    python bench/deep_retrieval.py --quick                                        # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import common
from reprlab.recsys.baselines import ImplicitPeer, IVFTwoTower, popularity_topk
from reprlab.recsys.data import ExampleCollate, load_leave_last_out
from reprlab.recsys.deep_retrieval import DeepRetrieval, DRModelConfig
from reprlab.recsys.metrics import evaluate
from reprlab.recsys.recipe import DeepRetrievalConfig, evaluate_model, fit
from reprlab.recsys.synthetic import SyntheticCatalogue
from reprlab.recsys.two_tower import TwoTower, TwoTowerConfig, brute_force_topk
from reprlab.train.loop import TrainConfig, train

NAME = "deep_retrieval"
HISTORY = 50


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(device=None, threads=1, append=False,
                                                              work_dir="/tmp/reprlab-bench-deep-retrieval")])
    p.add_argument("--parts", default="movielens,scaling", help="movielens, scaling or both (comma-separated)")
    p.add_argument("--data", type=Path, default=common.data_path("movielens_100k", check=False))
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the headline comparison")
    p.add_argument("--sizes", default="10000,100000,1000000", help="synthetic catalogue sizes")
    p.add_argument("--passes", type=int, default=3, help="timed passes (>= 3)")
    g = p.add_argument_group("grids and sizes (to fit a time budget; the defaults are the full run)")
    g.add_argument("--tt-grid", default="0.003:10:0,0.003:20:0,0.001:20:256,0.003:20:256,0.003:40:256",
                   help="two-tower settings tried on validation, lr:epochs:negatives (0 negatives: full softmax)")
    g.add_argument("--dr-schedules", default="0.003:10,0.003:20",
                   help="DR lr:epochs tried on validation (D=2, J=1, no penalty, B=20, reranker)")
    g.add_argument("--dr-shapes", default="2:1,2:3,3:1,3:3", help="DR shapes D:J (K: the smallest with K^D >= N)")
    g.add_argument("--dr-alphas", default="0.001,0.01,0.1", help="size-penalty weights tried on validation (and 0)")
    g.add_argument("--beams", default="10,20,50", help="B values served")
    g.add_argument("--item-budgets", default="", help="also serve under item budgets, as shares of the catalogue "
                   "(comma-separated, e.g. 0.2): a beam of --budget-beam paths, taken best first while their items fit")
    g.add_argument("--budget-beam", type=int, default=50, help="the beam the item budgets are served from")
    g.add_argument("--dr-em-stop", type=float, default=0.8,
                   help="share of DR's training steps after which the item->path mapping is frozen (the recipe's "
                        "--em-stop; 1: M-steps to the last step, as before 2026-12-04's round 4)")
    g.add_argument("--dr-rerank-tower", choices=("shared", "own", "both"), default="own",
                   help="DR's reranker has its own user tower ('own', the recipe's default) or reads the structure "
                        "model's ('shared', the only kind before 2026-12-05)")
    g.add_argument("--dr-em-explore", type=float, default=0.0,
                   help="the recipe's --em-explore for the MovieLens DR rows: the M-step also offers each item its "
                        "current paths, the least-used sibling of its best candidate and a far path (0: the paper's "
                        "M-step, the default; a tie on MovieLens validation, so not used for the headline)")
    g.add_argument("--scaling-examples", default="300000",
                   help="synthetic training examples: one number for every size, or one per size (comma-separated)")
    g.add_argument("--scaling-m-steps", type=int, default=0,
                   help="M-steps of DR's EM before --dr-em-stop on the synthetic catalogues (0: once per epoch, "
                        "which with 2 epochs and em_stop 0.8 is one M-step)")
    g.add_argument("--scaling-beams", default="50",
                   help="beams B served on the synthetic catalogues (the first one also chooses the setting)")
    g.add_argument("--scaling-explores", default="0",
                   help="--em-explore values tried on validation at the smallest synthetic size (with the alphas)")
    g.add_argument("--scaling-epochs", type=float, default=2, help="epochs on the synthetic examples")
    g.add_argument("--scaling-batch-size", type=int, default=1024,
                   help="batch size of both models on the synthetic catalogues (the dense optimiser step over the "
                        "item tables dominates at 1M items: fewer, larger batches)")
    g.add_argument("--scaling-alphas", default="0.001,0.01,0.1",
                   help="size-penalty weights tried on validation at the smallest synthetic size")
    args = common.parse(p, argv)
    if args.passes < common.MIN_PASSES:
        p.error(f"--passes {args.passes}: a timing takes at least {common.MIN_PASSES} passes")
    if args.quick:
        args.seeds, args.sizes = 1, "2000,8000"
        args.tt_grid, args.dr_schedules, args.dr_shapes, args.dr_alphas = "0.003:1:256", "0.003:1", "2:1", "0.01"
        args.beams, args.scaling_examples, args.scaling_epochs, args.scaling_alphas = "10,20", "20000", 1, "0.01"
        args.scaling_explores, args.scaling_beams, args.scaling_m_steps = "0,0.01", "10,20", 2
    try:
        args.tt_grid = [(float(a), float(e), int(n)) for a, e, n in _triples(args.tt_grid, 3)]
        args.dr_schedules = [(float(a), float(e)) for a, e in _triples(args.dr_schedules, 2)]
        args.dr_shapes = [(int(d), int(j)) for d, j in _triples(args.dr_shapes, 2)]
        args.dr_alphas = [float(a) for a in args.dr_alphas.split(",")]
        args.scaling_alphas = [float(a) for a in args.scaling_alphas.split(",")]
        args.scaling_explores = [float(e) for e in args.scaling_explores.split(",")]
        args.scaling_beams = [int(b) for b in args.scaling_beams.split(",")]
        sizes = args.sizes.split(",")
        examples = [int(e) for e in args.scaling_examples.split(",")]
        if len(examples) not in (1, len(sizes)):
            raise ValueError(f"--scaling-examples: give one number or one per size ({len(sizes)}), got {len(examples)}")
        args.scaling_examples = examples * len(sizes) if len(examples) == 1 else examples
        args.beams = [int(b) for b in args.beams.split(",")]
        args.item_budgets = [float(m) for m in args.item_budgets.split(",") if m]
    except ValueError as exc:
        p.error(f"a grid option is malformed ({exc}); see --help for the format")
    return args


def _triples(text: str, size: int) -> list[list[str]]:
    """``"a:b,c:d"`` -> [["a", "b"], ["c", "d"]], each of ``size`` fields."""
    out = [item.split(":") for item in text.split(",") if item.strip()]
    bad = [":".join(x) for x in out if len(x) != size]
    if bad or not out:
        raise ValueError(f"{text!r}: want comma-separated items of {size} colon-separated fields")
    return out


# ----------------------------------------------------------------------------- training


def fit_two_tower(data, work: Path, *, lr: float, epochs: float, seed: int, dim: int = 64, hidden: int = 128,
                  negatives: int = 0, batch_size: int = 256, user_input: str = "history", feature_dim: int = 0):
    torch.manual_seed(seed)
    model = TwoTower(TwoTowerConfig(num_items=data.num_items, user_input=user_input, feature_dim=feature_dim,
                                    dim=dim, hidden=hidden))
    collate = ExampleCollate(data, "train", HISTORY, negatives)
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    train(model, collate, collate, lambda m, b: m(b), TrainConfig(
        output_dir=str(work), lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=0.0, warmup_ratio=0.0,
        max_grad_norm=None, device="cpu", seed=seed, checkpoint_minutes=0, keep_checkpoints=1))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return model.eval(), time.perf_counter() - start


def fit_dr(data, work: Path, model_config: DRModelConfig, **settings):
    """DR trained by the recipe's ``fit`` (the EM step included) on any data object; (model, seconds, stats).
    ``settings`` are :class:`DeepRetrievalConfig` fields; ``rerank_tower`` among them also shapes the model."""
    if "rerank_tower" in settings:
        model_config = dataclasses.replace(model_config, rerank_tower=settings["rerank_tower"])
    torch.manual_seed(model_config.seed)
    model = DeepRetrieval(model_config)
    shutil.rmtree(work, ignore_errors=True)
    config = DeepRetrievalConfig(output_dir=str(work), data="(in memory)", history_length=HISTORY,
                                 depth=model_config.depth, width=model_config.width,
                                 paths_per_item=model_config.paths_per_item, seed=model_config.seed,
                                 device="cpu", checkpoint_minutes=0, keep_checkpoints=1, **settings)
    start = time.perf_counter()
    _, learner = fit(model, data, config)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return model.eval(), time.perf_counter() - start, learner.last_stats


def measure(recommend, data, split: str, passes: int, max_examples: int | None = None) -> dict:
    """Metrics of one pass and the median / spread of the seconds per 1,000 users over ``passes`` passes."""
    runs = [evaluate(recommend, data, split, history_length=HISTORY, max_examples=max_examples)
            for _ in range(passes)]
    seconds = [r["seconds_per_1000"] for r in runs]
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in runs[-1].items() if k != "seconds_per_1000"}
    median = statistics.median(seconds)
    out.update(seconds_per_1000=round(median, 4), spread=round((max(seconds) - min(seconds)) / median, 3))
    return out


def quality(recommend, data, split: str) -> dict:
    """One untimed pass (for choosing settings on validation)."""
    r = evaluate(recommend, data, split, history_length=HISTORY)
    return {k: round(r[k], 4) for k in ("recall@10", "recall@20", "recall@50", "ndcg@10", "items_scored")}


def dr_recommender(model, beam: int, rerank: bool, prior=None, budget: int | None = None):
    from reprlab.recsys.deep_retrieval import retrieve
    from reprlab.recsys.path_mapping import PathIndex, path_codes

    index = PathIndex(path_codes(model.item_paths, model.config.width), model.config.num_paths)

    def recommend(batch):
        x = model.encode(batch)
        r = model.rerank_input(batch, x) if rerank and model.config.reranker else None
        return retrieve(model, index, x, beam=beam, k=50, seen=batch.get("seen"), rerank=rerank, prior=prior,
                        rerank_x=r, budget=budget)

    return torch.no_grad()(recommend)


def brute(model):
    return torch.no_grad()(lambda batch: brute_force_topk(model, batch, 50))


def per_user_hits(recommend, data, split: str, k: int = 20) -> np.ndarray:
    """1 where the example's target is in the top k, else 0: (E,)."""
    from reprlab.recsys.metrics import target_ranks

    examples = data.examples(split)
    hits = []
    for s in range(0, len(examples), 256):
        rows = range(s, min(len(examples), s + 256))
        top, _ = recommend(data.batch(examples, rows, HISTORY))
        ranks = target_ranks(top[:, :k].numpy(), examples.targets[list(rows)])
        hits.append((ranks > 0).astype(np.float64))
    return np.concatenate(hits)


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mean(a) / mean(b) over users resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(rounds, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
    return [round(float(np.quantile(ratios, 0.025)), 4), round(float(np.quantile(ratios, 0.975)), 4)]


# ----------------------------------------------------------------------------- MovieLens


def movielens_baselines(data, args, work: Path) -> tuple[list[dict], dict, TwoTower]:
    rows, chosen = [], {}
    pop = data.popularity()
    rows.append({"method": "popularity", "setting": "training counts",
                 **measure(lambda b: popularity_topk(pop, b, 50), data, "test", args.passes)})
    grid = args.tt_grid
    val, trained = {}, {}
    for lr, epochs, negatives in grid:
        model, seconds = fit_two_tower(data, work / "two-tower", lr=lr, epochs=epochs, seed=0, negatives=negatives)
        trained[(lr, epochs, negatives)] = (model, seconds)
        val[(lr, epochs, negatives)] = quality(brute(model), data, "val")
        print(f"two-tower lr {lr} epochs {epochs} negatives {negatives}: val {val[(lr, epochs, negatives)]}",
              flush=True)
    lr, epochs, negatives = max(val, key=lambda k: val[k]["recall@20"])
    chosen["two_tower"] = {"lr": lr, "epochs": epochs, "negatives": negatives, "val": val[(lr, epochs, negatives)],
                           "grid": {f"lr={a} epochs={e} negatives={n}": v for (a, e, n), v in val.items()}}
    tt, seconds = trained[(lr, epochs, negatives)]  # seed 0: the grid's model is the one to report
    softmax = f"{negatives} sampled negatives" if negatives else "full softmax"
    rows.append({"method": "two-tower brute force", "setting": f"lr {lr}, {epochs:g} epochs, {softmax}",
                 "train_s": round(seconds, 1), **measure(brute(tt), data, "test", args.passes)})
    nlist = round(math.sqrt(data.num_items))
    ivf = IVFTwoTower(tt, nlist=nlist)
    for nprobe in (1, 2, 4, 8):
        rows.append({"method": "two-tower FAISS IVF", "setting": f"nlist {nlist}, nprobe {nprobe}",
                     **measure(lambda b, p=nprobe: ivf.topk(b, 50, p), data, "test", args.passes)})
    rows += implicit_rows(data, args, chosen)
    return rows, chosen, tt


def implicit_rows(data, args, chosen: dict) -> list[dict]:
    try:
        import implicit  # noqa: F401
    except ImportError:
        return [{"method": "implicit ALS/BPR", "setting": "missing: implicit is not installed"}]
    rows = []
    grids = {"als": [dict(factors=f, regularization=r, alpha=a, iterations=15) for f in (32, 64, 128)
                     for r in (0.01, 0.1) for a in (1.0, 10.0)],
             "bpr": [dict(factors=64, learning_rate=lr, regularization=0.01, iterations=100) for lr in (0.01, 0.05)]}
    if args.quick:
        grids = {k: [{**v[0], "iterations": 3}] for k, v in grids.items()}
    for kind, grid in grids.items():
        val = [(quality(lambda b, p=ImplicitPeer(kind, **g).fit(data): p.topk(b, 50), data, "val"), g) for g in grid]
        best_val, best = max(val, key=lambda t: t[0]["recall@20"])
        chosen[f"implicit_{kind}"] = {**best, "val": best_val}
        start = time.perf_counter()
        peer = ImplicitPeer(kind, **best).fit(data)
        seconds = time.perf_counter() - start
        setting = ", ".join(f"{k} {v}" for k, v in best.items())
        rows.append({"method": f"implicit {kind.upper()}", "setting": setting, "train_s": round(seconds, 1),
                     **measure(lambda b: peer.topk(b, 50), data, "test", args.passes)})
    return rows


def dr_grid(args) -> tuple[list[tuple[int, int]], list[float], list[tuple[float, float]], list[int]]:
    return args.dr_shapes, args.dr_alphas, args.dr_schedules, args.beams


def movielens_dr(data, args, work: Path, chosen: dict, models: dict) -> list[dict]:
    """The DR rows; ``models`` gets the seed-0 models by (D, J, alpha), for the headline."""
    shapes, alphas, schedules, beams = dr_grid(args)
    n = data.num_items
    base = dict(negatives=256, batch_size=256, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=None,
                em_stop=args.dr_em_stop, rerank_tower=args.dr_rerank_tower, em_explore=args.dr_em_explore)

    def model_config(depth, paths, seed=0):
        width = max(2, math.ceil(n ** (1.0 / depth) - 1e-9))
        return DRModelConfig(num_items=n, depth=depth, width=width, paths_per_item=paths, dim=64, hidden=128,
                             node_dim=16, seed=seed)

    def train_one(depth, paths, alpha, lr, epochs, seed=0):
        return fit_dr(data, work / "dr", model_config(depth, paths, seed), alpha=alpha, lr=lr, epochs=epochs, **base)

    # the learning rate and epochs, on validation, for D = 2, J = 1, no penalty (B = 20, reranker)
    val, first = {}, {}
    for lr, epochs in schedules:
        first[(lr, epochs)] = train_one(2, 1, 0.0, lr, epochs)
        val[(lr, epochs)] = quality(dr_recommender(first[(lr, epochs)][0], 20, True), data, "val")
        print(f"DR lr {lr} epochs {epochs}: val {val[(lr, epochs)]}", flush=True)
    lr, epochs = max(val, key=lambda k: val[k]["recall@20"])
    chosen["dr_schedule"] = {"lr": lr, "epochs": epochs, "grid": {f"lr={a} epochs={e}": v for (a, e), v in val.items()}}
    rows = []
    for depth, paths in shapes:
        trained = {}
        for alpha in [0.0, *alphas]:
            if (depth, paths, alpha) == (2, 1, 0.0):  # trained above with this schedule and seed
                model, seconds, stats = first[(lr, epochs)]
            else:
                model, seconds, stats = train_one(depth, paths, alpha, lr, epochs)
            models[(depth, paths, alpha)] = model
            trained[alpha] = (model, seconds, stats, quality(dr_recommender(model, 20, True), data, "val"))
            print(f"DR D={depth} J={paths} alpha={alpha}: val {trained[alpha][3]}, paths {stats}", flush=True)
        best = max(alphas, key=lambda a: trained[a][3]["recall@20"])
        chosen[f"dr_alpha_D{depth}_J{paths}"] = {"alpha": best, "val": {str(a): t[3] for a, t in trained.items()}}
        for alpha in (0.0, best):
            model, seconds, stats, _ = trained[alpha]
            served = [(b, None) for b in beams] + [(args.budget_beam, round(m * n)) for m in args.item_budgets]
            for beam, budget in served:
                for rerank in (True, False):
                    rec = dr_recommender(model, beam, rerank, prior=torch.from_numpy(data.popularity()).float(),
                                         budget=budget)
                    rows.append({"method": "deep retrieval", "D": depth, "K": model.config.width, "J": paths,
                                 "alpha": alpha, "B": beam, "budget": budget, "reranker": rerank,
                                 "train_s": round(seconds, 1),
                                 "path_max": stats["path_max"], "path_mean": round(stats["path_mean"], 2),
                                 "paths_empty": stats["paths_empty"], "val": quality(rec, data, "val"),
                                 **measure(rec, data, "test", args.passes)})
    return rows


def headline(data, args, work: Path, chosen: dict, dr_rows: list[dict], tt0: TwoTower, models: dict) -> dict:
    """The DR row chosen on validation among those scoring <= 20% of the items, against brute force, over seeds
    (seed 0: the models already trained with the chosen settings, ``tt0`` and ``models``)."""
    n = data.num_items
    eligible = [r for r in dr_rows if r["val"]["items_scored"] <= 0.2 * n]
    pick = max(eligible or dr_rows, key=lambda r: r["val"]["recall@20"])  # none eligible: the goal is not met
    tt_setting = chosen["two_tower"]
    base = dict(negatives=256, batch_size=256, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=None,
                em_stop=args.dr_em_stop, lr=chosen["dr_schedule"]["lr"], epochs=chosen["dr_schedule"]["epochs"],
                alpha=pick["alpha"], rerank_tower=args.dr_rerank_tower, em_explore=args.dr_em_explore)
    dr_hits, tt_hits, dr_recall, tt_recall, scored = [], [], [], [], []
    for seed in range(args.seeds):
        if seed == 0:
            tt, model = tt0, models[(pick["D"], pick["J"], pick["alpha"])]
        else:
            tt, _ = fit_two_tower(data, work / "two-tower", lr=tt_setting["lr"], epochs=tt_setting["epochs"],
                                  seed=seed, negatives=tt_setting["negatives"])
            config = DRModelConfig(num_items=n, depth=pick["D"], width=pick["K"], paths_per_item=pick["J"], seed=seed)
            model, _, _ = fit_dr(data, work / "dr", config, **base)
        print(f"headline seed {seed} trained", flush=True)
        rec = dr_recommender(model, pick["B"], pick["reranker"], prior=torch.from_numpy(data.popularity()).float(),
                             budget=pick.get("budget"))
        tt_hits.append(per_user_hits(brute(tt), data, "test"))
        dr_hits.append(per_user_hits(rec, data, "test"))
        tt_recall.append(float(tt_hits[-1].mean()))
        dr_recall.append(float(dr_hits[-1].mean()))
        scored.append(quality(rec, data, "test")["items_scored"])
    dr_mean, tt_mean = float(np.mean(dr_recall)), float(np.mean(tt_recall))
    return {"setting": {**{k: pick[k] for k in ("D", "K", "J", "alpha", "B", "reranker")},
                        "budget": pick.get("budget"), "em_stop": args.dr_em_stop, "rerank_tower": args.dr_rerank_tower,
                        "em_explore": args.dr_em_explore},
            "seeds": args.seeds,
            "dr_recall@20": [round(x, 4) for x in dr_recall], "two_tower_recall@20": [round(x, 4) for x in tt_recall],
            "dr_mean": round(dr_mean, 4), "two_tower_mean": round(tt_mean, 4), "ratio": round(dr_mean / tt_mean, 4),
            "ratio_95ci_users": bootstrap_ratio(np.mean(dr_hits, 0), np.mean(tt_hits, 0)),
            "items_scored": round(float(np.mean(scored)), 1), "items_scored_share": round(float(np.mean(scored)) / n, 4),
            "goal_met": bool(dr_mean >= 0.95 * tt_mean and np.mean(scored) <= 0.2 * n)}


def part_movielens(args) -> dict:
    data = load_leave_last_out(common.require(args.data, "MovieLens-100k"))
    work = args.work_dir / "movielens"
    rows, chosen, tt = movielens_baselines(data, args, work)
    models: dict = {}
    dr_rows = movielens_dr(data, args, work, chosen, models)
    return {"items": data.num_items, "users": data.num_users, "test_users": len(data.examples("test")),
            "train_pairs": len(data.examples("train")), "rows": rows + dr_rows, "chosen_on_validation": chosen,
            "headline": headline(data, args, work, chosen, dr_rows, tt, models)}


# ----------------------------------------------------------------------------- scaling


def part_scaling(args, save=None) -> dict:
    """The scaling points; ``save(part)`` is called after each size (the record so far). The size penalty alpha and
    ``em_explore`` are chosen together on validation at the smallest size (the best recall@20 among the settings
    scoring <= 20% of the items, as the MovieLens headline; all of them when none does) and kept for the larger
    ones."""
    sizes = [int(x) for x in args.sizes.split(",")]
    epochs = args.scaling_epochs
    batch = args.scaling_batch_size
    settings = dict(lr=3e-3, epochs=epochs, batch_size=batch, negatives=1024, weight_decay=0.0, warmup_ratio=0.0,
                    max_grad_norm=None, em_stop=args.dr_em_stop, rerank_tower=args.dr_rerank_tower)
    grid = [(a, e) for a in args.scaling_alphas for e in args.scaling_explores]
    points, chosen, grid_val = [], None, {}
    beam, *more_beams = args.scaling_beams
    for n, examples in zip(sizes, args.scaling_examples):
        cat = SyntheticCatalogue(num_items=n, train_examples=examples, eval_examples=1000 if args.quick else 2000,
                                 seed=0)
        work = args.work_dir / f"synthetic-{n}"
        oracle = cat.oracle_topk("test", 20)
        ceiling = float((oracle == cat.examples("test").targets[:, None]).any(1).mean())
        tt, tt_seconds = fit_two_tower(cat, work / "two-tower", lr=3e-3, epochs=epochs, seed=0, dim=32, hidden=128,
                                       negatives=1024, batch_size=batch, user_input="features",
                                       feature_dim=cat.feature_dim)
        depth = 3
        width = max(2, math.ceil(n ** (1.0 / depth) - 1e-9))
        config = DRModelConfig(num_items=n, depth=depth, width=width, paths_per_item=1, user_input="features",
                               feature_dim=cat.feature_dim, dim=32, hidden=128, node_dim=16)
        if args.scaling_m_steps:  # spread over the steps before the mapping freezes
            steps = math.ceil(examples / settings["batch_size"]) * epochs
            settings["em_every"] = max(1, int(steps * args.dr_em_stop / args.scaling_m_steps))
        if chosen is None:  # on validation, at the smallest size
            val, fitted = {}, {}
            for a, e in grid:
                fitted[a, e] = fit_dr(cat, work / "dr", config, alpha=a, em_explore=e, **settings)
                val[a, e] = quality(dr_recommender(fitted[a, e][0], beam, True), cat, "val")
                print(f"synthetic {n}: alpha {a} explore {e}: val {val[a, e]} paths {fitted[a, e][2]}", flush=True)
            eligible = [k for k in val if val[k]["items_scored"] <= 0.2 * n]  # MovieLens's budget, as a share
            chosen = max(eligible or val, key=lambda k: val[k]["recall@20"])
            grid_val = {f"alpha={a} explore={e}": {**v, "paths": fitted[a, e][2]} for (a, e), v in val.items()}
            dr, dr_seconds, stats = fitted.pop(chosen)
            fitted.clear()
        else:
            dr, dr_seconds, stats = fit_dr(cat, work / "dr", config, alpha=chosen[0], em_explore=chosen[1], **settings)
        nlist = int(math.sqrt(n))  # k-means on 256 x nlist vectors: minutes at 1M items on one core
        ivf = IVFTwoTower(tt, nlist=nlist)
        nprobe = max(1, round(nlist / 50))  # about 2% of the lists
        users = 1000
        point = {"items": n, "topics": cat.num_topics, "train_examples": examples, "epochs": epochs, "batch_size": batch,
                 "oracle_recall@20": round(ceiling, 4),
                 "dr_setting": {"D": depth, "K": width, "J": 1, "B": beam, "alpha": chosen[0], "em_explore": chosen[1],
                                "em_every": settings.get("em_every", 0), "reranker": True},
                 "dr_paths": stats, "train_s": {"two_tower": round(tt_seconds, 1), "dr": round(dr_seconds, 1)},
                 "brute_force": measure(brute(tt), cat, "test", args.passes, users),
                 "ivf": {"nlist": nlist, "nprobe": nprobe,
                         **measure(lambda b: ivf.topk(b, 50, nprobe), cat, "test", args.passes, users)},
                 "dr": measure(dr_recommender(dr, beam, True), cat, "test", args.passes, users),
                 "dr_beams": {str(b): measure(dr_recommender(dr, b, True), cat, "test", args.passes, users)
                              for b in more_beams}}
        for key in ("brute_force", "ivf", "dr"):  # recall on all test examples (timing used the first 1,000)
            fn = {"brute_force": brute(tt), "ivf": lambda b: ivf.topk(b, 50, nprobe),
                  "dr": dr_recommender(dr, beam, True)}[key]
            point[key]["recall@20_all"] = quality(fn, cat, "test")["recall@20"]
        for b in more_beams:
            point["dr_beams"][str(b)]["recall@20_all"] = quality(dr_recommender(dr, b, True), cat, "test")["recall@20"]
        print(f"synthetic {n}: {point}", flush=True)
        points.append(point)
        shutil.rmtree(work, ignore_errors=True)
        part = {"points": points, "chosen_on_validation_at": sizes[0], "grid_val": grid_val}
        if save is not None:
            save(part)
    return part


def plot(scaling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = scaling["points"]
    n = [p["items"] for p in pts]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, label in (("brute_force", "two-tower, brute force"), ("ivf", "two-tower, FAISS IVF (~2% of the lists)"),
                       ("dr", f"Deep Retrieval (D=3, B={pts[0]['dr_setting']['B']}, reranker)")):
        a.plot(n, [p[key]["seconds_per_1000"] for p in pts], "o-", label=label)
        b.plot(n, [p[key]["items_scored"] for p in pts], "o-", label=label)
        c.plot(n, [p[key]["recall@20_all"] for p in pts], "o-", label=label)
    for key in pts[0].get("dr_beams", {}):  # the other beams served
        rows, label = [p["dr_beams"][key] for p in pts], f"Deep Retrieval, B={key}"
        for ax, field in ((a, "seconds_per_1000"), (b, "items_scored"), (c, "recall@20_all")):
            ax.plot(n, [r[field] for r in rows], "o:", label=label)
    c.plot(n, [p["oracle_recall@20"] for p in pts], "k--", label="oracle (true model)")
    for ax, title in ((a, "seconds per 1,000 users (1 thread)"), (b, "items scored per user"),
                      (c, "recall@20 (test)")):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue size (items)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.set_yscale("log")
    b.set_yscale("log")
    c.set_ylim(0, 1)
    c.legend(fontsize=8)
    fig.suptitle("Deep Retrieval vs brute force on synthetic catalogues (known latent model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def _cells(r: dict, n: int) -> str:
    share = 100 * r["items_scored"] / n
    return (f"{r['recall@10']:.4f} | {r['recall@20']:.4f} | {r['recall@50']:.4f} | {r['ndcg@10']:.4f} | "
            f"{r['items_scored']:.0f} ({share:.1f}%) | {1000 * r['seconds_per_1000']:.0f} ({r['spread']:.2f})")


def tables(record: dict) -> str:
    """The markdown tables of a result record (pasted into bench/results/deep_retrieval.md)."""
    out = []
    ml = record.get("movielens")
    if ml:
        n = ml["items"]
        out += ["| method | setting | recall@10 | recall@20 | recall@50 | NDCG@10 | items scored / user | ms per 1,000 "
                "users (spread) | largest path |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ml["rows"]:
            if "recall@20" not in r:
                out.append(f"| {r['method']} | {r['setting']} | | | | | | | |")
                continue
            if r["method"] == "deep retrieval":
                budget = f" M={r['budget']}" if r.get("budget") else ""
                setting = (f"D={r['D']} K={r['K']} J={r['J']} alpha={r['alpha']:g} B={r['B']}{budget} "
                           f"{'reranker' if r['reranker'] else 'path probability'}")
                out.append(f"| DR | {setting} | {_cells(r, n)} | {r['path_max']} |")
            else:
                out.append(f"| {r['method']} | {r['setting']} | {_cells(r, n)} | |")
        h = ml["headline"]
        out += ["", f"Headline (test, {h['seeds']} seeds): DR {h['setting']} recall@20 {h['dr_mean']:.4f} "
                f"({h['dr_recall@20']}) vs brute-force two-tower {h['two_tower_mean']:.4f} ({h['two_tower_recall@20']}): "
                f"ratio {h['ratio']:.3f}, 95% interval over users {h['ratio_95ci_users']}; items scored "
                f"{h['items_scored']:.0f} ({100 * h['items_scored_share']:.1f}%); goal met: {h['goal_met']}", ""]
    sc = record.get("scaling")
    if sc:
        out += ["| items | training examples | method | recall@20 | oracle recall@20 | items scored / user | "
                "ms per 1,000 users (spread) | largest path |", "|---|---|---|---|---|---|---|---|"]
        for p in sc["points"]:
            for key, label in (("brute_force", "two-tower brute force"),
                               ("ivf", f"FAISS IVF nlist {p['ivf']['nlist']} nprobe {p['ivf']['nprobe']}"),
                               ("dr", "DR D={D} K={K} B={B} alpha={alpha:g} explore={explore:g}".format(
                                   explore=p["dr_setting"].get("em_explore", 0.0), **p["dr_setting"]))):
                r = p[key]
                largest = p["dr_paths"]["path_max"] if key == "dr" else ""
                out.append(f"| {p['items']:,} | {p['train_examples']:,} | {label} | {r['recall@20_all']:.4f} | "
                           f"{p['oracle_recall@20']:.4f} | {r['items_scored']:.0f} | "
                           f"{1000 * r['seconds_per_1000']:.0f} ({r['spread']:.2f}) | {largest} |")
            for key, r in p.get("dr_beams", {}).items():
                out.append(f"| {p['items']:,} | {p['train_examples']:,} | the same DR model, B={key} | "
                           f"{r['recall@20_all']:.4f} | {p['oracle_recall@20']:.4f} | {r['items_scored']:.0f} | "
                           f"{1000 * r['seconds_per_1000']:.0f} ({r['spread']:.2f}) | |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    args = options(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"movielens", "scaling"}:
        raise SystemExit(f"--parts: choose movielens, scaling or both, got {args.parts}")
    torch.manual_seed(0)
    path = common.result_path(NAME, args)
    record = {k: v for k, v in common.read_result(path).items() if k in ("movielens", "scaling")}
    record["settings"] = common.settings(args)
    stamp = {"command": common.command_line(argv), "date": time.strftime("%Y-%m-%d")}
    if "movielens" in parts:
        record["movielens"] = {**stamp, **part_movielens(args)}
        common.write_result(NAME, record, args, argv)  # kept if the scaling part is cut short
    if "scaling" in parts:
        def save(part: dict) -> None:
            record["scaling"] = {**stamp, **part}
            common.write_result(NAME, record, args, argv)
            plot(record["scaling"], path.with_name(path.stem + "_scaling.png"))

        save(part_scaling(args, save))
    written = common.write_result(NAME, record, args, argv)
    path.with_name(path.stem + "-tables.md").write_text(tables(written))


if __name__ == "__main__":
    main()
