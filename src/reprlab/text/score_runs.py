"""Teacher-score runs: JSONL, one question per line with its candidate passages and a teacher's score for each.

What ``reprlab score-passages`` writes and reader-to-retriever distillation reads (Izacard & Grave,
ICLR 2021: a reader's attention over the passages a retriever found, as labels for the retriever)::

    {"_provenance": {"teacher": "runs/fid/model", "kind": "fid", "signal": "cross-attention", "retriever": "bm25"}}
    {"query_id": "q1", "query": "who wrote emma?", "answers": ["Jane Austen"],
     "passages": [{"id": "Emma", "score": 1.93, "retriever_score": 21.4}, {"id": "Persuasion", "score": -0.41}]}

Fields of a line: ``query_id`` (a non-blank string, unique in the file), ``query`` (a non-blank
string), ``answers`` (optional list of strings), ``passages`` (a non-empty list, in the retriever's
order, of objects with ``id`` (a non-blank string, unique on the line), ``score`` (the teacher's, a
finite number) and optionally ``retriever_score`` (a finite number)). The optional first line
``{"_provenance": {...}}`` says where the scores came from; it is written in the same atomic rename
as the scores, so it cannot fall out of step with them.

Errors (:class:`~reprlab.errors.DataFormatError` naming ``file:line``): bad JSON, a line that is not an
object, an unknown field, a missing or mistyped field, a score that is not a finite number, a
passage listed twice on a line, a query id seen before, a ``_provenance`` line anywhere but first.

>>> write_score_run("scores.jsonl", [ScoredQuery("q1", "who?", [ScoredPassage("d1", 2.0)])])  # doctest: +SKIP
>>> read_score_run("scores.jsonl")[0].ranking()                                              # doctest: +SKIP
['d1']
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Iterable

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open
from reprlab.text.beir import iter_lines, parse_json_object

LINE = '{"query_id": "q1", "query": "...", "answers"?: ["..."], "passages": [{"id": "d1", "score": 1.5, ' \
       '"retriever_score"?: 12.0}, ...]}'
EXPECTED = f"a teacher-score JSONL file with one object per line like {LINE}"
FIELDS = ("query_id", "query", "answers", "passages")
PASSAGE_FIELDS = ("id", "score", "retriever_score")


@dataclass
class ScoredPassage:
    id: str
    score: float  # the teacher's
    retriever_score: float | None = None


@dataclass
class ScoredQuery:
    """One question's candidates (in the retriever's order) with the teacher's score of each."""

    query_id: str
    query: str
    passages: list[ScoredPassage]
    answers: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        """Passage ids by teacher score, best first (ties keep the retriever's order)."""
        order = sorted(range(len(self.passages)), key=lambda i: -self.passages[i].score)
        return [self.passages[i].id for i in order]


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bad(message: str, path, lineno: int):
    return DataFormatError(f"{message}; expected {LINE}", str(path), lineno)


def _passage(entry, i: int, path, lineno: int) -> ScoredPassage:
    if not isinstance(entry, dict):
        raise _bad(f'passages[{i}] must be an object, found a {type(entry).__name__}', path, lineno)
    unknown = sorted(set(entry) - set(PASSAGE_FIELDS))
    if unknown:
        raise _bad(f"passages[{i}]: unknown field(s) {unknown}; allowed: {list(PASSAGE_FIELDS)}", path, lineno)
    doc_id = entry.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise _bad(f'passages[{i}].id must be a non-blank string', path, lineno)
    if not _finite(entry.get("score")):
        raise _bad(f'passages[{i}].score must be a finite number, found {json.dumps(entry.get("score"))}',
                   path, lineno)
    retriever = entry.get("retriever_score")
    if retriever is not None and not _finite(retriever):
        raise _bad(f'passages[{i}].retriever_score must be a finite number', path, lineno)
    return ScoredPassage(doc_id, float(entry["score"]), None if retriever is None else float(retriever))


def parse_scored_query(obj: dict, path, lineno: int) -> ScoredQuery:
    """Validate one decoded line (see the module docstring)."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        hint = " (the provenance line must be the first line)" if "_provenance" in unknown else ""
        raise _bad(f"unknown field(s) {unknown}{hint}; allowed: {list(FIELDS)}", path, lineno)
    for key in ("query_id", "query"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise _bad(f'"{key}" must be a non-blank string', path, lineno)
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise _bad('"answers" must be a list of strings', path, lineno)
    passages = obj.get("passages")
    if not isinstance(passages, list) or not passages:
        raise _bad('"passages" must be a non-empty list', path, lineno)
    parsed = [_passage(p, i, path, lineno) for i, p in enumerate(passages)]
    seen: set[str] = set()
    for p in parsed:
        if p.id in seen:
            raise _bad(f"passage {p.id!r} is listed twice", path, lineno)
        seen.add(p.id)
    return ScoredQuery(obj["query_id"], obj["query"], parsed, list(answers))


def read_score_run(path: str | os.PathLike) -> list[ScoredQuery]:
    """The scored questions of ``path``, in file order (the provenance line skipped)."""
    out: list[ScoredQuery] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, line in iter_lines(path, EXPECTED):
        obj = parse_json_object(line, path, lineno, LINE)
        if first and "_provenance" in obj:
            if set(obj) != {"_provenance"} or not isinstance(obj["_provenance"], dict):
                raise DataFormatError('a provenance line must be exactly {"_provenance": {...}}', str(path), lineno)
            first = False
            continue
        first = False
        record = parse_scored_query(obj, path, lineno)
        if record.query_id in seen:
            raise DataFormatError(f"query_id {record.query_id!r} is on line {seen[record.query_id]} already",
                                  str(path), lineno)
        seen[record.query_id] = lineno
        out.append(record)
    return out


def read_score_provenance(path: str | os.PathLike) -> dict | None:
    """The ``{"_provenance": ...}`` first line of a score run, or None if it has none."""
    for lineno, line in iter_lines(path, EXPECTED):
        provenance = parse_json_object(line, path, lineno, LINE).get("_provenance")
        return provenance if isinstance(provenance, dict) else None
    return None


def write_score_run(path: str | os.PathLike, records: Iterable[ScoredQuery], provenance: dict | None = None) -> int:
    """Write ``records`` atomically (each checked as the reader checks it; an error writes nothing) with
    ``provenance`` as the first line; returns the number of questions written."""
    seen: set[str] = set()
    with atomic_open(path) as f:
        lineno = 0
        if provenance is not None:
            f.write(json.dumps({"_provenance": provenance}, ensure_ascii=False) + "\n")
            lineno += 1
        for record in records:
            lineno += 1
            obj = {"query_id": record.query_id, "query": record.query}
            if record.answers:
                obj["answers"] = list(record.answers)
            obj["passages"] = [{"id": p.id, "score": float(p.score)} if p.retriever_score is None else
                               {"id": p.id, "score": float(p.score), "retriever_score": float(p.retriever_score)}
                               for p in record.passages]
            parse_scored_query(obj, path, lineno)
            if record.query_id in seen:
                raise DataFormatError(f"query_id {record.query_id!r} written twice", str(path), lineno)
            seen.add(record.query_id)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return len(seen)
