"""Reciprocal rank fusion and score interpolation against hand-computed fusions."""

import numpy as np
import pytest

from reprlab.errors import ConfigError
from reprlab.retrieval.fusion import interpolate, rrf

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


def test_interpolate_equals_hand_computation():
    dense_s = np.array([[0.9, 0.8, 0.5]], dtype=np.float32)
    dense_i = np.array([["a", "b", "c"]], dtype=object)
    sparse_s = np.array([[10.0, 5.0, -np.inf]], dtype=np.float32)
    sparse_i = np.array([["d", "b", None]], dtype=object)
    scores, ids = interpolate(dense_s, dense_i, sparse_s, sparse_i, weight=0.3, k=4)
    # a 0.9; b 0.8 + 0.3 * 5/10 = 0.95; c 0.5; d (sparse only: the dense list's last score) 0.5 + 0.3 = 0.8
    assert list(ids[0]) == ["b", "a", "d", "c"]
    np.testing.assert_allclose(scores[0], [0.95, 0.9, 0.8, 0.5], rtol=1e-6)
    scores, ids = interpolate(dense_s, dense_i, sparse_s, sparse_i, weight=0.0, k=2)
    assert list(ids[0]) == ["a", "b"] and scores[0].tolist() == pytest.approx([0.9, 0.8])


def test_interpolate_pads_and_rejects_negative_weights():
    scores, ids = interpolate(np.array([[0.5, -np.inf]]), np.array([["a", None]], dtype=object),
                              np.array([[-np.inf]]), np.array([[None]], dtype=object), weight=1.0, k=3)
    assert list(ids[0]) == ["a", None, None] and scores[0, 0] == pytest.approx(0.5) and np.isinf(scores[0, 1:]).all()
    with pytest.raises(ConfigError, match="weight"):
        interpolate(np.zeros((1, 1)), np.array([["a"]], dtype=object), np.zeros((1, 1)),
                    np.array([["a"]], dtype=object), weight=-0.1, k=1)
