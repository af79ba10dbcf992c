"""Synthesizer attention: attention weights synthesised without (or beside) query-key dot products.

Tay, Bahri, Metzler, Juan, Zhao and Zheng, "Synthesizer: Rethinking Self-Attention for
Transformer Models", ICML 2021 (arXiv:2005.00743; an ICLR 2021 submission). Their code was
released in tensor2tensor / mesh-tensorflow and, for the Long-Range Arena, in
google-research/long-range-arena (``models/synthesizer``).

Instead of ``softmax(Q K^T / sqrt(d))``, each head's (T x T) logits come from

* **dense**: a two-layer MLP of each token alone, ``B_i = W2 relu(W1 x_i + b1) + b2`` with
  ``W2`` mapping to ``max_positions`` columns (one logit per *key position*);
* **random**: a (max_positions x max_positions) matrix ``R`` per head, independent of the input;
  learned (``synthesizer-random``) or frozen at its random initial value
  (``synthesizer-random-fixed``);
* **factorized dense**: ``A_i = F_A(x_i)`` (a values) and ``B_i = F_B(x_i)`` (b values) with
  ``a * b >= max_positions``; the logit of key position ``j = p * b + q`` is ``A_ip * B_iq``;
* **factorized random**: ``R = R1 R2^T`` with ``R1, R2`` of shape (max_positions, k);
* **mixtures**: a weighted sum of several of these (and of the ordinary scaled dot product
  ``dot``) *before* the softmax, with weights ``alpha = softmax(gate)`` learned per head, as in the
  paper's ``Y = softmax(sum_i alpha_i S_i(X)) G(X)``.

The values ``G(X)`` and the output projection are the usual per-head linear maps. Every
position-indexed parameter is sized by ``max_positions`` and sliced to the input length ``T``;
padded keys are masked in every variant (the dense and random logits would otherwise put weight
on padding, since they do not look at the keys' content).

All entries share the registry's constructor and call signature (see ``reprlab.nn.attention``):

>>> attn = ATTENTION["synthesizer-random+dot"](hidden_size=32, num_heads=4, max_positions=16)
>>> out, w = attn(torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool), output_attentions=True)
>>> out.shape, w.shape
(torch.Size([2, 10, 32]), torch.Size([2, 4, 10, 10]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION, key_mask, merge_heads, register_attention, split_heads

COMPONENTS = ("dense", "random", "factorized-dense", "factorized-random", "dot")


class SynthesizerAttention(nn.Module):
    """Multi-head attention whose logits are a (gated) sum of synthesizer components.

    Args:
        hidden_size, num_heads, dropout, max_positions: as every registry entry.
        components: which logit sources to sum (names from ``COMPONENTS``); the registered
            subclasses fix this.
        fixed_random: keep ``R`` (random / factorized random) frozen at its initial value.
        rank: ``k`` of the factorized random variant, and ``a`` (the first factor's width) of the
            factorized dense variant (default 8).
        init_std: standard deviation of the initial ``R`` / ``R1`` / ``R2`` (default 0.02).
    """

    components: tuple[str, ...] = ("dense",)
    fixed_random: bool = False

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.0,
        max_positions: int = 512,
        components: tuple[str, ...] | list[str] | None = None,
        fixed_random: bool | None = None,
        rank: int = 8,
        init_std: float = 0.02,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        components = tuple(components or self.components)
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or not components:
            raise ConfigError(f"unknown synthesizer components {unknown}; choose from: {', '.join(COMPONENTS)}")
        if rank < 1:
            raise ConfigError(f"synthesizer rank must be at least 1, got {rank}")
        self.components = components
        self.fixed_random = self.fixed_random if fixed_random is None else fixed_random
        self.num_heads = num_heads
        self.head_size = hs = hidden_size // num_heads
        self.max_positions = L = max_positions
        self.dropout = dropout
        nh = num_heads

        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        if "dot" in components:
            self.query = nn.Linear(hidden_size, hidden_size)
            self.key = nn.Linear(hidden_size, hidden_size)
        if "dense" in components:
            # W1: per-head hidden features (nh * hs), W2: per head hs -> L key positions
            self.dense_in = nn.Linear(hidden_size, hidden_size)
            self.dense_out = nn.Parameter(torch.empty(nh, hs, L).normal_(std=1.0 / math.sqrt(hs)))
            self.dense_out_bias = nn.Parameter(torch.zeros(nh, L))
        if "factorized-dense" in components:
            self.fd_a = a = min(rank, L)
            self.fd_b = b = math.ceil(L / a)
            self.fd_in = nn.Linear(hidden_size, hidden_size)
            self.fd_out_a = nn.Parameter(torch.empty(nh, hs, a).normal_(std=1.0 / math.sqrt(hs)))
            self.fd_out_b = nn.Parameter(torch.empty(nh, hs, b).normal_(std=1.0 / math.sqrt(hs)))
        random_tensors = {}
        if "random" in components:
            random_tensors["random"] = torch.empty(nh, L, L).normal_(std=init_std)
        if "factorized-random" in components:
            random_tensors["random_left"] = torch.empty(nh, L, rank).normal_(std=init_std ** 0.5)
            random_tensors["random_right"] = torch.empty(nh, L, rank).normal_(std=init_std ** 0.5)
        for name, t in random_tensors.items():
            if self.fixed_random:  # frozen, but saved with the model so that it round-trips
                self.register_buffer(name, t)
            else:
                setattr(self, name, nn.Parameter(t))
        if len(components) > 1:
            self.gate = nn.Parameter(torch.zeros(nh, len(components)))  # alpha = softmax(gate): equal at start

    # -- logit sources, each (B or 1, nh, T, T) ------------------------------------------------

    def _dense(self, x: torch.Tensor, T: int) -> torch.Tensor:
        B = x.size(0)
        h = F.relu(self.dense_in(x)).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        W, b = self.dense_out[..., :T], self.dense_out_bias[:, None, :T]  # (nh, hs, T), (nh, 1, T)
        return torch.matmul(h, W) + b  # (B, nh, T, T)

    def _factorized_dense(self, x: torch.Tensor, T: int) -> torch.Tensor:
        B = x.size(0)
        h = F.relu(self.fd_in(x)).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        A = torch.matmul(h, self.fd_out_a)  # (B, nh, T, a)
        Bf = torch.matmul(h, self.fd_out_b)  # (B, nh, T, b)
        grid = A[..., :, None] * Bf[..., None, :]  # (B, nh, T, a, b): key position p * b + q
        return grid.flatten(-2)[..., :T]  # (B, nh, T, T)

    def _random(self, T: int) -> torch.Tensor:
        return self.random[None, :, :T, :T]  # (1, nh, T, T)

    def _factorized_random(self, T: int) -> torch.Tensor:
        left, right = self.random_left[:, :T], self.random_right[:, :T]  # (nh, T, k)
        return torch.matmul(left, right.transpose(-1, -2))[None]  # (1, nh, T, T)

    def _dot(self, x: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(x), self.num_heads)  # (B, nh, T, hs)
        k = split_heads(self.key(x), self.num_heads)
        return torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)  # (B, nh, T, T)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-softmax (B, nh, T, T) logits, unmasked."""
        T = x.size(1)
        if T > self.max_positions:
            raise ConfigError(
                f"input has {T} positions but this synthesizer was built for max_positions={self.max_positions}"
            )
        parts = []
        for c in self.components:
            if c == "dense":
                parts.append(self._dense(x, T))
            elif c == "factorized-dense":
                parts.append(self._factorized_dense(x, T))
            elif c == "random":
                parts.append(self._random(T))
            elif c == "factorized-random":
                parts.append(self._factorized_random(T))
            else:
                parts.append(self._dot(x))
        if len(parts) == 1:
            return parts[0]
        alpha = self.gate.softmax(-1)  # (nh, n_components)
        return sum(alpha[None, :, i, None, None] * p for i, p in enumerate(parts))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        B, T, _ = x.shape
        scores = self.logits(x).expand(B, -1, -1, -1)  # (B, nh, T, T)
        scores = scores.masked_fill(~key_mask(mask), torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        probs = F.dropout(weights, p=self.dropout) if (self.training and self.dropout > 0) else weights
        v = split_heads(self.value(x), self.num_heads)  # (B, nh, T, hs)
        out = self.out(merge_heads(torch.matmul(probs, v)))  # (B, T, H)
        return out, (weights if output_attentions else None)

    def extra_repr(self) -> str:
        return f"components={self.components}, fixed_random={self.fixed_random}, max_positions={self.max_positions}"


@register_attention("synthesizer-dense")
class DenseSynthesizer(SynthesizerAttention):
    """Dense Synthesizer: logits of token i over key positions from an MLP of x_i alone."""

    components = ("dense",)


@register_attention("synthesizer-random")
class RandomSynthesizer(SynthesizerAttention):
    """Random Synthesizer: one learned (max_positions x max_positions) logit matrix per head."""

    components = ("random",)


@register_attention("synthesizer-random-fixed")
class FixedRandomSynthesizer(SynthesizerAttention):
    """Fixed Random Synthesizer: the random logits are never trained (a buffer, not a parameter)."""

    components = ("random",)
    fixed_random = True


@register_attention("synthesizer-factorized-dense")
class FactorizedDenseSynthesizer(SynthesizerAttention):
    """Factorized Dense Synthesizer: logit(i, p*b+q) = F_A(x_i)_p * F_B(x_i)_q."""

    components = ("factorized-dense",)


@register_attention("synthesizer-factorized-random")
class FactorizedRandomSynthesizer(SynthesizerAttention):
    """Factorized Random Synthesizer: learned low-rank logits R1 R2^T (rank k = ``rank``)."""

    components = ("factorized-random",)


@register_attention("synthesizer-dense+random")
class DenseRandomSynthesizer(SynthesizerAttention):
    """Mixture of the dense and random synthesizers (the paper's D+R), gated per head."""

    components = ("dense", "random")


@register_attention("synthesizer-dense+dot")
class DenseDotSynthesizer(SynthesizerAttention):
    """Mixture of the dense synthesizer and dot-product attention (the paper's D+V), gated per head."""

    components = ("dense", "dot")


@register_attention("synthesizer-random+dot")
class RandomDotSynthesizer(SynthesizerAttention):
    """Mixture of the random synthesizer and dot-product attention (the paper's R+V), gated per head."""

    components = ("random", "dot")


SYNTHESIZERS = tuple(name for name in ATTENTION if name.startswith("synthesizer-"))
