"""The long-context reader: position tiling, HotpotQA over all paragraphs, one window, the recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.cluster import cluster_layers
from reprlab.qa.long_reader import (
    LongReaderConfig, LongReaderTrainingConfig, build_long_reader, extend_position_embeddings, load_long_hotpotqa,
    load_long_reader, run_long_reader_training,
)

FILLER = ("The committee met again in the spring and discussed the budget, the roads and the old library at "
          "length before adjourning. ")


def record(qid, question, answer, gold, distractors):
    contexts = [{"id": f"{qid}-g{i}", "title": t, "paragraph_text": x, "is_supporting": True}
                for i, (t, x) in enumerate(gold)]
    contexts += [{"id": f"{qid}-d{i}", "title": t, "paragraph_text": x, "is_supporting": False}
                 for i, (t, x) in enumerate(distractors)]
    contexts = contexts[:1] + contexts[2:] + contexts[1:2]  # the answer's gold paragraph last
    return {"question_id": qid, "question_text": question, "answers_objects": [{"spans": [answer]}],
            "contexts": contexts}


def write_hotpot(path, n=8, filler=4):
    lines = []
    for i in range(n):
        city = ["Paris", "Lyon", "Nice", "Lille", "Brest", "Dijon", "Tours", "Nancy"][i % 8]
        gold = [(f"Band {i}", f"Band {i} was formed by Ann Lee {i}. " + FILLER),
                (f"Ann Lee {i}", f"Ann Lee {i} was born in {city}. " + FILLER)]
        distractors = [(f"Other {i}-{k}", FILLER * filler + (f"{city} is a city." if k == 0 else "")) for k in range(3)]
        lines.append(record(f"q{i}", f"Where was the founder of Band {i} born?", city, gold, distractors))
    lines.append(record("yn", "Are both bands British?", "yes", gold, distractors))
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_extend_position_embeddings_tiles_the_table(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0)).eval()
    ids = torch.randint(5, 1000, (1, 12))
    before = enc(ids).last_hidden_state
    old = enc.embeddings.position.weight.detach().clone()
    extend_position_embeddings(enc, 40)
    table = enc.embeddings.position.weight
    assert table.shape == (40, 32) and enc.config.max_position_embeddings == 40
    assert torch.equal(table[:16], old) and torch.equal(table[16:32], old) and torch.equal(table[32:], old[:8])
    torch.testing.assert_close(enc(ids).last_hidden_state, before)  # short inputs are unchanged
    assert enc(torch.randint(5, 1000, (1, 40))).last_hidden_state.shape == (1, 40, 32)
    enc.save_pretrained(tmp_path / "m")
    assert Encoder.from_pretrained(tmp_path / "m").embeddings.position.weight.shape == (40, 32)
    with pytest.raises(ConfigError, match="only grow"):
        extend_position_embeddings(enc, 8)
    with pytest.raises(ConfigError, match="positions"):
        extend_position_embeddings(Encoder(EncoderConfig.tiny(attention="synthesizer-dense")), 256)


def test_long_examples_hold_every_paragraph_and_a_gold_span(tmp_path):
    data = load_long_hotpotqa(write_hotpot(tmp_path / "h.jsonl"), eval_fraction=0.0)
    assert len(data.train) == 8 and not data.eval and data.skipped == {"yes/no": 1, "not found": 0}
    ex = data.train[0]
    assert ex.context.count("\n") == 4 and "Other 0-0: " in ex.context and ex.context.endswith(FILLER.strip() + " ")
    a, b = ex.spans[0]
    assert ex.context[a:b] == "Paris"
    # "Paris" first appears in a distractor; the target is the occurrence in the gold paragraph
    assert ex.context.index("Paris") < a and ex.context.rfind("Ann Lee 0:", 0, a) > ex.context.rfind("Other", 0, a)


def small_config(**kw):
    options = dict(attention="cluster-former", cluster_layers=[1], max_positions=1024, window=32, stride=16,
                   num_clusters=4, memory_size=256, memory_per_step=64, refresh_every=2, max_question_length=16)
    options.update(kw)
    return LongReaderConfig(**options)


def test_a_long_context_is_read_in_one_window(tiny_encoder_dir, tmp_path):
    reader = build_long_reader(tiny_encoder_dir, small_config())
    assert reader.encoder.config.layer_attention == ["sliding-window", "cluster-former"]
    assert reader.encoder.config.max_position_embeddings == 1024
    assert cluster_layers(reader)[0].global_prefix == 18
    context = FILLER * 22 + "The treaty was signed in Utrecht. " + FILLER * 5
    stats = {}
    found = reader.answer("Where was the treaty signed?", context, top_k=3, stats=stats)
    assert stats["windows"] == 1 and len(reader.tokenizer.encode_raw([context])[0].ids) > 512
    assert found and all(context[a.start:a.end] == a.text for a in found)
    windows = build_long_reader(tiny_encoder_dir,
                                small_config(attention="windows", window_length=128, window_stride=32))
    stats = {}
    windows.answer("Where was the treaty signed?", context, stats=stats)
    assert stats["windows"] > 5 and windows.encoder.config.max_position_embeddings == 512
    assert build_long_reader(tiny_encoder_dir, small_config(attention="softmax")).encoder.config.layer_attention is None
    with pytest.raises(ConfigError, match="outside"):
        build_long_reader(tiny_encoder_dir, small_config(cluster_layers=[5]))
    with pytest.raises(ConfigError, match="choose one of"):
        LongReaderConfig(attention="lsh")


def recipe(tiny_encoder_dir, tmp_path, name, **kw):
    options = dict(output_dir=str(tmp_path / name), data=str(write_hotpot(tmp_path / "h.jsonl")),
                   model=str(tiny_encoder_dir), reader=small_config(), eval_fraction=0.0, calibration_examples=2,
                   max_steps=5, batch_size=2, grad_accum=2, lr=1e-3, device="cpu", evaluate=False)
    options.update(kw)
    return LongReaderTrainingConfig(**options)


def test_recipe_resumes_exactly_with_the_centroids(tiny_encoder_dir, tmp_path):
    full = run_long_reader_training(recipe(tiny_encoder_dir, tmp_path, "full", checkpoint_every=2))
    cut = run_long_reader_training(recipe(tiny_encoder_dir, tmp_path, "cut", checkpoint_every=2), stop_after=3)
    assert cut.model_dir is None and cut.steps == 3
    resumed = run_long_reader_training(recipe(tiny_encoder_dir, tmp_path, "cut", checkpoint_every=2, resume=True))
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and "bert.encoder.layer.1.attention.self.centroids" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # calibration + the first training forward + refits every 2 forwards (10 forwards: 5 steps x 2)
    assert int(a["bert.encoder.layer.1.attention.self.fits"]) == 1 + 5
    loaded = load_long_reader(full.model_dir)
    assert torch.equal(cluster_layers(loaded)[0].centroids, a["bert.encoder.layer.1.attention.self.centroids"])
    assert loaded.encoder.config.max_position_embeddings == 1024


def test_recipe_evaluates_on_the_eval_side(tiny_encoder_dir, tmp_path):
    result = run_long_reader_training(recipe(tiny_encoder_dir, tmp_path, "ev", eval_fraction=0.5, evaluate=True,
                                             max_steps=2, batch_size=1, grad_accum=1))
    split = json.loads((tmp_path / "ev" / "split.json").read_text())
    assert split["train_examples"] == result.train_examples and split["eval_examples"] == result.eval_metrics["n"]
    assert result.train_examples + result.eval_metrics["n"] == 8
    assert result.eval_metrics["windows_per_question"] == 1.0 and 0 <= result.eval_metrics["f1"] <= 100


def test_real_hotpotqa_long_examples(shared_data):
    path = shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl")
    data = load_long_hotpotqa(path)
    assert (len(data.train), len(data.eval)) == (291, 129)
    assert data.skipped == {"yes/no": 80, "not found": 0}  # 344 train / 156 eval questions before
    for ex in data.train + data.eval:
        a, b = ex.spans[0]
        assert ex.context[a:b].lower() in [x.lower() for x in ex.answers]
