"""PMI-Masking: a masking vocabulary of collocated word n-grams, ranked by PMI over segmentations.

Levine, Lenz, Lieber, Abend, Leyton-Brown, Tennenholtz and Shoham, "PMI-Masking: Principled
masking of correlated spans", ICLR 2021 (masking vocabularies: https://github.com/AI21Labs/pmi-masking).
Word n-grams (n = 2..5) seen at least ``min_count`` times are ranked, per length, by

    PMI_n(w_1..w_n) = min over segmentations s of w_1..w_n into >= 2 contiguous parts of
                      log p(w_1..w_n) - sum_{part in s} log p(part)

(the paper's eq. 3: the weakest split decides, so "kuala lumpur is" does not inherit the strength of
"kuala lumpur"; the naive log p(w_1..w_n) / prod p(w_i) would rank it high). The vocabulary takes the
top of each length in the paper's proportions (50% bigrams, 25% trigrams, 12.5% 4-grams and 5-grams).
``score="pmi-freq"`` multiplies in p(w_1..w_n) once more (log p^2 / prod p(part)), the variant the
authors' released lists use.

In masking (:class:`reprlab.pretrain.masking.PMIMasking`) each vocabulary n-gram found in a text is
one unit: where one match contains another, the longer wins; where matches overlap otherwise, one
is chosen at random; the remaining words are whole-word units.

>>> texts = [["i", "love", "new", "york"], ["i", "love", "it"], ["it", "is", "i"]] * 10
>>> vocab = build_pmi_vocab(texts, PMIConfig(min_count=5, size=10))
>>> vocab.top(1, n=2)[0].ngram
('new', 'york')
>>> vocab.find_spans(["so", "i", "love", "new", "york"], np.random.default_rng(0))  # longest match
[(1, 5)]
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.io import read_utf8
from reprlab.io import atomic_write_json
from reprlab.logs import progress
from reprlab.pretrain.corpus import split_words
from reprlab.text.corpus import read_texts
from reprlab.text.tokenizer import Tokenizer

FORMAT = "reprlab-pmi-vocab"
SCORES = ("pmi", "pmi-freq", "naive")
_ALNUM = re.compile(r"\w")


@dataclass
class PMIConfig:
    min_n: int = field(default=2, metadata={"help": "shortest n-gram"})
    max_n: int = field(default=5, metadata={"help": "longest n-gram"})
    min_count: int = field(default=10, metadata={"help": "an n-gram must occur at least this often"})
    size: int = field(default=10_000, metadata={"help": "entries in the vocabulary, over all lengths"})
    # shares of the size for n = min_n, min_n + 1, ...; None: the paper's rule, halving per length with the
    # last two equal ((0.5, 0.25, 0.125, 0.125) for 2..5)
    proportions: tuple[float, ...] | None = field(default=None, metadata={
        "help": "share of the size per length min-n..max-n, e.g. 0.5 0.5 (default: halving, the last two equal)"})
    score: str = field(default="pmi", metadata={
        "choices": SCORES, "help": "pmi (the paper's eq. 3) | pmi-freq (the released lists) | naive (comparison)"})
    skip_punct_edges: bool = field(default=True, metadata={
        "help": "drop n-grams that start or end with a punctuation-only word"})

    def __post_init__(self):
        if not 2 <= self.min_n <= self.max_n:
            raise ConfigError(f"need 2 <= min_n <= max_n, got min_n={self.min_n}, max_n={self.max_n}")
        lengths = self.max_n - self.min_n + 1
        if self.proportions is None:
            self.proportions = tuple(0.5 ** min(i + 1, max(lengths - 1, 0)) for i in range(lengths))
        self.proportions = tuple(self.proportions)
        if len(self.proportions) != self.max_n - self.min_n + 1:
            raise ConfigError(f"proportions needs one share per length {self.min_n}..{self.max_n}, "
                              f"got {len(self.proportions)}")
        if self.score not in SCORES:
            raise ConfigError(f"unknown PMI score {self.score!r}; choose one of: {', '.join(SCORES)}")
        for name in ("min_count", "size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=name)


@dataclass(frozen=True)
class PMIEntry:
    ngram: tuple[str, ...]
    count: int
    score: float

    @property
    def text(self) -> str:
        return " ".join(self.ngram)


def segmentations(n: int) -> list[list[tuple[int, int]]]:
    """All ways to cut range(n) into >= 2 contiguous parts, as lists of (start, stop)."""
    out = []
    for cuts in itertools.product((False, True), repeat=n - 1):
        if not any(cuts):
            continue
        parts, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                parts.append((start, i))
                start = i
        parts.append((start, n))
        out.append(parts)
    return out


def pmi_score(ngram: tuple, counts: dict[tuple, int], total: int, score: str = "pmi") -> float:
    """The ranking score of ``ngram`` from n-gram ``counts`` (all its parts must be counted).

    ``pmi``: min over segmentations of log p(ngram) - sum log p(part); ``pmi-freq`` adds log p(ngram);
    ``naive``: log p(ngram) - sum of the single words' log p. p(x) = count(x) / total words.
    """
    log_p = lambda g: math.log(counts[g]) - math.log(total)  # noqa: E731
    whole = log_p(ngram)
    n = len(ngram)
    if score == "naive":
        return whole - sum(log_p(ngram[i : i + 1]) for i in range(n))
    best_parts = max(sum(log_p(ngram[a:b]) for a, b in seg) for seg in segmentations(n))
    value = whole - best_parts
    return value + whole if score == "pmi-freq" else value


class PMIVocab:
    """A ranked set of n-grams; ``find_spans`` matches them in a word sequence."""

    def __init__(self, entries: Sequence[PMIEntry], config: PMIConfig | None = None, stats: dict | None = None):
        self.entries = list(entries)
        self.config = config or PMIConfig()
        self.stats = dict(stats or {})
        self._index = {e.ngram: e for e in self.entries}
        self.lengths = sorted({len(e.ngram) for e in self.entries}, reverse=True)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, ngram) -> bool:
        return tuple(ngram) in self._index

    def top(self, k: int = 20, n: int | None = None) -> list[PMIEntry]:
        """The ``k`` best entries (of length ``n`` if given), best first."""
        pool = [e for e in self.entries if n is None or len(e.ngram) == n]
        return sorted(pool, key=lambda e: -e.score)[:k]

    def matches(self, words: Sequence[str]) -> list[tuple[int, int]]:
        """Every occurrence of a vocabulary n-gram in ``words`` as a word range [i, j)."""
        found = []
        for i in range(len(words)):
            for n in self.lengths:
                if i + n <= len(words) and tuple(words[i : i + n]) in self._index:
                    found.append((i, i + n))
        return found

    def find_spans(self, words: Sequence[str], rng: np.random.Generator) -> list[tuple[int, int]]:
        """Non-overlapping masking units in ``words``: longest match, random choice among overlaps.

        A match inside a longer match is dropped; of matches that overlap without nesting, a random
        order decides which are kept. Returns sorted word ranges [i, j).
        """
        found = self.matches(words)
        if not found:
            return []
        maximal = [(i, j) for i, j in found
                   if not any(a <= i and j <= b and (a, b) != (i, j) for a, b in found)]
        kept: list[tuple[int, int]] = []
        for k in rng.permutation(len(maximal)):
            i, j = maximal[k]
            if all(j <= a or b <= i for a, b in kept):
                kept.append((i, j))
        return sorted(kept)

    def coverage(self, word_lists: Iterable[Sequence[str]]) -> float:
        """Fraction of the words that fall inside some vocabulary match (the paper reports ~half)."""
        covered = total = 0
        for words in word_lists:
            mark = np.zeros(len(words), dtype=bool)
            for i, j in self.matches(words):
                mark[i:j] = True
            covered += int(mark.sum())
            total += len(words)
        return covered / max(1, total)

    # ------------------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (atomically)."""
        atomic_write_json(path, {
            "format": FORMAT,
            "version": 1,
            "config": asdict(self.config),
            "stats": self.stats,
            "entries": [{"ngram": list(e.ngram), "count": e.count, "score": round(e.score, 6)}
                        for e in self.entries],
        }, indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "PMIVocab":
        path = Path(path)
        if not path.is_file():
            raise ReprlabError(f"PMI vocabulary {path} does not exist; build one with `reprlab pmi-vocab`")
        try:
            data = json.loads(read_utf8(path))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), exc.lineno) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataFormatError(f"not a PMI vocabulary (expected \"format\": \"{FORMAT}\"); "
                                  "build one with `reprlab pmi-vocab`", str(path))
        try:
            config = PMIConfig(**{k: v for k, v in data.get("config", {}).items()})
            entries = [PMIEntry(tuple(e["ngram"]), int(e["count"]), float(e["score"])) for e in data["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"malformed entry or config ({exc})", str(path)) from exc
        if any(len(e.ngram) < 2 or not all(isinstance(w, str) for w in e.ngram) for e in entries):
            raise DataFormatError("every entry needs an 'ngram' of two or more words", str(path))
        return cls(entries, config, data.get("stats"))


def _is_punct(word: str) -> bool:
    return not _ALNUM.search(word)


def build_pmi_vocab(
    texts: Iterable[Sequence[str] | str],
    config: PMIConfig | None = None,
    tokenizer=None,
    show_progress: bool | None = None,
) -> PMIVocab:
    """Count n-grams of ``texts`` and keep the top-ranked of each length (see the module docstring).

    ``texts`` are word lists, or strings split into words with :func:`reprlab.pretrain.corpus.split_words`
    (the tokenizer's words when ``tokenizer`` is given, so that matches line up with its word pieces).
    n-grams never cross text boundaries. Counting is level-wise: an n-gram is counted only if both
    its (n-1)-word prefix and suffix reach ``min_count`` (otherwise it cannot), which keeps memory small.
    """
    config = config or PMIConfig()
    vocab_ids: dict[str, int] = {}
    docs: list[np.ndarray] = []
    for t in progress(texts, show=show_progress, desc="pmi: words", unit="text"):
        words = split_words(t, tokenizer) if isinstance(t, str) else list(t)
        docs.append(np.array([vocab_ids.setdefault(w, len(vocab_ids)) for w in words], dtype=np.int64))
    id_to_word = list(vocab_ids)
    total = int(sum(len(d) for d in docs))
    if total == 0:
        raise ReprlabError("the corpus has no words to count")
    counts: dict[tuple, int] = {}
    unigrams = np.bincount(np.concatenate(docs), minlength=len(id_to_word))
    counts.update({(i,): int(c) for i, c in enumerate(unigrams)})
    frequent_prev = {(i,) for i, c in enumerate(unigrams) if c >= config.min_count}
    by_length: dict[int, list[tuple]] = {}
    for n in range(2, config.max_n + 1):
        counter: Counter = Counter()
        for d in docs:
            seq = d.tolist()
            for i in range(len(seq) - n + 1):
                g = tuple(seq[i : i + n])
                if g[:-1] in frequent_prev and g[1:] in frequent_prev:
                    counter[g] += 1
        frequent = {g for g, c in counter.items() if c >= config.min_count}
        counts.update({g: counter[g] for g in frequent})
        by_length[n] = sorted(frequent)
        frequent_prev = frequent
        if not frequent:
            break
    entries: list[PMIEntry] = []
    for share, n in zip(config.proportions, range(config.min_n, config.max_n + 1)):
        pool = by_length.get(n, [])
        if config.skip_punct_edges:
            pool = [g for g in pool if not (_is_punct(id_to_word[g[0]]) or _is_punct(id_to_word[g[-1]]))]
        scored = sorted(((pmi_score(g, counts, total, config.score), g) for g in pool), key=lambda x: (-x[0], x[1]))
        keep = int(round(share * config.size))
        entries.extend(PMIEntry(tuple(id_to_word[i] for i in g), counts[g], s) for s, g in scored[:keep])
    stats = {"words": total, "texts": len(docs), "distinct_words": len(id_to_word),
             "candidates": {str(n): len(v) for n, v in by_length.items()}}
    return PMIVocab(entries, config, stats)


def pmi_vocab_from_corpus(
    corpus: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    config: PMIConfig | None = None,
    model: str | None = "minilm",
    max_texts: int | None = None,
    show_progress: bool | None = None,
) -> PMIVocab:
    """Read a corpus (text files, JSONL, BEIR folders), build its vocabulary and save it to ``out``.

    Words are those of ``model``'s tokenizer (so that the vocabulary matches its word pieces at
    masking time); ``model=None`` uses the plain lower-cased word splitter.
    """
    tokenizer = None if model is None else Tokenizer.from_pretrained(model)
    vocab = build_pmi_vocab(read_texts(corpus, max_texts=max_texts), config, tokenizer=tokenizer,
                            show_progress=show_progress)
    if not len(vocab):
        raise ReprlabError(f"no n-gram of the corpus occurs {vocab.config.min_count} times or more; "
                           "lower min_count or give a larger corpus")
    if out is not None:
        vocab.save(out)
    return vocab
