"""When do curricula work? Fashion-MNIST with label noise and short budgets, and dense retrieval on SciFact.

Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021. Part ``images``: a ResNet-8 (width x0.5,
14 x 14 inputs) on a share of the Fashion-MNIST training set with 0/20/40/60% symmetric label noise
and three budgets (full, 1/5, 1/25 of the steps), trained by ``reprlab train image-classifier`` with
four orderings: standard (plain epochs), curriculum (easy first by the loss-based c-score, 3-fold
retraining on the noisy labels), anti-curriculum (the reverse) and random (a random order with the
same pacing), each of the last three with several pacing settings, 3 seeds each. A dev slice of the
training images (clean labels, never trained on) picks each ordering's pacing; the 10k test images
are reported. The paper's findings this checks: (1) no benefit at the full budget without noise;
(2) pacing, not the order, explains most of any benefit (random-with-pacing ~ curriculum); (3)
curricula help under short budgets and noisy labels.

Part ``dpr`` (beyond the paper): ``train dpr``'s dual encoder (MiniLM, BM25 hard negatives) on
SciFact's training queries minus a dev slice, standard vs easy-to-hard by the BM25 rank of the
positive (curriculum), its reverse and random with the same pacing; nDCG@10 on the dev slice only
(SciFact's test qrels are not used). Each run is ``reprlab train dpr --curriculum-ordering ...``
(``--curriculum-pacing linear --curriculum-pacing-a 0.8 --curriculum-pacing-b 0.2``): the recipe scores
the pairs by BM25 itself and writes the ranks to ``OUT/scores.json``.

``--budget-min`` starts no new image run after a time; the seeds are the outer loop, so a cut costs the
last seeds' runs, and the result counts the runs done against ``runs_planned``.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/curricula.py --parts images --threads 2 \
        --budget-min 10.5                                                                # the recorded run
    python bench/curricula.py --quick                                                   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import common

ORDERINGS = ("standard", "curriculum", "anti-curriculum", "random")
NOISE = (0.0, 0.2, 0.4, 0.6)
BUDGETS = {"full": 1.0, "1/5": 0.2, "1/25": 0.04}
PACINGS = (("linear", 0.8, 0.2), ("root", 0.4, 0.1), ("exp", 0.8, 0.2))  # (function, a, b)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common.bench_options(work_dir="/tmp/reprlab-bench-curricula")])
    p.add_argument("--parts", nargs="+", choices=("images", "dpr"), default=["images", "dpr"])
    p.add_argument("--train-data", type=Path, default=common.data_path("fashion_mnist_train", check=False))
    p.add_argument("--test-data", type=Path, default=common.data_path("fashion_mnist_test", check=False))
    p.add_argument("--scifact", type=Path, default=common.data_path("scifact", "beir", check=False))
    p.add_argument("--train-fraction", type=float, default=1 / 8, help="share of the 60k training images used")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="dev slice of those (pacing choice)")
    p.add_argument("--steps", type=int, default=400, help="the full budget, in steps of --batch-size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, nargs="+", default=list(NOISE))
    p.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS),
                   help="the step budgets run (shares of --steps)")
    p.add_argument("--budget-min", type=float, default=None, help="start no new image run after this many minutes "
                   "(seeds are the outer loop, so a cut costs the last seeds; the runs done are reported)")
    p.add_argument("--dpr-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--dpr-epochs", type=float, default=1.0)
    p.add_argument("--dpr-passage-length", type=int, default=128)
    args = common.parse(p, argv)
    if args.quick:
        args.train_fraction, args.steps, args.seeds, args.noise = 1 / 60, 25, [0], [0.4]
        args.dpr_seeds, args.dpr_epochs, args.dpr_passage_length = [0], 1.0, 32
    return args


# ----------------------------------------------------------------------------- images


def _image_config(args, out: Path, noise: float, steps: int, seed: int, **extra):
    from reprlab.analysis.image_classifier import ImageClassifierConfig

    return ImageClassifierConfig(
        output_dir=str(out), data=str(args.train_data), test_data=str(args.test_data), depth=8, width=0.5,
        pool_input=2, train_fraction=args.train_fraction, dev_fraction=args.dev_fraction, label_noise=noise,
        data_seed=0, max_steps=steps, batch_size=args.batch_size, seed=seed, device=args.device,
        checkpoint_minutes=0.0, keep_checkpoints=1, **extra)


def scores_for(args, noise: float) -> Path:
    """The loss-based c-scores of the training images at this noise level (3-fold retraining, full budget)."""
    from reprlab.analysis.image_classifier import cscore, load_training_images
    from reprlab.io import atomic_write_json
    from reprlab.nn.resnet import ResNetConfig

    path = args.work_dir / f"scores-noise{noise:g}.json"
    if path.is_file():
        return path
    config = _image_config(args, args.work_dir / f"scoring-noise{noise:g}", noise, args.steps, 0)
    data = load_training_images(config)
    t0 = time.time()
    loop = config.loop_config("scoring")
    scores = cscore(ResNetConfig(depth=8, width=0.5, pool_input=2), data.x, data.y, loop, folds=3, seed=0)
    noisy = data.noisy
    atomic_write_json(path, {"scores": scores.tolist(), "higher": "harder", "seconds": round(time.time() - t0, 1),
                             "noisy_mean_rank": float(np.argsort(np.argsort(scores))[noisy].mean() / len(scores))
                             if noisy.any() else None})
    shutil.rmtree(args.work_dir / f"scoring-noise{noise:g}", ignore_errors=True)
    return path


def image_runs(args) -> list[dict]:
    """Every (noise, budget, ordering, pacing, seed) run; reuses finished ones (their results.json)."""
    from reprlab.analysis.image_classifier import run_image_classifier
    from reprlab.train.curriculum import CurriculumConfig

    rows, started = [], time.time()
    settings = [("standard", None)] + [(o, p) for o in ORDERINGS[1:] for p in PACINGS[:1 if args.quick else None]]
    total = len(args.noise) * len(args.budgets) * len(settings) * len(args.seeds)
    scores: dict = {}  # noise -> score file, computed when a run first needs it
    for seed in args.seeds:  # the outer loop: a time budget cuts whole seeds last
        for noise in args.noise:
            for budget, share in BUDGETS.items():
                if budget not in args.budgets:
                    continue
                steps = max(2, round(share * args.steps))
                for ordering, pacing in settings:
                    tag = "std" if pacing is None else f"{ordering}-{pacing[0]}-{pacing[1]:g}-{pacing[2]:g}"
                    out = args.work_dir / "runs" / f"noise{noise:g}-{budget.replace('/', 'of')}-{tag}-s{seed}"
                    done = out / "results.json"
                    if not done.is_file() and args.budget_min is not None and time.time() - started > 60 * args.budget_min:
                        continue
                    if not done.is_file():
                        if pacing is not None and noise not in scores:
                            scores[noise] = scores_for(args, noise)
                        curriculum = CurriculumConfig() if pacing is None else CurriculumConfig(
                            ordering=ordering, pacing=pacing[0], pacing_a=pacing[1], pacing_b=pacing[2],
                            scores=str(scores[noise]) if ordering in ("curriculum", "anti-curriculum") else None)
                        t0 = time.time()
                        shutil.rmtree(out, ignore_errors=True)
                        run_image_classifier(_image_config(args, out, noise, steps, seed, curriculum=curriculum))
                        result = json.loads(done.read_text())
                        result["seconds"] = round(time.time() - t0, 1)
                        done.write_text(json.dumps(result))
                        shutil.rmtree(out / "checkpoints", ignore_errors=True)
                    result = json.loads(done.read_text())
                    rows.append({"noise": noise, "budget": budget, "steps": steps, "ordering": ordering,
                                 "pacing": None if pacing is None else list(pacing), "seed": seed,
                                 "dev_accuracy": result["dev_accuracy"], "test_accuracy": result["test_accuracy"],
                                 "seconds": result.get("seconds")})
                    if len(rows) % 20 == 0 or len(rows) == total:
                        print(f"[{len(rows)}/{total}] noise {noise} {budget} {tag} s{seed}: test "
                              f"{result['test_accuracy']:.4f} ({time.time() - started:.0f} s)", flush=True)
    if len(rows) < total:
        print(f"{total - len(rows)} of {total} runs cut by the time budget", flush=True)
    return rows


def planned_runs(args) -> int:
    return len(args.noise) * len(args.budgets) * (1 + 3 * (1 if args.quick else len(PACINGS))) * len(args.seeds)


def _mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def select(rows: list[dict]) -> list[dict]:
    """Per (noise, budget, ordering): the pacing with the best mean dev accuracy; its test mean and sd."""
    table = []
    keys = sorted({(r["noise"], r["budget"]) for r in rows}, key=lambda k: (k[0], -BUDGETS[k[1]]))
    for noise, budget in keys:
        for ordering in ORDERINGS:
            cands = {}
            for r in rows:
                if (r["noise"], r["budget"], r["ordering"]) == (noise, budget, ordering):
                    cands.setdefault(json.dumps(r["pacing"]), []).append(r)
            if not cands:
                continue
            best = max(cands, key=lambda p: statistics.mean(r["dev_accuracy"] for r in cands[p]))
            test = _mean_sd([r["test_accuracy"] for r in cands[best]])
            every = {p: round(statistics.mean(r["test_accuracy"] for r in rs), 4) for p, rs in cands.items()}
            table.append({"noise": noise, "budget": budget, "ordering": ordering, "pacing": json.loads(best),
                          "dev": round(statistics.mean(r["dev_accuracy"] for r in cands[best]), 4),
                          "test": round(test[0], 4), "test_sd": round(test[1], 4), "seeds": len(cands[best]),
                          "test_by_pacing": every})
    return table


def image_findings(table: list[dict]) -> dict:
    """Differences in test accuracy (points) against standard, and whether they exceed 2 seed sd's."""
    at = {(t["noise"], t["budget"], t["ordering"]): t for t in table}
    out = {}
    for (noise, budget, ordering), t in at.items():
        if ordering == "standard":
            continue
        std = at[(noise, budget, "standard")]
        gap = t["test"] - std["test"]
        band = 2 * max(t["test_sd"], std["test_sd"])
        verdict = "one seed: no verdict" if min(t["seeds"], std["seeds"]) < 2 else \
            "tie" if abs(gap) <= band else ("better" if gap > 0 else "worse")
        out[f"noise {noise:g}, {budget}, {ordering}"] = {"minus_standard": round(100 * gap, 2), "verdict": verdict}
    return out


def plot_images(table: list[dict], path: Path) -> None:
    from reprlab.errors import require

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({t["noise"] for t in table})
    budgets = [b for b in BUDGETS if any(t["budget"] == b for t in table)]
    fig, axes = plt.subplots(len(noises), len(budgets), figsize=(3.3 * len(budgets), 2.6 * len(noises)),
                             squeeze=False)
    colours = {"standard": "0.5", "curriculum": "tab:blue", "anti-curriculum": "tab:red", "random": "tab:green"}
    for i, noise in enumerate(noises):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            cells = [t for t in table if t["noise"] == noise and t["budget"] == budget]
            if not cells:  # a setting the run left out
                ax.axis("off")
                continue
            ax.bar(range(len(cells)), [100 * c["test"] for c in cells], yerr=[100 * c["test_sd"] for c in cells],
                   color=[colours[c["ordering"]] for c in cells], capsize=3)
            low = min(100 * c["test"] for c in cells)
            ax.set_ylim(max(0, low - 8), min(100, max(100 * c["test"] for c in cells) + 3))
            ax.set_xticks(range(len(cells)), [c["ordering"].replace("-curriculum", "") for c in cells], fontsize=7)
            ax.set_title(f"noise {noise:.0%}, budget {budget}", fontsize=8)
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    fig.suptitle("Fashion-MNIST: orderings (pacing chosen on dev), mean and sd over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- dense retrieval


def dpr_part(args) -> dict:
    """DPR on SciFact with and without a curriculum by the BM25 rank of the positive; dev nDCG@10.

    Each run is ``reprlab train dpr`` (``run_dpr``) with ``--curriculum-ordering``: what a user runs."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.retrieval.dual_encoder import DualEncoder
    from reprlab.retrieval.pairs import dev_queries
    from reprlab.text.beir import BeirDataset, load_beir
    from reprlab.train.curriculum import CurriculumConfig

    folder = common.require(args.scifact, "SciFact (BEIR layout)")
    if args.quick:
        folder = common.write_subsample(folder, args.work_dir / "scifact-quick", {"train": 60}, 300)
    data = load_beir(folder, split="train")
    dev = dev_queries(data, 0.2)
    dev_data = BeirDataset(data.corpus, {q: data.queries[q] for q in dev}, {q: data.qrels[q] for q in dev})
    zero_shot = DualEncoder.from_pretrained("minilm").query_encoder
    zero_shot.max_length = args.dpr_passage_length
    rows = [{"ordering": "zero-shot minilm", "seed": None,
             "ndcg_cut_10": round(common.evaluate_dense(zero_shot, dev_data)["ndcg_cut_10"], 4)}]
    steps, difficulty = None, None
    for ordering in ORDERINGS:
        for seed in args.dpr_seeds:
            out = args.work_dir / "dpr" / f"{ordering}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            config = DprConfig(
                data=str(folder), output_dir=str(out), dev_fraction=0.2, num_negatives=1, mine_depth=30,
                query_max_length=32, passage_max_length=args.dpr_passage_length, epochs=args.dpr_epochs,
                batch_size=16 if args.quick else 32, lr=2e-5, device=args.device, checkpoint_minutes=0.0, seed=seed,
                curriculum=CurriculumConfig(ordering=ordering, pacing="linear", pacing_a=0.8, pacing_b=0.2))
            t0 = time.time()
            result = run_dpr(config)
            seconds = time.time() - t0
            train_seconds = result.metrics[-1]["elapsed"]  # the loop's own clock, without data loading and mining
            steps = result.steps
            if (out / "scores.json").is_file():  # the BM25 rank of each pair's positive (curriculum, anti)
                difficulty = json.loads((out / "scores.json").read_text())["scores"]
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            model = SentenceEncoder.from_pretrained(result.model_dir)
            model.max_length = args.dpr_passage_length  # as trained (and as zero-shot above)
            score = common.evaluate_dense(model, dev_data)["ndcg_cut_10"]
            rows.append({"ordering": ordering, "seed": seed, "ndcg_cut_10": round(score, 4),
                         "train_seconds": round(train_seconds, 1), "run_seconds": round(seconds, 1),
                         "model": str(result.model_dir)})
            print(f"dpr {ordering} s{seed}: dev nDCG@10 {score:.4f} ({train_seconds:.0f} s training)", flush=True)
    return {"pairs": len(difficulty), "dev_queries": len(dev), "steps": steps, "rows": rows,
            "median_bm25_rank_of_positive": float(np.median(difficulty))}


# ----------------------------------------------------------------------------- report


def markdown(table, found, dpr, args) -> str:
    lines = []
    if table:
        lines += [f"ResNet-8 x0.5 (14 x 14) on {args.train_fraction:.3g} of the training images minus a "
                  f"{args.dev_fraction:.0%} dev slice; full budget {args.steps} steps of {args.batch_size}; seeds "
                  f"{args.seeds}; pacings {[list(p) for p in PACINGS]} (chosen per ordering on dev); test accuracy on "
                  "the 10k test images, mean (sd).", "",
                  "| noise | budget | standard | curriculum | anti-curriculum | random (pacing only) |",
                  "|---|---|---|---|---|---|"]
        cells = {(t["noise"], t["budget"], t["ordering"]): t for t in table}
        for noise in sorted({t["noise"] for t in table}):
            for budget in BUDGETS:
                if (noise, budget, "standard") not in cells:
                    continue
                row = [f"{100 * cells[(noise, budget, o)]['test']:.2f} ({100 * cells[(noise, budget, o)]['test_sd']:.2f})"
                       if (noise, budget, o) in cells else "" for o in ORDERINGS]
                lines.append(f"| {noise:.0%} | {budget} | " + " | ".join(row) + " |")
        verdicts = {}
        for key, v in found.items():
            verdicts.setdefault(v["verdict"], []).append(key)
        lines += ["", "Against standard (a gap within 2 seed sd's is a tie): " +
                  "; ".join(f"{k}: {len(v)}" for k, v in sorted(verdicts.items()))]
    if dpr:
        by = {}
        for r in dpr["rows"]:
            by.setdefault(r["ordering"], []).append(r["ndcg_cut_10"])
        lines += ["", f"DPR on SciFact ({dpr['pairs']} training pairs, {dpr['steps']} steps, dev slice of "
                  f"{dpr['dev_queries']} queries): dev nDCG@10, mean over seeds " + ", ".join(
                      f"{o} {statistics.mean(v):.4f}" + (f" (sd {statistics.stdev(v):.4f})" if len(v) > 1 else "")
                      for o, v in by.items())]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows, table, found, figures, dpr = [], [], {}, [], None
    if "images" in args.parts:
        common.require(args.train_data, "the Fashion-MNIST training set")
        rows = image_runs(args)
        table = select(rows)
        found = image_findings(table)
        path = common.RESULTS / f"curricula{'-quick' if args.quick else ''}.png"
        if table:
            plot_images(table, path)
            figures.append(str(path.relative_to(common.REPO)))
    if "dpr" in args.parts:
        dpr = dpr_part(args)
    text = markdown(table, found, dpr, args)
    print(text)
    scores = {p.name: json.loads(p.read_text()).get("noisy_mean_rank") for p in sorted(args.work_dir.glob("scores-*"))}
    record = common.write_result("curricula", {
        "benchmark": "curricula", "args": common.settings(args), "torch_threads": torch.get_num_threads(),
        "runs": rows, "runs_planned": planned_runs(args) if "images" in args.parts else 0, "selected": table, "findings": found, "dpr": dpr, "figures": figures, "table": text,
        "noisy_examples_mean_difficulty_rank": scores, "wall_s": round(time.time() - started, 1)}, args, argv)
    if args.append:
        common.append_benchmarks(common.section("When do curricula work? (`bench/curricula.py`)", record, text))
    return record


if __name__ == "__main__":
    main()
