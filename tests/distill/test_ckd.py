"""CKD: Gram-matrix relations against plain definitions, zero at equality, any hidden sizes."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from reprlab.distill.ckd import (CKDConfig, all_angles, ckd_loss, layer_pair_loss, layer_triplet_loss,
                                 pair_cosines, window_angles, word_pair_loss, word_triplet_loss)
from reprlab.errors import ConfigError


def reference_angle(x, i, j, k):
    a, b = x[j] - x[i], x[k] - x[i]
    return F.cosine_similarity(a, b, dim=0)


def test_pair_cosines_and_all_angles_match_plain_definitions():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64) * 3
    ref = torch.stack([torch.stack([F.cosine_similarity(x[i], x[j], dim=0) for j in range(5)]) for i in range(5)])
    torch.testing.assert_close(pair_cosines(x).double(), ref, atol=1e-5, rtol=1e-5)
    angles = all_angles(x)
    for i, j, k in itertools.permutations(range(5), 3):
        torch.testing.assert_close(angles[i, j, k].double(), reference_angle(x, i, j, k), atol=1e-4, rtol=1e-4)


def test_window_angles_match_plain_definitions():
    torch.manual_seed(1)
    B, T, D, w = 2, 9, 6, 5
    x = torch.randn(B, T, D) * 4
    angles, inside = window_angles(x, w)
    r = w // 2
    for b, i in itertools.product(range(B), range(T)):
        for a, c in itertools.product(range(w), range(w)):
            j, k = i - r + a, i - r + c
            assert bool(inside[i, a]) == (0 <= j < T)
            if 0 <= j < T and 0 <= k < T and len({i, j, k}) == 3:
                torch.testing.assert_close(angles[b, i, a, c], reference_angle(x[b], i, j, k), atol=1e-4, rtol=1e-4)


def states(B=3, T=10, D=16, L=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, D, generator=g) * 2 for _ in range(L)]


def mask_for(B=3, T=10):
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return mask


@pytest.mark.parametrize("loss", ["wr_pair", "wr_triplet", "ltr_pair", "ltr_triplet"])
def test_each_relation_loss_is_zero_at_equality_and_positive_otherwise(loss):
    t = states()
    s = [x + 0.5 * torch.randn_like(x) for x in t]
    mask = mask_for()
    fns = {
        "wr_pair": lambda a, b: word_pair_loss(a[0], b[0], mask),
        "wr_triplet": lambda a, b: word_triplet_loss(a[0], b[0], mask, window=5),
        "ltr_pair": lambda a, b: layer_pair_loss(torch.stack(a, 2), torch.stack(b, 2), mask),
        "ltr_triplet": lambda a, b: layer_triplet_loss(torch.stack(a, 2), torch.stack(b, 2), mask),
    }
    assert abs(float(fns[loss](t, t))) < 1e-6
    assert float(fns[loss](s, t)) > 1e-5


def test_padding_does_not_change_the_losses():
    t = states(B=1, T=6)
    s = [x + torch.randn_like(x) for x in t]
    pad = lambda xs: [torch.cat([x, 100 * torch.randn(1, 3, x.size(-1))], 1) for x in xs]  # noqa: E731
    mask = torch.ones(1, 6, dtype=torch.long)
    mask_padded = torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], 1)
    cfg = CKDConfig(window=5)
    a, _ = ckd_loss(s, t, mask, cfg)
    b, _ = ckd_loss(pad(s), pad(t), mask_padded, cfg)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ckd_needs_no_equal_hidden_sizes():
    """Relations are invariant to rotations and zero-padding: a 24-wide rotated copy of a 16-wide
    teacher has zero loss, and a random 24-wide student gets gradients."""
    t = states(D=16)
    mask = mask_for()
    Q, _ = torch.linalg.qr(torch.randn(24, 24))
    wide = [F.pad(x, (0, 8)) @ Q for x in t]  # (B, T, 24), same geometry as the teacher
    cfg = CKDConfig(window=5)
    loss, terms = ckd_loss(wide, t, mask, cfg)
    assert float(loss) < 1e-5 and set(terms) == {"wr_pair", "wr_triplet", "ltr_pair", "ltr_triplet"}
    student = [torch.randn(3, 10, 24, requires_grad=True) for _ in range(4)]
    loss, _ = ckd_loss(student, t, mask, cfg)
    loss.backward()
    assert float(loss.detach()) > 0 and all(x.grad is not None and torch.isfinite(x.grad).all() for x in student)


def test_layer_map_default_and_errors():
    assert CKDConfig().pairs(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert CKDConfig(layer_map=[[3, 6], [1, 1]]).pairs(3, 6) == [(3, 6), (1, 1)]
    with pytest.raises(ConfigError, match="out of range"):
        CKDConfig(layer_map=[[4, 6]]).pairs(3, 6)
    with pytest.raises(ConfigError, match="odd"):
        CKDConfig(window=4)


def test_teacher_states_get_no_gradient():
    t = [x.requires_grad_() for x in states()]
    s = [x.detach().clone().requires_grad_() + 0.1 for x in states(seed=1)]
    loss, _ = ckd_loss(s, t, mask_for(), CKDConfig(window=5))
    loss.backward()
    assert all(x.grad is None for x in t)
