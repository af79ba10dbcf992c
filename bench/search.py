"""Search benchmark: reprlab's Index vs raw FAISS, and reprlab's BM25 (bm25s) vs rank_bm25.

(a) Dense: seeded random float32 vectors (dim 384; 5,183 docs like SciFact and a 100k case, 300
    queries). Our ``Index.search`` (string ids, padding, deterministic ties) against ``faiss`` search
    on the very same FAISS object, so the ratio is the wrapper's overhead. Medians (and spreads) of
    interleaved repeats, for Flat, HNSW32 (efSearch=128) and a 4-shard Flat ``ShardedIndex``.
(b) BM25 on BEIR folders (SciFact by default): ``BM25Index`` (bm25s, Anserini settings) against
    ``rank_bm25.BM25Okapi`` given the very same tokens and k1/b, timing indexing and the 300-query
    search (tokenization included for both), and nDCG@10 / Recall@100 of both.

    python bench/search.py                      # writes bench/results/search.json, prints markdown
    python bench/search.py --append             # ... and appends a section to BENCHMARKS.md
    python bench/search.py --quick              # smoke run: 2,000 vectors, 50 queries, a SciFact subsample
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np

import common
from reprlab.retrieval.bm25 import BM25Index, tokenize
from reprlab.retrieval.index import FaissIndex, ShardedIndex
from reprlab.retrieval.metrics import evaluate, to_run


def paired_times(ours, raw, repeats: int) -> tuple[common.Timing, common.Timing]:
    """Timings of ``ours()`` and ``raw()`` over interleaved repeats (after one warm-up each).

    The ratio is taken on the medians (run it under the shared lock, nothing else heavy running); the spread
    ((max - min) / median) and the fastest pass of each side are kept in the JSON.
    """
    t = common.timed_interleaved({"ours": ours, "raw": raw}, repeats, warmup=1)
    return t["ours"], t["raw"]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


# ------------------------------------------------------------------------------------------------
# (a) dense


def build_dense(factory: str, ids: list[str], x: np.ndarray):
    """(our index over ``x``, its raw FAISS peer): the very same FAISS object, or for the sharded index one
    raw flat index over the same vectors."""
    dim = x.shape[1]
    if factory.endswith("shards"):
        index = ShardedIndex(dim, 4, "Flat")
        raw = faiss.IndexFlatIP(dim)
        raw.add(x)
    else:
        index = FaissIndex(dim, factory)
        raw = index.index
    index.add(ids, x)
    if factory == "HNSW32":
        index.set_search_params(efSearch=128)
    return index, raw


def bench_dense(n_docs: int, n_queries: int, dim: int, ks: list[int], repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_docs, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"doc{i}" for i in range(n_docs)]
    rows = []
    truth = {}
    for factory in ("Flat", "HNSW32", "Flat x4 shards"):
        build = common.timed(lambda: build_dense(factory, ids, x))  # median of 3 builds; the last is searched
        index, raw = build.result
        for k in ks:
            t_ours, t_raw = paired_times(lambda: index.search(queries, k), lambda: raw.search(queries, k), repeats)
            found = index.search(queries, k)[1]
            if factory == "Flat":
                truth[k] = found
            rows.append({
                "docs": n_docs, "queries": n_queries, "dim": dim, "index": factory, "k": k,
                "build_s": round(build["median"], 3), "build_spread": round(build["spread"], 3),
                "ours_ms": round(1000 * t_ours["median"], 2), "raw_faiss_ms": round(1000 * t_raw["median"], 2),
                "ratio": round(t_ours["median"] / t_raw["median"], 3),
                "ours_fastest_ms": round(1000 * t_ours["min"], 2),
                "raw_faiss_fastest_ms": round(1000 * t_raw["min"], 2),
                "ours_spread": round(t_ours["spread"], 3), "raw_faiss_spread": round(t_raw["spread"], 3),
                "repeats": repeats, "recall_vs_flat": round(recall_at(found, truth[k]), 4),
            })
            print(dense_row(rows[-1]), flush=True)
    return rows


def dense_row(r: dict) -> str:
    return (
        f"| {r['docs']:,} x {r['dim']} | {r['index']} | {r['k']} | {r['ours_ms']:.2f} ({r['ours_spread']:.2f}) "
        f"| {r['raw_faiss_ms']:.2f} ({r['raw_faiss_spread']:.2f}) | {r['ratio']:.3f} | {r['recall_vs_flat']:.3f} |"
    )


DENSE_HEADER = (
    "| docs x dim | index | k | reprlab ms / 300 q, median (spread) | raw FAISS ms / 300 q, median (spread) | "
    "ratio of medians | recall@k vs Flat |\n"
    "|---|---|---|---|---|---|---|"
)


# ------------------------------------------------------------------------------------------------
# (b) BM25


def bench_bm25(data, name: str, repeats: int, k: int = 100) -> list[dict]:
    """reprlab's BM25Index and rank_bm25 on one BEIR dataset: index and query seconds (median and spread of
    ``repeats``, tokenization included), nDCG@10 and Recall@100."""
    from rank_bm25 import BM25Okapi

    from reprlab.text.beir import doc_text

    doc_ids = list(data.corpus)
    texts = [doc_text(data.corpus[d]) for d in doc_ids]
    qids = list(data.judged_queries())
    qtexts = [data.queries[q] for q in qids]
    qrels = data.qrels

    def build_ours():
        index = BM25Index()  # Anserini: k1=0.9, b=0.4, Snowball English stemmer, Lucene stopwords
        index.add(doc_ids, texts)
        return index

    t_index = common.timed(build_ours, repeats)
    bm25 = t_index.result
    t_query = common.timed(lambda: bm25.search(qtexts, k), repeats)
    ours = evaluate(qrels, to_run(qids, *t_query.result), metrics=("ndcg@10", "recall@100"))

    # rank_bm25 with the same tokens and k1/b (its idf differs: log((N - df + .5) / (df + .5)), floored)
    table = np.array(doc_ids, dtype=object)

    def search_peer():
        run = {}
        for q, tokens in zip(qids, tokenize(qtexts)):
            s = okapi.get_scores(tokens)  # (N,)
            top = np.argsort(-s, kind="stable")[:k]
            run[q] = {d: float(v) for d, v in zip(table[top].tolist(), s[top].tolist())}
        return run

    t_peer_index = common.timed(lambda: BM25Okapi(tokenize(texts), k1=bm25.k1, b=bm25.b), repeats)
    okapi = t_peer_index.result
    t_peer_query = common.timed(search_peer, repeats)
    peer = evaluate(qrels, t_peer_query.result, metrics=("ndcg@10", "recall@100"))
    rows = []
    for system, index_t, query_t, quality in (
        ("reprlab BM25Index (bm25s)", t_index, t_query, ours),
        ("rank_bm25 BM25Okapi, same tokens", t_peer_index, t_peer_query, peer),
    ):
        rows.append(
            {
                "data": name,
                "docs": len(doc_ids),
                "queries": len(qids),
                "system": system,
                "index_s": round(index_t["median"], 3),
                "query_s": round(query_t["median"], 3),
                "index_spread": round(index_t["spread"], 3),
                "query_spread": round(query_t["spread"], 3),
                "index_fastest_s": round(index_t["min"], 3),
                "query_fastest_s": round(query_t["min"], 3),
                "repeats": repeats,
                "ndcg@10": round(quality["ndcg@10"], 4),
                "recall@100": round(quality["recall@100"], 4),
            }
        )
    rows[1]["index_ratio_vs_ours"] = round(t_peer_index["median"] / t_index["median"], 2)  # ratios of medians
    rows[1]["query_ratio_vs_ours"] = round(t_peer_query["median"] / t_query["median"], 2)
    for row in rows:
        print(bm25_row(row), flush=True)
    return rows


def bm25_row(r: dict) -> str:
    ratios = f" ({r['index_ratio_vs_ours']}x)" if "index_ratio_vs_ours" in r else ""
    qratio = f" ({r['query_ratio_vs_ours']}x)" if "query_ratio_vs_ours" in r else ""
    return (
        f"| {r['data']} ({r['docs']:,} docs, {r['queries']} q) | {r['system']} | {r['index_s']:.3f} "
        f"({r['index_spread']:.2f}){ratios} | {r['query_s']:.3f} ({r['query_spread']:.2f}){qratio} | {r['ndcg@10']:.4f} "
        f"| {r['recall@100']:.4f} |"
    )


BM25_HEADER = (
    "| data | system | index s, median (spread) | query s, all queries, k=100, median (spread) | nDCG@10 | R@100 |\n"
    "|---|---|---|---|---|---|"
)


# ------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.bench_options(device=None, threads=None)])
    parser.add_argument("--data", nargs="+", type=Path, default=[common.data_path("scifact", "beir", check=False)],
                        help="BEIR folders for the BM25 comparison (default $REPRLAB_SHARED_DATA/scifact/beir)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[5183, 100_000], help="dense corpus sizes")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed passes of each dense search (>= 3)")
    parser.add_argument("--bm25-repeats", type=int, default=3, help="timed passes of each BM25 index and query (>= 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="FAISS OpenMP threads (0 = FAISS default; 1 = stable timings on a busy machine)")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--skip-bm25", action="store_true")
    parser.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    args = common.parse(parser, argv)
    if args.quick:
        args.sizes, args.queries, args.k, args.repeats = [2000], 50, [10], 3
    return args


def bm25_data(folder: Path, quick: bool):
    """(a BEIR folder's test split, or a subsample of it in a quick run; its name for the table)."""
    from reprlab.text.beir import load_beir

    data = load_beir(common.require(folder, "--data"), split="test")
    if quick:
        data = common.subsample(data, 50, 500)
    return data, folder.parent.name if folder.name == "beir" else folder.name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    result = {"faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "dense": [], "bm25": []}
    if not args.skip_dense:
        print(DENSE_HEADER)
        for n in args.sizes:
            result["dense"] += bench_dense(n, args.queries, args.dim, args.k, args.repeats)
    if not args.skip_bm25:
        print(BM25_HEADER)
        for folder in args.data:
            result["bm25"] += bench_bm25(*bm25_data(folder, args.quick), args.bm25_repeats)
    result = common.write_result("search", result, args, argv)
    if args.append:
        common.append_benchmarks(section(result))


def section(result: dict) -> str:
    lines = [
        "## Search: reprlab Index vs raw FAISS, BM25 (bm25s) vs rank_bm25",
        "",
        f"Command: `{result['command']}` (from the repo root). Machine: {result['machine']}. "
        f"Date: {result['date']}. FAISS {result['faiss']}, OpenMP threads: {result['faiss_threads']}.",
        "",
    ]
    if result["dense"]:
        lines += [
            "Dense search, seeded random unit vectors, 300 queries, inner product; median and spread "
            "((max - min) / median) of interleaved repeats (the fastest in the JSON) on the same FAISS object "
            "(the shard row compares with one raw flat index over the same vectors). ratio = reprlab / raw "
            "FAISS, of the medians.",
            "",
            DENSE_HEADER,
            *map(dense_row, result["dense"]),
            "",
        ]
    if result["bm25"]:
        lines += [
            "BM25: reprlab `BM25Index()` = bm25s, k1=0.9, b=0.4, Lucene idf, Snowball English stemmer, "
            "Lucene's 33 stopwords, title + text. rank_bm25 gets the same tokens and k1/b "
            "(its idf differs); times include tokenization, median (spread) of --bm25-repeats passes; "
            "(Nx) = rank_bm25 time / ours, of the medians.",
            "",
            BM25_HEADER,
            *map(bm25_row, result["bm25"]),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
