"""Training examples for retrievers: JSONL, one query with its positive and negative passages per line.

    {"_provenance": {"model": "minilm", "index": "Flat", "date": "2021-05-04", "parameters": {"k": 200}}}
    {"query": "what is aspirin", "positives": ["d1"], "negatives": ["d7", "d9"], "scores": [9.1, 4.2, 3.0]}
    {"query": "who wrote emma", "query_id": "q2", "positives": [{"title": "Emma", "text": "Emma is a novel ..."}]}

Fields of a line:

- ``query`` (str, not blank) and optionally ``query_id`` (str).
- ``positives`` (a non-empty list) and ``negatives`` (optional list). Each entry is either a document
  id string, resolved against a corpus, or an object ``{"id"?, "title"?, "text"}`` that carries
  its own text (``{"id": "d1"}`` alone means the same as ``"d1"``).
- ``scores`` (optional): teacher scores for distillation, **a list of numbers aligned with
  ``positives + negatives``**, so ``scores[i]`` scores the i-th passage of that concatenation. A
  list (not a ``{doc_id: score}`` dict) works for passages that have no id.

Provenance. :func:`write_examples` can store where the examples came from (the model and index
that mined the negatives, the date, the parameters) as a first line ``{"_provenance": {...}}``.
It lives in the same file, so it is written in the same atomic rename and cannot fall out of step
with the examples; :func:`read_examples` skips it and :func:`read_provenance` returns it.

>>> write_examples("train.jsonl", [TrainingExample("what is aspirin", ["d1"], ["d7"])],
...                provenance={"model": "minilm"})                  # doctest: +SKIP
>>> read_examples("train.jsonl", corpus=corpus)[0].positives[0].text  # doctest: +SKIP
'Aspirin is ...'

Errors (:class:`DataFormatError` naming ``file:line``): bad JSON, a line that is not an object, an
unknown field (a typo such as ``"negative"`` would otherwise drop data silently), a blank or
non-string query, missing or empty positives, an entry that is neither an id nor an object with a
string ``text``/``id``, scores that are not finite numbers or not one per passage, a
``_provenance`` line anywhere but first, and (with a corpus) an id the corpus does not have.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open
from reprlab.text.beir import iter_lines, parse_json_object

EXAMPLE_LINE = (
    '{"query": "...", "positives": ["d1" or {"title": "...", "text": "..."}], "negatives"?: [...], "scores"?: [...]}'
)
EXPECTED = f"a training-examples JSONL file with one object per line like {EXAMPLE_LINE}"
FIELDS = ("query", "query_id", "positives", "negatives", "scores")
PASSAGE_FIELDS = ("id", "title", "text")


@dataclass(frozen=True)
class Passage:
    """A positive or negative: an id, its text, or both. ``text is None`` means not yet resolved."""

    id: str | None = None
    text: str | None = None
    title: str = ""


@dataclass
class TrainingExample:
    """One query with its passages; ``scores`` (if any) align with ``positives + negatives``.

    Positives and negatives may be given as :class:`Passage` or, for a bare doc id, as a string.
    """

    query: str
    positives: list[Passage | str]
    negatives: list[Passage | str] = field(default_factory=list)
    scores: list[float] | None = None
    query_id: str | None = None


def _show(value) -> str:
    """A short rendering of a bad value for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _passage(entry, where: str, path, lineno: int, corpus: Mapping | None) -> Passage:
    if isinstance(entry, str):
        entry = {"id": entry}
    if not isinstance(entry, dict):
        raise DataFormatError(
            f"{where} must be a doc id string or an object "
            f'{{"id"?, "title"?, "text"}}, found {_show(entry)}',
            str(path),
            lineno,
        )
    unknown = sorted(set(entry) - set(PASSAGE_FIELDS))
    if unknown:
        raise DataFormatError(
            f"{where} has unknown field(s) {unknown}; allowed: {list(PASSAGE_FIELDS)}", str(path), lineno
        )
    for key in PASSAGE_FIELDS:
        if key in entry and not isinstance(entry[key], str):
            raise DataFormatError(
                f'{where}: field "{key}" must be a string, found {type(entry[key]).__name__}', str(path), lineno
            )
    doc_id, text, title = entry.get("id"), entry.get("text"), entry.get("title", "")
    if doc_id is not None and not doc_id.strip():
        raise DataFormatError(f"{where} has an empty id", str(path), lineno)
    if doc_id is None and text is None:
        raise DataFormatError(f'{where} has neither "id" nor "text"', str(path), lineno)
    if text is None and corpus is not None:
        doc = corpus.get(doc_id)
        if doc is None:
            raise DataFormatError(f"{where}: document '{doc_id}' is not in the corpus", str(path), lineno)
        if isinstance(doc, str):
            text = doc
        else:
            text, title = doc["text"], title or doc.get("title", "")
    return Passage(id=doc_id, text=text, title=title)


def parse_example(obj: dict, path, lineno: int, corpus: Mapping | None = None) -> TrainingExample:
    """Validate one decoded line and turn it into a :class:`TrainingExample` (ids resolved if ``corpus``)."""
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        hint = " (the provenance line must be the first line)" if "_provenance" in unknown else ""
        raise DataFormatError(
            f"unknown field(s) {unknown}{hint}; allowed: {list(FIELDS)}", str(path), lineno
        )
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        found = "missing" if query is None else _show(query)
        raise DataFormatError(
            f'"query" must be a non-blank string, found {found}; expected {EXAMPLE_LINE}', str(path), lineno
        )
    query_id = obj.get("query_id")
    if query_id is not None and not isinstance(query_id, str):
        raise DataFormatError(
            f'"query_id" must be a string, found {type(query_id).__name__}', str(path), lineno
        )
    lists = {}
    for key in ("positives", "negatives"):
        value = obj.get(key, [] if key == "negatives" else None)
        if not isinstance(value, list):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise DataFormatError(
                f'"{key}" must be a list of doc ids or passage objects, found {found}', str(path), lineno
            )
        lists[key] = [_passage(e, f"{key}[{i}]", path, lineno, corpus) for i, e in enumerate(value)]
    if not lists["positives"]:
        raise DataFormatError('"positives" is empty; every example needs at least one positive', str(path), lineno)
    scores = obj.get("scores")
    if scores is not None:
        n = len(lists["positives"]) + len(lists["negatives"])
        if not isinstance(scores, list) or len(scores) != n:
            found = f"{len(scores)} scores" if isinstance(scores, list) else f"a {type(scores).__name__}"
            raise DataFormatError(
                f'"scores" must be a list of {n} numbers, one per passage of positives + negatives, found {found}',
                str(path),
                lineno,
            )
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise DataFormatError(
                    f'"scores"[{i}] must be a finite number, found {_show(s)}', str(path), lineno
                )
        scores = [float(s) for s in scores]
    return TrainingExample(query, lists["positives"], lists["negatives"], scores, query_id)


def iter_examples(path: str | os.PathLike, corpus: Mapping | None = None) -> Iterator[TrainingExample]:
    """Stream the examples of ``path`` (see :func:`read_examples`)."""
    first = True
    for lineno, line in iter_lines(path, EXPECTED):
        obj = parse_json_object(line, path, lineno, EXAMPLE_LINE)
        if first and "_provenance" in obj:
            if set(obj) != {"_provenance"} or not isinstance(obj["_provenance"], dict):
                raise DataFormatError('a provenance line must be exactly {"_provenance": {...}}', str(path), lineno)
            first = False
            continue
        first = False
        yield parse_example(obj, path, lineno, corpus)


def read_examples(path: str | os.PathLike, corpus: Mapping | None = None) -> list[TrainingExample]:
    """Read training examples; with ``corpus`` (``{doc_id: {"title", "text"}}`` or ``{doc_id: text}``)
    id-only passages get their text, and an id the corpus lacks is an error."""
    return list(iter_examples(path, corpus))


def read_provenance(path: str | os.PathLike) -> dict | None:
    """The ``{"_provenance": ...}`` first line of an examples file, or None if it has none."""
    for lineno, line in iter_lines(path, EXPECTED):
        obj = parse_json_object(line, path, lineno, EXAMPLE_LINE)
        provenance = obj.get("_provenance")
        return provenance if isinstance(provenance, dict) else None
    return None


def _number(s):
    """A Python float for any real number (numpy, torch scalars' .item()); anything else is left to be rejected."""
    return float(s) if isinstance(s, numbers.Real) and not isinstance(s, bool) else s


def _passage_json(p: Passage | str, ids_only: bool):
    if isinstance(p, str):
        return p
    if not isinstance(p, Passage):
        return p  # left for parse_example to reject with a clear message
    if p.id is not None and (p.text is None or ids_only):
        return p.id
    obj = {}
    if p.id is not None:
        obj["id"] = p.id
    if p.title:
        obj["title"] = p.title
    obj["text"] = p.text
    return obj


def write_examples(
    path: str | os.PathLike,
    examples: Iterable[TrainingExample],
    provenance: dict | None = None,
    ids_only: bool = False,
) -> int:
    """Write examples as JSONL, atomically, with ``provenance`` as the first line; returns the count.

    Each example is checked as the reader would check it (an error names the line it would have
    been written on, and nothing is written). ``ids_only`` writes passages that have an id as the
    bare id, for files that will be read back against the same corpus.
    """
    with atomic_open(path) as f:
        lineno = 0
        if provenance is not None:
            if not isinstance(provenance, dict):
                raise DataFormatError(f"provenance must be a dict, got {type(provenance).__name__}", str(path))
            try:
                f.write(json.dumps({"_provenance": provenance}, ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as exc:
                raise DataFormatError(f"provenance is not JSON-serialisable: {exc}", str(path)) from None
            lineno += 1
        count = 0
        for ex in examples:
            lineno += 1
            obj = {"query": ex.query}
            if ex.query_id is not None:
                obj["query_id"] = ex.query_id
            obj["positives"] = [_passage_json(p, ids_only) for p in ex.positives]  # any sequence
            if len(ex.negatives):
                obj["negatives"] = [_passage_json(p, ids_only) for p in ex.negatives]
            if ex.scores is not None:
                obj["scores"] = [_number(s) for s in ex.scores]
            parse_example(obj, path, lineno)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count


def resolve_example(example: TrainingExample, corpus: Mapping) -> TrainingExample:
    """The example with every passage given by id looked up in ``corpus`` (``{id: {"title", "text"}}``).

    Raises ``KeyError``-free :class:`ReprlabError` for an id the corpus lacks.
    """
    from reprlab.errors import ReprlabError

    def one(p: Passage | str) -> Passage:
        if isinstance(p, Passage) and p.text is not None:
            return p
        doc_id = p if isinstance(p, str) else p.id
        doc = corpus.get(doc_id)
        if doc is None:
            raise ReprlabError(f"document '{doc_id}' of query {example.query[:60]!r} is not in the corpus")
        return Passage(id=doc_id, text=doc.get("text", ""), title=doc.get("title", ""))

    return TrainingExample(example.query, [one(p) for p in example.positives], [one(n) for n in example.negatives],
                           example.scores, example.query_id)
