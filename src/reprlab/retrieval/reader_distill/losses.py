"""Losses that train a retriever's scores toward a reader's passage scores over each question's candidates.

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584, section 3.3). For a question q and its candidates p_1..p_m (the current
retriever's top passages), the student's scores are ``S_i = scale * <E(q), E(p_i)>`` (cosine
similarity of the dual encoder's unit vectors, times ``scale``) and the teacher's are ``G_i`` (the
reader's aggregated attention, :mod:`reprlab.qa.teachers`). Three objectives, the paper's three:

* ``kl`` (the paper's best):  KL( softmax(G / T) || softmax(S) )  =  sum_i P_G(i) (log P_G(i) - log P_S(i));
* ``mse``:                    mean_i (S_i - G_i / T)^2;
* ``margin`` (max-margin):    mean over pairs with G_i > G_j of  max(0, margin - (S_i - S_j)).

Inputs::

    student: (B, m) float, the student's scores (gradients flow through them)
    teacher: (B, m) float, the teacher's scores (no gradient)
    mask:    (B, m) bool or None, True = a real candidate (questions with fewer than m are padded)

Relations: sentence-transformers' ``DistillKLDivLoss`` and ``MarginMSELoss`` take precomputed teacher
scores of (query, positive, negatives) triples; here every candidate is unlabelled, the teacher's
distribution over all of them is the target, and nothing is a positive. With a one-hot teacher,
``kl`` is the softmax cross-entropy of DPR (:func:`reprlab.retrieval.losses.contrastive_loss`).

>>> s = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
>>> t = torch.tensor([[0.0, 1.0, 2.0]])
>>> distillation_loss(s, t, kind="kl").item() > 0
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("kl", "mse", "margin")


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """Mean over questions of KL(softmax(teacher / temperature) || softmax(student)) over the real candidates."""
    student, teacher = student.float(), teacher.float() / temperature
    if mask is not None:
        low = torch.finfo(torch.float32).min
        student, teacher = student.masked_fill(~mask, low), teacher.masked_fill(~mask, low)
    log_p_teacher = F.log_softmax(teacher, dim=-1)
    log_p_student = F.log_softmax(student, dim=-1)
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)  # (B, m); 0 where the teacher gives 0
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return terms.sum(-1).mean()


def mse_distillation(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                     temperature: float = 1.0) -> torch.Tensor:
    """Mean squared difference of the scores (teacher divided by ``temperature``) over the real candidates."""
    diff = (student.float() - teacher.float() / temperature) ** 2
    if mask is None:
        return diff.mean()
    return diff[mask].mean()


def margin_distillation(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                        margin: float = 1.0) -> torch.Tensor:
    """Mean over the candidate pairs the teacher orders (G_i > G_j) of max(0, margin - (S_i - S_j))."""
    student, teacher = student.float(), teacher.float()
    ordered = teacher[:, :, None] > teacher[:, None, :]  # (B, m, m): i above j for the teacher
    if mask is not None:
        ordered &= mask[:, :, None] & mask[:, None, :]
    hinge = F.relu(margin - (student[:, :, None] - student[:, None, :]))  # (B, m, m)
    if not bool(ordered.any()):
        return (student * 0.0).sum()
    return hinge[ordered].mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                      kind: str = "kl", temperature: float = 1.0, margin: float = 1.0) -> torch.Tensor:
    """One of :data:`LOSSES` (see the module docstring)."""
    if kind == "kl":
        return kl_distillation(student, teacher, mask, temperature)
    if kind == "mse":
        return mse_distillation(student, teacher, mask, temperature)
    if kind == "margin":
        return margin_distillation(student, teacher, mask, margin)
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {LOSSES}")
