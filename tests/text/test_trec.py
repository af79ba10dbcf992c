"""TREC runs and qrels: round trips, ordering, ties, top-k, malformed lines, atomic writes."""

import numpy as np
import pytest

from reprlab.errors import DataFormatError
from reprlab.text import trec
from reprlab.text.trec import read_run, write_run


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def assert_error_at(exc_info, name, line):
    message = str(exc_info.value)
    assert name in message and f":{line}:" in message, message


def test_write_run_sorts_ranks_and_breaks_ties_by_doc_id(tmp_path):
    run = {"q2": {"b": 1.0, "a": 1.0, "c": 3.5, "d": -2.0}, "q1": {"x": np.float32(0.1), "y": 7}}
    path = tmp_path / "run.trec"
    write_run(path, run, tag="dense")
    assert path.read_text().splitlines() == [
        "q2 Q0 c 1 3.5 dense",
        "q2 Q0 a 2 1.0 dense",
        "q2 Q0 b 3 1.0 dense",
        "q2 Q0 d 4 -2.0 dense",
        "q1 Q0 y 1 7.0 dense",
        f"q1 Q0 x 2 {float(np.float32(0.1))!r} dense",
    ]
    back = read_run(path)
    assert back == {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}  # exact
    assert list(back["q2"]) == ["c", "a", "b", "d"]


def test_write_run_top_k(tmp_path):
    path = tmp_path / "run.trec"
    write_run(path, {"q": {f"d{i}": float(i) for i in range(10)}}, k=3)
    assert read_run(path) == {"q": {"d9": 9.0, "d8": 8.0, "d7": 7.0}}


def test_read_run_accepts_any_whitespace_and_trusts_scores(tmp_path):
    path = write(tmp_path / "run.txt", "1\tQ0\tD1\t5\t0.5\tbm25\n1 Q0 D2   1 1e-3 bm25\n\n")
    assert read_run(path) == {"1": {"D1": 0.5, "D2": 0.001}}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("q1 Q0 d2 2 0.5", "expected 6 columns"),
        ("q1 Q0 d2 2 0.5 tag extra", "found 7"),
        ("q1 Q0 d2 two 0.5 tag", "rank 'two' is not an integer"),
        ("q1 Q0 d2 2 high tag", "score 'high' is not a finite number"),
        ("q1 Q0 d2 2 nan tag", "score 'nan' is not a finite number"),
        ("q1 Q0 d1 2 0.5 tag", "document 'd1' appears twice for query 'q1'"),
    ],
)
def test_malformed_run(tmp_path, line, fragment):
    path = write(tmp_path / "run.trec", "q1 Q0 d1 1 0.9 tag\n" + line + "\n")
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        read_run(path)
    assert_error_at(exc_info, "run.trec", 2)


def test_write_run_rejects_bad_input_and_is_atomic(tmp_path):
    path = tmp_path / "run.trec"
    write_run(path, {"q": {"d": 1.0}})
    before = path.read_text()
    with pytest.raises(DataFormatError, match="finite numbers"):
        write_run(path, {"q": {"a": 1.0}, "r": {"b": float("nan")}})
    with pytest.raises(DataFormatError, match="without whitespace"):
        write_run(path, {"q": {"doc 1": 1.0}})
    with pytest.raises(DataFormatError, match="run tag"):
        write_run(path, {"q": {"d": 1.0}}, tag="my run")

    def exploding():
        yield "q", {"a": 1.0}
        raise RuntimeError("encoder crashed")

    class Run(dict):
        def items(self):
            return exploding()

    with pytest.raises(RuntimeError):
        write_run(path, Run())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]


def test_qrels_round_trip_and_errors(tmp_path):
    qrels = {"301": {"FBIS3-10082": 1, "FBIS3-10169": 0}, "302": {"LA-1": 2}}
    path = tmp_path / "qrels.txt"
    trec.write_qrels(path, qrels)
    assert path.read_text().splitlines()[0] == "301 0 FBIS3-10082 1"
    assert trec.read_qrels(path) == qrels
    bad = write(tmp_path / "bad.qrels", "301 0 D1 1\n301 0 D2\n")
    with pytest.raises(DataFormatError, match="expected 4 columns") as exc_info:
        trec.read_qrels(bad)
    assert_error_at(exc_info, "bad.qrels", 2)
    bad = write(tmp_path / "bad.qrels", "301 0 D1 1\n301 0 D2 yes\n")
    with pytest.raises(DataFormatError, match="relevance 'yes' is not an integer") as exc_info:
        trec.read_qrels(bad)
    assert_error_at(exc_info, "bad.qrels", 2)
    with pytest.warns(UserWarning, match=r"qrels\.txt:2: 1 judgement"):
        trec.read_qrels(path, corpus={"FBIS3-10082": {}, "LA-1": {}})
    with pytest.raises(DataFormatError, match="file not found; expected TREC qrels"):
        trec.read_qrels(tmp_path / "none")
