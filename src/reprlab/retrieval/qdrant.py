"""A Qdrant collection behind the :class:`~reprlab.retrieval.index.Index` API (kind ``"qdrant"``).

Qdrant (https://qdrant.tech, client: https://github.com/qdrant/qdrant-client) stores vectors with JSON
payloads, filters on the payloads while it searches, and runs as one server or as a sharded, replicated
cluster. The same code talks to three places:

* ``url="http://host:6333"``: a Qdrant server or cluster (``api_key`` or ``$QDRANT_API_KEY`` for a
  secured one);
* ``path="folder"``: qdrant-client's local mode, persisted in that folder, in this process;
* neither: local mode in memory (tests; it cannot be saved).

Local mode always searches exactly (brute force, in numpy); a server searches its HNSW graph unless
``exact=True``, and can keep the vectors quantised (``quantization="scalar"`` int8, ``"binary"`` 1 bit,
``"pq"`` product quantisation x16), rescoring the candidates with the original vectors.

Points: point id = insertion position (0, 1, ...), payload ``{"_id": string id, **payload}``, so the
string ids of the contract survive and ties are ordered by insertion position as in every index kind.
``add(ids, vectors, payloads=...)`` uploads in batches of ``upload_batch``; a batch that fails is
retried ``retries`` times with exponential back-off (an upsert of the same point ids is idempotent),
then reported with the rows it covers; the index then holds the rows uploaded before it.
``search(queries, k, filter={"field": value})`` keeps only points whose payload matches (a list of values
matches any of them; a ``qdrant_client.models.Filter`` is passed as it is).

``save`` writes a small folder: ``meta.json`` (kind, URL or local path, collection, dim, count,
quantisation, search parameters) and ``ids.json``; ``Index.load`` reconnects and checks that the
collection still holds the vectors the folder describes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reprlab.errors import ConfigError, DataFormatError, ReprlabError, require
from reprlab.io import atomic_write_json
from reprlab.retrieval.index import (FORMAT, FORMAT_VERSION, INDEX_KINDS, Index, as_ids, as_matrix, check_k,
                                     read_ids, write_ids)

QUANTIZATIONS = ("none", "scalar", "binary", "pq")
SEARCH_PARAMS = ("exact", "hnsw_ef", "oversampling")


def _qdrant():
    return require("qdrant_client", extra="qdrant", package="qdrant-client")


def _retryable() -> tuple[type[BaseException], ...]:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    kinds: list[type[BaseException]] = [ResponseHandlingException, UnexpectedResponse, OSError, TimeoutError]
    try:
        import grpc

        kinds.append(grpc.RpcError)
    except ImportError:  # pragma: no cover - grpc comes with qdrant-client
        pass
    return tuple(kinds)


def _reason(exc: BaseException) -> str:
    source = getattr(exc, "source", None)  # ResponseHandlingException wraps the transport error
    return str(source or exc).strip() or type(exc).__name__


def payload_filter(spec: Any):
    """A ``qdrant_client.models.Filter`` from ``{field: value}`` (a list or tuple matches any of its values),
    or ``spec`` itself when it is already a Filter; None for None."""
    if spec is None:
        return None
    models = _qdrant().models
    if isinstance(spec, models.Filter):
        return spec
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"a filter is a dict {{field: value or [values]}} or a qdrant Filter, got {spec!r}")
    must = []
    for key, value in spec.items():
        if isinstance(value, (list, tuple, set)):
            match = models.MatchAny(any=list(value))
        elif isinstance(value, (str, int, bool)):
            match = models.MatchValue(value=value)
        else:
            raise ConfigError(f"filter {key!r}: match a string, an integer, a bool or a list of them, got {value!r}")
        must.append(models.FieldCondition(key=str(key), match=match))
    return models.Filter(must=must)


class QdrantIndex(Index):
    """Vectors in a Qdrant collection, searched through the Index contract (see the module docstring).

    Args:
        dim: vector dimension d.
        collection: the collection's name.
        url / path: a server or cluster URL, or a local-mode folder; neither = local mode in memory.
        metric: ``"ip"`` (inner product, Qdrant's Dot distance; scores as FAISS's).
        quantization: how a server keeps the vectors: ``none``, ``scalar`` (int8), ``binary``, ``pq``.
        overwrite: replace an existing collection of that name (otherwise a non-empty one is an error).
        upload_batch, retries, retry_delay: points per upsert, retries of a failed batch, first back-off (s).
        timeout: seconds a request may take; api_key: for a secured server (default ``$QDRANT_API_KEY``).
    """

    kind = "qdrant"

    def __init__(self, dim: int, collection: str = "reprlab", url: str | None = None, path: str | None = None,
                 metric: str = "ip", quantization: str = "none", overwrite: bool = False, upload_batch: int = 256,
                 retries: int = 3, retry_delay: float = 0.5, timeout: float = 10.0, api_key: str | None = None):
        if metric != "ip":
            raise ConfigError(f"the qdrant index supports metric 'ip' (inner product), got {metric!r}")
        if quantization not in QUANTIZATIONS:
            raise ConfigError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
        if int(upload_batch) != upload_batch or upload_batch < 1:
            raise ConfigError(f"must be >= 1, got {upload_batch!r}", field="upload_batch")
        if int(retries) != retries or retries < 0:
            raise ConfigError(f"must be >= 0, got {retries!r}", field="retries")
        if url and path:
            raise ConfigError("give a server url or a local path, not both")
        if not str(collection) or len(str(collection)) > 255 or set(str(collection)) & {"/", "\0"}:
            raise ConfigError(f"{collection!r} is not a collection name (1 to 255 characters, no '/')",
                              field="collection")
        if path and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{path} is a file; local mode keeps the collection in a folder", field="qdrant_path")
        if quantization != "none" and not url:
            raise ConfigError(f"{quantization!r} quantization is kept by a Qdrant server; local mode stores the "
                              "vectors as they are (give --qdrant-url, or leave it out)", field="quantization")
        self._dim, self.collection, self.metric, self.quantization = int(dim), str(collection), metric, quantization
        self.url, self.path = url, (str(Path(path).resolve()) if path else None)
        self.upload_batch, self.retries, self.retry_delay = int(upload_batch), int(retries), float(retry_delay)
        self.search_params: dict[str, Any] = {}
        self._ids = np.empty(0, dtype=object)
        self._table = np.append(self._ids, None)
        self._known: set[str] = set()
        self.client = self._connect(timeout, api_key)
        self._create(overwrite)

    # -- connection

    @property
    def where(self) -> str:
        return self.url or (f"local folder {self.path}" if self.path else "local memory")

    @property
    def local(self) -> bool:
        return self.url is None

    def _connect(self, timeout: float, api_key: str | None):
        qdrant = _qdrant()
        if self.url:
            client = qdrant.QdrantClient(url=self.url, timeout=int(np.ceil(timeout)), check_compatibility=False,
                                         api_key=api_key or os.environ.get("QDRANT_API_KEY"))
        elif self.path:
            try:
                client = qdrant.QdrantClient(path=self.path)
            except RuntimeError as exc:  # the folder is locked by another client
                raise ReprlabError(f"cannot open the Qdrant folder {self.path}: {exc}") from exc
        else:
            client = qdrant.QdrantClient(location=":memory:")
        try:
            client.collection_exists(self.collection)
        except _retryable() as exc:
            raise ReprlabError(f"cannot reach Qdrant at {self.url}: {_reason(exc)}; check that the server runs "
                               "and the URL (scheme, host and port)") from exc
        return client

    def _existing_dim(self) -> int | None:
        if not self.client.collection_exists(self.collection):
            return None
        vectors = self.client.get_collection(self.collection).config.params.vectors
        if isinstance(vectors, Mapping):  # named vectors: not written by reprlab
            raise ConfigError(f"collection {self.collection!r} at {self.where} has named vectors "
                              f"{sorted(vectors)}; reprlab writes one unnamed vector per point")
        return int(vectors.size)

    def _check_dim(self, existing: int | None) -> None:
        if existing is not None and existing != self._dim:
            raise ConfigError(f"collection {self.collection!r} at {self.where} holds {existing}-d vectors, this "
                              f"index has dim {self._dim}: choose another collection or the model it was built with")

    def _create(self, overwrite: bool) -> None:
        models = _qdrant().models
        existing = self._existing_dim()
        if existing is not None and not overwrite:
            self._check_dim(existing)
            points = self.client.count(self.collection, exact=True).count
            if points:
                raise ConfigError(f"collection {self.collection!r} at {self.where} already holds {points} points; "
                                  "choose another collection name or overwrite it")
            return
        if existing is not None:
            self.client.delete_collection(self.collection)
        quantization = {
            "none": None,
            "scalar": models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, always_ram=True)),
            "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)),
            "pq": models.ProductQuantization(product=models.ProductQuantizationConfig(
                compression=models.CompressionRatio.X16, always_ram=True)),
        }[self.quantization]
        self.client.create_collection(
            self.collection, vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.DOT),
            quantization_config=quantization)

    def close(self) -> None:
        """Release the client (a local folder can then be opened again)."""
        self.client.close()

    # -- the contract's properties

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """The string ids in insertion order, (N,) object array (do not modify)."""
        return self._ids

    def __repr__(self) -> str:
        return f"QdrantIndex(dim={self.dim}, collection={self.collection!r}, at={self.where!r}, count={len(self)})"

    # -- building

    def add(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping] | None = None) -> None:
        """Upload N vectors (N, d) with unique string ids and optional payloads (N JSON objects), in batches."""
        x = as_matrix(vectors, self.dim, "vectors")
        new = as_ids(ids, len(x), self._known)
        if payloads is not None and len(payloads) != len(x):
            raise ReprlabError(f"got {len(payloads)} payloads for {len(x)} vectors")
        models = _qdrant().models
        for a in range(0, len(x), self.upload_batch):
            b = min(a + self.upload_batch, len(x))
            first = len(self)
            body = [{**(dict(payloads[i]) if payloads is not None else {}), "_id": new[i]} for i in range(a, b)]
            batch = models.Batch(ids=list(range(first, first + b - a)), vectors=x[a:b].tolist(), payloads=body)
            self._upsert(batch, a, b)
            self._ids = np.concatenate([self._ids, new[a:b]])
            self._known.update(new[a:b].tolist())
        self._table = np.append(self._ids, None)

    def _upsert(self, batch, a: int, b: int) -> None:
        retryable = _retryable()
        for attempt in range(self.retries + 1):
            try:
                self.client.upsert(self.collection, points=batch, wait=True)
                return
            except retryable as exc:
                if attempt == self.retries:
                    raise ReprlabError(
                        f"uploading rows {a}..{b - 1} to Qdrant collection {self.collection!r} at {self.where} "
                        f"failed {attempt + 1} times: {_reason(exc)}. The {len(self)} points before them are "
                        "stored; add the remaining rows again to resume") from exc
                time.sleep(self.retry_delay * 2 ** attempt)

    # -- searching

    def set_search_params(self, **params) -> None:
        """Search parameters that stay set: ``exact`` (bool), ``hnsw_ef`` (int), ``oversampling`` (float,
        quantised collections: candidates fetched per result before rescoring). Local mode ignores them."""
        for name, value in params.items():
            if name not in SEARCH_PARAMS:
                raise ConfigError(f"the qdrant index has no search parameter {name!r}; it takes "
                                  f"{', '.join(SEARCH_PARAMS)} (and filter= per call)")
            self.search_params[name] = value

    def _params(self, params: Mapping):
        if self.local:
            return None  # local mode is exact and warns about parameters
        models = _qdrant().models
        quantization = None
        if self.quantization != "none":
            quantization = models.QuantizationSearchParams(rescore=True, oversampling=params.get("oversampling"))
        return models.SearchParams(exact=bool(params.get("exact", False)), hnsw_ef=params.get("hnsw_ef"),
                                   quantization=quantization)

    def search(self, queries: np.ndarray, k: int, filter=None, **params) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product; ``filter``: payload conditions (see :func:`payload_filter`).

        Returns (scores (Q, k) float32, ids (Q, k) object), best first, equal scores by insertion position,
        padded with -inf / None when fewer points match.
        """
        q = as_matrix(queries, self.dim, "queries")
        k = check_k(k, len(self))
        for name in params:
            if name not in SEARCH_PARAMS:
                raise ConfigError(f"the qdrant index has no search parameter {name!r}; it takes "
                                  f"{', '.join(SEARCH_PARAMS)} and filter=")
        settings = self._params({**self.search_params, **params})
        where = payload_filter(filter)
        scores = np.full((len(q), k), -np.inf, np.float32)
        labels = np.full((len(q), k), -1, np.int64)
        if len(self) == 0:
            return scores, self._table[labels]
        depth = np.full(len(q), min(k + 1, len(self)))  # one extra shows whether a tie crosses the cut
        pending = np.arange(len(q))
        while pending.size:
            found = self._query(q[pending], depth[pending], where, settings)
            still = []
            for row, (s, pos) in zip(pending, found):
                order = np.lexsort((pos, -s))  # (score desc, position asc)
                s, pos = s[order], pos[order]
                width = min(k, len(s))
                crossing = len(s) > k and s[k] == s[k - 1] and depth[row] < len(self)
                if crossing:
                    depth[row] = min(2 * depth[row], len(self))
                    still.append(row)
                    continue
                scores[row, :width], labels[row, :width] = s[:width], pos[:width]
            pending = np.array(still, dtype=np.int64)
        return scores, self._table[labels]

    def _query(self, q: np.ndarray, limits: np.ndarray, where, settings) -> list[tuple[np.ndarray, np.ndarray]]:
        models = _qdrant().models
        requests = [models.QueryRequest(query=v.tolist(), limit=int(n), filter=where, params=settings,
                                        with_payload=False) for v, n in zip(q, limits)]
        try:
            answers = self.client.query_batch_points(self.collection, requests=requests)
        except _retryable() as exc:
            raise ReprlabError(f"Qdrant search in {self.collection!r} at {self.where} failed: {_reason(exc)}") from exc
        out = []
        for answer in answers:
            points = answer.points
            out.append((np.array([p.score for p in points], dtype=np.float32),
                        np.array([int(p.id) for p in points], dtype=np.int64)))
        return out

    def payloads(self, ids: Sequence[str]) -> dict[str, dict]:
        """The stored payloads of ``ids`` (without ``_id``), fetched from the collection."""
        position = {i: n for n, i in enumerate(self._ids.tolist())}
        wanted = [position[i] for i in ids if i in position]
        points = self.client.retrieve(self.collection, ids=wanted, with_payload=True, with_vectors=False)
        return {p.payload["_id"]: {k: v for k, v in p.payload.items() if k != "_id"} for p in points}

    # -- saving

    def _meta(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                "metric": self.metric, "url": self.url, "path": self.path, "collection": self.collection,
                "quantization": self.quantization, "count": len(self), "search_params": self.search_params,
                "qdrant_client_version": _client_version()}

    def _write(self, tmp: Path) -> None:
        if self.url is None and self.path is None:
            raise ConfigError("an in-memory Qdrant collection cannot be saved: give a server url or a local path")
        write_ids(tmp / "ids.json", self._ids)
        atomic_write_json(tmp / "meta.json", self._meta())

    @classmethod
    def _read(cls, path: Path, meta: dict) -> "QdrantIndex":
        self = cls.__new__(cls)
        self._dim, self.collection, self.metric = int(meta["dim"]), meta["collection"], meta.get("metric", "ip")
        self.quantization, self.url, self.path = meta.get("quantization", "none"), meta.get("url"), meta.get("path")
        self.upload_batch, self.retries, self.retry_delay = 256, 3, 0.5
        self.search_params = dict(meta.get("search_params", {}))
        self._ids = read_ids(path, meta["count"])
        self._table = np.append(self._ids, None)
        self._known = set(self._ids.tolist())
        self.client = self._connect(10.0, None)
        existing = self._existing_dim()
        if existing is None:
            raise DataFormatError(f"collection {self.collection!r} is not at {self.where}; build the index again",
                                  path=str(path))
        self._check_dim(existing)
        points = self.client.count(self.collection, exact=True).count
        if points != len(self._ids):
            raise DataFormatError(f"collection {self.collection!r} at {self.where} holds {points} points, the folder "
                                  f"says {len(self._ids)}: it changed since the index was saved", path=str(path))
        return self


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qdrant-client")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


INDEX_KINDS[QdrantIndex.kind] = QdrantIndex


def document_payloads(corpus: Mapping[str, Mapping[str, Any]], ids: Sequence[str],
                      metadata: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """Payloads for ``ids``: title, text and the document's metadata fields (``metadata[id]``, JSON values)."""
    out = []
    for i in ids:
        doc = corpus[i]
        extra = dict(metadata.get(i, {})) if metadata else {}
        out.append({**extra, "title": doc.get("title", ""), "text": doc.get("text", "")})
    return out


def read_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """The fields of a corpus.jsonl (or a BEIR folder's) besides ``_id``, ``title`` and ``text``, by id; a
    ``metadata`` object is flattened into its fields. {} for other formats (MS MARCO .tsv has none)."""
    from reprlab.text.corpus import jsonl_records

    p = Path(path)
    p = p / "corpus.jsonl" if p.is_dir() else p
    if p.suffix != ".jsonl" or not p.is_file():
        return {}
    out = {}
    for _, record in jsonl_records(p):
        doc_id = record.get("_id")
        extra = {k: v for k, v in record.items() if k not in ("_id", "title", "text", "metadata")}
        nested = record.get("metadata")
        if isinstance(nested, dict):
            extra.update(nested)
        if extra and isinstance(doc_id, str):
            out[doc_id] = json.loads(json.dumps(extra))  # JSON values only
    return out
