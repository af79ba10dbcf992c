"""BEIR folders: read, validate and write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

The layout is the one BEIR's ``GenericDataLoader`` reads; all ids are strings::

    folder/corpus.jsonl       {"_id": "d1", "title": "Aspirin", "text": "Aspirin is ..."}
    folder/queries.jsonl      {"_id": "q1", "text": "what is aspirin"}
    folder/qrels/test.tsv     query-id<TAB>corpus-id<TAB>score     (header line, then)
                              q1<TAB>d1<TAB>1                      (score > 0 = relevant)

>>> ds = load_beir("scifact/beir", split="test")              # doctest: +SKIP
>>> len(ds.corpus), len(ds.queries), len(ds.judged_queries())  # doctest: +SKIP
(5183, 1109, 300)

Shapes (shared with :mod:`reprlab.text.msmarco` and :mod:`reprlab.text.trec`):
corpus ``{doc_id: {"title": str, "text": str}}`` in file order, queries ``{query_id: text}``,
qrels ``{query_id: {doc_id: int}}``.

Error policy. A line that cannot be what the format says is a :class:`DataFormatError` naming
``file:line`` and what was expected: bad JSON, a missing ``_id``/``text``, a field that is not a
string, a duplicate id, a qrels line without exactly 3 tab-separated columns or with a non-integer
score, a qrels file without its header (BEIR's loader skips line 1 unread, so a missing header
silently drops a judgement), a judgement for a query that has no text, and the same (query, doc)
judged twice with different scores. Extra JSON fields are ignored; a missing ``title`` is ``""``.
Judgements for documents missing from the corpus are kept, as BEIR and pytrec_eval keep them (they
count as relevant documents that were never retrieved); they raise one ``UserWarning`` that counts
them and names the first ``file:line``, or an error with ``strict=True``. An exact duplicate
judgement is dropped with a warning.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open

CORPUS_LINE = '{"_id": "d1", "title": "...", "text": "..."}'
QUERIES_LINE = '{"_id": "q1", "text": "..."}'
QRELS_HEADER = "query-id\tcorpus-id\tscore"
LAYOUT = (
    "a BEIR folder holds corpus.jsonl ({corpus}), queries.jsonl ({queries}) and "
    "qrels/<split>.tsv (header 'query-id<TAB>corpus-id<TAB>score', then one judgement per line)"
).format(corpus=CORPUS_LINE, queries=QUERIES_LINE)

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]


@dataclass
class BeirDataset:
    """A corpus, its queries and one split's relevance judgements."""

    corpus: Corpus = field(default_factory=dict)
    queries: Queries = field(default_factory=dict)
    qrels: Qrels = field(default_factory=dict)

    def judged_queries(self) -> Queries:
        """The queries that have at least one judgement in ``qrels``, in query-file order.

        This is the set BEIR evaluates (its loader drops the rest); a query whose judgements are all
        0 stays in, as it does there.
        """
        return {qid: text for qid, text in self.queries.items() if qid in self.qrels}


def doc_text(doc: Mapping[str, str], sep: str = " ") -> str:
    """BEIR's document text for bi-encoders: title and text joined by a space."""
    return (doc.get("title", "") + sep + doc.get("text", "")).strip()


# --------------------------------------------------------------------------- shared line helpers


def iter_lines(path: str | os.PathLike, expected: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for each non-blank line of a UTF-8 file, newline removed.

    Lines split on ``\\n`` only (a stray ``\\r`` or U+2028 inside a text stays in the text), a UTF-8
    byte-order mark is dropped, and a missing or unreadable file is a :class:`DataFormatError` that
    says what ``expected`` file should be there.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataFormatError(f"file not found; expected {expected}", str(path)) from None
    except IsADirectoryError:
        raise DataFormatError(f"is a folder, not a file; expected {expected}", str(path)) from None
    except OSError as exc:
        raise DataFormatError(f"cannot read ({exc.strerror}); expected {expected}", str(path)) from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"not valid UTF-8 (byte {exc.start} of the line); expected {expected}", str(path), lineno
                ) from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def parse_json_object(line: str, path: str | os.PathLike, lineno: int, example: str) -> dict:
    """``json.loads`` one line that must hold a JSON object, or raise naming ``path:lineno``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"invalid JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line like {example}",
            str(path),
            lineno,
        ) from None
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"expected a JSON object like {example}, found a JSON {type(obj).__name__}", str(path), lineno
        )
    return obj


def parse_int(text: str) -> int | None:
    """An optionally signed decimal integer, or None (``int()`` would also take ``"1_0"``)."""
    digits = text[1:] if text[:1] in "+-" else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def _string_field(obj: dict, key: str, path, lineno: int, example: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if key not in obj and default is None:
        raise DataFormatError(f'missing field "{key}"; expected an object like {example}', str(path), lineno)
    if not isinstance(value, str):
        raise DataFormatError(
            f'field "{key}" must be a string, found {json.dumps(value)[:40]} ({type(value).__name__}); '
            f"expected an object like {example}",
            str(path),
            lineno,
        )
    return value


def _id_field(obj: dict, path, lineno: int, example: str) -> str:
    value = _string_field(obj, "_id", path, lineno, example)
    if not value.strip():
        raise DataFormatError(f'empty "_id"; expected an object like {example}', str(path), lineno)
    return value


def collect_qrels(
    records: Iterable[tuple[int, str, str, int]],
    path: str | os.PathLike,
    corpus: Mapping | None = None,
    queries: Mapping | None = None,
    strict: bool = False,
) -> Qrels:
    """Build ``{query_id: {doc_id: score}}`` from ``(line, query_id, doc_id, score)`` records.

    Applies the policy in the module docstring: conflicting duplicates and (when ``queries`` is
    given) unknown query ids are errors; (when ``corpus`` is given) unknown doc ids are kept with one
    warning, or are an error with ``strict``; exact duplicates are dropped with one warning. Every
    qrels reader in :mod:`reprlab.text` goes through here.
    """
    qrels: Qrels = {}
    unknown_docs, first_unknown = 0, None
    duplicates, first_duplicate = 0, None
    for lineno, qid, doc_id, score in records:
        if queries is not None and qid not in queries:
            raise DataFormatError(
                f"judgement for query '{qid}', which is not in the queries file; every judged query "
                "needs its text (add it to the queries, or remove its judgements)",
                str(path),
                lineno,
            )
        if corpus is not None and doc_id not in corpus:
            if strict:
                raise DataFormatError(
                    f"judgement for document '{doc_id}' (query '{qid}'), which is not in the corpus",
                    str(path),
                    lineno,
                )
            unknown_docs += 1
            first_unknown = first_unknown or (lineno, qid, doc_id)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            if judged[doc_id] != score:
                raise DataFormatError(
                    f"query '{qid}', document '{doc_id}' judged twice with different scores "
                    f"({judged[doc_id]} earlier, {score} here); keep one",
                    str(path),
                    lineno,
                )
            duplicates += 1
            first_duplicate = first_duplicate or lineno
            continue
        judged[doc_id] = score
    if unknown_docs:
        lineno, qid, doc_id = first_unknown
        warnings.warn(
            f"{path}:{lineno}: {unknown_docs} judgement(s) name documents missing from the corpus "
            f"(first: document '{doc_id}' for query '{qid}'); they are kept and count as relevant "
            "documents never retrieved, as in BEIR and pytrec_eval; make this an error with strict=True (`reprlab evaluate --strict-qrels`)",
            UserWarning,
            stacklevel=3,
        )
    if duplicates:
        warnings.warn(
            f"{path}:{first_duplicate}: {duplicates} duplicate judgement(s) (same query, document and "
            "score) ignored",
            UserWarning,
            stacklevel=3,
        )
    return qrels


_TSV_BREAKERS = re.compile(r"[\t\n\r]")
_WHITESPACE = re.compile(r"\s")


def check_writable_id(value, what: str, path, whitespace: bool = True) -> str:
    """An id a TSV file can hold: a non-empty string without tabs or newlines (nor any whitespace
    if not ``whitespace``, for formats split on whitespace), or a :class:`DataFormatError`."""
    bad = _TSV_BREAKERS if whitespace else _WHITESPACE
    if not isinstance(value, str) or not value.strip() or bad.search(value):
        rule = "without tabs or newlines" if whitespace else "without whitespace"
        raise DataFormatError(f"cannot write {what} {value!r}: ids must be non-empty strings {rule}", str(path))
    return value


# --------------------------------------------------------------------------- readers


def read_corpus(path: str | os.PathLike) -> Corpus:
    """Read ``corpus.jsonl`` into ``{doc_id: {"title", "text"}}``, in file order."""
    expected = f"a BEIR corpus.jsonl with one JSON object per line like {CORPUS_LINE}"
    corpus: Corpus = {}
    for lineno, line in iter_lines(path, expected):
        obj = parse_json_object(line, path, lineno, CORPUS_LINE)
        doc_id, title, text = obj.get("_id"), obj.get("title", ""), obj.get("text")
        if not (type(doc_id) is str and type(title) is str and type(text) is str and doc_id.strip()):
            doc_id = _id_field(obj, path, lineno, CORPUS_LINE)  # the slow path finds the precise error
            title = _string_field(obj, "title", path, lineno, CORPUS_LINE, default="")
            text = _string_field(obj, "text", path, lineno, CORPUS_LINE)
        if doc_id in corpus:
            raise DataFormatError(
                f"duplicate document id '{doc_id}' (it appears on an earlier line); ids must be unique",
                str(path),
                lineno,
            )
        corpus[doc_id] = {"title": title, "text": text}
    return corpus


def read_queries(path: str | os.PathLike) -> Queries:
    """Read ``queries.jsonl`` into ``{query_id: text}``, in file order."""
    expected = f"a BEIR queries.jsonl with one JSON object per line like {QUERIES_LINE}"
    queries: Queries = {}
    for lineno, line in iter_lines(path, expected):
        obj = parse_json_object(line, path, lineno, QUERIES_LINE)
        qid = _id_field(obj, path, lineno, QUERIES_LINE)
        text = _string_field(obj, "text", path, lineno, QUERIES_LINE)
        if qid in queries:
            raise DataFormatError(
                f"duplicate query id '{qid}' (it appears on an earlier line); ids must be unique",
                str(path),
                lineno,
            )
        queries[qid] = text
    return queries


def _beir_qrel_records(path) -> Iterator[tuple[int, str, str, int]]:
    expected = f"a BEIR qrels file: the header '{QRELS_HEADER}' then 'query-id<TAB>corpus-id<TAB>score' lines"
    header_seen = False
    for lineno, line in iter_lines(path, expected):
        cols = [c.strip() for c in line.split("\t")]
        if not header_seen:
            header_seen = True
            if cols == QRELS_HEADER.split("\t"):
                continue
            if len(cols) == 3 and parse_int(cols[2]) is not None:
                raise DataFormatError(
                    f"missing header: the first line must be '{QRELS_HEADER}' (tab-separated), but it is a "
                    "judgement; BEIR's loader would silently drop it",
                    str(path),
                    lineno,
                )
            raise DataFormatError(f"bad header {line!r}; expected '{QRELS_HEADER}' (tab-separated)", str(path), lineno)
        if len(cols) != 3:
            hint = " (is the file space-separated? BEIR qrels use tabs)" if len(cols) == 1 else ""
            raise DataFormatError(
                f"expected 3 tab-separated columns 'query-id<TAB>corpus-id<TAB>score', found {len(cols)}{hint}",
                str(path),
                lineno,
            )
        qid, doc_id, score_text = cols
        if not qid or not doc_id:
            raise DataFormatError("empty query-id or corpus-id", str(path), lineno)
        score = parse_int(score_text)
        if score is None:
            raise DataFormatError(f"score {score_text!r} is not an integer; expected e.g. 1", str(path), lineno)
        yield lineno, qid, doc_id, score
    if not header_seen:
        raise DataFormatError(f"empty file; expected the header '{QRELS_HEADER}'", str(path))


def read_qrels(
    path: str | os.PathLike,
    corpus: Mapping | None = None,
    queries: Mapping | None = None,
    strict: bool = False,
) -> Qrels:
    """Read ``qrels/<split>.tsv`` into ``{query_id: {doc_id: score}}``.

    With ``corpus`` and/or ``queries`` the judgements are checked against them (see the module
    docstring for what is an error and what a warning).
    """
    return collect_qrels(_beir_qrel_records(path), path, corpus, queries, strict)


def load_beir(
    folder: str | os.PathLike, split: str = "test", validate: bool = True, strict: bool = False
) -> BeirDataset:
    """Read a BEIR folder: the whole corpus, all queries and the judgements of ``split``.

    ``validate`` checks the qrels against the corpus and queries (unknown queries are errors,
    unknown documents a warning, or an error with ``strict``). All queries are returned, judged or
    not; :meth:`BeirDataset.judged_queries` gives those with judgements.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"no such folder; {LAYOUT}", str(folder))
    for name in ("corpus.jsonl", "queries.jsonl"):
        if (folder / name).is_dir():
            raise DataFormatError(f"{name} is a folder, not a file; {LAYOUT}", str(folder))
        if not (folder / name).is_file():
            raise DataFormatError(f"{name} is missing; {LAYOUT}", str(folder))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        have = f"the splits here are {', '.join(splits)}" if splits else "there is no qrels/*.tsv here"
        raise DataFormatError(f"no qrels for split '{split}' ({have}); {LAYOUT}", str(qrels_path))
    corpus = read_corpus(folder / "corpus.jsonl")
    queries = read_queries(folder / "queries.jsonl")
    if validate:
        qrels = read_qrels(qrels_path, corpus=corpus, queries=queries, strict=strict)
    else:
        qrels = read_qrels(qrels_path)
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


# --------------------------------------------------------------------------- writers


def _text(value, what: str, path) -> str:
    if not isinstance(value, str):
        raise DataFormatError(f"cannot write {what}: expected a string, got {type(value).__name__}", str(path))
    return value


def write_corpus(path: str | os.PathLike, corpus: Mapping[str, Mapping[str, str]]) -> None:
    """Write ``{doc_id: {"title"?, "text"}}`` as ``corpus.jsonl``, atomically, in mapping order."""
    with atomic_open(path) as f:
        for doc_id, doc in corpus.items():
            if not isinstance(doc_id, str) or not doc_id.strip():
                raise DataFormatError(f"cannot write document id {doc_id!r}: ids must be non-empty strings", str(path))
            if not isinstance(doc, Mapping):
                raise DataFormatError(
                    f"cannot write document '{doc_id}': expected a mapping with 'title' and 'text'", str(path)
                )
            title = _text(doc.get("title", ""), f"the title of document '{doc_id}'", path)
            text = _text(doc.get("text"), f"the text of document '{doc_id}'", path)
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")


def write_queries(path: str | os.PathLike, queries: Mapping[str, str]) -> None:
    """Write ``{query_id: text}`` as ``queries.jsonl``, atomically, in mapping order."""
    with atomic_open(path) as f:
        for qid, text in queries.items():
            if not isinstance(qid, str) or not qid.strip():
                raise DataFormatError(f"cannot write query id {qid!r}: ids must be non-empty strings", str(path))
            text = _text(text, f"the text of query '{qid}'", path)
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")


def write_qrels(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``{query_id: {doc_id: score}}`` as a BEIR qrels TSV with its header, atomically."""
    with atomic_open(path) as f:
        f.write(QRELS_HEADER + "\n")
        for qid, judged in qrels.items():
            check_writable_id(qid, "query id", path)
            for doc_id, score in judged.items():
                check_writable_id(doc_id, "document id", path)
                if isinstance(score, bool) or not isinstance(score, numbers.Integral):
                    raise DataFormatError(
                        f"cannot write score {score!r} for query '{qid}', document '{doc_id}': scores are integers",
                        str(path),
                    )
                f.write(f"{qid}\t{doc_id}\t{int(score)}\n")


def write_beir(folder: str | os.PathLike, dataset: BeirDataset, split: str = "test") -> None:
    """Write ``dataset`` as a BEIR folder; each of the three files is replaced atomically.

    Other splits already in ``folder/qrels`` are left alone.
    """
    folder = Path(folder)
    write_corpus(folder / "corpus.jsonl", dataset.corpus)
    write_queries(folder / "queries.jsonl", dataset.queries)
    write_qrels(folder / "qrels" / f"{split}.tsv", dataset.qrels)
