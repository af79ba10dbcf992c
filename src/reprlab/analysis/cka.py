"""Centered kernel alignment (CKA): how alike two layers' representations are, and where blocks form.

Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the Same Things? Uncovering How Neural
Network Representations Vary with Width and Depth", ICLR 2021 (arXiv 2010.15327; official TF code:
google-research/google-research, ``do_wide_and_deep_networks_learn_the_same_things/efficient_CKA.py``),
on the CKA of Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019 (official numpy demo: ``representation_similarity/Demo.ipynb``).

For representations X (n, p) and Y (n, q) of the same n examples, with Gram matrices K = k(X, X) and
L = k(Y, Y), CKA is the normalised Hilbert-Schmidt independence criterion

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

invariant to orthogonal transforms and isotropic scaling of either side, 1 for identical
representations. HSIC comes in two estimators:

* **biased**: HSIC0 = tr(K H L H) / (n - 1)^2 with the centring matrix H = I - 11^T / n;
* **unbiased** (Song et al., 2012): HSIC1, computed here in the U-centred form of Szekely & Rizzo
  (2014): zero the diagonal of K, subtract row and column means taken over n - 2, add back the grand
  mean over 2(n - 1), zero the diagonal again; then HSIC1 = <K_u, L_u>_F / (n (n - 3)). "Debiased"
  CKA uses HSIC1 throughout. :func:`unbiased_hsic_song` is the textbook formula, kept as the plain
  reference the U-centred path is tested against.

Kernels: linear (K = X X^T) and RBF with bandwidth ``threshold`` x the median pairwise distance. For
n >> p the linear form is computed in feature space, ||Y^T X||_F^2 (:func:`feature_space_linear_cka`),
without any n x n matrix.

**Minibatch CKA** (Nguyen et al., Section 3.1): the full-data Gram matrices of a test set are too big,
so HSIC1 is averaged over fixed-size minibatches, for every pair of layers at once:

    CKA_minibatch(i, j) = mean_b HSIC1(K_i^b, K_j^b) / sqrt(mean_b HSIC1(K_i^b, K_i^b) mean_b HSIC1(K_j^b, K_j^b)).

Because HSIC1 is unbiased the average converges to the full-data value as batches accumulate (the
biased estimator would not). :class:`MinibatchCKA` accumulates the layer x layer matrices within one
model and, given a second model's activations, across the two; :func:`pc1_fraction` gives the share of
variance along each layer's first principal component, and :func:`find_blocks` the "block structure":
runs of consecutive layers whose pairwise CKA all exceed a threshold.

Details that ports of the official code get wrong, and how this one avoids them:

* a self-HSIC that comes out negative (it can, for the feature-space formula, by rounding, when a
  representation is nearly degenerate) must not reach ``sqrt``: it is clamped to 0 with a warning,
  and a CKA whose normaliser is 0 (a constant representation) is reported as 0, not NaN;
* the diagonal is zeroed in place (``fill_diagonal_``), not by ``K - diag(K)`` (which subtracts a
  broadcast vector from every row);
* within one model the diagonal is HSIC(i, i) / sqrt(HSIC(i, i)^2), exactly 1; across two models
  both models' self-terms come from the same accumulators as their within-model matrices;
* every statistic is computed in float64 whatever the activations' dtype.

>>> import numpy as np
>>> np.random.seed(1337); X = np.random.randn(100, 10); Y = np.random.randn(100, 10) + X
>>> round(linear_cka(X, Y), 5), round(linear_cka(X, Y, debiased=True), 5)
(0.55761, 0.51346)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger("reprlab")


def _f64(x) -> torch.Tensor:
    """Any array as a float64 tensor of shape (n, features): images and token maps are flattened."""
    t = torch.as_tensor(x)
    t = t.reshape(t.shape[0], -1) if t.ndim != 2 else t  # (n, features)
    return t.to(torch.float64)


# ----------------------------------------------------------------------------- kernels and centring


def gram_linear(x) -> torch.Tensor:
    """K = X X^T, (n, n) float64."""
    x = _f64(x)
    return x @ x.T


def gram_rbf(x, threshold: float = 1.0) -> torch.Tensor:
    """RBF kernel exp(-d^2 / (2 (threshold^2) median(d^2))), d the Euclidean distances, (n, n) float64."""
    x = _f64(x)
    dots = x @ x.T  # (n, n)
    sq_norms = torch.diagonal(dots)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * dots).clamp_min(0)
    median = torch.quantile(sq_dist.flatten(), 0.5) if sq_dist.numel() <= 2 ** 24 else sq_dist.flatten().median()
    return torch.exp(-sq_dist / (2 * threshold ** 2 * median))


def center_gram(gram, unbiased: bool = False) -> torch.Tensor:
    """A centred copy of a symmetric Gram matrix (float64).

    Biased: H K H with H = I - 11^T / n. Unbiased: the U-centring of Szekely & Rizzo (2014), whose
    diagonal is exactly zero; <K_u, L_u> / (n (n - 3)) is the unbiased HSIC.
    """
    k = torch.as_tensor(gram).to(torch.float64).clone()
    n = k.shape[0]
    if not torch.allclose(k, k.T, rtol=1e-8, atol=1e-10 * float(k.abs().max().clamp_min(1e-300))):
        raise ValueError("center_gram needs a symmetric Gram matrix")
    if unbiased:
        if n < 4:
            raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
        k.fill_diagonal_(0.0)
        means = k.sum(0) / (n - 2)  # (n,)
        means = means - means.sum() / (2 * (n - 1))
        k -= means[:, None]
        k -= means[None, :]
        k.fill_diagonal_(0.0)
    else:
        means = k.mean(0)
        means = means - means.mean() / 2
        k -= means[:, None]
        k -= means[None, :]
    return k


def hsic(gram_x, gram_y, unbiased: bool = False) -> float:
    """HSIC of two Gram matrices: biased tr(KHLH) / (n - 1)^2, or the unbiased U-statistic (U-centred)."""
    kx, ky = center_gram(gram_x, unbiased), center_gram(gram_y, unbiased)
    n = kx.shape[0]
    scale = n * (n - 3) if unbiased else (n - 1) ** 2
    return float((kx * ky).sum()) / scale


def unbiased_hsic_song(gram_x, gram_y) -> float:
    """The plain reference: Song et al. (2012), eq. 5, with K~, L~ the Gram matrices with zeroed diagonals,

    HSIC1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2)) - 2 / (n - 2) 1^T K~ L~ 1] / (n (n - 3)).
    """
    k = torch.as_tensor(gram_x).to(torch.float64).clone()
    l_ = torch.as_tensor(gram_y).to(torch.float64).clone()
    n = k.shape[0]
    k.fill_diagonal_(0.0)
    l_.fill_diagonal_(0.0)
    trace = (k * l_.T).sum()
    ones = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(0) @ l_.sum(1))
    return float((trace + ones - cross) / (n * (n - 3)))


DEGENERATE = 1e-12  # a centred self-HSIC below this share of the uncentred one is rounding: a constant layer


def _normalise(xy: float, xx: float, yy: float, what: str = "CKA", scale_x: float = 0.0,
               scale_y: float = 0.0, warn: bool = True) -> float:
    """xy / sqrt(xx yy), with a negative self-term clamped to 0 (and a warning), and 0 (with a warning)
    when a representation is degenerate: its centred self-term is 0, or below ``DEGENERATE`` times its
    uncentred one ``scale_*`` (a constant representation, whose centring leaves only rounding)."""
    if (xx < 0 or yy < 0) and warn:
        logger.warning(f"{what}: a self-HSIC estimate was negative ({min(xx, yy):.3g}; rounding on a nearly "
                       "degenerate representation); clamped to 0")
    xx, yy = max(xx, 0.0), max(yy, 0.0)
    if xx <= DEGENERATE * scale_x or yy <= DEGENERATE * scale_y or xx * yy == 0.0:
        if warn:
            logger.warning(f"{what}: a representation has no variance across examples (constant up to "
                           "rounding); its CKA is reported as 0")
        return 0.0
    return xy / math.sqrt(xx * yy)


def cka(gram_x, gram_y, debiased: bool = False) -> float:
    """CKA of two Gram matrices (biased, or debiased with the unbiased HSIC)."""
    kx, ky = center_gram(gram_x, debiased), center_gram(gram_y, debiased)
    sx, sy = (float((torch.as_tensor(g).to(torch.float64) ** 2).sum()) for g in (gram_x, gram_y))
    return _normalise(float((kx * ky).sum()), float((kx * kx).sum()), float((ky * ky).sum()), "CKA", sx, sy)


def _debiased_dot(xty_sq: float, rows_x: torch.Tensor, rows_y: torch.Tensor, norm_x: float, norm_y: float,
                  n: int) -> float:
    """n (n - 3) HSIC1 of linear kernels, from feature-space quantities: ||Y^T X||^2 (centred features),
    the squared row norms and the squared Frobenius norms (Kornblith et al. 2019, Appendix)."""
    return xty_sq - n / (n - 2.0) * float(rows_x @ rows_y) + norm_x * norm_y / ((n - 1) * (n - 2))


def feature_space_linear_cka(x, y, debiased: bool = False) -> float:
    """Linear CKA from (p, q) cross-covariances instead of (n, n) Gram matrices: cheaper when n > p, q."""
    x, y = _f64(x), _f64(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    sx, sy = float(torch.linalg.matrix_norm(x.T @ x) ** 2), float(torch.linalg.matrix_norm(y.T @ y) ** 2)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    xy = float(torch.linalg.matrix_norm(y.T @ x) ** 2)
    xx = float(torch.linalg.matrix_norm(x.T @ x) ** 2)
    yy = float(torch.linalg.matrix_norm(y.T @ y) ** 2)
    if debiased:
        n = x.shape[0]
        if n < 4:
            raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
        rows_x, rows_y = (x * x).sum(1), (y * y).sum(1)  # (n,)
        nx, ny = float(rows_x.sum()), float(rows_y.sum())
        xy = _debiased_dot(xy, rows_x, rows_y, nx, ny, n)
        xx = _debiased_dot(xx, rows_x, rows_x, nx, nx, n)
        yy = _debiased_dot(yy, rows_y, rows_y, ny, ny, n)
    return _normalise(xy, xx, yy, "feature-space CKA", sx, sy)


def linear_cka(x, y, debiased: bool = False) -> float:
    """Linear CKA of two representations (n, p) and (n, q): the feature-space form when n exceeds both
    widths, the Gram form otherwise (the two agree; see the tests)."""
    x, y = _f64(x), _f64(y)
    if x.shape[0] > max(x.shape[1], y.shape[1]):
        return feature_space_linear_cka(x, y, debiased)
    return cka(gram_linear(x), gram_linear(y), debiased)


def rbf_cka(x, y, threshold: float = 1.0, debiased: bool = False) -> float:
    """CKA with RBF kernels whose bandwidth is ``threshold`` x the median distance of each side."""
    return cka(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased)


# ----------------------------------------------------------------------------- minibatch CKA


def u_centre(gram) -> tuple[torch.Tensor, float]:
    """The U-centred copy of one minibatch's Gram matrix, flattened and scaled so that the dot product of
    two is HSIC1: (n * n,) float64 (:func:`center_gram` with ``unbiased=True``, divided by sqrt(n (n - 3))),
    and the uncentred ||K||^2 on the same scale (to tell a constant layer from rounding)."""
    k = torch.as_tensor(gram).to(torch.float64).clone()  # (n, n)
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"minibatch CKA needs minibatches of at least 4 examples, got {n}")
    scale = float((k ** 2).sum()) / (n * (n - 3))
    k.fill_diagonal_(0.0)
    means = k.sum(0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    k.fill_diagonal_(0.0)
    return k.reshape(-1) / math.sqrt(n * (n - 3)), scale  # (n * n,)


def u_centred_grams(activations: Sequence, grams: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The U-centred linear Gram matrices of one minibatch's layers (:func:`u_centre`): (layers, n * n), and
    their uncentred scales (layers,). Each activation is (n, ...) and is flattened per example; with
    ``grams`` they are already the (n, n) Gram matrices. n must be the same for every layer."""
    pairs = [u_centre(a if grams else gram_linear(a)) for a in activations]
    return torch.stack([g for g, _ in pairs]), torch.tensor([s for _, s in pairs], dtype=torch.float64)


@dataclass
class CKAMatrices:
    """What :meth:`MinibatchCKA.result` gives: within-model matrices ``a`` (La, La) and, with a second
    model, ``b`` (Lb, Lb) and ``ab`` (La, Lb); ``batches`` minibatches and ``examples`` examples seen."""

    a: np.ndarray
    b: np.ndarray | None
    ab: np.ndarray | None
    batches: int
    examples: int


class MinibatchCKA:
    """Accumulates unbiased HSIC over minibatches for every pair of layers (Nguyen et al., Section 3.1).

    ``update(acts_a)`` adds one minibatch of model A (a list of per-layer activations of the same n
    examples); ``update(acts_a, acts_b)`` adds model B's activations of the same examples too, so
    that ``result()`` gives A's and B's layer x layer CKA and the cross-model one. Sums are float64
    on ``device``; the state is a few matrices and two counters (:meth:`state_dict`).

    >>> acc = MinibatchCKA()
    >>> for batch in loader:                                            # doctest: +SKIP
    ...     acc.update([layer(batch) for layer in layers])
    >>> acc.result().a.shape                                            # doctest: +SKIP
    (12, 12)
    """

    SUMS = ("hsic_a", "hsic_b", "hsic_ab", "scale_a", "scale_b")

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.hsic_a: torch.Tensor | None = None  # (La, La) sums of HSIC1
        self.hsic_b: torch.Tensor | None = None  # (Lb, Lb)
        self.hsic_ab: torch.Tensor | None = None  # (La, Lb)
        self.scale_a: torch.Tensor | None = None  # (La,) sums of the uncentred ||K||^2, same scale
        self.scale_b: torch.Tensor | None = None  # (Lb,)
        self.batches = 0
        self.examples = 0

    def update(self, acts_a: Sequence, acts_b: Sequence | None = None, grams: bool = False) -> None:
        """Add one minibatch: per-layer activations (n, ...) of model A (and B), or with ``grams`` their
        (n, n) linear Gram matrices (what :class:`~reprlab.analysis.activations.LayerRecorder` keeps)."""
        if acts_b is None and self.hsic_b is not None:
            raise ValueError("this accumulator compares two models: pass both models' activations")
        ga, sa = u_centred_grams([torch.as_tensor(a).to(self.device) for a in acts_a], grams)  # (La, n * n)
        add = lambda old, new: new if old is None else old + new  # noqa: E731
        if acts_b is not None:
            gb, sb = u_centred_grams([torch.as_tensor(b).to(self.device) for b in acts_b], grams)  # (Lb, n * n)
            if gb.shape[1] != ga.shape[1]:
                raise ValueError("both models' activations must be of the same examples")
            self.hsic_b, self.scale_b = add(self.hsic_b, gb @ gb.T), add(self.scale_b, sb.to(self.device))
            self.hsic_ab = add(self.hsic_ab, ga @ gb.T)
        self.hsic_a, self.scale_a = add(self.hsic_a, ga @ ga.T), add(self.scale_a, sa.to(self.device))
        self.batches += 1
        self.examples += int(math.isqrt(ga.shape[1]))

    @staticmethod
    def _cka(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor, scale_x: torch.Tensor,
             scale_y: torch.Tensor) -> np.ndarray:
        c = cross.cpu().numpy()
        sx, sy, kx, ky = (t.cpu().numpy() for t in (self_x, self_y, scale_x, scale_y))
        out = np.empty(c.shape)
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                out[i, j] = _normalise(float(c[i, j]), float(sx[i]), float(sy[j]), "", float(kx[i]), float(ky[j]),
                                       warn=False)  # one warning below, not one per pair
        dead = [i for i in range(len(sx)) if sx[i] <= DEGENERATE * kx[i]]
        dead += [j for j in range(len(sy)) if sy[j] <= DEGENERATE * ky[j]]
        if dead:
            logger.warning(f"minibatch CKA: layer(s) {sorted(set(dead))} have no variance across examples "
                           "(constant up to rounding); their CKA is reported as 0")
        return out

    def result(self) -> CKAMatrices:
        if self.hsic_a is None:
            raise ValueError("no minibatch was added")
        da = torch.diagonal(self.hsic_a)
        a = self._cka(self.hsic_a, da, da, self.scale_a, self.scale_a)
        b = ab = None
        if self.hsic_b is not None:
            db = torch.diagonal(self.hsic_b)
            b = self._cka(self.hsic_b, db, db, self.scale_b, self.scale_b)
            ab = self._cka(self.hsic_ab, da, db, self.scale_a, self.scale_b)
        return CKAMatrices(a, b, ab, self.batches, self.examples)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"batches": torch.tensor(self.batches), "examples": torch.tensor(self.examples)}
        state.update({name: getattr(self, name).cpu() for name in self.SUMS if getattr(self, name) is not None})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.batches, self.examples = int(state["batches"]), int(state["examples"])
        for name in self.SUMS:
            setattr(self, name, state[name].to(self.device) if name in state else None)


def minibatch_cka(batches_a, batches_b=None, device: str | torch.device = "cpu") -> CKAMatrices:
    """Minibatch CKA over an iterable of per-layer activation lists (and, zipped with it, model B's)."""
    acc = MinibatchCKA(device)
    if batches_b is None:
        for acts in batches_a:
            acc.update(acts)
    else:
        for acts_a, acts_b in zip(batches_a, batches_b, strict=True):
            acc.update(acts_a, acts_b)
    return acc.result()


# ----------------------------------------------------------------------------- principal components and blocks


class PC1Fraction:
    """The share of variance along each layer's first principal component, accumulated over minibatches:
    sum_b lambda_1(H K_b H) / sum_b tr(H K_b H) with K_b the minibatch's linear Gram matrix (the nonzero
    eigenvalues of H K H are those of the centred covariance, times n). On a minibatch of n examples the
    top eigenvalue is estimated from n points, so the fraction is a little above the full-data one."""

    def __init__(self):
        self.top: np.ndarray | None = None
        self.total: np.ndarray | None = None

    def update(self, activations: Sequence, grams: bool = False) -> None:
        """Add one minibatch of per-layer activations (or, with ``grams``, their linear Gram matrices)."""
        tops, totals = [], []
        for a in activations:
            k = center_gram(a if grams else gram_linear(a))  # (n, n)
            k = (k + k.T) / 2
            tops.append(float(torch.linalg.eigvalsh(k)[-1]))
            totals.append(float(torch.diagonal(k).sum()))
        self.top = np.array(tops) if self.top is None else self.top + tops
        self.total = np.array(totals) if self.total is None else self.total + totals

    def result(self) -> np.ndarray:
        if self.top is None:
            raise ValueError("no minibatch was added")
        return np.where(self.total > 0, self.top / np.where(self.total > 0, self.total, 1.0), 0.0)


def pc1_fraction(x) -> float:
    """Share of the variance of a representation (n, features) along its first principal component."""
    acc = PC1Fraction()
    acc.update([x])
    return float(acc.result()[0])


@dataclass
class Block:
    """Layers ``start`` .. ``end`` (inclusive) whose pairwise CKA are all >= the threshold."""

    start: int
    end: int
    min_cka: float

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "size": self.size, "min_cka": round(self.min_cka, 6)}


def find_blocks(matrix, threshold: float = 0.9, min_size: int = 3) -> list[Block]:
    """The block structure of a layer x layer CKA matrix: maximal runs of consecutive layers in which every
    pair has CKA >= ``threshold``, of at least ``min_size`` layers, scanned left to right without overlap."""
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    blocks, start = [], 0
    while start < n:
        end = start
        while end + 1 < n and np.all(m[start:end + 2, start:end + 2] >= threshold):
            end += 1
        if end - start + 1 >= min_size:
            blocks.append(Block(start, end, float(m[start:end + 1, start:end + 1].min())))
            start = end + 1
        else:
            start += 1
    return blocks
