"""The brute-force baseline of Deep Retrieval: a two-tower (matrix-factorisation) model scored over every item.

The user tower is the same :class:`~reprlab.recsys.encoders.UserEncoder` as DR's (so both read the same
input); the item tower is an embedding and a bias per item: ``score(x, v) = <u(x), w_v> + b_v``, trained
with a softmax over items (the full one, or a sampled one with shared uniform negatives) on the same
pairs as DR. Serving scores all N items (:func:`brute_force_topk`); :mod:`reprlab.recsys.baselines` puts
the same vectors in a FAISS IVF index (the usual production alternative).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.recsys.encoders import UserEncoder
from reprlab.recsys.metrics import exclude_mask


@dataclass
class TwoTowerConfig:
    num_items: int
    user_input: str = "history"
    num_users: int = 0
    feature_dim: int = 0
    dim: int = 64
    hidden: int = 128

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TwoTower(nn.Module):
    def __init__(self, config: TwoTowerConfig):
        super().__init__()
        c = self.config = config
        self.user = UserEncoder(c.user_input, c.dim, c.hidden, c.num_items, c.num_users, c.feature_dim)
        self.item_vectors = nn.Embedding(c.num_items, c.dim)
        nn.init.normal_(self.item_vectors.weight, std=0.1)
        self.item_bias = nn.Parameter(torch.zeros(c.num_items))

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user(batch)  # (B, dim)

    def forward(self, batch: dict[str, torch.Tensor]):
        """Softmax loss of the batch's targets: over all items, or against ``batch["negatives"]`` (S,)."""
        u, targets = self.encode(batch), batch["targets"]
        negatives = batch.get("negatives")
        if negatives is None:
            return F.cross_entropy(u @ self.item_vectors.weight.T + self.item_bias, targets)
        positive = (u * self.item_vectors(targets)).sum(-1) + self.item_bias[targets]  # (B,)
        negative = u @ self.item_vectors(negatives).T + self.item_bias[negatives]  # (B, S)
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
        return F.cross_entropy(torch.cat([positive[:, None], negative], 1), torch.zeros_like(targets))

    def item_matrix(self) -> torch.Tensor:
        """Items as vectors whose inner product with :meth:`query_matrix` is the score: (N, dim + 1)."""
        return torch.cat([self.item_vectors.weight, self.item_bias[:, None]], 1).detach()

    def query_matrix(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.encode(batch).detach()
        return torch.cat([u, torch.ones(len(u), 1, dtype=u.dtype, device=u.device)], 1)  # (B, dim + 1)


@torch.no_grad()
def brute_force_topk(model: TwoTower, batch: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every item for the batch's users, leave out their history, keep the top k: ((B, k), items scored)."""
    scores = model.query_matrix(batch) @ model.item_matrix().T  # (B, N)
    if "seen" in batch:
        seen = batch["seen"]  # (B, L), item + 1
        rows = torch.arange(len(seen))[:, None].expand_as(seen)
        scores[rows[seen > 0], seen[seen > 0] - 1] = float("-inf")
    top = scores.topk(k, dim=1).indices
    return top, torch.full((len(top),), scores.shape[1])


def exclude_history(candidates: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """True where ``candidates`` (B, M) are among the batch's ``seen`` items (False everywhere without them)."""
    if "seen" not in batch:
        return torch.zeros_like(candidates, dtype=torch.bool)
    return exclude_mask(candidates, batch["seen"])
