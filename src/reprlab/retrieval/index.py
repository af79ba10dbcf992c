"""Vector indexes with string ids: one interface over FAISS, numpy in and numpy out.

Every index kind has the same five operations, in the shape of the FAISS python API:

* ``add(ids, vectors)``: ``ids`` is a sequence of N unique strings, ``vectors`` a float32 array (N, d).
* ``search(queries, k) -> (scores, ids)``: ``queries`` is (Q, d); ``scores`` is a float32 array (Q, k)
  sorted best first, **higher is better** for every metric (the L2 metric returns the *negated*
  squared distance); ``ids`` is a numpy object array (Q, k) of the string ids.
  ``k`` is clamped to ``len(index)`` (so a huge k allocates nothing huge): a row has
  ``min(k, len(index))`` entries, and when an approximate search finds fewer (an IVF search that
  probes too few lists) the tail is padded with score ``-inf`` and id ``None``.
  Equal scores are ordered by insertion position (first added first), so results are
  deterministic and a sharded index gives exactly what one flat index gives.
* ``save(dir)``: atomic (the folder appears complete or not at all; an existing one survives a failed
  save). ``Index.load(dir)`` reads any kind back, dispatching on ``meta.json``'s ``kind``.
* ``len(index)`` and ``index.dim``.

Kinds: :class:`FaissIndex` (any FAISS factory string; exact inner product by default) and
:class:`ShardedIndex` (round-robin shards, merged top-k equal to the unsharded index). A binary
(Hamming) index, :class:`reprlab.retrieval.binary.BinaryIndex`, registers itself in :data:`INDEX_KINDS`
beside them with the same interface (``import reprlab.retrieval`` imports it, so ``Index.load`` knows
every kind).

Folder layout written by ``save``::

    meta.json     {"format": "reprlab-index", "version": 1, "kind", "dim", "metric", "factory",
                   "count", "search_params", ...}
    ids.json      the string ids in insertion order (a JSON list)
    index.faiss   faiss.write_index output (FaissIndex), or shard-000/ ... (ShardedIndex)

>>> import numpy as np
>>> x = np.random.default_rng(0).standard_normal((100, 8)).astype("float32")
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> index = FaissIndex(8)                   # exact inner product (= cosine on unit vectors)
>>> index.add([f"d{i}" for i in range(100)], x)
>>> scores, ids = index.search(x[:2], k=3)  # (2, 3) float32, (2, 3) object
>>> ids[0, 0]
'd0'
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import faiss
import numpy as np

from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.io import atomic_dir, atomic_write_json

FORMAT = "reprlab-index"
FORMAT_VERSION = 1
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
FACTORY_EXAMPLES = '"Flat", "IVF256,Flat", "HNSW32", "PQ48", "IVF64,SQ8", "OPQ16,IVF256,PQ16"'
_LAST = np.iinfo(np.int64).max  # sort key that puts padding after every real position


# --------------------------------------------------------------------------------------------
# helpers shared by every kind


def as_matrix(x: Any, dim: int, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (n, dim), or a ReprlabError that gives the shape."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ReprlabError(f"{name} must have shape (n, {dim}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def as_ids(ids: Sequence[str], n: int, known: set[str]) -> np.ndarray:
    """Check ``ids`` (n unique strings, none already in ``known``) and return them as an (n,) object array."""
    table = np.empty(len(ids), dtype=object)
    table[:] = [str(i) for i in ids]
    if len(table) != n:
        raise ReprlabError(f"got {len(table)} ids for {n} vectors")
    new = set(table.tolist())
    if len(new) != n or not known.isdisjoint(new):
        seen: set[str] = set()
        for i in table.tolist():
            if i in known or i in seen:
                raise ReprlabError(f"duplicate id {i!r}: ids must be unique within an index")
            seen.add(i)
    return table


def check_k(k: int, size: int | None = None) -> int:
    """``k`` as an int, clamped to ``size`` (the number of items searched; at least 1), or a ReprlabError
    unless it is a positive integer. Clamping first keeps a huge k from allocating huge result arrays."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer, float)) or int(k) != k or k < 1:
        raise ReprlabError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    return k if size is None else min(k, max(int(size), 1))


def order_ties(scores: np.ndarray, labels: np.ndarray) -> None:
    """In place: within each row, order equal scores by label (insertion position), padding last.

    FAISS breaks ties differently per metric (IP lists tied ids in descending order, L2 ascending).
    Only rows that contain a tie are re-sorted, so the common case costs one vectorised comparison.
    """
    real = scores[:, 1:] > -np.inf
    rows = np.flatnonzero(((scores[:, 1:] == scores[:, :-1]) & real).any(axis=1))
    if rows.size:
        s, l = scores[rows], labels[rows]  # (R, k)
        order = np.lexsort((np.where(l < 0, _LAST, l), -s), axis=-1)
        scores[rows] = np.take_along_axis(s, order, axis=1)
        labels[rows] = np.take_along_axis(l, order, axis=1)


def _read_meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataFormatError("not a reprlab index folder (meta.json is missing)", path=str(path))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"invalid JSON: {exc}", path=str(meta_path)) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataFormatError(f"format is {got!r}, expected {FORMAT!r}", path=str(meta_path))
    if meta.get("version", 0) > FORMAT_VERSION:
        raise DataFormatError(
            f"index format version {meta['version']} is newer than this reprlab reads ({FORMAT_VERSION}); "
            "upgrade reprlab",
            path=str(meta_path),
        )
    return meta


def read_ids(path: Path, count: int) -> np.ndarray:
    ids_path = path / "ids.json"
    try:
        ids = json.loads(ids_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFormatError("ids.json is missing", path=str(path)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"damaged ({exc}); build the index again", path=str(ids_path)) from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataFormatError("expected a JSON list of string ids", path=str(ids_path))
    if len(ids) != count:
        raise DataFormatError(f"holds {len(ids)} ids but meta.json says count={count}", path=str(ids_path))
    table = np.empty(len(ids), dtype=object)
    table[:] = ids
    return table


def write_ids(path: Path, ids: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ids.tolist(), f, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# the interface


class Index:
    """The interface every index kind implements (see the module docstring for the contract)."""

    kind: ClassVar[str] = ""

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int, **params) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the index to folder ``path`` atomically (an existing folder is replaced only on success)."""
        with atomic_dir(path) as tmp:
            self._write(tmp)

    @classmethod
    def load(cls, path: str | Path) -> "Index":
        """Read an index saved by any kind's ``save``; the class is chosen by ``meta.json``'s ``kind``."""
        path = Path(path)
        meta = _read_meta(path)
        kind = meta.get("kind")
        if kind not in INDEX_KINDS:
            raise DataFormatError(f"unknown index kind {kind!r}; known: {sorted(INDEX_KINDS)}", path=str(path))
        klass = INDEX_KINDS[kind]
        if not issubclass(klass, cls):
            raise ConfigError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        return klass._read(path, meta)

    def _write(self, tmp: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls, path: Path, meta: dict) -> "Index":
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# FAISS, any factory string


class FaissIndex(Index):
    """A FAISS index built from a factory string, holding string ids.

    Args:
        dim: vector dimension d.
        factory: a FAISS ``index_factory`` string: "Flat" (exact, the default), "IVF256,Flat", "HNSW32",
            "PQ48", "IVF64,SQ8", ... Ids are managed here, so "IDMap" is not needed (and refused).
        metric: "ip" (inner product; cosine if the vectors are normalised) or "l2". Scores are always
            higher-is-better: for "l2" a score is minus the squared Euclidean distance.

    Indexes that need training (IVF, PQ, SQ) are trained on the vectors of the first ``add`` unless
    ``train`` was called before; training on too few vectors (e.g. IVF256 on 100) is a ConfigError.
    Search parameters ("nprobe" for IVF, "efSearch" for HNSW, any ``faiss.ParameterSpace`` name) are set
    with ``set_search_params`` or for one call with ``search(..., nprobe=32)``; they are saved.
    The FAISS object is ``self.index`` (its internal id i is the i-th added vector).
    """

    kind = "faiss"

    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip"):
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        if "IDMap" in factory:
            raise ConfigError(
                f"factory {factory!r}: reprlab maps string ids itself, drop 'IDMap' (e.g. {FACTORY_EXAMPLES})"
            )
        try:
            index = faiss.index_factory(int(dim), factory, METRICS[metric])
        except RuntimeError as exc:
            raise ConfigError(
                f"FAISS cannot build index factory string {factory!r} (dim {dim}): {faiss_reason(exc)}; "
                f"examples of valid strings: {FACTORY_EXAMPLES}"
            ) from exc
        self._init(index, factory, metric, np.empty(0, dtype=object))

    def _init(self, index: faiss.Index, factory: str, metric: str, ids: np.ndarray) -> None:
        self.index = index
        self.factory = factory
        self.metric = metric
        self.search_params: dict[str, float] = {}
        self._ids = ids  # (N,) object: string id of internal id i
        self._table = np.append(ids, None)  # (N+1,) object: label -1 (padding) reads the trailing None
        self._known = set(ids.tolist())

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ids(self) -> np.ndarray:
        """The string ids in insertion order, (N,) object array (do not modify)."""
        return self._ids

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, factory={self.factory!r}, metric={self.metric!r}, count={len(self)})"

    # -- building

    def train(self, vectors: np.ndarray) -> None:
        """Train the index (IVF centroids, PQ codebooks...) on ``vectors`` (n, d); a no-op for Flat/HNSW."""
        x = as_matrix(vectors, self.dim, "training vectors")
        if self.index.is_trained:
            return
        try:
            self.index.train(x)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot train index {self.factory!r} on {len(x)} vectors: {faiss_reason(exc)}. "
                "An IVF<n> index needs at least n training vectors (FAISS advises 39*n), a PQ index "
                "at least 256 (2^nbits); call train() with more vectors first, or choose a smaller factory "
                '(e.g. "IVF16,Flat" or "Flat")'
            ) from exc

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add N vectors (N, d) with their N unique string ids; trains first if the index needs it."""
        x = as_matrix(vectors, self.dim, "vectors")
        new = as_ids(ids, len(x), self._known)
        if not self.index.is_trained:
            self.train(x)
        self.index.add(x)
        self._ids = np.concatenate([self._ids, new])
        self._table = np.append(self._ids, None)
        self._known.update(new.tolist())

    # -- searching

    def set_search_params(self, **params: float) -> None:
        """Set search-time parameters that stay set, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW)."""
        space = faiss.ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError as exc:
                raise ConfigError(
                    f"index {self.factory!r} has no search parameter {name!r} "
                    '(IVF indexes take "nprobe", HNSW indexes "efSearch")'
                ) from exc
            self.search_params[name] = value

    def search(self, queries: np.ndarray, k: int, **params: float) -> tuple[np.ndarray, np.ndarray]:
        """Top-k search.

        Args:
            queries: (Q, d) float32 (other float dtypes are converted).
            k: results per query.
            **params: search parameters for this call only (``nprobe``, ``efSearch``); not thread-safe.

        Returns:
            scores: (Q, k) float32, best first, higher is better; ``-inf`` pads missing results.
            ids: (Q, k) object array of string ids; ``None`` pads missing results.
        """
        scores, labels = self.search_labels(queries, k, **params)
        return scores, self._table[labels]  # (Q, k) object; label -1 -> None

    def search_labels(self, queries: np.ndarray, k: int, **params: float) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search`` but returns the internal int64 labels (insertion positions, -1 = padding)."""
        q = as_matrix(queries, self.dim, "queries")
        n = len(self)
        k = check_k(k, n)
        if params:
            return self._search_with(q, k, params)
        if n == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if k >= n:
            scores, labels = self._search_raw(q, k)
        else:
            # One extra result shows whether a tie crosses the cut; such rows (rare with real vectors)
            # are searched deeper so that the cut keeps the first-inserted of the tied vectors.
            scores, labels = self._search_raw(q, k + 1)  # (Q, k + 1)
            crossing = np.flatnonzero((scores[:, k] == scores[:, k - 1]) & (scores[:, k] > -np.inf))
            scores, labels = scores[:, :k].copy(), labels[:, :k].copy()  # (Q, k)
            for row in crossing:
                scores[row], labels[row] = self._search_tie(q[row : row + 1], k)
        order_ties(scores, labels)
        return scores, labels

    def _search_raw(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search with higher-is-better scores and -inf at padded (-1) labels: (Q, k), (Q, k)."""
        distances, labels = self.index.search(q, k)  # (Q, k), (Q, k)
        scores = distances if self.metric == "ip" else np.negative(distances, out=distances)
        pad = labels < 0
        if pad.any():
            scores[pad] = -np.inf
        return scores, labels

    def _search_tie(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one query (1, d) whose k-th score is tied beyond k: widen until the tie ends."""
        depth = 2 * (k + 1)
        while True:
            depth = min(depth, len(self))
            scores, labels = self._search_raw(q, depth)  # (1, depth)
            if depth == len(self) or scores[0, -1] < scores[0, k - 1]:
                break
            depth *= 2
        order_ties(scores, labels)
        return scores[0, :k], labels[0, :k]

    def _search_with(self, q: np.ndarray, k: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """Search with ``params`` set for this call only, then put the previous values back."""
        old = {name: self._get_param(name) for name in params}
        saved = dict(self.search_params)
        self.set_search_params(**params)
        try:
            return self.search_labels(q, k)
        finally:
            self.set_search_params(**old)
            self.search_params = saved

    def _get_param(self, name: str) -> float:
        if name == "nprobe":
            try:
                return faiss.extract_index_ivf(self.index).nprobe
            except RuntimeError:
                pass
        elif name == "efSearch":
            inner = faiss.downcast_index(self.index)
            while isinstance(inner, faiss.IndexPreTransform):
                inner = faiss.downcast_index(inner.index)
            if hasattr(inner, "hnsw"):
                return inner.hnsw.efSearch
        if name in self.search_params:
            return self.search_params[name]
        raise ConfigError(
            f"index {self.factory!r}: {name!r} cannot be set for one call; use set_search_params({name}=...)"
        )

    # -- saving

    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "count": len(self),
            "search_params": self.search_params,
            "faiss_version": faiss.__version__,
        }

    def _write(self, tmp: Path) -> None:
        faiss.write_index(self.index, str(tmp / "index.faiss"))
        write_ids(tmp / "ids.json", self._ids)
        atomic_write_json(tmp / "meta.json", self._meta())

    @classmethod
    def _read(cls, path: Path, meta: dict) -> "FaissIndex":
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as exc:
            raise DataFormatError(f"cannot read index.faiss: {faiss_reason(exc)}", path=str(path)) from exc
        if index.ntotal != meta["count"] or index.d != meta["dim"]:
            raise DataFormatError(
                f"index.faiss holds {index.ntotal} vectors of dim {index.d}, meta.json says "
                f"{meta['count']} of dim {meta['dim']}",
                path=str(path),
            )
        self = cls.__new__(cls)
        self._init(index, meta["factory"], meta["metric"], read_ids(path, meta["count"]))
        self.set_search_params(**meta.get("search_params", {}))
        return self


def faiss_reason(exc: RuntimeError) -> str:
    """The human part of a FAISS C++ error ("Error in <function> at <file>.cpp:<line>: <reason>")."""
    text = str(exc).strip()
    match = re.search(r"\.cpp:\d+: (.*)", text, flags=re.S)
    reason = match.group(1) if match else text
    return reason.split("failed: ", 1)[-1].strip()


# --------------------------------------------------------------------------------------------
# shards


class ShardedIndex(Index):
    """N FAISS indexes searched together; the merged top-k equals one unsharded index exactly.

    Vectors are dealt round-robin: the vector added at global position g goes to shard g % N as
    that shard's local position g // N. Each shard returns its top-k; the merge keeps the best k by
    (score descending, global position ascending), which is the order a single :class:`FaissIndex`
    returns, so with factory "Flat" the result is identical to the flat index, ties included.
    With approximate factories (IVF, HNSW) every shard is its own approximate index (IVF shards are
    trained on their own first batch).

    Args:
        dim, factory, metric: as for :class:`FaissIndex`, shared by all shards.
        n_shards: number of shards (>= 1).
    """

    kind = "sharded"

    def __init__(self, dim: int, n_shards: int = 2, factory: str = "Flat", metric: str = "ip"):
        if int(n_shards) != n_shards or n_shards < 1:
            raise ConfigError(f"n_shards must be a positive integer, got {n_shards!r}")
        self.shards = [FaissIndex(dim, factory, metric) for _ in range(int(n_shards))]
        self._ids = np.empty(0, dtype=object)
        self._table = np.append(self._ids, None)
        self._known: set[str] = set()

    @property
    def factory(self) -> str:
        return self.shards[0].factory

    @property
    def metric(self) -> str:
        return self.shards[0].metric

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def ids(self) -> np.ndarray:
        """The string ids in insertion order, (N,) object array (do not modify)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(dim={self.dim}, n_shards={len(self.shards)}, factory={self.factory!r}, "
            f"metric={self.metric!r}, count={len(self)})"
        )

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add N vectors (N, d) with unique string ids, dealt round-robin over the shards."""
        x = as_matrix(vectors, self.dim, "vectors")
        new = as_ids(ids, len(x), self._known)
        n = len(self.shards)
        start = (-len(self)) % n  # first row of this batch that goes to shard 0
        for s, shard in enumerate(self.shards):
            rows = slice((start + s) % n, None, n)
            if len(new[rows]):
                shard.add(new[rows], x[rows])
        self._ids = np.concatenate([self._ids, new])
        self._table = np.append(self._ids, None)
        self._known.update(new.tolist())

    def set_search_params(self, **params: float) -> None:
        """Set search parameters (``nprobe``, ``efSearch``) on every shard."""
        for shard in self.shards:
            shard.set_search_params(**params)

    def search(self, queries: np.ndarray, k: int, **params: float) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all shards; same inputs, outputs and padding as :meth:`FaissIndex.search`."""
        k = check_k(k, len(self))
        n = len(self.shards)
        all_scores, all_pos = [], []
        for s, shard in enumerate(self.shards):
            scores, labels = shard.search_labels(queries, k, **params)  # (Q, k) each
            all_scores.append(scores)
            all_pos.append(np.where(labels < 0, _LAST, labels * n + s))  # global positions
        scores = np.concatenate(all_scores, axis=1)  # (Q, n*k)
        pos = np.concatenate(all_pos, axis=1)  # (Q, n*k)
        order = np.lexsort((pos, -scores), axis=-1)[:, :k]  # (Q, k)
        scores = np.take_along_axis(scores, order, axis=1)
        pos = np.take_along_axis(pos, order, axis=1)
        pos[pos == _LAST] = -1
        return scores, self._table[pos]

    def _write(self, tmp: Path) -> None:
        for s, shard in enumerate(self.shards):
            (tmp / f"shard-{s:03d}").mkdir()
            shard._write(tmp / f"shard-{s:03d}")
        write_ids(tmp / "ids.json", self._ids)
        meta = self.shards[0]._meta() | {"kind": self.kind, "count": len(self), "n_shards": len(self.shards)}
        atomic_write_json(tmp / "meta.json", meta)

    @classmethod
    def _read(cls, path: Path, meta: dict) -> "ShardedIndex":
        self = cls.__new__(cls)
        self.shards = []
        for s in range(meta["n_shards"]):
            shard_path = path / f"shard-{s:03d}"
            self.shards.append(FaissIndex._read(shard_path, _read_meta(shard_path)))
        self._ids = read_ids(path, meta["count"])
        self._table = np.append(self._ids, None)
        self._known = set(self._ids.tolist())
        if sum(len(shard) for shard in self.shards) != len(self._ids):
            raise DataFormatError("shard sizes do not add up to meta.json's count", path=str(path))
        return self


INDEX_KINDS: dict[str, type[Index]] = {"faiss": FaissIndex, "sharded": ShardedIndex}
"""Index kinds by the ``kind`` written in meta.json; ``Index.load`` dispatches on it. Other modules add
theirs when imported (``reprlab.retrieval.binary``: ``"binary"``)."""


def build_index(
    vectors: np.ndarray,
    ids: Sequence[str],
    factory: str = "Flat",
    metric: str = "ip",
    n_shards: int = 1,
    **search_params: float,
) -> Index:
    """Build an index over ``vectors`` (N, d) with string ``ids`` in one call.

    Returns a :class:`FaissIndex` (``n_shards=1``) or a :class:`ShardedIndex`, trained if needed, with
    ``search_params`` (``nprobe=``, ``efSearch=``) set.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ReprlabError(f"vectors must have shape (N, d), got {vectors.shape}")
    dim = vectors.shape[1]
    index: Index
    if n_shards == 1:
        index = FaissIndex(dim, factory, metric)
    else:
        index = ShardedIndex(dim, n_shards, factory, metric)
    index.add(ids, vectors)
    if search_params:
        index.set_search_params(**search_params)  # type: ignore[attr-defined]
    return index
