"""Semantic hashing on SciFact: SimHash codes of MiniLM vs of MiniLM fine-tuned with the angular loss.

Rows, all from one run: the float index (exact inner product, the peer / paper baseline; MiniLM
zero-shot is 0.645 nDCG@10) and 128/256/512-bit random-hyperplane codes searched by exact Hamming
distance (``faiss.IndexBinaryFlat``) and through multi-index hash tables
(``faiss.IndexBinaryMultiHash``), for (a) all-MiniLM-L6-v2 as is and (b) MiniLM fine-tuned for one
epoch on ``qrels/train.tsv`` with the angular-similarity loss (:func:`reprlab.retrieval.hashing.
run_hashing`, in-batch + one BM25 hard negative). ``--dpr-control`` adds (c) the same fine-tuning
with DPR's cosine loss, to separate "fine-tuned" from "fine-tuned for angular similarity".

Evaluated on ``qrels/test.tsv`` (300 queries): nDCG@10, Recall@100, bytes per document (the code,
and the whole FAISS index as serialised: hash tables store ids per table), codes compared per query
and search time per query (single FAISS thread, 300 queries at k=100, median and spread of ``--repeats``
(>= 3) passes; query encoding excluded, query hashing included). The hash-table parameters (key bits, Hamming radius
``nflip``) are chosen per model and code length on the *train* queries: the fewest candidates whose
train Recall@100 is within 0.02 of exact Hamming search's.

    flock /tmp/reprlab-heavy.lock python bench/hashing.py              # ~30 min on 2 CPU cores
    python bench/hashing.py --quick                                    # smoke run: 40 queries, ~300 docs, 3 steps

Training and encoding can run on a GPU machine and the rest here: ``--device cuda --save-vectors DIR``
fine-tunes, encodes and writes every model's corpus and query vectors (``hashing_vectors.py``: one .npz
in parts, with the ids, the settings and the training seconds), then stops; ``--vectors DIR`` loads
them instead of training and encoding, checks that they were made with this run's settings on this
corpus, and builds the codes, tables and timings; the result JSON records where the vectors came from.

    python bench/hashing.py --device cuda --dpr-control --save-vectors OUT/hash     # on the GPU machine
    flock /tmp/reprlab-heavy.lock python bench/hashing.py --vectors OUT/hash --dpr-control --out bench/results/hashing.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

import common
import hashing_vectors
from reprlab.retrieval.binary import BinaryIndex
from reprlab.retrieval.hashing import HashingConfig, run_hashing
from reprlab.retrieval.index import FaissIndex
from reprlab.retrieval.metrics import evaluate, to_run
from reprlab.text.beir import doc_text, load_beir

HEADER = ("| model | index | bits | hash tables (key bits x tables, nflip) | nDCG@10 | R@100 | code B/doc "
          "| index B/doc | codes compared / query | ms / query (median, spread) |\n|---|---|---|---|---|---|---|---|---|---|")
# settings that change the vectors: a --vectors file must have been made with the same ones
VECTOR_SETTINGS = ("quick", "max_length", "epochs", "max_steps", "train_batch_size", "lr", "num_negatives", "scale",
                   "similarity", "seed", "dpr_control")


def encode(model: str, corpus: dict, queries: dict, args, cache: Path, name: str = "") -> dict:
    """Corpus and query vectors of ``model`` (cached as .npy under ``cache``)."""
    import torch

    from reprlab.encoder import SentenceEncoder

    cache.mkdir(parents=True, exist_ok=True)
    doc_ids, qids = list(corpus), list(queries)
    files = {"docs": cache / "docs.npy", "queries": cache / "queries.npy"}
    if all(f.is_file() for f in files.values()):
        docs, qs = np.load(files["docs"]), np.load(files["queries"])
        if docs.shape[0] == len(doc_ids) and qs.shape[0] == len(qids):
            return {"doc_ids": doc_ids, "docs": docs, "qids": qids, "queries": qs, "encode_s": None}
    torch.manual_seed(0)
    encoder = SentenceEncoder.from_pretrained(model, max_length=args.max_length).to(args.device)
    t0 = time.perf_counter()
    docs = encoder.encode([doc_text(corpus[i]) for i in doc_ids], batch_size=args.batch_size, show_progress=True,
                          desc=f"corpus ({name or Path(model).name})")
    qs = encoder.encode([queries[q] for q in qids], batch_size=args.batch_size, show_progress=False)
    seconds = time.perf_counter() - t0
    np.save(files["docs"], docs)
    np.save(files["queries"], qs)
    return {"doc_ids": doc_ids, "docs": docs, "qids": qids, "queries": qs, "encode_s": round(seconds, 1)}


def ms_per_query(search, n_queries: int, repeats: int) -> dict:
    """Search time per query in ms over ``repeats`` (>= 3) passes: the median (the table's number), the
    fastest and slowest, and the spread (max - min) / median; one untimed pass first."""
    t = common.timed(search, repeats, warmup=1)
    return {"ms_per_query": round(1000 * t["median"] / n_queries, 3), "ms_per_query_min": round(1000 * t["min"] / n_queries, 3),
            "ms_per_query_max": round(1000 * t["max"] / n_queries, 3), "ms_per_query_spread": round(t["spread"], 3),
            "passes": len(t["passes"])}


def metrics(index, queries: np.ndarray, qids: list[str], qrels: dict, k: int = 100) -> dict:
    """Mean nDCG@10 and Recall@100, and each query's nDCG@10 (``per_query``, for the paired comparison)."""
    scores, ids = index.search(queries, k)
    per = evaluate(qrels, to_run(qids, scores, ids), metrics=("ndcg_cut_10", "recall_100"), per_query=True)
    mean = lambda m: float(np.mean([v[m] for v in per.values()]))  # noqa: E731
    return {"ndcg@10": round(mean("ndcg_cut_10"), 4), "recall@100": round(mean("recall_100"), 4),
            "per_query": {q: round(v["ndcg_cut_10"], 6) for q, v in sorted(per.items())}}


# each pair (a, b): a - b per query; the fine-tunes against MiniLM, and the angular loss against its cosine control
PAIRS = (("MiniLM + angular loss", "MiniLM"), ("MiniLM + DPR cosine loss", "MiniLM"),
         ("MiniLM + angular loss", "MiniLM + DPR cosine loss"))


def paired(rows: list[dict], resamples: int = 2000) -> list[dict]:
    """For the float index and each code length searched exactly: the mean per-query nDCG@10 difference of each
    pair in :data:`PAIRS` (both models present), its 95% paired-bootstrap interval (queries resampled, seed 0) and
    the queries won / lost. One trained model per row: the spread over queries, not over training seeds."""
    by = {(r["model"], r["bits"]): r["per_query"] for r in rows if "per_query" in r}
    out = []
    for a, b in PAIRS:
        for bits in sorted({bits for model, bits in by if model == a}):
            if (b, bits) not in by:
                continue
            qids = sorted(by[(a, bits)])
            diff = np.array([by[(a, bits)][q] - by[(b, bits)][q] for q in qids])
            draws = np.random.default_rng(0).integers(0, len(diff), size=(resamples, len(diff)))
            means = diff[draws].mean(axis=1)
            out.append({"a": a, "b": b, "bits": bits, "difference": round(float(diff.mean()), 4),
                        "ci95": [round(float(np.quantile(means, q)), 4) for q in (0.025, 0.975)],
                        "won": int((diff > 0).sum()), "lost": int((diff < 0).sum())})
    return out


def tune_hash(vec: dict, train_q: dict, bits: int, args) -> tuple[dict, list[dict]]:
    """Hash-table parameters for ``bits``-bit codes chosen on the train queries (see the module docstring)."""
    exact = BinaryIndex(vec["docs"].shape[1], bits, seed=args.seed)
    exact.add(vec["doc_ids"], vec["docs"])
    target = metrics(exact, train_q["queries"], train_q["qids"], train_q["qrels"])["recall@100"]
    grid = []
    for hash_bits in args.key_bits:
        tables = bits // hash_bits
        index = BinaryIndex(vec["docs"].shape[1], bits, "multihash", hash_bits, tables, 0, args.seed)
        index.add(vec["doc_ids"], vec["docs"])
        for nflip in args.nflips:
            index.set_search_params(nflip=nflip)
            recall = metrics(index, train_q["queries"], train_q["qids"], train_q["qrels"])["recall@100"]
            work = index.search_stats(train_q["queries"])["candidates"]
            grid.append({"hash_bits": hash_bits, "tables": tables, "nflip": nflip, "train_recall@100": recall,
                         "train_candidates": round(work, 1), "exact_train_recall@100": target})
    ok = [g for g in grid if g["train_recall@100"] >= target - args.recall_slack]
    best = min(ok, key=lambda g: g["train_candidates"]) if ok else max(grid, key=lambda g: g["train_recall@100"])
    return best, grid


def rows_for(name: str, vec: dict, test: dict, train_q: dict, args) -> list[dict]:
    """Float, exact-Hamming and hash-table rows for one model's vectors."""
    n, dim = vec["docs"].shape
    nq = len(test["qids"])
    rows = []
    flat = FaissIndex(dim)
    flat.add(vec["doc_ids"], vec["docs"])
    rows.append({"model": name, "index": "float (Flat, inner product)", "bits": 32 * dim, "params": "",
                 **metrics(flat, test["queries"], test["qids"], test["qrels"]),
                 "code_bytes": 4 * dim, "index_bytes": round(faiss.serialize_index(flat.index).size / n, 1),
                 "candidates": n, **ms_per_query(lambda: flat.search(test["queries"], 100), nq, args.repeats)})
    print(row_md(rows[-1]), flush=True)
    for bits in args.bits:
        exact = BinaryIndex(dim, bits, seed=args.seed)
        exact.add(vec["doc_ids"], vec["docs"])
        rows.append({"model": name, "index": "binary, exact Hamming", "bits": bits, "params": "",
                     **metrics(exact, test["queries"], test["qids"], test["qrels"]),
                     "code_bytes": bits // 8, "index_bytes": round(exact.memory_bytes() / n, 1),
                     "candidates": n, **ms_per_query(lambda: exact.search(test["queries"], 100), nq, args.repeats)})
        print(row_md(rows[-1]), flush=True)
        chosen, grid = tune_hash(vec, train_q, bits, args)
        hashed = BinaryIndex(dim, bits, "multihash", chosen["hash_bits"], chosen["tables"], chosen["nflip"], args.seed)
        hashed.add(vec["doc_ids"], vec["docs"])
        rows.append({"model": name, "index": "binary, hash tables", "bits": bits,
                     "params": f"{chosen['hash_bits']} x {chosen['tables']}, nflip {chosen['nflip']}",
                     **without_per_query(metrics(hashed, test["queries"], test["qids"], test["qrels"])),
                     "code_bytes": bits // 8, "index_bytes": round(hashed.memory_bytes() / n, 1),
                     "candidates": round(hashed.search_stats(test["queries"])["candidates"], 1),
                     **ms_per_query(lambda: hashed.search(test["queries"], 100), nq, args.repeats),
                     "tuning": grid})
        print(row_md(rows[-1]), flush=True)
    return rows


def without_per_query(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "per_query"}


def row_md(r: dict) -> str:
    return (f"| {r['model']} | {r['index']} | {r['bits']} | {r['params'] or '-'} | {r['ndcg@10']:.3f} | "
            f"{r['recall@100']:.3f} | {r['code_bytes']} | {r['index_bytes']:.0f} | {r['candidates']:.0f} | "
            f"{r['ms_per_query']:.3f} ({100 * r['ms_per_query_spread']:.0f}%) |")


def fine_tune(recipe: str, args, out: Path) -> tuple[str, float | None]:
    """Fine-tune MiniLM on the train qrels with the angular (``hashing``) or cosine (``dpr``) loss."""
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.train.loop import TrainConfig

    model_dir = out / "model"
    if (model_dir / "model.safetensors").is_file():
        return str(model_dir), None  # reused: not timed
    loop = TrainConfig(output_dir="", epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr,
                       device=args.device, seed=args.seed, max_steps=args.max_steps)
    shared = dict(output_dir=str(out), data=str(args.data), split="train", model="minilm",
                  num_negatives=args.num_negatives, query_max_length=64, passage_max_length=args.max_length,
                  train=loop)
    t0 = time.perf_counter()
    if recipe == "hashing":
        result = run_hashing(HashingConfig(**shared, scale=args.scale, similarity=args.similarity))
    else:
        result = run_dpr(DprConfig(**shared))
    return result.model_dir, round(time.perf_counter() - t0, 1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        common.bench_options(work_dir="/tmp/reprlab-bench-hashing")])
    parser.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False),
                        help="BEIR SciFact folder")
    parser.add_argument("--bits", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--max-length", type=int, default=256, help="document tokens (encoding and training)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--scale", type=float, default=50.0)
    parser.add_argument("--similarity", default="angular", choices=("angular", "log-angular"))
    parser.add_argument("--dpr-control", action="store_true", help="also fine-tune with DPR's cosine loss")
    parser.add_argument("--key-bits", type=int, nargs="+", default=[8, 12, 16], help="hash key bits to tune over")
    parser.add_argument("--nflips", type=int, nargs="+", default=[0, 1, 2], help="bucket radii to tune over")
    parser.add_argument("--recall-slack", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed search passes (>= 3; median and spread shown)")
    parser.add_argument("--save-vectors", type=Path, metavar="DIR",
                        help="train and encode, write every model's vectors to DIR (hashing_vectors.py), stop")
    parser.add_argument("--vectors", type=Path, metavar="DIR",
                        help="load the vectors of --save-vectors from DIR instead of training and encoding")
    parser.add_argument("--vectors-dtype", choices=hashing_vectors.DTYPES, default="float32",
                        help="dtype of the saved vectors (float16 halves the file but flips a few code bits: "
                             "see hashing_vectors.py)")
    parser.add_argument("--part-mib", type=float, default=15.0, help="largest part of the saved vectors file, MiB")
    parser.add_argument("--workdir", dest="work_dir", type=Path, help=argparse.SUPPRESS)  # older name
    parser.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # older name of --output
    args = common.parse(parser, argv)
    common.require(args.data, "--data")
    if args.vectors and args.save_vectors:
        parser.error("--vectors and --save-vectors: give one (save on the training machine, load on the other)")
    if args.quick:
        args.max_length, args.max_steps, args.repeats, args.train_batch_size = 64, 3, 3, 8
    return args


def load_data(args):
    """(test split, train split, corpus, test query ids, train query ids); a quick run keeps 40 of each
    and their documents plus 200 random others."""
    data, train = load_beir(args.data, split="test"), load_beir(args.data, split="train")
    test_qids, train_qids = sorted(data.judged_queries()), sorted(train.judged_queries())
    corpus = data.corpus
    if args.quick:
        train_qids = train_qids[:40]
        small = common.subsample(data, 40, 200, args.seed,
                                 keep_docs=[d for q in train_qids for d in train.qrels[q]])
        corpus, test_qids = small.corpus, sorted(small.qrels)
    return data, train, corpus, test_qids, train_qids


def train_models(args) -> tuple[dict, dict]:
    """{row name: (model, its run folder)}: MiniLM as is, the angular-loss fine-tune and, with
    ``--dpr-control``, the DPR fine-tune; and their training seconds."""
    models, timings = {"MiniLM": ("minilm", None)}, {}
    recipes = [("hashing", "MiniLM + angular loss")] + ([("dpr", "MiniLM + DPR cosine loss")]
                                                        if args.dpr_control else [])
    for recipe, name in recipes:
        out = args.work_dir / f"{recipe}-e{args.epochs}-s{args.max_steps}-lr{args.lr}-L{args.max_length}" \
                              f"{f'-x{args.scale}-{args.similarity}' if recipe == 'hashing' else ''}"
        model_dir, seconds = fine_tune(recipe, args, out)
        models[name] = (model_dir, out)
        timings[f"train {recipe} s"] = seconds
    return models, timings


def model_vectors(args, corpus: dict, queries: dict) -> tuple[dict, dict, dict]:
    """({row name: vectors}, timings, where the vectors came from): trained and encoded here, or loaded
    with ``--vectors`` (checked against this run's settings, corpus and queries)."""
    if args.vectors:
        vecs, record = hashing_vectors.load(args.vectors)
        made = record["settings"]
        differ = {k: (made.get(k), getattr(args, k)) for k in VECTOR_SETTINGS if made.get(k) != getattr(args, k)}
        if differ:
            sys.exit(f"--vectors {args.vectors}: made with other settings (theirs, this run's): {differ}")
        doc_ids = next(iter(vecs.values()))["doc_ids"]
        qids = set(next(iter(vecs.values()))["qids"])
        if doc_ids != list(corpus) or not set(queries) <= qids:
            sys.exit(f"--vectors {args.vectors}: made on another corpus or other queries "
                     f"({len(doc_ids)} documents, {len(qids)} queries; this run: {len(corpus)}, {len(queries)})")
        source = {"from": "--vectors", "files": sorted(p.name for p in Path(args.vectors).iterdir()
                                                       if hashing_vectors.PART.match(p.name)),
                  "dtype": record["dtype"], **{k: record[k] for k in ("command", "machine", "date", "torch")}}
        return vecs, record["timings"], source
    models, timings = train_models(args)
    tag = f"L{args.max_length}-n{len(corpus)}"
    vecs = {}
    for name, (model, out) in models.items():
        cache = (args.work_dir / "minilm" if out is None else out) / f"vectors-{tag}"
        vecs[name] = encode(model, corpus, queries, args, cache, name)
        timings[f"encode {name} s"] = vecs[name]["encode_s"]
    return vecs, timings, {"from": "trained and encoded in this run"}


def save_vectors(args, vecs: dict, timings: dict, argv) -> None:
    """``--save-vectors``: every model's vectors, the ids, settings and timings, in parts under the folder."""
    import torch

    first = next(iter(vecs.values()))
    record = {**common.stamp(argv), "torch": torch.__version__, "settings": common.settings(args), "timings": timings}
    paths = hashing_vectors.save(args.save_vectors, {name: {"docs": v["docs"], "queries": v["queries"]}
                                                     for name, v in vecs.items()},
                                 first["doc_ids"], first["qids"], record, args.vectors_dtype,
                                 int(args.part_mib * 2**20))
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)", flush=True)
    print(f"timings: {json.dumps(timings)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(1)  # single-threaded search timings on a shared machine
    data, train, corpus, test_qids, train_qids = load_data(args)
    queries = {q: data.queries[q] for q in test_qids} | {q: train.queries[q] for q in train_qids}
    vecs, timings, source = model_vectors(args, corpus, queries)
    if args.save_vectors:
        return save_vectors(args, vecs, timings, argv)
    rows = []
    print(HEADER, flush=True)
    for name, vec in vecs.items():
        pos = {q: i for i, q in enumerate(vec["qids"])}
        take = lambda ids: vec["queries"][[pos[q] for q in ids]]  # noqa: E731
        test = {"qids": test_qids, "queries": take(test_qids), "qrels": {q: data.qrels[q] for q in test_qids}}
        train_q = {"qids": train_qids, "queries": take(train_qids), "qrels": {q: train.qrels[q] for q in train_qids}}
        rows += rows_for(name, vec, test, train_q, args)

    result = common.write_result("hashing", {
        "faiss": faiss.__version__, "faiss_threads": 1, "docs": len(corpus), "test_queries": len(test_qids),
        "train_queries": len(train_qids), "settings": common.settings(args), "vectors": source,
        "timings": timings, "rows": rows, "paired": paired(rows)}, args, argv)
    print(f"timings: {json.dumps(timings)}")
    print(paired_md(result["paired"]))
    if args.append:
        common.append_benchmarks(section(result))


def section(result: dict) -> str:
    s = result["settings"]
    return "\n".join([
        "## Semantic hashing on SciFact (SimHash codes, exact Hamming and hash tables)",
        "",
        f"Command: `flock /tmp/reprlab-heavy.lock {result['command']}` (from the repo root). "
        f"Machine: {result['machine']}. Date: {result['date']}. FAISS {result['faiss']}, 1 search thread.",
        "",
        f"{result['docs']} documents, {result['test_queries']} test queries (`qrels/test.tsv`); fine-tuning on "
        f"`qrels/train.tsv` ({s['epochs']} epoch, batch {s['train_batch_size']}, lr {s['lr']}, "
        f"{s['num_negatives']} BM25 hard negative, max length {s['max_length']}; angular loss "
        f"{s['similarity']} x {s['scale']}{'; DPR control: cosine x 20' if s['dpr_control'] else ''}); codes from {s['bits']}-bit random hyperplanes (seed {s['seed']}). "
        "Hash tables: `IndexBinaryMultiHash`, parameters chosen on the train queries (fewest codes compared "
        f"with train Recall@100 within {s['recall_slack']} of exact Hamming). ms/query: 300 queries at k=100, "
        f"median of {s['repeats']} passes (spread = (max - min) / median), query hashing included, query encoding "
        f"excluded. Timings (s{vectors_where(result)}): " + ", ".join(f"{k} {v}" for k, v in result["timings"].items()) + ".",
        "",
        HEADER,
        *map(row_md, result["rows"]),
        "",
        paired_md(result.get("paired", [])),
        "",
    ])


def paired_md(pairs: list[dict]) -> str:
    lines = ["| difference (same 300 queries) | bits | nDCG@10 difference | 95% paired bootstrap | won / lost |",
             "|---|---|---|---|---|"]
    for p in pairs:
        bits = "float" if p["bits"] > 4096 else p["bits"]
        lines.append(f"| {p['a']} - {p['b']} | {bits} | {p['difference']:+.4f} | [{p['ci95'][0]:+.4f}, "
                     f"{p['ci95'][1]:+.4f}] | {p['won']} / {p['lost']} |")
    return "\n".join(lines)


def vectors_where(result: dict) -> str:
    v = result.get("vectors", {})
    if v.get("from") != "--vectors":
        return ""
    return f"; training and encoding on {v['machine']}, {v['date']}, `{v['command']}`, vectors sent as {v['dtype']}"


if __name__ == "__main__":
    main()
