"""HIRE pooling: extractor weights, residual start, padding, gradients, save/load through SentenceEncoder."""

import numpy as np
import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.nn.hire import HIRE
from reprlab.nn.pooling import POOLING, build_pooling

TEXTS = ["hidden representations of every layer", "a short one", "fusion with the final layer output helps"]


@pytest.fixture(scope="module")
def tokenizer():
    from reprlab.text.tokenizer import Tokenizer

    return Tokenizer.from_pretrained("minilm")


def tiny_model(tokenizer, pooling="hire"):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0))
    return SentenceEncoder(enc, tokenizer, pooling=pooling, normalize=True, max_length=32)


def states(B=3, T=6, L=2, H=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(B, T, H, generator=g) for _ in range(L + 1))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    return hs, mask


def test_registered_as_a_learned_pooling():
    assert POOLING["hire"] is HIRE
    pool = build_pooling("hire", 32, 2)
    assert isinstance(pool, HIRE) and pool.needs_hidden_states


def test_extractor_is_a_convex_combination_of_the_layers():
    hire = HIRE(32, 2).eval()
    hs, mask = states()
    M, alpha = hire.extract(hs, mask)
    assert alpha.shape == (3, 2)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    want = alpha[:, 0, None, None] * hs[1] + alpha[:, 1, None, None] * hs[2]  # layers 1..L, not the embeddings
    torch.testing.assert_close(M, want)


def test_fusion_follows_the_paper_without_the_residual():
    hire = HIRE(32, 2, residual=False).eval()
    hs, mask = states()
    M, _ = hire.extract(hs, mask)
    last = hs[-1]
    feats = torch.relu(hire.fuse_in(torch.cat([last, M, last - M, last * M], -1)))
    want, _ = hire.fuse_gru(feats[:1])  # the first text has no padding: a plain BiGRU pass
    torch.testing.assert_close(hire.token_states(last, mask, hs)[:1], want, atol=1e-6, rtol=1e-5)


def test_residual_hire_starts_as_mean_pooling_of_the_last_layer():
    hire = HIRE(32, 2).eval()
    hs, mask = states()
    m = mask[..., None].float()
    torch.testing.assert_close(hire(hs[-1], mask, hs), (hs[-1] * m).sum(1) / m.sum(1))


def test_padding_content_and_length_do_not_matter():
    hire = HIRE(32, 2, residual=False).eval()
    hs, mask = states()
    noisy = tuple(h.clone() for h in hs)
    for h in noisy:
        h[1, 4:] = 100.0
    a = hire(hs[-1], mask, hs)
    torch.testing.assert_close(a, hire(noisy[-1], mask, noisy))
    alone = tuple(h[1:2, :4] for h in hs)
    torch.testing.assert_close(a[1:2], hire(alone[-1], mask[1:2, :4], alone), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="right-padded"):
        hire(hs[-1], mask.flip(1), hs)


def test_gradients_reach_every_parameter_of_model_and_pooling(tokenizer):
    model = tiny_model(tokenizer).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = model.tokenize(TEXTS)
    for step in range(2):  # the zero-initialised residual projection opens the path after one step
        opt.zero_grad()
        v = model(batch.input_ids, batch.attention_mask)
        loss = -(v[0] * v[2]).sum() + (v[0] * v[1]).sum()
        loss.backward()
        if step == 1:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and
                       (p.grad is None or p.grad.abs().sum() == 0)]
            assert not missing
        opt.step()


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    with torch.no_grad():
        for p in model.pooling.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    want = model.encode(TEXTS)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "hire" / "model.safetensors").is_file()
    back = SentenceEncoder.from_pretrained(tmp_path / "m")
    assert isinstance(back.pooling, HIRE)
    np.testing.assert_allclose(back.encode(TEXTS), want, atol=1e-6)
    # saved sizes that differ from the defaults are rebuilt on load
    custom = SentenceEncoder(model.encoder, tokenizer, pooling=HIRE(32, 2, gru_size=5, pool="cls"))
    custom.save_pretrained(tmp_path / "c")
    back = SentenceEncoder.from_pretrained(tmp_path / "c")
    assert back.pooling.config["gru_size"] == 5 and back.pooling.config["pool"] == "cls"
    np.testing.assert_allclose(back.encode(TEXTS), custom.encode(TEXTS), atol=1e-6)
    (tmp_path / "c" / "hire" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="hire"):
        SentenceEncoder.from_pretrained(tmp_path / "c")


def test_token_states_for_a_reader(tokenizer):
    model = tiny_model(tokenizer).eval()
    batch = model.tokenize(TEXTS)
    out = model.encoder(batch.input_ids, batch.attention_mask, output_hidden_states=True)
    tokens = model.pooling.token_states(out.last_hidden_state, batch.attention_mask.bool(), out.hidden_states)
    assert tokens.shape == out.last_hidden_state.shape
    with pytest.raises(ConfigError, match="output_hidden_states"):
        model.pooling(out.last_hidden_state, batch.attention_mask.bool(), None)
