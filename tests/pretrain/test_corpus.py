"""Pre-training corpora: the file shapes, errors that name file and line, word-aligned chunks."""

import json

import pytest

from reprlab.errors import DataFormatError, ReprlabError
from reprlab.pretrain.corpus import split_words, tokenize_chunks
from reprlab.text.corpus import read_sentence_groups, read_texts, split_sentences


def test_reads_beir_folders_jsonl_and_text_files(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "Aspirin", "text": "It thins blood."}) + "\n")
    (tmp_path / "sent.jsonl").write_text(json.dumps({"doc_id": 1, "abstract": ["One.", "Two."]}) + "\n\n")
    (tmp_path / "book.txt").write_text("First line\nof a paragraph.\n\n\nSecond paragraph.\n")
    assert read_texts(beir) == ["Aspirin It thins blood."]
    assert read_texts(tmp_path / "sent.jsonl") == ["One. Two."]
    assert read_texts([tmp_path / "book.txt", beir]) == ["First line of a paragraph.", "Second paragraph.",
                                                         "Aspirin It thins blood."]
    assert read_texts([tmp_path / "book.txt", beir], max_texts=1) == ["First line of a paragraph."]
    assert read_sentence_groups(tmp_path / "sent.jsonl") == [["One.", "Two."]]
    with pytest.raises(ReprlabError, match="two or more sentences"):  # a one-sentence abstract is dropped
        read_sentence_groups(beir)


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + "{oops\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: not valid JSON"):
        read_texts(bad)
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: .*'text'"):
        read_texts(bad)
    with pytest.raises(ReprlabError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("A single sentence.\n\nAnother single one.\n")
    with pytest.raises(ReprlabError, match="two or more sentences"):
        read_sentence_groups(tmp_path / "one.txt")


def test_sentence_splitter():
    text = "Aspirin (ASA) was given. Results were clear! Was it safe? Yes, e.g. for 3.5 mg doses."
    assert split_sentences(text) == ["Aspirin (ASA) was given.", "Results were clear!", "Was it safe?",
                                     "Yes, e.g. for 3.5 mg doses."]


def test_chunks_are_word_aligned_and_within_length(tokenizer, toy_texts):
    chunks = tokenize_chunks(toy_texts, tokenizer, max_length=20, min_tokens=1)
    assert all(len(c) <= 20 for c in chunks)
    all_words = [w for t in toy_texts for w in split_words(t, tokenizer)]
    rebuilt = []
    for c in chunks:
        assert c.ids[0] == tokenizer.cls_id and c.ids[-1] == tokenizer.sep_id
        assert c.word_ids[0] == -1 and c.word_ids[-1] == -1
        for w in range(len(c.words)):  # each word's pieces decode to the word itself
            pieces = c.ids[c.word_ids == w]
            assert tokenizer.decode(pieces).replace(" ", "") == c.words[w]
        rebuilt.extend(c.words)
    assert rebuilt == all_words, "chunks cover every word once, in order (none is cut in two here)"


def test_truncate_gives_one_chunk_per_text(tokenizer):
    texts = ["short", "", "a much longer text " * 20]
    chunks = tokenize_chunks(texts, tokenizer, max_length=8, truncate=True)
    assert len(chunks) == 3 and all(len(c) <= 8 for c in chunks)
    assert chunks[0].words == ["short"]
