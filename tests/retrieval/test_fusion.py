"""Reciprocal rank fusion against a hand-computed fusion."""

import pytest

from reprlab.errors import ConfigError
from reprlab.retrieval.fusion import rrf

R1 = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
R2 = {"q": {"c": 0.9, "a": 0.5}, "q2": {"x": 1.0}}


def test_rrf_equals_hand_computation():
    fused = rrf([R1, R2])
    assert fused.keys() == {"q", "q2"}
    assert fused["q"] == pytest.approx({"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61})
    assert fused["q2"] == pytest.approx({"x": 1 / 61})


def test_rrf_weights_k_and_top():
    fused = rrf([R1, R2], k=0, weights=[2.0, 1.0], top=2)
    # a: 2/1 + 1/2 = 2.5; b: 2/2 = 1; c: 2/3 + 1/1 = 1.667 -> keep a, c
    assert fused["q"] == pytest.approx({"a": 2.5, "c": 2 / 3 + 1})
    assert fused["q2"] == pytest.approx({"x": 1.0})


def test_rrf_uses_trec_eval_tie_order():
    # equal scores rank by doc id descending: b is 1st, a 2nd
    fused = rrf([{"q": {"a": 1.0, "b": 1.0}}])
    assert fused["q"] == pytest.approx({"b": 1 / 61, "a": 1 / 62})


def test_rrf_errors():
    with pytest.raises(ConfigError, match="weights"):
        rrf([R1, R2], weights=[1.0])
    with pytest.raises(ConfigError, match="k must"):
        rrf([R1], k=-1)
