"""Collaborative multi-head attention, and the conversion of a trained softmax layer into one.

Cordonnier, Loukas and Jaggi, "Multi-Head Attention: Collaborate Instead of Concatenate"
(arXiv:2006.16362, 2020; an ICLR 2021 submission). Official code: github.com/epfml/collaborative-attention.

Concatenated heads learn redundant key/query projections. Collaborative heads share one query
and one key projection of width ``D~`` (``shared_dim``) and give each head ``h`` a mixing vector
``m_h`` that re-weights the shared dimensions::

    logits_h = (X Wq~ diag(m_h) Wk~^T X^T + 1 (X c_h)^T) / sqrt(d_head)

``c_h`` is the *key content bias* (what remains of the query bias once the terms that are constant
along a softmax row are dropped). Values and the output projection are unchanged. A trained layer
converts: stack ``Wq_h^T Wk_h`` of all heads into a (d, heads, d) tensor and take its CP
decomposition of rank ``D~`` (alternating least squares: our torch implementation, tested against
tensorly's ``parafac``, which the ``cp`` extra installs); the three factors are ``Wq~``, the mixing
matrix and ``Wk~``. At ``D~ = heads * d_head`` the concatenated heads are
themselves such a decomposition and are copied as they are (exact); below it the CP fit is an
approximation that the paper re-tunes. The key bias drops out of the softmax; the query bias
folds into ``c_h = Wk_h^T bq_h``, as in the paper.

One deliberate difference from the official code: the logits keep the *original* scale
``1 / sqrt(d_head)`` (``d_head = hidden / heads``) for every ``D~``, so that a converted layer
approximates the trained one without a change of temperature.

>>> attn = ATTENTION["collaborative"](hidden_size=32, num_heads=4, shared_dim=8)
>>> attn(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool))[0].shape
torch.Size([2, 5, 32])
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError, require
from reprlab.nn.attention import ATTENTION, key_mask, merge_heads, register_attention, split_heads

MIXING_INITS = ("uniform", "concatenate", "ones")


@register_attention("collaborative")
class CollaborativeAttention(nn.Module):
    """Collaborative heads: shared query/key projections of width ``shared_dim``, per-head mixing.

    Args:
        hidden_size, num_heads, dropout, max_positions: as every registry entry.
        shared_dim: ``D~``, the width of the shared query/key space (default: ``hidden_size``).
        mixing_init: ``uniform`` (N(0, 0.2^2), the paper's default for training from scratch),
            ``concatenate`` (head h owns a contiguous block of dimensions: plain multi-head
            attention when ``shared_dim == hidden_size``) or ``ones``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.0,
        max_positions: int = 512,
        shared_dim: int | None = None,
        mixing_init: str = "uniform",
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        D = hidden_size if shared_dim is None else int(shared_dim)
        if D < 1:
            raise ConfigError(f"collaborative attention needs shared_dim >= 1, got {shared_dim}")
        if mixing_init not in MIXING_INITS:
            raise ConfigError(f"unknown mixing_init {mixing_init!r}; choose one of: {', '.join(MIXING_INITS)}")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.shared_dim = D
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, D, bias=False)
        self.key = nn.Linear(hidden_size, D, bias=False)
        self.content_bias = nn.Linear(hidden_size, num_heads, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.mixing = nn.Parameter(_init_mixing(num_heads, D, mixing_init))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        B, T, _ = x.shape
        nh, D = self.num_heads, self.shared_dim
        q = self.query(x)[:, None] * self.mixing[None, :, None, :]  # (B, nh, T, D)
        k = self.key(x)[:, None].expand(B, nh, T, D)  # (B, nh, T, D), shared by the heads
        v = split_heads(self.value(x), nh)  # (B, nh, T, hs)
        scale = 1.0 / math.sqrt(self.head_size)
        bias = self.content_bias(x).transpose(1, 2)[:, :, None, :]  # (B, nh, 1, T): one logit per key
        p = self.dropout if self.training else 0.0
        if output_attentions:
            scores = (torch.matmul(q, k.transpose(-1, -2)) + bias) * scale  # (B, nh, T, T)
            scores = scores.masked_fill(~key_mask(mask), torch.finfo(scores.dtype).min)
            weights = scores.softmax(-1)
            probs = F.dropout(weights, p=p) if p > 0 else weights
            ctx = torch.matmul(probs, v)
        else:
            attn_bias = (bias * scale).masked_fill(~key_mask(mask), torch.finfo(bias.dtype).min)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=p, scale=scale)
            weights = None
        return self.out(merge_heads(ctx)), weights

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, shared_dim={self.shared_dim}"


def _init_mixing(num_heads: int, dim: int, how: str) -> torch.Tensor:
    if how == "uniform":
        return torch.empty(num_heads, dim).normal_(std=0.2)
    if how == "ones":
        return torch.ones(num_heads, dim)
    mixing = torch.zeros(num_heads, dim)
    width = math.ceil(dim / num_heads)  # the last head's block is shorter if dim is not divisible
    for h in range(num_heads):
        mixing[h, h * width : (h + 1) * width] = 1.0
    return mixing


def query_key_tensor(attn: nn.Module) -> torch.Tensor:
    """The (d_in, heads, d_in) tensor of per-head bilinear forms ``Wq_h^T Wk_h`` of a softmax layer."""
    nh = attn.num_heads
    d_in = attn.query.in_features
    Wq = attn.query.weight.detach().view(nh, -1, d_in)  # (nh, hs, d_in)
    Wk = attn.key.weight.detach().view(nh, -1, d_in)
    return torch.einsum("hdq,hdk->qhk", Wq.double(), Wk.double())  # (d_in, nh, d_in)


def collaborative_from_softmax(
    attn: nn.Module,
    shared_dim: int,
    method: str = "auto",
    **cp_options,
) -> CollaborativeAttention:
    """A :class:`CollaborativeAttention` equivalent to (``D~`` = full) or approximating a softmax layer.

    Args:
        attn: a ``softmax`` registry module (BERT-style query/key/value/out with biases).
        shared_dim: ``D~``.
        method: ``auto`` (copy the concatenated heads when ``shared_dim`` equals the layer's
            query width, CP decomposition otherwise), ``cp`` (always decompose) or
            ``concatenate`` (copy; only at full width).
        cp_options: for :func:`cp_factors` (``n_iter_max``, ``tol``, ``seed``, ``backend``).
    """
    if method not in ("auto", "cp", "concatenate"):
        raise ConfigError(f"unknown conversion method {method!r}; choose auto, cp or concatenate")
    for name in ("query", "key", "value", "out"):
        if not isinstance(getattr(attn, name, None), nn.Linear):
            raise ConfigError(f"can only convert a softmax attention layer; {type(attn).__name__} has no {name!r}")
    nh = attn.num_heads
    d_in = attn.query.in_features
    full = attn.query.out_features
    if full != d_in or attn.value.out_features != d_in:
        raise ConfigError(f"cannot convert a head-pruned layer ({nh} heads, query width {full} != hidden {d_in})")
    new = CollaborativeAttention(d_in, nh, dropout=attn.dropout, shared_dim=shared_dim, mixing_init="concatenate")
    new.to(attn.query.weight.device, attn.query.weight.dtype)
    if method == "concatenate" and shared_dim != full:
        raise ConfigError(f"method 'concatenate' needs shared_dim == {full} (the layer's query width)")
    with torch.no_grad():
        if method == "concatenate" or (method == "auto" and shared_dim == full):
            new.query.weight.copy_(attn.query.weight)
            new.key.weight.copy_(attn.key.weight)
            new.mixing.copy_(_init_mixing(nh, shared_dim, "concatenate"))
        else:
            wq, mixing, wk = cp_factors(query_key_tensor(attn), shared_dim, **cp_options)
            new.query.weight.copy_(wq.T)
            new.key.weight.copy_(wk.T)
            new.mixing.copy_(mixing)
        # key content bias c_h = Wk_h^T bq_h; the key bias only shifts each softmax row and drops out
        Wk = attn.key.weight.view(nh, -1, d_in)  # (nh, hs, d_in)
        bq = attn.query.bias.view(nh, -1) if attn.query.bias is not None else torch.zeros(nh, Wk.size(1))
        new.content_bias.weight.copy_(torch.einsum("hd,hdk->hk", bq, Wk))
        new.value.load_state_dict(attn.value.state_dict())
        new.out.load_state_dict(attn.out.state_dict())
    new.train(attn.training)
    return new


def cp_factors(
    tensor: torch.Tensor,
    rank: int,
    n_iter_max: int = 200,
    tol: float = 1e-7,
    seed: int = 0,
    backend: str = "torch",
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
):
    """Rank-``rank`` CP decomposition of a (d, heads, d) tensor: (Wq~ (d, R), mixing (heads, R), Wk~ (d, R)).

    Alternating least squares from an SVD initialisation (each factor starts as the leading left
    singular vectors of its unfolding; columns beyond that mode's size are Gaussian). ``backend``
    ``torch`` runs our own ALS (about 15x faster than tensorly's on CPU); ``tensorly`` runs
    ``tensorly.decomposition.parafac`` from the same initialisation, the reference the fast path is
    tested against. Stops after ``n_iter_max`` sweeps or when the relative fit error changes by
    less than ``tol``. ``dtype`` is the precision of the ALS contractions (float32 is about twice as
    fast, but its fit error cannot resolve changes below ~1e-3). Each rank-one term's scale is
    spread evenly over the three factors.
    """
    if backend not in ("torch", "tensorly"):
        raise ConfigError(f"unknown CP backend {backend!r}; choose torch or tensorly")
    X = tensor.detach().cpu().to(torch.float64)
    factors = [f.detach().cpu().to(torch.float64) for f in init] if init is not None else svd_init(X, rank, seed)
    if backend == "tensorly":
        tl = require("tensorly", extra="cp")
        from tensorly.decomposition import parafac

        with tl.backend_context("numpy"):
            weights, facs = parafac(
                tl.tensor(X.numpy()), rank=rank, n_iter_max=n_iter_max, tol=tol,
                init=(tl.ones(rank), [f.numpy() for f in factors]), normalize_factors=False,
            )
        a, m, b = (torch.from_numpy(f.copy()) * (torch.from_numpy(weights.copy()) if i == 0 else 1.0)
                   for i, f in enumerate(facs))
    else:
        a, m, b = als(X, factors, n_iter_max, tol, dtype)
    # spread each rank-one term's scale evenly over the three factors
    na, nm, nb = a.norm(dim=0), m.norm(dim=0), b.norm(dim=0)
    share = (na * nm * nb).pow(1.0 / 3.0)
    safe = lambda n: n.clamp_min(1e-30)  # noqa: E731
    a, m, b = a / safe(na) * share, m / safe(nm) * share, b / safe(nb) * share
    return a.to(torch.float32), m.to(torch.float32), b.to(torch.float32)


def svd_init(X: torch.Tensor, rank: int, seed: int = 0) -> list[torch.Tensor]:
    """Leading left singular vectors of each mode's unfolding, padded with Gaussian columns."""
    g = torch.Generator().manual_seed(seed)
    factors = []
    for mode in range(3):
        unfolded = X.movedim(mode, 0).reshape(X.shape[mode], -1)  # (n_mode, prod(other modes))
        U, S, _ = torch.linalg.svd(unfolded, full_matrices=False)
        k = min(rank, U.shape[1])
        f = torch.randn(X.shape[mode], rank, generator=g, dtype=X.dtype)
        f[:, :k] = U[:, :k] * S[:k].sqrt() if mode == 0 else U[:, :k]
        factors.append(f)
    return factors


def als(X: torch.Tensor, factors: list[torch.Tensor], n_iter_max: int = 200, tol: float = 1e-7,
        dtype: torch.dtype = torch.float64):
    """CP-ALS for a 3-way tensor ``X`` (Q, H, K) from ``factors`` [A (Q, R), M (H, R), B (K, R)].

    Each sweep solves the three least-squares problems in turn (A, then M, then B), like
    tensorly's ``parafac`` without line search; the contractions run in ``dtype``, the small (R, R)
    normal equations in float64.
    """
    A, M, B = (f.clone() for f in factors)
    Xc = X.to(dtype)
    norm = float(X.norm())
    previous = None

    def solve(gram, rhs):  # rhs (n, R): solve Z gram = rhs
        ridge = 1e-12 * gram.diagonal().mean().clamp_min(1e-30)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        return torch.linalg.solve(gram + ridge * eye, rhs.T.double()).T

    for _ in range(n_iter_max):
        XB = torch.einsum("qhk,kr->qhr", Xc, B.to(dtype))  # (Q, H, R)
        A = solve((M.T @ M) * (B.T @ B), torch.einsum("qhr,hr->qr", XB, M.to(dtype)))
        M = solve((A.T @ A) * (B.T @ B), torch.einsum("qhr,qr->hr", XB, A.to(dtype)))
        XA = torch.einsum("qhk,qr->hkr", Xc, A.to(dtype))  # (H, K, R)
        mttkrp_b = torch.einsum("hkr,hr->kr", XA, M.to(dtype))
        B = solve((A.T @ A) * (M.T @ M), mttkrp_b)
        # ||X - [A, M, B]||^2 = ||X||^2 - 2 <X, [A, M, B]> + ||[A, M, B]||^2, without rebuilding X
        inner = float((mttkrp_b.double() * B).sum())
        rec_sq = float(((A.T @ A) * (M.T @ M) * (B.T @ B)).sum())
        error = max(norm**2 - 2 * inner + rec_sq, 0.0) ** 0.5 / norm
        if previous is not None and abs(previous - error) < tol:
            break
        previous = error
    return A, M, B


def cp_relative_error(attn_softmax: nn.Module, attn_collab: CollaborativeAttention) -> float:
    """||T - T~|| / ||T|| between the query-key tensors of a softmax layer and its conversion."""
    target = query_key_tensor(attn_softmax)
    wq = attn_collab.query.weight.detach().double().T  # (d, R)
    wk = attn_collab.key.weight.detach().double().T
    approx = torch.einsum("qr,hr,kr->qhk", wq, attn_collab.mixing.detach().double(), wk)
    return float((target - approx).norm() / target.norm())


def to_collaborative(encoder: nn.Module, shared_dim: int, method: str = "auto", **cp_options) -> nn.Module:
    """A copy of ``encoder`` with every softmax layer converted to collaborative heads of width ``shared_dim``.

    ``encoder`` is a ``reprlab.encoder.Encoder`` (e.g. ``Encoder.from_pretrained("minilm")``); the
    copy's config says ``attention="collaborative"`` with ``attention_kwargs={"shared_dim": ...}``,
    so ``save_pretrained`` / ``from_pretrained`` round-trip it. ``cp_options`` go to
    :func:`collaborative_from_softmax`.
    """
    config = encoder.config
    names = list(config.layer_attention or [config.attention] * config.num_layers)
    if config.layer_heads is not None:
        raise ConfigError("to_collaborative cannot convert a head-pruned encoder (layer_heads is set)")
    if any(name != "softmax" for name in names):
        raise ConfigError(f"to_collaborative converts softmax layers only; this encoder has {sorted(set(names))}")
    from reprlab.logs import progress

    new = copy.deepcopy(encoder)
    for i in progress(range(config.num_layers), desc="CP decomposition", unit="layer"):
        new.layers[i].attn = collaborative_from_softmax(encoder.layers[i].attn, shared_dim, method, **cp_options)
    new.config = config.replace(attention="collaborative", attention_kwargs={"shared_dim": shared_dim},
                                layer_attention=None)
    return new


__all__ = [
    "CollaborativeAttention", "collaborative_from_softmax", "cp_factors", "cp_relative_error", "query_key_tensor",
    "to_collaborative",
]
