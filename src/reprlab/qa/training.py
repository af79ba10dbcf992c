"""What the reader recipes share on the training loop: batches of windows, the loss, the optimizer.

The extractive reader (:mod:`reprlab.qa.reader`; Devlin et al., "BERT", NAACL 2019, section 4.2) is
fine-tuned by two recipes: ``train reader`` (:mod:`reprlab.qa.recipe`, the plain reader or Block
Skim, Guan et al., AAAI 2022) and ``train long-reader`` (:mod:`reprlab.qa.long_reader`, on a
Cluster-Former encoder, Wang et al., 2021). Both run the shared loop (:mod:`reprlab.train.loop`)
on the windows of :meth:`Reader.training_features <reprlab.qa.reader.Reader.training_features>`:

* :func:`collate_features` pads a batch of windows to its longest;
* :func:`reader_loss` is whatever the model's ``forward`` returns with span positions (the span
  loss, plus Block Skim's skim loss);
* :func:`reader_optimizer` is AdamW with per-parameter learning-rate scales (Block Skim's fresh
  predictors learn faster) and no decay on biases and norms;
* :func:`length_grouped_order` arranges windows into batches of similar length.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from reprlab.errors import ConfigError
from reprlab.qa.reader import Reader


def collate_features(items: list[dict[str, Any]], rng=None, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad training windows to the longest of the batch."""
    B, T = len(items), max(len(it["input_ids"]) for it in items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    ctx = torch.zeros(B, T, dtype=torch.bool)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = it["input_ids"]
        types[i, :n] = it["token_type_ids"]
        mask[i, :n] = 1
        ctx[i, :n] = it["context_mask"]
    return {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": types, "context_mask": ctx,
        "start_positions": torch.tensor([it["start_positions"] for it in items]),
        "end_positions": torch.tensor([it["end_positions"] for it in items]),
    }


def reader_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """The loss ``model.forward`` returns with span positions, and its metrics (for the loop's log)."""
    out = model(**batch)
    return out.loss, out.metrics or {}


def length_grouped_order(lengths: Sequence[int], batch_size: int, steps: int, seed: int) -> list[int]:
    """Indices for ``steps`` batches of ``batch_size`` whose members have similar lengths.

    Each pass over the data draws a random permutation, sorts it by length inside mega-batches of
    32 batches, cuts batches (dropping the remainder) and shuffles the batches' order, so that
    padding is small while the order still changes from pass to pass.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    per_pass = n // batch_size
    if per_pass < 1:
        raise ConfigError(f"{n} training windows are fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    mega = 32 * batch_size
    while len(order) < steps * batch_size:
        perm = rng.permutation(n)
        chunks = np.split(perm, range(mega, n, mega))
        grouped = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
        batches = grouped[: per_pass * batch_size].reshape(per_pass, batch_size)
        order.extend(batches[rng.permutation(per_pass)].reshape(-1).tolist())
    return order[: steps * batch_size]


def reader_optimizer(model: Reader, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with one group per (learning-rate scale, decay or not): no decay on biases and norms, and
    ``model.lr_scale(name)`` x ``lr`` per parameter (e.g. Block Skim's fresh predictors learn faster)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and "norm" not in name.lower()
            groups.setdefault((model.lr_scale(name), decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
         for (scale, decay), ps in sorted(groups.items())], lr=lr)
