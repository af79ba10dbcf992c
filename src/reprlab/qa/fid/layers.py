"""The decoder of Fusion-in-Decoder: causal self-attention, cross-attention, a post-LN decoder layer.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the decoder layer: masked self-attention,
attention over the encoder's output, a feed-forward block), written in the order nanoGPT writes its
``CausalSelfAttention`` / ``Block``. Each attention has two paths that compute the same thing:

* ``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel), used by default;
* an eager path, used with ``output_scores=True``, that also returns the **pre-softmax** scores
  ``q k^T / sqrt(d)`` (B, nh, Tq, Tk) -- what Izacard & Grave (ICLR 2021) aggregate into one
  relevance score per passage (:mod:`reprlab.qa.fid.scores`).

:class:`DecoderLayer` is BERT-shaped (post-LayerNorm, the encoder's weight names), so that it can
be warm-started from an encoder layer: :meth:`DecoderLayer.from_encoder_layer` copies the
self-attention, its LayerNorm and the feed-forward block, and leaves the cross-attention and its
LayerNorm fresh -- the BERT2BERT recipe of Rothe, Narayan & Severyn, "Leveraging Pre-trained
Checkpoints for Sequence Generation Tasks", TACL 2020. A fresh cross-attention block inserted in a
post-LN layer starts close to the identity: its output is small and the LayerNorm after it
renormalises ``x``, which was already normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.encoder import ACTIVATIONS, EncoderConfig, FeedForward, Layer
from reprlab.nn.attention import merge_heads, split_heads


def _init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions <= t.

    ``forward(x, output_scores=False) -> (out (B, T, H), scores (B, nh, T, T) or None)``; the scores
    are pre-softmax, with the future still in them (the softmax masks it). Decoder inputs are padded
    on the right, so the causal mask alone keeps every real position off the padding.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, output_scores: bool = False):
        q = split_heads(self.query(x), self.num_heads)  # (B, nh, T, hs)
        k = split_heads(self.key(x), self.num_heads)
        v = split_heads(self.value(x), self.num_heads)
        p = self.dropout if self.training else 0.0
        if not output_scores:
            ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            return self.out(merge_heads(ctx)), None
        T = x.size(1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, nh, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, torch.finfo(scores.dtype).min).softmax(-1)
        ctx = F.dropout(weights, p=p) @ v  # (B, nh, T, hs)
        return self.out(merge_heads(ctx)), scores


class CrossAttention(nn.Module):
    """Attention of the decoder's positions over the encoder's output ("memory").

    ``forward(x, memory_kv, memory_mask, output_scores=False)``: ``x`` (B, Tq, H); ``memory_kv`` the
    (keys, values) of :meth:`memory_kv`, each (B, nh, Tk, hs), computed once per input and reused at
    every decoding step; ``memory_mask`` (B, Tk) bool, True = a real token. Returns ``(out (B, Tq, H),
    scores (B, nh, Tq, Tk) pre-softmax, unmasked, or None)``.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output ``memory`` (B, Tk, H): each (B, nh, Tk, hs)."""
        return split_heads(self.key(memory), self.num_heads), split_heads(self.value(memory), self.num_heads)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
                output_scores: bool = False):
        k, v = memory_kv
        q = split_heads(self.query(x), self.num_heads)  # (B, nh, Tq, hs)
        keep = memory_mask[:, None, None, :]  # (B, 1, 1, Tk)
        p = self.dropout if self.training else 0.0
        if not output_scores:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
            return self.out(merge_heads(ctx)), None
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
        weights = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(-1)
        ctx = F.dropout(weights, p=p) @ v  # (B, nh, Tq, hs)
        return self.out(merge_heads(ctx)), scores


class DecoderLayer(nn.Module):
    """Post-LN decoder layer: x = LN(x + self(x)); x = LN(x + cross(x, memory)); x = LN(x + ffn(x)).

    ``forward(x, memory_kv, memory_mask, output_scores=False) -> (x, cross-attention scores or None)``.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        H, nh = config.hidden_size, config.num_heads
        self.attn = CausalSelfAttention(H, nh, config.attention_dropout)
        self.attn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.cross = CrossAttention(H, nh, config.attention_dropout)
        self.cross_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module, config.initializer_range)

    @classmethod
    def from_encoder_layer(cls, config: EncoderConfig, layer: Layer) -> "DecoderLayer":
        """A decoder layer whose self-attention, feed-forward block and their LayerNorms are copies of
        an encoder ``layer``'s (BERT2BERT); the cross-attention stays freshly initialised."""
        if layer.attn is None or layer.ffn is None or type(layer.attn).__name__ != "SoftmaxAttention":
            raise ValueError("warm-starting a decoder layer needs a full softmax-attention encoder layer")
        new = cls(config)
        with torch.no_grad():
            for name in ("query", "key", "value", "out"):
                getattr(new.attn, name).load_state_dict(getattr(layer.attn, name).state_dict())
            new.attn_norm.load_state_dict(layer.attn_norm.state_dict())
            new.ffn.load_state_dict(layer.ffn.state_dict())
            new.ffn_norm.load_state_dict(layer.ffn_norm.state_dict())
        return new

    def forward(self, x: torch.Tensor, memory_kv, memory_mask: torch.Tensor, output_scores: bool = False):
        a, _ = self.attn(x, output_scores=output_scores)
        x = self.attn_norm(x + self.dropout(a))
        c, scores = self.cross(x, memory_kv, memory_mask, output_scores=output_scores)
        x = self.cross_norm(x + self.dropout(c))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, scores


class LMHead(nn.Module):
    """Hidden states to vocabulary logits through the (tied) input word embeddings, as BERT's MLM head:
    dense + activation + LayerNorm, then ``h @ E^T + bias`` with E the encoder's word table."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        _init_linear(self.dense, config.initializer_range)

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h))) @ word_embeddings.T + self.bias  # (B, T, V)
