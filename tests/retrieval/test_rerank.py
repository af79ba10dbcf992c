"""Exact re-ranking from a memory-mapped vector file: equal to exact search over the candidates."""

import numpy as np
import pytest

from reprlab.errors import DataFormatError
from reprlab.retrieval.rerank import open_vectors, rerank, rerank_reference, save_vectors


def data(n=500, dim=16, q=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.standard_normal((q, dim)).astype(np.float32)


def test_rerank_from_a_float32_mmap_equals_exact_search_on_the_candidates(tmp_path):
    x, q = data()
    store = open_vectors(save_vectors(tmp_path / "x.npy", x, dtype="float32"))
    assert isinstance(store, np.memmap) and store.dtype == np.float32
    rng = np.random.default_rng(1)
    cand = np.stack([rng.choice(len(x), 60, replace=False) for _ in q])  # (Q, 60)
    cand[:, -7:] = -1  # padding, as FAISS pads short result lists
    scores, got = rerank(store, q, cand, k=10, batch=7)
    for i in range(len(q)):  # exact search restricted to the candidates, by brute force
        live = cand[i][cand[i] >= 0]
        exact = live[np.argsort(-(x[live] @ q[i]), kind="stable")[:10]]
        assert got[i].tolist() == exact.tolist()
        np.testing.assert_allclose(scores[i], x[exact] @ q[i], rtol=1e-5, atol=1e-6)
    ref_scores, ref = rerank_reference(store, q, cand, k=10)
    np.testing.assert_array_equal(got, ref)


def test_rerank_of_candidates_that_hold_the_true_top_k_is_exact_search(tmp_path):
    x, q = data()
    store = open_vectors(save_vectors(tmp_path / "x.npy", x, dtype="float32"))
    full = np.argsort(-(q @ x.T), axis=1, kind="stable")  # (Q, N) exact ranking
    cand = np.ascontiguousarray(full[:, :50][:, ::-1])  # the true top-10 inside, in the worst order
    assert (rerank(store, q, cand, k=10)[1] == full[:, :10]).all()


def test_float16_file_reranks_with_the_rounded_vectors_and_dedups_short_lists(tmp_path):
    x, q = data(n=50)
    store = open_vectors(save_vectors(tmp_path / "h.npy", x, dtype="float16", chunk=7))
    assert store.dtype == np.float16 and store.shape == x.shape
    np.testing.assert_array_equal(np.asarray(store), x.astype(np.float16))
    cand = np.array([[3, 3, 9, -1, 3], [-1, -1, -1, -1, -1]] * 10)[: len(q)]  # repeats and an empty row
    scores, got = rerank(store, q, cand, k=4)
    ref_scores, ref = rerank_reference(x.astype(np.float16), q, cand, k=4)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    assert (got[0, 2:] == -1).all() and set(got[0, :2]) == {3, 9} and (got[1] == -1).all()
    assert np.isneginf(scores[1]).all()


def test_bad_vector_files_and_shapes_are_refused(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name in ("ints.npy", "junk.npy"):
        with pytest.raises(DataFormatError):
            open_vectors(tmp_path / name)
    store = open_vectors(save_vectors(tmp_path / "x.npy", np.ones((3, 4))))
    with pytest.raises(ValueError, match="dimension"):
        rerank(store, np.ones((2, 5)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="past the 3 stored"):
        rerank(store, np.ones((2, 4)), np.full((2, 2), 3))
