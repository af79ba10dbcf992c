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
    python bench/distill.py --quick                                  # smoke run: minutes, subsampled
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
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reprlab.io import atomic_write_json
from reprlab.logs import machine_summary

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
COLLECTIONS = ("scifact", "cranfield", "cisi")


def subsample(data, n_queries: int, n_extra_docs: int, seed: int = 0):
    """A small version of a BEIR data set for smoke runs: some judged queries, their documents + others."""
    from reprlab.text.beir import BeirDataset

    rng = np.random.default_rng(seed)
    qids = sorted(data.judged_queries())
    qids = [qids[i] for i in sorted(rng.choice(len(qids), size=min(n_queries, len(qids)), replace=False))]
    docs = {d for q in qids for d in data.qrels[q] if d in data.corpus}
    others = [d for d in sorted(data.corpus) if d not in docs]
    docs |= {others[i] for i in rng.choice(len(others), size=min(n_extra_docs, len(others)), replace=False)}
    return BeirDataset(corpus={d: data.corpus[d] for d in sorted(docs)},
                       queries={q: data.queries[q] for q in qids}, qrels={q: data.qrels[q] for q in qids})


def evaluate(model, datasets: dict, batch_size: int) -> dict[str, float]:
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.pipeline import evaluate_retriever

    scores = {}
    for name, data in datasets.items():
        retriever = DenseRetriever(model, batch_size=batch_size)
        retriever.index_corpus(data.corpus, show_progress=False)
        scores[name] = round(evaluate_retriever(retriever, data)["ndcg_cut_10"], 4)
    return scores


def encode_seconds(models: dict, texts: list[str], batch_size: int, rounds: int = 3) -> dict[str, float]:
    """Best-of-``rounds`` time to encode ``texts``, models interleaved so load changes hit all alike."""
    for model in models.values():
        model.encode(texts[:batch_size], batch_size=batch_size, show_progress=False)  # warm-up
    best = {name: float("inf") for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.encode(texts, batch_size=batch_size, show_progress=False)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.encoder.parameters())
    embeddings = sum(p.numel() for p in model.encoder.embeddings.parameters())
    return total, total - embeddings


def check_trained(run: Path, config) -> Path:
    """``run/model`` after checking that ``run/train_config.json`` records the same distillation settings."""
    import dataclasses
    import json

    record = run / "train_config.json"
    if not (run / "model").is_dir() or not record.is_file():
        sys.exit(f"--trained {run}: no finished run there (needs {run / 'model'} and {record})")
    saved = json.loads(record.read_text()).get("extra", {})
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as in the saved file
    differ = [k for k in wanted if k != "output_dir" and saved.get(k) != wanted[k]]
    if differ:
        sys.exit(f"--trained {run}: {record} differs from this run in " +
                 ", ".join(f"{k} ({saved.get(k)!r} there, {wanted[k]!r} here)" for k in differ))
    return run / "model"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, subsampled collections")
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
    p.add_argument("--work-dir", default="/tmp/reprlab-bench-distill")
    p.add_argument("--trained", action="append", default=[], metavar="METHOD=RUN",
                   help="take METHOD's student from the finished run folder RUN (RUN/model, RUN/train_config.json)")
    p.add_argument("--output", default=None, help="JSON path (default bench/results/distill[-quick].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.eval_max_length, args.speed_texts = 3, 8, 64, 32

    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import KDConfig
    from reprlab.distill.recipe import DistillConfig, read_distill_texts, run_distillation
    from reprlab.distill.seed import SEEDConfig
    from reprlab.distill.students import build_student, select_layers
    from reprlab.encoder import SentenceEncoder
    from reprlab.text.beir import doc_text
    from reprlab.text.beir import load_beir

    trained = {}
    for item in args.trained:
        method, sep, folder = item.partition("=")
        if not sep or method not in args.methods.split(","):
            sys.exit(f"--trained {item!r}: give METHOD=RUN with METHOD one of --methods ({args.methods})")
        trained[method] = Path(folder)
    torch.manual_seed(args.seed)
    started = time.time()
    work = Path(args.work_dir)
    if work.exists():
        shutil.rmtree(work)
    datasets = {name: load_beir(DATA / name / "beir", split="test") for name in COLLECTIONS}
    if args.quick:
        datasets = {name: subsample(d, 20, 100) for name, d in datasets.items()}
    scifact_dir = DATA / "scifact" / "beir"
    speed_texts = [doc_text(d) for d in list(datasets["scifact"].corpus.values())[: args.speed_texts]]

    teacher = SentenceEncoder.from_pretrained("minilm", max_length=args.eval_max_length).to(args.device)
    layer_ranking = None
    if args.student.startswith("auto:"):  # choose the layers once, on a sample of the unlabelled training texts
        texts = read_distill_texts([str(scifact_dir)])
        rng = np.random.default_rng(0)
        sample = [texts[i] for i in sorted(rng.choice(len(texts), size=32 if args.quick else 256, replace=False))]
        ranked = select_layers(teacher, sample, int(args.student.split(":")[1]), max_length=args.train_max_length)
        layer_ranking = [[list(layers), round(score, 4)] for layers, score in ranked]
        args.student = "layers:" + ",".join(map(str, ranked[0][0]))
        print(f"[distill] student {args.student}; agreement with the teacher: {layer_ranking[:6]}", file=sys.stderr)
    untrained = "none (layers taken)" if args.student.startswith("layers:") else "none (fresh)"
    models = {"teacher (MiniLM-L6)": teacher, untrained: build_student(teacher, args.student)}
    ckd_weights = [float(x) for x in args.ckd_weights.split(",")]
    layer_map = None
    if args.ckd_layer_map == "taken":  # state 0 (embeddings) with 0; taken layer l's output with teacher state l + 1
        if not args.student.startswith("layers:"):
            sys.exit("--ckd-layer-map taken needs a student of taken layers (layers:... or auto:N), "
                     f"not {args.student}")
        taken = [int(x) for x in args.student.split(":", 1)[1].split(",")]
        layer_map = [[0, 0]] + [[i + 1, layer + 1] for i, layer in enumerate(taken)]
    elif args.ckd_layer_map:
        layer_map = [[int(x) for x in pair.split(":")] for pair in args.ckd_layer_map.split(",")]
    train_seconds = {}
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.time()
        config = DistillConfig(
            method=method, corpus=[str(scifact_dir)], output_dir=str(work / method), teacher="minilm",
            student=args.student, max_length=args.train_max_length, max_steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, device=args.device, seed=args.seed,
            max_texts=400 if args.quick else None,
            kd=KDConfig(embedding="cosine", embedding_weight=1.0, score_weight=1.0, scale=20.0),
            ckd=CKDConfig(wr_pair=ckd_weights[0], wr_triplet=ckd_weights[1], ltr_pair=ckd_weights[2],
                          ltr_triplet=ckd_weights[3], window=21, layer_map=layer_map),
            seed_method=SEEDConfig(queue_size=2048, student_temperature=0.2, teacher_temperature=0.01),
        )
        if method in trained:
            model_dir = check_trained(trained[method], config)
            print(f"[distill] {method}: trained student {model_dir}", file=sys.stderr)
        else:
            result = run_distillation(config)
            model_dir = result.model_dir
            train_seconds[method] = round(time.time() - t0, 1)
            print(f"[distill] {method}: {result.steps} steps in {train_seconds[method]} s, "
                  f"final loss {result.final_loss:.4f}", file=sys.stderr)
        student = SentenceEncoder.from_pretrained(str(model_dir), max_length=args.eval_max_length)
        models[method] = student.to(args.device)

    # students share one architecture: time the teacher and the untrained student on the same texts
    timing = encode_seconds({"teacher": teacher, "student": models[untrained]}, speed_texts,
                            args.eval_batch_size)
    rows = []
    t_params, t_body = parameters(teacher)
    for name, model in models.items():
        model.eval()
        t0 = time.time()
        scores = evaluate(model, datasets, args.eval_batch_size)
        eval_s = time.time() - t0
        seconds = timing["teacher"] if name.startswith("teacher") else timing["student"]
        total, body = parameters(model)
        rows.append({
            "model": name, "layers": model.encoder.config.num_layers, "params_m": round(total / 1e6, 2),
            "size_ratio": round(t_params / total, 2), "non_embedding_size_ratio": round(t_body / body, 2),
            "encode_s": round(seconds, 2), "speed_ratio": round(timing["teacher"] / seconds, 2),
            **{f"ndcg@10_{k}": v for k, v in scores.items()},
            "scifact_vs_teacher": None, "eval_s": round(eval_s, 1), "train_s": train_seconds.get(name),
        })
        print(f"[distill] evaluated {name} in {eval_s:.0f} s: {scores}", file=sys.stderr)
    teacher_scifact = rows[0]["ndcg@10_scifact"]
    for r in rows:
        r["scifact_vs_teacher"] = round(r["ndcg@10_scifact"] / teacher_scifact, 4)

    header = ("| model | layers | params (M) | size x | non-emb. size x | encode speed x | SciFact | Cranfield | CISI "
              "| SciFact / teacher |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} | {r['params_m']} | {r['size_ratio']} | "
                     f"{r['non_embedding_size_ratio']} | {r['speed_ratio']} | {r['ndcg@10_scifact']:.4f} | "
                     f"{r['ndcg@10_cranfield']:.4f} | {r['ndcg@10_cisi']:.4f} | {100 * r['scifact_vs_teacher']:.1f}% |")
    table = "\n".join(lines)
    print(table)
    distilled = [r for r in rows if r["model"] in ("kd", "ckd", "seed")]
    best = max(distilled, key=lambda r: r["ndcg@10_scifact"]) if distilled else None
    goal = None
    if best:
        goal = {"best": best["model"], "keeps_95pct": bool(best["scifact_vs_teacher"] >= 0.95),
                "speed_1.8x": bool(best["speed_ratio"] >= 1.8)}
        by = {r["model"]: r["ndcg@10_scifact"] for r in rows}
        if "ckd" in by and "kd" in by:
            goal["ckd_beats_kd_on_scifact"] = bool(by["ckd"] > by["kd"])
            goal["ckd_beats_kd_on_mean"] = bool(
                np.mean([r[f"ndcg@10_{c}"] for r in rows if r["model"] == "ckd" for c in COLLECTIONS])
                > np.mean([r[f"ndcg@10_{c}"] for r in rows if r["model"] == "kd" for c in COLLECTIONS]))
        print(f"goal: {goal}")
    out = {
        "benchmark": "distill", "date": datetime.date.today().isoformat(), "machine": machine_summary(),
        "device": args.device, "torch_threads": torch.get_num_threads(), "args": vars(args), "rows": rows,
        "goal": goal, "layer_ranking": layer_ranking, "table": table, "wall_s": round(time.time() - started, 1),
        "command": "python bench/distill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    path = Path(args.output) if args.output else REPO / "bench" / "results" / ("distill-quick.json" if args.quick
                                                                               else "distill.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    print(f"wrote {path} (wall {out['wall_s']} s)", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
