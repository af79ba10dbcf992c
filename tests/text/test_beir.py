"""BEIR folders: round trips, every kind of malformed input, atomic writes, and the real collections."""

import json
import warnings

import pytest

from reprlab.errors import DataFormatError
from reprlab.text import beir
from reprlab.text.beir import BeirDataset, load_beir, write_beir

CORPUS = {
    "d1": {"title": "Aspirin", "text": "Aspirin is an analgesic."},
    "d2": {"title": "", "text": "Ünïcödé text with a \u2028 separator and a \r inside."},
    "d0": {"title": "Zero", "text": ""},
}
QUERIES = {"q1": "what is aspirin", "q2": "unicode?", "q3": "an unjudged query"}
QRELS = {"q1": {"d1": 1, "d0": 0}, "q2": {"d2": 2}}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_folder(tmp_path, qrels_text=None, corpus_lines=None, queries_lines=None):
    folder = tmp_path / "ds"
    write_beir(folder, BeirDataset(CORPUS, QUERIES, QRELS))
    if corpus_lines is not None:
        write(folder / "corpus.jsonl", "\n".join(corpus_lines) + "\n")
    if queries_lines is not None:
        write(folder / "queries.jsonl", "\n".join(queries_lines) + "\n")
    if qrels_text is not None:
        write(folder / "qrels" / "test.tsv", qrels_text)
    return folder


def assert_error_at(exc_info, name, line):
    message = str(exc_info.value)
    assert name in message and f":{line}:" in message, message
    assert exc_info.value.line == line


def test_round_trip(tmp_path):
    folder = tmp_path / "ds"
    write_beir(folder, BeirDataset(CORPUS, QUERIES, QRELS), split="dev")
    assert (folder / "qrels" / "dev.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_beir(folder, split="dev")
    assert ds.corpus == CORPUS and list(ds.corpus) == list(CORPUS)  # order kept
    assert ds.queries == QUERIES
    assert ds.qrels == QRELS
    assert ds.judged_queries() == {"q1": "what is aspirin", "q2": "unicode?"}


def test_individual_readers_and_defaults(tmp_path):
    corpus = write(
        tmp_path / "corpus.jsonl",
        '\ufeff{"_id": "a", "text": "no title", "extra": 1}\n\n{"_id": "b", "title": "t", "text": "x"}\r\n',
    )
    assert beir.read_corpus(corpus) == {"a": {"title": "", "text": "no title"}, "b": {"title": "t", "text": "x"}}
    queries = write(tmp_path / "queries.jsonl", '{"_id": "1", "text": "q", "original_id": "001"}\n')
    assert beir.read_queries(queries) == {"1": "q"}
    qrels = write(tmp_path / "qrels.tsv", "query-id\tcorpus-id\tscore\n1\ta\t1\n1\tb\t-1\n")
    assert beir.read_qrels(qrels) == {"1": {"a": 1, "b": -1}}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"_id": "x", "text": "a"', "invalid JSON"),
        ('["x", "a"]', "expected a JSON object"),
        ('{"title": "t", "text": "a"}', 'missing field "_id"'),
        ('{"_id": 7, "text": "a"}', 'field "_id" must be a string'),
        ('{"_id": "", "text": "a"}', 'empty "_id"'),
        ('{"_id": "x", "title": null, "text": "a"}', 'field "title" must be a string'),
        ('{"_id": "x", "title": "t"}', 'missing field "text"'),
        ('{"_id": "x", "text": ["a"]}', 'field "text" must be a string'),
        ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1'"),
    ],
)
def test_malformed_corpus(tmp_path, line, fragment):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        beir.read_corpus(path)
    assert_error_at(exc_info, "corpus.jsonl", 3)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("not json", "invalid JSON"),
        ('{"text": "q"}', 'missing field "_id"'),
        ('{"_id": "q9", "text": 3}', 'field "text" must be a string'),
        ('{"_id": "q1", "text": "dup"}', "duplicate query id 'q1'"),
    ],
)
def test_malformed_queries(tmp_path, line, fragment):
    path = write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "a"}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        beir.read_queries(path)
    assert_error_at(exc_info, "queries.jsonl", 2)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n')
    with pytest.raises(DataFormatError, match="UTF-8") as exc_info:
        beir.read_corpus(path)
    assert_error_at(exc_info, "corpus.jsonl", 2)


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        ("q1\td1\n", 2, "expected 3 tab-separated columns"),
        ("q1\td1\t1\textra\n", 2, "found 4"),
        ("q1 d1 1\n", 2, "space-separated"),
        ("q1\td1\t1.0\n", 2, "'1.0' is not an integer"),
        ("q1\td1\tyes\n", 2, "is not an integer"),
        ("q1\td1\t1\nq2\t\t1\n", 3, "empty query-id or corpus-id"),
        ("q1\td1\t1\nq1\td1\t2\n", 3, "judged twice with different scores"),
    ],
)
def test_malformed_qrels(tmp_path, body, line, fragment):
    path = write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + body)
    with pytest.raises(DataFormatError, match=fragment) as exc_info:
        beir.read_qrels(path)
    assert_error_at(exc_info, "test.tsv", line)


def test_missing_or_bad_header(tmp_path):
    path = write(tmp_path / "test.tsv", "q1\td1\t1\nq2\td2\t1\n")
    with pytest.raises(DataFormatError, match="missing header") as exc_info:
        beir.read_qrels(path)
    assert_error_at(exc_info, "test.tsv", 1)
    path = write(tmp_path / "test.tsv", "qid\tdocid\n")
    with pytest.raises(DataFormatError, match="bad header") as exc_info:
        beir.read_qrels(path)
    assert_error_at(exc_info, "test.tsv", 1)
    path = write(tmp_path / "test.tsv", "")
    with pytest.raises(DataFormatError, match="empty file"):
        beir.read_qrels(path)


def test_exact_duplicate_qrel_is_a_warning(tmp_path):
    path = write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n")
    with pytest.warns(UserWarning, match=r"test\.tsv:3: 1 duplicate judgement"):
        assert beir.read_qrels(path) == {"q1": {"d1": 1}}


def test_unknown_doc_in_qrels_warns_or_fails_when_strict(tmp_path):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone\t1\nq2\talso-gone\t1\n"
    folder = make_folder(tmp_path, qrels_text=qrels)
    with pytest.warns(UserWarning, match=r"test\.tsv:3: 2 judgement\(s\) name documents missing"):
        ds = load_beir(folder)
    assert ds.qrels == {"q1": {"d1": 1, "gone": 1}, "q2": {"also-gone": 1}}  # kept, as pytrec_eval would
    with pytest.raises(DataFormatError, match="'gone'.*not in the corpus") as exc_info:
        load_beir(folder, strict=True)
    assert_error_at(exc_info, "test.tsv", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_beir(folder, validate=False).qrels == ds.qrels


def test_unknown_query_in_qrels_is_an_error(tmp_path):
    folder = make_folder(tmp_path, qrels_text="query-id\tcorpus-id\tscore\nq1\td1\t1\nq404\td1\t1\n")
    with pytest.raises(DataFormatError, match="query 'q404'") as exc_info:
        load_beir(folder)
    assert_error_at(exc_info, "test.tsv", 3)


def test_missing_files_explain_the_layout(tmp_path):
    with pytest.raises(DataFormatError, match="no such folder.*corpus.jsonl.*queries.jsonl.*qrels/<split>.tsv"):
        load_beir(tmp_path / "nowhere")
    folder = make_folder(tmp_path)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataFormatError, match="queries.jsonl is missing; a BEIR folder holds"):
        load_beir(folder)
    folder = make_folder(tmp_path)
    with pytest.raises(DataFormatError, match="no qrels for split 'train'.*splits here are test"):
        load_beir(folder, split="train")
    with pytest.raises(DataFormatError, match=r"missing\.jsonl: file not found; expected a BEIR corpus"):
        beir.read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(DataFormatError, match="is a folder"):
        beir.read_queries(tmp_path)


def test_writers_reject_what_the_reader_would(tmp_path):
    with pytest.raises(DataFormatError, match="text of document 'a'"):
        beir.write_corpus(tmp_path / "c.jsonl", {"a": {"title": "t", "text": None}})
    with pytest.raises(DataFormatError, match="ids must be non-empty strings"):
        beir.write_queries(tmp_path / "q.jsonl", {"": "q"})
    with pytest.raises(DataFormatError, match="scores are integers"):
        beir.write_qrels(tmp_path / "r.tsv", {"q": {"d": 0.5}})
    with pytest.raises(DataFormatError, match="without tabs"):
        beir.write_qrels(tmp_path / "r.tsv", {"q\t1": {"d": 1}})
    assert not list(tmp_path.iterdir())  # nothing half-written, no temp files left


def test_write_is_atomic(tmp_path):
    path = tmp_path / "corpus.jsonl"
    beir.write_corpus(path, CORPUS)
    before = path.read_bytes()

    class Exploding(dict):
        def items(self):
            yield "new1", {"text": "fine"}
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        beir.write_corpus(path, Exploding())
    bad = {"new1": {"text": "fine"}, "new2": {"text": 3}}
    with pytest.raises(DataFormatError):
        beir.write_corpus(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.jsonl"]


def test_json_escapes_round_trip(tmp_path):
    corpus = {"é/\"id\"": {"title": "line\nbreak", "text": "tab\there \u2028 \\ end"}}
    beir.write_corpus(tmp_path / "c.jsonl", corpus)
    assert len((tmp_path / "c.jsonl").read_bytes().split(b"\n")) == 2  # one line + final newline
    assert beir.read_corpus(tmp_path / "c.jsonl") == corpus
    json.loads((tmp_path / "c.jsonl").read_text())


# ----------------------------------------------------------------------------------- real data

REAL = [
    # name, split, docs, queries, judged queries, judged pairs
    ("scifact", "test", 5183, 1109, 300, 339),
    ("scifact", "train", 5183, 1109, 809, 919),
    ("cranfield", "test", 1400, 225, 225, 1612),
    ("cisi", "test", 1460, 112, 76, 3114),
]


@pytest.mark.parametrize("name, split, docs, queries, judged, pairs", REAL)
def test_real_collections(shared_data, name, split, docs, queries, judged, pairs):
    folder = shared_data(name, "beir")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shared collections are clean: no unknown docs, no duplicates
        ds = load_beir(folder, split=split, strict=True)
    assert len(ds.corpus) == docs
    assert len(ds.queries) == queries
    assert len(ds.judged_queries()) == len(ds.qrels) == judged
    assert sum(len(v) for v in ds.qrels.values()) == pairs
    if name == "cranfield":
        assert {s for v in ds.qrels.values() for s in v.values()} == {1, 2, 3, 4}


def test_real_round_trip(shared_data, tmp_path):
    ds = load_beir(shared_data("scifact", "beir"), split="test")
    write_beir(tmp_path / "copy", ds, split="test")
    again = load_beir(tmp_path / "copy", split="test")
    assert again == ds
    assert list(again.corpus) == list(ds.corpus)
