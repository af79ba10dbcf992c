"""MS MARCO TSV files: collection, queries and qrels, read into the same shapes as BEIR.

    collection.tsv     pid<TAB>text                 0<TAB>The presence of communication ...
    queries.tsv        qid<TAB>text                 1048585<TAB>what is paula deen's brother
    qrels.tsv          qid<TAB>0<TAB>pid<TAB>rel    1048585<TAB>0<TAB>7187158<TAB>1

>>> corpus = read_collection("collection.tsv")     # doctest: +SKIP
>>> corpus["0"]                                    # doctest: +SKIP
{'title': '', 'text': 'The presence of communication ...'}

:func:`read_collection` gives ``{pid: {"title": "", "text"}}`` (MS MARCO passages have no title),
:func:`read_queries` ``{qid: text}`` and :func:`read_qrels` ``{qid: {pid: rel}}``, so the rest of
reprlab treats MS MARCO and BEIR data alike.

Qrels come in three shapes in the wild and all are read, split on any whitespace as
trec_eval and Anserini do: the official 4 columns ``qid 0 pid rel`` (also the TREC Deep Learning
qrels), 3 columns ``qid pid rel`` (a BEIR qrels file; its header line is skipped) and 2 columns
``qid pid`` (rel 1, as in the training-pair files of ColBERT/LibVQ-style repos). The shape is set by
the first line and every line must have it. :func:`write_qrels` writes the official 4 columns.

Errors (:class:`DataFormatError` naming ``file:line``): a collection or queries line that is not
exactly ``id<TAB>text`` (a tab inside a text would make the line ambiguous), an empty id, a
duplicate id, a qrels line with the wrong number of columns or a non-integer relevance. Qrels
follow the policy of :func:`reprlab.text.beir.collect_qrels`. Writers refuse texts with tabs or
newlines rather than silently change them.
"""

from __future__ import annotations

import numbers
import os
from typing import Iterator, Mapping

from reprlab.errors import DataFormatError
from reprlab.io import atomic_open
from reprlab.text.beir import (
    QRELS_HEADER,
    Corpus,
    Qrels,
    Queries,
    check_writable_id,
    collect_qrels,
    iter_lines,
    parse_int,
)

QRELS_EXPECTED = "MS MARCO qrels: 'qid<TAB>0<TAB>pid<TAB>rel' (or 'qid pid rel', or 'qid pid') per line"


def _read_id_text(path, what: str) -> Iterator[tuple[int, str, str]]:
    expected = f"an MS MARCO {what} file: '{what[0]}id<TAB>text' per line"
    seen: set[str] = set()
    for lineno, line in iter_lines(path, expected):
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataFormatError(
                f"expected 2 tab-separated columns '{what[0]}id<TAB>text', found {len(cols)}"
                + (" (a tab inside the text is not allowed)" if len(cols) > 2 else ""),
                str(path),
                lineno,
            )
        ident, text = cols[0].strip(), cols[1]
        if not ident:
            raise DataFormatError(f"empty {what[0]}id in column 1 of '{what[0]}id<TAB>text'", str(path), lineno)
        if ident in seen:
            raise DataFormatError(
                f"duplicate {what[0]}id '{ident}' (it appears on an earlier line); ids must be unique",
                str(path),
                lineno,
            )
        seen.add(ident)
        yield lineno, ident, text


def read_collection(path: str | os.PathLike) -> Corpus:
    """Read ``collection.tsv`` (``pid<TAB>text``) into ``{pid: {"title": "", "text"}}``, in file order."""
    return {pid: {"title": "", "text": text} for _, pid, text in _read_id_text(path, "passage")}


def read_queries(path: str | os.PathLike) -> Queries:
    """Read ``queries.tsv`` (``qid<TAB>text``) into ``{qid: text}``, in file order."""
    return {qid: text for _, qid, text in _read_id_text(path, "query")}


def _qrel_records(path) -> Iterator[tuple[int, str, str, int]]:
    width = None
    for lineno, line in iter_lines(path, QRELS_EXPECTED):
        cols = line.split()
        if width is None:
            if "\t".join(c.strip() for c in line.split("\t")) == QRELS_HEADER:
                continue  # a BEIR qrels file read as 3 columns
            if len(cols) not in (2, 3, 4):
                raise DataFormatError(
                    f"expected 4 columns 'qid 0 pid rel' (or 3 'qid pid rel', or 2 'qid pid'), found {len(cols)}",
                    str(path),
                    lineno,
                )
            width = len(cols)
        elif len(cols) != width:
            raise DataFormatError(
                f"expected {width} columns like the first line, found {len(cols)}", str(path), lineno
            )
        if width == 2:
            (qid, pid), rel = cols, 1
        else:
            qid, pid, rel_text = cols[0], cols[-2], cols[-1]
            rel = parse_int(rel_text)
            if rel is None:
                raise DataFormatError(f"relevance {rel_text!r} is not an integer (last column)", str(path), lineno)
        yield lineno, qid, pid, rel


def read_qrels(
    path: str | os.PathLike, corpus: Mapping | None = None, queries: Mapping | None = None, strict: bool = False
) -> Qrels:
    """Read MS MARCO qrels (4, 3 or 2 columns) into ``{qid: {pid: rel}}``, optionally checked."""
    return collect_qrels(_qrel_records(path), path, corpus, queries, strict)


def _check_text(text, what: str, path) -> str:
    if not isinstance(text, str):
        raise DataFormatError(
            f"cannot write {what}: expected a string, got {type(text).__name__}", str(path)
        )
    if any(c in text for c in "\t\n\r"):
        raise DataFormatError(
            f"cannot write {what}: it holds a tab or newline, which the TSV format cannot represent; "
            "clean the text first",
            str(path),
        )
    return text


def write_collection(
    path: str | os.PathLike, corpus: Mapping[str, Mapping[str, str]], join_title: bool = False
) -> None:
    """Write ``{pid: {"title"?, "text"}}`` as ``pid<TAB>text``, atomically.

    MS MARCO has no title column: a document with a non-empty title is an error unless
    ``join_title``, which writes ``title + " " + text``.
    """
    with atomic_open(path) as f:
        for pid, doc in corpus.items():
            check_writable_id(pid, "passage id", path)
            if not isinstance(doc, Mapping):
                raise DataFormatError(f"cannot write passage '{pid}': expected a mapping with 'text'", str(path))
            text = _check_text(doc.get("text"), f"the text of passage '{pid}'", path)
            title = _check_text(doc.get("title", ""), f"the title of passage '{pid}'", path)
            if title:
                if not join_title:
                    raise DataFormatError(
                        f"cannot write passage '{pid}': it has a title and the MS MARCO format has no title "
                        "column (pass join_title=True to write 'title text')",
                        str(path),
                    )
                text = f"{title} {text}"
            f.write(f"{pid}\t{text}\n")


def write_queries(path: str | os.PathLike, queries: Mapping[str, str]) -> None:
    """Write ``{qid: text}`` as ``qid<TAB>text``, atomically."""
    with atomic_open(path) as f:
        for qid, text in queries.items():
            check_writable_id(qid, "query id", path)
            f.write(f"{qid}\t{_check_text(text, f'the text of query {qid!r}', path)}\n")


def write_qrels(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``{qid: {pid: rel}}`` as the official 4 columns ``qid<TAB>0<TAB>pid<TAB>rel``, atomically."""
    with atomic_open(path) as f:
        for qid, judged in qrels.items():
            check_writable_id(qid, "query id", path, whitespace=False)
            for pid, rel in judged.items():
                check_writable_id(pid, "passage id", path, whitespace=False)
                if isinstance(rel, bool) or not isinstance(rel, numbers.Integral):
                    raise DataFormatError(
                        f"cannot write relevance {rel!r} for query '{qid}', passage '{pid}': it must be an integer",
                        str(path),
                    )
                f.write(f"{qid}\t0\t{pid}\t{int(rel)}\n")
