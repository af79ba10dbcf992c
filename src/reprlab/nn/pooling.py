"""Pooling of token states into one vector per text, and the pooling registry.

``mean`` averages the non-padding tokens (Sentence-BERT, Reimers & Gurevych, 2019; the pooling of
all-MiniLM-L6-v2), ``cls`` takes the first token (BERT, DPR), ``max`` takes the per-dimension
maximum. Pooling modules share one call signature so that learned poolings (HIRE) plug in::

    vectors = pool(last_hidden_state, mask, hidden_states)   # (B, T, H), (B, T) -> (B, H)
"""

from __future__ import annotations

import torch
from torch import nn

from reprlab.errors import ConfigError


class Pooling(nn.Module):
    """Parameter-free pooling: ``mean``, ``cls`` or ``max``."""

    modes = ("mean", "cls", "max")

    def __init__(self, mode: str = "mean"):
        super().__init__()
        if mode not in self.modes:
            raise ConfigError(f"unknown pooling {mode!r}; choose one of: {', '.join(self.modes)}")
        self.mode = mode

    def forward(self, last_hidden_state: torch.Tensor, mask: torch.Tensor, hidden_states=None) -> torch.Tensor:
        if self.mode == "cls":
            return last_hidden_state[:, 0]
        m = mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (B, T, 1)
        if self.mode == "mean":
            return (last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return last_hidden_state.masked_fill(m == 0, torch.finfo(last_hidden_state.dtype).min).max(1).values

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


POOLING: dict[str, type[nn.Module]] = {mode: Pooling for mode in Pooling.modes}


def build_pooling(mode: str, hidden_size: int, num_layers: int) -> nn.Module:
    """A pooling module by name; learned poolings receive the encoder's sizes."""
    if mode not in POOLING:
        raise ConfigError(f"unknown pooling {mode!r}; choose one of: {', '.join(sorted(POOLING))}")
    cls = POOLING[mode]
    if cls is Pooling:
        return Pooling(mode)
    return cls(hidden_size=hidden_size, num_layers=num_layers)
