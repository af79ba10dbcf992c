"""The Quad objective: a language-modelling loss whose optimum is the next-word distribution itself.

Saunshi, Malladi, Arora, "A Mathematical Exploration of Why Language Models Help Solve Downstream
Tasks", ICLR 2021 (arXiv 2010.03648), section 5.1. No official code was released.

For a context s with feature f(s) in R^d and output word embeddings Phi in R^{d x V} (column
phi_w per word), the paper replaces the softmax cross-entropy by

    l_quad(f(s), w) = -f(s)^T phi_w + 1/2 ||Phi^T f(s)||^2

(w the observed next word). With logits z = Phi^T f(s) (+ a bias b, which we keep because our MLM
heads have one: it is a constant feature of value 1 appended to f), the expected loss under the true
next-word distribution p* is E_w[-z_w] + 1/2 ||z||^2 = 1/2 ||z - p*||^2 - 1/2 ||p*||^2, so an
unrestricted model is optimal exactly when z = p*(.|s): the logits *are* the distribution. The
paper's guarantee for Quad is on f(s) itself (a linear probe on f, not on a conditional mean),
because f enters the optimum linearly.

Two paths compute the same number (tested against each other and against autograd of the formula):

* :func:`quad_loss_from_logits`: the plain formula on logits (B, V); what the MLM recipe uses, since
  it needs the logits anyway for its accuracy metric;
* :func:`quad_loss`: the Gram form ||Phi^T f||^2 = f^T (Phi Phi^T) f, which never builds the (B, V)
  logits: O(V d^2 + B d^2) instead of O(B V d); cheaper when the batch has more rows than d.

:func:`quad_feature_grad` is the closed-form gradient in f, (Phi z - phi_w) / B.

>>> f, Phi = torch.randn(4, 8), torch.randn(8, 50)
>>> w = torch.tensor([1, 2, 3, 4])
>>> torch.allclose(quad_loss(f, Phi.T, w), quad_loss_from_logits(f @ Phi, w), atol=1e-4)
True
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "quad")  # the MLM recipe's --loss choices: softmax cross-entropy, or Quad


def quad_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -z_w + 1/2 ||z||^2 for logits ``z`` (B, V) and target words ``w`` (B,)."""
    z = logits.float()
    observed = z.gather(1, targets[:, None]).squeeze(1)  # (B,)
    return (-observed + 0.5 * z.pow(2).sum(-1)).mean()


def quad_loss(features: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Quad in the Gram form, without the (B, V) logits.

    ``features`` f (B, d), ``embeddings`` the output word embeddings as rows (V, d) (i.e. Phi^T, the
    layout of ``nn.Embedding.weight`` and of our MLM head), ``targets`` (B,), optional ``bias`` (V,).
    Equal to ``quad_loss_from_logits(features @ embeddings.T + bias, targets)``.
    """
    f = features.float()
    E = embeddings.float()
    gram = E.T @ E  # (d, d) = Phi Phi^T
    observed = (f * E[targets]).sum(-1)  # (B,) f^T phi_w
    square = (f @ gram * f).sum(-1)  # (B,) ||Phi^T f||^2
    if bias is not None:
        b = bias.float()
        observed = observed + b[targets]
        square = square + 2.0 * (f @ (E.T @ b)) + b.pow(2).sum()  # ||Phi^T f + b||^2
    return (-observed + 0.5 * square).mean()


def quad_feature_grad(features: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """d quad_loss / d features in closed form: row i is (Phi z_i - phi_{w_i}) / B, z_i = Phi^T f_i + b."""
    f = features.float()
    E = embeddings.float()
    z = f @ E.T  # (B, V)
    if bias is not None:
        z = z + bias.float()
    return (z @ E - E[targets]) / f.shape[0]


def quad_excess(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """E_w~p[l_quad] minus its unrestricted minimum: 1/2 ||z - p||^2 per row (B,), for true next-word
    distributions ``probs`` (B, V). The Quad analogue of the KL excess of cross-entropy."""
    return 0.5 * (logits.float() - probs.float()).pow(2).sum(-1)


def quad_distribution(logits: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """A distribution read from Quad logits (whose optimum is p* itself): clamp at ``floor``, renormalise.

    This is how a Quad model gets a held-out cross-entropy comparable with a softmax model's.
    """
    z = logits.float().clamp_min(floor)
    return z / z.sum(-1, keepdim=True)
