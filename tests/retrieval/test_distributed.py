"""Vector shards: equal to the single-process encoder, resumable, atomic, and refused when foreign.

The fast tests run the shard writer in process (engine "local", the same ShardEncoder the Ray actors
run) on a tiny random encoder; the Ray tests (slow: a local Ray takes ~10 s to start) run the actor
pool in a local Ray with 2 CPUs and check that it leaves no process behind.
"""

import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from reprlab.cli import main  # noqa: E402
from reprlab.errors import ConfigError, DataFormatError  # noqa: E402
from reprlab.retrieval.dense import DenseRetriever  # noqa: E402
from reprlab.retrieval.distributed import (check_folder, encode_shards, index_from_shards, plan_shards,  # noqa: E402
                                           read_manifest, read_vectors)
from reprlab.retrieval.index import FaissIndex  # noqa: E402

WORDS = "dense sparse vector index shard cluster query passage model ray actor encode manifest".split()


def make_corpus(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return {f"doc{i:03d}": {"title": f"title {i}", "text": " ".join(rng.choice(WORDS, size=3 + i % 11))}
            for i in range(n)}


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with one weight changed: another model of the same shape."""
    import torch

    from reprlab.encoder import SentenceEncoder

    model = SentenceEncoder.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    folder = tmp_path_factory.mktemp("other") / "model"
    model.save_pretrained(folder)
    return folder


def single_process(model_dir, corpus, batch_size=8):
    return DenseRetriever.from_model(str(model_dir), batch_size=batch_size).encode_corpus(corpus, show_progress=False)


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.parquet"))}


def test_plan_covers_the_corpus_in_order():
    ids = [f"d{i}" for i in range(23)]
    shards = plan_shards(ids, 5)
    assert [(s.start, s.stop) for s in shards] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert len({s.ids_sha256 for s in shards}) == 5
    with pytest.raises(ConfigError, match="shard_size"):
        plan_shards(ids, 0)


def test_local_shards_equal_the_single_process_vectors(tmp_path, tiny_model_dir):
    corpus = make_corpus()
    ids, reference = single_process(tiny_model_dir, corpus)
    report = encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5, batch_size=8)
    assert report.encoded == [0, 1, 2, 3, 4] and report.kept == [] and report.complete
    got_ids, vectors = read_vectors(tmp_path / "v")
    assert got_ids == ids
    np.testing.assert_allclose(vectors, reference, atol=1e-6, rtol=0)
    manifest = read_manifest(tmp_path / "v")
    assert manifest["count"] == 23 and all(s["written"] for s in manifest["shards"])


def test_float16_shards_round_to_half_precision(tmp_path, tiny_model_dir):
    corpus = make_corpus(9)
    _, reference = single_process(tiny_model_dir, corpus)
    encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=4, dtype="float16", batch_size=8)
    _, vectors = read_vectors(tmp_path / "v")
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, reference.astype(np.float16).astype(np.float32))


def test_max_length_truncates_like_the_single_process_and_is_part_of_the_job(tmp_path, tiny_model_dir):
    corpus = {f"d{i}": {"title": "", "text": " ".join(WORDS * 3)} for i in range(4)}  # ~45 tokens each
    short = DenseRetriever.from_model(str(tiny_model_dir), batch_size=8)
    short.doc_model.max_length = 8
    _, reference = short.encode_corpus(corpus, show_progress=False)
    _, untruncated = single_process(tiny_model_dir, corpus)
    assert np.abs(reference - untruncated).max() > 1e-3  # the setting matters on these passages
    encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=2, batch_size=8, max_length=8)
    np.testing.assert_allclose(read_vectors(tmp_path / "v")[1], reference, atol=1e-6, rtol=0)
    assert read_manifest(tmp_path / "v")["max_length"] == 8
    with pytest.raises(ConfigError, match="another job: its max length"):
        encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=2, max_length=16)
    with pytest.raises(ConfigError, match="max_length"):
        encode_shards(corpus, tmp_path / "w", model=str(tiny_model_dir), max_length=1)


def test_a_stopped_job_resumes_and_writes_only_the_missing_shards(tmp_path, tiny_model_dir):
    corpus = make_corpus()
    first = encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5, stop_after=2)
    assert first.encoded == [0, 1] and not first.complete
    with pytest.raises(DataFormatError, match="not written yet"):
        read_vectors(tmp_path / "v")
    before = mtimes(tmp_path / "v")
    # a killed writer's temporary file is cleaned up on resume
    (tmp_path / "v" / ".shard-00002.parquet.999999999.abc.tmp").write_bytes(b"half a shard")
    second = encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5)
    assert second.kept == [0, 1] and second.encoded == [2, 3, 4]
    after = mtimes(tmp_path / "v")
    assert {name: after[name] for name in before} == before  # the written shards were not rewritten
    assert not list((tmp_path / "v").glob(".*.tmp"))
    encode_shards(corpus, tmp_path / "u", model=str(tiny_model_dir), shard_size=5)
    ids, resumed = read_vectors(tmp_path / "v")
    ids2, uninterrupted = read_vectors(tmp_path / "u")
    assert ids == ids2
    np.testing.assert_array_equal(resumed, uninterrupted)


def test_a_shard_write_that_fails_leaves_no_file(tmp_path, tiny_model_dir, monkeypatch):
    import pyarrow.parquet as pq

    corpus = make_corpus(12)
    real = pq.write_table
    calls = []

    def flaky(table, where, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            where.write(b"PAR1 partial")
            raise OSError("disk full")
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError, match="disk full"):
        encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5)
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["manifest.json", "shard-00000.parquet"]
    monkeypatch.setattr(pq, "write_table", real)
    report = encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5)
    assert report.kept == [0] and report.encoded == [1, 2]


def test_the_manifest_rejects_a_shard_from_another_model(tmp_path, tiny_model_dir, other_model_dir):
    corpus = make_corpus()
    encode_shards(corpus, tmp_path / "a", model=str(tiny_model_dir), shard_size=5)
    encode_shards(corpus, tmp_path / "b", model=str(other_model_dir), shard_size=5)
    shutil.copy(tmp_path / "b" / "shard-00003.parquet", tmp_path / "a" / "shard-00003.parquet")
    with pytest.raises(DataFormatError, match="shard-00003.parquet: encoded by another model"):
        read_vectors(tmp_path / "a")
    # resuming does not overwrite the foreign file silently either
    with pytest.raises(DataFormatError, match="encoded by another model"):
        encode_shards(corpus, tmp_path / "a", model=str(tiny_model_dir), shard_size=5)


def test_a_folder_of_another_job_is_not_resumed(tmp_path, tiny_model_dir, other_model_dir):
    corpus = make_corpus()
    encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5, stop_after=1)
    with pytest.raises(ConfigError, match="another job: its model weights"):
        encode_shards(corpus, tmp_path / "v", model=str(other_model_dir), shard_size=5)
    with pytest.raises(ConfigError, match="another job: its shard size"):
        encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=6)
    with pytest.raises(ConfigError, match="another job: its corpus ids"):
        encode_shards(make_corpus(24), tmp_path / "v", model=str(tiny_model_dir), shard_size=5)


def test_a_manifest_that_does_not_match_its_shards(tmp_path, tiny_model_dir):
    corpus = make_corpus()
    folder = tmp_path / "v"
    encode_shards(corpus, folder, model=str(tiny_model_dir), shard_size=5)
    # a shard of the same model in the wrong place
    shutil.copy(folder / "shard-00000.parquet", tmp_path / "saved")
    shutil.copy(folder / "shard-00001.parquet", folder / "shard-00000.parquet")
    with pytest.raises(DataFormatError, match=r"shard-00000.parquet: does not match the manifest: shard 1 "
                                              r"\(manifest: 0\), ids_sha256"):
        check_folder(folder)
    shutil.copy(tmp_path / "saved", folder / "shard-00000.parquet")
    check_folder(folder)
    # a missing file
    (folder / "shard-00004.parquet").rename(tmp_path / "away")
    with pytest.raises(DataFormatError, match="lists shard-00004.parquet but the file is missing"):
        read_vectors(folder)
    (tmp_path / "away").rename(folder / "shard-00004.parquet")
    # a manifest edited to another count
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["count"] = 22
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="do not add up to the manifest's count"):
        read_vectors(folder)


def test_an_index_built_from_shards_equals_the_in_process_index(tmp_path, tiny_model_dir):
    corpus = make_corpus()
    ids, reference = single_process(tiny_model_dir, corpus)
    encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=5, batch_size=8)
    direct, sharded = FaissIndex(reference.shape[1]), FaissIndex(reference.shape[1])
    direct.add(ids, reference)
    index_from_shards(tmp_path / "v", sharded)
    assert sharded.ids.tolist() == ids
    np.testing.assert_array_equal(direct.search(reference[:5], 4)[1], sharded.search(reference[:5], 4)[1])


def test_a_trained_index_is_trained_on_the_first_vectors_of_the_shards(tmp_path, tiny_model_dir, monkeypatch):
    corpus = make_corpus(40)
    encode_shards(corpus, tmp_path / "v", model=str(tiny_model_dir), shard_size=7, batch_size=8)
    ids, vectors = read_vectors(tmp_path / "v")
    index = FaissIndex(vectors.shape[1], factory="IVF2,Flat")
    seen = []
    real = index.train
    monkeypatch.setattr(index, "train", lambda x: (seen.append(x.copy()), real(x)))
    index_from_shards(tmp_path / "v", index, train_rows=10)  # spans two shards
    np.testing.assert_array_equal(seen[0], vectors[:10])
    assert index.ids.tolist() == ids and index.index.is_trained


def test_cli_index_through_shards_then_search(tmp_path, tiny_model_dir, capsys):
    corpus = make_corpus()
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, **d}) + "\n" for i, d in corpus.items()))
    args = ["-q", "index", "--corpus", str(path), "--model", str(tiny_model_dir), "--out", str(tmp_path / "idx"),
            "--vectors", str(tmp_path / "vec"), "--shard-size", "7"]
    assert main(args) == 0
    assert len(list((tmp_path / "vec").glob("shard-*.parquet"))) == 4
    assert main(["search", "--index", str(tmp_path / "idx"), "vector shard", "-k", "2"]) == 0
    assert "doc" in capsys.readouterr().out


def stored_vectors(index):
    """The vectors (float index) or codes (binary index) an index folder holds, in insertion order."""
    import faiss

    inner = index.index
    if isinstance(inner, faiss.IndexBinary):
        return faiss.vector_to_array(inner.xb).reshape(inner.ntotal, -1)  # (N, bits / 8) codes
    return inner.reconstruct_n(0, inner.ntotal)  # (N, dim)


@pytest.mark.parametrize("extra", [[], ["--binary", "256"], ["--vectors", "VEC"],
                                   pytest.param(["--engine", "ray"], marks=pytest.mark.slow)],  # ~20 s: a local Ray
                         ids=["in-process", "binary", "local shards", "ray"])
def test_cli_index_max_length_reaches_every_engine(tmp_path, tiny_model_dir, extra):
    if "ray" in extra:
        pytest.importorskip("ray")
    corpus = {f"d{i}": {"title": "", "text": " ".join(WORDS[i:] * 3)} for i in range(4)}  # ~30-45 tokens each
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, **d}) + "\n" for i, d in corpus.items()))
    short = DenseRetriever.from_model(str(tiny_model_dir), batch_size=8)
    short.doc_model.max_length = 8
    ids, truncated = short.encode_corpus(corpus, show_progress=False)
    _, full = single_process(tiny_model_dir, corpus)
    extra = [str(tmp_path / "vec") if e == "VEC" else e for e in extra]
    assert main(["-q", "index", "--corpus", str(path), "--model", str(tiny_model_dir), "--out", str(tmp_path / "idx"),
                 "--max-length", "8", *extra]) == 0
    index = DenseRetriever.load(tmp_path / "idx").index
    assert index.ids.tolist() == ids
    got = stored_vectors(index)
    if "--binary" in extra:
        expected, untruncated = index.encode(truncated), index.encode(full)
        assert not np.array_equal(expected, untruncated)  # the setting matters to the codes
        np.testing.assert_array_equal(got, expected)
    else:
        assert np.abs(truncated - full).max() > 1e-3
        np.testing.assert_allclose(got, truncated, atol=1e-6, rtol=0)


def test_cli_index_max_length_below_two_is_refused(tmp_path, capsys):
    assert main(["index", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"), "--max-length", "1"]) == 2
    assert "--max-length" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--num-workers", "4"], "--num-workers is an option of distributed encoding: add --engine ray"),
    (["--quantization", "scalar"], "--quantization is an option of the qdrant backend: add --backend qdrant"),
    (["--backend", "qdrant", "--factory", "HNSW32"], "--backend qdrant stores float vectors"),
])
def test_cli_scale_options_are_checked(tmp_path, capsys, extra, message):
    assert main(["index", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- Ray (local, 2 CPUs)


def ray_processes(since: float) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "create_time", "uids"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
            if p.info["create_time"] >= since - 1 and p.info["uids"].real == os.getuid() and p.pid != os.getpid() \
                    and ("ray::" in line or "/ray/" in line or "raylet" in line or "gcs_server" in line):
                found.append((p.pid, line[:80]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def wait_for_no_ray(since: float, seconds: float = 30.0) -> list:
    deadline = time.time() + seconds
    while (left := ray_processes(since)) and time.time() < deadline:
        time.sleep(0.5)
    return left


# not slow (~20 s): CI runs it, the test extra installs ray
def test_ray_shards_equal_the_single_process_vectors_and_resume(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    corpus = make_corpus()
    ids, reference = single_process(tiny_model_dir, corpus)
    since = time.time()
    options = dict(model=str(tiny_model_dir), engine="ray", shard_size=5, batch_size=8, num_workers=2)
    first = encode_shards(corpus, tmp_path / "v", stop_after=2, **options)
    assert sorted(first.encoded) == [0, 1]
    before = mtimes(tmp_path / "v")
    second = encode_shards(corpus, tmp_path / "v", **options)
    assert second.kept == [0, 1] and sorted(second.encoded) == [2, 3, 4]
    after = mtimes(tmp_path / "v")
    assert {name: after[name] for name in before} == before
    got_ids, vectors = read_vectors(tmp_path / "v")
    assert got_ids == ids
    np.testing.assert_allclose(vectors, reference, atol=1e-6, rtol=0)
    assert wait_for_no_ray(since) == []


@pytest.mark.slow
def test_ray_job_killed_mid_way_resumes(tmp_path, tiny_model_dir):
    """kill -9 of the driver while the actors encode; the rerun keeps what was written, and no Ray process
    outlives either run."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray")
    corpus = make_corpus(40)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, **d}) + "\n" for i, d in corpus.items()))
    folder = tmp_path / "v"
    script = ("import sys; from reprlab.text.corpus import read_documents; "
              "from reprlab.retrieval.distributed import encode_shards; "
              f"encode_shards(read_documents({str(path)!r}), {str(folder)!r}, model={str(tiny_model_dir)!r}, "
              "engine='ray', shard_size=2, batch_size=8, num_workers=2)")
    since = time.time()
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(folder.glob("shard-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (raylet, workers)
    finally:
        proc.wait()
    wait_for_no_ray(since)
    written = {p.name for p in folder.glob("shard-*.parquet")}
    assert 2 <= len(written) < 20, written
    before = mtimes(folder)
    report = encode_shards(corpus, folder, model=str(tiny_model_dir), engine="ray", shard_size=2, batch_size=8)
    assert len(report.kept) == len(written) and len(report.encoded) == 20 - len(written)
    after = mtimes(folder)
    assert {name: after[name] for name in before} == before
    _, reference = single_process(tiny_model_dir, corpus)
    np.testing.assert_allclose(read_vectors(folder)[1], reference, atol=1e-6, rtol=0)
    assert wait_for_no_ray(since) == []
