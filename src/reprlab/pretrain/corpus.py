"""Pre-training corpora: texts and sentence groups from text files, BEIR folders and JSONL.

Domain-adaptive pre-training reads the user's own corpus. Three shapes are accepted, by file:

* ``*.jsonl``: one JSON object per line. A BEIR ``corpus.jsonl`` line (``title`` + ``text``) gives
  title and text joined; an object with a list of strings under ``sentences`` or ``abstract``
  (SciFact's ``corpus_sentences.jsonl``) gives those sentences; otherwise the ``text`` field.
* a folder: a BEIR folder (its ``corpus.jsonl``), or every ``*.jsonl`` / ``*.txt`` inside, sorted.
* any other file: plain UTF-8 text whose paragraphs are separated by blank lines.

:func:`read_texts` returns documents (for MLM); :func:`read_sentence_groups` returns, per paragraph or
abstract, its sentences in order (for CMLM's adjacent-sentence pairs).

Words and word pieces. :func:`split_words` splits a text into the words of a model's tokenizer
(its normaliser and pre-tokeniser: lower-cased, accents stripped, punctuation split off for BERT),
and :func:`tokenize_chunks` turns texts into word-aligned chunks of at most ``max_length`` word
pieces with ``[CLS]``/``[SEP]``, keeping each piece's word index and the word strings, which the
whole-word, span and PMI masking units need.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from reprlab.errors import DataFormatError, ReprlabError

SENTENCE_FIELDS = ("sentences", "abstract")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_SIMPLE_WORDS = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------- reading


def _files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if (p / "corpus.jsonl").is_file():
                files.append(p / "corpus.jsonl")
            else:
                inside = sorted(q for q in p.iterdir() if q.suffix in (".jsonl", ".txt") and q.is_file())
                if not inside:
                    raise ReprlabError(f"{p}: the folder holds no corpus.jsonl, *.jsonl or *.txt file")
                files.extend(inside)
        elif p.is_file():
            files.append(p)
        else:
            raise ReprlabError(f"corpus {p} does not exist; give text files, JSONL files or a BEIR folder")
    if not files:
        raise ReprlabError("no corpus given: pass at least one text file, JSONL file or BEIR folder")
    return files


def _jsonl_records(path: Path) -> Iterable[tuple[int, dict]]:
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
                f"{' / '.join(repr(k) for k in SENTENCE_FIELDS)})", str(path), n)
    title = obj.get("title")
    return f"{title} {body}".strip() if isinstance(title, str) and title.strip() else body.strip()


def _paragraphs(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason})", str(path)) from exc
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw) if p.strip()]


def read_texts(paths: str | Path | Sequence[str | Path], max_texts: int | None = None) -> list[str]:
    """Documents of a corpus (see the module docstring for the accepted files), in file order."""
    texts: list[str] = []
    for path in _files(paths):
        if path.suffix == ".jsonl":
            texts.extend(t for _, t in ((n, _record_text(o, path, n)) for n, o in _jsonl_records(path)) if t)
        else:
            texts.extend(_paragraphs(path))
        if max_texts is not None and len(texts) >= max_texts:
            return texts[:max_texts]
    if not texts:
        raise ReprlabError(f"the corpus {', '.join(map(str, _files(paths)))} holds no text")
    return texts


def split_sentences(text: str) -> list[str]:
    """A plain rule-based sentence splitter: ``.``, ``!`` or ``?`` then space then a capital/digit."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def read_sentence_groups(paths: str | Path | Sequence[str | Path], max_groups: int | None = None) -> list[list[str]]:
    """Per paragraph or abstract, its sentences in order (groups of one sentence are dropped).

    JSONL lines with a ``sentences``/``abstract`` list use it as given; other lines and text files are
    split with :func:`split_sentences`. A BEIR title is not a sentence of the abstract and is left out.
    """
    groups: list[list[str]] = []
    for path in _files(paths):
        if path.suffix == ".jsonl":
            for n, obj in _jsonl_records(path):
                sentences = _record_sentences(obj, path, n)
                if sentences is None:
                    text = obj.get("text")
                    if not isinstance(text, str):
                        raise DataFormatError("a line needs 'text' or a list under 'sentences'/'abstract'",
                                              str(path), n)
                    sentences = split_sentences(text)
                groups.append(sentences)
        else:
            groups.extend(split_sentences(p) for p in _paragraphs(path))
        if max_groups is not None and len(groups) >= max_groups:
            break
    groups = [g for g in groups if len(g) >= 2][:max_groups]
    if not groups:
        raise ReprlabError("the corpus has no paragraph with two or more sentences: CMLM needs adjacent sentences")
    return groups


# ----------------------------------------------------------------------------- words and pieces


def split_words(text: str, tokenizer=None) -> list[str]:
    """The words of ``text`` as the tokenizer sees them (normalised, pre-tokenised).

    Without a tokenizer: lower-cased ``\\w+`` runs and single punctuation marks.
    """
    if tokenizer is None:
        return _SIMPLE_WORDS.findall(text.lower())
    hf = tokenizer._tok  # the wrapped `tokenizers.Tokenizer`
    if hf.normalizer is not None:
        text = hf.normalizer.normalize_str(text)
    if hf.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in hf.pre_tokenizer.pre_tokenize_str(text)]


@dataclass
class TokenizedText:
    """One chunk: word pieces with ``[CLS]``/``[SEP]`` and each piece's word (-1 for special tokens)."""

    ids: np.ndarray  # (T,) int64
    word_ids: np.ndarray  # (T,) int64, index into ``words``
    words: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_chunks(
    texts: Sequence[str],
    tokenizer,
    max_length: int = 128,
    min_tokens: int = 4,
    batch_size: int = 512,
    truncate: bool = False,
) -> list[TokenizedText]:
    """Split each text into chunks of at most ``max_length`` pieces (specials included) at word boundaries.

    A word longer than a whole chunk is cut. Chunks with fewer than ``min_tokens`` word pieces are
    dropped. Every chunk is ``[CLS] pieces [SEP]``. With ``truncate=True`` each text gives exactly one
    chunk, its first (``min_tokens`` is ignored), so that outputs line up with inputs.
    """
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ReprlabError("the tokenizer has no [CLS]/[SEP] tokens; MLM pre-training needs a BERT-style tokenizer")
    room = max_length - 2
    if room < 1:
        raise ReprlabError(f"max_length {max_length} leaves no room for text between [CLS] and [SEP]")
    chunks: list[TokenizedText] = []
    for start in range(0, len(texts), batch_size):
        word_lists = [split_words(t, tokenizer) for t in texts[start : start + batch_size]]
        word_lists = [w if w else ["."] for w in word_lists]
        encodings = tokenizer._tok.encode_batch(word_lists, is_pretokenized=True, add_special_tokens=False)
        for words, enc in zip(word_lists, encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            wids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
            pos = 0
            while pos < len(ids):
                end = min(pos + room, len(ids))
                if end < len(ids) and wids[end] == wids[end - 1]:  # do not cut a word in two
                    back = end - 1
                    while back > pos and wids[back - 1] == wids[end]:
                        back -= 1
                    if back > pos:
                        end = back
                piece_ids, piece_words = ids[pos:end], wids[pos:end]
                pos = len(ids) if truncate else end
                if len(piece_ids) < (1 if truncate else min_tokens):
                    continue
                first = int(piece_words.min())
                local = piece_words - first
                chunks.append(TokenizedText(
                    ids=np.concatenate([[tokenizer.cls_id], piece_ids, [tokenizer.sep_id]]).astype(np.int64),
                    word_ids=np.concatenate([[-1], local, [-1]]).astype(np.int64),
                    words=list(words[first : int(piece_words.max()) + 1]),
                ))
    return chunks
