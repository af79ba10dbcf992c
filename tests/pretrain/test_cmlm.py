"""CMLM: the masked sentence really is predicted from its neighbour's vector; the recipe; exact resume."""

import json

import numpy as np
import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.nn.embeddings import MLMHead
from reprlab.pretrain.cmlm import (
    CMLMCollate, CMLMConfig, CMLMModel, PairDataset, build_cmlm_model, cmlm_loss, evaluate_conditioning, run_cmlm,
    sentence_pairs,
)
from reprlab.pretrain.corpus import TokenizedText
from reprlab.pretrain.masking import MaskingConfig, SpecialTokens, build_masking
from reprlab.train import TrainConfig, train

SPECIAL = SpecialTokens(mask_id=3, pad_id=0, vocab_size=1000, special_ids=(0, 1, 2, 3))


def synthetic_pairs(n, rng, topics=20):
    """Each pair shares a topic token t: s1 = t repeated, s2 = t repeated and fully masked.

    Nothing but s1's sentence vector tells the model which t to predict in s2.
    """
    def sentence(tokens):
        return TokenizedText(np.array([1, *tokens, 2]), np.array([-1, *range(len(tokens)), -1]),
                             [str(t) for t in tokens])

    sentences, pairs = [], []
    for i in range(n):
        t = int(rng.integers(10, 10 + topics))
        sentences += [sentence([t] * 6), sentence([t] * 6)]
        pairs.append((2 * i, 2 * i + 1))
    return PairDataset(sentences, pairs)


def tiny_cmlm(seed=0, num_vectors=4):
    torch.manual_seed(seed)
    encoder = Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0))
    sentence = SentenceEncoder(encoder, None, pooling="mean", normalize=True)
    return CMLMModel(sentence, MLMHead(32, 1000, tie_to=encoder.embeddings.word), num_vectors=num_vectors)


def test_conditioning_vectors_enter_as_extra_positions():
    model = tiny_cmlm().eval()
    ids = torch.randint(10, 50, (2, 7))
    mask = torch.ones_like(ids)
    cond = model.condition(ids, mask)
    assert cond.shape == (2, 4, 32) and (cond >= 0).all()
    h = model.hidden(cond, ids, mask)
    assert h.shape == (2, 7, 32)
    # the same stack run by hand on [cond; embed(ids)]
    x = torch.cat([cond, model.encoder.embed(ids)], 1)
    for layer in model.encoder.layers:
        x, _ = layer(x, torch.ones(2, 11, dtype=torch.bool))
    torch.testing.assert_close(h, x[:, 4:])
    assert not torch.allclose(model.hidden(cond.flip(0), ids, mask), h), "the output depends on the condition"


def test_loss_depends_on_the_conditioning_sentence(tmp_path):
    rng = np.random.default_rng(0)
    model = tiny_cmlm()
    masking = build_masking("random", MaskingConfig(budget=0.99, mask_prob=1.0, random_prob=0.0))
    collate = CMLMCollate(masking, SPECIAL)
    train(model, synthetic_pairs(2000, rng), collate, cmlm_loss,
          TrainConfig(output_dir=str(tmp_path), max_steps=150, batch_size=32, lr=3e-3, warmup_steps=10, seed=0,
                      device="cpu"))
    held_out = synthetic_pairs(256, rng)
    batches = [collate([held_out[i] for i in range(k, k + 32)], np.random.default_rng(k)) for k in range(0, 256, 32)]
    true = evaluate_conditioning(model, batches)
    shuffled = evaluate_conditioning(model, batches, shuffle_seed=0)
    uniform = np.log(20)  # the best a model can do without the neighbour
    assert true < uniform - 0.5, "the neighbour's vector is used"
    assert shuffled > true + 1.0, "a wrong neighbour gives a higher loss"


def sentences_file(tmp_path):
    path = tmp_path / "sentences.jsonl"
    abstracts = [
        ["Aspirin reduces the risk of stroke.", "The effect was larger in older patients.", "Bleeding increased."],
        ["Insulin resistance precedes type 2 diabetes.", "Exercise improves insulin sensitivity."],
        ["Telomeres shorten with age.", "Telomerase restores telomere length.", "Cancer cells express telomerase."],
    ] * 6
    path.write_text("".join(json.dumps({"doc_id": i, "abstract": a}) + "\n" for i, a in enumerate(abstracts)))
    return path


def test_sentence_pairs_are_adjacent_sentences(tokenizer):
    groups = [["a b.", "c d.", "e f."], ["g h.", "i j."]]
    sentences, pairs = sentence_pairs(groups, tokenizer, max_length=16)
    assert len(sentences) == 5
    assert pairs == [(0, 1), (1, 2), (3, 4)]
    both = sentence_pairs(groups, tokenizer, 16, both_directions=True)[1]
    assert both == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)]
    assert sentences[3].words == ["g", "h", "."]


def test_run_cmlm_resumes_exactly_and_saves_a_sentence_encoder(tmp_path, tiny_model_dir):
    common = dict(corpus=[str(sentences_file(tmp_path))], model=str(tiny_model_dir), num_vectors=3, max_length=24,
                  max_steps=6, batch_size=4, lr=1e-3, checkpoint_every=2, log_every=1, device="cpu")
    torch.manual_seed(1)
    full = run_cmlm(CMLMConfig(output_dir=str(tmp_path / "full"), **common))
    assert full.pairs == 6 * (2 + 1 + 2)
    run_cmlm(CMLMConfig(output_dir=str(tmp_path / "cut"), **common), stop_after=3)
    resumed = run_cmlm(CMLMConfig(output_dir=str(tmp_path / "cut"), resume=True, **common))
    assert [m["loss"] for m in full.metrics] == [m["loss"] for m in resumed.metrics]
    a = SentenceEncoder.from_pretrained(full.model_dir)
    b = SentenceEncoder.from_pretrained(resumed.model_dir)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert a.encode(["Aspirin reduces the risk of stroke."]).shape == (1, 32)
    again = build_cmlm_model(full.model_dir, num_vectors=3)  # the saved head is picked up
    assert not torch.equal(again.head.bias, torch.zeros_like(again.head.bias))


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="CMLM masking"):
        CMLMConfig(corpus=["x"], output_dir=str(tmp_path), masking="pmi")
    with pytest.raises(ConfigError, match="num_vectors"):
        tiny_cmlm(num_vectors=0)
