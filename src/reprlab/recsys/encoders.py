"""The user side shared by the recommendation models: a user's representation from their input.

Three inputs, one interface (``encoder(batch) -> (B, dim)``):

* ``history``: the mean of the embeddings of the user's latest positives (``batch["history"]``: (B, L)
  item index + 1, 0 = padding), then a two-layer MLP; a user with no history gets the MLP of zeros;
* ``user``: a learned embedding per user id (``batch["users"]``: (B,));
* ``features``: a dense feature vector per user (``batch["features"]``: (B, F)) through the MLP (the
  synthetic catalogues of the benchmark, where users are given as vectors).
"""

from __future__ import annotations

import torch
from torch import nn

USER_INPUTS = ("history", "user", "features")


class UserEncoder(nn.Module):
    def __init__(self, kind: str, dim: int, hidden: int, num_items: int = 0, num_users: int = 0,
                 feature_dim: int = 0):
        super().__init__()
        if kind not in USER_INPUTS:
            raise ValueError(f"user input must be one of {', '.join(USER_INPUTS)}, got {kind!r}")
        self.kind = kind
        if kind == "history":
            self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
            nn.init.normal_(self.items.weight, std=0.1)
            with torch.no_grad():
                self.items.weight[0].zero_()
            width = dim
        elif kind == "user":
            self.users = nn.Embedding(num_users, dim)
            nn.init.normal_(self.users.weight, std=0.1)
            width = dim
        else:
            width = feature_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "history":
            history = batch["history"]  # (B, L)
            mask = (history > 0).unsqueeze(-1).float()  # (B, L, 1)
            pooled = (self.items(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, dim)
            return self.mlp(pooled)
        if self.kind == "user":
            return self.mlp(self.users(batch["users"]))
        return self.mlp(batch["features"])
