"""Padding-free inference through a post-LN transformer stack.

A batch of texts of different lengths is padded to its longest text, and a plain forward pass runs every
per-token computation (the q/k/v and output projections, both feed-forward matrices, the LayerNorms) on the
padding too. For short texts those per-token matrix products are nearly all of the work (attention's
T x T part is T / hidden_size of it), so a batch padded to twice its mean length costs about twice what it
needs. This path keeps only the real tokens, packed into one (N, H) matrix, for every per-token step and
scatters them into the padded (B, T, ...) layout only around the attention product itself, which needs
the sequences apart. It computes the same function as the padded forward (tested against it); only the
floating-point rounding of the matrix products differs.

The idea is the "remove padding" of NVIDIA's FasterTransformer (the Effective Transformer) and of
ByteTransformer (Zhai et al., "ByteTransformer: A High-Performance Transformer Boosted for Variable-Length
Inputs", IPDPS 2023), written here with plain PyTorch indexing, so it runs on a CPU and in bf16 autocast.

It applies to inference (no dropout, no gradients needed) of a stack whose layers are plain softmax
attention (or no attention, as in a pruned layer) followed by a feed-forward block (or none), with
post-LayerNorm residuals, and no memory tokens: :func:`supports_unpadded` says whether a stack qualifies;
the caller falls back to the padded forward otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.nn.attention import SoftmaxAttention, key_mask


def supports_unpadded(encoder: nn.Module) -> bool:
    """Whether :func:`unpadded_forward` computes ``encoder``'s forward: every layer's attention is the plain
    softmax entry (or absent), and the stack has no memory tokens."""
    if getattr(encoder, "memory", None) is not None or not hasattr(encoder, "layers"):
        return False
    return all(layer.attn is None or type(layer.attn) is SoftmaxAttention for layer in encoder.layers)


def _attention(attn: SoftmaxAttention, x: torch.Tensor, rows: torch.Tensor, shape: tuple[int, int],
               mask: torch.Tensor) -> torch.Tensor:
    """attn's output for the packed tokens ``x`` (N, H): projections on the packed tokens, the attention
    product on the padded layout. ``rows`` are the tokens' positions in the flattened (B * T) batch."""
    B, T = shape
    nh = attn.num_heads
    qkv = [proj(x) for proj in (attn.query, attn.key, attn.value)]  # 3 x (N, inner)
    inner = qkv[0].size(-1)
    padded = []
    for t in qkv:
        full = t.new_zeros(B * T, inner)
        full[rows] = t
        padded.append(full.view(B, T, nh, inner // nh).transpose(1, 2))  # (B, nh, T, hs)
    ctx = F.scaled_dot_product_attention(*padded, attn_mask=key_mask(mask))  # (B, nh, T, hs)
    ctx = ctx.transpose(1, 2).reshape(B * T, inner)[rows]  # (N, inner): the real tokens again
    return attn.out(ctx)  # (N, H)


def unpadded_forward(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden state (B, T, H) of ``encoder`` (see :func:`supports_unpadded`), padding rows zero.

    Equal to ``encoder(input_ids, attention_mask).last_hidden_state`` at the real tokens, up to rounding;
    inference only (dropout is not applied)."""
    mask = attention_mask.bool()
    B, T = input_ids.shape
    rows = mask.reshape(-1).nonzero().squeeze(1)  # (N,) positions of the real tokens in (B * T)
    x = encoder.embed(input_ids, token_type_ids)  # (B, T, H)
    H = x.size(-1)
    x = x.reshape(B * T, H)[rows]  # (N, H)
    for layer in encoder.layers:
        if layer.attn is None:
            x = layer.attn_norm(x)
        else:
            x = layer.attn_norm(x + _attention(layer.attn, x, rows, (B, T), mask))
        x = layer.ffn_norm(x) if layer.ffn is None else layer.ffn_norm(x + layer.ffn(x))
    out = x.new_zeros(B * T, H)
    out[rows] = x
    return out.view(B, T, H)  # (B, T, H)
