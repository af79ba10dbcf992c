"""Plain distillation losses: zero at equality, positive otherwise, masks, projection."""

import pytest
import torch

from reprlab.distill.kd import (KDConfig, KDLoss, embedding_cosine, embedding_mse, in_batch_scores,
                                score_distillation)
from reprlab.errors import ConfigError


def test_losses_zero_when_equal_and_positive_otherwise():
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    s = torch.nn.functional.normalize(t + 0.3 * torch.randn(6, 16), dim=-1)
    assert float(embedding_mse(t, t)) == 0.0 and float(embedding_mse(s, t)) > 0
    assert abs(float(embedding_cosine(t, t))) < 1e-6 and float(embedding_cosine(s, t)) > 0
    ts, mask = in_batch_scores(t)
    ss, _ = in_batch_scores(s)
    assert abs(float(score_distillation(ts, ts, 0.05, mask))) < 1e-6
    assert float(score_distillation(ss, ts, 0.05, mask)) > 1e-4


def test_score_distillation_matches_a_plain_kl_and_ignores_masked_candidates():
    torch.manual_seed(1)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    T = 2.0
    p_t = (t / T).softmax(-1)
    expected = (p_t * (p_t.log() - (s / T).log_softmax(-1))).sum(-1).mean() * T**2
    torch.testing.assert_close(score_distillation(s, t, T), expected)
    # a masked candidate may hold anything
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 5] = False
    s6 = torch.cat([s, torch.full((3, 1), 50.0)], 1)
    t6 = torch.cat([t, torch.full((3, 1), -50.0)], 1)
    torch.testing.assert_close(score_distillation(s6, t6, T, mask), expected)


def test_kd_loss_projects_a_narrower_student_and_trains_it():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(8, 12), dim=-1)
    student = torch.randn(8, 6, requires_grad=True)
    kd = KDLoss(KDConfig(embedding="mse"), student_dim=6, teacher_dim=12)
    assert kd.projection is not None
    loss, metrics = kd(student, teacher)
    assert set(metrics) == {"kd_embedding", "kd_score"}
    first = float(loss)
    opt = torch.optim.Adam([student, *kd.parameters()], lr=0.05)
    for _ in range(200):  # the student (and the projection) learn to reproduce the teacher
        opt.zero_grad()
        loss, metrics = kd(student, teacher)
        loss.backward()
        opt.step()
    assert float(loss) < 0.1 * first, (first, float(loss))
    assert float(metrics["kd_score"]) < 0.1


def test_bad_config():
    with pytest.raises(ConfigError, match="embedding"):
        KDConfig(embedding="l3")
    with pytest.raises(ConfigError, match="scale"):
        KDConfig(scale=0)
    with pytest.raises(ConfigError, match="shape"):
        score_distillation(torch.zeros(2, 3), torch.zeros(2, 4))


def test_the_kd_total_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(1)
    teacher = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    student = torch.randn(6, 8)
    loss, terms = KDLoss(KDConfig(embedding="cosine", embedding_weight=3.0, score_weight=0.25), 8, 8)(student, teacher)
    torch.testing.assert_close(loss, 3.0 * terms["kd_embedding"] + 0.25 * terms["kd_score"])
    only, terms = KDLoss(KDConfig(embedding_weight=0.0, score_weight=2.0), 8, 8)(student, teacher)
    assert set(terms) == {"kd_score"}
    torch.testing.assert_close(only, 2.0 * terms["kd_score"])


# ----------------------------------------------------------------------------- exact values (mutation testing)


def plain_kl(s, t, temperature, mask=None):
    """KL(softmax(t/T) || softmax(s/T)) over each row's real candidates, mean over rows with >= 2, times T^2."""
    rows = []
    for i in range(s.size(0)):
        keep = [j for j in range(s.size(1)) if mask is None or bool(mask[i, j])]
        if len(keep) < 2:
            continue
        si, ti = s[i, keep] / temperature, t[i, keep] / temperature
        p = ti.softmax(0)
        rows.append((p * (p.log() - si.log_softmax(0))).sum())
    return torch.stack(rows).mean() * temperature**2


def test_embedding_losses_equal_their_row_by_row_definitions():
    torch.manual_seed(2)
    s, t = torch.randn(4, 6), torch.randn(4, 6)  # not square: a loss over the wrong axis differs
    cos = [float(s[i] @ t[i] / (s[i].norm() * t[i].norm())) for i in range(4)]
    assert float(embedding_cosine(s, t)) == pytest.approx(sum(1 - c for c in cos) / 4, abs=1e-6)
    assert float(embedding_mse(s, t)) == pytest.approx(float(((s - t) ** 2).sum()) / 24, abs=1e-6)


def test_score_distillation_default_temperature_odd_temperatures_and_short_rows():
    torch.manual_seed(3)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(score_distillation(s, t), plain_kl(s, t, 1.0))  # the default T is 1
    torch.testing.assert_close(score_distillation(s, t, 3.0), plain_kl(s, t, 3.0))  # T^2 = 9, not 2T
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    # row 1 has exactly two candidates (counted), row 2 one (skipped: it carries no distribution)
    torch.testing.assert_close(score_distillation(s, t, 3.0, mask), plain_kl(s, t, 3.0, mask))
    torch.testing.assert_close(score_distillation(s, t, 0.5, mask), plain_kl(s, t, 0.5, mask))
    # no row with two candidates: exactly zero (and finite)
    lonely = torch.zeros(4, 5, dtype=torch.bool)
    lonely[:, 0] = True
    assert float(score_distillation(s, t, 3.0, lonely)) == 0.0


@pytest.mark.parametrize("embedding", ["mse", "cosine", "none"])
def test_kd_loss_equals_its_definition(embedding):
    """Total = w_e * embedding loss (no projection at equal widths) + w_s * KL over the other texts of the
    batch on scale x the dot products at temperature 1."""
    torch.manual_seed(4)
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    cfg = KDConfig(embedding=embedding, embedding_weight=2.0, score_weight=0.5, scale=3.0)
    kd = KDLoss(cfg, 7, 7)
    assert kd.projection is None
    loss, terms = kd(student, teacher)
    emb = {"mse": embedding_mse, "cosine": embedding_cosine}.get(embedding)
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    score = plain_kl(3.0 * student @ student.T, 3.0 * teacher @ teacher.T, 1.0, off_diagonal)
    expected = 0.5 * score + (2.0 * emb(student, teacher) if emb else 0.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["kd_score"], score)
    assert set(terms) == ({"kd_score"} if embedding == "none" else {"kd_embedding", "kd_score"})


def test_projection_only_when_the_embedding_term_needs_one():
    assert KDLoss(KDConfig(embedding="none"), 6, 12).projection is None
    assert KDLoss(KDConfig(embedding_weight=0.0), 6, 12).projection is None
    projection = KDLoss(KDConfig(), 6, 12).projection
    assert projection.weight.shape == (12, 6) and projection.bias is None


def test_config_accepts_a_small_scale_and_names_the_choices():
    assert KDConfig(scale=0.5).scale == 0.5
    with pytest.raises(ConfigError, match="cosine, mse, none"):
        KDConfig(embedding="l3")
