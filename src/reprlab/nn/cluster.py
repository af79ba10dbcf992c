"""Cluster-Former: sliding-window layers for local context, cluster layers for long-range context.

Wang, Zhou, Gan, Chen, Fang, Sun, Cheng and Liu, "Cluster-Former: Clustering-based Sparse
Transformer for Question Answering", Findings of ACL-IJCNLP 2021 (arXiv:2009.06097; an ICLR 2021
submission). No official code was released; this is an implementation from the paper's text.

A long input is encoded by two kinds of layer, interleaved (the paper puts cluster layers in the
middle of the stack): a **sliding-window layer** attends inside overlapping windows of the sequence
(local context), and a **Cluster-Former layer** assigns every token to the nearest of ``K``
centroids, sorts the tokens by cluster (stable: position order inside a cluster), cuts the sorted
sequence into equal chunks, attends inside each chunk and scatters the results back to the
original positions, so that tokens far apart but alike share a chunk (long-range context). The
centroids are a buffer fitted by k-means over a memory bank of recent hidden states (the layer's
inputs) and refreshed every ``refresh_every`` training forward passes. Compute and memory grow
linearly with the length: no (T x T) matrix is ever built (except on request, see below).

Both entries share the registry's constructor and call (``reprlab.nn.attention``) and the q/k/v/out
projections of ``softmax``, so pretrained BERT/MiniLM weights load into them unchanged.

**Windows.** Over the positions after the first ``global_prefix`` tokens (the "body", length L),
window k covers body positions ``[k * stride, k * stride + window)``; there are
``ceil((L - window) / stride) + 1`` of them (one window of L tokens when ``L <= window``). The
``global_prefix`` tokens (e.g. [CLS] and the question of a reader input) join every window, as the
paper concatenates the question to every chunk. A token's output is the **average over the windows
that cover it**, as in the paper, where the states of the overlapping tokens of neighbouring windows
are averaged (prefix tokens are averaged over all windows). A window exists for a row only if the
previous one did not already reach that row's last real token, so padding never changes the windows
a real token sees: a padded batch gives each row what it gets alone.

**Clusters.** Tokens go to the nearest centroid (squared Euclidean distance on the layer's input
hidden states); padding sorts after every real token, so it fills only the tail chunks, and the
prefix is not sorted (it joins every chunk). The sorted sequence is chunked with the same window
rule (``cluster_window``, ``cluster_stride``; by default equal, disjoint chunks of ``window``
tokens; a stride below the window lets a chunk overlap its neighbour in sorted order, the role of
Reformer's look-back to the previous chunk). Before the first fit the centroids are zero, every
token is in cluster 0 and the layer chunks by position.

**Centroid schedule.** In training mode each forward pass writes up to ``memory_per_step`` real
body tokens (evenly spaced, detached) into a ring buffer of ``memory_size`` rows; the first training
forward fits the centroids (k-means++ seeding with a fixed seed, then ``kmeans_iters`` Lloyd steps)
and every ``refresh_every``-th forward refits them, warm-started from the current centroids.
:func:`calibrate_centroids` fits them from data before training or for a model that is only
evaluated. Centroids, memory bank and counters are persistent buffers: they are saved with the
model (as ``encoder.layer.N.attention.self.centroids`` etc. in the HF layout) and a resumed run
continues exactly. Under DDP the buffers are broadcast from rank 0 at every forward pass.

``output_attentions=True`` takes an eager path that also returns the effective (B, nh, T, T)
weights: ``A[i, j]`` is the average over the windows covering token i of its weight on token j, so
``out = A V`` exactly; it is built densely, for inspection and tests on short inputs only.

>>> attn = ATTENTION["cluster-former"](hidden_size=32, num_heads=4, window=4, num_clusters=3)
>>> out, _ = attn.train()(torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool))
>>> out.shape, attn.centroids.shape, int(attn.fits)
(torch.Size([2, 10, 32]), torch.Size([3, 32]), 1)
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError
from reprlab.nn.attention import ATTENTION, eager_attention, register_attention

# the options both entries accept, so that one ``attention_kwargs`` dict serves an encoder that
# interleaves them; an option that does not concern a layer is ignored by it
OPTIONS = ("window", "stride", "global_prefix", "num_clusters", "cluster_window", "cluster_stride", "memory_size",
           "memory_per_step", "refresh_every", "kmeans_iters")


def window_layout(length: int, window: int, stride: int) -> tuple[int, int]:
    """(number of windows, tokens per window) covering ``length`` body tokens."""
    if length <= window:
        return 1, length
    return math.ceil((length - window) / stride) + 1, window


def windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    num_heads: int,
    window: int,
    stride: int,
    prefix: int = 0,
    order: torch.Tensor | None = None,
    dropout: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention inside overlapping windows of a sequence, averaged over the windows covering each token.

    q, k, v: (B, T, H) projected states; keep: (B, T) bool, True = a real token. ``order``: (B, T -
    prefix) positions in ``[prefix, T)``: the body in the order the windows slide over (None = by
    position; a cluster sort otherwise). Returns the context (B, T, H) (before the output
    projection) and, with ``need_weights``, the effective weights (B, nh, T, T).
    """
    B, T, H = q.shape
    nh, hs = num_heads, H // num_heads
    P = min(prefix, T)
    L = T - P
    dev = q.device
    nW, W = window_layout(L, window, stride)
    M = P + W  # tokens per window
    body = order if order is not None else torch.arange(P, T, device=dev).expand(B, L)
    body = F.pad(body, (0, (nW - 1) * stride + W - L), value=T)  # (B, Lp); T = an empty slot
    starts = torch.arange(nW, device=dev) * stride
    idx = body[:, starts[:, None] + torch.arange(W, device=dev)]  # (B, nW, W) positions of each window
    if P:
        idx = torch.cat([torch.arange(P, device=dev).expand(B, nW, P), idx], dim=2)  # (B, nW, M)
    keep_x = torch.cat([keep, keep.new_zeros(B, 1)], dim=1)  # (B, T+1): the empty slot is never attended
    # a window exists for a row unless the previous window already reached its last real body token
    ranks = torch.arange(1, body.shape[1] + 1, device=dev)
    extent = (keep_x.gather(1, body) * ranks).amax(dim=1)  # (B,) 1 + sorted index of the last real token
    exists = (starts == 0)[None] | ((starts - stride + W)[None] < extent[:, None])  # (B, nW)
    flat = (idx + (torch.arange(B, device=dev) * (T + 1))[:, None, None]).reshape(-1)  # (B*nW*M,)

    def windows(x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_zeros(B, 1, H)], dim=1).reshape(B * (T + 1), H)
        return x.index_select(0, flat).view(B * nW, M, nh, hs).transpose(1, 2)  # (B*nW, nh, M, hs)

    qw, kw, vw = windows(q), windows(k), windows(v)
    kmask = keep_x.reshape(-1)[flat].view(B * nW, 1, 1, M)
    weights = None
    if need_weights:
        ctx, weights = eager_attention(qw, kw, vw, kmask, dropout)  # weights (B*nW, nh, M, M)
    else:
        bias = torch.zeros(kmask.shape, dtype=q.dtype, device=dev).masked_fill(~kmask, torch.finfo(q.dtype).min)
        ctx = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias, dropout_p=dropout)
    live = exists.to(ctx.dtype)  # (B, nW)
    ctx = ctx.transpose(1, 2).reshape(B, nW, M, H) * live[:, :, None, None]  # (B, nW, M, H)
    out = ctx.new_zeros(B * (T + 1), H).index_add_(0, flat, ctx.reshape(-1, H))
    count = ctx.new_zeros(B * (T + 1)).index_add_(0, flat, live[:, :, None].expand(B, nW, M).reshape(-1))
    count = count.clamp_min(1)
    out = (out / count[:, None]).view(B, T + 1, H)[:, :T]  # (B, T, H)
    if need_weights:
        share = (live[:, :, None] / count[flat].view(B, nW, M))  # (B, nW, M): 1/c_i for live windows
        w = weights.view(B, nW, nh, M, M) * share[:, :, None, :, None]
        rows = torch.arange(B, device=dev)[:, None, None, None] * nh + torch.arange(nh, device=dev)[None, None, :, None]
        qi = idx[:, :, None, :].expand(B, nW, nh, M)  # (B, nW, nh, M) query positions
        dense = w.new_zeros(B * nh * (T + 1), T + 1)
        dense.index_put_((((rows * (T + 1)) + qi)[..., None].expand(B, nW, nh, M, M).reshape(-1),
                          idx[:, :, None, None, :].expand(B, nW, nh, M, M).reshape(-1)), w.reshape(-1), accumulate=True)
        weights = dense.view(B, nh, T + 1, T + 1)[:, :, :T, :T]
    return out, weights


def kmeans(
    x: torch.Tensor, k: int, iters: int = 10, init: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` (N, H); returns the (k, H) centroids (float32).

    Seeding is k-means++ with a generator of fixed ``seed`` unless ``init`` is given (warm start).
    A cluster left empty takes the point farthest from its centroid.
    """
    x = x.float()
    N = x.shape[0]
    if N < k:
        raise ConfigError(f"k-means needs at least k = {k} points, got {N}")
    if init is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        chosen = [int(torch.randint(N, (1,), generator=g))]
        closest = ((x - x[chosen[0]]) ** 2).sum(1)
        for _ in range(1, k):
            p = closest.cpu() / closest.sum().clamp_min(1e-12).cpu()
            if float(p.sum()) > 0:
                nxt = int(torch.multinomial(p, 1, generator=g))
            else:  # every point is a chosen one already
                nxt = int(torch.randint(N, (1,), generator=g))
            chosen.append(nxt)
            closest = torch.minimum(closest, ((x - x[nxt]) ** 2).sum(1))
        c = x[chosen].clone()
    else:
        c = init.float().clone()
    for _ in range(iters):
        d = squared_distances(x, c)  # (N, k)
        assign = d.argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.zeros(k, device=x.device).index_add_(0, assign, torch.ones(N, device=x.device))
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # reseed empty clusters with the worst-served points
            far = d.gather(1, assign[:, None]).squeeze(1).topk(int(empty.sum())).indices
            c[empty] = x[far]
    return c


def squared_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, k) squared Euclidean distances in float32 (autocast off)."""
    ctx = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else contextlib.nullcontext()
    with ctx:
        x, c = x.float(), c.float()
        return (x * x).sum(-1, keepdim=True) - 2 * x @ c.T + (c * c).sum(-1)


class WindowedAttention(nn.Module):
    """Shared part of the two entries: BERT's q/k/v/out projections and the window options."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, max_positions: int = 512,
                 window: int = 256, stride: int | None = None, global_prefix: int = 0, **options):
        super().__init__()
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{self.registry_name} attention got unknown options {unknown}; "
                              f"it takes {', '.join(OPTIONS)}")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        stride = max(1, window // 2) if stride is None else stride
        if window < 1 or not 1 <= stride <= window or global_prefix < 0:
            raise ConfigError(f"need window >= 1, 1 <= stride <= window and global_prefix >= 0; "
                              f"got window {window}, stride {stride}, global_prefix {global_prefix}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.window, self.stride, self.global_prefix = window, stride, global_prefix
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def attend(self, x, mask, window, stride, order=None, output_attentions=False):
        ctx, weights = windowed_attention(
            self.query(x), self.key(x), self.value(x), mask.bool(), self.num_heads, window, stride,
            self.global_prefix, order, self.dropout if self.training else 0.0, output_attentions)
        return self.out(ctx), weights


@register_attention("sliding-window")
class SlidingWindowAttention(WindowedAttention):
    """The paper's sliding-window layer: attention inside overlapping windows of the sequence.

    Options: ``window`` (tokens per window, default 256), ``stride`` (default window // 2, so each
    token is averaged over two windows), ``global_prefix`` (leading tokens, e.g. the question, that
    join every window; default 0). The cluster options are accepted and ignored.
    """

    def __init__(self, hidden_size, num_heads, dropout=0.0, max_positions=512, window=256, stride=None,
                 global_prefix=0, **options):
        super().__init__(hidden_size, num_heads, dropout, max_positions, window, stride, global_prefix, **options)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        return self.attend(x, mask, self.window, self.stride, None, output_attentions)


@register_attention("cluster-former")
class ClusterFormerAttention(WindowedAttention):
    """The paper's Cluster-Former layer: attention inside chunks of the cluster-sorted sequence.

    Options: ``num_clusters`` (K, default 16), ``cluster_window`` / ``cluster_stride`` (chunk length
    and step in sorted order; default ``window`` and ``cluster_window``: equal disjoint chunks),
    ``memory_size`` (rows of the memory bank, default 4096), ``memory_per_step`` (tokens written per
    training forward, default 256), ``refresh_every`` (training forwards between k-means refits,
    default 100), ``kmeans_iters`` (Lloyd steps per refit, default 10), ``global_prefix`` as for the
    sliding window. ``window`` / ``stride`` only provide the chunk defaults.
    """

    def __init__(self, hidden_size, num_heads, dropout=0.0, max_positions=512, window=256, stride=None,
                 global_prefix=0, num_clusters=16, cluster_window=None, cluster_stride=None, memory_size=4096,
                 memory_per_step=256, refresh_every=100, kmeans_iters=10, **options):
        super().__init__(hidden_size, num_heads, dropout, max_positions, window, stride, global_prefix, **options)
        self.cluster_window = cluster_window or window
        self.cluster_stride = cluster_stride or self.cluster_window
        if not 1 <= self.cluster_stride <= self.cluster_window:
            raise ConfigError(f"need 1 <= cluster_stride <= cluster_window, got {self.cluster_stride}, "
                              f"{self.cluster_window}")
        if (num_clusters < 1 or memory_size < num_clusters or memory_per_step < 1 or refresh_every < 1
                or kmeans_iters < 0):
            raise ConfigError(f"need num_clusters >= 1, memory_size >= num_clusters, memory_per_step >= 1, "
                              f"refresh_every >= 1, kmeans_iters >= 0; got {num_clusters}, {memory_size}, "
                              f"{memory_per_step}, {refresh_every}, {kmeans_iters}")
        self.num_clusters = num_clusters
        self.memory_per_step, self.refresh_every, self.kmeans_iters = memory_per_step, refresh_every, kmeans_iters
        self.observe_in_eval = False  # set by calibrate_centroids
        self.register_buffer("centroids", torch.zeros(num_clusters, hidden_size))
        self.register_buffer("memory", torch.zeros(memory_size, hidden_size))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_next", torch.zeros((), dtype=torch.long))
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))  # training forwards seen
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))  # k-means fits done

    # ---------------------------------------------------------------- centroids

    def assign(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, H) hidden states -> (B, L) index of the nearest centroid."""
        B, L, H = h.shape
        return squared_distances(h.reshape(B * L, H), self.centroids).argmin(-1).view(B, L)

    @torch.no_grad()
    def observe(self, h: torch.Tensor, keep: torch.Tensor) -> None:
        """Write up to ``memory_per_step`` real rows of ``h`` (B, L, H), evenly spaced, to the memory bank."""
        rows = h[keep].detach().float()
        n = rows.shape[0]
        if n == 0:
            return
        if n > self.memory_per_step:
            rows = rows[torch.linspace(0, n - 1, self.memory_per_step, device=h.device).round().long()]
        size = self.memory.shape[0]
        rows = rows[-size:]
        at = (int(self.memory_next) + torch.arange(rows.shape[0], device=h.device)) % size
        self.memory[at] = rows.to(self.memory.dtype)
        self.memory_next.fill_((int(self.memory_next) + rows.shape[0]) % size)
        self.memory_filled.fill_(min(size, int(self.memory_filled) + rows.shape[0]))

    @torch.no_grad()
    def refresh(self, restart: bool = False) -> bool:
        """Refit the centroids by k-means over the memory bank (warm start unless ``restart`` or the
        first fit); False when the bank holds fewer rows than clusters."""
        n = int(self.memory_filled)
        if n < self.num_clusters:
            return False
        init = None if restart or int(self.fits) == 0 else self.centroids
        self.centroids.copy_(kmeans(self.memory[:n], self.num_clusters, self.kmeans_iters, init))
        self.fits += 1
        return True

    def clear_memory(self) -> None:
        self.memory.zero_()
        self.memory_filled.zero_()
        self.memory_next.zero_()

    # ---------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        keep = mask.bool()
        P = min(self.global_prefix, x.shape[1])
        body, body_keep = x[:, P:], keep[:, P:]
        if self.training or self.observe_in_eval:
            self.observe(body, body_keep)
        if self.training:
            self.forwards += 1
            if int(self.fits) == 0 or int(self.forwards) % self.refresh_every == 0:
                self.refresh()
        cluster = self.assign(body.detach())  # (B, L)
        cluster = cluster.masked_fill(~body_keep, self.num_clusters)  # padding sorts last
        order = P + torch.sort(cluster, dim=1, stable=True).indices  # (B, L) positions by (cluster, position)
        return self.attend(x, keep, self.cluster_window, self.cluster_stride, order, output_attentions)


def cluster_layers(model: nn.Module) -> list[ClusterFormerAttention]:
    """The Cluster-Former layers of ``model``, in module order (= layer order in an Encoder)."""
    return [m for m in model.modules() if isinstance(m, ClusterFormerAttention)]


@torch.no_grad()
def calibrate_centroids(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object]) -> int:
    """Fit every Cluster-Former layer's centroids on data, layer by layer, before training or evaluation.

    For each cluster layer in order, its memory bank is cleared, ``forward(model, batch)`` runs over
    ``batches`` in eval mode while that layer records its inputs, and its centroids are refitted from
    scratch (k-means++); later layers thus see the states the calibrated earlier layers produce.
    ``batches`` is iterated once per cluster layer. Returns the number of layers calibrated.
    """
    layers = cluster_layers(model)
    batches = list(batches)
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            layer.clear_memory()
            layer.observe_in_eval = True
            try:
                for batch in batches:
                    forward(model, batch)
            finally:
                layer.observe_in_eval = False
            if not layer.refresh(restart=True):
                raise ConfigError(f"calibration saw {int(layer.memory_filled)} tokens, fewer than the "
                                  f"{layer.num_clusters} clusters: give more batches")
    finally:
        model.train(was_training)
    return len(layers)


__all__ = ["ATTENTION", "ClusterFormerAttention", "SlidingWindowAttention", "calibrate_centroids", "cluster_layers",
           "kmeans", "window_layout", "windowed_attention"]
