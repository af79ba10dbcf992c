"""Cluster-Former and sliding-window attention: against full attention and a plain loop, padding,
scatter-back, centroids, persistence, gradients, linear cost."""

import math

import pytest
import torch
from safetensors import safe_open
from torch.utils.flop_counter import FlopCounterMode

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION
from reprlab.nn.cluster import ClusterFormerAttention, calibrate_centroids, cluster_layers, kmeans

H, NH = 16, 2


def layer(name, **kw):
    torch.manual_seed(0)
    return ATTENTION[name](hidden_size=H, num_heads=NH, dropout=0.0, **kw).eval()


def softmax_twin(attn):
    ref = ATTENTION["softmax"](H, NH).eval()
    names = ("query", "key", "value", "out")
    ref.load_state_dict({k: v for k, v in attn.state_dict().items() if k.split(".")[0] in names})
    return ref


def inputs(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    if B > 1:
        mask[1, T - 4:] = False
    if B > 2:
        mask[2, T // 3:] = False
    return x, mask


def fit(attn, x, mask):
    """Fit the centroids on x (one training forward) and return the layer in eval mode."""
    attn.train()
    attn(x, mask)
    attn.eval()
    assert int(attn.fits) == 1
    return attn


# ------------------------------------------------------------------------------------------------
# a plain reference: python loops over rows and windows


def reference(attn, x, mask, window, stride, prefix, order=None):
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    B, T, _ = x.shape
    hs = H // NH
    out = torch.zeros(B, T, H)
    for b in range(B):
        body = list(range(prefix, T)) if order is None else [int(i) for i in order[b]]
        W = window if len(body) > window else len(body)
        real = [j for j, pos in enumerate(body) if mask[b, pos]]
        extent = real[-1] + 1 if real else 0
        total, count = torch.zeros(T, H), torch.zeros(T)
        start = 0
        while True:
            members = list(range(min(prefix, T))) + body[start:start + W]
            keys = [m for m in members if mask[b, m]]
            for h in range(NH):
                sl = slice(h * hs, (h + 1) * hs)
                for i in members:
                    if keys:
                        s = torch.stack([q[b, i, sl] @ k[b, j, sl] for j in keys]) / math.sqrt(hs)
                        total[i, sl] += s.softmax(0) @ v[b, keys, sl]
            count[members] += 1
            if start + W >= extent:
                break
            start += stride
        out[b] = total / count.clamp_min(1)[:, None]
    return attn.out(out)


def reference_order(attn, x, mask, prefix):
    """Body positions sorted by (nearest centroid, position); padding last."""
    B, T, _ = x.shape
    orders = []
    for b in range(B):
        def key(pos):
            if not mask[b, pos]:
                return (attn.num_clusters, pos)
            d = ((x[b, pos] - attn.centroids) ** 2).sum(1)
            return (int(d.argmin()), pos)
        orders.append(sorted(range(prefix, T), key=key))
    return torch.tensor(orders)


# ------------------------------------------------------------------------------------------------
# equal to full attention when one window / one chunk covers the sequence


@pytest.mark.parametrize("name,kw", [
    ("sliding-window", dict(window=12)),
    ("sliding-window", dict(window=9, global_prefix=3)),  # prefix + window cover all 12
    ("cluster-former", dict(window=12, num_clusters=1)),
    ("cluster-former", dict(window=12, num_clusters=4)),  # sorted, but one chunk: same set of keys
])
def test_one_window_equals_full_softmax_attention(name, kw):
    attn = layer(name, **kw)
    x, mask = inputs()
    if name == "cluster-former":
        fit(attn, x, mask)
    ref = softmax_twin(attn)
    with torch.no_grad():
        out, _ = attn(x, mask)
        eager, w = attn(x, mask, output_attentions=True)
        full, w_full = ref(x, mask, output_attentions=True)
    torch.testing.assert_close(out[mask], full[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager[mask], full[mask], atol=1e-5, rtol=1e-5)
    rows = w.transpose(1, 2)[mask]  # (real queries, nh, T)
    torch.testing.assert_close(rows, w_full.transpose(1, 2)[mask], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window,stride,prefix", [(4, 2, 0), (5, 3, 2), (4, 4, 1), (3, 1, 0)])
def test_sliding_window_equals_the_loop_reference(window, stride, prefix):
    attn = layer("sliding-window", window=window, stride=stride, global_prefix=prefix)
    x, mask = inputs(T=17)
    with torch.no_grad():
        out, _ = attn(x, mask)
        eager, w = attn(x, mask, output_attentions=True)
        ref = reference(attn, x, mask, window, stride, prefix)
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager[mask], ref[mask], atol=1e-5, rtol=1e-5)
    # the effective weights describe the computation: out = out_proj(A V)
    v = attn.value(x).view(3, 17, NH, H // NH).transpose(1, 2)
    via_weights = attn.out((w @ v).transpose(1, 2).reshape(3, 17, H))
    torch.testing.assert_close(via_weights[mask], ref[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1)[mask[:, None, :].expand(3, NH, 17)], torch.ones(int(mask.sum()) * NH))


@pytest.mark.parametrize("cw,cs,prefix", [(4, 4, 0), (5, 3, 2), (3, 2, 0)])
def test_cluster_layer_equals_the_loop_reference(cw, cs, prefix):
    attn = layer("cluster-former", num_clusters=3, cluster_window=cw, cluster_stride=cs, global_prefix=prefix)
    x, mask = inputs(T=17)
    fit(attn, x, mask)
    with torch.no_grad():
        out, _ = attn(x, mask)
        order = reference_order(attn, x, mask, prefix)
        ref = reference(attn, x, mask, cw, cs, prefix, order)
    assert not torch.equal(order[0], torch.arange(prefix, 17)), "the clusters must reorder the tokens"
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# scatter-back, clusters, padding


def test_every_token_is_scattered_back_to_its_own_position():
    # chunks of one token: each token attends only to itself, so out_i = out(value(x_i)) exactly
    attn = layer("cluster-former", num_clusters=3, window=1)
    x, mask = inputs(B=1, T=15)
    fit(attn, x, mask)
    with torch.no_grad():
        order = reference_order(attn, x, mask, 0)[0]
        out, _ = attn(x, mask)
    assert not torch.equal(order, torch.arange(15))
    torch.testing.assert_close(out, attn.out(attn.value(x)), atol=1e-6, rtol=1e-5)


def test_tokens_attend_within_their_cluster_across_any_distance():
    # two blobs interleaved by position; with centroids at the blob means and chunks of 4, token i
    # attends exactly to the tokens of its own blob, wherever they are
    attn = layer("cluster-former", num_clusters=2, window=4)
    a, b = torch.full((H,), 3.0), torch.full((H,), -3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.stack([a if i % 2 == 0 else b for i in range(8)])[None] + 0.1 * torch.randn(1, 8, H, generator=g)
    attn.centroids.copy_(torch.stack([b, a]))
    with torch.no_grad():
        _, w = attn(x, torch.ones(1, 8, dtype=torch.bool), output_attentions=True)
    same = torch.tensor([[i % 2 == j % 2 for j in range(8)] for i in range(8)])
    assert (w[0][:, ~same] == 0).all() and (w[0][:, same] > 0).all()


@pytest.mark.parametrize("name,kw", [
    ("sliding-window", dict(window=4, stride=2)),
    ("sliding-window", dict(window=3, stride=2, global_prefix=2)),
    ("cluster-former", dict(window=3, num_clusters=3)),
    ("cluster-former", dict(window=4, cluster_stride=2, num_clusters=2, global_prefix=1)),
])
def test_padding_is_ignored(name, kw):
    attn = layer(name, **kw)
    x, mask = inputs(T=14)
    if name == "cluster-former":
        fit(attn, x, mask)
    garbage = x.clone()
    garbage[~mask] = 100 * torch.randn(int((~mask).sum()), H)
    with torch.no_grad():
        out, w = attn(x, mask, output_attentions=True)
        other, _ = attn(garbage, mask)
        for b in range(3):
            n = int(mask[b].sum())
            alone, _ = attn(x[b:b + 1, :n], mask[b:b + 1, :n])
            torch.testing.assert_close(out[b, :n], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[mask], other[mask], atol=1e-5, rtol=1e-5)
    assert (w.permute(0, 3, 1, 2)[~mask] == 0).all(), "padded tokens are never attended to"


def test_padding_is_not_written_to_the_memory_bank():
    attn = layer("cluster-former", num_clusters=2, memory_size=64).train()
    x, mask = inputs()
    x[~mask] = 1e6
    attn(x, mask)
    assert int(attn.memory_filled) == int(mask.sum())
    assert attn.memory.abs().max() < 1e3


# ------------------------------------------------------------------------------------------------
# centroids


def blobs(n_per=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(3, H)
    means[0, 0], means[1, 1], means[2, 2] = 6.0, 6.0, 6.0
    points = torch.cat([m + 0.5 * torch.randn(n_per, H, generator=g) for m in means])
    return means, points[torch.randperm(len(points), generator=g)]


def nearest_error(centroids, means):
    return torch.cdist(means, centroids).min(1).values.max().item()


def test_kmeans_finds_three_blobs():
    means, points = blobs()
    c = kmeans(points, 3, iters=10)
    assert nearest_error(c, means) < 0.5
    warm = kmeans(points, 3, iters=10, init=torch.zeros(3, H))  # empty clusters are reseeded
    assert nearest_error(warm, means) < 0.5


def test_centroids_move_toward_the_data_clusters_during_training():
    means, points = blobs(n_per=80)
    attn = layer("cluster-former", num_clusters=3, memory_size=96, memory_per_step=24, refresh_every=4,
                 kmeans_iters=1)  # one Lloyd step per refit: the centroids must travel over refits
    attn.train()
    x = points.view(10, 24, H)
    mask = torch.ones(10, 24, dtype=torch.bool)
    errors = []
    for step in range(10):
        attn(x[step:step + 1], mask[:1])
        errors.append(nearest_error(attn.centroids, means))
    assert int(attn.forwards) == 10 and int(attn.fits) == 1 + 2  # first forward, then forwards 4 and 8
    assert errors[-1] < 0.6 < errors[0] or errors[-1] < 0.5 * errors[0]
    before = attn.centroids.clone(), int(attn.forwards)
    attn.eval()(x[:1], mask[:1])
    assert torch.equal(attn.centroids, before[0]) and int(attn.forwards) == before[1], "eval changes nothing"


def encoder(layers=("sliding-window", "cluster-former", "cluster-former"), **kw):
    torch.manual_seed(0)
    options = dict(window=4, num_clusters=3, refresh_every=2, memory_size=128)
    options.update(kw)
    return Encoder(EncoderConfig.tiny(num_layers=len(layers), layer_attention=list(layers), attention_kwargs=options,
                                      hidden_dropout=0.0, attention_dropout=0.0))


def tokens(B=2, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 13:] = 0
    return ids, mask


def test_calibration_fits_every_cluster_layer_deterministically():
    enc = encoder()
    batches = [tokens(seed=s) for s in range(3)]
    assert calibrate_centroids(enc, batches, lambda m, b: m(*b)) == 2
    first = [layer.centroids.clone() for layer in cluster_layers(enc)]
    assert all(int(layer.fits) == 1 and int(layer.memory_filled) == 3 * 33 for layer in cluster_layers(enc))
    assert enc.training, "the mode is restored"
    calibrate_centroids(enc, batches, lambda m, b: m(*b))
    assert all(torch.equal(a, layer.centroids) for a, layer in zip(first, cluster_layers(enc)))
    with pytest.raises(ConfigError, match="fewer than"):
        calibrate_centroids(encoder(num_clusters=50), batches[:1], lambda m, b: m(*b))


def test_save_load_round_trip_keeps_centroids(tmp_path):
    enc = encoder().train()
    for s in range(3):
        enc(*tokens(seed=s))
    enc.eval()
    enc.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert {"encoder.layer.1.attention.self.centroids", "encoder.layer.2.attention.self.fits",
            "encoder.layer.1.attention.self.memory"} <= names
    loaded = Encoder.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.layer_attention == ["sliding-window", "cluster-former", "cluster-former"]
    for a, b in zip(cluster_layers(enc), cluster_layers(loaded)):
        assert int(a.fits) == int(b.fits) == 2 and torch.equal(a.centroids, b.centroids)
        assert torch.equal(a.memory, b.memory) and int(a.forwards) == int(b.forwards)
    ids, mask = tokens(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).last_hidden_state, enc(ids, mask).last_hidden_state)


def test_gradients_reach_the_weights_of_an_interleaved_encoder():
    enc = encoder().train()
    ids, mask = tokens()
    out = enc(ids, mask).last_hidden_state
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * mask[..., None]).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert all(not b.requires_grad for layer in cluster_layers(enc) for b in layer.buffers())


def test_pretrained_softmax_weights_load_into_both_layers(tmp_path):
    torch.manual_seed(0)
    plain = Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.warns(UserWarning, match="centroids"):
        mixed = Encoder.from_pretrained(tmp_path / "plain", layer_attention=["sliding-window", "cluster-former"],
                                        attention_kwargs={"window": 64})
    ids, mask = tokens()
    with torch.no_grad():  # windows and one chunk cover the 20 tokens: the same function as softmax
        torch.testing.assert_close(mixed.eval()(ids, mask).last_hidden_state[mask.bool()],
                                   plain.eval()(ids, mask).last_hidden_state[mask.bool()], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# cost and configuration


@pytest.mark.parametrize("name", ["sliding-window", "cluster-former"])
def test_attention_cost_grows_linearly(name):
    attn = layer(name, window=32, num_clusters=4)

    def flops(T):
        x = torch.randn(1, T, H)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            attn(x, torch.ones(1, T, dtype=torch.bool))
        return counter.get_total_flops()

    f1, f2, f4 = flops(256), flops(512), flops(1024)
    assert f2 / f1 < 2.1 and f4 / f2 < 2.1  # softmax: the score part alone grows 4x per doubling


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="stride"):
        ATTENTION["sliding-window"](H, NH, window=4, stride=5)
    with pytest.raises(ConfigError, match="unknown options"):
        ATTENTION["sliding-window"](H, NH, windw=4)
    with pytest.raises(ConfigError, match="unknown options"):
        ATTENTION["cluster-former"](H, NH, clusters=4)
    with pytest.raises(ConfigError, match="num_clusters"):
        ATTENTION["cluster-former"](H, NH, num_clusters=0)
    assert isinstance(ATTENTION["cluster-former"](H, NH, stride=3), ClusterFormerAttention)  # shared options
