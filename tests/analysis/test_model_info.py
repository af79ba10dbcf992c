"""The parameter/FLOP counter: agrees with sum(p.numel()) and with hand counts."""

import json

import pytest

from reprlab.analysis.model_info import config_from_name, model_info
from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.nn.embeddings import MLMHead

CONFIGS = [
    EncoderConfig.tiny(),
    EncoderConfig.tiny(attention="synthesizer-dense+random"),
    EncoderConfig.tiny(attention="synthesizer-random-fixed"),
    EncoderConfig.tiny(attention="collaborative", attention_kwargs={"shared_dim": 8}),
    EncoderConfig.tiny(num_memory_tokens=4, memory_mode="ctrl", embedding_size=16),
    EncoderConfig.tiny(layer_heads=[2, 0], layer_intermediate=[64, 16]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.attention}-{c.memory_mode}{c.num_memory_tokens}")
def test_total_matches_the_built_model(config):
    model = Encoder(config)
    info = model_info(config, seq_len=20)
    assert info.total_params == sum(p.numel() for p in model.parameters())
    assert info.buffers == sum(b.numel() for b in model.buffers())
    assert sum(r.flops for r in info.rows) == info.total_flops > 0  # every FLOP is attributed to a block
    assert sum(info.layer(i)["params"] for i in range(config.num_layers)) + info.by_block()["embeddings"]["params"] \
        + info.by_block().get("memory", {"params": 0})["params"] == info.total_params
    assert model_info(model, seq_len=20).total_params == info.total_params  # from a model, too


def test_one_minilm_layer_by_hand():
    H, I, T = 384, 1536, 128
    info = model_info(EncoderConfig.minilm_l6(), seq_len=T)
    params = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * (2 * H)  # q k v out, ffn up/down, 2 LayerNorms
    flops = 2 * T * 4 * H * H + 2 * 2 * T * T * H + 2 * 2 * T * H * I  # projections, QK^T and AV, FFN
    assert info.layer(3) == {"params": params, "flops": flops}
    assert params == 1_774_464
    assert info.by_block()["embeddings"]["params"] == (30522 + 512 + 2) * H + 2 * H
    assert info.total_params + (H * H + H) == 22_713_216  # all-MiniLM-L6-v2 (22.7M with its pooler)


def test_collaborative_and_synthesizer_layers_by_hand():
    H, nh, D, T, I = 32, 4, 8, 20, 64
    ffn = 2 * 2 * T * H * I
    collab = model_info(EncoderConfig.tiny(attention="collaborative", attention_kwargs={"shared_dim": D}), seq_len=T)
    attn = 2 * 2 * T * H * D + 2 * T * H * nh + 2 * 2 * T * H * H + 2 * nh * T * T * D + 2 * T * T * H
    assert collab.layer(0)["flops"] == attn + ffn
    dense = model_info(EncoderConfig.tiny(attention="synthesizer-dense"), seq_len=T)
    attn = 2 * T * H * H + 2 * T * T * H + 2 * 2 * T * H * H + 2 * T * T * H  # W1, W2 per head, value/out, AV
    assert dense.layer(0)["flops"] == attn + ffn
    L = 128
    assert dense.layer(0)["params"] - model_info(EncoderConfig.tiny(), seq_len=T).layer(0)["params"] == \
        (H * H + H + H * L + nh * L) - 2 * (H * H + H)  # MLP + per-head W2 and its bias, minus query/key


def test_mlm_head_and_sentence_encoder_rows():
    config = EncoderConfig.tiny(embedding_size=16)
    tied = model_info(config, seq_len=8, mlm_head="tied")
    dec = model_info(config, seq_len=8, mlm_head="decoupled", output_embedding_size=64)
    enc = Encoder(config)
    assert tied.by_block()["mlm_head"]["params"] == sum(p.numel() for p in MLMHead(32, 1000, tie_to=enc.embeddings.word)
                                                           .parameters())
    assert dec.by_block()["mlm_head"]["params"] == 32 * 64 + 64 + 2 * 64 + 1000 * 64 + 1000
    assert dec.by_block()["mlm_head"]["flops"] == 2 * 8 * (32 * 64 + 64 * 1000)
    from reprlab.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained("minilm")
    model = SentenceEncoder(Encoder(EncoderConfig.tiny(vocab_size=tok.vocab_size)), tok, pooling="hire")
    info = model_info(model, seq_len=8)
    assert info.total_params == sum(p.numel() for p in model.parameters())
    assert info.by_block()["pooling"]["params"] == sum(p.numel() for p in model.pooling.parameters())


def test_names_files_and_errors(tmp_path):
    assert config_from_name("tiny") == EncoderConfig.tiny()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_heads": 4, "num_layers": 3, "attention": "synthesizer-dense"}))
    info = model_info(str(path), seq_len=16)
    assert info.config["num_layers"] == 3 and len({r.layer for r in info.rows if r.layer is not None}) == 3
    assert "| **total** |" in info.to_markdown()
    assert config_from_name("minilm").hidden_size == 384  # a model folder (the shipped MiniLM)
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="line 1"):
        model_info(str(path))
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        model_info(EncoderConfig.tiny(), seq_len=1000)
    with pytest.raises(ConfigError, match="mlm_head"):
        model_info(EncoderConfig.tiny(), mlm_head="both")
