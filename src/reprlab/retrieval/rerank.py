"""Exact re-ranking of compressed-index candidates with the original vectors, read from a memory map.

A compressed index (IVF-PQ, binary codes) keeps only short codes in RAM and ranks by an approximate
score; the standard remedy for its errors is to take its top-R candidates and re-score them exactly
with the full vectors, which stay on disk (Jégou, Tavenard, Douze and Amsaleg, "Searching in one
billion vectors: re-rank with source coding", ICASSP 2011; FAISS's ``IndexRefine`` does it with the
vectors in RAM; vector databases "rescore" from disk). Here the full vectors are one ``.npy`` file
(float16 or float32, row i = position i of the index) opened with ``mmap_mode="r"``: RAM holds the
codes, and each query reads only its R candidate rows (R x dim x 2 or 4 bytes), through the page cache.

:func:`rerank` computes, for each query q and its candidate positions c_1..c_R (-1 = no candidate),
the inner products <q, x_{c_j}> in float32 and returns the k best, best first, ties by position,
padded with -1 / -inf. :func:`rerank_reference` is the plain per-query loop it is tested against.

>>> save_vectors("base.npy", x, dtype="float16")        # doctest: +SKIP
>>> store = open_vectors("base.npy")                     # a read-only memory map, nothing loaded
>>> scores, positions = rerank(store, queries, index.search(queries, 1000)[1], k=10)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open

DTYPES = ("float16", "float32")


def save_vectors(path: str | Path, vectors: np.ndarray, dtype: str = "float16", chunk: int = 65_536) -> Path:
    """Write ``vectors`` (N, dim) as a ``.npy`` file of ``dtype`` atomically, converting ``chunk`` rows at a time."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, dim), got shape {vectors.shape}")
    path = Path(path)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": vectors.shape}
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for a in range(0, len(vectors), chunk):
            f.write(np.ascontiguousarray(vectors[a:a + chunk], dtype=dtype).tobytes())
    return path


def open_vectors(path: str | Path) -> np.ndarray:
    """The vectors of a ``.npy`` file as a read-only memory map (float16 or float32, 2-D), or a DataFormatError."""
    try:
        store = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"not a .npy vector file ({exc})", path=str(path)) from exc
    if store.ndim != 2 or store.dtype.name not in DTYPES:
        raise DataFormatError(f"expected a 2-D float16/float32 array, got {store.dtype} {store.shape}", path=str(path))
    return store


def _check(store, queries: np.ndarray, candidates: np.ndarray) -> None:
    if queries.ndim != 2 or queries.shape[1] != store.shape[1]:
        raise ValueError(f"queries of shape {queries.shape} do not match vectors of dimension {store.shape[1]}")
    if candidates.shape[0] != queries.shape[0]:
        raise ValueError(f"{candidates.shape[0]} candidate rows for {queries.shape[0]} queries")
    if candidates.size and candidates.max() >= store.shape[0]:
        raise ValueError(f"a candidate position ({candidates.max()}) is past the {store.shape[0]} stored vectors")


def rerank(store, queries: np.ndarray, candidates: np.ndarray, k: int = 10,
           batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query among its candidates: (scores (Q, k) float32, positions (Q, k) int64).

    ``store`` is any (N, dim) array (an :func:`open_vectors` memory map in practice); ``candidates`` (Q, R)
    holds positions into it, -1 for none (a repeated position counts once). Each query batch reads its
    distinct rows once, in ascending position order (near-sequential disk reads), and scores in float32."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.asarray(candidates, dtype=np.int64)
    _check(store, queries, candidates)
    Q, R = candidates.shape
    scores_out = np.full((Q, k), -np.inf, np.float32)
    out = np.full((Q, k), -1, np.int64)
    for a in range(0, Q, batch):
        cand = candidates[a:a + batch]  # (B, R)
        valid = cand >= 0
        rows, inverse = np.unique(cand[valid], return_inverse=True)  # sorted positions to read
        x = np.asarray(store[rows], dtype=np.float32)  # (U, dim): the only read of the file
        gathered = np.zeros(cand.shape + (store.shape[1],), np.float32)  # (B, R, dim)
        gathered[valid] = x[inverse]
        scores = np.einsum("brd,bd->br", gathered, queries[a:a + batch])  # (B, R)
        scores[~valid] = -np.inf
        key = np.where(valid, cand, np.iinfo(np.int64).max)
        order = np.lexsort((key, -scores), axis=-1)  # (B, R): best score first, ties by position
        ranked, s = np.take_along_axis(cand, order, axis=1), np.take_along_axis(scores, order, axis=1)
        keep = np.isfinite(s)
        keep[:, 1:] &= ranked[:, 1:] != ranked[:, :-1]  # a repeated candidate sorts next to itself: drop it
        first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the first k kept, in rank order
        got, s = np.take_along_axis(ranked, first, axis=1), np.take_along_axis(s, first, axis=1)
        kept = np.take_along_axis(keep, first, axis=1)
        got[~kept], s[~kept] = -1, -np.inf
        out[a:a + batch, :got.shape[1]] = got
        scores_out[a:a + batch, :got.shape[1]] = s
    return scores_out, out


def rerank_reference(store, queries: np.ndarray, candidates: np.ndarray, k: int = 10):
    """The plain definition :func:`rerank` is tested against: per query, score each distinct candidate
    and sort by (-score, position)."""
    Q = len(queries)
    scores_out, out = np.full((Q, k), -np.inf, np.float32), np.full((Q, k), -1, np.int64)
    for i in range(Q):
        pairs = []
        for c in dict.fromkeys(int(c) for c in candidates[i] if c >= 0):
            pairs.append((-float(np.dot(np.asarray(store[c], np.float32), queries[i].astype(np.float32))), c))
        for j, (s, c) in enumerate(sorted(pairs)[:k]):
            scores_out[i, j], out[i, j] = -s, c
    return scores_out, out
