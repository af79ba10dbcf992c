"""The masking engine: budgets, special tokens, units kept whole, 80/10/10, fully-explored partitions."""

import numpy as np
import pytest
import torch

from reprlab.errors import ConfigError
from reprlab.pretrain.corpus import TokenizedText, split_words, tokenize_chunks
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
    with pytest.raises(ConfigError, match="more than 1"):
        MaskingConfig(mask_prob=0.9, random_prob=0.2)
    with pytest.raises(ConfigError, match="choose one of"):
        build_masking("nope")
    with pytest.raises(ConfigError, match="pmi-vocab"):
        build_masking("pmi")
    with pytest.raises(ConfigError, match="fe_layout"):
        MaskingConfig(fe_layout="zigzag")


# ----------------------------------------------------------------------------- hand-sized cases (mutation testing)


def test_config_bounds_and_messages():
    for ok in (dict(mask_prob=0.0, random_prob=0.0), dict(mask_prob=0.5, random_prob=0.5), dict(span_p=1.0),
               dict(span_max=1), dict(fe_copies=2), dict(fe_layout="contiguous")):
        MaskingConfig(**ok)
    for budget in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"^budget: masking budget must be in \(0, 1\)"):
            MaskingConfig(budget=budget)
    for field, probs in (("mask_prob", dict(mask_prob=-0.1)), ("random_prob", dict(random_prob=-0.1)),
                         ("mask_prob", dict(mask_prob=float("nan"))), ("random_prob", dict(random_prob=1.5))):
        with pytest.raises(ConfigError, match=rf"^{field}: must be in \[0, 1\], got") as info:
            MaskingConfig(**probs)
        assert info.value.field == field
    with pytest.raises(ConfigError, match=r"^random_prob: mask_prob 0.9 \+ random_prob 0.2 is more than 1$"):
        MaskingConfig(mask_prob=0.9, random_prob=0.2)
    for span in (dict(span_p=0.0), dict(span_p=1.5), dict(span_p=float("nan"))):
        with pytest.raises(ConfigError, match=r"^span_p: must be in \(0, 1\], got"):
            MaskingConfig(**span)
    with pytest.raises(ConfigError, match=r"^span_max: must be at least 1, got 0$"):
        MaskingConfig(span_max=0)
    with pytest.raises(ConfigError, match="^fe_copies: must be at least 2, got 1$"):
        MaskingConfig(fe_copies=1)
    with pytest.raises(ConfigError, match="choose one of: random, wwm, span, pmi, fully-explored$"):
        build_masking("nope")
    with pytest.raises(ConfigError, match=r"^masking 'pmi' needs a PMI vocabulary: build one with `reprlab pmi-vocab` "
                                          r"and pass it \(--pmi-vocab\)$"):
        build_masking("pmi")


def test_special_tokens_need_a_mask_token():
    from types import SimpleNamespace

    no_mask = SimpleNamespace(mask_id=None, pad_id=0, vocab_size=10, special_ids=[0])
    with pytest.raises(ConfigError, match=r"^the tokenizer has no \[MASK\] token; masked-language modelling needs one$"):
        SpecialTokens.from_tokenizer(no_mask)
    tok = SimpleNamespace(mask_id=4, pad_id=0, vocab_size=10, special_ids=[0, 1, 4])
    assert SpecialTokens.from_tokenizer(tok) == SpecialTokens(4, 0, 10, (0, 1, 4))


def test_budget_for_and_fill_budget_by_hand():
    from reprlab.pretrain.masking import budget_for, fill_budget

    assert [budget_for(n, 0.15) for n in (0, 1, 3, 10, 100)] == [0, 1, 1, 2, 15]  # never 0 unless nothing is maskable
    ones = [np.array([i]) for i in range(4)]
    for seed in range(5):  # single-token units fill the target exactly
        assert sum(len(u) for u in fill_budget(ones, 3, np.random.default_rng(seed))) == 3
    # units that would pass the target are skipped, smaller ones after them still taken
    units = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5])]
    for seed in range(10):
        chosen = fill_budget(units, 3, np.random.default_rng(seed))
        assert sum(len(u) for u in chosen) == 3 and all(len(u) in (1, 2, 3) for u in chosen)


def _seq(word_ids):
    """A sequence [CLS] pieces [SEP]: piece k belongs to word word_ids[k] (-1: a piece of no word)."""
    ids = np.array([101, *range(1000, 1000 + len(word_ids)), 102])
    words = [f"w{i}" for i in range(max(word_ids) + 1)]
    return TokenizedText(ids, np.array([-1, *word_ids, -1]), words)


def test_word_units_by_hand():
    seq = _seq([-1, 0, 0, 1, -1, 2, 2, 2, 3])
    maskable = maskable_positions(seq.ids, [101, 102])
    assert [u.tolist() for u in word_units(seq, maskable)] == [[1], [2, 3], [4], [5], [6, 7, 8], [9]]


def test_span_lengths_follow_span_max_and_spans_are_runs_of_words():
    seq = _seq(list(range(40)))  # forty one-piece words: whole-word spans can hit any budget
    special = SpecialTokens(103, 0, 30522, (0, 101, 102, 103))
    maskable = maskable_positions(seq.ids, special.special_ids)
    longest, n_spans = [], []
    for seed in range(20):
        for span_max in (1, 3):
            masking = make("span", None, budget=0.5, span_p=0.05, span_max=span_max)  # long spans, clipped
            (chosen,) = masking.select(seq, maskable, np.random.default_rng(seed))
            assert sum(len(c) for c in chosen) == 20
            assert all(len(c) <= span_max and (np.diff(c) == 1).all() for c in chosen)
            assert len(np.unique(np.concatenate(chosen))) == 20  # spans never overlap
            if span_max == 3:
                longest.append(max(len(c) for c in chosen))
                n_spans.append(len(chosen))
    assert max(longest) == 3
    # spans are cut short only by taken words, the end or the budget: about 8.3 spans for 20 tokens (7 to 10 in
    # 200 seeds), not a tail of one-word units
    assert np.mean(n_spans) < 9


def test_apply_and_collate_details(special):
    masking = make("random", None, mask_prob=0.0, random_prob=1.0)
    ids = np.arange(2000, 2010)
    out, labels = masking.apply(ids, [np.arange(2, 8)], special, np.random.default_rng(0))
    assert len(set(out[2:8].tolist())) > 1, "each piece of a replaced unit draws its own random token"
    assert (labels[2:8] == ids[2:8]).all() and (labels[[0, 1, 8, 9]] == IGNORE_INDEX).all()
    # a sequence of special tokens only: nothing to mask, in every scheme
    empty = TokenizedText(np.array([101, 102]), np.array([-1, -1]), [])
    longer = _seq([0, 1, 2, 3, 4, 5])
    for name in ("random", "wwm", "span"):
        batch = make(name, None).collate([empty, longer], special, np.random.default_rng(0))
        assert (batch["labels"][0] == IGNORE_INDEX).all()
        assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [1] * 8]
        assert batch["input_ids"][0].tolist() == [101, 102] + [special.pad_id] * 6
        assert all(batch[k].dtype == torch.int64 for k in ("input_ids", "attention_mask", "labels", "source"))


# ----------------------------------------------------------------------------- by hand (mutation testing)


def _pieces_seq(sizes):
    """[CLS] pieces [SEP]: word k has sizes[k] pieces."""
    return _seq([k for k, size in enumerate(sizes) for _ in range(size)])


def test_span_masking_cuts_a_word_only_when_no_whole_word_fits():
    special = SpecialTokens(103, 0, 30522, (0, 101, 102, 103))
    masking = make("span", None, budget=0.25)
    # ten 3-piece words and ten 1-piece words (40 pieces, target 10): whole words can always reach the target
    mixed = _pieces_seq([3, 1] * 10)
    maskable = maskable_positions(mixed.ids, special.special_ids)
    units = {tuple(u.tolist()) for u in word_units(mixed, maskable)}
    for seed in range(20):
        (chosen,) = masking.select(mixed, maskable, np.random.default_rng(seed))
        assert sum(len(c) for c in chosen) == 10
        for span in chosen:  # every span is a run of whole words
            covered = [u for u in units if set(u) <= set(span.tolist())]
            assert sum(len(u) for u in covered) == len(span), (seed, span)
    # 2-piece words only and an odd target (20 pieces, target 5): two whole words, then the first piece of a third
    pairs = _pieces_seq([2] * 10)
    maskable = maskable_positions(pairs.ids, special.special_ids)
    starts = {int(u[0]) for u in word_units(pairs, maskable)}
    for seed in range(10):
        (chosen,) = masking.select(pairs, maskable, np.random.default_rng(seed))
        assert all(len(c) for c in chosen) and sum(len(c) for c in chosen) == 5
        flat = np.concatenate(chosen)
        assert len(np.unique(flat)) == 5  # no piece twice
        cut = [c for c in chosen if len(c) % 2]
        assert len(cut) == 1 and len(cut[0]) == 1 and int(cut[0][0]) in starts  # a word's first piece


def test_fully_explored_partitions_by_hand():
    masking = make("fully-explored", None, fe_copies=3, fe_layout="random")
    parts = masking.partition(10, np.random.default_rng(4))
    order = np.random.default_rng(4).permutation(10)
    assert [p.tolist() for p in parts] == [sorted(order[a:b].tolist()) for a, b in ((0, 3), (3, 7), (7, 10))]
    contiguous = make("fully-explored", None, fe_copies=3, fe_layout="contiguous")
    shift = int(np.random.default_rng(4).integers(10))
    assert shift != 0
    order = np.roll(np.arange(10), -shift)  # the segments start at a random offset and wrap around
    assert [p.tolist() for p in contiguous.partition(10, np.random.default_rng(4))] == \
        [sorted(order[a:b].tolist()) for a, b in ((0, 3), (3, 7), (7, 10))]
    assert [p.tolist() for p in contiguous.partition(0, np.random.default_rng(4))] == [[], [], []]
    # K = round(1 / budget), at least 2
    assert make("fully-explored", None, budget=0.5).copies == 2
    assert make("fully-explored", None, budget=0.15).copies == 7


def test_pmi_units_start_at_the_first_word_and_pieces_of_no_word_match_nothing(tokenizer, special):
    rng = np.random.default_rng(0)
    fillers = [f"w{i}" for i in range(20)]
    texts = [" ".join(rng.choice(fillers, 3)) + " kuala lumpur " + " ".join(rng.choice(fillers, 3)) for _ in range(60)]
    vocab = build_pmi_vocab(texts, PMIConfig(min_count=5, size=50), tokenizer=tokenizer)
    masking = make("pmi", vocab, budget=0.3)
    text = "kuala lumpur was the meeting"
    seq = tokenize_chunks([text], tokenizer)[0]
    units = masking.units(seq, maskable_positions(seq.ids, special.special_ids), np.random.default_rng(0))
    assert " ".join(seq.words[w] for w in sorted({int(seq.word_ids[p]) for p in units[0]})) == "kuala lumpur"
    # a piece of no word (word id -1) is no word of an n-gram: "[?] lumpur kuala" has no unit of two
    odd = TokenizedText(np.array([101, 1000, 1001, 1002, 102]), np.array([-1, -1, 0, 1, -1]), ["lumpur", "kuala"])
    units = masking.units(odd, maskable_positions(odd.ids, special.special_ids), np.random.default_rng(0))
    assert [u.tolist() for u in units] == [[1], [2], [3]]


def test_random_tokens_redraw_special_tokens_uniformly():
    from reprlab.pretrain.masking import random_tokens

    # a vocabulary of six where four are special: most first draws are redrawn, until none is special
    special = SpecialTokens(3, 0, 6, (0, 1, 2, 3))
    out = random_tokens(2000, special, np.random.default_rng(0))
    values, counts = np.unique(out, return_counts=True)
    assert values.tolist() == [4, 5] and 800 < counts[0] < 1200  # each redrawn token drawn on its own
    # id 0 is an ordinary token here, drawn as often as id 5 (first draws and redraws alike)
    zero_ok = SpecialTokens(1, 1, 6, (1, 2, 3, 4))
    values, counts = np.unique(random_tokens(2000, zero_ok, np.random.default_rng(1)), return_counts=True)
    assert values.tolist() == [0, 5] and 900 < counts[0] < 1100


def test_an_unknown_fe_layout_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"^fe_layout: unknown fe_layout 'zigzag'; choose random or contiguous$") as e:
        MaskingConfig(fe_layout="zigzag")
    assert e.value.field == "fe_layout"
