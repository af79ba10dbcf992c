"""A small convolutional image encoder and Fashion-MNIST reading, for SEED on images.

SEED (``seed.py``) distils any encoder; this file gives it an image one. :class:`ConvEncoder` is a
plain VGG-style CNN (conv-BN-ReLU blocks with max-pooling, global average pooling, a linear
projection), sized by its channel list, so that a wide teacher and a narrow student come from one
class. :func:`read_idx` reads the IDX files that Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017,
https://github.com/zalandoresearch/fashion-mnist) ships, gzipped or not, and :func:`augment` gives
the random-crop + flip views used by self-supervised training.

>>> enc = ConvEncoder(channels=(8, 16), dim=32)
>>> enc(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 32])
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import DataFormatError


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


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``*-idx3-ubyte`` images or ``*-idx1-ubyte`` labels, optionally ``.gz``) as uint8 numpy."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("file not found; Fashion-MNIST's training set comes with the Debian package "
                              "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)", path=str(path))
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFormatError("not an unsigned-byte IDX file (bad magic number)", path=str(path))
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DataFormatError(f"IDX header says shape {shape} but the file holds {len(raw) - offset} bytes of data",
                              path=str(path))
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(folder: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1], labels (N,) long) of ``train`` or ``t10k`` from ``folder``."""
    folder = Path(folder)
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise DataFormatError(f"unknown split {split!r}; choose train or test", path=str(folder))

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (folder / name).is_file():
                return folder / name
        return folder / f"{prefix}-{kind}-ubyte.gz"

    images = read_idx(find("images-idx3"))
    labels = read_idx(find("labels-idx1"))
    if len(images) != len(labels):
        raise DataFormatError(f"{len(images)} images but {len(labels)} labels", path=str(folder))
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


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
