"""The masking engine: budgets, special tokens, units kept whole, 80/10/10, fully-explored partitions."""

import numpy as np
import pytest

from reprlab.errors import ConfigError
from reprlab.pretrain.corpus import split_words, tokenize_chunks
from reprlab.pretrain.masking import (
    IGNORE_INDEX, MASKING, MaskingConfig, SpecialTokens, build_masking, maskable_positions, word_units,
)
from reprlab.pretrain.pmi import PMIConfig, build_pmi_vocab


@pytest.fixture(scope="module")
def chunks(tokenizer, toy_texts):
    return tokenize_chunks(toy_texts, tokenizer, max_length=48)


@pytest.fixture(scope="module")
def special(tokenizer):
    return SpecialTokens.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def pmi_vocab(tokenizer, toy_texts):
    return build_pmi_vocab(toy_texts, PMIConfig(min_count=3, size=200), tokenizer=tokenizer)


def make(name, vocab, **kw):
    return build_masking(name, MaskingConfig(**kw), pmi_vocab=vocab if name == "pmi" else None)


def test_registry_has_every_scheme():
    assert set(MASKING) == {"random", "wwm", "span", "pmi", "fully-explored"}


@pytest.mark.parametrize("name", sorted(MASKING))
@pytest.mark.parametrize("budget", [0.15, 0.3])
def test_budget_and_never_special_or_padding(name, budget, chunks, special, pmi_vocab, tokenizer):
    masking = make(name, pmi_vocab, budget=budget)
    rng = np.random.default_rng(0)
    for start in range(0, len(chunks), 8):
        group = chunks[start : start + 8]
        batch = masking.collate(group, special, rng)
        source = batch["source"].numpy()
        ids, mask, labels = batch["input_ids"].numpy(), batch["attention_mask"].numpy(), batch["labels"].numpy()
        assert len(ids) == len(group) * masking.copies
        for row in range(len(ids)):
            seq = group[source[row]]
            n = len(seq.ids)
            selected = labels[row] != IGNORE_INDEX
            # never special tokens, never padding; labels are the original ids
            assert not selected[n:].any() and (mask[row, n:] == 0).all()
            assert not np.isin(seq.ids[selected[:n]], tokenizer.special_ids).any()
            assert (labels[row, :n][selected[:n]] == seq.ids[selected[:n]]).all()
            # unselected tokens are untouched
            assert (ids[row, :n][~selected[:n]] == seq.ids[~selected[:n]]).all()
            n_maskable = len(maskable_positions(seq.ids, tokenizer.special_ids))
            count = int(selected.sum())
            if name == "fully-explored":
                K = masking.copies
                assert K == round(1 / budget)
                assert count in (n_maskable // K, -(-n_maskable // K))
            else:
                target = max(1, round(budget * n_maskable))
                if name in ("random", "span"):
                    assert count == target
                else:  # whole units are added while they fit: short by less than one unit
                    maskable = maskable_positions(seq.ids, tokenizer.special_ids)
                    units = masking.units(seq, maskable, rng) if name == "pmi" else word_units(seq, maskable)
                    assert target - max(len(u) for u in units) < count <= target


@pytest.mark.parametrize("name", ["wwm", "pmi", "span"])
def test_whole_words_are_masked_together(name, chunks, special, pmi_vocab):
    masking = make(name, pmi_vocab)
    rng = np.random.default_rng(1)
    cut_words = 0
    for seq in chunks:
        batch = masking.collate([seq], special, rng)
        selected = batch["labels"][0].numpy() != IGNORE_INDEX
        for unit in word_units(seq, maskable_positions(seq.ids, special.special_ids)):
            part = selected[unit]
            if part.any() and not part.all():
                cut_words += 1
    if name == "span":  # only the last span may end inside a word, to hit the budget exactly
        assert cut_words <= len(chunks)
    else:
        assert cut_words == 0


def test_80_10_10_is_drawn_per_unit(chunks, special, tokenizer):
    masking = make("wwm", None, budget=0.3)
    rng = np.random.default_rng(2)
    outcomes = []
    for _ in range(30):
        for seq in chunks:
            batch = masking.collate([seq], special, rng)
            ids, labels = batch["input_ids"][0].numpy(), batch["labels"][0].numpy()
            for unit in word_units(seq, maskable_positions(seq.ids, special.special_ids)):
                if labels[unit[0]] == IGNORE_INDEX:
                    continue
                is_mask = ids[unit] == special.mask_id
                kept = ids[unit] == seq.ids[unit]
                if len(unit) > 1:  # one draw per unit: all pieces masked or none
                    assert is_mask.all() or not is_mask.any()
                outcomes.append("mask" if is_mask.all() else "keep" if kept.all() else "random")
                assert not np.isin(ids[unit], [special.mask_id, *tokenizer.special_ids]).any() or is_mask.all()
    counts = {k: outcomes.count(k) / len(outcomes) for k in ("mask", "random", "keep")}
    assert len(outcomes) > 2000
    assert abs(counts["mask"] - 0.8) < 0.03
    assert abs(counts["random"] - 0.1) < 0.03  # a random token can equal the original: counted as keep
    assert abs(counts["keep"] - 0.1) < 0.03


@pytest.mark.parametrize("layout", ["random", "contiguous"])
@pytest.mark.parametrize("copies", [None, 4])
def test_fully_explored_copies_partition_the_sequence(layout, copies, chunks, special):
    masking = make("fully-explored", None, fe_layout=layout, fe_copies=copies)
    K = copies or 7
    assert masking.copies == K
    rng = np.random.default_rng(3)
    batch = masking.collate(chunks[:5], special, rng)
    labels, source = batch["labels"].numpy(), batch["source"].numpy()
    for i, seq in enumerate(chunks[:5]):
        rows = labels[source == i]
        assert len(rows) == K
        selected = rows != IGNORE_INDEX  # (K, T)
        assert (selected.sum(0)[: len(seq.ids)] <= 1).all(), "copies overlap"
        covered = np.flatnonzero(selected.any(0))
        assert covered.tolist() == maskable_positions(seq.ids, special.special_ids).tolist(), "copies miss a token"
        if layout == "contiguous":  # each segment is one run (one may wrap around the end)
            for row in selected:
                pos = np.flatnonzero(row)
                assert (np.diff(pos) > 1).sum() <= 1


def test_fully_explored_random_layout_varies_and_is_reproducible(chunks, special):
    masking = make("fully-explored", None)
    a = masking.collate(chunks[:2], special, np.random.default_rng(5))["labels"]
    b = masking.collate(chunks[:2], special, np.random.default_rng(5))["labels"]
    c = masking.collate(chunks[:2], special, np.random.default_rng(6))["labels"]
    assert (a == b).all() and not (a == c).all()


def test_pmi_units_contain_whole_vocabulary_ngrams(tokenizer, special):
    rng = np.random.default_rng(0)
    fillers = [f"w{i}" for i in range(20)]
    texts = [" ".join(rng.choice(fillers, 3)) + " kuala lumpur " + " ".join(rng.choice(fillers, 3)) for _ in range(60)]
    vocab = build_pmi_vocab(texts, PMIConfig(min_count=5, size=50), tokenizer=tokenizer)
    assert vocab.top(1)[0].ngram == ("kuala", "lumpur")
    text = "the kuala lumpur meeting was held in kuala lumpur again"
    seq = tokenize_chunks([text], tokenizer)[0]
    assert split_words(text, tokenizer) == seq.words
    masking = make("pmi", vocab, budget=0.3)
    units = masking.units(seq, maskable_positions(seq.ids, special.special_ids), np.random.default_rng(0))
    words = [" ".join(seq.words[w] for w in sorted({int(seq.word_ids[p]) for p in u})) for u in units]
    assert words == ["the", "kuala lumpur", "meeting", "was", "held", "in", "kuala lumpur", "again"]


def test_bad_settings():
    with pytest.raises(ConfigError, match="budget"):
        MaskingConfig(budget=0.0)
    with pytest.raises(ConfigError, match="sum"):
        MaskingConfig(mask_prob=0.9, random_prob=0.2)
    with pytest.raises(ConfigError, match="choose one of"):
        build_masking("nope")
    with pytest.raises(ConfigError, match="pmi-vocab"):
        build_masking("pmi")
    with pytest.raises(ConfigError, match="fe_layout"):
        MaskingConfig(fe_layout="zigzag")
