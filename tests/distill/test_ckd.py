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


# ----------------------------------------------------------------------------- against plain definitions


def plain_pair_kl(s, t, mask, temperature=1.0):
    """WR pairwise by loops: per real token i, KL(softmax_j t_cos(i, j) || softmax_j s_cos(i, j)) over the other
    real tokens j; the mean over tokens with at least two others."""
    rows = []
    for b in range(s.size(0)):
        real = [i for i in range(s.size(1)) if mask[b, i]]
        for i in real:
            others = [j for j in real if j != i]
            if len(others) < 2:
                continue
            sc = torch.stack([F.cosine_similarity(s[b, i], s[b, j], dim=0) for j in others]) / temperature
            tc = torch.stack([F.cosine_similarity(t[b, i], t[b, j], dim=0) for j in others]) / temperature
            p = F.softmax(tc, 0)
            rows.append((p * (F.log_softmax(tc, 0) - F.log_softmax(sc, 0))).sum())
    return torch.stack(rows).mean()


def plain_window_triplets(s, t, mask, window):
    """WR triplet by loops: squared error of the angle at i between neighbours j != k in i's window."""
    r, errors = window // 2, []
    for b in range(s.size(0)):
        T = s.size(1)
        for i in range(T):
            if not mask[b, i]:
                continue
            near = [j for j in range(i - r, i + r + 1) if 0 <= j < T and j != i and mask[b, j]]
            for j, k in itertools.permutations(near, 2):
                errors.append((reference_angle(s[b], i, j, k) - reference_angle(t[b], i, j, k)) ** 2)
    return torch.stack(errors).mean()


def plain_layer_relations(s_layers, t_layers, mask):
    """LTR pair and triplet by loops over each real token's states at the L layers."""
    kl_rows, errors = [], []
    B, T, L, _ = s_layers.shape
    for b, i in itertools.product(range(B), range(T)):
        if not mask[b, i]:
            continue
        s, t = s_layers[b, i], t_layers[b, i]  # (L, D)
        for a in range(L):
            others = [c for c in range(L) if c != a]
            sc = torch.stack([F.cosine_similarity(s[a], s[c], dim=0) for c in others])
            tc = torch.stack([F.cosine_similarity(t[a], t[c], dim=0) for c in others])
            kl_rows.append((F.softmax(tc, 0) * (F.log_softmax(tc, 0) - F.log_softmax(sc, 0))).sum())
        for a, j, k in itertools.permutations(range(L), 3):
            errors.append((reference_angle(s, a, j, k) - reference_angle(t, a, j, k)) ** 2)
    return torch.stack(kl_rows).mean(), torch.stack(errors).mean()


def small_pair(seed=3, B=2, T=5, D=4, L=3):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(B, T, D, generator=g, dtype=torch.float64) for _ in range(L)]
    s = [torch.randn(B, T, D + 2, generator=g, dtype=torch.float64) for _ in range(L)]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    return s, t, mask


def test_each_relation_term_equals_its_plain_definition_on_a_hand_sized_batch():
    s, t, mask = small_pair()
    torch.testing.assert_close(word_pair_loss(s[0], t[0], mask).double(), plain_pair_kl(s[0], t[0], mask),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(word_pair_loss(s[0], t[0], mask, temperature=0.5).double(),
                               plain_pair_kl(s[0], t[0], mask, temperature=0.5), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(word_triplet_loss(s[0], t[0], mask, window=3).double(),
                               plain_window_triplets(s[0], t[0], mask, 3), atol=1e-5, rtol=1e-4)
    sl, tl = torch.stack(s, 2), torch.stack(t, 2)
    pair, triplet = plain_layer_relations(sl, tl, mask)
    torch.testing.assert_close(layer_pair_loss(sl, tl, mask).double(), pair, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer_triplet_loss(sl, tl, mask).double(), triplet, atol=1e-5, rtol=1e-4)


def test_the_total_is_the_weighted_sum_of_its_terms():
    s, t, mask = small_pair()
    weights = dict(wr_pair=3.0, wr_triplet=0.5, ltr_pair=7.0, ltr_triplet=0.25)
    total, terms = ckd_loss(s, t, mask, CKDConfig(window=3, **weights))
    assert set(terms) == set(weights)
    torch.testing.assert_close(total.double(), sum(weights[k] * terms[k].double() for k in weights))
    # each term is the mean over the paired states (the default map pairs all three here)
    wr = sum(plain_pair_kl(a, b, mask) for a, b in zip(s, t)) / 3
    torch.testing.assert_close(terms["wr_pair"].double(), wr, atol=1e-5, rtol=1e-4)
    # a zero weight drops its term from the total and from the metrics
    total0, terms0 = ckd_loss(s, t, mask, CKDConfig(window=3, **{**weights, "ltr_pair": 0.0}))
    assert "ltr_pair" not in terms0
    torch.testing.assert_close(total0.double(), total.double() - 7.0 * terms["ltr_pair"].double())


# ----------------------------------------------------------------------------- edges (mutation testing)


def test_every_term_is_the_mean_over_the_paired_states():
    s, t, mask = small_pair()
    _, terms = ckd_loss(s, t, mask, CKDConfig(window=3))
    wr_triplet = sum(plain_window_triplets(a, b, mask, 3) for a, b in zip(s, t)) / 3
    pair, triplet = plain_layer_relations(torch.stack(s, 2), torch.stack(t, 2), mask)
    torch.testing.assert_close(terms["wr_triplet"].double(), wr_triplet, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["ltr_pair"].double(), pair, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["ltr_triplet"].double(), triplet, atol=1e-5, rtol=1e-4)


def test_which_terms_a_layer_map_and_the_weights_give():
    s, t, mask = small_pair()
    one, terms = ckd_loss(s, t, mask, CKDConfig(window=3, layer_map=[[1, 1]]))  # one pair: no layer relations
    assert set(terms) == {"wr_pair", "wr_triplet"}
    torch.testing.assert_close(terms["wr_pair"].double(), plain_pair_kl(s[1], t[1], mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one, terms["wr_pair"] + terms["wr_triplet"])
    _, terms = ckd_loss(s, t, mask, CKDConfig(window=3, layer_map=[[0, 0], [2, 2]]))  # two: pairs, no triplets
    assert set(terms) == {"wr_pair", "wr_triplet", "ltr_pair"}
    _, terms = ckd_loss(s, t, mask, CKDConfig(window=3, ltr_triplet=0.0))
    assert set(terms) == {"wr_pair", "wr_triplet", "ltr_pair"}
    _, terms = ckd_loss(s, t, mask, CKDConfig(window=3, ltr_pair=0.0))
    assert set(terms) == {"wr_pair", "wr_triplet", "ltr_triplet"}


def test_masks_padded_on_either_side():
    s, t, _ = small_pair()
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])  # one token of left padding; of right padding
    torch.testing.assert_close(word_triplet_loss(s[0], t[0], mask, window=3).double(),
                               plain_window_triplets(s[0], t[0], mask, 3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(word_pair_loss(s[0], t[0], mask).double(), plain_pair_kl(s[0], t[0], mask),
                               atol=1e-5, rtol=1e-4)


def test_defaults_and_no_relation_to_match():
    s, t, mask = small_pair()
    # the default window (21) covers these 5 tokens
    torch.testing.assert_close(word_triplet_loss(s[0], t[0], mask).double(),
                               plain_window_triplets(s[0], t[0], mask, 21), atol=1e-5, rtol=1e-4)
    for window in (1, 4):
        with pytest.raises(ConfigError, match="odd"):
            word_triplet_loss(s[0], t[0], mask, window=window)
    # two real tokens per sequence: no token has two others, no triplet exists: every term is exactly 0
    two = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    student = s[0].clone().requires_grad_()
    for term in (word_pair_loss(student, t[0], two), word_triplet_loss(student, t[0], two, window=3)):
        assert term.item() == 0.0
        term.backward()
        assert torch.isfinite(student.grad).all()


def test_config_checks():
    with pytest.raises(ConfigError, match="pair_temperature"):
        CKDConfig(pair_temperature=0.0)
    for bad in ([[1, 2, 3]], []):
        with pytest.raises(ConfigError, match=r"\[student_state, teacher_state\] pairs"):
            CKDConfig(layer_map=bad)
    assert CKDConfig(layer_map=[[0, 0], [3, 6]]).pairs(3, 6) == [(0, 0), (3, 6)]


def test_the_pair_temperature_reaches_both_pair_terms():
    s, t, mask = small_pair()
    _, terms = ckd_loss(s, t, mask, CKDConfig(window=3, pair_temperature=0.25))
    wr = sum(word_pair_loss(a, b, mask, 0.25) for a, b in zip(s, t)) / 3
    torch.testing.assert_close(terms["wr_pair"], wr)
    torch.testing.assert_close(terms["ltr_pair"], layer_pair_loss(torch.stack(s, 2), torch.stack(t, 2), mask, 0.25))
    assert abs(float(terms["wr_pair"]) - float(ckd_loss(s, t, mask, CKDConfig(window=3))[1]["wr_pair"])) > 1e-4
