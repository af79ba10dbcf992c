"""Self-attention and the attention registry.

Every attention variant in reprlab is a module with the same constructor and call signature, kept
in one string-keyed registry, ``ATTENTION``. ``EncoderConfig.attention`` (and the per-layer
``layer_attention``) names an entry; the CLI lists the keys as its choices. The plain softmax
attention of Vaswani et al. (2017), "Attention Is All You Need", is the reference every other
entry is tested against.

Constructor::

    cls(hidden_size: int, num_heads: int, dropout: float = 0.0, max_positions: int = 512, **kwargs)

Call::

    out, weights = attn(x, mask, output_attentions=False)
    # x: (B, T, H) hidden states; mask: (B, T) bool, True = a real token that may be attended to
    # out: (B, T, H) after the output projection; weights: (B, nh, T, T) or None

Register a new variant with ``@register_attention("name")``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError


class AttentionRegistry(dict):
    """A dict of attention classes whose missing keys raise a ``ConfigError`` listing the choices."""

    def __missing__(self, name):
        raise ConfigError(f"unknown attention {name!r}; choose one of: {', '.join(sorted(self))}")


ATTENTION: AttentionRegistry = AttentionRegistry()


def register_attention(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in ATTENTION:
            raise ConfigError(f"attention {name!r} is registered twice")
        ATTENTION[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, T, H = x.shape
    return x.view(B, T, num_heads, H // num_heads).transpose(1, 2)  # (B, nh, T, hs)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, H)


def key_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) keep-mask -> (B, 1, 1, T), broadcastable over heads and queries."""
    return mask[:, None, None, :]


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) v, written out; returns (context, weights).

    q: (B, nh, Tq, hs), k/v: (B, nh, Tk, hs), mask: bool broadcastable to (B, nh, Tq, Tk).
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, nh, Tq, Tk); scaling q is T/hs times cheaper
    if mask is not None:
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)  # in place: matmul's backward does not need it
    weights = scores.softmax(dim=-1)
    probs = F.dropout(weights, p=dropout) if dropout > 0 else weights
    return torch.matmul(probs, v), weights


@register_attention("softmax")
class SoftmaxAttention(nn.Module):
    """Multi-head scaled dot-product attention: the reference entry.

    Two paths compute the same thing: an eager one that returns the weights (used when
    ``output_attentions=True``) and ``torch.nn.functional.scaled_dot_product_attention``, which
    picks a fused kernel and is used otherwise. Weight names follow BERT (query, key, value,
    out = ``attention.output.dense``) so that pretrained checkpoints load by a fixed renaming.
    ``head_size`` (default hidden_size // num_heads) lets a head-pruned layer keep fewer heads of
    the original size: q/k/v then map hidden_size -> num_heads * head_size and ``out`` maps back.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, max_positions: int = 512,
                 head_size: int | None = None, **kwargs):
        super().__init__()
        if kwargs:
            raise ConfigError(f"softmax attention takes only the option head_size, got {sorted(kwargs)}")
        if head_size is None:  # the usual layout: the heads split hidden_size
            if hidden_size % num_heads:
                raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
            head_size = hidden_size // num_heads
        inner = num_heads * head_size  # < hidden_size after head pruning (reprlab.distill.approx)
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(hidden_size, inner)
        self.value = nn.Linear(hidden_size, inner)
        self.out = nn.Linear(inner, hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        q = split_heads(self.query(x), self.num_heads)  # (B, nh, T, hs)
        k = split_heads(self.key(x), self.num_heads)
        v = split_heads(self.value(x), self.num_heads)
        p = self.dropout if self.training else 0.0
        if output_attentions:
            ctx, weights = eager_attention(q, k, v, key_mask(mask), p)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(mask), dropout_p=p)
            weights = None
        return self.out(merge_heads(ctx)), weights
