"""The Quad objective (Saunshi et al., ICLR 2021): the loss and its gradient against the formula, its
optimum, and ``reprlab pretrain mlm --loss quad``."""

import json

import numpy as np
import pytest
import torch

from reprlab.cli import build_parser
from reprlab.cli.options import config_from_args
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.nn.quad import quad_distribution, quad_excess, quad_feature_grad, quad_loss, quad_loss_from_logits
from reprlab.pretrain.masking import IGNORE_INDEX
from reprlab.pretrain.mlm import MLMConfig, MLMModel, load_mlm_model, run_mlm


def formula(f, Phi, w, b=None):
    """The paper's l_quad = -f^T phi_w + 1/2 ||Phi^T f||^2, one example at a time (Phi: d x V), averaged."""
    total = 0.0
    for i in range(f.shape[0]):
        z = Phi.T @ f[i] + (0 if b is None else b)  # (V,)
        total = total - z[w[i]] + 0.5 * (z * z).sum()
    return total / f.shape[0]


def data(seed=0, B=5, d=6, V=40):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, d, generator=g, dtype=torch.float64)
    Phi = torch.randn(d, V, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(V, generator=g, dtype=torch.float64) * 0.1
    w = torch.randint(0, V, (B,), generator=g)
    return f, Phi, b, w


@pytest.mark.parametrize("with_bias", [False, True])
def test_both_paths_equal_the_formula(with_bias):
    f, Phi, b, w = data()
    b = b if with_bias else None
    ref = formula(f, Phi, w, b)
    logits = f @ Phi + (0 if b is None else b)
    torch.testing.assert_close(quad_loss_from_logits(logits, w).double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(quad_loss(f, Phi.T, w, bias=b).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_gradients_match_autograd_of_the_formula(with_bias):
    f, Phi, b, w = data(1)
    b = b if with_bias else None
    leaves = [t.clone().float().requires_grad_(True) for t in (f, Phi)] + \
             ([b.clone().float().requires_grad_(True)] if with_bias else [])
    formula(leaves[0], leaves[1], w, leaves[2] if with_bias else None).backward()
    expected = [t.grad.clone() for t in leaves]
    for path in ("gram", "logits"):
        mine = [t.detach().clone().requires_grad_(True) for t in leaves]
        fb = mine[2] if with_bias else None
        if path == "gram":
            loss = quad_loss(mine[0], mine[1].T, w, bias=fb)
        else:
            loss = quad_loss_from_logits(mine[0] @ mine[1] + (0 if fb is None else fb), w)
        loss.backward()
        for a, e in zip(mine, expected):
            torch.testing.assert_close(a.grad, e, rtol=1e-4, atol=1e-5)
    closed = quad_feature_grad(leaves[0].detach(), leaves[1].detach().T, w, bias=None if b is None else leaves[2].detach())
    torch.testing.assert_close(closed, expected[0], rtol=1e-4, atol=1e-5)


def test_expected_loss_is_minimised_by_the_true_distribution():
    """E_w~p[l_quad(z, w)] = 1/2 ||z - p||^2 - 1/2 ||p||^2: smallest at z = p, excess = quad_excess."""
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(30, generator=g, dtype=torch.float64) * 2, 0)

    def expected(z):
        return sum(p[w] * quad_loss_from_logits(z[None], torch.tensor([w])).double() for w in range(30))

    best = expected(p)
    torch.testing.assert_close(best, -0.5 * (p * p).sum())
    for _ in range(5):
        z = p + 0.05 * torch.randn(30, generator=g, dtype=torch.float64)
        assert expected(z) > best
        torch.testing.assert_close(expected(z) - best, quad_excess(z[None], p[None])[0].double(), rtol=1e-5, atol=1e-6)
    q = quad_distribution(p[None])[0].double()
    torch.testing.assert_close(q, p / p.sum(), rtol=1e-5, atol=1e-6)  # a Quad model at its optimum is p itself


@pytest.mark.parametrize("tie", [True, False])
def test_mlm_model_quad_equals_the_loss_on_full_logits(tie):
    torch.manual_seed(0)
    model = MLMModel.build(Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0)), tie=tie).eval()
    model.loss = "quad"
    ids = torch.randint(5, 1000, (3, 10))
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 8, 9
    loss, _ = model(ids, mask, labels)
    logits = model.full_logits(ids, mask)  # (B, T, V)
    sel = labels != IGNORE_INDEX
    torch.testing.assert_close(loss, quad_loss_from_logits(logits[sel], labels[sel]))
    E = model.head.output_embeddings
    feats = model.head.norm(torch.nn.functional.gelu(model.head.dense(model.encoder(ids, mask).last_hidden_state)))
    torch.testing.assert_close(loss, quad_loss(feats[sel], E, labels[sel], bias=model.head.bias), rtol=1e-4, atol=1e-4)
    model.loss = "ce"
    assert not torch.allclose(model(ids, mask, labels)[0], loss)


def test_loss_option_is_validated_and_reaches_the_cli(tmp_path):
    with pytest.raises(ConfigError) as err:
        MLMConfig(corpus=["x.txt"], output_dir=str(tmp_path), loss="mse")
    assert err.value.field == "loss"
    with pytest.raises(ConfigError):
        MLMModel(Encoder(EncoderConfig.tiny()), None, loss="mse")
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        build_parser().parse_args(["pretrain", "mlm", "--corpus", "x.txt", "--out", "o", "--loss", "mse"])
    args = build_parser().parse_args(["pretrain", "mlm", "--corpus", "x.txt", "--out", "o", "--loss", "quad"])
    assert config_from_args(args.options, args).loss == "quad"


def test_pretraining_with_quad_lowers_the_quad_loss(tmp_path, tiny_model_dir, toy_texts):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n" for i, t in enumerate(toy_texts)))
    cfg = MLMConfig(corpus=[str(corpus)], output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), loss="quad",
                    max_length=32, max_steps=12, batch_size=8, lr=3e-3, log_every=1, device="cpu")
    result = run_mlm(cfg)
    losses = [m["loss"] for m in result.metrics]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), "Quad loss goes down"
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["extra"]["config"]["loss"] == "quad"
    assert load_mlm_model(result.model_dir).head is not None
