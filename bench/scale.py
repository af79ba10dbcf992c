"""Scale: Ray vs single-process encoding, and a 1M-vector simulation of the index choices in docs/SCALE.md.

Part ``encode``: the same SciFact documents (the first ``--encode-docs`` by id, ``--max-length`` tokens)
encoded by MiniLM (a) in one process with 2 torch threads (``DenseRetriever.encode_corpus``), (b) by
``encode_shards(engine="ray")``: a local Ray with 2 CPUs, 2 actors of 1 thread each, started and stopped
inside each pass, as ``reprlab index --engine ray`` does, (c) optionally the local engine writing shards.
Equal cores (2); 3 interleaved passes; the ratio is the median wall time over the single process's. The
fixed cost of a Ray job is timed on 2 one-line documents, whole and split into start / job / stop; the
per-document rate ratio is (Ray - fixed) / single.

Part ``index``: 1M vectors of dimension 384 that resemble MiniLM's: a Gaussian mixture (64 components,
one shared full covariance) fitted to the MiniLM vectors of SciFact's 5,183 documents, sampled and
normalised, with the real SciFact documents embedded at random positions. Queries: SciFact's real
queries (train = the dev side, on which settings are chosen; test = the reported side) and synthetic
queries from a mixture fitted to the train queries (dev side too). For Flat, HNSW32, IVF-PQ (several
nlist / m / nprobe, alone and + an exact rerank of the top R), Flat SQ8 / fp16 and binary codes + exact
rerank (SimHash from ``reprlab.retrieval.binary``, and 384 sign bits as Qdrant's binary quantisation
keeps; ``--ivf`` gives several nlist, each with its nprobes): build seconds, bytes per vector held in RAM,
queries/s (2 threads, the 300 test queries in one batch, median of 3), recall@10 against exact search,
nDCG@10 of the real dev and test queries over the 1M base. Reranks read the exact vectors of the
candidates from a memory-mapped ``.npy`` file (``--rerank-dtype``, float16 by default: on disk, not
counted in RAM; see ``bench/scale_index.py``). A setting is chosen on dev: recall@10 >= 0.95 and dev
nDCG@10 within 0.005 of exact, fewest bytes, most q/s.
Writes ``bench/results/scale.json`` and the frontier plot ``bench/results/scale.png``. ``--merge`` adds
settings to an earlier index part: it rebuilds the same base (seeded; it stops unless the base's fingerprint,
or for an older result its realism figures, match), measures only this run's settings (and flat fp32 again,
the reference) and keeps the earlier rows of the others; each row's ``run`` points into ``index.runs``.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/scale.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import common
import scale_index as si

DIM = si.DIM


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(threads=2, append=False, device=None,
                                                              work_dir="/tmp/reprlab-bench-scale")])
    p.add_argument("--part", choices=("all", "encode", "index", "vectors"), default="all",
                   help="vectors: only encode and cache SciFact's MiniLM vectors in --work-dir (as part index does)")
    p.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    p.add_argument("--encode-docs", type=int, default=1000, help="SciFact documents in the timed encode comparison")
    p.add_argument("--shard-size", type=int, default=250, help="passages per shard in the encode comparison")
    p.add_argument("--max-length", type=int, default=None,
                   help="passage tokens in the encode comparison (default: the model's, 256)")
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the simulated base (synthetic + real)")
    p.add_argument("--components", type=int, default=64, help="Gaussian mixture components of the document model")
    p.add_argument("--gmm-iter", type=int, default=100, help="EM iterations of the mixture fits (after k-means)")
    p.add_argument("--train-queries", type=int, default=0,
                   help="SciFact train queries on the dev side (0 = all 809; a seeded sample otherwise)")
    p.add_argument("--synthetic-queries", type=int, default=1000)
    p.add_argument("--nlist", type=int, default=4096, help="IVF lists (with --nprobe; --ivf gives several)")
    p.add_argument("--flat", nargs="+", default=["fp32", "fp16", "sq8"], choices=("fp32", "fp16", "sq8"),
                   help="flat codecs (fp32 is the exact reference and always runs)")
    p.add_argument("--pq-m", type=int, nargs="+", default=[96, 192], help="IVF-PQ sub-quantisers (bytes per code)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--ivf", nargs="+", metavar="NLIST:NPROBE,...", default=None,
                   help="IVF grids, e.g. 1024:256,512 4096:256,1024 (replaces --nlist / --nprobe)")
    p.add_argument("--bits", type=int, nargs="+", default=[512, 1024], help="SimHash code lengths")
    p.add_argument("--rerank-depths", type=int, nargs="+", default=[300, 1000],
                   help="candidates of the binary codes reranked exactly")
    p.add_argument("--sign-rerank", type=int, nargs="+", default=None,
                   help="candidates of the 384 sign bits reranked exactly (default: --rerank-depths)")
    p.add_argument("--pq-rerank", type=int, nargs="+", default=[100, 300, 1000],
                   help="candidates of IVF-PQ reranked exactly (each a setting)")
    p.add_argument("--rerank-dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of the memory-mapped vector file the reranks read (on disk, not in RAM)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--hnsw", action="store_true", help="include HNSW32 (its 1M build takes a few minutes on 2 cores)")
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256, 512], help="HNSW32's efSearch values")
    p.add_argument("--merge", action="store_true",
                   help="keep the earlier index part's rows (same base, checked) for the settings this run skips")
    p.add_argument("--local-shards", action="store_true", help="also time the local engine writing shards")
    p.add_argument("--plan", action="store_true", help="print docs/SCALE.md's derived tables from the result JSON")
    args = common.parse(p, argv)
    common.require(args.data, "SciFact BEIR folder")
    if args.quick:
        args.encode_docs, args.shard_size, args.n, args.components = 40, 10, 20_000, 8
        args.synthetic_queries, args.hnsw, args.local_shards = 100, True, True
        args.ivf = args.ivf or ["64:8,32", "128:16,64"]
    args.ivf = args.ivf or [f"{args.nlist}:{','.join(map(str, args.nprobe))}"]
    try:
        grid = ivf_grid(args.ivf)
    except ValueError:
        p.error(f"--ivf takes NLIST:NPROBE,NPROBE... (e.g. 1024:256,512), got {args.ivf}")
    if any(not 1 <= n <= nlist for nlist, nprobes in grid for n in nprobes):
        p.error(f"--ivf: every nprobe must be in 1..nlist, got {args.ivf}")
    if args.merge and args.part != "index":
        p.error("--merge keeps the rows of an earlier index part: use it with --part index")
    if "fp32" not in args.flat:
        args.flat = ["fp32", *args.flat]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    return args


def ivf_grid(specs: list[str]) -> list[tuple[int, list[int]]]:
    """``["1024:256,512"]`` -> ``[(1024, [256, 512])]`` (a ValueError on anything else)."""
    grid = []
    for spec in specs:
        nlist, nprobes = spec.split(":")
        grid.append((int(nlist), [int(n) for n in nprobes.split(",")]))
    return grid


def load(args):
    from reprlab.text.beir import load_beir

    train, test = load_beir(args.data, split="train"), load_beir(args.data, split="test")
    if args.quick:
        test = common.subsample(test, 20, 150)
        train = common.subsample(train, 30, 0, keep_docs=list(test.corpus))
        train.corpus = test.corpus
    return train, test


# ----------------------------------------------------------------------------- part 1: encoding


def part_encode(args, corpus) -> dict:
    import shutil

    import torch

    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.distributed import encode_shards, read_vectors

    ids = sorted(corpus)[: args.encode_docs]
    sub = {i: corpus[i] for i in ids}
    torch.set_num_threads(2)
    t0 = time.time()
    single = DenseRetriever.from_model("minilm", batch_size=32)
    single.doc_model.max_length = args.max_length or single.doc_model.max_length
    load_s = time.time() - t0  # outside the single process's timed passes: reported beside them
    single.encode_corpus({i: sub[i] for i in ids[:32]}, show_progress=False)  # warm-up
    work = args.work_dir / "encode"
    options = dict(model="minilm", batch_size=32, num_workers=2, cpus_per_worker=1, show_progress=False,
                   max_length=args.max_length)

    def run_single():
        return single.encode_corpus(sub, show_progress=False)[1]

    def run_shards(engine):
        def go():
            shutil.rmtree(work / engine, ignore_errors=True)
            encode_shards(sub, work / engine, engine=engine, shard_size=args.shard_size, **options)
            return read_vectors(work / engine)[1]
        return go

    contestants = {"single process (2 threads)": run_single,
                   "ray (2 actors x 1 thread, incl. start)": run_shards("ray")}
    if args.local_shards:
        contestants["local shards (1 process, 2 threads)"] = run_shards("local")
    times = common.timed_interleaved(contestants, repeat=args.repeat, warmup=0)
    base = times["single process (2 threads)"]
    rows = []
    for name, t in times.items():
        diff = float(np.abs(t.result - base.result).max())
        rows.append({"setting": name, "seconds": t.rounded(3), "docs_per_s": round(len(ids) / t["median"], 2),
                     "ratio": round(t["median"] / base["median"], 3), "max_abs_diff_vs_single": diff})
        print(f"[encode] {name}: {t['median']:.1f} s ({len(ids) / t['median']:.1f} docs/s), "
              f"x{t['median'] / base['median']:.3f}, max diff {diff:.1e}", file=sys.stderr)
    ray = times["ray (2 actors x 1 thread, incl. start)"]
    fixed, parts = ray_fixed_cost(work, options, args.repeat)
    per_doc = (ray["median"] - fixed["median"]) / base["median"]
    return {**common.stamp(), "docs": len(ids), "shard_size": args.shard_size,
            "max_length": int(single.doc_model.max_length), "single_model_load_s": round(load_s, 2), "rows": rows,
            "ray_fixed_s": fixed.rounded(3), "ray_fixed_parts_s": parts,
            "ray_per_doc_ratio": round(per_doc, 3), "ray_overhead_excluding_fixed": round(per_doc - 1, 3),
            "ray_overhead": round(ray["median"] / base["median"] - 1, 3),
            "ray_overhead_on_running_cluster": round(
                (ray["median"] - fixed["median"] + parts["job_on_running_ray"]["median"]) / base["median"] - 1, 3),
            "per_core_docs_per_s_ray": round(len(ids) / ray["median"] / 2, 2),
            "gpu": "no GPU run: the device machine lent to this session has no ray or faiss package"}


def ray_fixed_cost(work: Path, options: dict, repeat: int):
    """The fixed cost of a Ray job: the same job on 2 one-line documents, (a) as ``reprlab index --engine ray``
    runs it (start a local Ray, 2 actors load the model, stop), and (b) split: ``ray.init``, the job on the
    running Ray, 2 s after its start (actor processes, model loads, Ray Data's scheduling), ``ray.shutdown``:
    what ``--address`` (joining a running cluster) saves is (a) minus the job alone."""
    import shutil

    import ray

    from reprlab.retrieval.distributed import encode_shards

    tiny = {i: {"title": "", "text": "a"} for i in ("a", "b")}

    def job():
        shutil.rmtree(work / "fixed", ignore_errors=True)
        encode_shards(tiny, work / "fixed", engine="ray", shard_size=1, **options)

    fixed = common.timed(job, repeat=repeat)
    split = {"ray_init": [], "job_on_running_ray": [], "ray_shutdown": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        time.sleep(2)  # a running cluster is idle when a job joins it: let the prestarted workers settle
        t1 = time.perf_counter()
        job()
        t2 = time.perf_counter()
        ray.shutdown()
        for key, seconds in zip(split, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
            split[key].append(seconds)
    parts = {key: common.Timing.of(v).rounded(3) for key, v in split.items()}
    print(f"[encode] fixed cost of a Ray job: {fixed['median']:.1f} s = start "
          f"{parts['ray_init']['median']:.1f} + job {parts['job_on_running_ray']['median']:.1f} + stop "
          f"{parts['ray_shutdown']['median']:.1f} s", file=sys.stderr)
    return fixed, parts


# ----------------------------------------------------------------------------- part 2: the 1M simulation


def scifact_vectors(args, train, test) -> dict:
    """MiniLM vectors of the SciFact corpus and of the train and test queries (cached in --work-dir)."""
    from reprlab.retrieval.dense import DenseRetriever

    cache = args.work_dir / "scifact-minilm.npz"
    doc_ids = list(test.corpus)
    qids = {"train": sorted(train.judged_queries()), "test": sorted(test.judged_queries())}
    if cache.is_file():
        saved = np.load(cache)
        if list(saved["doc_ids"]) == doc_ids:
            return {"doc_ids": doc_ids, "docs": saved["docs"], "qids": qids,
                    "train": saved["train"], "test": saved["test"]}
    retriever = DenseRetriever.from_model("minilm", batch_size=32)
    t0 = time.time()
    docs = retriever.encode_corpus(test.corpus, show_progress=True)[1]
    print(f"[index] encoded {len(docs)} SciFact documents in {time.time() - t0:.0f} s", file=sys.stderr)
    out = {"doc_ids": doc_ids, "docs": docs, "qids": qids,
           "train": retriever.encode_queries([train.queries[q] for q in qids["train"]]),
           "test": retriever.encode_queries([test.queries[q] for q in qids["test"]])}
    np.savez(cache, doc_ids=np.array(doc_ids), docs=docs, train=out["train"], test=out["test"])
    return out


def mixture(x: np.ndarray, components: int, max_iter: int = 100, seed: int = 0):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():  # a capped --gmm-iter stops before convergence on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(components, covariance_type="tied", max_iter=max_iter, reg_covar=1e-5,
                               random_state=seed).fit(x)


def sample(model, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors from a fitted mixture (sampled in chunks, normalised like MiniLM's output)."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(model.covariances_)  # (d, d), tied covariance
    counts = rng.multinomial(n, model.weights_)
    out = np.empty((n, model.means_.shape[1]), np.float32)
    at = 0
    for c, count in enumerate(counts):
        z = rng.standard_normal((count, chol.shape[0])).astype(np.float32)  # (count, d)
        out[at:at + count] = model.means_[c] + z @ chol.T.astype(np.float32)
        at += count
    out = out[rng.permutation(n)]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def build_base(args, vec) -> dict:
    """The base (synthetic + the real documents at random positions) and the query sets."""
    t0 = time.time()
    docs_model = mixture(vec["docs"], args.components, args.gmm_iter)
    query_model = mixture(vec["train"], max(2, args.components // 4), args.gmm_iter)
    n_real = len(vec["docs"])
    base = sample(docs_model, args.n, seed=1)
    rng = np.random.default_rng(2)
    where = np.sort(rng.choice(args.n, size=n_real, replace=False))
    base[where] = vec["docs"]
    ids = np.array([f"syn{i}" for i in range(args.n)], dtype=object)
    ids[where] = vec["doc_ids"]
    synthetic_q = sample(query_model, args.synthetic_queries, seed=3)
    print(f"[index] base of {args.n} vectors ({n_real} real) in {time.time() - t0:.0f} s", file=sys.stderr)
    rows = train_rows(args, len(vec["train"]))
    return {"x": base, "ids": ids, "real": where, "dev_qids": [vec["qids"]["train"][i] for i in rows],
            "queries": {"dev": np.concatenate([vec["train"][rows], synthetic_q]), "test": vec["test"]},
            "synthetic_q": synthetic_q}


def train_rows(args, n: int) -> np.ndarray:
    """The rows of the SciFact train queries on the dev side: all, or a seeded sample of ``--train-queries``."""
    if not 0 < args.train_queries < n:
        return np.arange(n)
    return np.sort(np.random.default_rng(6).choice(n, size=args.train_queries, replace=False))


def realism(vec, base, truth=None) -> dict:
    """How the synthetic vectors compare with the real ones: cosine of each real query to its nearest real
    document vs its nearest synthetic one (of as many), and the mean pairwise cosine of each set."""
    rng = np.random.default_rng(4)
    real = vec["docs"]
    syn_rows = np.setdiff1d(np.arange(len(base["x"])), base["real"])
    syn = base["x"][rng.choice(syn_rows, size=len(real), replace=False)]
    q = vec["test"]

    def pair_mean(x):
        s = x[:2000] @ x[:2000].T
        return float((s.sum() - np.trace(s)) / (len(s) * (len(s) - 1)))

    is_real = np.zeros(len(base["x"]), bool)
    is_real[base["real"]] = True
    shares = {} if truth is None else {  # the base rate of real documents among the exact neighbours
        f"real_share_of_exact_top10_{side}": float(is_real[t].mean()) for side, t in truth.items()}
    return {**shares, "query_top1_cosine_real_docs": float((q @ real.T).max(1).mean()),
            "query_top1_cosine_synthetic_docs": float((q @ syn.T).max(1).mean()),
            "mean_pairwise_cosine_real_docs": pair_mean(real),
            "mean_pairwise_cosine_synthetic_docs": pair_mean(syn),
            "synthetic_query_top1_cosine_real_docs": float((base["synthetic_q"] @ real.T).max(1).mean())}


# ----------------------------------------------------------------------------- the frontier


def plot(rows: list[dict], path: Path, n: int) -> None:
    """Recall@10 (test) against queries/s: one line per family in parameter order, the Pareto frontier dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    colors = plt.get_cmap("tab20").colors
    for f, family in enumerate(dict.fromkeys(r["family"] for r in rows)):
        pts = sorted((r["qps"], r["recall10_test"]) for r in rows if r["family"] == family)
        size = next(r["bytes_per_vector"] for r in rows if r["family"] == family)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^vD<>ph*"[f % 10], color=colors[f % 20],
                label=f"{family} ({size:.0f} B/vec)")
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: -r["qps"]):
        if r["recall10_test"] > best:
            best = r["recall10_test"]
            front.append((r["qps"], best))
    ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linestyle="--", linewidth=1,
            label="frontier (any memory)")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("queries / s (2 threads, batch of 300 test queries)")
    ax.set_ylabel("recall@10 vs exact (SciFact test queries)")
    ax.set_title(f"{n:,} MiniLM-like vectors (384-d): recall vs speed; memory per vector in the legend")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


def part_index(args, train, test, earlier: dict | None = None) -> dict:
    """The 1M simulation; with ``earlier`` (an index part of the same base, or the run stops before measuring
    anything), its rows for the settings this run skips are kept beside this run's."""
    import faiss

    from reprlab.retrieval.rerank import open_vectors, save_vectors

    faiss.omp_set_num_threads(args.threads or 2)
    vec = scifact_vectors(args, train, test)
    base = build_base(args, vec)
    world = {"n": args.n, "real_docs": len(vec["docs"]), "dim": DIM, "components": args.components,
             "gmm_iter": args.gmm_iter, "queries": {"dev": len(base["queries"]["dev"]), "dev_real":
                                                    len(base["dev_qids"]), "test": len(base["queries"]["test"])},
             "rerank_file": {"dtype": args.rerank_dtype, "bytes_per_vector": np.dtype(args.rerank_dtype).itemsize * DIM,
                             "mmap": True}, "base_sha256": si.fingerprint(base)}
    if earlier is not None and (why := si.same_base(earlier, {**world, "realism": realism(vec, base)})):
        sys.exit(f"--merge: the earlier index part was measured on another base ({why}); run without --merge")
    t0 = time.time()
    truth = {side: si.exact_top(base["x"], q, 10)[1] for side, q in base["queries"].items()}
    print(f"[index] exact top-10 of {sum(len(q) for q in base['queries'].values())} queries in "
          f"{time.time() - t0:.0f} s", file=sys.stderr)
    x = base["x"]
    # the reranks read the exact vectors from this file through a memory map: not counted in RAM
    store = open_vectors(save_vectors(args.work_dir / f"base-{args.rerank_dtype}.npy", x, args.rerank_dtype))
    judged = {"dev": (base["dev_qids"], train.qrels), "test": (vec["qids"]["test"], test.qrels)}
    rows = []
    makers = [lambda x: si.flat_settings(x, truth, args.flat)]
    makers += [lambda x: si.hnsw_settings(x, args.ef_search)] if args.hnsw else []
    makers += [lambda x, nlist=nlist, nprobes=nprobes: si.ivfpq_settings(
        x, store, base["queries"], nlist, ms=args.pq_m, nprobes=nprobes, depths=args.pq_rerank)
        for nlist, nprobes in ivf_grid(args.ivf)]
    makers += [lambda x: si.binary_settings(x, store, bits_list=args.bits, depths=args.rerank_depths,
                                            sign_depths=args.sign_rerank)]
    for make in makers:
        settings = make(x)
        rows += si.measure(settings, base, truth, judged, args.repeat)
        del settings
    runs = {}
    if earlier is not None:
        flat_qps = next(r["qps"] for r in rows if r["family"] == "Flat fp32")
        rows, runs["runs"] = si.merge(earlier, rows, {**common.stamp(), "flat_fp32_qps": flat_qps})
    chosen, goal = finish(rows, world["rerank_file"]["bytes_per_vector"])
    return {**common.stamp(), **world, "ivf": args.ivf, "threads": args.threads,
            "realism": realism(vec, base, truth), "rows": rows, "chosen_on_dev": chosen, "goal_met_by": goal, **runs}


def finish(rows: list[dict], disk_bytes: int) -> tuple[dict, list[str]]:
    """Adds to each row its memory and nDCG gaps against flat fp32 and whether the dev rule chose it; returns the
    choices and the chosen compressed settings that meet the issue's goal on the test side."""
    exact = next(r for r in rows if r["family"] == "Flat fp32")
    chosen = si.choose(rows)
    for r in rows:
        r["memory_vs_flat"] = round(r["bytes_per_vector"] / exact["bytes_per_vector"], 4)
        r["ndcg_gap"] = round(r["ndcg10_test"] - exact["ndcg10_test"], 4)
        r["ndcg_gap_dev"] = round(r["ndcg10_dev"] - exact["ndcg10_dev"], 4)
        r["chosen_on_dev"] = chosen.get(r["family"]) == r["setting"]
        if "rerank" in r:
            r["disk_bytes_per_vector"] = disk_bytes
    goal = [r["setting"] for r in rows if r["chosen_on_dev"] and r["memory_vs_flat"] <= 1 / 8
            and r["recall10_test"] >= 0.95 and abs(r["ndcg_gap"]) <= 0.005
            and ("PQ" in r["family"] or "bits" in r["family"])]
    return chosen, goal


def markdown(record: dict) -> str:
    lines = []
    if "encode" in record:
        e = record["encode"]
        lines += [f"Encoding {e['docs']} SciFact documents (shards of {e['shard_size']}), 2 cores:", "",
                  "| setting | median s | docs/s | ratio | spread | max abs diff vs single |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['seconds']['median']:.1f} | {r['docs_per_s']} | {r['ratio']:.3f}x | "
                  f"{r['seconds']['spread']:.2f} | {r['max_abs_diff_vs_single']:.1e} |" for r in e["rows"]]
        lines.append("")
    if "index" in record:
        runs = "runs" in record["index"]  # a merged part: the run of each row (index.runs)
        lines += ["| setting | B/vector in RAM | vs flat | build s | q/s (spread) | recall@10 dev | nDCG@10 gap dev | "
                  "recall@10 test | nDCG@10 test | gap vs exact | chosen on dev |" + (" run |" if runs else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if runs else "")]
        lines += [f"| {r['setting']} | {r['bytes_per_vector']:.1f} | {r['memory_vs_flat']:.3f} | {r['build_s']:.0f} | "
                  f"{r['qps']:,.0f} ({r['search_s']['spread']:.0%}) | {r['recall10_dev']:.3f} | "
                  f"{r['ndcg_gap_dev']:+.4f} | {r['recall10_test']:.3f} | {r['ndcg10_test']:.4f} | "
                  f"{r['ndcg_gap']:+.4f} | {'**yes**' if r['chosen_on_dev'] else ''} |"
                  + (f" {r['run']} |" if runs else "")
                  for r in record["index"]["rows"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- docs/SCALE.md tables


NODE_RAM_GB, NODE_CORES, TARGET_QPS = 48, 32, 100


def plan_tables(record: dict) -> str:
    """The memory and shard/replica tables of docs/SCALE.md, derived from the measured 1M rows: totals =
    bytes/vector x N; a shard holds at most NODE_RAM_GB; per-shard q/s = q/s at 1M x 1M / (vectors per
    shard) x NODE_CORES / 2 (the bench ran on 2 threads); replicas = ceil(TARGET_QPS / per-shard q/s)."""
    import math

    index = record["index"]
    n1 = index["n"]
    chosen = [r for r in index["rows"] if r["chosen_on_dev"]]
    lines = ["| setting (chosen on dev) | B/vector in RAM | recall@10 test | nDCG@10 gap | 1M | 10M | 100M | "
             "rerank file on disk (1M / 10M / 100M) |", "|---|---|---|---|---|---|---|---|"]
    for r in chosen:
        gb = [r["bytes_per_vector"] * n / 1e9 for n in (1e6, 1e7, 1e8)]
        disk = r.get("disk_bytes_per_vector")
        disk = " / ".join(f"{disk * n / 1e9:.1f} GB" for n in (1e6, 1e7, 1e8)) if disk else "-"
        lines.append(f"| {r['setting']} | {r['bytes_per_vector']:.0f} | {r['recall10_test']:.3f} | "
                     f"{r['ndcg_gap']:+.4f} | {gb[0]:.2f} GB | {gb[1]:.1f} GB | {gb[2]:.0f} GB | {disk} |")
    lines += ["", f"Nodes of {NODE_RAM_GB} GB for the index and {NODE_CORES} cores, {TARGET_QPS} queries/s:", "",
              "| setting | N | index GB | shards | q/s per shard group | replicas | nodes |", "|---|---|---|---|---|---|---|"]
    for r in chosen:
        for n in (1e6, 1e7, 1e8):
            total = r["bytes_per_vector"] * n / 1e9
            shards = max(1, math.ceil(total / NODE_RAM_GB))
            qps = r["qps"] * n1 / (n / shards) * NODE_CORES / 2
            replicas = max(1, math.ceil(TARGET_QPS / qps))
            lines.append(f"| {r['setting']} | {n / 1e6:.0f}M | {total:.1f} | {shards} | {qps:,.0f} | {replicas} | "
                         f"{shards * replicas} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.plan:
        record = common.read_result(common.result_path("scale", args))
        print(plan_tables(record))
        return record
    train, test = load(args)
    if args.part == "vectors":
        vec = scifact_vectors(args, train, test)
        print(f"[vectors] {len(vec['docs'])} documents, {len(vec['train'])} + {len(vec['test'])} queries cached in "
              f"{args.work_dir}", file=sys.stderr)
        return vec
    path = common.result_path("scale", args)
    # a one-part run keeps the other part of an earlier run (read before any write of this run)
    kept = {} if args.part == "all" else {k: v for k, v in common.read_result(path).items() if k in ("encode", "index")}
    if args.merge and "index" not in kept:
        sys.exit(f"--merge: {path} has no index part to merge with")
    record = {"settings": common.settings(args), **kept}
    if args.part in ("all", "index"):
        record["index"] = part_index(args, train, test, earlier=kept.get("index") if args.merge else None)
        plot(record["index"]["rows"], path.with_suffix(".png"), args.n)
        common.write_result("scale", record, args, argv)  # kept if the encode part fails
    if args.part in ("all", "encode"):
        record["encode"] = part_encode(args, test.corpus)
    record = common.write_result("scale", record, args, argv)
    print(markdown(record))
    return record


if __name__ == "__main__":
    main()
