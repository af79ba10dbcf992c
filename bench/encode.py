"""Encoding throughput: reprlab's SentenceEncoder vs sentence-transformers on the SciFact corpus.

Same model (all-MiniLM-L6-v2), same max length, same batch size, one run. Each setting runs in its
own subprocess so that its peak memory is its own; the parent then evaluates every setting's
vectors on SciFact (nDCG@10), so a faster mode is shown to keep its quality.

    python bench/encode.py                       # full corpus, CPU
    python bench/encode.py --device cuda --batch-size 128
    python bench/encode.py --quick               # 300 documents, smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reprlab.io import atomic_write_json
from reprlab.logs import machine_summary

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact" / "beir"
SETTINGS = ("sentence-transformers", "reprlab-fp32", "reprlab-bf16", "reprlab-int8")


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def flops_per_text(lengths: np.ndarray, hidden=384, inter=1536, layers=6) -> np.ndarray:
    """Multiply-adds x 2 of the encoder on texts of these token lengths (projections, FFN, attention)."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inter)
    attention = 2 * 2 * lengths * hidden  # QK^T and AV per token
    return layers * lengths * (per_token + attention)


def run_one(setting: str, texts: list[str], args) -> dict:
    """Encode ``texts`` with one setting; returns timing, memory and the path of the vectors."""
    import torch

    torch.manual_seed(0)
    if setting == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from reprlab.hub import resolve_model_path

        model = SentenceTransformer(str(resolve_model_path("minilm")), device=args.device)
        model.max_seq_length = args.max_length
        encode = lambda t: model.encode(t, batch_size=args.batch_size, convert_to_numpy=True)  # noqa: E731
    else:
        from reprlab.encoder import SentenceEncoder

        model = SentenceEncoder.from_pretrained("minilm", max_length=args.max_length).to(args.device)
        precision = setting.split("-")[1]
        if precision == "int8":
            model = model.quantized()
            precision = "fp32"
        encode = lambda t: model.encode(t, batch_size=args.batch_size, precision=precision)  # noqa: E731
    encode(texts[: args.batch_size])  # warm-up (kernels, allocator)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    vectors = encode(texts)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp()) / "vectors.npy"
    np.save(out, vectors.astype(np.float32))
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else peak_rss_mb()
    return {"setting": setting, "seconds": seconds, "docs_per_s": len(texts) / seconds, "peak_mb": peak,
            "vectors": str(out), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--quick", action="store_true", help="300 documents")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = parser.parse_args()

    from reprlab.text.beir import load_beir
    from reprlab.retrieval.dense import doc_text

    data = load_beir(args.data, split="test")
    ids = list(data.corpus)[: 300 if args.quick else None]
    texts = [doc_text(data.corpus[i]) for i in ids]
    if args.one:
        print(json.dumps(run_one(args.one, texts, args)))
        return

    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.index import FaissIndex
    from reprlab.retrieval.metrics import evaluate, to_run

    results = []
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--one", setting, "--data", args.data, "--device", args.device,
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)] + (["--quick"] * args.quick)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{setting} failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{setting}: {results[-1]['docs_per_s']:.1f} docs/s", file=sys.stderr)

    tok = SentenceEncoder.from_pretrained("minilm").tokenizer
    lengths = np.array([min(len(e.ids), args.max_length) for e in tok.encode_raw(texts)])
    total_flops = float(flops_per_text(lengths).sum())
    queries = data.judged_queries()
    qmodel = SentenceEncoder.from_pretrained("minilm", max_length=args.max_length)
    q_vectors = qmodel.encode(list(queries.values()), batch_size=64)
    peer = [r for r in results if r["setting"] == "sentence-transformers"]
    base = peer[0] if peer else results[0]
    for r in results:
        vectors = np.load(r["vectors"])
        index = FaissIndex(vectors.shape[1])
        index.add(ids, vectors)
        run = to_run(list(queries), *index.search(q_vectors, 100))
        r["ndcg_cut_10"] = evaluate(data.qrels, run, metrics=("ndcg_cut_10",))["ndcg_cut_10"]
        r["gflops"] = total_flops / r["seconds"] / 1e9
        r["ratio"] = r["docs_per_s"] / base["docs_per_s"]
        r["max_abs_diff_vs_base"] = float(np.abs(vectors - np.load(base["vectors"])).max())

    date = datetime.date.today().isoformat()
    command = "python bench/encode.py " + " ".join(sys.argv[1:])
    lines = [
        f"### Encoding throughput, SciFact corpus ({len(texts)} docs, max length {args.max_length}, "
        f"batch {args.batch_size}, {args.device})",
        "",
        f"`{command}` on {machine_summary()}, {date}. "
        "Ratio = docs/s relative to sentence-transformers in the same run.",
        "",
        "| setting | docs/s | ratio | GFLOP/s | peak memory (MB) | nDCG@10 | max abs diff vs ST |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['setting']} | {r['docs_per_s']:.1f} | {r['ratio']:.2f}x | {r['gflops']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['ndcg_cut_10']:.4f} | {r['max_abs_diff_vs_base']:.1e} |")
    table = "\n".join(lines)
    print(table)
    out = REPO / "bench" / "results" / ("encode-quick.json" if args.quick else f"encode-{args.device}.json")
    atomic_write_json(out, {"command": command, "machine": machine_summary(), "date": date, "docs": len(texts),
                            "results": results})
    if args.append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
