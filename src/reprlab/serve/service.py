"""The service behind the HTTP layer: loaded components and what each endpoint computes.

:class:`Service` holds the current index version (:class:`~reprlab.serve.state.IndexSlot`), the
optional multi-hop index and reader, the encoders and the batcher. Its methods are plain
functions of a request's values and a *version*, read once per request by the caller, so a
request uses one version from its first step to its last.

* search: dense (the query encoded and searched in the version's index by the batcher, one index
  search per batch of concurrent queries: :meth:`Service.dense_run`), BM25, or hybrid
  (reciprocal-rank fusion of both, :func:`reprlab.retrieval.fusion.rrf`, each searched to depth
  100 or more); filters keep the documents whose fields pass every test, searching up to
  :data:`FILTER_DEPTH` results of each retriever;
* multihop: MDR's beam search (:func:`reprlab.retrieval.mdr.multihop_search`) with the query
  encoder behind the batcher, optionally with BM25 fusion (:class:`~reprlab.retrieval.mdr.SparseFusion`);
* answer: the reader over given passages, or over the top-k passages of a search (retrieve then
  read); Block Skim readers skim unless asked not to (threshold 0 reads every block).

A search's hits carry snippets with the query's terms highlighted unless the request asks for none
(``highlight: false``): then each snippet is its text's beginning, found without looking at the terms.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reprlab.errors import ConfigError
from reprlab.retrieval.fusion import rrf
from reprlab.retrieval.metrics import to_run
from reprlab.serve.batching import EncodeBatcher
from reprlab.serve.config import Limits, ServeConfig
from reprlab.serve.highlight import leading_snippet, query_terms, snippet, term_spans
from reprlab.serve.state import Encoders, IndexSlot, IndexVersion, Stats, VersionWatcher, load_version

logger = logging.getLogger("reprlab")
FILTER_DEPTH = 10_000  # results of each retriever that filters look through
HYBRID_DEPTH = 100  # results of each retriever fused by a hybrid search


@dataclass
class Found:
    """One ranked document: id and score."""

    id: str
    score: float


class Service:
    """See the module docstring. Build one with :meth:`from_config` or from loaded parts (tests)."""

    def __init__(self, slot: IndexSlot, encoders: Encoders, limits: Limits | None = None,
                 multihop: IndexVersion | None = None, reader=None, watcher: VersionWatcher | None = None,
                 max_batch: int = 64, batch_wait_ms: float = 2.0, encode_workers: int = 1,
                 encode_threads: int | None = None):
        self.slot, self.encoders, self.limits = slot, encoders, limits or Limits()
        self.multihop, self.reader, self.watcher = multihop, reader, watcher
        if encode_threads is None and encode_workers > 1:
            import torch

            encode_threads = max(1, torch.get_num_threads() // encode_workers)
        self.batcher = EncodeBatcher(max_batch, batch_wait_ms, encode_workers, encode_threads)
        self.stats = Stats()
        self.reader_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ServeConfig) -> "Service":
        """Load every component of ``config``. An ``index`` folder of versions (``index-vNNNN/``) is served
        from its newest version and watched for newer ones."""
        from pathlib import Path

        from reprlab.serve.state import newest_version

        if config.watch and not Path(config.watch).is_dir():
            raise ConfigError(f"{config.watch} is not a folder (new index versions index-vNNNN/ appear in a "
                              "folder; create it first if they come later)", field="watch")
        encoders = Encoders(config.backend, config.onnx_model)
        index = Path(config.index)
        watch = config.watch
        first = None
        if not (index / "retriever.json").is_file() and newest_version(index) is not None:
            first, watch = newest_version(index), watch or config.index
        version = load_version(first or index, encoders)
        slot = IndexSlot(version)
        watcher = VersionWatcher(slot, watch, encoders, config.watch_seconds) if watch else None
        multihop = load_version(config.multihop_index, encoders) if config.multihop_index else None
        reader = None
        if config.reader:
            from reprlab.qa.reader import load_reader

            reader = load_reader(config.reader)
        return cls(slot, encoders, config.limits, multihop, reader, watcher, config.max_batch, config.batch_wait_ms,
                   config.encode_workers or default_workers(config.backend), config.encode_threads)

    @property
    def endpoints(self) -> list[str]:
        names = ["/search", "/encode", "/health", "/stats"]
        if self.multihop is not None:
            names.append("/multihop")
        if self.reader is not None:
            names.append("/answer")
        return sorted(names)

    # ------------------------------------------------------------------------------------- search

    @staticmethod
    def dense_depth(version: IndexVersion, mode: str, k: int, filters: Sequence = ()) -> int:
        """How deep ``search`` searches the dense index for a request (filters and hybrid fusion look deeper)."""
        depth = min(len(version.index), FILTER_DEPTH) if filters else k
        return max(depth, HYBRID_DEPTH) if mode == "hybrid" else depth

    async def dense_run(self, version: IndexVersion, text: str, mode: str, k: int,
                        filters: Sequence = ()) -> tuple[np.ndarray, np.ndarray]:
        """(scores (1, depth), ids (1, depth)) of ``text`` in the dense index, to the depth ``search`` needs:
        encoded and searched in one batch with the concurrent requests (the batcher)."""
        r = version.retriever
        _, scores, ids = await self.batcher.encode_search(r.model, r.query_prefix + text, version.index,
                                                          self.dense_depth(version, mode, k, filters), None,
                                                          r.precision)
        return scores, ids

    def search(self, version: IndexVersion, query: str, vector: np.ndarray | None, mode: str, k: int,
               filters: Sequence = (), dense: tuple[np.ndarray, np.ndarray] | None = None) -> list[Found]:
        """The top ``k`` documents of ``version`` for ``query`` (``vector``: its dense query vector; or ``dense``:
        its dense results already searched to :meth:`dense_depth`, as :meth:`dense_run` gives them)."""
        depth = min(len(version.index), FILTER_DEPTH) if filters else k
        runs = []
        if mode in ("dense", "hybrid"):
            runs.append(dense if dense is not None else version.index.search(
                vector[None].astype(np.float32), self.dense_depth(version, mode, k, filters)))
        if mode in ("bm25", "hybrid"):
            runs.append(version.bm25.search([query], max(depth, HYBRID_DEPTH) if mode == "hybrid" else depth))
        if mode == "hybrid":
            fused = rrf([to_run(["q"], *r) for r in runs]).get("q", {})
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            scores, ids = runs[0]
            ranked = [(d, float(s)) for d, s in zip(ids[0], scores[0]) if d is not None]
        found = [Found(d, s) for d, s in ranked if passes(d, version.docs.get(d, {}), filters)]
        return found[:k]

    def check_filters(self, version: IndexVersion, filters: Sequence) -> None:
        for i, f in enumerate(filters):
            if f.field not in version.fields:
                raise ConfigError(f"documents of this index have no field {f.field!r}; they have: "
                                  f"{', '.join(sorted(version.fields))}", field=f"filters.{i}.field")

    def hits(self, version: IndexVersion, found: Sequence[Found], query: str, highlight: bool = True) -> list[dict]:
        """The response's hits; ``highlight=False``: snippets are the texts' beginnings, nothing highlighted."""
        terms = query_terms(query) if highlight else None
        return [hit(rank, f.id, f.score, version.docs.get(f.id, {}), terms) for rank, f in enumerate(found, 1)]

    # ------------------------------------------------------------------------------------- multi-hop

    def multihop_chains(self, question: str, k: int, beam: int, bm25_weights, loop) -> list[dict]:
        """MDR chains of ``question`` over the multi-hop index, as response dicts (runs in a worker thread)."""
        from reprlab.retrieval.mdr import SparseFusion, mdr_settings, multihop_search
        from reprlab.serve.batching import BatchedEncoder

        version = self.multihop
        settings = mdr_settings(version.retriever.model_name)
        sparse = SparseFusion(version.bm25, *bm25_weights) if bm25_weights is not None else None
        encoder = BatchedEncoder(self.batcher, version.retriever.model, loop)
        chains = multihop_search(encoder, [question], version.index, version.docs, beam, k, settings["hop2_title"],
                                 settings["max_question_length"], settings["max_query_length"], sparse=sparse)[0]
        terms = query_terms(question)
        return [{"rank": rank, "score": c.score,
                 "hops": [hit(i + 1, pid, s, version.docs.get(pid, {}), terms)
                          for i, (pid, s) in enumerate(zip(c.passages, c.scores))]}
                for rank, c in enumerate(chains, 1)]

    # ------------------------------------------------------------------------------------- reading

    def read(self, question: str, passages: list[str], top: int, block_skim: bool | None,
             ids: list[str] | None = None, titles: list[str] | None = None) -> tuple[list[dict], bool]:
        """The reader's ``top`` answers over ``passages`` and whether it skimmed (runs in a worker thread)."""
        reader = self.reader
        skim_config = getattr(reader, "skim_config", None)
        if block_skim and skim_config is None:
            raise ConfigError("the served reader has no Block Skim predictors; send false or null",
                              field="block_skim")
        skim = skim_config is not None and block_skim is not False
        with self.reader_lock:  # one reading at a time: the reader's modes and skim threshold are shared
            threshold = skim_config.threshold if skim_config is not None else None
            if skim_config is not None and not skim:
                skim_config.threshold = 0.0  # keeps every block: the plain reader's answers
            try:
                answers = reader.answer(question, passages, top_k=top, context_ids=ids)
            finally:
                if skim_config is not None:
                    skim_config.threshold = threshold
        return [{"rank": rank, "text": a.text, "score": float(a.score), "passage_index": a.context_index,
                 "passage_id": a.context_id, "title": (titles or [""] * len(passages))[a.context_index],
                 "passage": passages[a.context_index], "start": a.start, "end": a.end}
                for rank, a in enumerate(answers, 1)], skim

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.batcher.start()
        if self.watcher is not None:
            self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        await self.batcher.close()


def default_workers(backend: str) -> int:
    """Encode workers when not set: 2 for the torch backend when torch has >= 2 threads (each worker then takes
    half of them; on 2 cores, 2 single-thread workers answered more queries/s at 8 and 32 users than one worker of
    2 threads, while a lone request, now on 1 thread, took ~10% longer: BENCHMARKS.md, Serving), else 1 (ONNX
    Runtime threads its own session)."""
    import torch

    return 2 if backend == "torch" and torch.get_num_threads() >= 2 else 1


def passes(doc_id: str, doc: dict, filters: Sequence) -> bool:
    """Whether a document passes every filter (case-insensitive equals / contains / prefix on a field)."""
    for f in filters:
        value = doc_id if f.field == "id" else doc.get(f.field)
        if not isinstance(value, str):
            return False
        a, b = value.lower(), f.value.lower()
        if not (a == b if f.op == "equals" else b in a if f.op == "contains" else a.startswith(b)):
            return False
    return True


def hit(rank: int, doc_id: str, score: float, doc: dict, terms: list[str] | None) -> dict[str, Any]:
    """A result as the response's ``Hit``: title, snippet and the query's terms highlighted in both
    (``terms=None``: no highlighting; the snippet is the text's beginning, :func:`leading_snippet`)."""
    title = doc.get("title", "") or ""
    score = float(score) if np.isfinite(score) else 0.0
    if terms is None:
        return {"rank": rank, "id": doc_id, "score": score, "title": title,
                "snippet": leading_snippet(doc.get("text", "") or ""), "highlights": [], "title_highlights": []}
    text, spans = snippet(doc.get("text", "") or "", terms)
    return {"rank": rank, "id": doc_id, "score": score, "title": title,
            "snippet": text, "highlights": [{"start": a, "end": b} for a, b in spans],
            "title_highlights": [{"start": a, "end": b} for a, b, _ in term_spans(title, terms)]}
