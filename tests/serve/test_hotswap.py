"""Index hot swap: versions load off the request path and swap atomically; a request uses one version."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from reprlab.retrieval.index import FaissIndex  # noqa: E402
from reprlab.serve import ServeConfig  # noqa: E402
from reprlab.serve.state import IndexSlot, VersionWatcher, load_version, newest_version  # noqa: E402

QUERIES = ["virus in the lung", "protein of the heart", "brain drug", "liver blood gene", "cell study"]


def publish(root, number: int, ids: list[str], dim: int, seed: int):
    """An ANCE-style version: index-vNNNN/index/ holds vectors and ids only (random, so each version ranks
    the documents its own way)."""
    vectors = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(dim)
    index.add(ids, vectors)
    folder = root / f"index-v{number:04d}"
    index.save(folder / "index")
    return folder


@pytest.fixture
def versions(tmp_path, index_dir):
    from reprlab.serve.state import Encoders

    encoders = Encoders()
    base = load_version(index_dir, encoders)
    ids = base.index.ids.tolist()
    folders = [publish(tmp_path / "ance", n, ids, base.index.dim, seed=n) for n in (1, 2)]
    return base, [load_version(f, encoders, base=base) for f in folders], encoders, tmp_path / "ance"


def expected(version, k=5):
    vectors = version.retriever.model.encode(QUERIES)
    return {q: list(version.index.search(vectors[i: i + 1], k)[1][0]) for i, q in enumerate(QUERIES)}


def test_concurrent_requests_each_see_one_whole_version(versions):
    from reprlab.serve import Service, create_app

    base, (v1, v2), encoders, _ = versions
    truth = {v.name: expected(v) for v in (base, v1, v2)}
    assert truth[v1.name] != truth[v2.name] != truth[base.name]  # the versions really answer differently
    service = Service(IndexSlot(base), encoders, batch_wait_ms=1)
    app = create_app(service)
    stop = threading.Event()

    def swapper():
        order = [v1, v2, base]
        i = 0
        while not stop.is_set():
            service.slot.swap(order[i % 3])
            i += 1
            time.sleep(0.002)

    async def main():
        await service.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                requests = [client.post("/search", json={"query": q, "k": 5}) for q in QUERIES * 40]
                return await asyncio.gather(*requests)
        finally:
            await service.stop()

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        responses = asyncio.run(main())
    finally:
        stop.set()
        thread.join()
    assert all(r.status_code == 200 for r in responses)
    seen = set()
    for r in responses:
        body = r.json()
        seen.add(body["index_version"])
        assert [h["id"] for h in body["results"]] == truth[body["index_version"]][body["query"]]
    assert len(seen) >= 2 and service.slot.swaps > 10  # requests really ran across swaps


def test_a_request_in_flight_finishes_on_its_version(versions):
    from reprlab.serve import Service, create_app

    base, (v1, _), encoders, _ = versions
    truth = expected(base)
    model = base.retriever.model
    entered = threading.Event()

    class Slow:  # the query encoder of the old version, slowed so that the swap lands mid-request
        tokenizer = model.tokenizer

        def encode(self, texts, **kw):
            entered.set()
            time.sleep(0.5)
            return model.encode(texts, **kw)

    base.retriever.model = Slow()
    try:
        service = Service(IndexSlot(base), encoders)
        app = create_app(service)

        async def main():
            await service.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                    pending = asyncio.ensure_future(client.post("/search", json={"query": QUERIES[0], "k": 5}))
                    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
                    service.slot.swap(v1)  # while the request is inside the encoder
                    return await pending, await client.post("/search", json={"query": QUERIES[0], "k": 5})
            finally:
                await service.stop()

        old, new = asyncio.run(main())
    finally:
        base.retriever.model = model
    assert old.json()["index_version"] == base.name
    assert [h["id"] for h in old.json()["results"]] == truth[QUERIES[0]]
    assert new.json()["index_version"] == v1.name


def test_the_watcher_loads_the_newest_version_and_skips_bad_ones(versions, tmp_path):
    base, _, encoders, root = versions
    slot = IndexSlot(base)
    watcher = VersionWatcher(slot, root, encoders)
    assert watcher.check_once() and slot.current.name == "index-v0002"
    assert not watcher.check_once()  # nothing newer
    bad = root / "index-v0003"
    index = FaissIndex(base.index.dim)
    index.add(["not-a-document"], np.ones((1, base.index.dim), np.float32))
    index.save(bad / "index")
    assert not watcher.check_once() and slot.current.name == "index-v0002"  # a version that does not fit
    publish(root, 4, base.index.ids.tolist(), base.index.dim, seed=4)
    assert newest_version(root).name == "index-v0004"
    assert watcher.check_once() and slot.current.name == "index-v0004"


def test_a_served_folder_of_versions_starts_on_the_newest(tmp_path, index_dir):
    import shutil

    from reprlab.serve import Service

    root = tmp_path / "versions"
    for n in (1, 7):  # full index folders as versions
        shutil.copytree(index_dir, root / f"index-v{n:04d}")
    service = Service.from_config(ServeConfig(index=str(root)))
    assert service.slot.current.name == "index-v0007" and service.watcher is not None
