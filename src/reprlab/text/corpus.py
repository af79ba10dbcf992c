"""The one reader of corpora: plain text, JSONL and BEIR folders, with explicit options and file:line errors.

Three things are read from the same files:

* :func:`read_documents`: ``{id: {"title", "text"}}`` for indexing and evaluation, from a BEIR folder
  (its ``corpus.jsonl``), a ``corpus.jsonl``-style file or an MS MARCO ``collection.tsv``.
* :func:`read_texts`: unlabelled texts for pre-training and distillation.
* :func:`read_sentence_groups`: per paragraph or abstract, its sentences in order (CMLM's pairs).

What a file gives, by kind (:class:`TextOptions` chooses where there is a choice):

* ``*.jsonl``: one JSON object per line. A list of strings under ``sentences`` or ``abstract``
  (SciFact's ``corpus_sentences.jsonl``) gives those sentences, else the ``text`` field; a non-empty
  ``title`` is put in front (``title text``). Any other line is an error naming the file and line.
* a plain text file: ``unit="paragraph"`` (default), paragraphs separated by blank lines with their
  line breaks joined, or ``unit="line"``, one text per non-empty line.
* a folder: a BEIR folder gives its ``corpus.jsonl``, plus its queries when ``queries`` asks
  (``"all"``, or the qrels splits whose judged queries to add, e.g. ``("train",)``), less the queries
  whose id falls in the ``dev_fraction`` dev slice of :mod:`reprlab.text.splits` (the slice DPR/ANCE's
  ``dev_fraction`` holds out, so a dev study can score on queries whose text was never read); any
  other folder gives every ``*.jsonl`` and ``*.txt`` inside, sorted.

>>> read_texts("scifact/beir", TextOptions(queries=("train",)))           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.text import beir, msmarco
from reprlab.text.splits import side

logger = logging.getLogger("reprlab")
SENTENCE_FIELDS = ("sentences", "abstract")
UNITS = ("paragraph", "line")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")

Paths = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class TextOptions:
    """How :func:`read_texts` reads a corpus (see the module docstring)."""

    unit: str = "paragraph"  # plain text files: "paragraph" (blank-line separated) or "line"
    queries: str | tuple[str, ...] | None = None  # BEIR folders: None, "all", or qrels split names
    max_texts: int | None = None
    dev_fraction: float = 0.0  # BEIR folders: leave out the queries in this hash dev slice (by query id)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ConfigError(f"unknown text unit {self.unit!r}; choose one of: {', '.join(UNITS)}", field="unit")
        if not 0.0 <= self.dev_fraction < 1.0:  # also refuses nan
            raise ConfigError(f"must be in [0, 1), got {self.dev_fraction}", field="dev_fraction")
        if self.max_texts is not None and self.max_texts < 1:
            raise ConfigError(f"must be at least 1, got {self.max_texts}", field="max_texts")


# ----------------------------------------------------------------------------- files


def corpus_files(paths: Paths) -> list[Path]:
    """The files a list of corpus paths stands for (a BEIR folder: its corpus.jsonl)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if (p / "corpus.jsonl").is_file():
                files.append(p / "corpus.jsonl")
                continue
            inside = sorted(q for q in p.iterdir() if q.suffix in (".jsonl", ".txt") and q.is_file())
            if not inside:
                raise DataFormatError("the folder holds no corpus.jsonl, *.jsonl or *.txt file", str(p))
            files.extend(inside)
        elif p.is_file():
            files.append(p)
        else:
            raise ReprlabError(f"corpus {p} does not exist; give text files, JSONL files or a BEIR folder")
    if not files:
        raise ReprlabError("no corpus given: pass at least one text file, JSONL file or BEIR folder")
    return files


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a JSONL file."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), n) from exc
                if not isinstance(obj, dict):
                    raise DataFormatError("expected a JSON object per line", str(path), n)
                yield n, obj
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason})", str(path)) from exc


def _record_sentences(obj: dict, path: Path, n: int) -> list[str] | None:
    for key in SENTENCE_FIELDS:
        value = obj.get(key)
        if isinstance(value, list):
            if not all(isinstance(s, str) for s in value):
                raise DataFormatError(f"field {key!r} must be a list of strings", str(path), n)
            return [s for s in value if s.strip()]
    return None


def _record_text(obj: dict, path: Path, n: int) -> str:
    sentences = _record_sentences(obj, path, n)
    if sentences is not None:
        body = " ".join(sentences)
    else:
        body = obj.get("text")
        if not isinstance(body, str):
            raise DataFormatError(
                "a corpus line needs a string field 'text' (or a list of strings under "
                f"{' / '.join(repr(k) for k in SENTENCE_FIELDS)}), e.g. {{\"text\": \"...\"}}", str(path), n)
    title = obj.get("title")
    return f"{title} {body}".strip() if isinstance(title, str) and title.strip() else body.strip()


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason})", str(path)) from exc


def _units(path: Path, unit: str) -> list[str]:
    raw = _read_text_file(path)
    if unit == "line":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw) if p.strip()]


def held_out(query_id: str, dev_fraction: float) -> bool:
    """Whether a query is in the dev slice that ``dev_fraction`` holds out (the rule of
    :func:`reprlab.text.splits.split` by query id, as ``reprlab.retrieval.pairs.dev_queries`` uses)."""
    return dev_fraction > 0 and side(query_id, dev_fraction=dev_fraction) == "dev"


def _beir_queries(folder: Path, queries: str | tuple[str, ...], dev_fraction: float = 0.0) -> list[str]:
    if not (folder / "queries.jsonl").is_file():
        return []
    texts = {qid: t for qid, t in beir.read_queries(folder / "queries.jsonl").items()
             if not held_out(qid, dev_fraction)}
    if queries == "all":
        return list(texts.values())
    names = (queries,) if isinstance(queries, str) else tuple(queries)
    wanted: set[str] = set()
    for name in names:
        path = folder / "qrels" / f"{name}.tsv"
        if not path.is_file():  # e.g. a test-only collection: none of its queries are taken
            logger.warning(f"{folder} has no qrels/{name}.tsv: none of its queries are read as split {name!r}")
            continue
        wanted |= set(beir.read_qrels(path))
    return [text for qid, text in texts.items() if qid in wanted]


# ----------------------------------------------------------------------------- readers


def read_texts(paths: Paths, options: TextOptions | None = None, **kwargs) -> list[str]:
    """Unlabelled texts of a corpus, in file order (``TextOptions`` fields may be given as keywords)."""
    options = options or TextOptions(**kwargs)
    texts: list[str] = []
    for path in corpus_files(paths):
        if path.suffix == ".jsonl":
            texts.extend(t for n, obj in jsonl_records(path) if (t := _record_text(obj, path, n)))
            if path.name == "corpus.jsonl" and options.queries:
                texts.extend(t for t in _beir_queries(path.parent, options.queries, options.dev_fraction)
                             if t.strip())
        else:
            texts.extend(_units(path, options.unit))
        if options.max_texts is not None and len(texts) >= options.max_texts:
            return texts[: options.max_texts]
    if not texts:
        raise ReprlabError(f"the corpus {', '.join(map(str, corpus_files(paths)))} holds no text")
    return texts


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter: ``.``, ``!`` or ``?`` then space then a capital/digit."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def read_sentence_groups(paths: Paths, max_groups: int | None = None) -> list[list[str]]:
    """Per paragraph or abstract, its sentences in order (groups of one sentence are dropped).

    JSONL lines with a ``sentences``/``abstract`` list use it as given; other lines and text files are
    split with :func:`split_sentences`. A BEIR title is not a sentence of the abstract and is left out.
    """
    groups: list[list[str]] = []
    for path in corpus_files(paths):
        if path.suffix == ".jsonl":
            for n, obj in jsonl_records(path):
                sentences = _record_sentences(obj, path, n)
                if sentences is None:
                    text = obj.get("text")
                    if not isinstance(text, str):
                        raise DataFormatError("a line needs 'text' or a list under 'sentences'/'abstract'",
                                              str(path), n)
                    sentences = split_sentences(text)
                groups.append(sentences)
        else:
            groups.extend(split_sentences(p) for p in _units(path, "paragraph"))
        if max_groups is not None and len(groups) >= max_groups:
            break
    groups = [g for g in groups if len(g) >= 2][:max_groups]
    if not groups:
        raise ReprlabError("the corpus has no paragraph with two or more sentences: CMLM needs adjacent sentences")
    return groups


def read_documents(path: str | Path) -> dict[str, dict[str, str]]:
    """``{id: {"title", "text"}}`` from a BEIR folder, a corpus .jsonl file or an MS MARCO collection .tsv."""
    p = Path(path)
    if p.is_dir():
        if not (p / "corpus.jsonl").is_file():
            raise DataFormatError("not a BEIR folder (no corpus.jsonl)", str(p))
        return beir.read_corpus(p / "corpus.jsonl")
    if not p.exists():
        raise ReprlabError(f"corpus {p} does not exist; give a BEIR folder, a corpus.jsonl or a collection.tsv")
    if p.suffix == ".tsv":
        return msmarco.read_collection(p)
    return beir.read_corpus(p)
