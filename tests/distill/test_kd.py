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
