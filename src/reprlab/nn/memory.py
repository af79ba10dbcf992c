"""Memory Transformer: trainable memory slots beside the token sequence.

Burtsev, Kuratov, Peganov and Sapunov, "Memory Transformer" (arXiv:2006.11527, 2020; an ICLR 2021
submission). Their experiments were built on tensor2tensor / DeepPavlov; there is no packaged code.

``m`` learned memory vectors are prepended to the embedded tokens, ``[mem; seq]``, and give the
encoder room for global, sequence-level information. Three variants, ``EncoderConfig.memory_mode``:

* ``tokens`` (MemTransformer): every layer runs on ``[mem; seq]`` with full self-attention;
  memory and tokens are not told apart.
* ``ctrl`` (MemCtrl): the sequence is updated by the layer as in ``tokens``, but the memory is
  updated by a dedicated memory-control layer (its own attention + feed-forward weights) that
  reads ``[mem; seq]``.
* ``bottleneck`` (MemBottleneck): global information passes only through memory. Each layer
  first updates the memory (dedicated layer, reading ``[mem; seq]``), then updates every token
  with attention over the *new memory only* (no token-to-token attention).

Memory slots carry no position embedding (each slot is its own learned vector); the text keeps
positions 0..T-1, so a pretrained encoder keeps its position semantics. The encoder strips the
memory from ``last_hidden_state`` / ``hidden_states`` (pooling sees text tokens only) and returns
the final memory as ``EncoderOutput.memory_states``.

In ``bottleneck`` mode the token update runs the registry attention over ``[mem; seq]`` with the
token keys masked out, so any attention variant works; its compute is that of full attention
(the O(T * m) cost of a dedicated implementation is not realised here).

>>> mem = MemoryTokens(num_tokens=4, mode="ctrl", hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2)
>>> x, mask = mem.prepend(torch.zeros(2, 5, 32), torch.ones(2, 5, dtype=torch.bool))
>>> x.shape, mask.shape
(torch.Size([2, 9, 32]), torch.Size([2, 9]))
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError
from reprlab.nn.attention import eager_attention, merge_heads, split_heads

MEMORY_MODES = ("tokens", "bottleneck", "ctrl")


class MemoryUpdateLayer(nn.Module):
    """Post-LN layer whose queries are the memory slots and whose keys/values are ``[mem; seq]``.

    mem = LN(mem + attn(mem -> ctx)); mem = LN(mem + ffn(mem)). Softmax multi-head attention.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.up = nn.Linear(hidden_size, intermediate_size)
        self.down = nn.Linear(intermediate_size, hidden_size)
        self.act = activation
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def forward(self, memory: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                output_attentions: bool = False):
        q = split_heads(self.query(memory), self.num_heads)  # (B, nh, m, hs)
        k = split_heads(self.key(context), self.num_heads)  # (B, nh, Tc, hs)
        v = split_heads(self.value(context), self.num_heads)
        keep = context_mask[:, None, None, :]  # (B, 1, 1, Tc)
        p = self.attention_dropout if self.training else 0.0
        if output_attentions:
            ctx, weights = eager_attention(q, k, v, keep, p)
        else:
            ctx, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p), None
        memory = self.attn_norm(memory + self.dropout(self.out(merge_heads(ctx))))  # (B, m, H)
        memory = self.ffn_norm(memory + self.dropout(self.down(self.act(self.up(memory)))))
        return memory, weights


class MemoryTokens(nn.Module):
    """The memory slots and, for ``ctrl`` / ``bottleneck``, one memory-update layer per encoder layer.

    The encoder calls :meth:`prepend` after the embeddings, :meth:`run_layer` in place of each
    ``layer(x, mask)``, and :meth:`split` at the end.
    """

    def __init__(
        self,
        num_tokens: int,
        mode: str,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        num_layers: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
    ):
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"num_memory_tokens must be at least 1 for a memory, got {num_tokens}")
        if mode not in MEMORY_MODES:
            raise ConfigError(f"unknown memory_mode {mode!r}; choose one of: {', '.join(MEMORY_MODES)}")
        self.num_tokens = num_tokens
        self.mode = mode
        # unit-variance slots, on the scale of the LayerNorm-ed token embeddings they sit beside
        self.tokens = nn.Parameter(torch.randn(num_tokens, hidden_size))
        self.update = None
        if mode != "tokens":
            self.update = nn.ModuleList(
                MemoryUpdateLayer(hidden_size, num_heads, intermediate_size, activation, layer_norm_eps,
                                  hidden_dropout, attention_dropout)
                for _ in range(num_layers)
            )

    def prepend(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H), (B, T) -> [mem; x] (B, m+T, H) and its mask (memory is always real)."""
        B = x.size(0)
        mem = self.tokens.to(x.dtype)[None].expand(B, -1, -1)  # (B, m, H)
        mem_mask = torch.ones(B, self.num_tokens, dtype=torch.bool, device=mask.device)
        return torch.cat([mem, x], dim=1), torch.cat([mem_mask, mask], dim=1)

    def run_layer(self, index: int, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                  output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One encoder layer on ``x = [mem; seq]`` (B, m+T, H) according to the memory mode.

        Returns the new ``[mem; seq]`` and the main layer's attention weights (B, nh, m+T, m+T).
        """
        if self.mode == "tokens":
            return layer(x, mask, output_attentions=output_attentions)
        m = self.num_tokens
        memory, _ = self.update[index](x[:, :m], x, mask)  # (B, m, H), read from [mem; seq]
        if self.mode == "ctrl":
            y, weights = layer(x, mask, output_attentions=output_attentions)
        else:  # bottleneck: tokens read the updated memory only
            only_memory = mask.clone()
            only_memory[:, m:] = False
            y, weights = layer(torch.cat([memory, x[:, m:]], dim=1), only_memory, output_attentions=output_attentions)
        return torch.cat([memory, y[:, m:]], dim=1), weights

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[mem; seq] -> (memory (B, m, H), seq (B, T, H))."""
        return x[:, : self.num_tokens], x[:, self.num_tokens :]

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, mode={self.mode!r}"


__all__ = ["MEMORY_MODES", "MemoryTokens", "MemoryUpdateLayer"]
