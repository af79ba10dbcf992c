"""Index: FAISS flat vs brute force, approximate recall, sharded vs flat, save/load, errors."""

import numpy as np
import pytest

import faiss
from reprlab.errors import ConfigError, ReprlabError
from reprlab.retrieval.index import FaissIndex, Index, ShardedIndex, build_index

D = 32


def data(n=2000, q=50, d=D, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(n)]
    return ids, x, queries


def brute_force(x, queries, k, metric):
    """Plain numpy top-k: (scores (Q, k), positions (Q, k)), higher score is better."""
    x64, q64 = x.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        scores = q64 @ x64.T  # (Q, N)
    else:
        scores = -((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    assert (np.diff(-top, axis=1) > 1e-6).all(), "test data has near-ties"
    return top, order


def recall(found_ids, true_ids):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found_ids.tolist(), true_ids.tolist())])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force(metric):
    ids, x, queries = data()
    index = FaissIndex(D, metric=metric)
    index.add(ids, x)
    scores, found = index.search(queries, k=10)
    assert scores.dtype == np.float32 and scores.shape == (50, 10)
    assert found.dtype == object and found.shape == (50, 10)
    ref_scores, ref_pos = brute_force(x, queries, 10, metric)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert found.tolist() == np.array(ids, dtype=object)[ref_pos].tolist()
    assert len(index) == 2000 and index.dim == D


def test_float64_and_list_ids_accepted():
    ids, x, queries = data(n=100, q=3)
    index = FaissIndex(D)
    index.add(np.array(ids), x.astype(np.float64))
    s64, i64 = index.search(queries.astype(np.float64), 5)
    s32, i32 = index.search(queries, 5)
    assert (s64 == s32).all() and (i64 == i32).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_k_larger_than_the_index_is_clamped_before_anything_is_allocated(metric):
    ids, x, queries = data(n=5, q=2)
    index = FaissIndex(D, metric=metric)
    index.add(ids, x)
    scores, found = index.search(queries, k=8)
    assert scores.shape == (2, 5) and found.shape == (2, 5)
    assert np.isfinite(scores).all() and all(i is not None for i in found.ravel())
    assert (np.diff(scores, axis=1) <= 0).all()
    scores, found = index.search(queries, k=10**12)  # would be terabytes unclamped
    assert scores.shape == (2, 5)
    sharded = build_index(x, ids, n_shards=2)
    assert sharded.search(queries, k=10**12)[0].shape == (2, 5)


def test_empty_index_returns_padding():
    index = FaissIndex(D)
    scores, found = index.search(np.zeros((2, D), np.float32), k=3)
    assert (scores == -np.inf).all() and (found == None).all()  # noqa: E711


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ties_ordered_by_insertion(metric):
    x = np.zeros((6, 4), np.float32)
    x[:, 0] = [1, 2, 2, 2, 0, 2]  # four ties at the top score
    index = FaissIndex(4, metric=metric)
    index.add(list("abcdef"), x)
    q = np.array([[5, 0, 0, 0]], np.float32) if metric == "ip" else np.array([[2, 0, 0, 0]], np.float32)
    _, found = index.search(q, k=3)
    assert found.tolist() == [["b", "c", "d"]]
    _, found = index.search(q, k=6)
    assert found[0, :4].tolist() == ["b", "c", "d", "f"]


def test_ivf_recall_with_nprobe_and_params_restored():
    ids, x, queries = data(n=5000)
    flat = FaissIndex(D)
    flat.add(ids, x)
    _, truth = flat.search(queries, 10)
    ivf = FaissIndex(D, "IVF64,Flat")
    ivf.add(ids, x)  # trains on these vectors
    _, low = ivf.search(queries, 10)  # nprobe 1
    _, high = ivf.search(queries, 10, nprobe=64)  # every list: exact
    assert recall(high, truth) == 1.0
    assert recall(low, truth) < 0.9
    _, again = ivf.search(queries, 10)  # the per-call nprobe did not stick
    assert (again == low).all()
    ivf.set_search_params(nprobe=32)  # half the lists (random Gaussian data is hard for IVF)
    assert recall(ivf.search(queries, 10)[1], truth) > 0.9
    assert ivf.search_params == {"nprobe": 32}


def test_hnsw_and_sq_recall():
    ids, x, queries = data(n=5000)
    truth = build_index(x, ids).search(queries, 10)[1]
    hnsw = build_index(x, ids, "HNSW32", efSearch=128)
    assert recall(hnsw.search(queries, 10)[1], truth) > 0.9
    sq = build_index(x, ids, "IVF32,SQ8", nprobe=32)
    assert recall(sq.search(queries, 10)[1], truth) > 0.9
    pq = build_index(x, ids, "PQ16x4")  # 4-bit codes: quick to train
    assert recall(pq.search(queries, 10)[1], truth) > 0.2  # 8-byte codes: coarse, far above chance (0.002)


def test_explicit_train_then_small_adds():
    ids, x, queries = data(n=3000)
    index = FaissIndex(D, "IVF32,Flat")
    index.train(x)
    for start in range(0, 3000, 100):
        index.add(ids[start : start + 100], x[start : start + 100])
    _, found = index.search(queries, 5, nprobe=32)
    assert (found == build_index(x, ids).search(queries, 5)[1]).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_sharded_equals_flat(metric, n_shards):
    ids, x, queries = data(n=1001)
    flat = FaissIndex(D, metric=metric)
    flat.add(ids, x)
    sharded = ShardedIndex(D, n_shards, metric=metric)
    for start, stop in [(0, 1), (1, 300), (300, 302), (302, 1001)]:  # ragged batches
        sharded.add(ids[start:stop], x[start:stop])
    assert len(sharded) == 1001 and sum(len(s) for s in sharded.shards) == 1001
    for k in (1, 10, 200, 1100):
        s_scores, s_ids = sharded.search(queries, k)
        f_scores, f_ids = flat.search(queries, k)
        assert np.array_equal(s_scores, f_scores)
        assert np.array_equal(s_ids, f_ids)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_sharded_equals_flat_with_ties(metric):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(300, 4)).astype(np.float32)  # many duplicate vectors
    ids = [f"d{i}" for i in range(300)]
    q = rng.integers(0, 3, size=(20, 4)).astype(np.float32)
    flat = build_index(x, ids, metric=metric)
    sharded = build_index(x, ids, metric=metric, n_shards=4)
    for k in (5, 37):
        f_scores, f_ids = flat.search(q, k)
        s_scores, s_ids = sharded.search(q, k)
        assert np.array_equal(f_scores, s_scores) and np.array_equal(f_ids, s_ids)
        # insertion order among equal scores
        pos = np.vectorize(lambda i: int(i[1:]))(f_ids)
        same = f_scores[:, 1:] == f_scores[:, :-1]
        assert (pos[:, 1:][same] > pos[:, :-1][same]).all()


def test_sharded_ivf_search_params():
    ids, x, queries = data(n=4000)
    truth = build_index(x, ids).search(queries, 10)[1]
    sharded = build_index(x, ids, "IVF16,Flat", n_shards=2)
    assert recall(sharded.search(queries, 10, nprobe=16)[1], truth) == 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda x, ids: build_index(x, ids),
        lambda x, ids: build_index(x, ids, metric="l2"),
        lambda x, ids: build_index(x, ids, "IVF16,Flat", nprobe=4),
        lambda x, ids: build_index(x, ids, "HNSW16", efSearch=40),
        lambda x, ids: build_index(x, ids, "IVF16,SQ8", nprobe=3),
        lambda x, ids: build_index(x, ids, n_shards=3),
    ],
    ids=["flat", "flat-l2", "ivf", "hnsw", "ivf-sq8", "sharded"],
)
def test_save_load_round_trip(tmp_path, make):
    ids, x, queries = data(n=1500)
    ids[7] = "id with spaces, tabs\tand ünïcode"
    index = make(x, ids)
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert type(loaded) is type(index)
    assert len(loaded) == len(index) and loaded.dim == index.dim
    assert (loaded.ids == index.ids).all()
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        assert np.array_equal(a, b)
    assert type(index).load(tmp_path / "index").factory == index.factory


def test_save_is_atomic(tmp_path, monkeypatch):
    ids, x, queries = data(n=200)
    old = build_index(x[:100], ids[:100])
    old.save(tmp_path / "index")
    expected = old.search(queries, 5)

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(OSError):
        build_index(x, ids).save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    assert len(loaded) == 100
    for a, b in zip(expected, loaded.search(queries, 5)):
        assert np.array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary folder left behind


def test_load_errors(tmp_path):
    with pytest.raises(ReprlabError, match="meta.json"):
        Index.load(tmp_path)
    ids, x, _ = data(n=50)
    build_index(x, ids, n_shards=2).save(tmp_path / "sharded")
    with pytest.raises(ConfigError, match="ShardedIndex"):
        FaissIndex.load(tmp_path / "sharded")


def test_bad_factory_is_config_error():
    with pytest.raises(ConfigError) as err:
        FaissIndex(D, "IVF,Flatt")
    assert "'IVF,Flatt'" in str(err.value) and "HNSW32" in str(err.value)
    with pytest.raises(ConfigError, match="metric"):
        FaissIndex(D, metric="cosine")
    with pytest.raises(ConfigError, match="IDMap"):
        FaissIndex(D, "IDMap,Flat")


def test_too_few_training_vectors_is_config_error():
    ids, x, _ = data(n=100)
    index = FaissIndex(D, "IVF256,Flat")
    with pytest.raises(ConfigError, match=r"'IVF256,Flat' on 100 vectors"):
        index.add(ids, x)
    assert len(index) == 0


def test_bad_inputs():
    ids, x, queries = data(n=10)
    index = FaissIndex(D)
    with pytest.raises(ReprlabError, match="shape"):
        index.add(ids, x[:, :5])
    with pytest.raises(ReprlabError, match="ids for"):
        index.add(ids[:3], x)
    with pytest.raises(ReprlabError, match="duplicate id 'doc-1'"):
        index.add(["doc-1"] + ids[1:], x)
    index.add(ids, x)
    with pytest.raises(ReprlabError, match="duplicate id 'doc-0'"):
        index.add(ids[:1], x[:1])
    with pytest.raises(ReprlabError, match="shape"):
        index.search(queries[0], 3)
    with pytest.raises(ReprlabError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ConfigError, match="nprobe"):
        index.search(queries, 3, nprobe=4)
    with pytest.raises(ConfigError, match="n_shards"):
        ShardedIndex(D, 0)
