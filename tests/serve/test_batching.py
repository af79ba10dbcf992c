"""The encode batcher: concurrent requests share forward passes, never across encoders, and get their own rows."""

import asyncio

import numpy as np
import pytest

from reprlab.serve.batching import EncodeBatcher


class Fake:
    """An encoder whose vector of a text is (its tag, len(text)); records the batches it is called with."""

    def __init__(self, tag: float, fail: bool = False):
        self.tag, self.fail, self.calls = tag, fail, []

    def encode(self, texts, batch_size=32, max_length=None, show_progress=None, precision="fp32"):
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("broken encoder")
        return np.array([[self.tag, len(t)] for t in texts], dtype=np.float32)


def test_requests_are_batched_per_encoder_and_answered_with_their_own_rows():
    a, b, broken = Fake(1.0), Fake(2.0), Fake(3.0, fail=True)

    async def main():
        batcher = EncodeBatcher(max_batch=64, wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(batcher.encode(a, ["x"]), batcher.encode(b, ["yy"]),
                                        batcher.encode(a, ["zzz", "wwww"]), batcher.encode(broken, ["v"]),
                                        return_exceptions=True)
        finally:
            await batcher.close()

    first, second, third, failed = asyncio.run(main())
    assert first.tolist() == [[1.0, 1.0]] and second.tolist() == [[2.0, 2.0]]
    assert third.tolist() == [[1.0, 3.0], [1.0, 4.0]]
    assert isinstance(failed, RuntimeError)  # a broken encoder fails its own batch only
    assert a.calls == [["x", "zzz", "wwww"]] and b.calls == [["yy"]]  # one pass per encoder


@pytest.mark.parametrize("max_batch", [2, 3])
def test_a_batch_closes_at_max_batch(max_batch):
    a = Fake(1.0)

    async def main():
        batcher = EncodeBatcher(max_batch=max_batch, wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.encode(a, [str(i) * (i + 1)]) for i in range(5)))
        finally:
            await batcher.close()

    out = asyncio.run(main())
    assert [int(v[0, 1]) for v in out] == [1, 2, 3, 4, 5]
    assert all(len(call) <= max_batch for call in a.calls) and sum(map(len, a.calls)) == 5


class Vectors:
    """An encoder whose vector of a text is a fixed random unit vector of it (seeded by the text)."""

    def __init__(self, dim: int = 16):
        self.dim, self.calls = dim, []

    def encode(self, texts, batch_size=32, max_length=None, show_progress=None, precision="fp32"):
        self.calls.append(list(texts))
        rows = [np.random.default_rng(sum(map(ord, t)) + len(t)).standard_normal(self.dim) for t in texts]
        v = np.array(rows, dtype=np.float32)  # (N, d)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class Counted:
    """An index that counts its search calls and the queries of each."""

    def __init__(self, index):
        self.index, self.calls = index, []

    def search(self, queries, k):
        self.calls.append((len(queries), k))
        return self.index.search(queries, k)


def _index(seed: int, n: int = 200, dim: int = 16):
    from reprlab.retrieval.index import FaissIndex

    docs = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)  # (n, d)
    index = FaissIndex(dim)
    index.add([f"s{seed}-d{i}" for i in range(n)], docs)
    return Counted(index)


def test_batched_search_gives_each_request_the_hits_of_its_query_alone():
    encoder, first, second = Vectors(), _index(0), _index(1)
    requests = [(f"query number {i} " + "x" * i, first if i % 3 else second, 5 if i % 2 else 12) for i in range(30)]

    async def main():
        batcher = EncodeBatcher(max_batch=64, wait_ms=50)
        batcher.start()
        try:  # an /encode request of 3 texts joins the batch first: the search rows start at 3
            return await asyncio.gather(batcher.encode(encoder, ["e1", "e22", "e333"]),
                                        *(batcher.encode_search(encoder, text, index, depth)
                                          for text, index, depth in requests))
        finally:
            await batcher.close()

    encoded, *out = asyncio.run(main())
    # one forward pass for the 3 texts and the 30 queries
    assert encoder.calls == [["e1", "e22", "e333"] + [text for text, _, _ in requests]]
    np.testing.assert_array_equal(encoded, encoder.encode(["e1", "e22", "e333"]))
    # one index search per (index, depth) of the batch, holding all the queries of that group
    assert sorted(first.calls + second.calls) == sorted([(10, 5), (10, 12), (5, 5), (5, 12)])
    for (text, index, depth), (vector, scores, ids) in zip(requests, out):
        alone = encoder.encode([text])  # (1, d)
        want_scores, want_ids = index.index.search(alone, depth)  # (1, depth)
        np.testing.assert_allclose(vector, alone[0], rtol=0, atol=0)
        assert ids.shape == (1, depth) and ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_search_outside_the_running_batcher_searches_alone():
    encoder, index = Vectors(), _index(2)
    batcher = EncodeBatcher()
    vector, scores, ids = asyncio.run(batcher.encode_search(encoder, "a query", index, 4))
    want_scores, want_ids = index.index.search(encoder.encode(["a query"]), 4)
    assert ids.tolist() == want_ids.tolist() and index.calls == [(1, 4)]
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_two_workers_encode_two_batches_at_once():
    a = _slow_counting(1.0)

    out = _encode_all(a, [[str(i) * (i + 1)] for i in range(4)], max_batch=2, workers=2)
    assert [int(v[0, 1]) for v in out] == [1, 2, 3, 4] and sorted(map(len, a.calls)) == [2, 2]
    assert a.most == 2  # the two batches were encoded at the same time


def test_a_batch_is_shared_among_the_free_workers():
    """All requests queued at once (32 closed-loop users right after an answer) go to both workers, not one."""
    a = _slow_counting(1.0)

    out = _encode_all(a, [[str(i % 10) * (i + 1)] for i in range(12)], max_batch=64, workers=2, min_split=4)
    assert [int(v[0, 1]) for v in out] == list(range(1, 13))  # every request its own row
    assert sorted(map(len, a.calls)) == [6, 6] and a.most == 2  # two halves, encoded at the same time


def test_a_small_batch_is_not_split():
    a = _slow_counting(1.0)

    _encode_all(a, [["x" * (i + 1)] for i in range(7)], max_batch=64, workers=2, min_split=4)
    assert [len(c) for c in a.calls] == [7]  # 7 texts cannot make two parts of >= 4


@pytest.mark.parametrize("sizes, parts, least, want", [
    ([1] * 32, 2, 4, [16, 16]),
    ([1] * 32, 3, 4, [11, 11, 10]),
    ([1] * 7, 2, 4, [7]),  # too few texts for two parts of 4
    ([1] * 8, 2, 4, [4, 4]),
    ([10, 1, 1], 2, 4, [10, 2]),  # cut only at request boundaries
    ([1, 1], 5, 1, [1, 1]),  # never more parts than requests
    ([3, 3, 3, 3], 1, 1, [12]),
])
def test_split_batch(sizes, parts, least, want):
    from reprlab.serve.batching import _Pending, split_batch

    loop = asyncio.new_event_loop()
    try:
        batch = [_Pending(None, ["t"] * n, None, "fp32", loop.create_future()) for n in sizes]
        got = split_batch(batch, parts, least)
    finally:
        loop.close()
    assert [sum(len(item.texts) for item in part) for part in got] == want
    assert [item for part in got for item in part] == batch  # every request once, in order


def _encode_all(encoder, requests: list[list[str]], **batcher_options) -> list:
    """Send every request at once to a running batcher (``wait_ms`` 20) and return their answers in order."""

    async def main():
        batcher = EncodeBatcher(wait_ms=20, **batcher_options)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.encode(encoder, texts) for texts in requests))
        finally:
            await batcher.close()

    return asyncio.run(main())


def _slow_counting(tag: float):
    import threading
    import time

    class Slow(Fake):
        """Takes 0.2 s per batch and records how many batches were being encoded at once."""

        def __init__(self):
            super().__init__(tag)
            self.now, self.most, self.lock = 0, 0, threading.Lock()

        def encode(self, texts, **kw):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.2)
            with self.lock:
                self.now -= 1
            return super().encode(texts, **kw)

    return Slow()


def test_truncated_tokenizing_is_safe_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    from reprlab.text import Tokenizer

    tok = Tokenizer.from_pretrained("minilm")
    texts = [" ".join(["word"] * n) for n in range(5, 60, 5)]
    want = {m: [e.ids for e in tok.encode_truncated(texts, m)] for m in (8, 16, 32)}
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda m: (m, [e.ids for e in tok.encode_truncated(texts, m)]), [8, 16, 32] * 40))
    assert all(ids == want[m] for m, ids in got)
    assert max(map(len, want[8])) == 8 and len(tok.encode_raw(texts)[-1].ids) > 32  # truncation reset after


def test_default_workers_split_the_torch_threads(monkeypatch):
    import torch

    from reprlab.serve.config import ServeConfig
    from reprlab.serve.service import default_workers

    assert ServeConfig(index="x").encode_workers == 0  # automatic unless set
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers("torch") == 2 and default_workers("onnx-int8") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_workers("torch") == 1
