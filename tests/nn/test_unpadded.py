"""The padding-free inference path (reprlab.nn.unpadded) against the padded forward it replaces."""

import numpy as np
import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.nn.unpadded import supports_unpadded, unpadded_forward

TEXTS = ["gene", "protein folding in the cell", "the heart pumps blood through the body and the lungs",
         "a considerably longer text about dense retrieval, approximate nearest neighbour search and how a "
         "sentence encoder maps questions and passages into one vector space", "lung", "viral infection"]


def tiny_sentence_encoder(**overrides) -> SentenceEncoder:
    from reprlab.text import Tokenizer

    torch.manual_seed(0)
    config = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512, **overrides)
    encoder = Encoder(config)
    with torch.no_grad():  # LayerNorms off their identity init, so that a skipped or doubled one shows
        for module in encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.1)
    return SentenceEncoder(encoder, Tokenizer.from_pretrained("minilm"), "mean", True, 64).eval()


def padded(model, texts=TEXTS):
    batch = model.tokenizer(texts, max_length=model.max_length)
    assert (batch.attention_mask == 0).sum() > batch.attention_mask.numel() // 3  # really padded
    return batch.input_ids, batch.attention_mask


@pytest.mark.parametrize("overrides", [
    {},
    {"layer_heads": [0, 2], "layer_intermediate": [64, 0]},  # a pruned stack: no attention / no FFN, fewer heads
])
def test_equals_the_padded_forward_at_every_real_token(overrides):
    model = tiny_sentence_encoder(**overrides)
    ids, mask = padded(model)
    with torch.inference_mode():
        reference = model.encoder(ids, mask).last_hidden_state  # (B, T, H)
        fast = unpadded_forward(model.encoder, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5, rtol=0)
    assert torch.count_nonzero(fast[~real]) == 0  # padding rows are zero, not left over from elsewhere


def test_the_per_token_work_runs_on_the_real_tokens_only():
    model = tiny_sentence_encoder()
    ids, mask = padded(model)
    seen = []
    handles = [layer.ffn.up.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
               for layer in model.encoder.layers]
    handles += [layer.attn.query.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
                for layer in model.encoder.layers]
    try:
        with torch.inference_mode():
            unpadded_forward(model.encoder, ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert seen == [int(mask.sum())] * 4  # (N, H) rows, not B * T


def test_encode_gives_the_padded_vectors_and_falls_back_where_it_does_not_apply():
    model = tiny_sentence_encoder()
    fast = model.encode(TEXTS, batch_size=4, show_progress=False)
    model.unpadded = False
    reference = model.encode(TEXTS, batch_size=4, show_progress=False)
    np.testing.assert_allclose(fast, reference, atol=1e-5, rtol=0)
    with_memory = tiny_sentence_encoder(num_memory_tokens=2)
    other_attention = tiny_sentence_encoder(attention="synthesizer-dense")
    assert supports_unpadded(model.encoder)
    assert not supports_unpadded(with_memory.encoder) and not supports_unpadded(other_attention.encoder)
    ids, mask = padded(with_memory)
    with torch.inference_mode():  # the fallback is the padded forward itself
        torch.testing.assert_close(with_memory.inference_vectors(ids, mask), with_memory(ids, mask), atol=0, rtol=0)


def test_bf16_autocast_stays_close():
    model = tiny_sentence_encoder()
    model.unpadded = False
    reference = model.encode(TEXTS, batch_size=8, show_progress=False, precision="bf16")
    model.unpadded = True
    fast = model.encode(TEXTS, batch_size=8, show_progress=False, precision="bf16")
    assert (fast * reference).sum(1).min() > 0.999
