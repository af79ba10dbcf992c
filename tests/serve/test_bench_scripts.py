"""bench/serve.py and bench/encode_gpu.py in quick mode on a tiny model and a tiny BEIR folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprlab.text.beir import BeirDataset, write_beir

REPO = Path(__file__).resolve().parents[2]
WORDS = ["protein", "cell", "virus", "gene", "drug", "heart", "brain", "lung", "blood", "liver"]


@pytest.fixture
def tiny_beir(tmp_path):
    corpus = {f"d{i}": {"title": WORDS[i % 10], "text": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} study " * (1 + i % 7)}
              for i in range(40)}
    queries = {f"q{j}": f"{WORDS[j % 10]} study" for j in range(8)}
    qrels = {f"q{j}": {f"d{j}": 1} for j in range(8)}
    write_beir(tmp_path / "beir", BeirDataset(corpus, queries, qrels), split="test")
    return tmp_path / "beir"


def run(args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_packed_encoder_equals_the_padded_one(tiny_beir, tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    run(["bench/encode_gpu.py", "--quick", "--model", str(tiny_model_dir), "--data", str(tiny_beir),
         "--settings", "reprlab-padded", "reprlab-packed", "--token-budget", "64", "--output", str(out)])
    record = json.loads(out.read_text())
    assert record["packed_vs_padded_max_abs_diff"] < 1e-5 and record["precision"] == "fp32"
    assert [r["setting"] for r in record["results"]] == ["reprlab-padded", "reprlab-packed"]
    assert record["results"][0]["ndcg_cut_10"] == pytest.approx(record["results"][1]["ndcg_cut_10"], abs=1e-6)


def test_vectors_kept_in_fp16_are_scored_here_like_the_direct_run(tiny_beir, tiny_model_dir, tmp_path):
    """A GPU run keeps fp16 vectors (--no-eval --keep-fp16); --evaluate scores them on this machine."""
    common = ["--quick", "--model", str(tiny_model_dir), "--data", str(tiny_beir), "--settings", "reprlab-padded",
              "reprlab-packed", "--token-budget", "64"]
    direct = tmp_path / "direct.json"
    run(["bench/encode_gpu.py", *common, "--output", str(direct)])
    keep = tmp_path / "keep"
    run(["bench/encode_gpu.py", *common, "--no-eval", "--keep-fp16", "--keep", str(keep),
         "--output", str(tmp_path / "measured.json")])
    assert np.load(keep / "vectors-reprlab-packed.npy").dtype == np.float16
    later = tmp_path / "later.json"
    run(["bench/encode_gpu.py", "--evaluate", str(keep), "--model", str(tiny_model_dir), "--data", str(tiny_beir),
         "--output", str(later)])
    a, b = json.loads(direct.read_text()), json.loads(later.read_text())
    assert b["vectors_dtype"] == "float16" and b["evaluated"]["command"].startswith("python bench/encode_gpu.py --evaluate")
    for x, y in zip(a["results"], b["results"]):
        assert x["setting"] == y["setting"] and y["ndcg_cut_10"] == pytest.approx(x["ndcg_cut_10"], abs=0.02)


def test_packed_batches_respect_the_token_budget(tiny_model_dir):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from encode_gpu import PackedEncoder
    finally:
        sys.path.remove(str(REPO / "bench"))
    from reprlab.encoder import SentenceEncoder

    packed = PackedEncoder(SentenceEncoder.from_pretrained(tiny_model_dir), token_budget=20, precision="fp32")
    lengths = np.array([5, 12, 3, 9, 9, 20, 1])
    batches = packed.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(lengths[b].sum() <= 20 for b in batches)
    assert [lengths[b].tolist() for b in batches][0] == [20]  # longest first


def test_serve_bench_quick(tiny_beir, tiny_model_dir, tmp_path):
    out = tmp_path / "serve.json"
    run(["bench/serve.py", "--quick", "--model", str(tiny_model_dir), "--data", str(tiny_beir), "--levels", "1", "4",
         "--requests", "24", "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    record = json.loads(out.read_text())
    assert [r["concurrency"] for r in record["service"]] == [1, 4]
    assert all(r["failed"] == 0 and r["requests"] == 3 * 24 and r["rps"] > 0 for r in record["service"])
    assert record["in_process"]["qps"] > 0 and record["command"].startswith("python bench/serve.py")


def test_serve_bench_builds_its_index_from_cached_vectors(tiny_beir, tiny_model_dir, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import serve as serve_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.text.beir import load_beir

    corpus = load_beir(tiny_beir, split="test").corpus
    encoded = DenseRetriever.from_model(str(tiny_model_dir), batch_size=8)
    ids, vectors = encoded.encode_corpus(corpus, show_progress=False)
    encoded.index_corpus(corpus, show_progress=False)
    cached = DenseRetriever.from_model(str(tiny_model_dir))
    np.savez(tmp_path / "v.npz", doc_ids=np.array(ids), docs=vectors)
    serve_bench.index_from_vectors(cached, corpus, tmp_path / "v.npz")
    probe = vectors[:5] + 0.01
    assert cached.index.search(probe, 4)[1].tolist() == encoded.index.search(probe, 4)[1].tolist()
    assert cached.docs == encoded.docs
    np.savez(tmp_path / "w.npz", doc_ids=np.array(ids[::-1]), docs=vectors[::-1])
    with pytest.raises(SystemExit, match="not the corpus' ids"):
        serve_bench.index_from_vectors(cached, corpus, tmp_path / "w.npz")


def test_serve_bench_loads_the_judged_test_queries_only():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import serve as serve_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    data = BeirDataset(corpus={"d0": {"title": "", "text": "a"}},
                       queries={"q2": "second", "q1": "first", "train-only": "not judged in test"},
                       qrels={"q1": {"d0": 1}, "q2": {"d0": 1}})
    assert serve_bench.eval_queries(data) == ["first", "second"]
