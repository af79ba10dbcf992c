"""The reprlab command: the demo, index/search/evaluate on a small BEIR folder, one-line errors."""

import json
import subprocess
import sys

import pytest

from reprlab.cli import main
from reprlab.demo import demo_data_path, run_demo


def test_demo_runs_and_dense_beats_chance(capsys):
    results = run_demo(show=1, ance_steps=3)
    out = capsys.readouterr().out
    assert "Q: " in out and "evaluation on 18 questions" in out and "ANCE index v0" not in out  # logs go to stderr
    assert results["minilm"]["ndcg_cut_10"] > 0.8  # 38 passages: random ranking gives ~0.1
    assert set(results) == {"bm25", "minilm", "hybrid (rrf)", "minilm + ANCE"}
    assert results["minilm + ANCE"]["ndcg_cut_10"] > 0.8  # 3 small steps must not wreck the encoder


def test_index_search_evaluate(tmp_path, capsys):
    data = demo_data_path()
    assert main(["-q", "index", "--corpus", str(data), "--out", str(tmp_path / "idx")]) == 0
    question = "How do I install reprlab without downloading a CUDA build of PyTorch?"
    assert main(["search", "--index", str(tmp_path / "idx"), question, "-k", "2"]) == 0
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


def test_mine_writes_negatives_that_are_never_positives(tmp_path):
    from reprlab.text.beir import load_beir
    from reprlab.text.examples import read_examples, read_provenance

    out = tmp_path / "mined.jsonl"
    assert main(["-q", "mine", "--data", str(demo_data_path()), "--split", "test", "--retriever", "bm25",
                 "--out", str(out), "--depth", "20", "--range", "2-20", "--num-negatives", "5"]) == 0
    data = load_beir(demo_data_path(), split="test")
    examples = read_examples(out, corpus=data.corpus)
    assert len(examples) == 18
    for ex in examples:
        positives = {d for d, r in data.qrels[ex.query_id].items() if r > 0}
        negatives = [n.id for n in ex.negatives]
        assert negatives and len(negatives) <= 5 and not positives & set(negatives)
    meta = read_provenance(out)
    assert meta["model"] == "bm25" and meta["parameters"]["rank_range"] == [2, 20] and meta["date"]


def test_train_dpr_from_the_command_line(tmp_path, tiny_model_dir):
    out = tmp_path / "dpr"
    assert main(["-q", "train", "dpr", "--data", str(demo_data_path()), "--split", "test", "--model",
                 str(tiny_model_dir), "--out", str(out), "--max-steps", "2", "--batch-size", "4",
                 "--passage-max-length", "32"]) == 0
    assert (out / "model" / "modules.json").is_file()
    assert main(["-q", "evaluate", "--data", str(demo_data_path()), "--retriever", str(out / "model"), "--json"]) == 0
