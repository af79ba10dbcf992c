"""Fusion of retrieval runs: reciprocal rank fusion (RRF) and score interpolation.

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

:func:`interpolate` fuses by score instead, for a dense ranking and a sparse one over the same
corpus: ``dense + weight * sparse / (the query's best sparse score)``, on arrays as ``search``
returns them. Normalising the sparse run by its best score per query puts it on a 0-1 scale next to
cosine similarities whatever the query's length; :mod:`reprlab.retrieval.mdr` uses it for each hop.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from reprlab.errors import ConfigError
from reprlab.retrieval.metrics import Run, ranked, truncate_run, to_run

__all__ = ["interpolate", "rrf", "to_run"]


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


def interpolate(
    dense_scores: np.ndarray, dense_ids: np.ndarray, sparse_scores: np.ndarray, sparse_ids: np.ndarray,
    weight: float, k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, rank the union of a dense and a sparse result list by dense + weight * sparse / max sparse.

    Args:
        dense_scores, dense_ids: (Q, Kd) a dense search's results, best first (``None`` ids pad).
        sparse_scores, sparse_ids: (Q, Ks) a sparse (BM25) search's results over the same corpus;
            scores are positive for matches, ``None`` ids pad.
        weight: the sparse run's weight (0 returns the dense ranking).
        k: results kept per query.

    A candidate of the sparse list only is given the dense list's last score, the highest dense score
    it can have (so with a dense list that covers the corpus nothing is approximated); one of the dense
    list only has sparse score 0. Ties keep dense order, then sparse order.

    Returns:
        (Q, k) fused scores (float32, ``-inf`` pads) and ids (``None`` pads), best first.
    """
    if weight < 0:
        raise ConfigError(f"the sparse weight must be >= 0, got {weight}")
    n_queries = len(dense_ids)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)  # (Q, k)
    ids = np.full((n_queries, k), None, dtype=object)  # (Q, k)
    for q in range(n_queries):
        dense = {d: float(s) for s, d in zip(dense_scores[q], dense_ids[q]) if d is not None}
        sparse = {d: float(s) for s, d in zip(sparse_scores[q], sparse_ids[q]) if d is not None and s > 0}
        if not dense:
            continue
        floor = min(dense.values())
        top = max(sparse.values()) if sparse else 1.0
        order = list(dense) + [d for d in sparse if d not in dense]  # dense order, then sparse order
        fused = [dense.get(d, floor) + weight * sparse.get(d, 0.0) / top for d in order]
        best = sorted(range(len(order)), key=lambda i: -fused[i])[:k]  # stable: ties keep that order
        scores[q, : len(best)] = [fused[i] for i in best]
        ids[q, : len(best)] = [order[i] for i in best]
    return scores, ids
