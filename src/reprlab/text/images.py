"""Image data: Fashion-MNIST's IDX files (gzipped or not), the one reader every image method uses.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, https://github.com/zalandoresearch/fashion-mnist) ships
as IDX files: a magic number (two zero bytes, the type code 0x08 for unsigned bytes, the number of
dimensions), one big-endian 32-bit size per dimension, then the data. :func:`read_idx` reads one
such file; :func:`load_fashion_mnist` reads a split's images and labels from a folder. SEED on images
(``reprlab.distill``), the CKA analysis (``reprlab.analysis.cka``) and the curricula benchmark read
their images here.

>>> x, y = load_fashion_mnist("fashion_mnist_test", "test")      # doctest: +SKIP
>>> x.shape, y.shape                                               # doctest: +SKIP
(torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from reprlab.errors import DataFormatError

PREFIXES = {"train": "train", "test": "t10k", "t10k": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``*-idx3-ubyte`` images or ``*-idx1-ubyte`` labels, optionally ``.gz``) as uint8 numpy."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("file not found; Fashion-MNIST comes with the Debian package "
                              "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)", path=str(path))
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # not gzip, or cut short
            raise DataFormatError(f"not a complete gzip file ({exc})", path=str(path)) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFormatError("not an unsigned-byte IDX file (bad magic number)", path=str(path))
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DataFormatError(f"IDX header says shape {shape} but the file holds {len(raw) - offset} bytes of data",
                              path=str(path))
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find(folder: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_split(folder: str | Path) -> str | None:
    """The split whose image file ``folder`` holds (``test`` first, then ``train``), or None if it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next((split for split in ("test", "train") if _find(folder, PREFIXES[split], "images-idx3")), None)


def load_fashion_mnist(folder: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1], labels (N,) long) of ``train`` or ``test`` (``t10k``) from
    ``folder``; ``split="auto"`` takes the one the folder holds (the test split when it holds both)."""
    folder = Path(folder)
    if split == "auto":
        split = idx_split(folder) or "train"
    prefix = PREFIXES.get(split)
    if prefix is None:
        raise DataFormatError(f"unknown split {split!r}; choose train, test or auto", path=str(folder))
    images = read_idx(_find(folder, prefix, "images-idx3") or folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(_find(folder, prefix, "labels-idx1") or folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise DataFormatError(f"{len(images)} images but {len(labels)} labels", path=str(folder))
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))
