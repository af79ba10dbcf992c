"""Synthesizer variants against plain re-computations of the paper's formulas; learned vs fixed R."""

import math

import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION
from reprlab.nn.synthesizer import SYNTHESIZERS, SynthesizerAttention


def make(name, **kw):
    torch.manual_seed(0)
    return ATTENTION[name](hidden_size=32, num_heads=4, dropout=0.0, max_positions=12, **kw).eval()


def reference_output(attn, logits, x, mask):
    """softmax over the real keys of ``logits`` (B, nh, T, T), applied to the values: the plain loop."""
    B, T, H = x.shape
    nh, hs = attn.num_heads, H // attn.num_heads
    v = attn.value(x)
    ctx = torch.zeros(B, T, H)
    for b in range(B):
        keys = mask[b].nonzero().flatten()
        for h in range(nh):
            w = torch.softmax(logits[b, h][:, keys], dim=-1)  # (T, n_real)
            ctx[b, :, h * hs:(h + 1) * hs] = w @ v[b, keys, h * hs:(h + 1) * hs]
    return attn.out(ctx)


def inputs(T=7):
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, 5:] = False
    return x, mask


def test_dense_synthesizer_is_an_mlp_of_each_token_over_key_positions():
    attn = make("synthesizer-dense")
    x, mask = inputs()
    T, hs = x.shape[1], 8
    logits = torch.zeros(2, 4, T, T)
    for h in range(4):
        hidden = torch.relu(attn.dense_in(x))[..., h * hs:(h + 1) * hs]  # W1 x_i + b1, head h's features
        logits[:, h] = hidden @ attn.dense_out[h, :, :T] + attn.dense_out_bias[h, :T]
    out, _ = attn(x, mask)
    torch.testing.assert_close(out, reference_output(attn, logits, x, mask), atol=1e-5, rtol=1e-5)


def test_random_synthesizer_uses_the_top_left_block_of_R():
    attn = make("synthesizer-random")
    x, mask = inputs()
    T = x.shape[1]
    logits = attn.random[:, :T, :T].expand(2, -1, -1, -1)
    out, weights = attn(x, mask, output_attentions=True)
    torch.testing.assert_close(out, reference_output(attn, logits, x, mask), atol=1e-5, rtol=1e-5)
    # the weights do not depend on the input at all (same for both texts where both are unpadded)
    torch.testing.assert_close(weights[0, :, :, :5] / weights[0, :, :, :5].sum(-1, keepdim=True),
                               weights[1, :, :, :5] / weights[1, :, :, :5].sum(-1, keepdim=True))


def test_factorized_variants():
    x, mask = inputs()
    T = x.shape[1]
    fr = make("synthesizer-factorized-random", rank=3)
    assert fr.random_left.shape == (4, 12, 3)
    logits = (fr.random_left[:, :T] @ fr.random_right[:, :T].transpose(-1, -2)).expand(2, -1, -1, -1)
    torch.testing.assert_close(fr(x, mask)[0], reference_output(fr, logits, x, mask), atol=1e-5, rtol=1e-5)

    fd = make("synthesizer-factorized-dense", rank=3)  # a = 3, b = ceil(12 / 3) = 4
    hs = 8
    logits = torch.zeros(2, 4, T, T)
    for h in range(4):
        hid = torch.relu(fd.fd_in(x))[..., h * hs:(h + 1) * hs]
        A, Bv = hid @ fd.fd_out_a[h], hid @ fd.fd_out_b[h]  # (2, T, 3), (2, T, 4)
        for j in range(T):
            logits[:, h, :, j] = A[..., j // 4] * Bv[..., j % 4]  # key position j = p * b + q
    torch.testing.assert_close(fd(x, mask)[0], reference_output(fd, logits, x, mask), atol=1e-5, rtol=1e-5)
    # far fewer parameters than the unfactorized versions
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(fr) < n(make("synthesizer-random")) and n(fd) < n(make("synthesizer-dense"))


def test_mixture_is_a_gated_sum_before_the_softmax():
    attn = make("synthesizer-random+dot")
    with torch.no_grad():
        attn.gate.copy_(torch.randn(4, 2))
    x, mask = inputs()
    T = x.shape[1]
    alpha = attn.gate.softmax(-1)
    q = attn.query(x).view(2, T, 4, 8).transpose(1, 2)
    k = attn.key(x).view(2, T, 4, 8).transpose(1, 2)
    dot = q @ k.transpose(-1, -2) / math.sqrt(8)
    logits = alpha[None, :, 0, None, None] * attn.random[None, :, :T, :T] + alpha[None, :, 1, None, None] * dot
    torch.testing.assert_close(attn(x, mask)[0], reference_output(attn, logits, x, mask), atol=1e-5, rtol=1e-5)


def _one_step(name):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(attention=name, max_position_embeddings=16))
    opt = torch.optim.SGD(enc.parameters(), lr=1.0)
    before = {k: v.clone() for k, v in enc.layers[0].attn.state_dict().items()}
    ids = torch.randint(5, 1000, (2, 9))
    out = enc(ids, torch.ones_like(ids)).last_hidden_state
    (out * torch.randn_like(out)).sum().backward()
    opt.step()
    return enc.layers[0].attn, before


def test_learned_R_is_a_trained_parameter():
    attn, before = _one_step("synthesizer-random")
    assert "random" in dict(attn.named_parameters())
    changed = (attn.random - before["random"]).abs()
    assert changed[:, :9, :9].min() > 0, "every used entry of R moves after one step"
    assert changed[:, 9:, :].max() == 0 and changed[:, :, 9:].max() == 0, "unused positions get no gradient"


def test_fixed_R_is_not_trained_but_saved():
    attn, before = _one_step("synthesizer-random-fixed")
    assert "random" not in dict(attn.named_parameters())
    assert "random" in attn.state_dict()  # a buffer: saved and loaded with the model
    assert torch.equal(attn.random, before["random"])
    assert not torch.equal(attn.value.weight, before["value.weight"])  # the rest does train


def test_fixed_R_round_trips_through_save_pretrained(tmp_path):
    enc = Encoder(EncoderConfig.tiny(attention="synthesizer-random-fixed", max_position_embeddings=16))
    enc.save_pretrained(tmp_path / "m")
    back = Encoder.from_pretrained(tmp_path / "m")
    assert torch.equal(back.layers[1].attn.random, enc.layers[1].attn.random)


def test_inputs_longer_than_max_positions_are_refused():
    attn = make("synthesizer-dense")
    with pytest.raises(ConfigError, match="max_positions=12"):
        attn(torch.randn(1, 13, 32), torch.ones(1, 13, dtype=torch.bool))


def test_bad_options():
    with pytest.raises(ConfigError, match="components"):
        SynthesizerAttention(32, 4, components=("dense", "banana"))
    with pytest.raises(ConfigError, match="rank"):
        SynthesizerAttention(32, 4, components=("factorized-random",), rank=0)
    assert set(SYNTHESIZERS) == {n for n in ATTENTION if n.startswith("synthesizer-")}
