"""Memory Transformer modes: what talks to what, memory stripped before pooling, round trips."""

import pytest
import torch
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.nn.memory import MemoryTokens


def encoder(mode, layers=1, **kw):
    torch.manual_seed(0)
    return Encoder(EncoderConfig.tiny(num_memory_tokens=3, memory_mode=mode, num_layers=layers, hidden_dropout=0.0,
                                      attention_dropout=0.0, **kw)).eval()


class KeepMemory(nn.Module):
    """A memory-update layer that ignores the sequence (to isolate the token update)."""

    def forward(self, memory, context, context_mask, output_attentions=False):
        return memory, None


def _token_outputs_after_changing_another_token(enc):
    ids = torch.randint(5, 1000, (1, 6), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 4] = (other[0, 4] + 7) % 1000
    with torch.no_grad():
        return enc(ids).last_hidden_state[0, 1], enc(other).last_hidden_state[0, 1]


def test_bottleneck_tokens_only_see_each_other_through_memory():
    enc = encoder("bottleneck")
    a, b = _token_outputs_after_changing_another_token(enc)
    assert not torch.allclose(a, b), "through the memory, token 4 still reaches token 1"
    enc.memory.update[0] = KeepMemory()  # cut the memory's read of the sequence
    a, b = _token_outputs_after_changing_another_token(enc)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # no direct token-to-token path is left


@pytest.mark.parametrize("mode", ["tokens", "ctrl"])
def test_other_modes_keep_token_to_token_attention(mode):
    enc = encoder(mode)
    if mode == "ctrl":
        enc.memory.update[0] = KeepMemory()
    a, b = _token_outputs_after_changing_another_token(enc)
    assert not torch.allclose(a, b)


def test_ctrl_memory_comes_from_the_dedicated_layer():
    enc = encoder("ctrl")
    ids = torch.randint(5, 1000, (2, 5))
    with torch.no_grad():
        out = enc(ids)
        x, mask = enc.memory.prepend(enc.embed(ids), torch.ones(2, 5, dtype=torch.bool))
        want, _ = enc.memory.update[0](x[:, :3], x, mask)
    torch.testing.assert_close(out.memory_states, want)


def test_tokens_mode_is_one_transformer_over_mem_and_seq():
    enc = encoder("tokens", layers=2)
    ids = torch.randint(5, 1000, (2, 5))
    with torch.no_grad():
        out = enc(ids, output_attentions=True)
        x, mask = enc.memory.prepend(enc.embed(ids), torch.ones(2, 5, dtype=torch.bool))
        for layer in enc.layers:
            x, _ = layer(x, mask)
    torch.testing.assert_close(out.last_hidden_state, x[:, 3:])
    torch.testing.assert_close(out.memory_states, x[:, :3])
    assert out.attentions[0].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("mode", ["tokens", "bottleneck", "ctrl"])
def test_pooling_sees_text_tokens_only_and_round_trips(mode, tmp_path):
    from reprlab.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained("minilm")
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(vocab_size=tok.vocab_size, num_memory_tokens=2, memory_mode=mode))
    model = SentenceEncoder(enc, tok, pooling="mean", normalize=False, max_length=32).eval()
    texts = ["memory tokens hold global context", "short"]
    batch = model.tokenize(texts)
    with torch.no_grad():
        out = enc(batch.input_ids, batch.attention_mask)
    m = batch.attention_mask[..., None].float()
    mean = (out.last_hidden_state * m).sum(1) / m.sum(1)
    vectors = model.encode(texts)
    torch.testing.assert_close(torch.from_numpy(vectors), mean, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "m")
    back = SentenceEncoder.from_pretrained(tmp_path / "m")
    assert back.encoder.config.num_memory_tokens == 2 and back.encoder.config.memory_mode == mode
    torch.testing.assert_close(torch.from_numpy(back.encode(texts)), torch.from_numpy(vectors), atol=1e-6, rtol=0)


def test_memory_module_validates():
    from reprlab.errors import ConfigError

    with pytest.raises(ConfigError, match="num_memory_tokens"):
        MemoryTokens(0, "tokens", 32, 4, 64, 2)
    with pytest.raises(ConfigError, match="memory_mode"):
        MemoryTokens(2, "bogus", 32, 4, 64, 2)
    assert MemoryTokens(2, "tokens", 32, 4, 64, 2).update is None
