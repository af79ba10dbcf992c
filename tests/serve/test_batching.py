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
