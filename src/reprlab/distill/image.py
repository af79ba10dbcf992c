"""A small convolutional image encoder and image augmentation, for SEED on images.

SEED (``seed.py``) distils any encoder; this file gives it an image one. :class:`ConvEncoder` is a
plain VGG-style CNN (conv-BN-ReLU blocks with max-pooling, global average pooling, a linear
projection), sized by its channel list, so that a wide teacher and a narrow student come from one
class; :func:`augment` gives the random-crop + flip views used by self-supervised training. The
Fashion-MNIST images come from the data layer (:mod:`reprlab.text.images`).

>>> enc = ConvEncoder(channels=(8, 16), dim=32)
>>> enc(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 32])
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) -> vectors (B, dim).

    ``channels[i]`` is the width of block i (conv 3x3 - BatchNorm - ReLU, then 2x2 max-pooling for all
    but the last block); ``features`` returns the pooled backbone output (B, channels[-1]), the
    representation a linear probe reads; ``forward`` adds the projection to ``dim``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), dim: int = 128, in_channels: int = 1):
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(channels):
            blocks += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            prev = width
        self.backbone = nn.Sequential(*blocks)
        self.projection = nn.Linear(prev, dim)
        self.dim = dim
        self.feature_dim = prev

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))  # (B, C) global average pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 3) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect-padded crop) and random horizontal flip."""
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    rows = (dy[:, None] + torch.arange(H)[None]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(W)[None]).to(x.device)  # (B, W)
    batch_idx = torch.arange(B, device=x.device)[:, None, None, None]
    channel_idx = torch.arange(C, device=x.device)[None, :, None, None]
    out = padded[batch_idx, channel_idx, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
    flip = (torch.rand(B, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
