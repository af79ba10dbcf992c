"""The extractive reader: span decoding, windows, labels, persistence, training recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reprlab.errors import ConfigError, ReprlabError
from reprlab.qa.reader import Reader, ReaderConfig, best_spans
from reprlab.qa.recipe import ReaderTrainingConfig, run_reader_training
from reprlab.qa.squad import load_squad, normalize_answer
from reprlab.qa.training import collate_features, length_grouped_order

from .conftest import CONTEXTS, QAS, write_squad

LONG_CONTEXT = " ".join(f"Sentence {i} tells that item{i} weighs {3 * i} kilograms." for i in range(40))


@pytest.fixture
def tiny_reader(tiny_encoder_dir):
    torch.manual_seed(1)
    return Reader.from_pretrained(tiny_encoder_dir, ReaderConfig(max_length=64, stride=16, max_question_length=16,
                                                                 max_answer_length=8))


def brute_force_spans(s, e, ctx, max_len):
    spans = []
    T = len(s)
    for i in range(T):
        for j in range(i, min(T, i + max_len)):
            if ctx[i] and ctx[j]:
                spans.append((float(s[i] + e[j]), i, j))
    return sorted(spans, key=lambda x: -x[0])


def test_best_spans_equal_brute_force_and_stay_in_the_context():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 37
    start, end = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    ctx = torch.zeros(B, T, dtype=torch.bool)
    ctx[0, 5:30] = True
    ctx[1, 9:12] = True
    ctx[2, [3, 7, 8, 20]] = True  # holes, e.g. positions removed by Block Skim
    # row 3 has no context at all
    start[~ctx] += 100.0  # question, special and padding tokens look very attractive
    end[~ctx] += 100.0
    end[0, 5] = float("-inf")  # a removed position is never picked
    got = best_spans(start, end, ctx, max_answer_length=5, n_best=12)
    for b in range(B):
        want = [x for x in brute_force_spans(start[b], end[b], ctx[b], 5) if x[0] != float("-inf")][:12]
        assert [(i, j) for _, i, j in got[b]] == [(i, j) for _, i, j in want]
        torch.testing.assert_close(torch.tensor([x[0] for x in got[b]]), torch.tensor([x[0] for x in want]))
        for score, i, j in got[b]:
            assert ctx[b, i] and ctx[b, j] and i <= j < i + 5
    assert got[3] == [] and len(got[1]) == 6  # 3 tokens: 3 + 2 + 1 spans


def test_windows_cover_the_context_with_the_stride(tiny_reader):
    batch = tiny_reader.featurize(["How heavy is item7?"], [LONG_CONTEXT])
    n = batch.input_ids.shape[0]
    assert n > 3 and batch.overflow_to_sample.tolist() == [0] * n
    seen = set()
    previous = None
    for w in range(n):
        ctx = (batch.sequence_ids[w] == 1).nonzero().flatten()
        spans = [tuple(batch.offsets[w, i].tolist()) for i in ctx]
        assert batch.attention_mask[w].sum() <= 64
        if previous is not None:
            assert len(set(previous) & set(spans)) == 16, "neighbouring windows share `stride` tokens"
        previous = spans
        seen.update(spans)
    enc = tiny_reader.tokenizer.encode_raw([LONG_CONTEXT])[0]
    assert seen == {tuple(o) for o, s in zip(enc.offsets, enc.sequence_ids) if s is not None}


def test_one_window_when_the_context_fits(tiny_encoder_dir):
    reader = Reader.from_pretrained(tiny_encoder_dir, ReaderConfig(max_length=None))
    assert reader.max_length == 512
    batch = reader.featurize(["How heavy is item7?"], [LONG_CONTEXT])
    assert batch.input_ids.shape[0] == 1 and batch.input_ids.shape[1] > 384


def test_answers_are_spans_of_the_context(tiny_reader):
    question = "How heavy is item7?"
    answers = tiny_reader.answer(question, LONG_CONTEXT, top_k=50)
    assert len(answers) == 50
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    assert len({(a.start, a.end) for a in answers}) == 50, "a span found in two windows is listed once"
    for a in answers:
        assert 0 <= a.start < a.end <= len(LONG_CONTEXT)
        assert a.text == LONG_CONTEXT[a.start:a.end] and a.text == a.text.strip()
        assert question not in a.text
        n_tokens = len(tiny_reader.tokenizer.encode_raw([a.text])[0].ids) - 2
        assert n_tokens <= 8


def test_several_contexts_and_their_ids(tiny_reader):
    answers = tiny_reader.answer("Who won?", CONTEXTS, top_k=30, context_ids=["d0", "d1", "d2", "d3"])
    assert {a.context_index for a in answers} == {0, 1, 2, 3}
    for a in answers:
        assert a.context_id == f"d{a.context_index}"
        assert CONTEXTS[a.context_index][a.start:a.end] == a.text
    batch = tiny_reader.answer_batch(["Who won?", "Where?"], [CONTEXTS[:2], CONTEXTS[2:]], top_k=3)
    assert len(batch) == 2 and all(len(x) == 3 for x in batch)
    with pytest.raises(ReprlabError, match="context ids"):
        tiny_reader.answer("Who won?", CONTEXTS, context_ids=["a"])
    with pytest.raises(ReprlabError, match="question is empty"):
        tiny_reader.answer("  ", CONTEXTS)


def test_long_questions_are_clipped(tiny_reader):
    question = " ".join(["why"] * 100) + "?"
    batch = tiny_reader.featurize([question], [CONTEXTS[0]])
    assert int((batch.sequence_ids[0] == 0).sum()) == 16


def test_bad_configs():
    with pytest.raises(ConfigError, match="stride"):
        ReaderConfig(max_length=100, stride=40, max_question_length=64)
    with pytest.raises(ConfigError):
        ReaderConfig(max_answer_length=0)


def test_training_labels_point_at_the_answer(tiny_reader, tmp_path):
    examples = load_squad(write_squad(tmp_path / "s.json"))
    long = write_squad(tmp_path / "l.json", qas=[("How heavy is item33?", "99 kilograms")], contexts=[LONG_CONTEXT])
    examples += load_squad(long)
    items = tiny_reader.training_features(examples)
    assert len(items) > len(examples), "the long context needs several windows"
    with_answer = [it for it in items if it["start_positions"] > 0]
    assert len(with_answer) >= len(examples)
    for it in items:
        s, e = it["start_positions"], it["end_positions"]
        if s == 0:
            assert e == 0
            continue
        assert it["context_mask"][s] and it["context_mask"][e]
        text = tiny_reader.tokenizer.decode(it["input_ids"][s:e + 1].tolist())  # word pieces: compare sans spaces
        squeeze = lambda x: normalize_answer(x).replace(" ", "")  # noqa: E731
        assert squeeze(text) in {squeeze(a) for _, a in QAS} | {"99kilograms"}
    batch = collate_features(items[:3])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["context_mask"].shape


def test_an_unanswerable_question_points_every_window_at_cls(tiny_reader, tmp_path):
    """SQuAD 2.0's unanswerable questions: every window of the example targets [CLS] (0, 0); the same context with
    an answer targets it in the window that holds it."""
    from reprlab.qa.squad import QAExample

    answer = "99 kilograms"
    at = LONG_CONTEXT.index(answer)
    yes = QAExample("y", "How heavy is item33?", LONG_CONTEXT, [answer], [(at, at + len(answer))], group="g")
    no = QAExample("n", "How heavy is item33?", LONG_CONTEXT, [], [], group="g")
    with_answer, without = tiny_reader.training_features([yes]), tiny_reader.training_features([no])
    assert len(without) == len(with_answer) > 1
    assert all(it["start_positions"] == it["end_positions"] == 0 for it in without)
    assert any(it["start_positions"] > 0 for it in with_answer)


def test_save_load_round_trip_and_transformers_layout(tiny_reader, tmp_path):
    with torch.no_grad():
        tiny_reader.qa_outputs.bias.copy_(torch.tensor([0.3, -0.2]))
    tiny_reader.save_pretrained(tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "reader_config.json"} <= files
    assert {"qa_outputs.weight", "qa_outputs.bias", "bert.embeddings.word_embeddings.weight"} <= set(
        load_file(tmp_path / "r" / "model.safetensors"))
    loaded = Reader.from_pretrained(tmp_path / "r").eval()
    assert loaded.config == tiny_reader.config
    batch = tiny_reader.featurize(["Who won?"], [CONTEXTS[0]])
    tiny_reader.eval()
    with torch.no_grad():
        a = tiny_reader(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        b = loaded(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert torch.equal(a.start_logits, b.start_logits) and torch.equal(a.end_logits, b.end_logits)
    assert tiny_reader.answer("Who won?", CONTEXTS, top_k=3) == loaded.answer("Who won?", CONTEXTS, top_k=3)

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "r")).eval()
    with torch.no_grad():
        ref = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids)
    torch.testing.assert_close(ref.start_logits, a.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref.end_logits, a.end_logits, atol=1e-5, rtol=0)


def test_a_tiny_reader_overfits_a_few_examples(tiny_encoder_dir, tmp_path):
    data = write_squad(tmp_path / "train.json")
    cfg = ReaderTrainingConfig(
        output_dir=str(tmp_path / "run"), data=[str(data)], model=str(tiny_encoder_dir), eval_fraction=0.0,
        reader=ReaderConfig(max_length=64, stride=16, max_question_length=16), max_steps=120, batch_size=4,
        lr=3e-3, warmup_ratio=0.05, device="cpu",
    )
    result = run_reader_training(cfg)
    assert result.steps == 120 and result.train_examples == 4 and result.eval_metrics is None
    reader = Reader.from_pretrained(result.model_dir)
    for (question, answer), context in zip(QAS, CONTEXTS):
        assert reader.answer(question, context)[0].text == answer
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.1 * losses[0]


def test_length_grouped_order():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 300, (1000,), generator=g).tolist()
    order = length_grouped_order(lengths, batch_size=16, steps=100, seed=3)
    assert len(order) == 1600 and order == length_grouped_order(lengths, 16, 100, 3)
    per_pass = 1000 // 16 * 16
    assert len(set(order[:per_pass])) == per_pass, "a pass uses each window at most once"
    spread = lambda o: sum(max(lengths[i] for i in o[k:k + 16]) - min(lengths[i] for i in o[k:k + 16])  # noqa: E731
                           for k in range(0, len(o), 16))
    shuffled = torch.randperm(1000, generator=g).tolist()[:per_pass]
    assert spread(order[:per_pass]) < 0.2 * spread(shuffled), "batches hold windows of similar lengths"
    first_batches = {tuple(sorted(order[k:k + 16])) for k in range(0, per_pass, 16)}
    second_batches = {tuple(sorted(order[per_pass + k:per_pass + k + 16])) for k in range(0, 1600 - per_pass - 15, 16)}
    assert len(first_batches & second_batches) < 5, "each pass regroups the windows"


@pytest.mark.parametrize("group_by_length", [True, False])
def test_training_recipe_resumes_exactly(tiny_encoder_dir, tmp_path, group_by_length):
    data = write_squad(tmp_path / "train.json")
    other = write_squad(tmp_path / "more.json", title="U")

    def config(name, **kw):
        return ReaderTrainingConfig(
            output_dir=str(tmp_path / name), data=[str(data), str(other)], model=str(tiny_encoder_dir),
            eval_fraction=0.0, reader=ReaderConfig(max_length=64, stride=16, max_question_length=16),
            max_steps=7, batch_size=2, lr=1e-3, checkpoint_every=3, device="cpu", group_by_length=group_by_length,
            **kw)

    full = run_reader_training(config("full"))
    cut = run_reader_training(config("cut"), stop_after=5)
    assert cut.model_dir is None and cut.steps == 5
    resumed = run_reader_training(config("cut", resume=True))
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_recipe_evaluates_on_the_held_out_articles_only(tiny_encoder_dir, tmp_path):
    # four one-article files; eval_fraction is set between the two lowest article hashes, so that the
    # rule holds out exactly one article
    from reprlab.text.splits import hash_fraction

    titles = ("T0", "T1", "T2", "T3")
    files = [str(write_squad(tmp_path / f"{t}.json", title=t)) for t in titles]
    fractions = sorted((hash_fraction(t), t) for t in titles)
    eval_fraction = (fractions[0][0] + fractions[1][0]) / 2
    held_title = fractions[0][1]
    cfg = ReaderTrainingConfig(
        output_dir=str(tmp_path / "run"), data=files, model=str(tiny_encoder_dir), eval_fraction=eval_fraction,
        reader=ReaderConfig(max_length=64, stride=16, max_question_length=16), max_steps=2, batch_size=4,
        device="cpu")
    result = run_reader_training(cfg)
    assert result.train_examples == 12
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["eval_examples"] == {f: (4 if f.endswith(f"{held_title}.json") else 0) for f in files}
    assert list(result.eval_metrics) == [f for f in files if f.endswith(f"{held_title}.json")]
    assert result.eval_metrics[files[int(held_title[1])]]["n"] == 4



def test_the_dev_side_is_neither_trained_on_nor_evaluated(tiny_encoder_dir, tmp_path, monkeypatch):
    # four one-article files: the lowest hash is held out for eval, the next for dev (tuning), two train
    from reprlab.qa import recipe as qa_recipe
    from reprlab.text.splits import hash_fraction

    titles = ("T0", "T1", "T2", "T3")
    files = [str(write_squad(tmp_path / f"{t}.json", title=t)) for t in titles]
    fractions = sorted((hash_fraction(t), t) for t in titles)
    eval_fraction = (fractions[0][0] + fractions[1][0]) / 2
    dev_fraction = (fractions[1][0] + fractions[2][0]) / 2 - eval_fraction
    seen: list[str] = []
    original = Reader.training_features
    monkeypatch.setattr(Reader, "training_features",
                        lambda self, examples: seen.extend(e.group for e in examples) or original(self, examples))
    cfg = ReaderTrainingConfig(
        output_dir=str(tmp_path / "run"), data=files, model=str(tiny_encoder_dir), eval_fraction=eval_fraction,
        dev_fraction=dev_fraction, reader=ReaderConfig(max_length=64, stride=16, max_question_length=16),
        max_steps=1, batch_size=4, device="cpu")
    result = qa_recipe.run_reader_training(cfg)
    assert result.train_examples == 8 and set(seen) == {fractions[2][1], fractions[3][1]}
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["dev_fraction"] == dev_fraction and sum(split["eval_examples"].values()) == 4
    assert [f.endswith(f"{fractions[0][1]}.json") for f in result.eval_metrics] == [True]
    with pytest.raises(ConfigError) as err:
        ReaderTrainingConfig(output_dir="o", data=files, eval_fraction=0.5, dev_fraction=0.6)
    assert err.value.field == "dev_fraction"

def test_recipe_reads_hotpotqa_over_all_paragraphs(tiny_encoder_dir, tmp_path):
    filler = " ".join(f"word{i}" for i in range(60))
    records = [{"question_id": f"q{n}", "question_text": f"Where did person {n} live?",
                "answers_objects": [{"spans": [city]}],
                "contexts": [{"id": "0", "title": "Other", "paragraph_text": filler, "is_supporting": False},
                             {"id": "1", "title": f"P{n}", "paragraph_text": f"Person {n} lived in {city}.",
                              "is_supporting": True},
                             {"id": "2", "title": "More", "paragraph_text": filler, "is_supporting": False}]}
               for n, city in enumerate(("Paris", "Rome", "Oslo"))]
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")

    def run(contexts):
        return run_reader_training(ReaderTrainingConfig(
            output_dir=str(tmp_path / contexts), data=[str(path)], model=str(tiny_encoder_dir), eval_fraction=0.0,
            reader=ReaderConfig(max_length=64, stride=16, max_question_length=16), max_steps=1, batch_size=2,
            device="cpu", hotpotqa_contexts=contexts))

    supporting, everything = run("supporting"), run("all")
    assert supporting.train_examples == everything.train_examples == 3
    assert supporting.train_windows == 3  # one short paragraph each
    assert everything.train_windows > 3 * 3  # ~130 words of distractors: several windows per question
    with pytest.raises(ConfigError, match="hotpotqa_contexts"):
        ReaderTrainingConfig(output_dir=str(tmp_path / "x"), data=[str(path)], hotpotqa_contexts="gold")
