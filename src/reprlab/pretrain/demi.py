"""DEMI: decomposed contrastive estimation of mutual information, as a loss and an estimator.

Sordoni, Dziri, Schulz, Gordon, Bachman and Tachet des Combes, "Decomposed Mutual Information
Estimation for Contrastive Representation Learning", ICML 2021 (ICLR 2021 submission "Decomposing
Mutual Information for Representation Learning"). InfoNCE with K candidates can never report more
than log K nats, so it badly underestimates a large I(x; y). DEMI splits y into a sub-view y' (a
function of y: fewer dimensions, a shorter context, a crop) and uses the chain rule

    I(x; y) = I(x; y') + I(x; y | y'),

estimating each term with a contrastive bound that is again capped at log K, so their sum can
reach 2 log K. The first term is plain InfoNCE with critic f(x, y'); the second is *conditional*
InfoNCE with critic g(x, y), whose negatives must come from p(x | y') (the same y', different x).

Where p(x | y') cannot be sampled, :func:`importance_conditional_infonce` draws negatives from p(x)
and reweights them by the first critic: at its optimum exp f(x, y') is proportional to
p(x | y') / p(x), so the softmax of f over the negatives gives self-normalised importance weights.

Conventions: a score matrix ``scores`` is (B, K), row i is the anchor (y_i or y'_i) and column 0 its
positive candidate x_i; :func:`in_batch` rearranges the (B, B) matrix ``critic(x_j, y_i)`` of a batch
into that form. Every bound is in nats and returned as the batch mean.

>>> f = torch.randn(8, 8); g = torch.randn(8, 8)        # f(x_j, y'_i), g(x_j, y_i) for a batch
>>> loss, parts = demi_loss(f, g)                      # in-batch, importance-weighted second term
>>> sorted(parts)
['mi', 'mi_conditional', 'mi_subview']
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def in_batch(scores: torch.Tensor) -> torch.Tensor:
    """(B, B) scores ``s[i, j] = critic(x_j, y_i)`` -> (B, B) with the positive x_i moved to column 0.

    The other columns keep their order (x_0..x_{B-1} without x_i).
    """
    B = scores.shape[0]
    if scores.shape != (B, B):
        raise ValueError(f"in-batch scores must be square (B, B), got {tuple(scores.shape)}")
    eye = torch.eye(B, dtype=torch.bool, device=scores.device)
    positive = scores[eye].unsqueeze(1)  # (B, 1)
    negatives = scores[~eye].view(B, B - 1)  # (B, B-1)
    return torch.cat([positive, negatives], dim=1)


def infonce(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE lower bound on I(x; y): mean of s_0 - log((1/K) sum_k exp s_k). At most log K.

    ``scores`` (B, K): column 0 the positive, columns 1.. negatives drawn from p(x).
    """
    K = scores.shape[1]
    return (scores[:, 0] - torch.logsumexp(scores, dim=1)).mean() + math.log(K)


def conditional_infonce(scores: torch.Tensor) -> torch.Tensor:
    """Conditional InfoNCE lower bound on I(x; y | y'): the InfoNCE formula with negatives from p(x | y').

    ``scores`` (B, K) = g(x_k, y_i): column 0 the positive x_i; columns 1.. candidates drawn from
    p(x | y'_i), sharing the anchor's sub-view. At most log K.
    """
    return infonce(scores)


def importance_conditional_infonce(
    scores: torch.Tensor, proposal_scores: torch.Tensor, detach_weights: bool = True
) -> torch.Tensor:
    """Conditional InfoNCE with negatives from p(x), importance-weighted towards p(x | y').

    ``scores`` (B, K) = g(x_k, y_i) and ``proposal_scores`` (B, K) = f(x_k, y'_i) for the same
    candidates (column 0 the positive). The K-1 negatives' mean is replaced by their average under
    w = softmax over k >= 1 of f(x_k, y'_i):

        s_0 - log( (1/K) exp s_0 + ((K-1)/K) sum_{k>=1} w_k exp s_k )

    which is the conditional bound with exact negatives when f is the optimal critic and K -> inf,
    and stays at most log K. ``detach_weights`` keeps this term from training f (its own term does).
    """
    K = scores.shape[1]
    log_w = F.log_softmax(proposal_scores[:, 1:], dim=1)  # (B, K-1)
    if detach_weights:
        log_w = log_w.detach()
    neg = torch.logsumexp(log_w + scores[:, 1:], dim=1) + math.log((K - 1) / K)  # (B,)
    pos = scores[:, 0] - math.log(K)
    return (scores[:, 0] - torch.logaddexp(pos, neg)).mean()


def demi_bound(
    sub_scores: torch.Tensor,
    full_scores: torch.Tensor,
    conditional_scores: torch.Tensor | None = None,
    detach_weights: bool = True,
) -> dict[str, torch.Tensor]:
    """The decomposed bound I(x; y') + I(x; y | y') and its two terms (nats, batch means).

    ``sub_scores`` (B, K) = f(x_k, y'_i) with negatives from p(x). ``conditional_scores`` (B, K) =
    g(x_k, y_i) with negatives from p(x | y'_i) when they can be sampled; otherwise the conditional
    term uses ``full_scores`` (B, K) = g(x_k, y_i) on the *same* candidates as ``sub_scores``,
    importance-weighted by f.
    """
    mi_sub = infonce(sub_scores)
    if conditional_scores is not None:
        mi_cond = conditional_infonce(conditional_scores)
    else:
        mi_cond = importance_conditional_infonce(full_scores, sub_scores, detach_weights)
    return {"mi_subview": mi_sub, "mi_conditional": mi_cond, "mi": mi_sub + mi_cond}


def demi_loss(
    sub_scores: torch.Tensor,
    full_scores: torch.Tensor,
    conditional_scores: torch.Tensor | None = None,
    batch: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss ``-(I(x; y') + I(x; y | y'))`` and the terms as floats.

    With ``batch=True`` the inputs are (B, B) in-batch matrices ``critic(x_j, y_i)`` (the other
    examples of the batch are the negatives); with ``batch=False`` they are (B, K) with the positive in
    column 0. ``conditional_scores`` (exact negatives from p(x | y')) is always (B, K).
    """
    if batch:
        sub_scores, full_scores = in_batch(sub_scores), in_batch(full_scores)
    parts = demi_bound(sub_scores, full_scores, conditional_scores)
    return -parts["mi"], {k: float(v.detach()) for k, v in parts.items()}


def infonce_loss(scores: torch.Tensor, batch: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The non-decomposed baseline: ``-I_NCE(x; y)`` on (B, B) in-batch or (B, K) scores."""
    bound = infonce(in_batch(scores) if batch else scores)
    return -bound, {"mi": float(bound.detach())}
