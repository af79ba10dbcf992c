"""TREC run files and TREC qrels: the formats ``trec_eval`` and pytrec_eval read.

A run has six whitespace-separated columns, ``qid Q0 docid rank score tag``; a qrels file has four,
``qid iter docid rel`` (``iter`` is ignored, usually ``0``)::

    q1 Q0 d7 1 12.5 bm25          q1 0 d7 1
    q1 Q0 d3 2 11.0 bm25          q1 0 d9 0

>>> write_run("run.trec", {"q1": {"d3": 11.0, "d7": 12.5}}, tag="bm25")   # doctest: +SKIP
>>> read_run("run.trec")                                                   # doctest: +SKIP
{'q1': {'d7': 12.5, 'd3': 11.0}}

Like ``trec_eval``, :func:`read_run` trusts the scores, not the rank column (it only checks that
the rank is an integer). :func:`write_run` sorts each query's documents by score, highest first,
breaks ties by document id so the file is deterministic, and numbers the ranks 1..n. Scores are
written with ``repr`` so they read back exactly.

Errors (:class:`DataFormatError` naming ``file:line``): the wrong number of columns, a rank that is
not an integer, a score that is not a finite number, a document listed twice for one query, a
relevance that is not an integer. Qrels follow the policy of :func:`reprlab.text.beir.collect_qrels`.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Iterator, Mapping

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open
from reprlab.text.beir import Qrels, check_writable_id, collect_qrels, iter_lines, parse_int

Run = dict[str, dict[str, float]]

RUN_EXPECTED = "a TREC run: 'qid Q0 docid rank score tag' per line, whitespace-separated"
QRELS_EXPECTED = "TREC qrels: 'qid iter docid rel' per line, whitespace-separated"


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run into ``{query_id: {doc_id: score}}`` (documents in file order)."""
    run: Run = {}
    for lineno, line in iter_lines(path, RUN_EXPECTED):
        cols = line.split()
        if len(cols) != 6:
            raise DataFormatError(
                f"expected 6 columns 'qid Q0 docid rank score tag', found {len(cols)}", str(path), lineno
            )
        qid, _, doc_id, rank_text, score_text, _ = cols
        if parse_int(rank_text) is None:
            raise DataFormatError(
                f"rank {rank_text!r} is not an integer (column 4 of 'qid Q0 docid rank score tag')", str(path), lineno
            )
        try:
            score = float(score_text)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataFormatError(
                f"score {score_text!r} is not a finite number (column 5 of 'qid Q0 docid rank score tag')",
                str(path),
                lineno,
            )
        ranked = run.setdefault(qid, {})
        if doc_id in ranked:
            raise DataFormatError(
                f"document '{doc_id}' appears twice for query '{qid}'; a run lists each document once per query",
                str(path),
                lineno,
            )
        ranked[doc_id] = score
    return run


def write_run(
    path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "reprlab", k: int | None = None
) -> None:
    """Write ``{query_id: {doc_id: score}}`` as a TREC run, atomically.

    Queries keep mapping order; within a query, documents go by score (highest first), ties by doc
    id, ranks 1..n; ``k`` keeps each query's top ``k``.
    """
    if not isinstance(tag, str) or not tag or len(tag.split()) != 1:
        raise DataFormatError(
            f"cannot write run tag {tag!r}: it must be a non-empty string without whitespace", str(path)
        )
    if k is not None and k < 1:
        raise DataFormatError(f"cannot write a run with k={k}; k must be at least 1 (or None for all)", str(path))
    with atomic_open(path) as f:
        for qid, scores in run.items():
            _check_token(qid, "query id", path)
            ranked = []
            for doc_id, score in scores.items():
                _check_token(doc_id, "document id", path)
                if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
                    raise DataFormatError(
                        f"cannot write score {score!r} for query '{qid}', document '{doc_id}': "
                        "scores must be finite numbers",
                        str(path),
                    )
                ranked.append((-float(score), doc_id))
            ranked.sort()
            for rank, (neg_score, doc_id) in enumerate(ranked[:k], 1):
                f.write(f"{qid} Q0 {doc_id} {rank} {-neg_score!r} {tag}\n")


def _qrel_records(path) -> Iterator[tuple[int, str, str, int]]:
    for lineno, line in iter_lines(path, QRELS_EXPECTED):
        cols = line.split()
        if len(cols) != 4:
            raise DataFormatError(
                f"expected 4 columns 'qid iter docid rel', found {len(cols)}", str(path), lineno
            )
        qid, _, doc_id, rel_text = cols
        rel = parse_int(rel_text)
        if rel is None:
            raise DataFormatError(
                f"relevance {rel_text!r} is not an integer (column 4 of 'qid iter docid rel')", str(path), lineno
            )
        yield lineno, qid, doc_id, rel


def read_qrels(
    path: str | os.PathLike, corpus: Mapping | None = None, queries: Mapping | None = None, strict: bool = False
) -> Qrels:
    """Read TREC qrels into ``{query_id: {doc_id: rel}}``, optionally checked against a corpus/queries."""
    return collect_qrels(_qrel_records(path), path, corpus, queries, strict)


def write_qrels(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``{query_id: {doc_id: rel}}`` as TREC qrels (``qid 0 docid rel``), atomically."""
    with atomic_open(path) as f:
        for qid, judged in qrels.items():
            _check_token(qid, "query id", path)
            for doc_id, rel in judged.items():
                _check_token(doc_id, "document id", path)
                if isinstance(rel, bool) or not isinstance(rel, numbers.Integral):
                    raise DataFormatError(
                        f"cannot write relevance {rel!r} for query '{qid}', document '{doc_id}': it must be an integer",
                        str(path),
                    )
                f.write(f"{qid} 0 {doc_id} {int(rel)}\n")



def _check_token(value, what: str, path) -> None:
    check_writable_id(value, what, path, whitespace=False)
