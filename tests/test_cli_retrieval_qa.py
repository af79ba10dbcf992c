"""The reprlab command for semantic hashing, multi-hop retrieval and question answering, end to end.

Every test runs ``reprlab.cli.main`` in-process on a tiny random encoder and data written under
``tmp_path`` (or the embedded demo corpus), so each takes a few seconds on one thread.
"""

import json

import numpy as np
import pytest
import torch

from reprlab.cli import main
from reprlab.demo import demo_data_path, run_demo

# ------------------------------------------------------------------------------------------------ toy data

PEOPLE = ["Ada Quill", "Bram Okoro", "Cleo Varga", "Dov Lindqvist", "Esme Tanaka", "Femi Adeyemi", "Gil Moreau",
          "Hana Petrov"]
CITIES = ["Tromso", "Arequipa", "Kumasi", "Matera", "Hobart", "Tartu", "Ghent", "Oaxaca"]
PAINTERS = ["Ines Sola", "Jonas Brandt", "Kaia Moon", "Luca Ferri", "Mira Osei", "Nils Haug", "Olga Rusu",
            "Pim Jansen"]
BOOKS = ["Salt Lanterns", "The Ninth Orchard", "Copper Rain", "Winter Ledger", "A Glass Harbour", "Quiet Engines",
         "The Paper Tide", "Iron Meadows"]


def write_hotpot(path, n=8):
    """IRCoT-layout bridge questions: the book's paragraph names its author, whose paragraph names the city."""
    lines = []
    for i in range(n):
        book, author, city = BOOKS[i], PEOPLE[i], CITIES[i]
        other = PAINTERS[i]
        contexts = [
            {"id": "0", "title": book, "paragraph_text": f"{book} is a novel by {author}, published in 19{60 + i}.",
             "is_supporting": True},
            {"id": "1", "title": other, "paragraph_text": f"{other} is a painter who lives in {CITIES[(i + 3) % n]}.",
             "is_supporting": False},
            {"id": "2", "title": author, "paragraph_text": f"{author} is a writer who was born in {city}.",
             "is_supporting": True},
        ]
        question = f"In which city was the author of {book} born?"
        lines.append(json.dumps({"question_id": f"q{i}", "question_text": question,
                                 "answers_objects": [{"spans": [city]}], "contexts": contexts}))
    path.write_text("\n".join(lines) + "\n")
    return path


SQUAD = [
    ("The lighthouse at Kestrel Point was built in 1871 by the engineer Mara Holt.", "Who built the lighthouse?",
     "Mara Holt"),
    ("Copper from the Vale mine was shipped down the river to the port of Lindby.", "Where was the copper shipped?",
     "Lindby"),
    ("The orchestra performed the symphony for the first time in the spring of 1903.",
     "When was the symphony first performed?", "1903"),
    ("Grey herons nest in tall trees near lakes and feed mostly on small fish.", "What do grey herons eat?",
     "small fish"),
]


def write_squad(path):
    paragraphs = [{"context": c, "qas": [{"id": f"s{i}", "question": q, "answers": [{"text": a,
                                                                                  "answer_start": c.index(a)}]}]}
                  for i, (c, q, a) in enumerate(SQUAD)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "Toy", "paragraphs": paragraphs}]}))
    return path


def fails(capsys, argv, message):
    """``main(argv)`` exits 2 with exactly one stderr line that contains ``message``."""
    assert main(["-q", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]


def usage_error(capsys, argv, message):
    """argparse rejects ``argv``: one stderr line with ``message``, exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err


# ------------------------------------------------------------------------------------------------ hashing


def test_binary_index_search_equals_brute_force_hamming(tmp_path, tiny_model_dir, capsys):
    from reprlab.encoder import SentenceEncoder
    from reprlab.text.beir import doc_text
    from reprlab.retrieval.binary import BinaryIndex
    from reprlab.retrieval.index import Index
    from reprlab.text.beir import read_corpus

    data, idx = demo_data_path(), tmp_path / "bin"
    assert main(["-q", "index", "--corpus", str(data), "--model", str(tiny_model_dir), "--out", str(idx),
                 "--binary", "128", "--hash-seed", "3"]) == 0
    index = Index.load(idx)
    assert isinstance(index, BinaryIndex) and index.bits == 128 and json.loads((idx / "meta.json").read_text())[
        "kind"] == "binary"

    query = "How does training continue after the process is killed?"
    assert main(["search", "--index", str(idx), query, "-k", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    shown = [r.split()[1] for r in rows]

    # brute force: SimHash codes of the same vectors with the saved hyperplanes, Hamming distance, ties by position
    corpus = read_corpus(data / "corpus.jsonl")
    ids = list(corpus)
    model = SentenceEncoder.from_pretrained(tiny_model_dir)
    planes = np.load(idx / "hyperplanes.npy")
    doc_bits = model.encode([doc_text(corpus[i]) for i in ids]) @ planes.T > 0  # (N, 128)
    q_bits = model.encode([query]) @ planes.T > 0  # (1, 128)
    hamming = (doc_bits != q_bits).sum(1)
    want = [ids[i] for i in np.argsort(hamming, kind="stable")[:3]]
    assert shown == want
    assert float(rows[0].split()[2]) == pytest.approx(1 - hamming.min() / 128, abs=1e-4)


def test_binary_index_with_hash_tables_and_bad_options(tmp_path, tiny_model_dir, capsys):
    idx = tmp_path / "mih"
    assert main(["-q", "index", "--corpus", str(demo_data_path()), "--model", str(tiny_model_dir), "--out", str(idx),
                 "--binary", "64", "--hash-method", "multihash", "--tables", "4", "--hash-bits", "16",
                 "--nflip", "2"]) == 0
    meta = json.loads((idx / "meta.json").read_text())
    assert (meta["method"], meta["tables"], meta["hash_bits"], meta["search_params"]) == ("multihash", 4, 16,
                                                                                          {"nflip": 2})
    assert main(["search", "--index", str(idx), "Installing reprlab", "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["rank", "id"]
    fails(capsys, ["index", "--corpus", str(demo_data_path()), "--model", str(tiny_model_dir), "--out",
                   str(tmp_path / "x"), "--binary", "12"], "multiple of 8")
    fails(capsys, ["index", "--corpus", str(demo_data_path()), "--out", str(tmp_path / "x"), "--binary", "64",
                   "--factory", "HNSW32"], "--binary")
    fails(capsys, ["index", "--corpus", str(demo_data_path()), "--out", str(tmp_path / "x"), "--tables", "4"],
          "--tables is an option of binary indexes")
    assert not (tmp_path / "x").exists()
    usage_error(capsys, ["index", "--corpus", str(demo_data_path()), "--out", "x", "--binary", "64",
                         "--hash-method", "lsh"], "invalid choice")  # choices from hashing.METHODS


def test_train_hashing_then_index_and_search_it(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "hashing"
    assert main(["-q", "train", "hashing", "--data", str(demo_data_path()), "--split", "train", "--model",
                 str(tiny_model_dir), "--out", str(run), "--max-steps", "2", "--batch-size", "4",
                 "--passage-max-length", "32", "--scale", "30", "--similarity", "log-angular"]) == 0
    assert (run / "model" / "modules.json").is_file()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("angular_positive" in r for r in logged)
    assert main(["-q", "index", "--corpus", str(demo_data_path()), "--model", str(run / "model"), "--out",
                 str(tmp_path / "idx"), "--binary", "64"]) == 0
    assert main(["search", "--index", str(tmp_path / "idx"), "BM25", "-k", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    usage_error(capsys, ["train", "hashing", "--data", "x", "--out", "y", "--similarity", "hamming"], "invalid choice")


# ------------------------------------------------------------------------------------------------ multi-hop


def test_mdr_train_index_search_evaluate(tmp_path, tiny_model_dir, capsys):
    from reprlab.text.hotpotqa import load_hotpotqa
    from reprlab.text.splits import split

    data = write_hotpot(tmp_path / "toy.jsonl")
    run = tmp_path / "mdr"
    assert main(["-q", "train", "mdr", "--data", str(data), "--out", str(run), "--model", str(tiny_model_dir),
                 "--max-steps", "3", "--batch-size", "4", "--num-negatives", "1", "--negative-sources", "distractors",
                 "--max-passage-length", "32", "--max-query-length", "64", "--beam-size", "3",
                 "--eval-fraction", "0.3"]) == 0
    model = run / "model"
    assert json.loads((model / "mdr.json").read_text())["max_query_length"] == 64
    n_eval = len(split(load_hotpotqa(data).questions, lambda q: q.id, eval_fraction=0.3).eval)
    assert json.loads((run / "split.json").read_text())["eval"] == n_eval

    idx = tmp_path / "idx"
    assert main(["-q", "index", "--multihop", "--data", str(data), "--model", str(model), "--out", str(idx)]) == 0
    corpus = load_hotpotqa(data).corpus
    assert len((idx / "docs.jsonl").read_text().splitlines()) == len(corpus) == 3 * 8  # every paragraph once

    question = "In which city was the author of Copper Rain born?"
    assert main(["search", "--multihop", "--index", str(idx), question, "-k", "2", "--beam", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Q: {question}" and len(out) == 3
    titles = {d["title"] for d in corpus.values()}
    for line in out[1:]:
        hop1, hop2 = line.split("] ", 1)[1].split("  ->  ")
        a, b = hop1.rsplit(" (", 1)[0].strip(" *"), hop2.rsplit(" (", 1)[0].strip(" *")
        assert a in titles and b in titles and a != b  # a chain of two different passages

    assert main(["evaluate", "--multihop", "--data", str(data), "--retriever", str(model), "--beam", "3",
                 "--ks", "2", "5", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["all"]["n"] == n_eval and metrics["bridge"]["n"] == n_eval
    assert {"exact_pair", "pair_recall@2", "pair_recall@5", "chain_recall@2", "passage_recall@5",
            "passage_pair_recall@5"} <= set(metrics["all"])
    assert all(0.0 <= v <= 1.0 for k, v in metrics["all"].items() if k != "n")
    assert metrics["all"]["pair_recall@5"] >= metrics["all"]["pair_recall@2"] >= metrics["all"]["exact_pair"]

    # BM25 fused into both hops: same output shapes; weights 0 reproduce the dense search exactly
    assert main(["search", "--multihop", "--index", str(idx), question, "-k", "2", "--beam", "3",
                 "--bm25-weights", "0.2,0.3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    dense_args = ["evaluate", "--multihop", "--data", str(data), "--retriever", str(model), "--beam", "3", "--json"]
    assert main(dense_args) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main([*dense_args, "--bm25-weights", "0,0"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in zero["all"].items()} == {k: v for k, v in dense["all"].items()}
    assert main([*dense_args, "--bm25-weights", "0.5,0.5"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert fused["all"]["n"] == n_eval and all(0.0 <= v <= 1.0 for k, v in fused["all"].items() if k != "n")


def test_evaluate_multihop_bm25_finds_the_bridge_chains(tmp_path, capsys):
    data = write_hotpot(tmp_path / "toy.jsonl")
    assert main(["-q", "evaluate", "--multihop", "--data", str(data), "--retriever", "bm25", "--split", "all",
                 "--ks", "2", "10"]) == 0
    table = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert table["measure"] == ["all", "bridge"] and table["questions"] == ["8", "8"]
    # the question names the book, so BM25 finds hop 1; the author's paragraph shares only the name
    assert float(table["passage_recall@10"][0]) >= 0.5


def test_multihop_bad_input(tmp_path, capsys, tiny_model_dir):
    data = write_hotpot(tmp_path / "toy.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + '{"question_id": "x", "question_text": "?"}\n')
    fails(capsys, ["train", "mdr", "--data", str(bad), "--out", str(tmp_path / "r")], "bad.jsonl")
    fails(capsys, ["evaluate", "--multihop", "--data", str(bad), "--retriever", "bm25"], "bad.jsonl:2: missing field")
    fails(capsys, ["train", "mdr", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r")],
          "missing.jsonl")
    usage_error(capsys, ["train", "mdr", "--data", str(data), "--out", str(tmp_path / "r"), "--negative-sources",
                         "distractors,tfidf"], "invalid choice 'tfidf'")
    fails(capsys, ["evaluate", "--multihop", "--data", str(data), "--retriever", "bm25", "--split", "dev"], "split")
    fails(capsys, ["index", "--multihop", "--out", str(tmp_path / "i")], "--data")
    fails(capsys, ["index", "--data", str(data), "--out", str(tmp_path / "i")], "--multihop")
    fails(capsys, ["index", "--out", str(tmp_path / "i")], "--corpus")
    fails(capsys, ["search", "--multihop", "--index", str(tmp_path / "nowhere"), "q"], "nowhere")
    usage_error(capsys, ["evaluate", "--multihop", "--data", str(data), "--retriever", "bm25", "--bm25-weights", "0.2"],
                "two comma-separated weights")
    usage_error(capsys, ["evaluate", "--multihop", "--data", str(data), "--retriever", "bm25", "--bm25-weights",
                         "0.2,-1"], "must be finite and >= 0")


def test_demo_shows_the_two_hop_chains(capsys):
    run_demo(show=0, ance_steps=0)  # show=0: no search printout, still evaluates
    out = capsys.readouterr().out
    part = out[out.index("== multi-hop search"):]
    first = [line for line in part.splitlines() if line.startswith("  1. [")]
    assert len(first) == 2  # one top chain per two-hop question, found by the untrained MiniLM
    assert "*Evaluation metrics" in first[0] and "*pytrec_eval" in first[0]
    assert "*Lexical search with BM25" in first[1] and "*bm25s" in first[1]


# ------------------------------------------------------------------------------------------------ QA


@pytest.fixture(scope="module")
def reader_dirs(tmp_path_factory, tiny_model_dir):
    """A plain reader and a Block Skim reader trained for a few steps from the tiny encoder."""
    root = tmp_path_factory.mktemp("readers")
    data = write_squad(root / "toy.json")
    common = ["--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "2",
              "--max-length", "64", "--stride", "16", "--max-question-length", "16", "--eval-fraction", "0"]
    assert main(["-q", "train", "reader", "--out", str(root / "plain"), *common]) == 0
    assert main(["-q", "train", "reader", "--out", str(root / "skim"), *common, "--block-skim", "--skim-layers", "0",
                 "--block-size", "8", "--threshold", "0.1"]) == 0
    return root / "plain" / "model", root / "skim" / "model"


def test_train_reader_freeze_reader_keeps_the_trained_reader(reader_dirs, tmp_path):
    from safetensors.torch import load_file

    plain, _ = reader_dirs
    out = tmp_path / "frozen"
    assert main(["-q", "train", "reader", "--data", str(write_squad(tmp_path / "toy.json")), "--model", str(plain),
                 "--out", str(out), "--max-steps", "3", "--batch-size", "2", "--max-length", "64", "--stride", "16",
                 "--max-question-length", "16", "--eval-fraction", "0", "--block-skim", "--freeze-reader",
                 "--skim-layers", "0", "--block-size", "8", "--features", "diagonal+question"]) == 0
    assert json.loads((out / "model" / "block_skim.json").read_text())["freeze_reader"] is True
    before, after = load_file(plain / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_train_reader_and_answer_from_a_context(reader_dirs, capsys):
    from reprlab.qa.reader import load_reader
    from reprlab.qa.block_skim import BlockSkimReader

    plain, skim = reader_dirs
    assert (plain / "reader_config.json").is_file() and json.loads((plain / "reader_config.json").read_text())[
        "max_length"] == 64
    assert json.loads((skim / "block_skim.json").read_text())["skim_layers"] == [0]
    assert isinstance(load_reader(str(skim)), BlockSkimReader) and not isinstance(load_reader(str(plain)),
                                                                                  BlockSkimReader)
    context, question, _ = SQUAD[0]
    for model in (plain, skim):
        assert main(["answer", "--model", str(model), "--question", question, "--context", context, "--top", "3",
                     "--json"]) == 0
        answers = json.loads(capsys.readouterr().out)
        assert 1 <= len(answers) <= 3 and answers[0]["score"] >= answers[-1]["score"]
        for a in answers:
            assert a["answer"] and context[a["start"]:a["end"]] == a["answer"]  # a span of the context
    assert main(["answer", "--model", str(plain), "--question", question, "--context", context]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Q: {question}" and out[1].split() == ["rank", "answer", "score"] and len(out) == 3


def test_answer_over_an_index_names_the_passage(reader_dirs, tmp_path, tiny_model_dir, capsys):
    from reprlab.text.beir import read_corpus

    idx = tmp_path / "idx"
    assert main(["-q", "index", "--corpus", str(demo_data_path()), "--model", str(tiny_model_dir), "--out",
                 str(idx)]) == 0
    corpus = read_corpus(demo_data_path() / "corpus.jsonl")
    question = "Which library computes BM25 scores?"
    assert main(["answer", "--model", str(reader_dirs[0]), "--question", question, "--index", str(idx), "-k", "3",
                 "--top", "2", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert main(["search", "--index", str(idx), question, "-k", "3"]) == 0
    searched = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    for a in answers:
        assert a["passage"] in searched  # read from the top -k passages only
        assert a["title"] == corpus[a["passage"]]["title"]
        assert corpus[a["passage"]]["text"][a["start"]:a["end"]] == a["answer"]
    assert main(["answer", "--model", str(reader_dirs[0]), "--question", question, "--index", str(idx)]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header == ["rank", "answer", "score", "passage", "title"]


def test_qa_bad_input(reader_dirs, tmp_path, tiny_model_dir, capsys):
    fails(capsys, ["answer", "--model", str(tiny_model_dir), "--question", "q", "--context", "text"], "not a reader")
    fails(capsys, ["answer", "--model", str(tmp_path / "none"), "--question", "q", "--context", "c"], "none")
    fails(capsys, ["answer", "--model", str(reader_dirs[0]), "--question", "q", "--index", str(tmp_path / "noidx")],
          "noidx")
    fails(capsys, ["answer", "--model", str(reader_dirs[0]), "--question", "q", "--context", "  "], "--context")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    fails(capsys, ["train", "reader", "--data", str(notes), "--out", str(tmp_path / "r")], "notes.txt")
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.1", "data": [{"title": "T", "paragraphs": [{"qas": []}]}]}')
    fails(capsys, ["train", "reader", "--data", str(broken), "--out", str(tmp_path / "r")], "broken.json")
    fails(capsys, ["train", "reader", "--data", str(write_squad(tmp_path / "ok.json")), "--out", str(tmp_path / "r"),
                   "--block-skim", "--block-size", "6"], "--block-size")
    fails(capsys, ["train", "reader", "--data", str(tmp_path / "ok.json"), "--out", str(tmp_path / "r"),
                   "--threshold", "0.2"], "need --block-skim")
    usage_error(capsys, ["answer", "--model", "m", "--question", "q"], "--context")  # or --index: one is required
