"""DEMI: the bounds against plain references, and against InfoNCE on Gaussians of known MI."""

import math

import pytest
import torch
from torch import nn

from reprlab.pretrain.demi import (
    conditional_infonce, demi_bound, demi_loss, importance_conditional_infonce, in_batch, infonce, infonce_loss,
)


def test_in_batch_moves_the_positive_to_column_zero():
    s = torch.arange(16.0).view(4, 4)
    out = in_batch(s)
    assert out[:, 0].tolist() == [0.0, 5.0, 10.0, 15.0]
    assert out[1].tolist() == [5.0, 4.0, 6.0, 7.0]


def test_infonce_equals_log_k_minus_cross_entropy_and_is_capped():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g)
    ref = math.log(5) - nn.functional.cross_entropy(s, torch.zeros(6, dtype=torch.long))
    assert infonce(s) == pytest.approx(float(ref), abs=1e-6)
    s[:, 0] = 1e4  # a perfect critic
    assert infonce(s) == pytest.approx(math.log(5), abs=1e-5)
    assert conditional_infonce(s) == pytest.approx(math.log(5), abs=1e-5)


def test_importance_weighting_with_a_flat_proposal_is_plain_infonce():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(7, 9, generator=g)
    flat = torch.full_like(s, 3.0)
    assert importance_conditional_infonce(s, flat) == pytest.approx(float(infonce(s)), abs=1e-6)
    peaked = flat.clone()
    peaked[:, 1] = 50.0  # all weight on negative 1: its score alone stands for the K-1 negatives
    ref = (s[:, 0] - torch.logaddexp(s[:, 0] - math.log(9), s[:, 1] + math.log(8 / 9))).mean()
    assert importance_conditional_infonce(s, peaked) == pytest.approx(float(ref), abs=1e-5)


def test_demi_loss_sums_the_two_terms_and_trains_both_critics():
    f = torch.randn(8, 8, requires_grad=True)
    g = torch.randn(8, 8, requires_grad=True)
    loss, parts = demi_loss(f, g)
    assert parts["mi"] == pytest.approx(parts["mi_subview"] + parts["mi_conditional"], abs=1e-6)
    assert -float(loss.detach()) == pytest.approx(parts["mi"], abs=1e-6)
    loss.backward()
    assert f.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Gaussians of known MI

D, HALF, RHO = 8, 4, 0.9  # x ~ N(0, I), y = rho x + sqrt(1 - rho^2) noise; y' = y[:HALF]
TRUE_MI = -D / 2 * math.log(1 - RHO ** 2)  # 6.64 nats


def sample(n, g):
    x = torch.randn(n, D, generator=g)
    return x, RHO * x + math.sqrt(1 - RHO ** 2) * torch.randn(n, D, generator=g)


class QuadraticCritic(nn.Module):
    """c(x, y) = x^T W y - x^T A x / 2: holds log p(y | x) up to terms in y alone for these Gaussians."""

    def __init__(self, dy):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(D, dy))
        self.A = nn.Parameter(torch.zeros(D, D))

    def forward(self, x, y):  # candidates x (..., D), anchors y (..., dy), broadcast
        return (x @ self.W * y).sum(-1) - 0.5 * (x @ self.A * x).sum(-1)

    def matrix(self, x, y):  # (B, B): s[i, j] = c(x_j, y_i)
        return y @ self.W.T @ x.T - 0.5 * (x @ self.A * x).sum(-1)[None]


def test_demi_beats_infonce_when_mi_exceeds_log_k():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    f, gc, base = QuadraticCritic(HALF), QuadraticCritic(D), QuadraticCritic(D)
    opt = torch.optim.Adam([*f.parameters(), *gc.parameters(), *base.parameters()], lr=0.1)
    for _ in range(250):  # critics trained on their losses with in-batch negatives
        x, y = sample(128, g)
        demi, _ = demi_loss(f.matrix(x, y[:, :HALF]), gc.matrix(x, y))
        nce, _ = infonce_loss(base.matrix(x, y))
        opt.zero_grad()
        (demi + nce).backward()
        opt.step()
    K, n = 32, 4000  # estimation: K candidates per anchor on fresh samples
    with torch.no_grad():
        x, y = sample(n, g)
        cand = torch.cat([x[:, None], torch.randn(n, K - 1, D, generator=g)], 1)  # negatives from p(x)
        cneg = torch.randn(n, K - 1, D, generator=g)  # negatives from p(x | y'): exact for Gaussians
        cneg[..., :HALF] = RHO * y[:, None, :HALF] + math.sqrt(1 - RHO ** 2) * cneg[..., :HALF]
        ccand = torch.cat([x[:, None], cneg], 1)
        nce = float(infonce(base(cand, y[:, None])))
        exact = demi_bound(f(cand, y[:, None, :HALF]), None, gc(ccand, y[:, None]))
        weighted = demi_bound(f(cand, y[:, None, :HALF]), gc(cand, y[:, None]))
    log_k = math.log(K)
    assert TRUE_MI > log_k + 3
    assert nce <= log_k + 1e-6
    for parts in (exact, weighted):
        mi = float(parts["mi"])
        assert mi > log_k + 0.5, "the decomposed bound passes InfoNCE's log K ceiling"
        assert abs(TRUE_MI - mi) < abs(TRUE_MI - nce) - 1.0
        assert mi < TRUE_MI + 0.1
        assert float(parts["mi_subview"]) <= log_k + 1e-6 and float(parts["mi_conditional"]) <= log_k + 1e-6
