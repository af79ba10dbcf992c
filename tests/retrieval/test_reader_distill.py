"""Reader-to-retriever distillation: the losses against direct computations, the student moving toward the teacher,
staged iterations that resume exactly, the teacher-score JSONL runs, the extractive teacher and score-passages."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import reprlab.qa  # noqa: F401  registers the teacher kinds (FiD, extractive)
from reprlab.errors import ConfigError, DataFormatError
from reprlab.qa.fid import FidConfig, FidReader
from reprlab.qa.reader import Reader, ReaderConfig
from reprlab.qa.teachers import ExtractiveTeacher, ScoringConfig, passage_context, question_passage_attention
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.reader_distill import (
    ReaderDistillConfig,
    distillation_loss,
    kl_distillation,
    margin_distillation,
    mse_distillation,
    run_reader_distill,
)
from reprlab.retrieval.reader_distill.stages import ScoreCollate, distill_loss_fn
from reprlab.text.score_runs import (
    ScoredPassage,
    ScoredQuery,
    read_score_provenance,
    read_score_run,
    write_score_run,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ losses


def direct_kl(student, teacher, mask, temperature):
    total = 0.0
    for s, t, m in zip(student.tolist(), teacher.tolist(), mask.tolist()):
        s = [x for x, keep in zip(s, m) if keep]
        t = [x / temperature for x, keep in zip(t, m) if keep]
        zs, zt = np.logaddexp.reduce(s), np.logaddexp.reduce(t)
        total += sum(np.exp(ti - zt) * ((ti - zt) - (si - zs)) for si, ti in zip(s, t))
    return total / len(student)


def test_losses_equal_direct_computations():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, generator=g) * 3, torch.randn(3, 5, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    for temperature in (1.0, 0.5):
        assert kl_distillation(student, teacher, mask, temperature).item() == pytest.approx(
            direct_kl(student, teacher, mask, temperature), rel=1e-5)
        want = np.mean([(s - t / temperature) ** 2 for row_s, row_t, row_m in zip(student.tolist(), teacher.tolist(),
                                                                                  mask.tolist())
                        for s, t, m in zip(row_s, row_t, row_m) if m])
        assert mse_distillation(student, teacher, mask, temperature).item() == pytest.approx(want, rel=1e-5)
    hinges = [max(0.0, 0.7 - (s[i] - s[j]))
              for s, t, m in zip(student.tolist(), teacher.tolist(), mask.tolist())
              for i in range(5) for j in range(5) if m[i] and m[j] and t[i] > t[j]]
    assert margin_distillation(student, teacher, mask, 0.7).item() == pytest.approx(np.mean(hinges), rel=1e-5)
    assert kl_distillation(teacher.clone(), teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    # masked candidates are ignored whatever their scores
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[~mask], noisy_t[~mask] = 50.0, -50.0
    for kind in ("kl", "mse", "margin"):
        assert distillation_loss(noisy_s, noisy_t, mask, kind).item() == pytest.approx(
            distillation_loss(student, teacher, mask, kind).item(), rel=1e-5)


def kendall(a, b) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    return sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs) / len(pairs)


@pytest.mark.parametrize("kind", ["kl", "mse", "margin"])
def test_the_gradient_moves_the_student_ranking_toward_the_teacher(kind):
    teacher = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    student = torch.tensor([[-1.0, 0.0, 1.0, 2.0, 3.0]], requires_grad=True)  # the reverse order
    before = kendall(student[0].tolist(), teacher[0].tolist())
    opt = torch.optim.SGD([student], lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        distillation_loss(student, teacher, kind=kind).backward()
        opt.step()
    assert before == -1.0 and kendall(student[0].tolist(), teacher[0].tolist()) == 1.0


def test_a_dual_encoder_learns_the_teacher_ranking(tiny_model_dir):
    """The real student on a toy: one question, five passages, a teacher that likes the passages about cats."""
    torch.manual_seed(0)
    model = DualEncoder.from_pretrained(tiny_model_dir)
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(
        ["cats purr on the mat", "a cat sleeps all day", "stock markets fell", "rain in spain", "the old cat hunts"])}
    teacher = [4.0, 3.0, -2.0, -2.5, 3.5]
    record = ScoredQuery("q", "which animal purrs?", [ScoredPassage(f"d{i}", s) for i, s in enumerate(teacher)])
    collate = ScoreCollate(model.query_encoder.tokenizer, corpus, 0, 16, 16)
    loss_fn = distill_loss_fn("kl", 20.0, 1.0, 1.0)
    batch = collate([record], np.random.default_rng(0))

    def student_scores():
        with torch.no_grad():
            q, p = model(batch["queries"], batch["passages"])
        return (q @ p.T)[0].tolist()

    before = kendall(student_scores(), teacher)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(25):
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
    assert kendall(student_scores(), teacher) > max(before, 0.5)


def test_the_student_scores_each_question_against_its_own_candidates(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir).eval()
    corpus = {f"d{i}": {"title": "", "text": f"passage number {i} about topic {i % 3}"} for i in range(6)}
    records = [ScoredQuery("a", "question about topic 0", [ScoredPassage(f"d{i}", float(i)) for i in range(3)]),
               ScoredQuery("b", "another question, topic 2", [ScoredPassage(f"d{i}", -float(i)) for i in range(3, 6)])]
    batch = ScoreCollate(model.query_encoder.tokenizer, corpus, 0, 16, 16)(records, np.random.default_rng(0))
    with torch.no_grad():
        got = distill_loss_fn("kl", 5.0, 2.0, 1.0)(model, batch)
        q = model.query_encoder.embed([r.query for r in records], 16)
        p = model.query_encoder.embed([corpus[f"d{i}"]["text"] for i in range(6)], 16)
        student = 5.0 * torch.stack([q[0] @ p[:3].T, q[1] @ p[3:].T])  # (2, 3)
        want = kl_distillation(student, batch["teacher"], None, 2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_score_collate_samples_candidates_with_the_step_generator(tiny_model_dir):
    model = DualEncoder.from_pretrained(tiny_model_dir)
    corpus = {f"d{i}": {"title": "", "text": f"passage {i}"} for i in range(6)}
    records = [ScoredQuery("a", "q a", [ScoredPassage(f"d{i}", float(i)) for i in range(6)]),
               ScoredQuery("b", "q b", [ScoredPassage("d0", 1.0), ScoredPassage("d1", 2.0)])]
    collate = ScoreCollate(model.query_encoder.tokenizer, corpus, 3, 16, 16)
    one, two = collate(records, np.random.default_rng(5)), collate(records, np.random.default_rng(5))
    assert torch.equal(one["teacher"], two["teacher"]) and one["teacher"].shape == (2, 3)
    assert one["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert one["passages"]["input_ids"].shape[0] == 6
    assert len(set(one["teacher"][0].tolist())) == 3  # three different candidates, without replacement


# ------------------------------------------------------------------------------------------------ score runs


def test_score_runs_round_trip_and_refuse_bad_lines(tmp_path):
    records = [ScoredQuery("q1", "who?", [ScoredPassage("d1", 0.5, 12.0), ScoredPassage("d2", 1.5)], ["Ann"]),
               ScoredQuery("q2", "where?", [ScoredPassage("d3", -1.0)])]
    path = tmp_path / "s.jsonl"
    assert write_score_run(path, records, {"teacher": "x"}) == 2
    assert read_score_run(path) == records and read_score_provenance(path) == {"teacher": "x"}
    assert records[0].ranking() == ["d2", "d1"]
    bad = {"passages": '{"query_id": "q", "query": "x", "passages": []}',
           "score": '{"query_id": "q", "query": "x", "passages": [{"id": "d", "score": "high"}]}',
           "twice": '{"query_id": "q", "query": "x", "passages": [{"id": "d", "score": 1}, {"id": "d", "score": 2}]}',
           "unknown": '{"query_id": "q", "query": "x", "passage": []}'}
    for name, line in bad.items():
        (tmp_path / "bad.jsonl").write_text(line + "\n")
        with pytest.raises(DataFormatError, match="bad.jsonl:1"):
            read_score_run(tmp_path / "bad.jsonl")
    (tmp_path / "dup.jsonl").write_text(path.read_text().splitlines()[1] + "\n" + path.read_text().splitlines()[1])
    with pytest.raises(DataFormatError, match="dup.jsonl:2"):
        read_score_run(tmp_path / "dup.jsonl")
    with pytest.raises(DataFormatError):
        write_score_run(tmp_path / "nan.jsonl", [ScoredQuery("q", "x", [ScoredPassage("d", float("nan"))])])
    assert not (tmp_path / "nan.jsonl").exists()


# ------------------------------------------------------------------------------------------------ extractive teacher


def test_the_extractive_teacher_signals_equal_their_definitions(tiny_model_dir):
    torch.manual_seed(0)
    reader = Reader.from_pretrained(tiny_model_dir, ReaderConfig(max_length=48, stride=8, max_question_length=12))
    reader.eval()
    passages = [("Broncos", "Denver Broncos defeated the Carolina Panthers 24-10 to earn a title."),
                ("Stadium", "The game was played at Levi's Stadium in Santa Clara, California, on a sunny day "
                            "with many fans and very loud music all afternoon and evening long. " * 3)]
    windows = reader.featurize(["Who won?"] * 2, [passage_context(*p) for p in passages]).overflow_to_sample
    assert (windows == 1).sum() >= 3  # the long passage is read in several windows: its score is their best
    span = ExtractiveTeacher(reader, ScoringConfig(signal="span")).score_passages(["Who won?"], [passages])[0]
    for (title, text), got in zip(passages, span):
        assert got == pytest.approx(reader.answer("Who won?", passage_context(title, text))[0].score, abs=1e-4)
    attn = ExtractiveTeacher(reader, ScoringConfig(signal="question-attention")).score_passages(
        ["Who won?"], [passages[:1]])[0]
    batch = reader.featurize(["Who won?"], [passage_context(*passages[0])])
    ids, types, seq = batch.input_ids, batch.token_type_ids, batch.sequence_ids
    mask = batch.attention_mask.bool()
    with torch.no_grad():  # the plain computation: every layer's q k^T / sqrt(d), averaged over the pairs
        x = reader.encoder.embed(ids, types)
        values = []
        for layer in reader.encoder.layers:
            nh = layer.attn.num_heads
            q = layer.attn.query(x).view(1, -1, nh, 32 // nh).transpose(1, 2)
            k = layer.attn.key(x).view(1, -1, nh, 32 // nh).transpose(1, 2)
            s = (q @ k.transpose(-1, -2)) / np.sqrt(32 // nh)
            for h in range(nh):
                for i in np.nonzero((seq[0] == 0).numpy())[0]:
                    for j in np.nonzero((seq[0] == 1).numpy())[0]:
                        values.append(float(s[0, h, i, j]))
            x, _ = layer(x, mask)
    assert attn[0] == pytest.approx(np.mean(values), rel=1e-4)
    direct = question_passage_attention(reader.encoder, ids, batch.attention_mask, types, seq, [0, 1], "pre", "mean",
                                        "cpu")
    assert direct[0] == pytest.approx(attn[0], rel=1e-5)
    with pytest.raises(ConfigError, match="signal"):
        ExtractiveTeacher(reader, ScoringConfig(signal="cross-attention"))


def test_the_span_null_signal_is_the_best_span_over_its_windows_null(tiny_model_dir):
    """span-null = max over a passage's windows of (best valid span's start + end logit - the window's [CLS]
    start + end logit), against a plain loop over every (i, j) of every window."""
    torch.manual_seed(0)
    reader = Reader.from_pretrained(tiny_model_dir, ReaderConfig(max_length=48, stride=8, max_question_length=12,
                                                                 max_answer_length=5)).eval()
    passages = [("Broncos", "Denver Broncos defeated the Carolina Panthers 24-10 to earn a title."),
                ("Stadium", "The game was played at Levi's Stadium in Santa Clara, California, on a sunny day "
                            "with many fans and very loud music all afternoon and evening long. " * 3)]
    got = ExtractiveTeacher(reader, ScoringConfig(signal="span-null")).score_passages(["Who won?"], [passages])[0]
    span = ExtractiveTeacher(reader, ScoringConfig(signal="span")).score_passages(["Who won?"], [passages])[0]
    for p, (title, text) in enumerate(passages):
        batch = reader.featurize(["Who won?"], [passage_context(title, text)])
        start, end, _ = reader.window_logits(batch)
        best = -np.inf
        for w in range(start.shape[0]):
            ctx = [i for i in range(start.shape[1]) if batch.sequence_ids[w, i] == 1 and batch.attention_mask[w, i]]
            null = float(start[w, 0] + end[w, 0])
            for i in ctx:
                for j in ctx:
                    if i <= j < i + 5:
                        best = max(best, float(start[w, i] + end[w, j]) - null)
        assert got[p] == pytest.approx(best, abs=1e-4)
    assert not np.allclose(got, span, atol=1e-3), "the null is subtracted"


# ------------------------------------------------------------------------------------------------ the loop


def hotpot_file(tmp_path, n=10):
    lines = []
    for i in range(n):
        city = ["Paris", "Lyon", "Nice", "Lille", "Brest"][i % 5]
        contexts = [{"id": f"{i}a", "title": f"Band {i}", "paragraph_text": f"Band {i} was formed by Ann Lee {i}.",
                     "is_supporting": True},
                    {"id": f"{i}b", "title": f"Other {i}", "paragraph_text": f"The committee {i} met in spring.",
                     "is_supporting": False},
                    {"id": f"{i}c", "title": f"Ann Lee {i}", "paragraph_text": f"Ann Lee {i} was born in {city}.",
                     "is_supporting": True}]
        lines.append({"question_id": f"q{i}", "question_text": f"Where was the founder of Band {i} born?",
                      "answers_objects": [{"spans": [city]}], "contexts": contexts})
    path = tmp_path / "hotpot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


@pytest.fixture
def fid_dir(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    FidReader.from_encoder(tiny_model_dir, FidConfig(passage_max_length=32, answer_max_length=4)).save_pretrained(
        tmp_path / "fid")
    return str(tmp_path / "fid")


def distill_config(tmp_path, fid_dir, tiny_model_dir, out="run", **kw):
    values = dict(output_dir=str(tmp_path / out), data=hotpot_file(tmp_path), reader=fid_dir,
                  student=str(tiny_model_dir), iterations=2, candidates=4, sample=3, eval_fraction=0.2,
                  passage_max_length=32, query_max_length=16, ks=[1, 2], max_steps=3, batch_size=2, lr=1e-3,
                  checkpoint_every=1, device="cpu", log_every=1)
    values.update(kw)
    return ReaderDistillConfig(**values)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_iterations_resume_exactly_and_skip_the_stages_done(tmp_path, fid_dir, tiny_model_dir, monkeypatch):
    full = run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, "full"))
    assert full.iterations == 2 and set(full.recall) == {"iter-0", "iter-1", "iter-2"}
    cut = run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, "cut"), stop_after=5)  # in iter 2
    assert cut.model_dir is None and cut.iterations == 1
    manifest = json.loads((tmp_path / "cut" / "iter-2" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"score"}
    scored = (tmp_path / "cut" / "iter-1" / "scores.jsonl").stat().st_mtime_ns
    calls = []
    from reprlab.qa.fid.scores import FidTeacher

    original = FidTeacher.score_passages
    monkeypatch.setattr(FidTeacher, "score_passages", lambda self, q, p: calls.append(len(q)) or original(self, q, p))
    resumed = run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, "cut", resume=True))
    assert calls == [] and (tmp_path / "cut" / "iter-1" / "scores.jsonl").stat().st_mtime_ns == scored
    a, b = weights(full.model_dir), weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for n in (1, 2):
        assert read_score_run(tmp_path / "full" / f"iter-{n}" / "scores.jsonl") == \
            read_score_run(tmp_path / "cut" / f"iter-{n}" / "scores.jsonl")
    # iteration 2 scored iteration 1's candidates, not BM25's
    assert json.loads((tmp_path / "full" / "iter-2" / "manifest.json").read_text())["stages"]["score"][
        "retriever"].endswith("iter-1/retriever/model")
    with pytest.raises(ConfigError, match="other settings"):
        run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, "full", resume=True, loss="mse"))
    with pytest.raises(ConfigError, match="--resume"):
        run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, "full"))
    from reprlab.retrieval.dense import DenseRetriever

    ours = DenseRetriever.from_model(full.model_dir).encode_queries(["where was Ann Lee born?"])  # a normal folder
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(str(full.model_dir), device="cpu").encode(["where was Ann Lee born?"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_reader_is_retrained_from_the_second_iteration(tmp_path, fid_dir, tiny_model_dir):
    result = run_reader_distill(distill_config(tmp_path, fid_dir, tiny_model_dir, retrain_reader=True,
                                               reader_passages=2, reader_epochs=1.0, reader_batch_size=2,
                                               evaluate=False))
    stages = json.loads((tmp_path / "run" / "iter-2" / "manifest.json").read_text())["stages"]
    assert "read" not in json.loads((tmp_path / "run" / "iter-1" / "manifest.json").read_text())["stages"]
    assert stages["read"]["model"] == "reader/model" and stages["score"]["reader"].endswith("iter-2/reader/model")
    retrained = load_file(str(tmp_path / "run" / "iter-2" / "reader" / "model" / "decoder.safetensors"))
    before = load_file(str(tmp_path / "fid" / "decoder.safetensors"))
    assert any(not torch.equal(retrained[k], before[k]) for k in before) and result.iterations == 2


def test_score_passages_writes_a_run_with_provenance(tmp_path, fid_dir, capsys):
    from reprlab.cli import main

    data = hotpot_file(tmp_path)
    out = tmp_path / "scores.jsonl"
    code = main(["-q", "score-passages", "--reader", fid_dir, "--data", data, "--out", str(out), "--candidates", "3",
                 "--questions", "all", "--softmax", "post", "--layers", "0", "--json"])
    assert code == 0
    records = read_score_run(out)
    assert len(records) == 10 and all(len(r.passages) == 3 for r in records)
    assert read_score_provenance(out)["scoring"]["softmax"] == "post"
    summary = json.loads(capsys.readouterr().out)
    assert [row["ranking"] for row in summary["gold_recall"]] == ["retriever", "reader (cross-attention)"]
    assert main(["-q", "score-passages", "--reader", str(tmp_path), "--data", data, "--out", str(out)]) == 2
    assert "not a reader" in capsys.readouterr().err
    assert main(["-q", "score-passages", "--reader", fid_dir, "--data", data, "--out", str(out),
                 "--signal", "span"]) == 2
    assert "--signal" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bench_quick_run_writes_every_table(tmp_path, shared_data):
    """bench/reader_distill.py --quick on the shared data (a tiny random encoder: the code path, not the numbers)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    data_root = shared_data("hotpotqa_dev500_ircot").parent
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "rd.json"
    env = {**os.environ, "REPRLAB_SHARED_DATA": str(data_root)}
    proc = subprocess.run([sys.executable, "bench/reader_distill.py", "--quick", "--work-dir", str(tmp_path / "w"),
                           "--output", str(out)], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    for name in ("hotpotqa", "xquad"):
        rows = record["datasets"][name]["recall"]
        assert {"bm25", "minilm", "distill-fid-iter-1", "distill-fid-iter-2", "distill-extractive-iter-1",
                "dpr"} <= set(rows)
        assert set(record["datasets"][name]["probe"]) == {f"{how}@{k}" for how in ("retriever", "attention")
                                                          for k in (1, 2, 5)}
