"""The Qdrant index kind against FAISS Flat, its payload filters, upload retries and its errors.

Qdrant runs in qdrant-client's local mode (in memory, or in a folder): the code path is the one that
talks to a server by URL, except for the transport. The unreachable server is a closed port on
127.0.0.1.
"""

import json
import socket
import time

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from qdrant_client.http.exceptions import ResponseHandlingException  # noqa: E402

from reprlab.cli import main  # noqa: E402
from reprlab.errors import ConfigError, DataFormatError, ReprlabError  # noqa: E402
from reprlab.retrieval.dense import DenseRetriever  # noqa: E402
from reprlab.retrieval.index import FaissIndex, Index  # noqa: E402
from reprlab.retrieval.qdrant import QdrantIndex, read_metadata  # noqa: E402


def data(n=300, dim=16, queries=25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return [f"d{i}" for i in range(n)], x, rng.standard_normal((queries, dim)).astype(np.float32)


def payloads(n):
    return [{"year": 2000 + i % 4, "lang": ["en", "de", "fr"][i % 3], "title": f"t{i}", "text": ""} for i in range(n)]


def test_same_top_k_as_faiss_flat():
    ids, x, q = data()
    flat = FaissIndex(16)
    flat.add(ids, x)
    index = QdrantIndex(16, upload_batch=64)
    index.add(ids, x, payloads=payloads(len(ids)))
    assert len(index) == 300 and index.dim == 16
    for k in (1, 10, 50):
        s1, i1 = flat.search(q, k)
        s2, i2 = index.search(q, k)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-5)
    s, i = index.search(q[:2], 10_000)  # k clamped to the index size
    assert s.shape == (2, 300) and set(i[0]) == set(ids)


def test_ties_are_ordered_by_insertion_position_as_in_faiss():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 8)).astype(np.float32)
    x = np.repeat(base, 6, axis=0)  # every vector six times
    ids = [f"d{i}" for i in range(30)][::-1]  # insertion order differs from the id order
    flat, index = FaissIndex(8), QdrantIndex(8)
    flat.add(ids, x)
    index.add(ids, x)
    for k in (3, 6, 8):
        np.testing.assert_array_equal(flat.search(base, k)[1], index.search(base, k)[1])


def test_filters_return_only_matching_payloads():
    ids, x, q = data()
    meta = payloads(len(ids))
    index = QdrantIndex(16)
    index.add(ids, x, payloads=meta)
    keep = [i for i, m in zip(ids, meta) if m["year"] == 2001]
    subset = FaissIndex(16)
    subset.add(keep, x[[ids.index(i) for i in keep]])
    _, found = index.search(q, 10, filter={"year": 2001})
    assert all(meta[ids.index(i)]["year"] == 2001 for i in found.ravel())
    np.testing.assert_array_equal(found, subset.search(q, 10)[1])  # the exact top-10 of the matching points
    _, found = index.search(q, 10, filter={"lang": ["de", "fr"], "year": 2002})
    assert all(meta[ids.index(i)]["lang"] in ("de", "fr") and meta[ids.index(i)]["year"] == 2002
               for i in found.ravel() if i is not None)
    # fewer matches than k: padded
    scores, found = index.search(q[:1], 100, filter={"title": ["t1", "t2"]})
    assert sorted(found[0, :2]) == ["d1", "d2"] and found[0, 2] is None and scores[0, 2] == -np.inf
    assert index.payloads(["d5"]) == {"d5": meta[5]}
    with pytest.raises(ConfigError, match="a filter is a dict"):
        index.search(q, 10, filter="year=2001")


def test_a_failed_upload_batch_is_retried_then_reported(monkeypatch):
    ids, x, q = data(100)
    index = QdrantIndex(16, upload_batch=30, retry_delay=0.0, retries=2)
    real = index.client.upsert
    calls = []

    def once_flaky(*args, **kwargs):
        calls.append(len(kwargs["points"].ids))
        if len(calls) == 2:  # the second batch fails once
            raise ResponseHandlingException(ConnectionError("connection reset"))
        return real(*args, **kwargs)

    monkeypatch.setattr(index.client, "upsert", once_flaky)
    index.add(ids, x)
    assert calls == [30, 30, 30, 30, 10] and len(index) == 100
    assert index.client.count(index.collection).count == 100
    flat = FaissIndex(16)
    flat.add(ids, x)
    np.testing.assert_array_equal(index.search(q, 5)[1], flat.search(q, 5)[1])

    broken = QdrantIndex(16, collection="b", upload_batch=30, retry_delay=0.0, retries=2)
    real_b, tries = broken.client.upsert, []

    def down_after_one(*args, **kwargs):
        tries.append(1)
        if len(tries) > 1:
            raise ResponseHandlingException(ConnectionError("server went away"))
        return real_b(*args, **kwargs)

    monkeypatch.setattr(broken.client, "upsert", down_after_one)
    with pytest.raises(ReprlabError, match=r"uploading rows 30..59 .* failed 3 times: server went away\. "
                                           r"The 30 points before them are stored"):
        broken.add(ids, x)
    assert len(tries) == 4 and len(broken) == 30  # 1 + (1 try + 2 retries); the index holds what was stored


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is


def test_an_unreachable_server_is_one_clear_error():
    url = f"http://127.0.0.1:{closed_port()}"
    t0 = time.time()
    with pytest.raises(ReprlabError, match=f"cannot reach Qdrant at {url}: .*check that the server runs"):
        QdrantIndex(16, url=url, timeout=1)
    assert time.time() - t0 < 10


def test_a_collection_with_another_dimension(tmp_path):
    ids, x, _ = data(20, dim=8)
    index = QdrantIndex(8, collection="docs", path=tmp_path / "q")
    index.add(ids, x)
    index.close()
    with pytest.raises(ConfigError, match="collection 'docs' at local folder .* holds 8-d vectors, this index has "
                                          "dim 16"):
        QdrantIndex(16, collection="docs", path=tmp_path / "q")
    with pytest.raises(ConfigError, match="already holds 20 points"):
        QdrantIndex(8, collection="docs", path=tmp_path / "q")
    replaced = QdrantIndex(16, collection="docs", path=tmp_path / "q", overwrite=True)
    assert len(replaced) == 0
    replaced.close()


def test_save_and_load_reconnect_and_check_the_collection(tmp_path):
    ids, x, q = data(40)
    index = QdrantIndex(16, collection="c", path=tmp_path / "q")
    index.add(ids, x)
    index.set_search_params(hnsw_ef=64)
    expected = index.search(q, 5)
    index.save(tmp_path / "idx")
    index.close()
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["kind"] == "qdrant" and meta["collection"] == "c" and meta["dim"] == 16 and meta["count"] == 40
    back = Index.load(tmp_path / "idx")
    assert isinstance(back, QdrantIndex) and back.search_params == {"hnsw_ef": 64}
    np.testing.assert_array_equal(back.search(q, 5)[1], expected[1])
    back.add(["extra"], x[:1])  # the collection changes behind the saved folder
    back.close()
    with pytest.raises(DataFormatError, match="holds 41 points, the folder says 40"):
        Index.load(tmp_path / "idx")
    with pytest.raises(ConfigError, match="cannot be saved"):
        QdrantIndex(16).save(tmp_path / "mem")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="quantization"):
        QdrantIndex(16, quantization="int4")
    with pytest.raises(ConfigError, match="no search parameter 'nprobe'"):
        QdrantIndex(16).search(np.zeros((1, 16), np.float32), 3, nprobe=4)
    index = QdrantIndex(16)
    index.add(["a"], np.ones((1, 16), np.float32))
    with pytest.raises(ReprlabError, match="duplicate id 'a'"):
        index.add(["a"], np.ones((1, 16), np.float32))


def test_cli_index_into_qdrant_with_metadata_payloads(tmp_path, tiny_model_dir, capsys):
    rows = [{"_id": f"p{i}", "title": f"paper {i}", "text": f"dense retrieval of topic {i % 3}",
             "metadata": {"year": 2019 + i % 2}} for i in range(12)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_metadata(path)["p3"] == {"year": 2020}
    out = tmp_path / "idx"
    assert main(["-q", "index", "--corpus", str(path), "--model", str(tiny_model_dir), "--out", str(out),
                 "--backend", "qdrant", "--upload-batch", "5"]) == 0
    retriever = DenseRetriever.load(out)
    assert isinstance(retriever.index, QdrantIndex) and retriever.index.path == str(tmp_path / "idx.qdrant")
    _, found = retriever.search(["topic 1"], k=12, filter={"year": 2020})
    assert sorted(found[0][:6]) == sorted(f"p{i}" for i in range(12) if i % 2 == 1)  # the 6 papers of 2020
    assert found[0][6:].tolist() == [None] * 6
    assert retriever.index.payloads(["p3"])["p3"] == {"year": 2020, "title": "paper 3",
                                                      "text": "dense retrieval of topic 0"}
    retriever.index.close()
    assert main(["search", "--index", str(out), "dense retrieval", "-k", "3"]) == 0
    assert "paper" in capsys.readouterr().out
