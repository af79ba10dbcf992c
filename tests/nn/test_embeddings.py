"""Decoupled, resized embeddings (RemBERT): input width != hidden width, tied/decoupled MLM heads."""

import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.embeddings import MLMHead, embedding_parameters


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("E", [None, 16, 48])
def test_input_embeddings_of_any_width_project_to_the_hidden_size(E, tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(embedding_size=E))
    width = E or 32
    assert enc.embeddings.word.weight.shape == (1000, width)
    assert (enc.embeddings.project is None) == (width == 32)
    ids = torch.randint(5, 1000, (2, 7))
    out = enc(ids, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 7, 32) and out.hidden_states[0].shape == (2, 7, 32)
    assert count(enc.embeddings) == embedding_parameters(1000, 32, E, 128, 2, mlm_head=None)["input"]
    enc.save_pretrained(tmp_path / "m")
    back = Encoder.from_pretrained(tmp_path / "m")
    assert back.config.embedding_size == E
    torch.testing.assert_close(back.eval()(ids).last_hidden_state, enc.eval()(ids).last_hidden_state, atol=0, rtol=0)


@pytest.mark.parametrize("mlm_head,out_size", [("tied", None), ("decoupled", None), ("decoupled", 96)])
def test_mlm_head_parameter_accounting(mlm_head, out_size):
    enc = Encoder(EncoderConfig.tiny(embedding_size=16))
    head = MLMHead(32, 1000, output_embedding_size=out_size,
                   tie_to=enc.embeddings.word if mlm_head == "tied" else None)
    assert head(torch.zeros(2, 3, 32)).shape == (2, 3, 1000)
    want = embedding_parameters(1000, 32, 16, 128, 2, mlm_head=mlm_head, output_embedding_size=out_size)
    assert count(head) == want["output"]
    if mlm_head == "tied":  # scores with the 16-wide input embeddings, no matrix of its own
        assert head.dense.out_features == 16 and head.output_embeddings is enc.embeddings.word.weight


def test_smaller_input_embeddings_move_parameters_out_of_the_vocabulary():
    coupled = embedding_parameters(30522, 384)
    decoupled = embedding_parameters(30522, 384, embedding_size=128)
    assert decoupled["input"] < coupled["input"] / 2
    assert decoupled["projection"] == 128 * 384 + 384


def test_bad_widths():
    with pytest.raises(ConfigError, match="embedding_size"):
        EncoderConfig.tiny(embedding_size=0)
    with pytest.raises(ConfigError, match="mlm_head"):
        embedding_parameters(10, 8, mlm_head="shared")
