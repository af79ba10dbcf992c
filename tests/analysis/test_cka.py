"""CKA (reprlab.analysis.cka): the official demo's numbers, invariances, the unbiased estimator, minibatch
CKA against the full-data value, exact self-similarity, no NaN, and the layer recorder's hooks."""

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from reprlab.analysis.activations import LayerRecorder, default_layers, select_layers
from reprlab.analysis.cka import (
    MinibatchCKA,
    PC1Fraction,
    _normalise,
    center_gram,
    cka,
    feature_space_linear_cka,
    find_blocks,
    gram_linear,
    gram_rbf,
    hsic,
    linear_cka,
    minibatch_cka,
    pc1_fraction,
    rbf_cka,
    u_centre,
    unbiased_hsic_song,
)
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.resnet import ResNet, ResNetConfig


@pytest.fixture(scope="module")
def demo():
    """The official demo's data (google-research representation_similarity/Demo.ipynb), numpy's legacy RNG."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def test_golden_values_of_the_official_demo(demo):
    x, y = demo
    assert round(cka(gram_linear(x), gram_linear(y)), 5) == 0.55761
    assert round(feature_space_linear_cka(x, y), 5) == 0.55761
    assert round(cka(gram_linear(x), gram_linear(y), debiased=True), 5) == 0.51346
    assert round(feature_space_linear_cka(x, y, debiased=True), 5) == 0.51346
    assert round(rbf_cka(x, y, threshold=0.5), 5) == 0.65483
    # the Gram and feature-space forms agree to rounding, and linear_cka picks either
    assert linear_cka(x, y) == pytest.approx(cka(gram_linear(x), gram_linear(y)), abs=1e-12)
    assert linear_cka(x[:8], y[:8], debiased=True) == pytest.approx(
        feature_space_linear_cka(x[:8], y[:8], debiased=True), abs=1e-10)


def test_the_unbiased_hsic_is_the_song_et_al_formula(demo):
    x, y = demo
    for kx, ky in [(gram_linear(x), gram_linear(y)), (gram_rbf(x, 0.5), gram_rbf(y, 1.0))]:
        assert hsic(kx, ky, unbiased=True) == pytest.approx(unbiased_hsic_song(kx, ky), rel=1e-10)
    # and the biased one is tr(KHLH) / (n - 1)^2
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = gram_linear(x), gram_linear(y)
    assert hsic(kx, ky) == pytest.approx(float(torch.trace(kx @ h @ ky @ h)) / (n - 1) ** 2, rel=1e-10)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(demo):
    x, y = demo
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
    for debiased in (False, True):
        base = linear_cka(x, y, debiased)
        assert linear_cka(x @ q, y, debiased) == pytest.approx(base, abs=1e-10)
        assert linear_cka(3.7 * x, 0.01 * y, debiased) == pytest.approx(base, abs=1e-10)
    base = rbf_cka(x, y, 0.5)
    assert rbf_cka(x @ q, 5.0 * y, 0.5) == pytest.approx(base, abs=1e-10)
    # but not to an arbitrary invertible transform (which is what makes CKA differ from CCA)
    a = np.diag(np.r_[10.0, np.ones(9)])
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 0.05


def test_debiased_cka_of_independent_data_is_near_zero_and_closer_than_biased():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(32, 64)), rng.normal(size=(32, 64))
        biased.append(linear_cka(x, y))
        debiased.append(linear_cka(x, y, debiased=True))
    assert abs(np.mean(debiased)) < 0.05
    assert np.mean(biased) > 0.5  # the biased estimator sees structure in noise when p > n
    assert abs(np.mean(debiased)) < np.mean(biased) / 10


def _two_views(n, seed=0):
    """Two representations of the same n examples that share a nonlinear, low-rank structure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    x = np.tanh(z @ rng.normal(size=(6, 40))) + 0.5 * rng.normal(size=(n, 40))
    y = (z ** 2) @ rng.normal(size=(6, 30)) + z @ rng.normal(size=(6, 30)) + 2.0 * rng.normal(size=(n, 30))
    return x, y


def test_minibatch_cka_converges_to_the_full_data_value():
    x, y = _two_views(8192)
    full = linear_cka(x, y, debiased=True)
    result = minibatch_cka([[x[i:i + 256], y[i:i + 256]] for i in range(0, 8192, 256)])
    assert result.batches == 32 and result.examples == 8192
    assert result.a[0, 1] == pytest.approx(full, abs=0.01)
    # more batches, smaller error; averaging the biased estimator instead would not converge
    few = minibatch_cka([[x[i:i + 256], y[i:i + 256]] for i in range(0, 512, 256)])
    assert abs(result.a[0, 1] - full) < abs(few.a[0, 1] - full) + 0.005
    biased = np.mean([linear_cka(x[i:i + 32], y[i:i + 32]) for i in range(0, 8192, 32)])
    small = minibatch_cka([[x[i:i + 32], y[i:i + 32]] for i in range(0, 8192, 32)])
    assert abs(small.a[0, 1] - full) < 0.02 < abs(biased - full)


def test_across_models_equals_the_joint_within_model_matrix():
    rng = np.random.default_rng(1)
    acts_a = [rng.normal(size=(64, 8)) for _ in range(3)]
    acts_b = [acts_a[0] @ rng.normal(size=(8, 5)), rng.normal(size=(64, 7))]
    across = MinibatchCKA()
    joint = MinibatchCKA()
    for i in range(0, 64, 16):
        across.update([a[i:i + 16] for a in acts_a], [b[i:i + 16] for b in acts_b])
        joint.update([a[i:i + 16] for a in acts_a + acts_b])
    r, j = across.result(), joint.result().a
    assert np.allclose(r.ab, j[:3, 3:], atol=1e-12)
    assert np.allclose(r.a, j[:3, :3], atol=1e-12) and np.allclose(r.b, j[3:, 3:], atol=1e-12)
    # model B's layers are really model B's: its layer 0 is a linear map of A's layer 0, layer 1 is noise
    assert r.ab[0, 0] > 0.5 and abs(r.ab[0, 1]) < 0.2
    # both loaders are read to the end: batches of B that A lacks are an error, not silently ignored
    batches = [[a[i:i + 16] for a in acts_a] for i in range(0, 64, 16)]
    with pytest.raises(ValueError):
        minibatch_cka(batches[:3], [[b[i:i + 16] for b in acts_b] for i in range(0, 64, 16)])
    with pytest.raises(ValueError, match="both models"):
        across.update(batches[0])


def test_self_cka_is_exactly_one(demo):
    x, y = demo
    assert cka(gram_linear(x), gram_linear(x)) == 1.0
    assert cka(gram_rbf(y), gram_rbf(y), debiased=True) == 1.0
    rng = np.random.default_rng(2)
    acts = [rng.normal(size=(200, d)) * s for d, s in [(3, 1.0), (50, 1e-4), (7, 1e5)]]
    acc = MinibatchCKA()
    for i in range(0, 200, 40):
        batch = [a[i:i + 40] for a in acts]
        acc.update(batch, batch)  # the same model twice
    r = acc.result()
    assert np.all(np.diag(r.a) == 1.0) and np.all(np.diag(r.b) == 1.0) and np.all(np.diag(r.ab) == 1.0)
    assert np.array_equal(r.a, r.ab)


def test_the_u_centred_diagonal_really_is_zero(demo):
    x, _ = demo
    k = gram_linear(x[:20]) + 5.0  # a large constant on every entry, the diagonal included
    assert torch.all(torch.diagonal(center_gram(k, unbiased=True)) == 0)
    assert torch.all(torch.diagonal(u_centre(k)[0].reshape(20, 20)) == 0)
    # and off the diagonal nothing was subtracted twice: U-centring ignores a constant added to K
    assert torch.allclose(center_gram(k, unbiased=True), center_gram(gram_linear(x[:20]), unbiased=True), atol=1e-9)
    # the minibatch path's U-centring is the plain one, scaled, and symmetric
    flat, _ = u_centre(k)
    assert torch.allclose(flat.reshape(20, 20) * math.sqrt(20 * 17), center_gram(k, unbiased=True), atol=1e-9)
    # one minibatch of minibatch CKA is the debiased CKA of that batch, to rounding
    y = x[:20] * np.linspace(0.1, 10, 20)[:, None]  # rows of very different norms: the diagonal matters
    one = minibatch_cka([[x[:20], y, y ** 2]]).a
    assert one[0, 1] == pytest.approx(cka(gram_linear(x[:20]), gram_linear(y), debiased=True), abs=1e-12)
    assert one[1, 2] == pytest.approx(cka(gram_linear(y), gram_linear(y ** 2), debiased=True), abs=1e-12)


def test_no_nan_when_an_unbiased_hsic_is_negative(caplog):
    with caplog.at_level(logging.WARNING, logger="reprlab"):
        assert _normalise(0.3, -1e-15, 2.0) == 0.0
    assert "negative" in caplog.text and "clamped" in caplog.text
    assert _normalise(-0.5, 1.0, 1.0) == -0.5  # a negative cross term is a legitimate (debiased) CKA
    # the regular simplex: every off-diagonal product is equal, so its unbiased HSIC is 0 in exact
    # arithmetic and a rounding error away from negative in floating point
    n = 12
    simplex = np.eye(n) - 1.0 / n
    rng = np.random.default_rng(3)
    other = rng.normal(size=(n, 5))
    values = [feature_space_linear_cka(simplex, other, debiased=True),
              cka(gram_linear(simplex), gram_linear(other), debiased=True),
              minibatch_cka([[simplex, other]]).a[0, 1], linear_cka(np.ones((n, 3)), other, debiased=True),
              linear_cka(np.ones((n, 3)) * 7.0, other)]
    assert all(math.isfinite(v) for v in values)
    assert values == [0.0] * 5  # degenerate (no centred variance): reported as 0, with a warning
    assert "no variance" in caplog.text
    # small n: negative debiased CKA of independent data is returned as it is, not NaN
    vals = [linear_cka(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), debiased=True) for _ in range(50)]
    assert all(math.isfinite(v) for v in vals) and min(vals) < 0


def test_grams_path_equals_activations_path_and_state_round_trips():
    rng = np.random.default_rng(4)
    acts = [rng.normal(size=(48, 10)), rng.normal(size=(48, 3, 2, 2))]
    a, b = MinibatchCKA(), MinibatchCKA()
    for i in range(0, 48, 16):
        batch = [x[i:i + 16] for x in acts]
        a.update(batch)
        b.update([gram_linear(x) for x in batch], grams=True)
    assert np.allclose(a.result().a, b.result().a, atol=1e-12)
    c = MinibatchCKA()
    c.load_state_dict(a.state_dict())
    assert np.array_equal(c.result().a, a.result().a) and c.batches == 3
    with pytest.raises(ValueError, match="at least 4"):
        a.update([x[:3] for x in acts])


def test_pc1_fraction_and_blocks():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 20))
    x[:, 0] *= 10  # one direction holds 100 / (100 + 19) of the variance
    assert pc1_fraction(x) == pytest.approx(100 / 119, abs=0.03)
    acc = PC1Fraction()
    for i in range(0, 500, 100):
        acc.update([x[i:i + 100], rng.normal(size=(100, 20))])
    frac = acc.result()
    assert frac[0] > 0.75 and frac[1] < 0.2
    m = np.full((8, 8), 0.3)
    m[2:6, 2:6] = 0.95
    np.fill_diagonal(m, 1.0)
    blocks = find_blocks(m, threshold=0.9, min_size=3)
    assert [(b.start, b.end, b.size) for b in blocks] == [(2, 5, 4)]
    assert blocks[0].min_cka == pytest.approx(0.95)
    assert find_blocks(m, threshold=0.96) == [] and find_blocks(np.ones((5, 5)), min_size=2)[0].size == 5
    # neighbours alike is not enough: every pair of the run must pass (a drifting chain is no block)
    chain = np.full((6, 6), 0.5) + 0.45 * (np.abs(np.subtract.outer(range(6), range(6))) <= 1)
    np.fill_diagonal(chain, 1.0)
    assert find_blocks(chain, threshold=0.9, min_size=3) == []


def test_recorder_on_our_encoder_pools_real_tokens_only():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny()).eval()
    layers = default_layers(enc)
    assert layers == ["embeddings", "layers.0", "layers.1"]
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    with torch.no_grad(), LayerRecorder(enc, layers) as rec:
        rec.set_mask(mask)
        out = enc(ids, mask, output_hidden_states=True)
        acts = rec.outputs()
    for hidden, act in zip(out.hidden_states, acts):
        m = mask[..., None].double()
        assert torch.allclose(act, (hidden.double() * m).sum(1) / m.sum(1), atol=1e-6)  # (B, H) masked mean
    assert not enc.layers[0]._forward_hooks  # removed on exit
    with torch.no_grad(), LayerRecorder(enc, ["layers.1"], gram=True) as rec:
        rec.set_mask(mask)
        enc(ids, mask)
        (k,) = rec.outputs()
    assert torch.allclose(k, acts[2] @ acts[2].T, atol=1e-9)


def test_recorder_on_a_resnet_flattens_feature_maps_and_rejects_unknown_layers():
    model = ResNet(ResNetConfig(depth=8, width=0.5)).eval()
    layers = default_layers(model)
    assert layers == ["stem", "blocks.0.act1", "blocks.0", "blocks.1.act1", "blocks.1", "blocks.2.act1", "blocks.2"]
    with torch.no_grad(), LayerRecorder(model, layers) as rec:
        model(torch.rand(4, 1, 28, 28))
        acts = rec.outputs()
    assert [a.shape[1] for a in acts] == [8 * 784, 8 * 784, 8 * 784, 16 * 196, 16 * 196, 32 * 49, 32 * 49]
    assert all(a.dtype == torch.float64 for a in acts)
    with pytest.raises(ConfigError, match="no module named"):
        LayerRecorder(model, ["blocks.9"])
    assert select_layers(model, r"blocks\.\d") == ["blocks.0", "blocks.1", "blocks.2"]
    generic = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert default_layers(generic) == ["0", "2"]


# ----------------------------------------------------------------------------- reprlab analyze cka


def _idx_folder(folder, n=48, seed=0):
    import gzip

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)) + images.tobytes()))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
        bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(rng.integers(0, 10, n, dtype=np.uint8))))
    return folder


def test_analyze_cka_command_on_two_resnets(tmp_path, capsys):
    import json

    from reprlab.cli import main

    torch.manual_seed(0)
    for name in ("r1", "r2"):
        ResNet(ResNetConfig(depth=8, width=0.25)).save_pretrained(tmp_path / name)
    data = _idx_folder(tmp_path / "images")
    out = tmp_path / "out"
    argv = ["-q", "analyze", "cka", "--model", str(tmp_path / "r1"), "--model", str(tmp_path / "r2"),
            "--data", str(data), "--out", str(out), "--batch-size", "16"]
    assert main(argv) == 0
    assert "model A" in capsys.readouterr().out
    report = json.loads((out / "cka.json").read_text())
    assert report["examples"] == 48 and report["batches"] == 3
    a, b = report["models"]
    assert len(a["layers"]) == 7 and np.diag(np.array(a["cka"])).tolist() == [1.0] * 7
    assert np.array(report["cross"]).shape == (7, 7) and len(a["pc1_fraction"]) == 7
    assert all((out / f).is_file() for f in ("cka_a.png", "cka_b.png", "cka_ab.png"))
    # one-line errors: three models, a text corpus for an image model, too few examples
    assert main(argv[:-2] + ["--batch-size", "100"]) == 2
    assert "fewer than one minibatch" in capsys.readouterr().err
    text = tmp_path / "texts.txt"
    text.write_text("a line\n")
    assert main(["-q", "analyze", "cka", "--model", str(tmp_path / "r1"), "--data", str(text), "--out", str(out)]) == 2
    assert "IDX folder" in capsys.readouterr().err
    assert main(argv + ["--model", str(tmp_path / "r1")]) == 2
    assert "--model" in capsys.readouterr().err


def test_analyze_cka_on_a_text_encoder(tmp_path, tiny_model_dir):
    from reprlab.analysis.cka_report import CKAConfig, analyse, write_report

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(f"sentence {i} about {['cells', 'genes', 'drugs'][i % 3]} and more" for i in range(40)))
    config = CKAConfig(output_dir=str(tmp_path / "out"), data=str(corpus), models=[str(tiny_model_dir)],
                       batch_size=8, max_length=16, unit="line")
    report = analyse(config)
    (m,) = report.models
    assert m["kind"] == "text" and m["layers"] == ["encoder.embeddings", "encoder.layers.0", "encoder.layers.1"]
    assert report.examples == 40 and report.cross is None
    assert [p.name for p in write_report(report, config.output_dir)] == ["cka.json", "cka_a.png"]
    with pytest.raises(ConfigError, match="one or two"):
        CKAConfig(output_dir="x", data="y", models=[])
