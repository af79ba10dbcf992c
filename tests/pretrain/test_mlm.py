"""MLM pre-training: the head path against the plain reference and HF, the recipe, exact resume."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.pretrain.masking import IGNORE_INDEX, MASKING
from reprlab.pretrain.mlm import MLMConfig, MLMModel, load_mlm_head, load_mlm_model, run_mlm, save_mlm_head


@pytest.mark.parametrize("tie, size", [(True, None), (False, None), (False, 48)])
def test_selected_positions_loss_equals_full_logits_reference(tie, size):
    torch.manual_seed(0)
    model = MLMModel.build(Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0)), tie=tie,
                           output_embedding_size=size).eval()
    ids = torch.randint(5, 1000, (3, 10))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 5], labels[2, 1], labels[2, 3] = 7, 8, 9, 10
    loss, acc = model(ids, mask, labels)
    logits = model.full_logits(ids, mask)  # (B, T, V)
    ref = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref)
    if tie:
        assert model.head.output_embeddings is model.encoder.embeddings.word.weight
        assert len(list(model.parameters())) == len(list(model.encoder.parameters())) + 5  # dense w/b, norm w/b, bias


def test_head_loads_from_an_hf_bert_for_masked_lm_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")

    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_mlm_model(tmp_path).eval()
    assert ours.head.tied
    ids = torch.randint(5, 120, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours.full_logits(ids, torch.ones_like(ids)), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_head_save_load_round_trip(tmp_path, tie):
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig.tiny())
    model = MLMModel.build(encoder, tie=tie, output_embedding_size=None if tie else 40)
    with torch.no_grad():
        model.head.bias.normal_()
    encoder.save_pretrained(tmp_path / "m")
    save_mlm_head(model.head, tmp_path / "m" / "mlm_head")
    back = load_mlm_head(tmp_path / "m", encoder)
    assert back.tied == tie
    for (name, a), b in zip(model.head.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def corpus_file(tmp_path, toy_texts):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"_id": str(i), "title": "", "text": t}) for i, t in enumerate(toy_texts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_mlm_saves_a_sentence_encoder_and_its_head(tmp_path, tiny_model_dir, toy_texts):
    cfg = MLMConfig(corpus=[str(corpus_file(tmp_path, toy_texts))], output_dir=str(tmp_path / "run"),
                    model=str(tiny_model_dir), masking="wwm", max_length=32, max_steps=12, batch_size=8, lr=3e-3,
                    log_every=1, device="cpu")
    result = run_mlm(cfg)
    assert result.steps == 12 and result.chunks > 40
    losses = [m["loss"] for m in result.metrics]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), "MLM loss goes down"
    sentence = SentenceEncoder.from_pretrained(result.model_dir)
    assert sentence.normalize and sentence.pooling.mode == "mean"  # the starting model's pooling is kept
    assert sentence.encode(["a test sentence"]).shape == (1, 32)
    again = load_mlm_model(result.model_dir)  # continues from the trained head, not a fresh one
    trained = load_mlm_head(result.model_dir, again.encoder)
    for a, b in zip(again.head.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(trained.bias, torch.zeros_like(trained.bias))


@pytest.mark.parametrize("masking", ["pmi", "fully-explored"])
def test_killed_and_resumed_pretraining_equals_uninterrupted(tmp_path, tiny_model_dir, toy_texts, masking):
    corpus = str(corpus_file(tmp_path, toy_texts))
    common = dict(corpus=[corpus], model=str(tiny_model_dir), masking=masking, pmi_min_count=3, max_length=32,
                  max_steps=7, batch_size=4, lr=1e-3, checkpoint_every=3, log_every=1, device="cpu")
    full = run_mlm(MLMConfig(output_dir=str(tmp_path / "full"), **common))
    cut = MLMConfig(output_dir=str(tmp_path / "cut"), **common)
    run_mlm(cut, stop_after=5)  # "dies" after step 5; the checkpoint of step 3 survives
    assert not (tmp_path / "cut" / "model").exists()
    resumed = run_mlm(MLMConfig(output_dir=str(tmp_path / "cut"), resume=True, **common))
    assert resumed.steps == 7
    a = load_mlm_model(full.model_dir).state_dict()
    b = load_mlm_model(resumed.model_dir).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [m["loss"] for m in full.metrics] == [m["loss"] for m in resumed.metrics]


@pytest.mark.parametrize("masking", sorted(MASKING))
def test_every_masking_scheme_runs_in_the_recipe(tmp_path, tiny_model_dir, toy_texts, masking):
    cfg = MLMConfig(corpus=[str(corpus_file(tmp_path, toy_texts))], output_dir=str(tmp_path / masking),
                    model=str(tiny_model_dir), masking=masking, pmi_min_count=3, max_length=32, max_steps=2,
                    batch_size=4, device="cpu")
    result = run_mlm(cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert (result.pmi_vocab is not None) == (masking == "pmi")


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        MLMConfig(corpus=["x"], output_dir=str(tmp_path), masking="nope")
    with pytest.raises(ConfigError, match="decoupled"):
        MLMConfig(corpus=["x"], output_dir=str(tmp_path), output_embedding_size=64)


def test_head_warmup_keeps_the_encoder_frozen_then_trains_it(tmp_path, tiny_model_dir, toy_texts):
    start = Encoder.from_pretrained(tiny_model_dir).state_dict()
    common = dict(corpus=[str(corpus_file(tmp_path, toy_texts))], model=str(tiny_model_dir), max_length=32,
                  batch_size=4, lr=1e-2, head_warmup_steps=3, device="cpu")
    warm = run_mlm(MLMConfig(output_dir=str(tmp_path / "warm"), max_steps=3, **common))
    after = run_mlm(MLMConfig(output_dir=str(tmp_path / "after"), max_steps=4, **common))
    frozen = load_mlm_model(warm.model_dir)
    assert all(torch.equal(start[k], v) for k, v in frozen.encoder.state_dict().items())
    assert frozen.head.bias.abs().sum() > 0, "the head trains during the warm-up (its bias starts at zero)"
    trained = load_mlm_model(after.model_dir).encoder.state_dict()
    assert not torch.equal(start["layers.0.attn.query.weight"], trained["layers.0.attn.query.weight"])
