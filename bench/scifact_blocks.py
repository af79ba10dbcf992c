"""Collaborative heads and HIRE on a pretrained retriever (all-MiniLM-L6-v2), on BEIR SciFact.

(a) Collaborative heads (Cordonnier et al.): every attention layer of MiniLM is converted by CP
    decomposition to shared query/key projections of width D~ (384 = exact, 192 = 1/2, 96 = 1/4).
    Zero-shot nDCG@10 / Recall@100 on SciFact test, parameters, and corpus-encoding speed against
    the original. The paper's claim: the key/query width can be cut 4x with no loss *after
    re-tuning*.
(b) Re-tuning with the same short DPR recipe (``reprlab.retrieval.dpr``: in-batch negatives,
    SciFact ``qrels/train.tsv``, fixed hyper-parameters, nothing tuned on test) for the original
    and the converted models, then the same evaluation.
(c) HIRE (Yang & Zhao) vs last-layer mean pooling: the same DPR fine-tune of MiniLM with HIRE
    pooling (fresh extractor + fusion, residual start) against the mean-pooling run of (b).

Every number comes from one run of this script, on the same machine, with the same settings.

    python bench/scifact_blocks.py --quick                                # smoke: ~100 docs, 2 steps, D~=96
    python bench/scifact_blocks.py --threads 1 --parts zero-shot          # (a): ~20 min on 2 cores
    python bench/scifact_blocks.py --threads 1 --parts tuned --tune minilm,hire   # (b) baseline + (c)
    python bench/scifact_blocks.py --threads 1 --parts tuned --tune 192,96        # (b) converted models
    python bench/scifact_blocks.py --threads 1 --parts speed --speed-docs 300     # encode speed, quiet machine

Each invocation updates its own rows of ``bench/results/scifact_blocks.json`` (keyed by model), so
the long benchmark can run as several heavy jobs of under ~30 minutes each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import common
from reprlab.analysis.model_info import model_info
from reprlab.encoder import SentenceEncoder
from reprlab.nn.collaborative import cp_relative_error, to_collaborative
from reprlab.retrieval.dense import DenseRetriever
from reprlab.retrieval.dpr import DprConfig, run_dpr
from reprlab.retrieval.pipeline import evaluate_retriever
from reprlab.text.beir import BeirDataset, doc_text, load_beir
from reprlab.train import TrainConfig

METRICS = ("ndcg_cut_10", "recall_100")


def evaluate(model: SentenceEncoder, data: BeirDataset, max_length: int, batch_size: int) -> dict:
    model.max_length = max_length
    retriever = DenseRetriever(model, batch_size=batch_size)
    start = time.perf_counter()
    retriever.index_corpus(data.corpus, show_progress=False)
    seconds = time.perf_counter() - start
    scores = evaluate_retriever(retriever, data, k=100, metrics=METRICS)
    return {**{k: round(v, 4) for k, v in scores.items()}, "encode_seconds": round(seconds, 1),
            "docs_per_s": round(len(data.corpus) / seconds, 1)}


def sizes(model: SentenceEncoder) -> dict:
    info = model_info(model, seq_len=256)
    return {"params": info.total_params, "attention_params": info.by_block()["attention"]["params"],
            "gflops_256": round(info.total_flops / 1e9, 3)}


def fine_tune(folder: Path, out: Path, data_dir: Path, args, device: str) -> tuple[SentenceEncoder, dict]:
    """The one DPR recipe for every model; returns the tuned query/passage encoder (shared)."""
    train = TrainConfig(output_dir=str(out), epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                        lr=args.lr, warmup_ratio=0.1, seed=0, device=device, log_every=5)
    start = time.perf_counter()
    result = run_dpr(DprConfig(output_dir=str(out), data=str(data_dir), model=str(folder), num_negatives=args.negatives,
                               query_max_length=64, passage_max_length=args.train_max_length, train=train))
    seconds = time.perf_counter() - start
    model = SentenceEncoder.from_pretrained(result.model_dir)
    return model, {"steps": result.steps, "train_seconds": round(seconds, 1)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common.bench_options()])
    p.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    p.add_argument("--dims", default="192,96", help="collaborative widths D~ to convert to")
    p.add_argument("--cp-iters", type=int, default=100, help="ALS sweeps of the CP decomposition")
    p.add_argument("--max-length", type=int, default=256, help="tokens per document at evaluation")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (queries); encoding uses 32 too")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--negatives", type=int, default=0, help="BM25 hard negatives per query (0 = in-batch only)")
    p.add_argument("--train-max-length", type=int, default=128, help="passage tokens during fine-tuning")
    p.add_argument("--parts", default=None,
                   help="zero-shot, tuned and/or speed (default zero-shot,tuned; all three with --quick)")
    p.add_argument("--speed-docs", type=int, default=500, help="documents encoded by the speed part (3 passes)")
    p.add_argument("--tune", default="minilm,hire,dims", help="models to fine-tune: minilm, hire, dims or widths")
    args = common.parse(p, argv)
    common.require(args.data / "corpus.jsonl", "--data (a BEIR folder)")
    args.parts = args.parts or ("zero-shot,tuned,speed" if args.quick else "zero-shot,tuned")
    if args.quick:
        args.dims, args.max_steps, args.max_length, args.cp_iters = args.dims.split(",")[-1], 2, 64, 10
        args.speed_docs, args.batch_size, args.train_max_length = min(args.speed_docs, 32), 8, 64
    return args


def plan(args) -> tuple[list[int], set[str], list[str]]:
    """(collaborative widths, parts to run, models to fine-tune) from ``--dims``, ``--parts`` and ``--tune``."""
    dims = [int(d) for d in args.dims.split(",") if d]
    tune = [x.strip() for x in args.tune.split(",")]
    tune = [t for t in tune if t != "dims"] + ([str(d) for d in dims] if "dims" in tune else [])
    return dims, {x.strip() for x in args.parts.split(",")}, tune


def load_data(args) -> BeirDataset:
    """SciFact test; a quick run keeps the judged documents of 20 queries and 80 others."""
    data = load_beir(args.data, split="test")
    return common.subsample(data, 20, 80) if args.quick else data


def convert(base: SentenceEncoder, widths: set[int], args) -> tuple[dict, dict]:
    """MiniLM and its collaborative conversions: ({key: (row name, encoder)}, {D~: conversion record})."""
    models = {"minilm": ("MiniLM (softmax, D~=384)", base)}
    conversion = {}
    for D in sorted(widths, reverse=True):
        start = time.perf_counter()
        enc = to_collaborative(base.encoder, D, n_iter_max=args.cp_iters, dtype=torch.float32).eval()
        conversion[D] = {"seconds": round(time.perf_counter() - start, 1),
                         "cp_error_per_layer": [round(cp_relative_error(a.attn, b.attn), 4)
                                                for a, b in zip(base.encoder.layers, enc.layers)]}
        models[str(D)] = (f"collaborative D~={D}", SentenceEncoder(enc, base.tokenizer, pooling="mean", normalize=True,
                                                                  max_length=args.max_length))
        print(f"converted to D~={D} in {conversion[D]['seconds']}s; CP error per layer "
              f"{conversion[D]['cp_error_per_layer']}", flush=True)
    return models, conversion


def zero_shot(models: dict, conversion: dict, dims: list[int], data: BeirDataset, args) -> list[dict]:
    """(a): every model as converted, no training."""
    rows = []
    for key in ["minilm"] + [str(D) for D in dims]:
        name, model = models[key]
        D = model.encoder.config.attention_kwargs.get("shared_dim", 384)
        rows.append({"model": name, "shared_dim": D, **sizes(model), **evaluate(model, data, args.max_length, 32),
                     **({"conversion": conversion[D]} if D in conversion else {})})
        print(rows[-1], flush=True)
    return rows


def speed(models: dict, dims: list[int], data: BeirDataset, args) -> list[dict]:
    """Encode speed alone: the same documents, 3 interleaved passes per model; the median is reported with the spread
    ((max - min) / median) and the speed ratio of the medians (the fastest pass is kept as an extra)."""
    texts = [doc_text(d) for d in list(data.corpus.values())[: args.speed_docs]]
    keys = ["minilm"] + [str(D) for D in dims]
    for key in keys:
        models[key][1].max_length = args.max_length

    def encode(model):
        with torch.inference_mode():
            model.encode(texts, batch_size=32, show_progress=False)

    timing = common.timed_interleaved({k: (lambda m=models[k][1]: encode(m)) for k in keys}, warmup=0)
    rows = []
    for key in keys:
        rows.append({"model": models[key][0], "docs": len(texts),
                     "docs_per_s": round(len(texts) / timing[key]["median"], 1),
                     "speed_vs_minilm": round(timing["minilm"]["median"] / timing[key]["median"], 3),
                     "spread": round(timing[key]["spread"], 3), "passes": len(timing[key]["passes"]),
                     "fastest_docs_per_s": round(len(texts) / timing[key]["min"], 1),
                     "pass_docs_per_s": [round(len(texts) / t, 2) for t in timing[key]["passes"]]})
        print(rows[-1], flush=True)
    return rows


def tuned(models: dict, tune: list[str], data: BeirDataset, args) -> list[dict]:
    """(b) and (c): the same DPR fine-tune of every ``--tune`` model, then the same evaluation."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, key in enumerate(tune):
            if key == "hire":
                name, model = "MiniLM + HIRE pooling", SentenceEncoder.from_pretrained("minilm", pooling="hire")
            else:
                name, model = models[key]
            folder = tmp / f"start-{i}"
            model.save_pretrained(folder)
            model, info = fine_tune(folder, tmp / f"tuned-{i}", args.data, args, args.device)
            rows.append({"model": name, **info, **sizes(model), **evaluate(model, data, args.max_length, 32)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    dims, parts, tune = plan(args)
    data = load_data(args)
    widths = set(dims) if parts & {"zero-shot", "speed"} else {int(t) for t in tune if t.isdigit()}
    models, conversion = convert(SentenceEncoder.from_pretrained("minilm").eval(), widths, args)
    new = {"zero_shot": zero_shot(models, conversion, dims, data, args) if "zero-shot" in parts else [],
           "speed": speed(models, dims, data, args) if "speed" in parts else [],
           "tuned": tuned(models, tune, data, args) if "tuned" in parts else []}
    old = common.read_result(common.result_path("scifact_blocks", args))
    stamp = common.stamp(argv)

    def merged(key):  # this run's rows (stamped with this run) replace the saved rows of the same models
        keep = {r["model"]: r for r in old.get(key, [])}
        keep.update({r["model"]: {**r, **stamp} for r in new[key]})
        return list(keep.values())

    out = common.write_result("scifact_blocks", {
        "benchmark": "scifact_blocks", "torch_threads": torch.get_num_threads(), "settings": common.settings(args),
        "docs": len(data.corpus), "queries": len(data.qrels), "zero_shot": merged("zero_shot"),
        "tuned": merged("tuned"), "speed": merged("speed")}, args, argv)
    print(markdown(out))
    if args.append:
        common.append_benchmarks(common.section(
            "Collaborative heads and HIRE on MiniLM, SciFact (`bench/scifact_blocks.py`)", out, markdown(out)))


def markdown(out: dict) -> str:
    lines = ["| model | params | attention params | GFLOPs @256 | zero-shot nDCG@10 | R@100 | docs/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["zero_shot"]:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['attention_params'] / 1e6:.2f}M | "
                     f"{r['gflops_256']:.2f} | {r['ndcg_cut_10']:.4f} | {r['recall_100']:.4f} | "
                     f"{r['docs_per_s']:.1f} |")
    if out["tuned"]:
        lines += ["", "| model, after the same DPR fine-tune | steps | train s | nDCG@10 | R@100 |",
                  "|---|---:|---:|---:|---:|"]
        for r in out["tuned"]:
            lines.append(f"| {r['model']} | {r['steps']} | {r['train_seconds']:.0f} | {r['ndcg_cut_10']:.4f} | "
                         f"{r['recall_100']:.4f} |")
    if out.get("speed"):
        lines += ["", "| model | encode docs/s, median of 3 (spread) | speed vs MiniLM (medians) |", "|---|---:|---:|"]
        for r in out["speed"]:
            lines.append(f"| {r['model']} | {r['docs_per_s']:.1f} ({r['spread']:.2f}) | {r['speed_vs_minilm']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
