"""Retrieval metrics through ``pytrec_eval`` (trec_eval), with BEIR's conventions made explicit.

A *run* is ``{query_id: {doc_id: score}}`` (higher score = better), *qrels* are
``{query_id: {doc_id: relevance}}`` with integer grades (0 = judged not relevant). :func:`to_run`
turns the ``(scores, ids)`` of ``Index.search`` / ``BM25Index.search`` into a run.

Semantics of :func:`evaluate` (read these before comparing numbers with a paper):

* **Which queries count.** The mean is over the *judged* queries: those in the qrels with at least
  one document of relevance >= ``relevance_level``. A judged query that is missing from the run (or
  has no results) scores 0 on every measure. Queries in the run but not judged are ignored. (Plain
  ``pytrec_eval`` and BEIR average only over queries present in both the run and the qrels, which
  flatters a run that drops queries; trec_eval's ``-c`` flag does what we do.)
* **Identical ids.** With ``ignore_identical_ids=True`` (the default, as in BEIR) a result whose doc id
  equals its query id is removed before scoring: in BEIR collections like ArguAna or Quora the
  query itself is in the corpus. Pass ``False`` where a query may legitimately retrieve its own id.
* **Ranking.** trec_eval ranks a run by score descending and breaks ties by doc id *descending*;
  cut-offs (``@k``) and :func:`truncate_run` use the same order.
* **Graded relevance.** nDCG uses the grade itself as the gain (trec_eval's linear gain, not
  2^rel - 1) and the discount 1 / log2(rank + 1); binary measures count grade >= ``relevance_level``.

Measure names are pytrec_eval's: ``ndcg_cut_10``, ``recall_100``, ``recip_rank``, ``map``, ``P_10``,
``map_cut_10``, ``success_1``, ... plus friendly aliases ``ndcg@k``, ``recall@k``, ``p@k``,
``map@k``, ``success@k`` and ``mrr@k`` (MRR@k = ``recip_rank`` on the run truncated to its top k;
trec_eval has no recip_rank cut-off). The result is keyed by the names exactly as passed.

>>> qrels = {"q1": {"d1": 1}}
>>> run = {"q1": {"d0": 2.0, "d1": 1.0}}
>>> evaluate(qrels, run, metrics=("mrr@10", "recall_100"))
{'mrr@10': 0.5, 'recall_100': 1.0}
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import pytrec_eval

from reprlab.errors import ConfigError, ReprlabError

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("ndcg_cut_10", "recall_100", "recip_rank", "map")
_ALIASES = {"ndcg": "ndcg_cut", "recall": "recall", "p": "P", "precision": "P", "map": "map_cut", "success": "success"}
_NEEDS_CUTOFF = {"P", "recall", "ndcg_cut", "map_cut", "success", "relative_P", "iprec_at_recall"}
_EXAMPLES = '"ndcg_cut_10", "recall_100", "recip_rank", "map", "P_10", "ndcg@10", "recall@100", "mrr@10"'


def to_run(query_ids: Sequence[str], scores: np.ndarray, ids: np.ndarray) -> Run:
    """Turn search output into a run ``{query_id: {doc_id: score}}``.

    Args:
        query_ids: Q query ids, in the order of the search's query rows.
        scores: (Q, k) scores from ``search``.
        ids: (Q, k) doc ids from ``search``; padding (``None`` ids) is dropped.
    """
    if len(query_ids) != len(scores) or np.shape(scores)[:1] != np.shape(ids)[:1]:
        raise ReprlabError(f"{len(query_ids)} query ids for {len(scores)} score rows and {len(ids)} id rows")
    scores_list = np.asarray(scores, dtype=np.float64).tolist()
    ids_list = ids.tolist() if isinstance(ids, np.ndarray) else ids
    return {
        str(q): {d: s for d, s in zip(row_ids, row_scores) if d is not None}
        for q, row_ids, row_scores in zip(query_ids, ids_list, scores_list)
    }


def ranked(docs: Mapping[str, float]) -> list[str]:
    """Doc ids of one query's results in trec_eval order: score descending, then doc id descending."""
    return [d for d, _ in sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def truncate_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Keep each query's top ``k`` results (in trec_eval order, see :func:`ranked`)."""
    return {q: {d: docs[d] for d in ranked(docs)[:k]} for q, docs in run.items()}


def _parse(name: str) -> tuple[str, int | None]:
    """A measure name -> (pytrec_eval measure spec, or "recip_rank" for mrr@k; the mrr cut-off k or None)."""
    alias = re.fullmatch(r"([A-Za-z]+)@(\d+)", name)
    if alias:
        family, k = alias.group(1).lower(), int(alias.group(2))
        if family == "mrr":
            return "recip_rank", k
        if family in _ALIASES:
            return f"{_ALIASES[family]}.{k}", None
    elif name in _NEEDS_CUTOFF:
        raise ConfigError(f"metric {name!r} needs a cut-off, e.g. {name}_10 or {name.split('_')[0].lower()}@10")
    elif name in pytrec_eval.supported_measures:
        return name, None
    else:
        cut = re.fullmatch(r"(.+?)_(\d+)", name)
        if cut and cut.group(1) in pytrec_eval.supported_measures:
            return f"{cut.group(1)}.{cut.group(2)}", None
    raise ConfigError(f"unknown metric {name!r}; examples: {_EXAMPLES}")


def evaluate(
    qrels: Qrels,
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = True,
    relevance_level: int = 1,
    per_query: bool = False,
) -> dict:
    """Score ``run`` against ``qrels`` (semantics in the module docstring).

    Args:
        qrels: ``{query_id: {doc_id: grade}}``.
        run: ``{query_id: {doc_id: score}}``, e.g. from :func:`to_run`.
        metrics: measure names (pytrec_eval names or the ``@k`` aliases).
        ignore_identical_ids: drop results whose doc id equals the query id (BEIR does, default True).
        relevance_level: the lowest grade that counts as relevant for binary measures.
        per_query: return per-query values instead of means.

    Returns:
        ``{metric: mean over judged queries}``, or with ``per_query=True``
        ``{query_id: {metric: value}}`` for every judged query (missing ones hold 0.0).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    judged = [q for q, docs in qrels.items() if any(r >= relevance_level for r in docs.values())]
    if not judged:
        raise ReprlabError(f"the qrels hold no document of relevance >= {relevance_level}: nothing to evaluate")
    run = {
        str(q): {str(d): float(s) for d, s in docs.items() if not (ignore_identical_ids and str(d) == str(q))}
        for q, docs in run.items()
        if str(q) in qrels
    }
    specs = {name: _parse(name) for name in metrics}
    values: dict[str, dict[str, float]] = {q: {} for q in judged}  # query -> metric -> value

    def score(spec_names: dict[str, str], this_run: Run) -> None:
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(spec_names.values()), relevance_level=relevance_level)
        result = evaluator.evaluate(this_run)  # only queries in both, with keys like "ndcg_cut_10"
        for name, spec in spec_names.items():
            key = spec.replace(".", "_")
            for q in judged:
                values[q][name] = float(result.get(q, {}).get(key, 0.0))

    plain = {name: spec for name, (spec, cut) in specs.items() if cut is None}
    if plain:
        score(plain, run)
    for cut in sorted({cut for _, cut in specs.values() if cut is not None}):
        score({name: "recip_rank" for name, (_, c) in specs.items() if c == cut}, truncate_run(run, cut))

    if per_query:
        return values
    return {name: float(np.mean([values[q][name] for q in judged])) for name in metrics}


def check_metrics(metrics: Sequence[str]) -> None:
    """Raise ``ConfigError`` for an unknown measure name now, before any expensive retrieval."""
    for name in [metrics] if isinstance(metrics, str) else metrics:
        _parse(name)
