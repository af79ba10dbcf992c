"""Encoding throughput: reprlab's SentenceEncoder vs sentence-transformers on the SciFact corpus.

Same model (all-MiniLM-L6-v2), same max length, same batch size, one run. Each setting runs in its
own subprocess so that its peak memory is its own, and is timed over ``--repeat`` (>= 3) passes after a
warm-up batch (the median is reported); the parent then evaluates every setting's vectors on SciFact
(nDCG@10), so a faster mode is shown to keep its quality.

    python bench/encode.py                       # full corpus, CPU
    python bench/encode.py --device cuda --batch-size 128
    python bench/encode.py --quick               # smoke run: 64 documents, max length 128
    python bench/encode.py --docs 300            # the first 300 documents only (no nDCG@10: a partial corpus)

On a machine without the evaluation's dependencies (faiss), measure there and evaluate here:

    python bench/encode.py --device cuda --batch-size 128 --no-eval --keep runs/encode-gpu
    python bench/encode.py --evaluate runs/encode-gpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import common

SETTINGS = ("sentence-transformers", "reprlab-fp32", "reprlab-bf16", "reprlab-int8", "onnx-fp32", "onnx-int8",
            "onnx-dynamo-fp32", "onnx-dynamo-int8")
# ONNX settings: the model exported once per run into --keep (reprlab.onnx.export_onnx), by the traced exporter
# whose graph onnxruntime fuses ("onnx-*") or by torch.export + onnxscript ("onnx-dynamo-*", unfused)
QUICK_DOCS, QUICK_MAX_LENGTH = 64, 128


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common.bench_options()])
    parser.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    parser.add_argument("--model", default="minilm", help="model folder or name, the same for every setting")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if "dynamo" not in s], choices=SETTINGS,
                        help="default: all but the onnx-dynamo-* rows")
    parser.add_argument("--docs", type=int, default=None, metavar="N",
                        help="time the first N corpus documents only (default all); nDCG@10 is then not computed "
                             "(a partial corpus would score against absent documents)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the corpus (>= 3); the median is kept")
    parser.add_argument("--keep", default=None, help="folder for measure.json and each setting's vectors")
    parser.add_argument("--no-eval", action="store_true", help="measure only (evaluate later with --evaluate)")
    parser.add_argument("--evaluate", default=None, metavar="FOLDER",
                        help="evaluate a --keep folder measured earlier, e.g. on a GPU machine")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = common.parse(parser, argv)
    common.require(args.data, "--data")
    if args.docs is not None and args.docs < 1:
        parser.error(f"--docs {args.docs}: give a positive number of documents")
    if args.quick and not args.one:
        args.max_length = min(args.max_length, QUICK_MAX_LENGTH)
    return args


def flops_per_text(lengths: np.ndarray, hidden=384, inter=1536, layers=6) -> np.ndarray:
    """Multiply-adds x 2 of the encoder on texts of these token lengths (projections, FFN, attention)."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inter)
    attention = 2 * 2 * lengths * hidden  # QK^T and AV per token
    return layers * lengths * (per_token + attention)


def encoder_for(setting: str, args):
    """A function encoding a list of texts with ``setting`` (the model loaded on ``args.device``)."""
    if setting.startswith("onnx-"):
        from reprlab.onnx import OnnxSentenceEncoder

        if args.device != "cpu":
            raise SystemExit(f"{setting} runs ONNX Runtime's CPU provider; drop it with --device cuda")
        model = OnnxSentenceEncoder.from_pretrained(Path(args.keep) / onnx_folder_name(setting),
                                                    int8=setting.endswith("int8"), max_length=args.max_length)
        return lambda t: model.encode(t, batch_size=args.batch_size)
    if setting == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from reprlab.hub import resolve_model_path

        model = SentenceTransformer(str(resolve_model_path(args.model)), device=args.device)
        model.max_seq_length = args.max_length
        return lambda t: model.encode(t, batch_size=args.batch_size, convert_to_numpy=True)
    from reprlab.encoder import SentenceEncoder

    model = SentenceEncoder.from_pretrained(args.model, max_length=args.max_length).to(args.device)
    precision = setting.split("-")[1]
    if precision == "int8":
        if args.device != "cpu":
            raise SystemExit("reprlab-int8 is a CPU mode (dynamic quantization); drop it with --device cuda")
        model = model.quantized()
        precision = "fp32"
    return lambda t: model.encode(t, batch_size=args.batch_size, precision=precision)


def onnx_folder_name(setting: str) -> str:
    return "onnx-dynamo" if "dynamo" in setting else "onnx"


def export_models(args) -> dict:
    """Export the model once for every exporter the ONNX settings need (into ``--keep``); their export records."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.onnx import export_onnx

    records = {}
    for folder in sorted({onnx_folder_name(s) for s in args.settings if s.startswith("onnx-")}):
        model = SentenceEncoder.from_pretrained(args.model, max_length=args.max_length)
        out = export_onnx(model, Path(args.keep) / folder, int8=True, source=args.model,
                          exporter="dynamo" if folder == "onnx-dynamo" else "torchscript")
        records[folder] = json.loads((out / "onnx.json").read_text())
    return records


def run_one(setting: str, texts: list[str], args) -> dict:
    """Encode ``texts`` with one setting ``args.repeat`` times; returns timings, memory and the vectors' path."""
    import torch

    torch.manual_seed(0)
    encode = encoder_for(setting, args)
    encode(texts[: args.batch_size])  # warm-up (kernels, allocator)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timing = common.timed(lambda: encode(texts), args.repeat, sync=torch.cuda.synchronize if cuda else None)
    out = Path(args.keep or tempfile.mkdtemp()) / f"vectors-{setting}.npy"
    np.save(out, timing.result.astype(np.float32))
    peak = (torch.cuda.max_memory_allocated() if cuda else common.memory_bytes("VmHWM")) / 2**20
    return {"setting": setting, "seconds": timing["median"], "passes": timing["passes"], "spread": timing["spread"],
            "docs_per_s": len(texts) / timing["median"], "peak_mb": peak, "vectors": out.name,
            "threads": torch.get_num_threads()}


def measure(args, texts: list[str], argv=None) -> dict:
    """Run every setting in its own subprocess; write and return ``measure.json`` in ``args.keep``."""
    results = []
    exports = export_models(args)
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--one", setting, "--data", str(args.data), "--device", args.device,
               *(["--docs", str(args.docs)] if args.docs else []),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
               "--repeat", str(args.repeat), "--keep", args.keep, "--threads", str(args.threads)]
        proc = subprocess.run(cmd + ["--quick"] * args.quick, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{setting} failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{setting}: {results[-1]['docs_per_s']:.1f} docs/s", file=sys.stderr)
    from reprlab.io import atomic_write_json

    record = {**common.stamp(argv), "docs": len(texts), "partial": args.partial, "quick": args.quick,
              "device": args.device, "batch_size": args.batch_size, "max_length": args.max_length,
              "repeat": args.repeat, "onnx_exports": exports, "results": results}
    atomic_write_json(Path(args.keep) / "measure.json", record)
    return record


def evaluate_measured(record: dict, folder: Path, data, ids: list[str], texts: list[str], model: str) -> list[dict]:
    """nDCG@10, GFLOP/s, speed ratio and largest difference to the peer for every measured setting.

    Queries are encoded once, by reprlab in fp32 on this machine, so the settings differ only in
    their document vectors. The peer is sentence-transformers when it was measured, else the first setting.
    A ``--docs`` sample (``partial``) gets no nDCG@10 (None): most judged documents are not in it.
    """
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.index import FaissIndex
    from reprlab.retrieval.metrics import evaluate, to_run

    max_length = record["max_length"]
    qmodel = SentenceEncoder.from_pretrained(model, max_length=max_length)
    lengths = np.array([min(len(e.ids), max_length) for e in qmodel.tokenizer.encode_raw(texts)])
    total_flops = float(flops_per_text(lengths).sum())
    queries = data.judged_queries()
    partial = record.get("partial", False)
    q_vectors = None if partial else qmodel.encode(list(queries.values()), batch_size=64)
    results = record["results"]
    peer = [r for r in results if r["setting"] == "sentence-transformers"]
    base = peer[0] if peer else results[0]
    base_vectors = np.load(folder / base["vectors"])
    for r in results:
        vectors = np.load(folder / r["vectors"])
        r["ndcg_cut_10"] = None
        if not partial:
            index = FaissIndex(vectors.shape[1])
            index.add(ids, vectors)
            run = to_run(list(queries), *index.search(q_vectors, 100))
            r["ndcg_cut_10"] = evaluate(data.qrels, run, metrics=("ndcg_cut_10",))["ndcg_cut_10"]
        r["gflops"] = total_flops / r["seconds"] / 1e9
        r["ratio"] = r["docs_per_s"] / base["docs_per_s"]
        r["max_abs_diff_vs_base"] = float(np.abs(vectors - base_vectors).max())
    return results


def markdown(record: dict, results: list[dict]) -> str:
    lines = [
        f"### Encoding throughput, SciFact corpus ({record['docs']} docs, max length {record['max_length']}, "
        f"batch {record['batch_size']}, {record['device']})",
        "",
        f"`{record['command']}` on {record['machine']}, {record['date']}. "
        f"Ratio = docs/s relative to sentence-transformers in the same run; median of {record['repeat']} "
        "timed passes after a warm-up batch.",
        "",
        "| setting | docs/s | ratio | spread of the passes | GFLOP/s | peak memory (MB) | nDCG@10 "
        "| max abs diff vs ST |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ndcg = "-" if r["ndcg_cut_10"] is None else f"{r['ndcg_cut_10']:.4f}"
        spread = f"{r['spread']:.0%}" if "spread" in r else "-"
        lines.append(f"| {r['setting']} | {r['docs_per_s']:.1f} | {r['ratio']:.2f}x | {spread} | {r['gflops']:.0f} | "
                     f"{r['peak_mb']:.0f} | {ndcg} | {r['max_abs_diff_vs_base']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from reprlab.text.beir import doc_text, load_beir

    args = parse_args(argv)
    data = load_beir(args.data, split="test")
    if args.evaluate:
        folder = Path(args.evaluate)
        record = json.loads((folder / "measure.json").read_text())
        quick = record.get("quick", record["docs"] < len(data.corpus))
        n_docs = record["docs"]
    else:
        quick = args.quick
        n_docs = QUICK_DOCS if quick else args.docs
    ids = list(data.corpus)[:n_docs]
    args.partial = not quick and len(ids) < len(data.corpus)
    texts = [doc_text(data.corpus[i]) for i in ids]
    if args.one:
        print(json.dumps(run_one(args.one, texts, args)))
        return
    if not args.evaluate:
        args.keep = args.keep or tempfile.mkdtemp()
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        record = measure(args, texts, argv)
        folder = Path(args.keep)
        if args.no_eval:
            print(f"measured; evaluate with: python bench/encode.py --evaluate {folder} --data {args.data}")
            return
    results = evaluate_measured(record, folder, data, ids, texts, args.model)
    table = markdown(record, results)
    print(table)
    record = {**record, "results": results}
    if args.evaluate:
        record["evaluated"] = common.stamp(argv)
    args.quick = quick  # a quick measurement evaluated here is still a quick result
    name = "encode" if quick else f"encode-{record['device']}"
    name += f"-{record['docs']}docs" if record.get("partial") else ""  # never overwrites a whole-corpus record
    common.write_result(name, record, args, argv)
    if args.append:
        common.append_benchmarks(table)


if __name__ == "__main__":
    main()
