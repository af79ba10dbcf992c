"""bench/scale.py's index settings and their measurement (the 1M simulation's second half).

Every "+ rerank" setting keeps only its codes in RAM (the bytes per vector reported) and re-scores its
top-R candidates exactly with the vectors of a memory-mapped ``.npy`` file (float16 by default, 768 B per
vector on disk, reported separately), with :func:`reprlab.retrieval.rerank.rerank`. Settings are chosen
on the dev side only (SciFact train queries + synthetic ones); the test queries are reported.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import common

DIM = 384


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)


def rerank(store, q: np.ndarray, candidates: np.ndarray, k: int = 10) -> np.ndarray:
    """The exact top-k positions (Q, k) among the candidates, scored with the vectors of ``store`` (a memmap)."""
    from reprlab.retrieval.rerank import rerank as exact

    return exact(store, q, candidates, k)[1]


class Setting:
    """One index setting: ``search(q) -> (Q, 10) positions`` (timed end to end), bytes per vector in memory,
    build seconds; ``results(side)``, when given, returns the dev/test positions without searching again
    (a prefix of one deeper search, or the exact truth)."""

    def __init__(self, family: str, name: str, search, bytes_per_vector: float, build_s: float, params: dict,
                 results=None, diagnose=None):
        self.family, self.name, self.search = family, name, search
        self.bytes_per_vector, self.build_s, self.params = bytes_per_vector, build_s, params
        self.results, self.diagnose = results, diagnose


def faiss_bytes(index, n: int) -> float:
    import faiss

    serialize = faiss.serialize_index_binary if isinstance(index, faiss.IndexBinary) else faiss.serialize_index
    return float(serialize(index).size) / n


def flat_settings(x, truth, codecs=("fp32", "fp16", "sq8")) -> list:
    import faiss

    out = []
    makers = {"fp32": ("Flat fp32", lambda: faiss.IndexFlatIP(DIM)),
              "fp16": ("Flat fp16", lambda: faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_fp16,
                                                                       faiss.METRIC_INNER_PRODUCT)),
              "sq8": ("Flat SQ8 (Qdrant scalar)", lambda: faiss.IndexScalarQuantizer(
                  DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT))}
    for codec in codecs:
        family, make = makers[codec]
        t0 = time.time()
        index = make()
        index.train(x[:200_000])
        index.add(x)
        exact = (lambda side: truth[side]) if codec == "fp32" else None  # the exact search is the truth
        out.append(Setting(family, family, lambda q, i=index: i.search(q, 10)[1], faiss_bytes(index, len(x)),
                           time.time() - t0, {}, results=exact))
    return out


def hnsw_settings(x, ef_values=(32, 64, 128, 256, 512)) -> list:
    """HNSW32 (faiss ``IndexHNSWFlat``, M = 32, efConstruction 40) over the float32 vectors, at each efSearch.
    Its memory is the serialised index: the vectors (1,536 B) plus the graph (``graph_bytes_per_vector``: the
    neighbour lists, 2M = 64 ids at level 0 and M more per upper level, their offsets and the levels), so it is
    above flat fp32 and the graph alone is above the 1/8 budget (192 B) whatever codes it were built over."""
    import faiss

    t0 = time.time()
    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    build = time.time() - t0
    print(f"[index] HNSW32 built in {build:.0f} s", file=sys.stderr)
    size = faiss_bytes(index, len(x))
    graph = (index.hnsw.neighbors.size() * 4 + index.hnsw.offsets.size() * 8 + index.hnsw.levels.size() * 4) / len(x)

    def search(q, ef):
        index.hnsw.efSearch = ef
        return index.search(q, 10)[1]

    return [Setting("HNSW32", f"HNSW32 efSearch {ef}", lambda q, ef=ef: search(q, ef), size, build,
                    {"efSearch": ef, "graph_bytes_per_vector": round(graph, 1)}) for ef in ef_values]


def list_of_each(index, n: int) -> np.ndarray:
    """(n,) the inverted list each vector was added to (read from the IVF index, not searched again)."""
    import faiss

    lists = np.full(n, -1, np.int64)
    invlists = index.invlists
    for li in range(index.nlist):
        size = invlists.list_size(li)
        if size:
            lists[faiss.rev_swig_ptr(invlists.get_ids(li), size)] = li
    return lists


def ivfpq_settings(x, store, queries: dict, nlist: int, ms=(96, 192), nprobes=(16, 32, 64, 128),
                   depths=(100,)) -> list:
    """IVF-PQ at each m and nprobe, alone and + an exact rerank of the top R (each of ``depths``) from
    ``store``. The dev/test candidates come from one search per (m, nprobe) at the deepest R (its prefixes
    are the shallower ones); each setting's timing runs its own search + rerank. The coarse quantiser and the
    PQ codebooks are trained on a uniform sample of the base as it is (50 x nlist vectors; the real documents
    in it at their share of the base, 0.5%, never singled out: which documents are real is test-side
    knowledge)."""
    import faiss

    t0 = time.time()
    train = x[np.random.default_rng(5).choice(len(x), size=min(len(x), 50 * nlist), replace=False)]
    quantizer = faiss.IndexFlatIP(DIM)
    clustering = faiss.Clustering(DIM, nlist)
    clustering.niter, clustering.seed = 10, 0
    clustering.train(train, quantizer)  # the coarse centroids, shared by every m
    coarse_s = time.time() - t0
    lists = None  # (N,) the list of each vector, for the diagnosis
    out = []
    for m in ms:
        t1 = time.time()
        index = faiss.IndexIVFPQ(quantizer, DIM, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(train)  # PQ codebooks only: the quantizer is trained
        index.add(x)
        build = coarse_s + time.time() - t1
        lists = list_of_each(index, len(x)) if lists is None else lists
        print(f"[index] IVF{nlist},PQ{m} built in {build:.0f} s", file=sys.stderr)
        size = faiss_bytes(index, len(x))  # codes, list ids and the centroids

        def search(q, nprobe, depth, index=index):
            index.nprobe = nprobe
            labels = index.search(q, depth)[1]
            return labels if depth == 10 else rerank(store, q, labels)

        for nprobe in nprobes:
            index.nprobe = nprobe
            deep = {side: index.search(q, max(depths))[1] for side, q in queries.items()}  # (Q, R_max)
            probed = {side: quantizer.search(q, nprobe)[1] for side, q in queries.items()}  # (Q, nprobe)
            params = {"m": m, "nprobe": nprobe}
            name = f"IVF{nlist},PQ{m} nprobe {nprobe}"
            out.append(Setting(f"IVF{nlist},PQ{m}", name, lambda q, n=nprobe, s=search: s(q, n, 10), size, build,
                               params, results=lambda side, d=deep: d[side][:, :10]))
            for depth in depths:
                out.append(Setting(
                    f"IVF{nlist},PQ{m} + rerank", f"{name} + rerank {depth}",
                    lambda q, n=nprobe, d=depth, s=search: s(q, n, d), size, build, {**params, "rerank": depth},
                    results=lambda side, d=deep, r=depth: rerank(store, queries[side], d[side][:, :r]),
                    diagnose=lambda side, missed, d=deep, p=probed, r=depth, li=lists: miss_causes(
                        missed, li, p[side], d[side][:, :r])))
    return out


def miss_causes(missed: list[list[int]], lists: np.ndarray, probed: np.ndarray, cand: np.ndarray) -> dict:
    """Of the exact top-10 neighbours a setting missed: the share whose IVF list was not probed (the coarse
    quantiser's miss) and the share that was probed but ranked below R by the PQ score (the codes' miss)."""
    total = sum(len(m) for m in missed)
    not_probed = sum(int(lists[p] not in set(probed[i].tolist())) for i, ms in enumerate(missed) for p in ms)
    below_r = sum(int(p not in set(cand[i].tolist())) for i, ms in enumerate(missed) for p in ms) - not_probed
    return {"missed": total, "not_probed": round(not_probed / max(total, 1), 3),
            "probed_but_below_R": round(below_r / max(total, 1), 3)}


def binary_settings(x, store, bits_list=(512, 1024), depths=(300, 1000), sign_depths=None) -> list:
    """SimHash codes of each length (``reprlab.retrieval.binary``) + an exact rerank of the top R (each of
    ``depths``), and 384 sign bits (Qdrant's binary quantisation) + a rerank of each of ``sign_depths``."""
    import faiss

    from reprlab.retrieval.binary import BinaryIndex

    out = []
    for bits in bits_list:
        t0 = time.time()
        index = BinaryIndex(DIM, bits, method="flat", seed=0)
        index.add([str(i) for i in range(len(x))], x)
        build = time.time() - t0
        size = faiss_bytes(index.index, len(x))
        for depth in depths:
            out.append(Setting(f"SimHash {bits} bits + rerank", f"SimHash {bits} bits + rerank {depth}",
                               lambda q, d=depth, i=index: rerank(store, q, i.search_labels(i.encode(q), d)[1]),
                               size, build, {"bits": bits, "rerank": depth}))
    t0 = time.time()
    signs = faiss.IndexBinaryFlat(DIM)
    signs.add(np.packbits(x > 0, axis=1))
    build = time.time() - t0
    for depth in depths if sign_depths is None else sign_depths:
        out.append(Setting("sign bits 384 + rerank (Qdrant binary)", f"sign bits 384 + rerank {depth}",
                           lambda q, d=depth: rerank(store, q, signs.search(np.packbits(q > 0, axis=1), d)[1]),
                           faiss_bytes(signs, len(x)), build, {"bits": DIM, "rerank": depth}))
    return out


# ----------------------------------------------------------------------------- measuring


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))


def ndcg(positions: np.ndarray, base, qids: list[str], qrels) -> float:
    from reprlab.retrieval.metrics import evaluate

    run = {q: {str(base["ids"][p]): float(10 - r) for r, p in enumerate(row) if p >= 0}
           for q, row in zip(qids, positions)}
    return evaluate({q: qrels[q] for q in qids}, run, metrics=["ndcg_cut_10"])["ndcg_cut_10"]


def measure(settings, base, truth, judged: dict, repeat: int) -> list[dict]:
    """One row per setting. ``judged[side] = (qids, qrels)``: the real queries of each side (dev: the SciFact
    train queries, the first rows of the dev queries; test: all of them) and their judgements."""
    rows = []
    q_test = base["queries"]["test"]
    for s in settings:
        found = {side: (s.results(side) if s.results else s.search(q)) for side, q in base["queries"].items()}
        timing = common.timed(lambda: s.search(q_test), repeat=repeat)
        row = {"family": s.family, "setting": s.name, **s.params, "bytes_per_vector": round(s.bytes_per_vector, 1),
               "build_s": round(s.build_s, 1), "qps": round(len(q_test) / timing["median"], 1),
               "search_s": timing.rounded(4)}
        for side, (qids, qrels) in judged.items():
            row[f"recall10_{side}"] = round(recall_at_10(found[side], truth[side]), 4)
            row[f"ndcg10_{side}"] = round(ndcg(found[side][:len(qids)], base, qids, qrels), 4)
            if s.diagnose:
                missed = [sorted(set(t.tolist()) - set(f.tolist())) for f, t in zip(found[side], truth[side])]
                row[f"misses_{side}"] = {**s.diagnose(side, missed),
                                         "real_share": round(real_share(missed, base), 3)}
        rows.append(row)
        print(f"[index] {s.name}: {row['bytes_per_vector']} B/vec, {row['qps']} q/s, recall@10 dev "
              f"{row['recall10_dev']} test {row['recall10_test']}, nDCG@10 dev {row['ndcg10_dev']} test "
              f"{row['ndcg10_test']}", file=sys.stderr)
    return rows


def real_share(missed: list[list[int]], base) -> float:
    """The share of the missed neighbours that are real SciFact documents (0.5% of the base)."""
    real = set(base["real"].tolist())
    total = sum(len(m) for m in missed)
    return sum(p in real for m in missed for p in m) / max(total, 1)


def choose(rows: list[dict], target: float = 0.95, ndcg_tolerance: float = 0.005) -> dict[str, str]:
    """Per family, the setting chosen on the dev side: recall@10 >= target and nDCG@10 of the dev's real
    queries within ``ndcg_tolerance`` of exact search's, at the fewest bytes, then the most q/s."""
    exact = next(r for r in rows if r["family"] == "Flat fp32")
    chosen = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        ok = [r for r in rows if r["family"] == family and r["recall10_dev"] >= target
              and abs(r["ndcg10_dev"] - exact["ndcg10_dev"]) <= ndcg_tolerance]
        if ok:
            best = min(ok, key=lambda r: (r["bytes_per_vector"], -r["qps"]))
            chosen[family] = best["setting"]
    return chosen


# ----------------------------------------------------------------------------- merging with an earlier run

BASE_KEYS = ("n", "real_docs", "dim", "components", "gmm_iter", "queries", "rerank_file")


def fingerprint(base) -> str:
    """sha256 of the base and the dev and test queries (float32 bytes): equal only for the same simulated world."""
    import hashlib

    digest = hashlib.sha256()
    for a in (base["x"], base["queries"]["dev"], base["queries"]["test"]):
        digest.update(memoryview(np.ascontiguousarray(a, dtype=np.float32)).cast("B"))  # no copy
    return digest.hexdigest()


def same_base(old: dict, new: dict) -> str | None:
    """Why the earlier index part ``old`` was not measured on the same base and queries as ``new`` (None when it
    was): the settings that make the base, then the fingerprint or, for an earlier result without one, the
    realism figures (cosines computed from the base and the queries, equal to 1e-9)."""
    import math

    for key in BASE_KEYS:
        if old.get(key) != new.get(key):
            return f"{key} was {old.get(key)}, is {new.get(key)}"
    if "base_sha256" in old:
        return None if old["base_sha256"] == new["base_sha256"] else "the base's sha256 differs"
    keys = sorted(set(old.get("realism", {})) & set(new.get("realism", {})))
    if not keys:
        return "it has neither a fingerprint nor realism figures to compare"
    differ = [k for k in keys if not math.isclose(old["realism"][k], new["realism"][k], rel_tol=1e-9)]
    return f"realism figures differ: {differ}" if differ else None


def table_order(row: dict) -> tuple:
    """Flat (fp32 first), HNSW, IVF-PQ by nlist and m, SimHash, sign bits; then by nprobe / efSearch / rerank."""
    import re

    family = row["family"]
    kind = next(i for i, p in enumerate(("Flat", "HNSW", "IVF", "SimHash", "sign", "")) if family.startswith(p))
    ivf = re.match(r"IVF(\d+),PQ(\d+)", family)
    nlist, m = (int(g) for g in ivf.groups()) if ivf else (0, 0)
    return (kind, family != "Flat fp32", nlist, m, row.get("bits", 0), row.get("nprobe", 0), row.get("efSearch", 0),
            row.get("rerank", 0))


def merge(old: dict, rows: list[dict], run: dict) -> tuple[list[dict], list[dict]]:
    """This run's rows plus the earlier index part's rows for the settings this run did not measure, in table
    order, and the runs: each row's ``run`` indexes that list (the earlier runs, then ``run``)."""
    runs = old.get("runs") or [{key: old.get(key) for key in ("machine", "date", "command")}
                               | {"flat_fp32_qps": next(r["qps"] for r in old["rows"] if r["family"] == "Flat fp32")}]
    measured = {r["setting"] for r in rows}
    kept = [{"run": 0, **r} for r in old["rows"] if r["setting"] not in measured]
    for r in rows:
        r["run"] = len(runs)
    return sorted(kept + rows, key=table_order), [*runs, run]
