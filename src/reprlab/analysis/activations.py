"""Layer activations of any ``nn.Module``, gathered with forward hooks, for representation analyses.

:class:`LayerRecorder` hooks the named modules of a model; after each forward pass it holds one
(B, D) float64 tensor per layer (or, with ``gram=True``, only the (B, B) linear Gram matrix X X^T,
which is all that linear CKA and the principal-component share need, so that wide convolutional
layers never have to be kept). How a module's output becomes (B, D):

* a tuple output (our transformer ``Layer`` returns ``(hidden, attention)``) gives its first tensor;
* (B, T, H) token states with a token mask set (:meth:`LayerRecorder.set_mask`) are mean-pooled over
  the real tokens (``pool="mean"``, the default for text) or reduced to the first token (``"cls"``);
  memory slots prepended by a memory-token encoder are dropped (the last T positions are kept);
* any other output is flattened per example (``pool="flatten"``, the default for images, as in
  Nguyen et al. 2021), or averaged over its spatial positions (``pool="mean"``).

:func:`default_layers` picks the layers to record: the model's own ``representation_layers()``
(the ResNets of :mod:`reprlab.nn.resnet`), the embeddings and every transformer layer of our
:class:`~reprlab.encoder.Encoder` (also inside a ``SentenceEncoder`` or a dual encoder), else every
leaf module that has parameters.

>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> with LayerRecorder(model, ["0", "2"]) as rec:
...     _ = model(torch.zeros(5, 4))
...     [tuple(a.shape) for a in rec.outputs()]
[(5, 8), (5, 2)]
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from reprlab.errors import ConfigError

POOLS = ("auto", "flatten", "mean", "cls")


def _encoder_prefix(model: nn.Module) -> str | None:
    """The module-name prefix of the transformer stack inside ``model`` ('' if it is one), or None."""
    for name, module in model.named_modules():
        if hasattr(module, "embeddings") and isinstance(getattr(module, "layers", None), nn.ModuleList):
            return name
    return None


def default_layers(model: nn.Module) -> list[str]:
    """The module names a representation analysis reads by default, in forward order (see the module doc)."""
    if hasattr(model, "representation_layers"):
        return list(model.representation_layers())
    prefix = _encoder_prefix(model)
    if prefix is not None:
        stack = model.get_submodule(prefix) if prefix else model
        dot = f"{prefix}." if prefix else ""
        return [f"{dot}embeddings"] + [f"{dot}layers.{i}" for i in range(len(stack.layers))]
    return [name for name, m in model.named_modules()
            if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def select_layers(model: nn.Module, pattern: str | None = None) -> list[str]:
    """:func:`default_layers`, or every named module whose name matches the regular expression ``pattern``."""
    if not pattern:
        layers = default_layers(model)
    else:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"not a regular expression: {pattern!r} ({exc})", field="layers") from exc
        layers = [name for name, _ in model.named_modules() if name and regex.fullmatch(name)]
    if not layers:
        raise ConfigError(f"no layer of the model matches {pattern!r}", field="layers")
    return layers


class LayerRecorder:
    """Forward hooks on ``layers`` (module names) of ``model``; a context manager that removes them on exit.

    After a forward pass, :meth:`outputs` gives one (B, D) float64 tensor per layer in the order of
    ``layers`` (or, with ``gram=True``, one (B, B) Gram matrix). Activations are detached; call the
    model under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], pool: str = "auto", gram: bool = False):
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}; choose one of: {', '.join(POOLS)}", field="pool")
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ConfigError(f"the model has no module named {', '.join(missing)}", field="layers")
        self.layers = list(layers)
        self.pool, self.gram = pool, gram
        self.mask: torch.Tensor | None = None
        self._store: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """The (B, T) token mask of the next forward pass (1 for real tokens), for token-state pooling."""
        self.mask = mask

    def _reduce(self, out: torch.Tensor) -> torch.Tensor:
        out = out.detach()
        if out.ndim == 3 and self.mask is not None:  # (B, T', H) token states
            mask = self.mask.to(out.device)
            out = out[:, out.shape[1] - mask.shape[1]:]  # (B, T, H): memory slots, if any, come first
            if self.pool == "cls":
                return out[:, 0].to(torch.float64)
            if self.pool != "flatten":
                m = mask.to(torch.float64)[..., None]  # (B, T, 1)
                return (out.to(torch.float64) * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
        if self.pool == "mean" and out.ndim > 2:
            return out.to(torch.float64).flatten(2).mean(-1)  # (B, C) mean over positions
        return out.reshape(out.shape[0], -1).to(torch.float64)  # (B, D)

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = next(o for o in output if isinstance(o, torch.Tensor))
            elif hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            x = self._reduce(output)  # (B, D) float64
            self._store[name] = x @ x.T if self.gram else x  # (B, B) or (B, D)
        return hook

    def outputs(self) -> list[torch.Tensor]:
        """The last forward pass's activations (or Gram matrices), one per layer; cleared by the call."""
        missing = [name for name in self.layers if name not in self._store]
        if missing:
            raise ConfigError(f"layers {', '.join(missing)} did not run in the forward pass", field="layers")
        out = [self._store[name] for name in self.layers]
        self._store = {}
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "LayerRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
