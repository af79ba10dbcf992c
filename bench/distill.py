"""Distilling all-MiniLM-L6-v2 into a 3-layer student: none vs plain KD vs CKD vs SEED.

Teacher: all-MiniLM-L6-v2 (6 layers). Student: 3 of its layers, by default the 3 whose student
agrees best with the teacher (mean cosine of embeddings) on 256 unlabelled SciFact texts
(``--student auto:3``; ``--student layers:0,2,4`` takes fixed ones), used as is ("none": layers
taken, no training) or distilled with ``run_distillation`` on unlabelled text, the SciFact corpus and
queries (no qrels are read for training), with one budget for every method (same steps, batch,
length, learning rate, seed). Each model is evaluated by nDCG@10 on SciFact,
Cranfield and CISI (BEIR folders, qrels/test.tsv), and timed encoding the same SciFact documents;
speed and size are reported as ratios to the teacher.

    flock /tmp/reprlab-heavy.lock python bench/distill.py            # the recorded run (CPU)
    python bench/distill.py --device cuda --steps 600 --batch-size 64
    python bench/distill.py --quick                                  # smoke run: 3 steps, subsampled sets
    python bench/distill.py --steps 400 --ckd-layer-map taken --ckd-weights 1000,100,1000,100  # dev-chosen CKD
    python bench/distill.py --steps 400 --methods kd,ckd --student config:... \
        --trained kd=runs/kd --trained ckd=runs/ckd

``--trained METHOD=RUN`` evaluates a student already trained with this run's settings (say by
``bench/distill_dev.py``: training reads no qrels, so one training serves the dev and the test
evaluation) instead of training it again; the run folder's ``train_config.json`` must match field by field.

Loss weights (same for KD inside CKD): embedding cosine 1, in-batch score KL (scale 20) 1. CKD
weights were set so that each term starts at a magnitude of 0.1-0.6 next to the KD terms (pair
terms 100, triplet terms 10, within the 1-1000 range of the official per-task configs), the window
is the official 21 (``--ckd-weights`` / ``--ckd-layer-map`` change them; ``bench/distill_dev.py`` compares
settings on the SciFact train qrels); SEED uses the paper's temperatures (0.2 student, 0.01 teacher) and a
2048-entry queue. Nothing was tuned on a test split.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common

COLLECTIONS = ("scifact", "cranfield", "cisi")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(work_dir="/tmp/reprlab-bench-distill")])
    p.add_argument("--methods", default="kd,ckd,seed")
    p.add_argument("--student", default="auto:3", help="layers:0,2,4, or auto:3 = the 3 layers that agree best "
                   "with the teacher on the training texts")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-max-length", type=int, default=128)
    p.add_argument("--eval-max-length", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--speed-texts", type=int, default=256, help="SciFact documents timed per model")
    p.add_argument("--ckd-weights", default="100,10,100,10", help="wr_pair,wr_triplet,ltr_pair,ltr_triplet")
    p.add_argument("--ckd-layer-map", default=None,
                   help="student:teacher hidden-state pairs, e.g. 0:0,1:1,2:5,3:6; 'taken' pairs each taken layer "
                        "with the teacher state it came from (default: student state i with round(i * 6 / 3))")
    p.add_argument("--seed", type=int, default=0, help="training seed of every method (data order, fresh weights)")
    p.add_argument("--trained", action="append", default=[], metavar="METHOD=RUN",
                   help="take METHOD's student from the finished run folder RUN (RUN/model, RUN/train_config.json)")
    args = common.parse(p, argv)
    if args.quick:
        args.steps, args.batch_size, args.eval_max_length, args.speed_texts = 3, 8, 64, 32
    return args


def parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.encoder.parameters())
    embeddings = sum(p.numel() for p in model.encoder.embeddings.parameters())
    return total, total - embeddings


def check_trained(run: Path, config) -> Path:
    """``run/model`` after checking that the run was made with this distillation config (the training
    settings and the method's, as recorded in ``run/train_config.json``)."""
    from reprlab.errors import ConfigError
    from reprlab.train.recipe import run_differences

    if not (run / "model").is_dir():
        sys.exit(f"--trained {run}: no finished run there (needs {run / 'model'})")
    try:
        differ = run_differences(config, run)
    except ConfigError as exc:
        sys.exit(f"--trained {run}: {exc}")
    if differ:
        sys.exit(f"--trained {run}: made with other settings ({', '.join(differ)})")
    return run / "model"


def trained_runs(args) -> dict[str, Path]:
    """``--trained METHOD=RUN`` options as {method: run folder}."""
    trained = {}
    for item in args.trained:
        method, sep, folder = item.partition("=")
        if not sep or method not in args.methods.split(","):
            sys.exit(f"--trained {item!r}: give METHOD=RUN with METHOD one of --methods ({args.methods})")
        trained[method] = Path(folder)
    return trained


def choose_student(args, teacher, scifact_dir: Path) -> list | None:
    """With ``--student auto:N``, pick the N teacher layers that agree best with it on a sample of the
    unlabelled training texts and set ``args.student`` to them; returns the ranking (None otherwise)."""
    from reprlab.text.corpus import TextOptions, read_texts
    from reprlab.distill.students import select_layers

    if not args.student.startswith("auto:"):
        return None
    texts = read_texts([str(scifact_dir)], TextOptions(unit="line", queries=("train",)))  # what distillation reads
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in sorted(rng.choice(len(texts), size=32 if args.quick else 256, replace=False))]
    ranked = select_layers(teacher, sample, int(args.student.split(":")[1]), max_length=args.train_max_length)
    ranking = [[list(layers), round(score, 4)] for layers, score in ranked]
    args.student = "layers:" + ",".join(map(str, ranked[0][0]))
    print(f"[distill] student {args.student}; agreement with the teacher: {ranking[:6]}", file=sys.stderr)
    return ranking


def ckd_layer_map(args) -> list[list[int]] | None:
    """``--ckd-layer-map`` as [[student state, teacher state], ...]; 'taken' pairs each taken layer with its source."""
    if args.ckd_layer_map == "taken":  # state 0 (embeddings) with 0; taken layer l's output with teacher state l + 1
        if not args.student.startswith("layers:"):
            sys.exit("--ckd-layer-map taken needs a student of taken layers (layers:... or auto:N), "
                     f"not {args.student}")
        taken = [int(x) for x in args.student.split(":", 1)[1].split(",")]
        return [[0, 0]] + [[i + 1, layer + 1] for i, layer in enumerate(taken)]
    if args.ckd_layer_map:
        return [[int(x) for x in pair.split(":")] for pair in args.ckd_layer_map.split(",")]
    return None


def train_students(args, scifact_dir: Path, trained: dict[str, Path]) -> tuple[dict, dict]:
    """Distil (or take from ``--trained``) one student per method; ({method: encoder}, {method: seconds})."""
    from reprlab.distill.recipe import run_distillation
    from reprlab.encoder import SentenceEncoder

    students, train_seconds = {}, {}
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.time()
        config = common.distill_config(
            method, args.student, args.work_dir / method, scifact_dir, steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, max_length=args.train_max_length, device=args.device, seed=args.seed,
            max_texts=400 if args.quick else None, ckd_weights=args.ckd_weights.split(","),
            layer_map=ckd_layer_map(args))
        if method in trained:
            model_dir = check_trained(trained[method], config)
            print(f"[distill] {method}: trained student {model_dir}", file=sys.stderr)
        else:
            result = run_distillation(config)
            model_dir = result.model_dir
            train_seconds[method] = round(time.time() - t0, 1)
            print(f"[distill] {method}: {result.steps} steps in {train_seconds[method]} s, "
                  f"final loss {result.final_loss:.4f}", file=sys.stderr)
        students[method] = SentenceEncoder.from_pretrained(str(model_dir), max_length=args.eval_max_length)
        students[method].to(args.device)
    return students, train_seconds


def score_models(args, models: dict, datasets: dict, timing: dict, train_seconds: dict) -> list[dict]:
    """nDCG@10 on every collection, size and encode speed of every model, as ratios to the teacher (first)."""
    rows = []
    teacher = next(iter(models.values()))
    t_params, t_body = parameters(teacher)
    for name, model in models.items():
        model.eval()
        t0 = time.time()
        scores = {k: round(common.evaluate_dense(model, d, args.eval_batch_size)["ndcg_cut_10"], 4)
                  for k, d in datasets.items()}
        eval_s = time.time() - t0
        seconds = timing["teacher"]["median"] if model is teacher else timing["student"]["median"]
        total, body = parameters(model)
        rows.append({
            "model": name, "layers": model.encoder.config.num_layers, "params_m": round(total / 1e6, 2),
            "size_ratio": round(t_params / total, 2), "non_embedding_size_ratio": round(t_body / body, 2),
            "encode_s": round(seconds, 2), "speed_ratio": round(timing["teacher"]["median"] / seconds, 2),
            **{f"ndcg@10_{k}": v for k, v in scores.items()},
            "scifact_vs_teacher": None, "eval_s": round(eval_s, 1), "train_s": train_seconds.get(name),
        })
        print(f"[distill] evaluated {name} in {eval_s:.0f} s: {scores}", file=sys.stderr)
    for r in rows:
        r["scifact_vs_teacher"] = round(r["ndcg@10_scifact"] / rows[0]["ndcg@10_scifact"], 4)
    return rows


def markdown(rows: list[dict]) -> str:
    header = ("| model | layers | params (M) | size x | non-emb. size x | encode speed x | SciFact | Cranfield | CISI "
              "| SciFact / teacher |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} | {r['params_m']} | {r['size_ratio']} | "
                     f"{r['non_embedding_size_ratio']} | {r['speed_ratio']} | {r['ndcg@10_scifact']:.4f} | "
                     f"{r['ndcg@10_cranfield']:.4f} | {r['ndcg@10_cisi']:.4f} | {100 * r['scifact_vs_teacher']:.1f}% |")
    return "\n".join(lines)


def goal(rows: list[dict]) -> dict | None:
    """Does the best distilled student keep 95% of the teacher's SciFact score at 1.8x speed? CKD vs KD."""
    distilled = [r for r in rows if r["model"] in ("kd", "ckd", "seed")]
    if not distilled:
        return None
    best = max(distilled, key=lambda r: r["ndcg@10_scifact"])
    out = {"best": best["model"], "keeps_95pct": bool(best["scifact_vs_teacher"] >= 0.95),
           "speed_1.8x": bool(best["speed_ratio"] >= 1.8)}
    by = {r["model"]: r for r in rows}
    if "ckd" in by and "kd" in by:
        out["ckd_beats_kd_on_scifact"] = bool(by["ckd"]["ndcg@10_scifact"] > by["kd"]["ndcg@10_scifact"])
        out["ckd_beats_kd_on_mean"] = bool(np.mean([by["ckd"][f"ndcg@10_{c}"] for c in COLLECTIONS])
                                           > np.mean([by["kd"][f"ndcg@10_{c}"] for c in COLLECTIONS]))
    return out


def main(argv=None) -> dict:
    from reprlab.distill.students import build_student
    from reprlab.encoder import SentenceEncoder
    from reprlab.text.beir import doc_text, load_beir

    args = parse_args(argv)
    trained = trained_runs(args)
    torch.manual_seed(args.seed)
    started = time.time()
    if args.work_dir.exists():
        import shutil

        shutil.rmtree(args.work_dir)
    datasets = {name: load_beir(common.data_path(name, "beir"), split="test") for name in COLLECTIONS}
    if args.quick:
        datasets = {name: common.subsample(d, 10, 50) for name, d in datasets.items()}
    scifact_dir = common.data_path("scifact", "beir")
    speed_texts = [doc_text(d) for d in list(datasets["scifact"].corpus.values())[: args.speed_texts]]

    teacher = SentenceEncoder.from_pretrained("minilm", max_length=args.eval_max_length).to(args.device)
    layer_ranking = choose_student(args, teacher, scifact_dir)
    untrained = "none (layers taken)" if args.student.startswith("layers:") else "none (fresh)"
    models = {"teacher (MiniLM-L6)": teacher, untrained: build_student(teacher, args.student)}
    students, train_seconds = train_students(args, scifact_dir, trained)
    models.update(students)
    # students share one architecture: time the teacher and the untrained student on the same texts
    timing = common.encode_seconds({"teacher": teacher, "student": models[untrained]}, speed_texts,
                                   args.eval_batch_size)
    rows = score_models(args, models, datasets, timing, train_seconds)
    table = markdown(rows)
    print(table)
    reached = goal(rows)
    if reached:
        print(f"goal: {reached}")
    record = common.write_result("distill", {
        "benchmark": "distill", "device": args.device, "torch_threads": torch.get_num_threads(),
        "args": common.settings(args), "rows": rows, "goal": reached, "layer_ranking": layer_ranking,
        "encode_timing": {k: t.rounded() for k, t in timing.items()}, "table": table,
        "wall_s": round(time.time() - started, 1)}, args, argv)
    if args.append:
        common.append_benchmarks(common.section(
            "Distillation: 3-layer students of all-MiniLM-L6-v2 (`bench/distill.py`)", record, table))
    return record


if __name__ == "__main__":
    main()
