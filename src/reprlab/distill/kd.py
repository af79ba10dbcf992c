"""Plain knowledge distillation for encoders: embedding regression and score (candidate) distillation.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS DL workshop, 2015):
the student matches the teacher's softened output distribution. For a text encoder the outputs are
(1) its embeddings, matched by mean squared error or cosine distance (as in Reimers & Gurevych,
"Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020), and
(2) its scores over candidates, matched by the KL divergence between the teacher's and the student's
softmax over the candidates at temperature T, times T^2 (the margin/KL distillation of retrievers,
e.g. Hofstätter et al. 2020; Lin et al. 2021). These are the baselines CKD (``ckd.py``) and SEED
(``seed.py``) are compared with; every loss is 0 when the student equals the teacher.

Inputs::

    student, teacher:              (B, D) embeddings (D may differ only through ``KDLoss.projection``)
    student_scores, teacher_scores: (B, C) scores of B queries over C candidates each
    mask:                          (B, C) bool, True = a real candidate (False ones are ignored)

``in_batch_scores(x)`` turns a batch of text embeddings into (B, B) candidate scores: every other text
of the batch is a candidate, the diagonal is masked, so unlabelled text is enough.

>>> s, t = torch.randn(4, 8), torch.randn(4, 8)
>>> float(embedding_mse(t, t)), float(score_distillation(t @ t.T, t @ t.T))
(0.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError

EMBEDDING_LOSSES = ("cosine", "mse", "none")


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between embeddings, averaged over batch and dimensions."""
    return F.mse_loss(student.float(), teacher.float())


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance 1 - cos(student, teacher)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def score_distillation(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per row, averaged over rows, times T^2.

    Rows whose mask has fewer than two candidates carry no distribution and are skipped.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ConfigError(f"student scores {tuple(student_scores.shape)} and teacher scores "
                          f"{tuple(teacher_scores.shape)} must have the same shape (queries, candidates)")
    s = student_scores.float() / temperature
    t = teacher_scores.float() / temperature
    if mask is not None:
        lowest = torch.finfo(s.dtype).min
        s, t = s.masked_fill(~mask, lowest), t.masked_fill(~mask, lowest)
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    terms = log_p_t.exp() * (log_p_t - log_p_s)  # (B, C)
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
        rows = mask.sum(-1) >= 2
        if not bool(rows.any()):
            return terms.sum() * 0.0
        return terms.sum(-1)[rows].mean() * temperature**2
    return terms.sum(-1).mean() * temperature**2


def in_batch_scores(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) dot-product scores of each text against the others, and the mask without the diagonal."""
    scores = x.float() @ x.float().T  # (B, B)
    mask = ~torch.eye(x.size(0), dtype=torch.bool, device=x.device)
    return scores, mask


@dataclass
class KDConfig:
    """Weights of the plain distillation terms.

    ``embedding``: "cosine" (default; for L2-normalised encoders it is MSE up to a factor), "mse" or
    "none". ``score_weight``: the in-batch score KL, computed on ``scale`` x the dot products
    (20 for cosine scores, the scale of contrastive training) at temperature 1, so its magnitude is
    that of a contrastive loss.
    """

    embedding: str = "cosine"
    embedding_weight: float = 1.0
    score_weight: float = 1.0
    scale: float = 20.0

    def __post_init__(self):
        if self.embedding not in EMBEDDING_LOSSES:
            raise ConfigError(f"unknown embedding loss {self.embedding!r}; "
                              f"choose one of: {', '.join(EMBEDDING_LOSSES)}")
        if self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")


class KDLoss(nn.Module):
    """Embedding + in-batch score distillation of a batch of texts.

    When the student's width differs from the teacher's, the embedding term goes through a learned
    linear ``projection`` (student -> teacher width), as in TinyBERT; the score term needs none.
    ``forward(student_vectors, teacher_vectors) -> (loss, {"kd_embedding": ..., "kd_score": ...})``.
    """

    def __init__(self, config: KDConfig, student_dim: int, teacher_dim: int):
        super().__init__()
        self.config = config
        self.projection = None
        if student_dim != teacher_dim and config.embedding != "none" and config.embedding_weight:
            self.projection = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        teacher = teacher.detach()
        total = student.sum() * 0.0
        metrics: dict[str, torch.Tensor] = {}
        if c.embedding != "none" and c.embedding_weight:
            projected = student if self.projection is None else self.projection(student)
            fn = embedding_mse if c.embedding == "mse" else embedding_cosine
            term = fn(projected, teacher)
            total = total + c.embedding_weight * term
            metrics["kd_embedding"] = term.detach()
        if c.score_weight:
            s_scores, mask = in_batch_scores(student)
            t_scores, _ = in_batch_scores(teacher)
            term = score_distillation(c.scale * s_scores, c.scale * t_scores, 1.0, mask)
            total = total + c.score_weight * term
            metrics["kd_score"] = term.detach()
        return total, metrics
