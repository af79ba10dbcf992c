"""Binary codes and Hamming search: SimHash codes of float vectors behind the common ``Index`` interface.

Charikar, "Similarity Estimation Techniques from Rounding Algorithms", STOC 2002 (SimHash,
random-hyperplane LSH). A random hyperplane through the origin separates two vectors at angle theta
with probability theta/pi, so one sign bit collides with probability ``1 - theta/pi``; ``1 - hamming /
bits`` over b hyperplanes estimates that angular similarity. Semantic hashing
(:mod:`reprlab.retrieval.hashing`) trains embeddings for these codes; any embedding can be indexed.

* :class:`RandomHyperplanes`: b Gaussian hyperplanes (seeded) -> codes packed 8 bits per byte,
  bit i (FAISS order: byte i // 8, bit i % 8, least significant first) = [x . r_i > 0].
* :class:`BinaryIndex` (kind ``"binary"``, registered in :data:`~reprlab.retrieval.index.INDEX_KINDS`
  when this module is imported, which ``import reprlab.retrieval`` does): takes float vectors, hashes
  them with its hyperplanes (saved with the index) and searches exactly (``faiss.IndexBinaryFlat``) or
  through hash tables (``faiss.IndexBinaryHash`` / ``IndexBinaryMultiHash``, sub-linear bucket lookup).
* :func:`binary_retriever`: a :class:`~reprlab.retrieval.dense.DenseRetriever` over a binary index
  (``reprlab index --binary BITS``).

>>> x = np.random.default_rng(0).standard_normal((1000, 32)).astype("float32")
>>> index = BinaryIndex(32, bits=256)              # exact Hamming search over 256-bit SimHash codes
>>> index.add([f"d{i}" for i in range(1000)], x)
>>> scores, ids = index.search(x[:2], k=3)         # scores: 1 - hamming / bits, the angular estimate
>>> ids[0, 0], float(scores[0, 0])
('d0', 1.0)
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Mapping, Sequence

import faiss
import numpy as np

from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.io import atomic_write_json
from reprlab.retrieval.index import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_KINDS,
    Index,
    as_ids,
    as_matrix,
    check_k,
    faiss_reason,
    read_ids,
    write_ids,
)

METHODS = ("flat", "hash", "multihash")
SCORES = ("angular", "cosine")
_LAST = np.iinfo(np.int64).max  # sort key that puts padding after every real position

# --------------------------------------------------------------------------------------------
# SimHash codes


class RandomHyperplanes:
    """``bits`` random hyperplanes through the origin in R^dim (Charikar 2002), drawn from a seed.

    ``encode(x)`` gives the codes (N, bits // 8) uint8: bit i of a row is [x . r_i > 0], packed in
    FAISS's order (byte i // 8, bit i % 8, least significant bit first). For two vectors at angle
    theta each bit agrees with probability 1 - theta/pi, independently over the hyperplanes, so
    ``1 - hamming / bits`` is an unbiased estimate of the angular similarity (variance
    p (1 - p) / bits).
    """

    def __init__(self, dim: int, bits: int, seed: int = 0, planes: np.ndarray | None = None):
        if int(dim) != dim or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if int(bits) != bits or bits < 8 or bits % 8:
            raise ConfigError(f"bits must be a positive multiple of 8 (codes are whole bytes), got {bits!r}")
        self.dim, self.bits, self.seed = int(dim), int(bits), int(seed)
        if planes is None:
            planes = np.random.default_rng(self.seed).standard_normal((self.bits, self.dim))
        planes = np.ascontiguousarray(planes, dtype=np.float32)
        if planes.shape != (self.bits, self.dim):
            raise ConfigError(f"hyperplanes must have shape ({self.bits}, {self.dim}), got {planes.shape}")
        self.planes = planes  # (bits, dim)

    @property
    def code_size(self) -> int:
        """Bytes per code."""
        return self.bits // 8

    def signs(self, x: np.ndarray) -> np.ndarray:
        """(N, bits) bool: which side of each hyperplane every row of ``x`` (N, dim) lies on."""
        x = as_matrix(x, self.dim, "vectors")
        return x @ self.planes.T > 0  # (N, bits)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, bits // 8) uint8 packed codes of ``x`` (N, dim)."""
        return np.packbits(self.signs(x), axis=1, bitorder="little")  # (N, bits / 8)

    def save(self, path: str | Path) -> None:
        np.save(path, self.planes, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path, seed: int = 0) -> "RandomHyperplanes":
        try:
            planes = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"cannot read the hyperplanes: {exc}", path=str(path)) from exc
        if planes.ndim != 2:
            raise DataFormatError(f"hyperplanes must be a 2-d array, got shape {planes.shape}", path=str(path))
        return cls(planes.shape[1], planes.shape[0], seed, planes)


# --------------------------------------------------------------------------------------------
# the binary index


class BinaryIndex(Index):
    """SimHash codes of float vectors in a FAISS binary index, searched by Hamming distance.

    Args:
        dim: dimension d of the float vectors given to ``add`` and ``search`` (they are hashed here).
        bits: code length b (a multiple of 8): b random hyperplanes drawn from ``seed``.
        method: ``"flat"``: exact, every code compared (``faiss.IndexBinaryFlat``, popcount scan).
            ``"hash"``: one hash table keyed by the first ``hash_bits`` bits of each code
            (``faiss.IndexBinaryHash``); a query visits the buckets whose key is within Hamming
            distance ``nflip`` of its own and ranks only their codes, by full Hamming distance.
            ``"multihash"``: ``tables`` hash tables keyed by disjoint ``hash_bits``-bit slices of the
            code (multi-index hashing, ``faiss.IndexBinaryMultiHash``); a code is a candidate if any
            slice is within ``nflip`` of the query's. Every code within full Hamming distance
            ``tables * (nflip + 1) - 1`` of the query is guaranteed found (pigeonhole).
        hash_bits, tables, nflip: hash-table parameters (ignored by ``flat``); ``nflip`` is a search
            parameter: ``set_search_params(nflip=2)`` or ``search(..., nflip=2)``.
        score: what ``search`` returns, both higher-is-better and monotone in the Hamming distance h:
            ``"angular"``: 1 - h / bits, the unbiased estimate of the angular similarity 1 - theta/pi;
            ``"cosine"``: cos(pi * h / bits), the implied estimate of the cosine (comparable with a
            float index's inner products on unit vectors).

    Results follow the :class:`~reprlab.retrieval.index.Index` contract: (Q, k) float32 scores and
    object ids, best first, padded with -inf / None (a hash search may find fewer than k candidates),
    equal distances ordered by insertion position, so exact search equals a brute-force Hamming top-k.
    Saved with its hyperplanes (``hyperplanes.npy``) and its codes (``index.faissbin``).
    """

    kind = "binary"

    def __init__(self, dim: int, bits: int = 256, method: str = "flat", hash_bits: int = 16, tables: int = 1,
                 nflip: int = 1, seed: int = 0, score: str = "angular"):
        self._init(RandomHyperplanes(dim, bits, seed), method, hash_bits, tables, score, np.empty(0, dtype=object))
        self.index = self._new_faiss()
        if method != "flat":
            self.set_search_params(nflip=nflip)

    def _init(self, planes: RandomHyperplanes, method: str, hash_bits: int, tables: int, score: str,
              ids: np.ndarray) -> None:
        bits = planes.bits
        if method not in METHODS:
            raise ConfigError(f"unknown binary index method {method!r}; choose one of {', '.join(METHODS)}")
        if score not in SCORES:
            raise ConfigError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        if method != "flat":
            if int(hash_bits) != hash_bits or not 1 <= hash_bits <= min(bits, 64):
                raise ConfigError(f"hash_bits must be in 1..{min(bits, 64)} (a hash key is at most 64 bits and "
                                  f"at most the code's {bits}), got {hash_bits!r}")
            if method == "hash" and tables != 1:
                raise ConfigError(f"method 'hash' has one table (got tables={tables}); use method 'multihash'")
            if int(tables) != tables or tables < 1 or tables * hash_bits > bits:
                raise ConfigError(f"tables * hash_bits must be at most bits: {tables} x {hash_bits} > {bits}; "
                                  "use fewer tables or shorter keys")
        self.hyperplanes = planes
        self.method, self.hash_bits, self.tables, self.score = method, int(hash_bits), int(tables), score
        self.search_params: dict[str, int] = {}
        self._ids = ids  # (N,) object: string id of internal id i
        self._table = np.append(ids, None)  # label -1 (padding) reads the trailing None
        self._known = set(ids.tolist())

    def _new_faiss(self) -> faiss.IndexBinary:
        if self.method == "flat":
            return faiss.IndexBinaryFlat(self.bits)
        if self.method == "hash":
            return faiss.IndexBinaryHash(self.bits, self.hash_bits)
        return faiss.IndexBinaryMultiHash(self.bits, self.tables, self.hash_bits)

    # -- properties

    @property
    def bits(self) -> int:
        return self.hyperplanes.bits

    @property
    def dim(self) -> int:
        return self.hyperplanes.dim

    @property
    def ids(self) -> np.ndarray:
        """The string ids in insertion order, (N,) object array (do not modify)."""
        return self._ids

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        extra = "" if self.method == "flat" else f", hash_bits={self.hash_bits}, tables={self.tables}, " \
                                                 f"nflip={self.search_params.get('nflip')}"
        return f"BinaryIndex(dim={self.dim}, bits={self.bits}, method={self.method!r}{extra}, count={len(self)})"

    def memory_bytes(self) -> int:
        """Size of the FAISS binary index as serialised (codes + hash tables), without the string ids."""
        return int(faiss.serialize_index_binary(self.index).size)

    # -- building

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(N, bits // 8) uint8 SimHash codes of float ``vectors`` (N, dim)."""
        return self.hyperplanes.encode(vectors)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Hash N float vectors (N, dim) and add their codes with their N unique string ids."""
        x = as_matrix(vectors, self.dim, "vectors")
        new = as_ids(ids, len(x), self._known)
        self.index.add(self.encode(x))
        self._ids = np.concatenate([self._ids, new])
        self._table = np.append(self._ids, None)
        self._known.update(new.tolist())

    # -- searching

    def set_search_params(self, **params: int) -> None:
        """Set hash-table search parameters that stay set: ``nflip`` (bucket radius, >= 0)."""
        for name, value in params.items():
            if self.method == "flat" or name != "nflip":
                raise ConfigError(f"binary index {self.method!r} has no search parameter {name!r} "
                                  "(hash and multihash take nflip; flat has none)")
            if int(value) != value or value < 0:
                raise ConfigError(f"nflip must be a non-negative integer, got {value!r}")
            self.index.nflip = int(value)
            self.search_params[name] = int(value)

    @contextlib.contextmanager
    def _params(self, params: dict):
        saved = dict(self.search_params)
        self.set_search_params(**params)
        try:
            yield
        finally:
            if saved:
                self.set_search_params(**saved)

    def search(self, queries: np.ndarray, k: int, **params: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by Hamming distance between the codes of ``queries`` (Q, dim) and the indexed codes.

        Returns (scores (Q, k) float32, ids (Q, k) object); see the class docstring for the scores.
        ``**params``: ``nflip`` for this call only (hash methods).
        """
        return self.search_codes(self.encode(as_matrix(queries, self.dim, "queries")), k, **params)

    def search_codes(self, codes: np.ndarray, k: int, **params: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` for already hashed queries, (Q, bits // 8) uint8."""
        hamming, labels = self.search_labels(codes, k, **params)
        pad = labels < 0
        h = hamming.astype(np.float32)
        scores = 1.0 - h / self.bits if self.score == "angular" else np.cos(np.pi * h / self.bits)
        scores = scores.astype(np.float32)
        scores[pad] = -np.inf
        return scores, self._table[labels]  # label -1 -> None

    def search_labels(self, codes: np.ndarray, k: int, **params: int) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances (Q, k) int64, insertion positions (Q, k) int64), -1 labels for padding.

        Ordered by (distance, position). Hamming distances are integers, so the k-th distance is
        usually shared with results beyond k: rows where the tie crosses the cut are searched deeper
        (doubling) until it ends, so the cut keeps the first-inserted of the tied codes.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.hyperplanes.code_size:
            raise ReprlabError(f"codes must have shape (n, {self.hyperplanes.code_size}), got {codes.shape}")
        k = check_k(k, len(self))
        if params:
            with self._params(params):
                return self.search_labels(codes, k)
        Q, n = len(codes), len(self)
        out_h = np.full((Q, k), self.bits + 1, dtype=np.int64)
        out_l = np.full((Q, k), -1, dtype=np.int64)
        pending = np.arange(Q)
        depth = min(k + 1, n)
        while pending.size and n:
            dist, labels = self.index.search(codes[pending], depth)  # (P, depth) int32, int64
            dist = dist.astype(np.int64)
            pad = labels < 0
            dist[pad] = self.bits + 1
            last = min(k, depth) - 1
            done = (depth >= n) | pad[:, -1] | (dist[:, -1] > dist[:, last])  # (P,)
            rows = np.flatnonzero(done)
            if rows.size:
                d, l = dist[rows], labels[rows]  # (R, depth)
                order = np.lexsort((np.where(l < 0, _LAST, l), d), axis=-1)[:, :k]  # (R, min(k, depth))
                width = order.shape[1]
                out_h[pending[rows], :width] = np.take_along_axis(d, order, axis=1)
                out_l[pending[rows], :width] = np.take_along_axis(l, order, axis=1)
            pending = pending[~done]
            depth = min(2 * depth, n)
        return out_h, out_l

    def search_stats(self, queries: np.ndarray, **params: int) -> dict[str, float]:
        """Hash-table work per query for ``queries`` (Q, dim): buckets visited and codes compared.

        A flat index compares every code. Read from FAISS's global counters (not thread-safe).
        """
        codes = self.encode(as_matrix(queries, self.dim, "queries"))
        if self.method == "flat":
            return {"buckets": 0.0, "candidates": float(len(self))}
        stats = faiss.cvar.indexBinaryHash_stats
        with self._params(params) if params else contextlib.nullcontext():
            stats.reset()
            self.index.search(codes, 1)  # one pass: the candidate set does not depend on k
        return {"buckets": stats.nlist / len(codes), "candidates": stats.ndis / len(codes)}

    # -- saving

    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "bits": self.bits,
            "method": self.method,
            "hash_bits": self.hash_bits,
            "tables": self.tables,
            "seed": self.hyperplanes.seed,
            "score": self.score,
            "count": len(self),
            "search_params": self.search_params,
            "faiss_version": faiss.__version__,
        }

    def _write(self, tmp: Path) -> None:
        faiss.write_index_binary(self.index, str(tmp / "index.faissbin"))
        self.hyperplanes.save(tmp / "hyperplanes.npy")
        write_ids(tmp / "ids.json", self._ids)
        atomic_write_json(tmp / "meta.json", self._meta())

    @classmethod
    def _read(cls, path: Path, meta: dict) -> "BinaryIndex":
        planes = RandomHyperplanes.load(path / "hyperplanes.npy", seed=meta.get("seed", 0))
        if (planes.bits, planes.dim) != (meta["bits"], meta["dim"]):
            raise DataFormatError(f"hyperplanes.npy is {planes.bits} x {planes.dim}, meta.json says "
                                  f"{meta['bits']} bits of dim {meta['dim']}", path=str(path))
        try:
            index = faiss.read_index_binary(str(path / "index.faissbin"))
        except RuntimeError as exc:
            raise DataFormatError(f"cannot read index.faissbin: {faiss_reason(exc)}", path=str(path)) from exc
        if index.ntotal != meta["count"] or index.d != meta["bits"]:
            raise DataFormatError(f"index.faissbin holds {index.ntotal} codes of {index.d} bits, meta.json says "
                                  f"{meta['count']} of {meta['bits']}", path=str(path))
        self = cls.__new__(cls)
        self._init(planes, meta["method"], meta["hash_bits"], meta["tables"], meta["score"],
                   read_ids(path, meta["count"]))
        self.index = index
        self.set_search_params(**meta.get("search_params", {}))
        return self


INDEX_KINDS[BinaryIndex.kind] = BinaryIndex


def build_binary_index(vectors: np.ndarray, ids: Sequence[str], bits: int = 256, **options) -> BinaryIndex:
    """A :class:`BinaryIndex` over float ``vectors`` (N, d) with string ``ids`` (options as its constructor)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ReprlabError(f"vectors must have shape (N, d), got {vectors.shape}")
    index = BinaryIndex(vectors.shape[1], bits, **options)
    index.add(ids, vectors)
    return index


def binary_retriever(model, corpus: Mapping[str, Mapping[str, str]], bits: int = 256, method: str = "flat",
                     hash_bits: int = 16, tables: int = 1, nflip: int = 1, seed: int = 0, score: str = "angular",
                     batch_size: int = 64, precision: str = "fp32", show_progress: bool | None = None):
    """Encode ``corpus`` with ``model`` (a name such as ``minilm``, a model folder, or a DenseRetriever)
    into a :class:`BinaryIndex`; returns the :class:`~reprlab.retrieval.dense.DenseRetriever`.

    ``retriever.save(out)`` writes a folder that ``reprlab search`` / ``DenseRetriever.load`` read back
    (``Index.load`` dispatches on kind ``"binary"``).
    """
    from reprlab.retrieval.dense import DenseRetriever

    if isinstance(model, DenseRetriever):
        retriever = model
    else:
        retriever = DenseRetriever.from_model(model, batch_size=batch_size, precision=precision)
    index = BinaryIndex(retriever.doc_model.dim, bits, method, hash_bits, tables, nflip, seed, score)
    # not index_corpus(index=...): it replaces an index that is empty (len 0 is falsy) with a FaissIndex
    ids, vectors = retriever.encode_corpus(corpus, show_progress)
    index.add(ids, vectors)
    retriever.index = index
    retriever.docs = {i: {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")} for i in ids}
    return retriever
