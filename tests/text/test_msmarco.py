"""MS MARCO TSV: round trips, the three qrels shapes, malformed lines, atomic writes."""

import pytest

from reprlab.errors import DataFormatError
from reprlab.text import msmarco


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def assert_error_at(exc_info, name, line):
    message = str(exc_info.value)
    assert name in message and f":{line}:" in message, message


def test_round_trip(tmp_path):
    corpus = {"7": {"title": "", "text": "The presence of communication."}, "0": {"title": "", "text": ""}}
    queries = {"1048585": "what is paula deen's brother", "2": "ünïcode"}
    qrels = {"1048585": {"7": 1}, "2": {"0": 0, "7": 2}}
    msmarco.write_collection(tmp_path / "collection.tsv", corpus)
    msmarco.write_queries(tmp_path / "queries.tsv", queries)
    msmarco.write_qrels(tmp_path / "qrels.tsv", qrels)
    assert (tmp_path / "qrels.tsv").read_text().splitlines()[0] == "1048585\t0\t7\t1"
    got = msmarco.read_collection(tmp_path / "collection.tsv")
    assert got == corpus and list(got) == ["7", "0"]
    assert msmarco.read_queries(tmp_path / "queries.tsv") == queries
    assert msmarco.read_qrels(tmp_path / "qrels.tsv", corpus=corpus, queries=queries, strict=True) == qrels


@pytest.mark.parametrize(
    "text",
    [
        "1\t0\t7\t1\n1 0 8 1\n2\tQ0\t7\t0\n",  # official 4 columns (tabs) and TREC DL (spaces)
        "1\t7\t1\n1\t8\t1\n2\t7\t0\n",  # 3 columns
        "query-id\tcorpus-id\tscore\n1\t7\t1\n1\t8\t1\n2\t7\t0\n",  # a BEIR file
    ],
)
def test_qrels_shapes(tmp_path, text):
    path = write(tmp_path / "qrels.tsv", text)
    assert msmarco.read_qrels(path) == {"1": {"7": 1, "8": 1}, "2": {"7": 0}}


def test_two_column_qrels_mean_relevant(tmp_path):
    path = write(tmp_path / "qrels.tsv", "1\t7\n1\t8\n")
    assert msmarco.read_qrels(path) == {"1": {"7": 1, "8": 1}}


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("1\t0\t7\t1\n1\t0\t8\n", 2, "expected 4 columns like the first line, found 3"),
        ("1\n", 1, "found 1"),
        ("1\t0\t7\t1\t9\n", 1, "found 5"),
        ("1\t0\t7\t1\n2\t0\t7\tx\n", 2, "relevance 'x' is not an integer"),
        ("1\t7\t0.5\n", 1, "relevance '0.5' is not an integer"),
    ],
)
def test_malformed_qrels(tmp_path, text, line, fragment):
    path = write(tmp_path / "qrels.dev.tsv", text)
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        msmarco.read_qrels(path)
    assert_error_at(exc_info, "qrels.dev.tsv", line)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("0\tfirst\n1 second\n", 2, "expected 2 tab-separated columns"),
        ("0\tfirst\n1\tsec\tond\n", 2, "a tab inside the text"),
        ("0\tfirst\n\tno id\n", 2, "empty pid"),
        ("0\tfirst\n0\tagain\n", 2, "duplicate pid '0'"),
    ],
)
def test_malformed_collection(tmp_path, text, line, fragment):
    path = write(tmp_path / "collection.tsv", text)
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        msmarco.read_collection(path)
    assert_error_at(exc_info, "collection.tsv", line)


def test_malformed_queries_and_missing_file(tmp_path):
    path = write(tmp_path / "queries.tsv", "1\tq\n1\tq again\n")
    with pytest.raises(DataFormatError, match="duplicate qid '1'") as exc_info:
        msmarco.read_queries(path)
    assert_error_at(exc_info, "queries.tsv", 2)
    with pytest.raises(DataFormatError, match="file not found; expected an MS MARCO query file: 'qid<TAB>text'"):
        msmarco.read_queries(tmp_path / "nope.tsv")


def test_qrels_checked_against_corpus_and_queries(tmp_path):
    path = write(tmp_path / "qrels.tsv", "1\t0\t7\t1\n1\t0\t99\t1\n")
    corpus, queries = {"7": {"title": "", "text": "x"}}, {"1": "q"}
    with pytest.warns(UserWarning, match=r"qrels\.tsv:2: 1 judgement"):
        assert msmarco.read_qrels(path, corpus=corpus, queries=queries) == {"1": {"7": 1, "99": 1}}
    with pytest.raises(DataFormatError, match="'99'") as exc_info:
        msmarco.read_qrels(path, corpus=corpus, queries=queries, strict=True)
    assert_error_at(exc_info, "qrels.tsv", 2)
    with pytest.raises(DataFormatError, match="query '1'"):
        msmarco.read_qrels(path, queries={})


def test_writers_refuse_lossy_output_and_stay_atomic(tmp_path):
    path = tmp_path / "collection.tsv"
    msmarco.write_collection(path, {"1": {"text": "old"}})
    with pytest.raises(DataFormatError, match="tab or newline"):
        msmarco.write_collection(path, {"2": {"text": "fine"}, "3": {"text": "two\nlines"}})
    with pytest.raises(DataFormatError, match="join_title=True"):
        msmarco.write_collection(path, {"2": {"title": "T", "text": "x"}})
    assert path.read_text() == "1\told\n"
    msmarco.write_collection(path, {"2": {"title": "T", "text": "x"}}, join_title=True)
    assert msmarco.read_collection(path) == {"2": {"title": "", "text": "T x"}}
    with pytest.raises(DataFormatError, match="without whitespace"):
        msmarco.write_qrels(tmp_path / "q.tsv", {"a b": {"1": 1}})
    with pytest.raises(DataFormatError, match="must be an integer"):
        msmarco.write_qrels(tmp_path / "q.tsv", {"a": {"1": "1"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collection.tsv"]
