"""Retrievers by name, hybrid fusion, and evaluation of any retriever on a BEIR data set.

A retriever is anything with ``search(query_texts, k) -> (scores (Q, k), ids (Q, k))``:
:class:`~reprlab.retrieval.dense.DenseRetriever`, :class:`~reprlab.retrieval.bm25.BM25Index`,
:class:`HybridRetriever`. ``build_retriever(spec, corpus)`` makes one from a name the CLI accepts:
``bm25``, ``minilm``, ``hybrid`` (BM25 + MiniLM by reciprocal-rank fusion), or a model folder.

>>> data = load_beir("scifact/beir", split="test")                 # doctest: +SKIP
>>> retriever = build_retriever("minilm", data.corpus)             # doctest: +SKIP
>>> evaluate_retriever(retriever, data)["ndcg_cut_10"]             # doctest: +SKIP
0.6451
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from reprlab.errors import ConfigError
from reprlab.hub import MODEL_ALIASES
from reprlab.retrieval.bm25 import BM25Index
from reprlab.retrieval.dense import Corpus, DenseRetriever
from reprlab.text.beir import doc_text
from reprlab.retrieval.fusion import rrf
from reprlab.retrieval.metrics import DEFAULT_METRICS, Run, evaluate, to_run

RETRIEVER_NAMES = ("bm25", "minilm", "hybrid")  # plus any model folder


class Retriever(Protocol):
    def search(self, query_texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...


class HybridRetriever:
    """Reciprocal-rank fusion of several retrievers (each searched to ``depth``)."""

    def __init__(self, retrievers: Sequence[Retriever], depth: int = 100, rrf_k: float = 60,
                 weights: Sequence[float] | None = None):
        if not retrievers:
            raise ConfigError("a hybrid retriever needs at least one retriever")
        self.retrievers, self.depth, self.rrf_k, self.weights = list(retrievers), depth, rrf_k, weights

    def search(self, query_texts: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        qids = [str(i) for i in range(len(query_texts))]
        runs = [to_run(qids, *r.search(query_texts, max(k, self.depth))) for r in self.retrievers]
        fused = rrf(runs, k=self.rrf_k, weights=self.weights, top=k)
        scores = np.full((len(qids), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qids), k), None, dtype=object)
        for row, q in enumerate(qids):
            ranked_docs = sorted(fused.get(q, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            for col, (doc, score) in enumerate(ranked_docs):
                scores[row, col], ids[row, col] = score, doc
        return scores, ids


def bm25_for_corpus(corpus: Corpus, **kwargs) -> BM25Index:
    index = BM25Index(**kwargs)
    ids = list(corpus)
    index.add(ids, [doc_text(corpus[i]) for i in ids])
    return index


def build_retriever(spec: str | Path, corpus: Corpus, factory: str = "Flat", batch_size: int = 64,
                    precision: str = "fp32", show_progress: bool | None = None) -> Retriever:
    """A retriever over ``corpus`` from a name (``bm25``, ``minilm``, ``hybrid``) or a model folder."""
    spec = str(spec)
    if spec == "bm25":
        return bm25_for_corpus(corpus)
    if spec == "hybrid":
        dense = build_retriever("minilm", corpus, factory, batch_size, precision, show_progress)
        return HybridRetriever([bm25_for_corpus(corpus), dense])
    if spec.lower() not in MODEL_ALIASES and not Path(spec).is_dir():
        raise ConfigError(f"unknown retriever {spec!r}: give one of {', '.join(RETRIEVER_NAMES)} or a model folder")
    retriever = DenseRetriever.from_model(spec, batch_size=batch_size, precision=precision)
    retriever.index_corpus(corpus, factory=factory, show_progress=show_progress)
    return retriever


def retrieve(retriever: Retriever, queries: Mapping[str, str], k: int = 100) -> Run:
    """Search every query; returns a run ``{query_id: {doc_id: score}}``."""
    qids = list(queries)
    scores, ids = retriever.search([queries[q] for q in qids], k)
    return to_run(qids, scores, ids)


def evaluate_retriever(retriever: Retriever, dataset, k: int = 100, metrics: Sequence[str] = DEFAULT_METRICS,
                       ignore_identical_ids: bool = True) -> dict[str, float]:
    """Mean metrics over the judged queries of a :class:`~reprlab.text.beir.BeirDataset`."""
    queries = {q: dataset.queries[q] for q in dataset.judged_queries()}
    run = retrieve(retriever, queries, k)
    return evaluate(dataset.qrels, run, metrics=metrics, ignore_identical_ids=ignore_identical_ids)


def holdout(ids: Sequence[str], fraction: float, salt: str = "reprlab-dev") -> list[str]:
    """A deterministic held-out slice of ``ids`` (by hash of salt + id), e.g. a dev set cut from a train split."""
    import hashlib

    if not 0 <= fraction < 1:
        raise ConfigError(f"a held-out fraction must be in [0, 1), got {fraction}")
    keyed = sorted(ids, key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())
    return sorted(keyed[: round(fraction * len(keyed))])
