"""Training-example JSONL: round trips, provenance, id resolution, malformed lines, atomic writes."""

import json

import pytest

from reprlab.errors import DataFormatError
from reprlab.text.examples import (
    Passage,
    TrainingExample,
    iter_examples,
    read_examples,
    read_provenance,
    write_examples,
)

CORPUS = {
    "d1": {"title": "Aspirin", "text": "Aspirin is an analgesic."},
    "d7": {"title": "", "text": "Unrelated."},
    "d9": {"title": "Emma", "text": "Emma is a novel."},
}
PROVENANCE = {"model": "all-MiniLM-L6-v2", "index": "Flat", "date": "2021-05-04", "parameters": {"k": 200, "skip": 3}}


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def assert_error_at(exc_info, name, line):
    message = str(exc_info.value)
    assert name in message and f":{line}:" in message, message


def test_round_trip_with_provenance(tmp_path):
    examples = [
        TrainingExample("what is aspirin", ["d1"], ["d7", Passage(text="inline negative", title="T")], [9.5, 1, -2.25]),
        TrainingExample("who wrote emma", [Passage(id="d9", text="Emma is a novel.", title="Emma")], query_id="q2"),
    ]
    path = tmp_path / "train.jsonl"
    assert write_examples(path, examples, provenance=PROVENANCE) == 2
    assert json.loads(path.read_text().splitlines()[0]) == {"_provenance": PROVENANCE}
    assert read_provenance(path) == PROVENANCE

    got = read_examples(path)
    assert got[0].query == "what is aspirin" and got[0].query_id is None
    assert got[0].positives == [Passage(id="d1")]  # unresolved without a corpus
    assert got[0].negatives == [Passage(id="d7"), Passage(text="inline negative", title="T")]
    assert got[0].scores == [9.5, 1.0, -2.25]
    emma = Passage(id="d9", text="Emma is a novel.", title="Emma")
    assert got[1] == TrainingExample("who wrote emma", [emma], [], None, "q2")

    resolved = read_examples(path, corpus=CORPUS)
    assert resolved[0].positives == [Passage(id="d1", text="Aspirin is an analgesic.", title="Aspirin")]
    assert resolved[0].negatives[0] == Passage(id="d7", text="Unrelated.", title="")

    # a resolved file can be written back with ids only, and reads back the same against the corpus
    write_examples(tmp_path / "ids.jsonl", resolved, ids_only=True)
    assert json.loads((tmp_path / "ids.jsonl").read_text().splitlines()[0])["positives"] == ["d1"]
    assert read_provenance(tmp_path / "ids.jsonl") is None
    assert read_examples(tmp_path / "ids.jsonl", corpus=CORPUS) == resolved


def test_plain_text_corpus_and_streaming(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"query": "q", "positives": [{"id": "a"}, "b"]}])
    (ex,) = iter_examples(path, corpus={"a": "text a", "b": "text b"})
    assert [p.text for p in ex.positives] == ["text a", "text b"]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"query": "q", "positives": ["d1"]', "invalid JSON"),
        ('"just a string"', "expected a JSON object"),
        ({"positives": ["d1"]}, '"query" must be a non-blank string, found missing'),
        ({"query": "   ", "positives": ["d1"]}, '"query" must be a non-blank string'),
        ({"query": 5, "positives": ["d1"]}, '"query" must be a non-blank string, found 5'),
        ({"query": "q"}, '"positives" must be a list .* found missing'),
        ({"query": "q", "positives": "d1"}, '"positives" must be a list .* found a str'),
        ({"query": "q", "positives": []}, '"positives" is empty'),
        ({"query": "q", "positives": ["d1"], "negatives": {"d7": 1}}, '"negatives" must be a list'),
        ({"query": "q", "positives": [3]}, r"positives\[0\] must be a doc id string or an object .*found 3"),
        ({"query": "q", "positives": [{"title": "t"}]}, r'positives\[0\] has neither "id" nor "text"'),
        ({"query": "q", "positives": [{"text": 1}]}, r'positives\[0\]: field "text" must be a string'),
        ({"query": "q", "positives": [""]}, "has an empty id"),
        ({"query": "q", "positives": [{"text": "t", "body": "x"}]}, r"unknown field\(s\) \['body'\]"),
        ({"query": "q", "positives": ["d1"], "negative": ["d7"]}, r"unknown field\(s\) \['negative'\]"),
        ({"query": "q", "positives": ["d1"], "negatives": ["d7"], "scores": [1]}, "list of 2 numbers.*found 1 scores"),
        ({"query": "q", "positives": ["d1"], "scores": {"d1": 1.0}}, "found a dict"),
        ({"query": "q", "positives": ["d1"], "scores": ["high"]}, r'"scores"\[0\] must be a finite number'),
        ('{"query": "q", "positives": ["d1"], "scores": [NaN]}', r'"scores"\[0\] must be a finite number'),
        ({"query": "q", "positives": ["d1"], "scores": [True]}, r'"scores"\[0\] must be a finite number'),
        ({"query": "q", "query_id": 3, "positives": ["d1"]}, '"query_id" must be a string'),
        ({"_provenance": {"model": "m"}}, "the provenance line must be the first line"),
    ],
)
def test_malformed_lines(tmp_path, line, fragment):
    path = write(tmp_path / "train.jsonl", [{"query": "ok", "positives": ["d1"]}, line])
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        read_examples(path)
    assert_error_at(exc_info, "train.jsonl", 2)


def test_unknown_id_with_a_corpus(tmp_path):
    example = {"query": "q", "positives": ["d1"], "negatives": ["zz"]}
    path = write(tmp_path / "train.jsonl", [{"_provenance": {}}, example])
    assert read_examples(path)[0].negatives == [Passage(id="zz")]
    with pytest.raises(DataFormatError, match=r"negatives\[0\]: document 'zz' is not in the corpus") as exc_info:
        read_examples(path, corpus=CORPUS)
    assert_error_at(exc_info, "train.jsonl", 2)


def test_bad_provenance_line(tmp_path):
    path = write(tmp_path / "train.jsonl", [{"_provenance": {"m": 1}, "query": "q"}])
    with pytest.raises(DataFormatError, match="provenance line must be exactly") as exc_info:
        read_examples(path)
    assert_error_at(exc_info, "train.jsonl", 1)


def test_write_validates_and_is_atomic(tmp_path):
    path = tmp_path / "train.jsonl"
    write_examples(path, [TrainingExample("q", ["d1"])], provenance={"model": "old"})
    before = path.read_bytes()

    def mined():
        yield TrainingExample("q1", ["d1"], ["d7"])
        raise RuntimeError("index went away")

    with pytest.raises(RuntimeError):
        write_examples(path, mined(), provenance={"model": "new"})
    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: \"positives\" is empty"):
        write_examples(path, [TrainingExample("q", ["d1"]), TrainingExample("q", [])], provenance={"model": "new"})
    with pytest.raises(DataFormatError, match="one per passage"):
        write_examples(path, [TrainingExample("q", ["d1"], ["d2"], scores=[1.0])])
    with pytest.raises(DataFormatError, match="not JSON-serialisable"):
        write_examples(path, [], provenance={"when": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_writer_accepts_sequences_and_numpy_scores_and_rejects_odd_entries(tmp_path):
    import numpy as np

    path = tmp_path / "train.jsonl"
    write_examples(path, [TrainingExample("q", ("d1",), ("d2", "d3"), scores=np.array([3.0, 2.0, 1.0], np.float32))])
    assert read_examples(path)[0].scores == [3.0, 2.0, 1.0]
    with pytest.raises(DataFormatError, match=r"train\.jsonl:1: positives\[0\] must be a doc id string"):
        write_examples(path, [TrainingExample("q", [object()])])
