"""run_distillation: kd / ckd / seed on unlabelled text, saved students, exact resume, bad input."""

import json

import pytest
import torch

from reprlab.distill.ckd import CKDConfig
from reprlab.distill.recipe import DistillConfig, run_distillation
from reprlab.text.corpus import TextOptions, read_texts
from reprlab.distill.seed import SEEDConfig
from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, DataFormatError, ReprlabError


@pytest.fixture
def corpus(tmp_path, texts):
    folder = tmp_path / "beir"
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w") as f:
        for i, t in enumerate(texts[:40]):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i, t in enumerate(texts[40:]):
            f.write(json.dumps({"_id": f"q{i}", "text": t.split(".")[0]}) + "\n")
    return folder


def config(method, corpus, teacher, out, **kw):
    base = dict(method=method, corpus=[str(corpus)], output_dir=str(out), teacher=str(teacher), student="layers:0,2",
                max_length=24, max_steps=4, batch_size=8, lr=1e-3, device="cpu", log_every=1,
                ckd=CKDConfig(window=5), seed_method=SEEDConfig(queue_size=16))
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("method", ["kd", "ckd", "seed"])
def test_each_method_trains_and_saves_a_student(method, corpus, tiny_teacher_dir, tmp_path):
    result = run_distillation(config(method, corpus, tiny_teacher_dir, tmp_path / method))
    assert result.steps == 4 and result.texts == 40  # the corpus; the folder has no train queries
    student = SentenceEncoder.from_pretrained(result.model_dir)
    assert student.encoder.config.num_layers == 2
    teacher = SentenceEncoder.from_pretrained(tiny_teacher_dir)
    changed = not torch.equal(student.encoder.layers[1].ffn.up.weight, teacher.encoder.layers[2].ffn.up.weight)
    assert changed, "the student was trained"
    keys = set(result.metrics[-1])
    expected = {"kd": {"kd_embedding", "kd_score"}, "ckd": {"kd_embedding", "wr_pair", "wr_triplet", "ltr_pair",
                "ltr_triplet"}, "seed": {"seed_ce"}}[method]
    assert expected <= keys


def test_killed_and_resumed_ckd_run_equals_uninterrupted(corpus, tiny_teacher_dir, tmp_path):
    common = dict(max_steps=5, checkpoint_every=2)
    full = run_distillation(config("ckd", corpus, tiny_teacher_dir, tmp_path / "full", **common))
    run_distillation(config("ckd", corpus, tiny_teacher_dir, tmp_path / "cut", **common), stop_after=3)
    assert not (tmp_path / "cut" / "model").exists()
    resumed = run_distillation(config("ckd", corpus, tiny_teacher_dir, tmp_path / "cut", resume=True, **common))
    a = SentenceEncoder.from_pretrained(full.model_dir).encoder.state_dict()
    b = SentenceEncoder.from_pretrained(resumed.model_dir).encoder.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_recipe_reads_its_texts_by_line_with_the_queries_it_names(tmp_path, corpus):
    def texts(**kw):
        return read_texts(corpus, DistillConfig(method="kd", corpus=[str(corpus)], output_dir="o", **kw).text_options())

    assert len(texts(queries="all")) == 48 and len(texts(queries="none")) == 40
    assert len(texts()) == 40, "by default only the queries of a train split, and this folder has none"
    (corpus / "qrels").mkdir()
    (corpus / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq3\td1\t1\n")
    assert len(texts()) == 42
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "b.jsonl").write_text('{"title": "T", "text": "body"}\n')
    lines = TextOptions(unit="line")
    assert read_texts([tmp_path / "a.txt", tmp_path / "b.jsonl"], lines) == ["first line", "second line", "T body"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n')
    with pytest.raises(DataFormatError, match="bad.jsonl:2"):
        read_texts(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ReprlabError, match="does not exist"):
        read_texts(tmp_path / "missing", lines)
    with pytest.raises(ConfigError, match="method"):
        DistillConfig(method="tinybert", corpus=["x"], output_dir="o")


def test_auto_student_picks_layers_on_the_training_texts(corpus, tiny_teacher_dir, tmp_path):
    from reprlab.distill.recipe import load_student
    from reprlab.distill.students import select_layers

    result = run_distillation(config("kd", corpus, tiny_teacher_dir, tmp_path / "auto", student="auto:2", max_steps=1))
    assert SentenceEncoder.from_pretrained(result.model_dir).encoder.config.num_layers == 2
    teacher = SentenceEncoder.from_pretrained(tiny_teacher_dir)
    texts = read_texts(corpus, TextOptions(unit="line", queries="all"))
    best = select_layers(teacher, texts, 2, max_length=24)[0][0]
    student = load_student(teacher, "auto:2", texts, max_length=24, sample=len(texts))
    for j, i in enumerate(best):
        assert torch.equal(student.encoder.layers[j].ffn.up.weight, teacher.encoder.layers[i].ffn.up.weight)
    with pytest.raises(ConfigError, match="auto"):
        load_student(teacher, "auto:x", texts)


def test_dev_fraction_keeps_the_dev_queries_text_out_of_training(corpus, tiny_teacher_dir, tmp_path, monkeypatch):
    """--dev-fraction: the hash dev slice of the train-split queries (the slice DPR/ANCE hold out) is never
    a training text, the other train-split queries still are, and nothing else changes."""
    import reprlab.distill.recipe as recipe
    from reprlab.retrieval.pairs import dev_queries
    from reprlab.text.beir import load_beir, read_queries

    (corpus / "qrels").mkdir()
    (corpus / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    queries = read_queries(corpus / "queries.jsonl")
    dev = dev_queries(load_beir(corpus, split="train"), 0.2)
    assert dev == ["q4", "q5"], "hash fractions 0.067 and 0.152; q0 (0.204) and q7 (0.046, not judged) are not"
    seen = []
    real_train = recipe.train
    monkeypatch.setattr(recipe, "train", lambda model, data, *a, **kw: seen.append(list(data)) or real_train(
        model, data, *a, **kw))
    result = run_distillation(config("kd", corpus, tiny_teacher_dir, tmp_path / "dev", dev_fraction=0.2, max_steps=1))
    trained_on = set(seen[0])
    assert not trained_on & {queries[q] for q in dev}, "a dev query's text reached the training texts"
    assert {queries[q] for q in ("q0", "q1", "q2", "q3")} <= trained_on
    assert result.texts == len(seen[0]) == 44
    seen.clear()
    run_distillation(config("kd", corpus, tiny_teacher_dir, tmp_path / "all", max_steps=1))
    assert {queries[q] for q in dev} <= set(seen[0]), "without dev_fraction every train-split query is read"
    everything = read_texts(corpus, TextOptions(unit="line", queries="all", dev_fraction=0.2))
    assert len(everything) == 45 and queries["q7"] not in everything  # 'all': the dev slice of every query
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="dev_fraction"):
            DistillConfig(method="kd", corpus=["x"], output_dir="o", dev_fraction=bad)
        with pytest.raises(ConfigError, match="must be in"):
            TextOptions(dev_fraction=bad)
