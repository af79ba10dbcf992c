"""The masking engine for masked-language-model pre-training, with pluggable masking units.

BERT (Devlin et al., NAACL 2019) selects 15% of the tokens and replaces each selected token by
``[MASK]`` 80% of the time, by a random token 10% and leaves it 10%. Later work changed *what* is
selected; here every scheme is a choice of **units** (sets of positions that are masked together),
and the engine applies the budget and the 80/10/10 rule per unit (one draw per unit, as whole-word
and PMI masking prescribe):

========================= =====================================================================
``random``                single word pieces (BERT).
``wwm``                   whole words: all pieces of a word together (BERT's whole-word masking).
``span``                  contiguous runs of whole words with Geometric(0.2) lengths clipped at 10
                          (SpanBERT, Joshi et al., TACL 2020).
``pmi``                   n-grams of a PMI vocabulary, longest match, other words whole
                          (PMI-Masking, Levine et al., ICLR 2021; see :mod:`reprlab.pretrain.pmi`).
``fully-explored``        the sequence is partitioned into K = round(1 / budget) disjoint segments
                          and K copies are made, copy k masking segment k fully (Zheng et al.,
                          "Improving Self-supervised Pre-training via a Fully-Explored Masked
                          Language Model", ICLR 2021 submission / arXiv:2010.06040): the copies
                          together mask every token once, which lowers the variance of the
                          gradient against K independent random masks.
========================= =====================================================================

Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ...) and padding are never selected. The budget is
``round(budget * maskable tokens)`` (at least 1). ``random`` and ``span`` hit it exactly; ``wwm`` and
``pmi`` add whole units while they fit (BERT's rule) and so may stop short by less than one unit;
``fully-explored`` masks ``n / K`` tokens per copy (segment sizes differ by at most one).

>>> masker = build_masking("wwm", MaskingConfig(budget=0.15))
>>> batch = masker.collate(chunks, special, rng)   # doctest: +SKIP
>>> batch["input_ids"].shape, batch["labels"].shape  # doctest: +SKIP

Registry: ``MASKING`` maps names to classes; ``@register_masking("name")`` adds one (the CLI's
``--masking`` choices are its keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError

if TYPE_CHECKING:
    from reprlab.pretrain.corpus import TokenizedText
    from reprlab.pretrain.pmi import PMIVocab

IGNORE_INDEX = -100


@dataclass
class MaskingConfig:
    budget: float = 0.15  # fraction of the maskable tokens selected per sequence (per copy: 1/K for FE)
    mask_prob: float = 0.8  # a selected unit becomes [MASK]
    random_prob: float = 0.1  # ... or random tokens; the rest keep the original tokens
    span_p: float = 0.2  # span: Geometric(p) span lengths in words
    span_max: int = 10  # span: longest span in words
    fe_copies: int | None = None  # fully-explored: K segments / copies; None = round(1 / budget)
    fe_layout: str = "random"  # fully-explored: "random" partition or "contiguous" segments

    def __post_init__(self):
        if not 0.0 < self.budget < 1.0:
            raise ConfigError(f"masking budget must be in (0, 1), got {self.budget}", field="budget")
        for name in ("mask_prob", "random_prob"):  # written so that nan fails too
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {getattr(self, name)}", field=name)
        if self.mask_prob + self.random_prob > 1:
            raise ConfigError(f"mask_prob {self.mask_prob} + random_prob {self.random_prob} is more than 1",
                              field="random_prob")
        if not 0.0 < self.span_p <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.span_p}", field="span_p")
        if self.span_max < 1:
            raise ConfigError(f"must be at least 1, got {self.span_max}", field="span_max")
        if self.fe_layout not in ("random", "contiguous"):
            raise ConfigError(f"unknown fe_layout {self.fe_layout!r}; choose random or contiguous", field="fe_layout")
        if self.fe_copies is not None and self.fe_copies < 2:
            raise ConfigError(f"must be at least 2, got {self.fe_copies}", field="fe_copies")


@dataclass
class SpecialTokens:
    """What the engine needs from a tokenizer."""

    mask_id: int
    pad_id: int
    vocab_size: int
    special_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        if tokenizer.mask_id is None:
            raise ConfigError("the tokenizer has no [MASK] token; masked-language modelling needs one")
        return cls(tokenizer.mask_id, tokenizer.pad_id, tokenizer.vocab_size, tuple(tokenizer.special_ids))


MASKING: dict[str, type["Masking"]] = {}


def register_masking(name: str):
    def deco(cls):
        cls.registry_name = name
        MASKING[name] = cls
        return cls

    return deco


def build_masking(name: str, config: MaskingConfig | None = None, pmi_vocab: "PMIVocab | None" = None) -> "Masking":
    if name not in MASKING:
        raise ConfigError(f"unknown masking {name!r}; choose one of: {', '.join(MASKING)}")
    config = config or MaskingConfig()
    if name == "pmi":
        if pmi_vocab is None:
            raise ConfigError("masking 'pmi' needs a PMI vocabulary: build one with `reprlab pmi-vocab` "
                              "and pass it (--pmi-vocab)")
        return MASKING[name](config, pmi_vocab)
    return MASKING[name](config)


def maskable_positions(ids: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """Positions that may be masked: not a special token and not padding."""
    return np.flatnonzero(~np.isin(ids, np.asarray(special_ids, dtype=ids.dtype)))


def word_units(seq: "TokenizedText", maskable: np.ndarray) -> list[np.ndarray]:
    """Whole words as units (positions of each word's pieces), in order; pieces of no word are alone."""
    units: list[np.ndarray] = []
    wids = seq.word_ids[maskable]
    start = 0
    for i in range(1, len(maskable) + 1):
        if i == len(maskable) or wids[i] != wids[start] or wids[i] < 0:
            units.append(maskable[start:i])
            start = i
    return units


def fill_budget(units: list[np.ndarray], target: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Units in random order, each taken if it still fits in ``target`` tokens (BERT's whole-word rule)."""
    chosen, total = [], 0
    for k in rng.permutation(len(units)):
        if total >= target:
            break
        if total + len(units[k]) <= target:
            chosen.append(units[k])
            total += len(units[k])
    return chosen


def budget_for(n_maskable: int, budget: float) -> int:
    return 0 if n_maskable == 0 else max(1, int(round(budget * n_maskable)))


class Masking:
    """A masking scheme: ``select`` picks units per copy; ``collate`` builds a masked batch."""

    registry_name = "base"
    copies = 1  # masked copies per input sequence

    def __init__(self, config: MaskingConfig):
        self.config = config

    def select(self, seq: "TokenizedText", maskable: np.ndarray, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """For each copy, the units to mask (arrays of positions into ``seq.ids``)."""
        raise NotImplementedError

    def apply(self, ids: np.ndarray, units: list[np.ndarray], special: SpecialTokens, rng: np.random.Generator):
        """80/10/10 per unit: returns (masked ids, labels with IGNORE_INDEX where not selected)."""
        out = ids.copy()
        labels = np.full_like(ids, IGNORE_INDEX)
        c = self.config
        for unit in units:
            labels[unit] = ids[unit]
            u = rng.random()
            if u < c.mask_prob:
                out[unit] = special.mask_id
            elif u < c.mask_prob + c.random_prob:
                out[unit] = random_tokens(len(unit), special, rng)
        return out, labels

    def collate(self, sequences: Sequence["TokenizedText"], special: SpecialTokens, rng: np.random.Generator) -> dict:
        """A padded batch of ``len(sequences) * copies`` rows.

        Returns ``input_ids`` (masked), ``attention_mask``, ``labels`` (original ids at selected
        positions, -100 elsewhere) and ``source`` (the index of each row's input sequence).
        """
        rows, label_rows, source = [], [], []
        for i, seq in enumerate(sequences):
            maskable = maskable_positions(seq.ids, special.special_ids)
            for units in self.select(seq, maskable, rng):
                ids, labels = self.apply(seq.ids, units, special, rng)
                rows.append(ids)
                label_rows.append(labels)
                source.append(i)
        T = max(len(r) for r in rows)
        B = len(rows)
        input_ids = np.full((B, T), special.pad_id, dtype=np.int64)
        labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        for b, (r, lab) in enumerate(zip(rows, label_rows)):
            input_ids[b, : len(r)] = r
            labels[b, : len(r)] = lab
            mask[b, : len(r)] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
            "source": torch.tensor(source),
        }


def random_tokens(n: int, special: SpecialTokens, rng: np.random.Generator) -> np.ndarray:
    """``n`` token ids drawn uniformly from the vocabulary minus the special tokens."""
    out = rng.integers(0, special.vocab_size, size=n)
    bad = np.isin(out, special.special_ids)
    while bad.any():
        out[bad] = rng.integers(0, special.vocab_size, size=int(bad.sum()))
        bad = np.isin(out, special.special_ids)
    return out


@register_masking("random")
class RandomTokenMasking(Masking):
    """BERT: ``budget`` of the word pieces, chosen uniformly without replacement."""

    def select(self, seq, maskable, rng):
        target = budget_for(len(maskable), self.config.budget)
        chosen = rng.choice(maskable, size=target, replace=False) if target else np.empty(0, dtype=np.int64)
        return [[np.array([p]) for p in np.sort(chosen)]]


@register_masking("wwm")
class WholeWordMasking(Masking):
    """Whole-word masking: a word's pieces are selected (and replaced) together."""

    def select(self, seq, maskable, rng):
        target = budget_for(len(maskable), self.config.budget)
        return [fill_budget(word_units(seq, maskable), target, rng)]


@register_masking("span")
class SpanMasking(Masking):
    """SpanBERT: spans of whole words, length ~ Geometric(span_p) clipped at span_max, until the budget.

    A span that would pass the budget is shortened (in whole words) to fit; when only words longer
    than the remaining budget are left, the last span takes the first pieces of one, so the budget is
    hit exactly. Spans never overlap.
    """

    def select(self, seq, maskable, rng):
        c = self.config
        words = word_units(seq, maskable)
        target = budget_for(len(maskable), c.budget)
        taken = np.zeros(len(words), dtype=bool)
        sizes = np.array([len(w) for w in words])
        chosen: list[np.ndarray] = []
        total, attempts = 0, 0
        while total < target and attempts < 10 * len(words) + 10:
            attempts += 1
            length = min(int(rng.geometric(c.span_p)), c.span_max)
            start = int(rng.integers(len(words)))
            if taken[start]:
                continue
            stop = start
            while stop < len(words) and stop - start < length and not taken[stop] and \
                    total + sizes[start : stop + 1].sum() <= target:
                stop += 1
            if stop == start:
                continue
            taken[start:stop] = True
            total += int(sizes[start:stop].sum())
            chosen.append(np.concatenate(words[start:stop]))
        if total < target:  # what is left is smaller than any free word: the last span ends inside a word
            free = [w for w, t in zip(words, taken) if not t]
            for k in rng.permutation(len(free)):
                w = free[k]
                need = target - total
                if need <= 0:
                    break
                piece = w[:need]
                chosen.append(piece)
                total += len(piece)
        return [chosen]


@register_masking("pmi")
class PMIMasking(Masking):
    """PMI-Masking: vocabulary n-grams found by longest match are units; other words are whole-word units."""

    def __init__(self, config: MaskingConfig, vocab: "PMIVocab"):
        super().__init__(config)
        self.vocab = vocab

    def units(self, seq, maskable, rng) -> list[np.ndarray]:
        words = word_units(seq, maskable)
        # map each word unit to its word string (units of pieces without a word stay single units)
        word_index = [int(seq.word_ids[u[0]]) for u in words]
        spans = self.vocab.find_spans([seq.words[w] if w >= 0 else "" for w in word_index], rng)
        units, pos = [], 0
        for i, j in spans:  # spans are sorted, non-overlapping [i, j) over word units
            units.extend(words[pos:i])
            units.append(np.concatenate(words[i:j]))
            pos = j
        units.extend(words[pos:])
        return units

    def select(self, seq, maskable, rng):
        target = budget_for(len(maskable), self.config.budget)
        return [fill_budget(self.units(seq, maskable, rng), target, rng)]


@register_masking("fully-explored")
class FullyExploredMasking(Masking):
    """Fully-explored MLM: K copies whose masks are the K parts of a partition of the sequence.

    ``fe_layout="random"``: a uniformly random partition into K near-equal parts, so each copy's mask is
    marginally a uniform random 1/K of the tokens (random masking), but the K copies never overlap.
    ``"contiguous"``: K consecutive segments, with the segment boundaries shifted by a random offset.
    """

    def __init__(self, config: MaskingConfig):
        super().__init__(config)
        self.copies = config.fe_copies or max(2, int(round(1.0 / config.budget)))

    def partition(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        """K disjoint index sets covering range(n) (sizes differ by at most one)."""
        K = self.copies
        bounds = np.linspace(0, n, K + 1).round().astype(int)
        if self.config.fe_layout == "random":
            order = rng.permutation(n)
            return [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(K)]
        shift = int(rng.integers(n)) if n else 0
        order = np.roll(np.arange(n), -shift)
        return [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(K)]

    def select(self, seq, maskable, rng):
        parts = self.partition(len(maskable), rng)
        return [[np.array([p]) for p in maskable[part]] for part in parts]
