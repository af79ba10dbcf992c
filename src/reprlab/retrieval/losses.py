"""Contrastive losses for dual encoders, with in-batch candidates gathered across ranks.

``contrastive_loss`` is the softmax NLL of DPR (Karpukhin et al., EMNLP 2020) and of
sentence-transformers' MultipleNegativesRankingLoss (Henderson et al., 2017): each query is
scored against every passage of the (global) batch, the passages of the other queries serving as
negatives, plus any hard negatives; the loss is cross-entropy with the query's own positive as
the target. ``pairwise_loss`` is ANCE's pairwise form (Xiong et al., ICLR 2021): the NLL of the
positive against one negative at a time, softplus(s(q, d-) - s(q, d+)).

Under DDP, ``gather=True`` collects every rank's passages with
``torch.distributed.nn.functional.all_gather``, which passes gradients back to the rank that
produced them, so W processes with batch B/W train exactly like one process with batch B (the
request users make most of DPR implementations).

Inputs::

    q:         (B, H) query vectors of this rank
    positives: (B, H) the positive of each query
    negatives: (B * n, H) hard negatives, query-major (n per query), or None
    scale:     similarity multiplier (1 / temperature); 20 for cosine similarity as in MNRL

>>> q, p = torch.randn(4, 8), torch.randn(4, 8)
>>> contrastive_loss(q, p).shape
torch.Size([])
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; gradients flow back to each rank's slice."""
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Concatenate an integer tensor from all ranks along dim 0 (no gradient)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def contrastive_loss(
    q: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 20.0,
    gather: bool = True,
    candidate_ids: torch.Tensor | None = None,
    query_positive_ids: torch.Tensor | None = None,
    score=None,
) -> torch.Tensor:
    """Softmax NLL of each query's positive among all (gathered) positives and hard negatives.

    Logits are ``scale * q @ docs.T``, or ``score(q, docs)`` (already scaled, (B, N)) when given,
    e.g. the angular similarity of semantic hashing.

    False negatives: with ``candidate_ids`` (the document id of each local positive and negative,
    (B + B*n,) int64, in the order positives then negatives) and ``query_positive_ids`` ((B, P)
    int64, every relevant document of each query, -1 padded), a candidate that is relevant to a
    query, other than its target, is removed from that query's softmax (e.g. two queries of the
    batch sharing a positive, or a negative that is in fact relevant).
    """
    B = q.size(0)
    distributed = gather and _distributed()
    rank = dist.get_rank() if distributed else 0
    pos = gather_with_grad(positives) if distributed else positives  # (W*B, H)
    candidates = [pos]
    has_negatives = negatives is not None and negatives.numel() > 0
    if has_negatives:
        candidates.append(gather_with_grad(negatives) if distributed else negatives)  # (W*B*n, H)
    docs = torch.cat(candidates, dim=0)
    scores = scale * q @ docs.T if score is None else score(q, docs)  # (B, W*B + W*B*n)
    labels = torch.arange(B, device=q.device) + rank * B
    if candidate_ids is not None and query_positive_ids is not None:
        ids_pos, ids_neg = candidate_ids[:B], candidate_ids[B:]
        all_ids = [gather_ids(ids_pos) if distributed else ids_pos]
        if has_negatives:
            all_ids.append(gather_ids(ids_neg) if distributed else ids_neg)
        all_ids = torch.cat(all_ids)  # (N,)
        relevant = (all_ids[None, :, None] == query_positive_ids[:, None, :]).any(-1)  # (B, N)
        relevant[torch.arange(B), labels] = False
        scores = scores.masked_fill(relevant, torch.finfo(scores.dtype).min)
    return F.cross_entropy(scores.float(), labels)


def pairwise_loss(
    q: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """ANCE's pairwise NLL: mean over (query, negative) of softplus(s(q, d-) - s(q, d+))."""
    B = q.size(0)
    n = negatives.size(0) // B
    pos = scale * (q * positives).sum(-1, keepdim=True)  # (B, 1)
    neg = scale * torch.einsum("bh,bnh->bn", q, negatives.view(B, n, -1))  # (B, n)
    return F.softplus(neg - pos).float().mean()
