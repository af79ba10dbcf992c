"""PMI-Masking vocabulary: the paper's PMI over segmentations, ranking, matching, save/load."""

import json
import math

import numpy as np
import pytest

from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.pretrain.pmi import (
    PMIConfig, PMIEntry, PMIVocab, build_pmi_vocab, pmi_score, pmi_vocab_from_corpus, segmentations,
)


def toy_corpus(seed=0, borrowed=True):
    """Random words from a 40-word vocabulary, with planted n-grams (see the test bodies)."""
    rng = np.random.default_rng(seed)
    common = [f"w{i}" for i in range(40)]
    texts = []
    for i in range(300):
        words = list(rng.choice(common, size=18))
        if i % 10 == 0:  # 30 times: a collocation whose words occur nowhere else
            words[5:5] = ["quantum", "chromodynamics"]
        if borrowed and i % 25 == 0:  # 12 times: a rare bigram always followed by the frequent word "the"
            words[10:10] = ["kuala", "lumpur", "the"]
        if i % 3 == 0:  # 100 times each, 30 times together: a genuine trigram of more common words
            words[14:14] = ["alpha", "beta", "gamma"] if i % 9 == 0 else [["alpha", "beta", "gamma"][i % 9 // 3]]
        if i % 2 == 0:
            words.append("the")
        texts.append(words)
    return texts


def test_segmentations_are_all_nontrivial_splits():
    assert segmentations(2) == [[(0, 1), (1, 2)]]
    assert len(segmentations(5)) == 2 ** 4 - 1
    assert all(len(s) >= 2 and s[0][0] == 0 and s[-1][1] == 4 for s in segmentations(4))


def test_pmi_score_matches_a_hand_computation():
    counts = {("a",): 10, ("b",): 20, ("c",): 40, ("a", "b"): 5, ("b", "c"): 8, ("a", "b", "c"): 4}
    N = 1000
    lp = lambda c: math.log(c / N)  # noqa: E731
    assert pmi_score(("a", "b"), counts, N) == pytest.approx(lp(5) - lp(10) - lp(20))
    splits = [lp(10) + lp(20) + lp(40), lp(5) + lp(40), lp(10) + lp(8)]
    assert pmi_score(("a", "b", "c"), counts, N) == pytest.approx(lp(4) - max(splits))
    assert pmi_score(("a", "b", "c"), counts, N, "pmi-freq") == pytest.approx(2 * lp(4) - max(splits))
    assert pmi_score(("a", "b", "c"), counts, N, "naive") == pytest.approx(lp(4) - splits[0])


def test_planted_collocation_ranks_first():
    vocab = build_pmi_vocab(toy_corpus(borrowed=False), PMIConfig(min_count=10, size=100))
    assert vocab.top(1)[0].ngram == ("quantum", "chromodynamics")
    assert vocab.top(1, n=2)[0].ngram == ("quantum", "chromodynamics")
    assert vocab.top(1, n=3)[0].ngram == ("alpha", "beta", "gamma")


def test_segmentation_pmi_is_not_fooled_by_a_strong_sub_ngram():
    """"kuala lumpur the" owes its naive PMI to "kuala lumpur"; the paper's measure sees through it."""
    texts = toy_corpus()
    naive = build_pmi_vocab(texts, PMIConfig(min_count=10, size=100, score="naive"))
    paper = build_pmi_vocab(texts, PMIConfig(min_count=10, size=100, score="pmi"))
    trigram, borrowed = ("alpha", "beta", "gamma"), ("kuala", "lumpur", "the")
    rank = lambda v, g: [e.ngram for e in v.top(1000, n=3)].index(g)  # noqa: E731
    assert rank(naive, borrowed) < rank(naive, trigram)
    assert rank(paper, trigram) < rank(paper, borrowed)


def test_vocabulary_proportions_and_threshold():
    vocab = build_pmi_vocab(toy_corpus(), PMIConfig(min_count=10, size=8, proportions=(0.5, 0.25, 0.125, 0.125)))
    lengths = [len(e.ngram) for e in vocab.entries]
    assert lengths.count(2) == 4 and lengths.count(3) <= 2
    assert all(e.count >= 10 for e in vocab.entries)
    strict = build_pmi_vocab(toy_corpus(), PMIConfig(min_count=31, size=100))
    assert ("quantum", "chromodynamics") not in strict  # seen 30 times


def test_longest_match_and_random_tie_breaking():
    entries = [PMIEntry(g, 10, 1.0) for g in [("the", "united", "states"), ("air", "force"),
                                               ("the", "united", "states", "air", "force"),
                                               ("by", "the", "way"), ("the", "way", "out")]]
    vocab = PMIVocab(entries)
    words = "the united states air force went by the way out".split()
    outcomes = set()
    for seed in range(20):
        spans = vocab.find_spans(words, np.random.default_rng(seed))
        assert spans[0] == (0, 5), "the longer match wins over those it contains"
        outcomes.add(tuple(spans[1:]))
    assert outcomes == {((6, 9),), ((7, 10),)}, "overlapping matches are chosen at random"


def test_save_load_round_trip(tmp_path):
    vocab = build_pmi_vocab(toy_corpus(), PMIConfig(min_count=10, size=20))
    vocab.save(tmp_path / "v.json")
    back = PMIVocab.load(tmp_path / "v.json")
    assert [(e.ngram, e.count) for e in back.entries] == [(e.ngram, e.count) for e in vocab.entries]
    assert [e.score for e in back.entries] == pytest.approx([e.score for e in vocab.entries], abs=1e-6)
    assert back.config == vocab.config
    assert not list(tmp_path.glob(".*tmp")), "atomic write leaves no temporary file"


def test_bad_files_and_settings(tmp_path):
    with pytest.raises(ReprlabError, match="does not exist"):
        PMIVocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        PMIVocab.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(DataFormatError, match="reprlab pmi-vocab"):
        PMIVocab.load(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="proportions"):
        PMIConfig(proportions=(0.5, 0.5))
    with pytest.raises(ConfigError, match="score"):
        PMIConfig(score="ppmi")


def test_coverage_counts_words_inside_matches():
    vocab = PMIVocab([PMIEntry(("new", "york"), 10, 1.0)])
    assert vocab.coverage([["in", "new", "york", "city"]]) == 0.5


def test_vocabulary_from_a_corpus_file(tmp_path):
    lines = [" ".join(words) for words in toy_corpus(borrowed=False)]
    (tmp_path / "c.txt").write_text("\n\n".join(lines))
    vocab = pmi_vocab_from_corpus(tmp_path / "c.txt", tmp_path / "v.json", PMIConfig(min_count=10, size=10), model=None)
    assert PMIVocab.load(tmp_path / "v.json").top(1)[0].ngram == ("quantum", "chromodynamics") == vocab.top(1)[0].ngram
    with pytest.raises(ReprlabError, match="min_count"):
        pmi_vocab_from_corpus(tmp_path / "c.txt", None, PMIConfig(min_count=10_000), model=None)
