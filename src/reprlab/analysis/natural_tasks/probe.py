"""Linear probes: multinomial logistic regression with an L2 penalty, fitted by L-BFGS in torch.

The evaluation of Saunshi et al. (ICLR 2021): a linear classifier on fixed features, its L2 strength
chosen on a dev split. The objective is

    mean_i CE(W x_i + c, y_i) + l2 / 2 * ||W||_F^2      (the bias c is not penalised),

convex, so L-BFGS (float64, strong-Wolfe line search) finds its minimum; it equals scikit-learn's
``LogisticRegression(C=1 / (l2 * n))`` (tested against it when scikit-learn is installed). Features
are standardised with the training mean and deviation first (``standardize=True``), so that one
L2 grid suits features of any scale (probabilities near 1e-4, hidden states near 1).

>>> probe, dev = select_probe(X_train, y_train, X_dev, y_dev)            # doctest: +SKIP
>>> probe.accuracy(X_test, y_test)                                      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class LinearProbe:
    """Logistic regression (binary or multinomial) with L2 strength ``l2`` (see the module docstring)."""

    def __init__(self, l2: float = 1e-3, standardize: bool = True, max_iter: int = 500, tol: float = 1e-9):
        if l2 < 0:
            raise ConfigError(f"must be >= 0, got {l2}", field="l2")
        self.l2 = l2
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.weight: np.ndarray | None = None  # (C, D) in the standardised space
        self.bias: np.ndarray | None = None  # (C,)

    def _scale(self, X: np.ndarray, fit: bool = False) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if fit:
            self.mean_ = X.mean(0) if self.standardize else np.zeros(X.shape[1])
            std = X.std(0) if self.standardize else np.ones(X.shape[1])
            self.std_ = np.where(std > 1e-12, std, 1.0)
        return torch.from_numpy((X - self.mean_) / self.std_)

    def fit(self, X: np.ndarray, y: Sequence[int]) -> "LinearProbe":
        x = self._scale(X, fit=True)  # (N, D)
        t = torch.as_tensor(np.asarray(y), dtype=torch.long)
        if x.ndim != 2 or len(t) != len(x):
            raise ConfigError(f"features must be (N, D) with N labels, got {tuple(x.shape)} and {len(t)} labels",
                              field="features")
        self.classes_ = int(t.max()) + 1
        W = torch.zeros(self.classes_, x.shape[1], dtype=torch.float64, requires_grad=True)
        c = torch.zeros(self.classes_, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, c], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=self.tol * 1e-3, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ W.T + c, t) + 0.5 * self.l2 * W.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = W.detach().numpy(), c.detach().numpy()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        if self.weight is None:
            raise ConfigError("fit the probe first", field="probe")
        return self._scale(X).numpy() @ self.weight.T + self.bias  # (N, C)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def accuracy(self, X: np.ndarray, y: Sequence[int]) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


def select_probe(X_train: np.ndarray, y_train: Sequence[int], X_dev: np.ndarray, y_dev: Sequence[int],
                 l2_grid: Sequence[float] = L2_GRID, standardize: bool = True) -> tuple[LinearProbe, dict[float, float]]:
    """The probe of ``l2_grid`` with the best dev accuracy (the stronger penalty on a tie), and every
    dev accuracy. The reported split is never seen here."""
    dev: dict[float, float] = {}
    best: LinearProbe | None = None
    for l2 in sorted(l2_grid, reverse=True):  # strongest first: ties keep the simpler probe
        probe = LinearProbe(l2, standardize=standardize).fit(X_train, y_train)
        dev[l2] = probe.accuracy(X_dev, y_dev)
        if best is None or dev[l2] > dev[best.l2]:
            best = probe
    return best, dev
