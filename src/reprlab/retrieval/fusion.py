"""Reciprocal rank fusion (RRF) of retrieval runs.

Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual rank
learning methods", SIGIR 2009. Each run votes for a document with 1 / (k + rank), rank starting at 1;
only ranks matter, so runs with incomparable scores (BM25 and a dense retriever, say) fuse without
normalisation. k = 60 is the paper's constant; a weight per run scales its votes.

Runs are ``{query_id: {doc_id: score}}`` (see :mod:`reprlab.retrieval.metrics`, whose :func:`to_run`
turns ``search`` output into one). Ranks follow trec_eval's order (score descending, ties by doc id
descending), so a document's rank here is the rank the evaluator sees.

>>> bm25 = {"q": {"a": 12.0, "b": 9.0}}
>>> dense = {"q": {"b": 0.9, "c": 0.8}}
>>> fused = rrf([bm25, dense])
>>> sorted(fused["q"], key=fused["q"].get, reverse=True)
['b', 'a', 'c']
"""

from __future__ import annotations

from typing import Mapping, Sequence

from reprlab.errors import ConfigError
from reprlab.retrieval.metrics import Run, ranked, truncate_run, to_run

__all__ = ["rrf", "to_run"]


def rrf(
    runs: Sequence[Mapping[str, Mapping[str, float]]],
    k: float = 60,
    weights: Sequence[float] | None = None,
    top: int | None = None,
) -> Run:
    """Fuse runs by reciprocal rank: score(q, d) = sum_i weights[i] / (k + rank_i(q, d)).

    Args:
        runs: the runs to fuse; a query may be absent from some of them (it then gets no votes there).
        k: the RRF constant (60 in the paper); larger k flattens the difference between ranks.
        weights: one weight per run (default all 1).
        top: keep only the best ``top`` documents per query (default: all).

    Returns:
        the fused run ``{query_id: {doc_id: rrf score}}`` over the union of the runs' queries.
    """
    if weights is None:
        weights = [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ConfigError(f"got {len(weights)} weights for {len(runs)} runs")
    if k < 0:
        raise ConfigError(f"the RRF constant k must be >= 0, got {k}")
    fused: Run = {}
    for run, weight in zip(runs, weights):
        for q, docs in run.items():
            scores = fused.setdefault(str(q), {})
            for rank, d in enumerate(ranked(docs), start=1):
                scores[d] = scores.get(d, 0.0) + weight / (k + rank)
    return truncate_run(fused, top) if top is not None else fused
