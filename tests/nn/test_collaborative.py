"""Collaborative heads: exact conversion of MiniLM at full rank, CP conversion, ALS vs tensorly."""

import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION
from reprlab.nn.collaborative import (
    CollaborativeAttention,
    collaborative_from_softmax,
    cp_factors,
    cp_relative_error,
    svd_init,
    to_collaborative,
)

TEXTS = [
    "Collaborative heads share their key and query projections.",
    "Vitamin D deficiency is associated with tuberculosis.",
    "short",
]


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder.from_pretrained("minilm").eval()


def test_full_rank_conversion_of_minilm_is_exact(minilm):
    converted = to_collaborative(minilm.encoder, shared_dim=384).eval()
    assert converted.config.attention == "collaborative"
    assert all(isinstance(layer.attn, CollaborativeAttention) for layer in converted.layers)
    batch = minilm.tokenize(TEXTS)
    mask = batch.attention_mask.bool()
    assert (~mask).any(), "the batch must contain padding"
    with torch.no_grad():
        want = minilm.encoder(batch.input_ids, batch.attention_mask, output_attentions=True)
        got = converted(batch.input_ids, batch.attention_mask)
        got_eager = converted(batch.input_ids, batch.attention_mask, output_attentions=True)
    assert (got.last_hidden_state[mask] - want.last_hidden_state[mask]).abs().max() < 1e-4
    assert (got_eager.last_hidden_state[mask] - want.last_hidden_state[mask]).abs().max() < 1e-4
    for a, b in zip(got_eager.attentions, want.attentions):
        assert (a - b).abs().max() < 1e-4  # same attention maps, head by head
    # the original is untouched
    assert minilm.encoder.config.attention == "softmax"


def _softmax_with_cp_rank(rank: int, hidden=16, heads=2, seed=0):
    """A softmax layer whose heads' query-key forms share ``rank`` directions (exact CP rank ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    attn = ATTENTION["softmax"](hidden, heads).eval()
    hs = hidden // heads
    A, B = torch.randn(hidden, rank, generator=g), torch.randn(hidden, rank, generator=g)
    mixing = torch.randn(heads, rank, generator=g)
    with torch.no_grad():
        attn.query.weight.zero_()
        attn.key.weight.zero_()
        for h in range(heads):
            attn.query.weight[h * hs:h * hs + rank] = (A * mixing[h]).T
            attn.key.weight[h * hs:h * hs + rank] = B.T
        for lin in (attn.query, attn.key, attn.value, attn.out):
            lin.bias.normal_(generator=g)
    return attn


def test_cp_conversion_recovers_a_layer_of_known_rank_with_its_biases():
    attn = _softmax_with_cp_rank(rank=5)
    converted = collaborative_from_softmax(attn, shared_dim=5, method="cp", n_iter_max=500, tol=1e-14).eval()
    assert cp_relative_error(attn, converted) < 1e-4
    x = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    want, _ = attn(x, mask)
    got, _ = converted(x, mask)
    assert (got - want)[mask].abs().max() < 1e-4
    # without the content bias (the folded query bias) the outputs differ: the folding matters
    with torch.no_grad():
        converted.content_bias.weight.zero_()
    assert (converted(x, mask)[0] - want)[mask].abs().max() > 1e-3


def test_fast_als_equals_tensorly_parafac_from_the_same_start():
    pytest.importorskip("tensorly")
    X = torch.randn(12, 3, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    init = svd_init(X, 5, seed=1)
    ours = cp_factors(X, 5, n_iter_max=15, tol=0, backend="torch", init=init)
    ref = cp_factors(X, 5, n_iter_max=15, tol=0, backend="tensorly", init=init)
    rebuild = lambda f: torch.einsum("qr,hr,kr->qhk", *(t.double() for t in f))  # noqa: E731
    torch.testing.assert_close(rebuild(ours), rebuild(ref), atol=1e-4, rtol=1e-4)


def test_lower_rank_is_an_approximation_that_improves_with_rank():
    torch.manual_seed(0)
    attn = ATTENTION["softmax"](16, 2)
    errors = [cp_relative_error(attn, collaborative_from_softmax(attn, d, method="cp", n_iter_max=60))
              for d in (2, 6, 12)]
    assert 0 < errors[2] < errors[1] < errors[0] < 1
    assert cp_relative_error(attn, collaborative_from_softmax(attn, 16)) < 1e-6  # full width: copied exactly


def test_converted_encoder_round_trips_and_counts_fewer_parameters(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0)).eval()
    small = to_collaborative(enc, shared_dim=8, n_iter_max=20).eval()
    assert small.config.attention_kwargs == {"shared_dim": 8}
    n = lambda m: sum(p.numel() for p in m.layers[0].attn.parameters())  # noqa: E731
    # q/k: 2 * 32 * 8 instead of 2 * (32 * 32 + 32); plus mixing 4 * 8 and content bias 4 * 32
    assert n(enc) - n(small) == 2 * (32 * 32 + 32) - (2 * 32 * 8 + 4 * 8 + 4 * 32)
    small.save_pretrained(tmp_path / "m")
    back = Encoder.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(5, 1000, (2, 7))
    torch.testing.assert_close(back(ids).last_hidden_state, small(ids).last_hidden_state, atol=0, rtol=0)


def test_conversion_refuses_what_it_cannot_convert():
    syn = Encoder(EncoderConfig.tiny(attention="synthesizer-dense"))
    with pytest.raises(ConfigError, match="softmax"):
        to_collaborative(syn, 8)
    with pytest.raises(ConfigError, match="concatenate"):
        collaborative_from_softmax(ATTENTION["softmax"](32, 4), 8, method="concatenate")
    with pytest.raises(ConfigError, match="shared_dim"):
        CollaborativeAttention(32, 4, shared_dim=0)


def test_pruned_encoders_are_refused():
    pruned = Encoder(EncoderConfig.tiny(layer_heads=[2, 4]))
    with pytest.raises(ConfigError, match="pruned"):
        to_collaborative(pruned, 8)
    with pytest.raises(ConfigError, match="pruned"):
        collaborative_from_softmax(pruned.layers[0].attn, 8)
