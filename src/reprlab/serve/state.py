"""What a service holds: index versions, the hot swap, the encoders of each backend, request statistics.

**Index versions.** An :class:`IndexVersion` is everything one version of the index answers with:
the dense retriever (encoder, vectors, documents), a BM25 index over the same documents and the
version's name. It is immutable once loaded. Two layouts are read (:func:`load_version`):

* a folder written by ``reprlab index`` (``retriever.json``, the index, ``docs.jsonl``);
* a version published by ANCE's refresher (``index-vNNNN/index/``: vectors and ids only), whose
  documents and query encoder are those of the version it replaces (its ids must be among them).

**Hot swap.** :class:`IndexSlot` holds the current version; a request reads it once, at its start,
and uses that version to the end, so a request in flight finishes on the version it began with.
:class:`VersionWatcher` (a background thread) looks for a newer ``index-vNNNN`` folder in a
watched folder, loads it completely off the request path and swaps it in by one assignment.
A version that fails to load is logged and skipped; the service keeps the one it has.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprlab.errors import DataFormatError, ModelLoadError
from reprlab.retrieval.dense import DenseRetriever
from reprlab.retrieval.index import Index
from reprlab.retrieval.pipeline import bm25_for_corpus

logger = logging.getLogger("reprlab")
VERSION_DIR = re.compile(r"^index-v(\d+)$")


@dataclass(frozen=True)
class IndexVersion:
    name: str
    path: Path
    retriever: DenseRetriever
    bm25: Any
    fields: frozenset
    loaded_at: float = field(default_factory=time.time)

    @property
    def docs(self) -> dict[str, dict[str, str]]:
        return self.retriever.docs

    @property
    def index(self) -> Index:
        return self.retriever.index


class Encoders:
    """Query encoders by model name, for one backend (``torch``, ``onnx``, ``onnx-int8``), loaded once each.

    With an ONNX backend the model is exported at first use into a temporary folder, unless
    ``onnx_model`` (an export of the index's model) is given.
    """

    def __init__(self, backend: str = "torch", onnx_model: str | None = None):
        self.backend, self.onnx_model = backend, onnx_model
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory | None = None

    def get(self, model_name: str):
        with self._lock:
            if model_name not in self._cache:
                self._cache[model_name] = self._load(model_name)
            return self._cache[model_name]

    def _load(self, model_name: str):
        from reprlab.encoder import SentenceEncoder

        if self.backend == "torch":
            return SentenceEncoder.from_pretrained(model_name)
        from reprlab.onnx import export_onnx, onnx_folder

        folder = self.onnx_model if self.onnx_model and not self._cache else None
        if folder is None:
            folder = onnx_folder(model_name)
        if folder is None:  # export now (a minute for MiniLM); the folder lives as long as the service
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="reprlab-serve-onnx-")
            folder = Path(self._tmp.name) / f"model-{len(self._cache)}"
            logger.info(f"exporting {model_name} to ONNX for --backend {self.backend} (give --onnx-model to reuse one)")
            export_onnx(SentenceEncoder.from_pretrained(model_name), folder, int8=self.backend == "onnx-int8",
                        source=str(model_name))
        return SentenceEncoder.from_pretrained(folder, backend=self.backend)


def _fields(docs: dict[str, dict]) -> frozenset:
    names = {"id", "title", "text"}
    for doc in docs.values():
        names.update(k for k, v in doc.items() if isinstance(v, str))
    return frozenset(names)


def load_version(path: str | Path, encoders: Encoders, base: IndexVersion | None = None) -> IndexVersion:
    """Read one index version (see the module docstring); loads fully before it returns."""
    path = Path(path)
    if (path / "retriever.json").is_file():
        retriever = DenseRetriever.load(path, model=encoders.get(_model_name(path)))
        if not retriever.docs:
            raise DataFormatError("has no docs.jsonl (the documents' texts); rebuild it with `reprlab index`", str(path))
        bm25 = base.bm25 if base is not None and base.docs == retriever.docs else bm25_for_corpus(retriever.docs)
        return IndexVersion(path.name, path, retriever, bm25, _fields(retriever.docs))
    vectors = path / "index" if (path / "index" / "meta.json").is_file() else path
    if not (vectors / "meta.json").is_file():
        raise DataFormatError("is neither an index folder (`reprlab index`) nor an index version (index-vNNNN/)",
                              str(path))
    if base is None:
        raise ModelLoadError(f"{path} holds vectors only (an ANCE index version): serve it with --index set to "
                             "the index folder of its corpus (documents and query model) and --watch to its folder")
    index = Index.load(vectors)
    unknown = [i for i in index.ids.tolist() if i not in base.docs]
    if unknown or index.dim != base.index.dim:
        raise DataFormatError(f"does not fit the served index: {len(unknown)} unknown ids, dim {index.dim} "
                              f"(served: {base.index.dim})", str(path))
    old = base.retriever
    retriever = DenseRetriever(old.model, index, batch_size=old.batch_size, precision=old.precision,
                               model_name=old.model_name, query_prefix=old.query_prefix, doc_prefix=old.doc_prefix)
    retriever.docs = old.docs
    return IndexVersion(path.name, path, retriever, base.bm25, base.fields)


def _model_name(path: Path) -> str:
    """The model an index folder was built with (``retriever.json``); a bad file raises DenseRetriever's error."""
    try:
        name = json.loads((path / "retriever.json").read_text(encoding="utf-8")).get("model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        name = None
    if not isinstance(name, str):
        DenseRetriever.load(path)  # raises the reason
    return name


def newest_version(root: str | Path) -> Path | None:
    """The ``index-vNNNN`` folder of ``root`` with the highest NNNN (folders appear whole: atomic writes)."""
    found = [(int(m.group(1)), p) for p in Path(root).glob("index-v*") if (m := VERSION_DIR.match(p.name))
             and p.is_dir()]
    return max(found)[1] if found else None


class IndexSlot:
    """The current :class:`IndexVersion`; ``current`` is read once per request (see the module docstring)."""

    def __init__(self, version: IndexVersion):
        self.current = version
        self.swaps = 0
        self._lock = threading.Lock()

    def swap(self, version: IndexVersion) -> IndexVersion:
        with self._lock:
            old, self.current = self.current, version  # one reference assignment: readers see old or new
            self.swaps += 1
        logger.info(f"index {old.name} -> {version.name} ({len(version.index)} vectors)")
        return old


class VersionWatcher(threading.Thread):
    """Every ``seconds``, load the newest version of ``root`` if it is not the current one, and swap it in."""

    def __init__(self, slot: IndexSlot, root: str | Path, encoders: Encoders, seconds: float = 2.0):
        super().__init__(name="reprlab-index-watcher", daemon=True)
        self.slot, self.root, self.encoders, self.seconds = slot, Path(root), encoders, seconds
        self.failed: set[str] = set()
        self._stop_event = threading.Event()

    def check_once(self) -> bool:
        """Load and swap in a newer version if there is one; returns whether it swapped."""
        newest = newest_version(self.root)
        current = self.slot.current
        if newest is None or newest.resolve() == current.path.resolve() or str(newest) in self.failed:
            return False
        try:
            version = load_version(newest, self.encoders, base=current)
        except Exception as exc:  # noqa: BLE001 - a bad version is skipped; the service keeps the one it has
            self.failed.add(str(newest))
            logger.warning(f"index version {newest} not loaded: {type(exc).__name__}: {exc}")
            return False
        self.slot.swap(version)
        return True

    def run(self) -> None:
        while not self._stop_event.wait(self.seconds):
            self.check_once()

    def stop(self) -> None:
        self._stop_event.set()


class Stats:
    """Requests, 4xx answers and latencies per endpoint (the last ``window`` answers)."""

    def __init__(self, window: int = 2000):
        self.started = time.time()
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._latency: dict[str, deque] = {}
        self._lock = threading.Lock()
        self.window = window

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
            if 400 <= status < 500:
                self.errors[endpoint] = self.errors.get(endpoint, 0) + 1
            self._latency.setdefault(endpoint, deque(maxlen=self.window)).append(seconds * 1000)

    def latency(self) -> dict[str, dict]:
        with self._lock:
            out = {}
            for endpoint, values in self._latency.items():
                ms = np.array(values, dtype=np.float64)
                p = np.percentile(ms, [50, 95, 99]) if len(ms) else [None] * 3
                out[endpoint] = {"count": len(ms), "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2]}
            return out
