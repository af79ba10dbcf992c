"""The reprlab command: the demo, index/search/evaluate on a small BEIR folder, one-line errors."""

import json
import subprocess
import sys

import pytest

from reprlab.cli import main
from reprlab.demo import demo_data_path, run_demo


def test_demo_runs_and_dense_beats_chance(capsys):
    results = run_demo(show=1)
    out = capsys.readouterr().out
    assert "Q: " in out and "evaluation on 18 questions" in out
    assert results["minilm"]["ndcg_cut_10"] > 0.8  # 38 passages: random ranking gives ~0.1
    assert set(results) == {"bm25", "minilm", "hybrid (rrf)"}


def test_index_search_evaluate(tmp_path, capsys):
    data = demo_data_path()
    assert main(["-q", "index", "--corpus", str(data), "--out", str(tmp_path / "idx")]) == 0
    assert main(["search", "--index", str(tmp_path / "idx"), "How do I install reprlab without downloading a CUDA build of PyTorch?", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["1", "install"]
    assert main(["evaluate", "--data", str(data), "--retriever", "bm25", "--json",
                 "--run-out", str(tmp_path / "run.trec")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"ndcg_cut_10", "recall_100", "recip_rank", "map"} <= set(metrics)
    assert 0.5 < metrics["ndcg_cut_10"] <= 1.0
    assert (tmp_path / "run.trec").read_text().count(" Q0 ") > 18


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "--corpus", "/nonexistent", "--out", "x"], "nonexistent"),
        (["evaluate", "--data", "/nonexistent"], "nonexistent"),
        (["evaluate", "--data", "DATA", "--retriever", "nope"], "unknown retriever 'nope'"),
        (["evaluate", "--data", "DATA", "--metrics", "nonsense_metric"], "nonsense_metric"),
        (["search", "--index", "/nonexistent", "q"], "nonexistent"),
        (["index", "--corpus", "x"], "required: --out"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message):
    argv = [str(demo_data_path()) if a == "DATA" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "reprlab.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
