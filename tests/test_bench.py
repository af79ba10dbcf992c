"""Smoke tests of the bench scripts that split work between machines (tiny model, tiny data, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from reprlab.text.beir import BeirDataset, write_beir

REPO = Path(__file__).resolve().parents[1]


def tiny_beir(folder: Path, n_docs: int = 40, n_queries: int = 6, split: str = "test") -> Path:
    words = ["protein", "cell", "virus", "gene", "drug", "heart", "brain", "lung", "blood", "liver"]
    corpus = {f"d{i}": {"title": words[i % 10], "text": f"{words[i % 10]} {words[(i * 3) % 10]} study {i}"}
              for i in range(n_docs)}
    queries = {f"q{j}": f"{words[j % 10]} study" for j in range(n_queries)}
    qrels = {f"q{j}": {f"d{j}": 1, f"d{j + 10}": 1} for j in range(n_queries)}
    write_beir(folder, BeirDataset(corpus, queries, qrels), split=split)
    return folder


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_encode_bench_measures_without_faiss_and_evaluates_later(tmp_path, tiny_model_dir):
    data = tiny_beir(tmp_path / "beir")
    blocker = tmp_path / "nofaiss"  # the measuring machine has no faiss: its import must fail there
    blocker.mkdir()
    (blocker / "faiss.py").write_text('raise ImportError("faiss is not installed here")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    keep = tmp_path / "keep"
    run(["bench/encode.py", "--model", str(tiny_model_dir), "--data", str(data), "--settings", "reprlab-fp32",
         "reprlab-bf16", "--repeat", "2", "--batch-size", "8", "--no-eval", "--keep", str(keep)], env=env)
    measured = json.loads((keep / "measure.json").read_text())
    assert [r["setting"] for r in measured["results"]] == ["reprlab-fp32", "reprlab-bf16"]
    assert all(len(r["passes"]) == 2 and (keep / r["vectors"]).is_file() for r in measured["results"])

    out = tmp_path / "encode.json"
    run(["bench/encode.py", "--evaluate", str(keep), "--model", str(tiny_model_dir), "--data", str(data),
         "--output", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results[0]["ratio"] == 1.0 and results[0]["max_abs_diff_vs_base"] == 0.0
    assert all(0.0 <= r["ndcg_cut_10"] <= 1.0 for r in results)
    assert 0.0 < results[1]["max_abs_diff_vs_base"] < 0.1  # bf16 moves the vectors, a little


def test_distill_gpu_bench_trains_and_scores_every_job(tmp_path, tiny_model_dir):
    root = tmp_path / "data"
    for name in ("scifact", "cranfield", "cisi"):
        tiny_beir(root / name / "beir")
    tiny_beir(root / "scifact" / "beir", split="train")  # the dev split
    out = tmp_path / "distill.json"
    run(["bench/distill_gpu.py", "--device", "cpu", "--quick", "--steps", "2", "--seeds", "0", "--threads", "1",
         "--teacher", str(tiny_model_dir), "--data", str(root), "--student", "layers:0",
         "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    record = json.loads(out.read_text())
    assert [r["model"] for r in record["scores"]] == ["teacher", "kd seed 0", "ckd seed 0"]
    assert all(r["steps"] == 2 for r in record["trained"])
    assert all(0.0 <= r[k] <= 1.0 for r in record["scores"] for k in ("scifact_dev", "scifact", "cranfield", "cisi"))
