"""Every attention in the registry (and every memory mode): shapes, gradients, padding, learning."""

import pytest
import torch
from torch import nn

import reprlab.nn  # noqa: F401  (registers every variant)
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION

NAMES = sorted(ATTENTION)
MEMORY = [("softmax", "tokens"), ("softmax", "ctrl"), ("softmax", "bottleneck"), ("synthesizer-random", "bottleneck"),
          ("collaborative", "ctrl")]


def tiny(name: str, **overrides) -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig.tiny(attention=name, hidden_dropout=0.0, attention_dropout=0.0,
                                      max_position_embeddings=32, **overrides))


def batch(seed=0, B=3, T=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_registry_has_every_variant_of_the_issue():
    for name in ("softmax", "collaborative", "synthesizer-dense", "synthesizer-random", "synthesizer-random-fixed",
                 "synthesizer-factorized-dense", "synthesizer-factorized-random", "synthesizer-random+dot",
                 "synthesizer-dense+dot", "synthesizer-dense+random"):
        assert name in ATTENTION


@pytest.mark.parametrize("name", NAMES)
def test_module_shapes_and_weights(name):
    attn = ATTENTION[name](hidden_size=32, num_heads=4, dropout=0.0, max_positions=16).eval()
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    out, weights = attn(x, mask, output_attentions=True)
    assert out.shape == (2, 9, 32)
    assert weights.shape == (2, 4, 9, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))
    assert weights[1, :, :, 5:].abs().max() == 0, "padded keys must get no weight"
    fast, none = attn(x, mask)
    assert none is None
    torch.testing.assert_close(fast[mask], out[mask], atol=1e-5, rtol=1e-5)  # fast path == eager path


@pytest.mark.parametrize("name,memory", [(n, None) for n in NAMES] + MEMORY)
def test_gradients_reach_every_parameter(name, memory):
    extra = dict(num_memory_tokens=2, memory_mode=memory) if memory else {}
    enc = tiny(name, **extra).train()
    ids, mask = batch()
    out = enc(ids, mask)
    g = torch.Generator().manual_seed(1)
    probe = torch.randn(out.last_hidden_state.shape, generator=g)  # a random linear read-out
    loss = (out.last_hidden_state * probe * mask[..., None]).sum()
    if memory:
        loss = loss + (out.memory_states * torch.randn(out.memory_states.shape, generator=g)).sum()
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name,memory", [(n, None) for n in NAMES] + MEMORY)
def test_padding_does_not_change_real_tokens(name, memory):
    extra = dict(num_memory_tokens=2, memory_mode=memory) if memory else {}
    enc = tiny(name, **extra).eval()
    ids, mask = batch()
    garbage = ids.clone()
    garbage[mask == 0] = torch.randint(5, 1000, (int((mask == 0).sum()),))  # other content in the padding
    with torch.no_grad():
        padded = enc(ids, mask, output_hidden_states=True)
        other = enc(garbage, mask)
        alone = enc(ids[2:, :3], mask[2:, :3])  # the third text without any padding
    m = mask.bool()
    torch.testing.assert_close(padded.last_hidden_state[m], other.last_hidden_state[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.last_hidden_state[2, :3], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert padded.last_hidden_state.shape == (3, 10, 32)
    assert all(h.shape == (3, 10, 32) for h in padded.hidden_states)
    if memory:
        assert padded.memory_states.shape == (3, 2, 32)
        torch.testing.assert_close(padded.memory_states[2], alone.memory_states[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,memory", [(n, None) for n in NAMES] + MEMORY[:3])
def test_tiny_config_overfits_a_small_batch(name, memory):
    """Recover the token at each position (through a bottleneck: predict token t+1 at t)."""
    extra = dict(num_memory_tokens=2, memory_mode=memory) if memory else {}
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(attention=name, hidden_dropout=0.0, attention_dropout=0.0, vocab_size=50,
                                      max_position_embeddings=16, num_layers=1, **extra))
    head = nn.Linear(32, 50)
    ids = torch.randint(5, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    target = torch.roll(ids, -1, dims=1)  # next token: needs information from another position
    mask = torch.ones_like(ids)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(40):
        logits = head(enc(ids, mask).last_hidden_state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 50), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_unknown_attention_lists_choices():
    with pytest.raises(ConfigError, match="synthesizer-dense"):
        EncoderConfig.tiny(attention="synthesiser")


def test_bad_memory_settings_are_config_errors():
    with pytest.raises(ConfigError, match="memory_mode"):
        EncoderConfig.tiny(num_memory_tokens=2, memory_mode="both")
    with pytest.raises(ConfigError, match="num_memory_tokens"):
        EncoderConfig.tiny(num_memory_tokens=-1)


def test_importing_the_encoder_completes_the_registries():
    import subprocess
    import sys

    code = ("import reprlab.encoder\n"
            "from reprlab.nn.attention import ATTENTION\n"
            "from reprlab.nn.pooling import POOLING\n"
            "print(len(ATTENTION), 'synthesizer-random+dot' in ATTENTION, 'collaborative' in ATTENTION, "
            "'hire' in POOLING)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(ATTENTION)), "True", "True", "True"]
