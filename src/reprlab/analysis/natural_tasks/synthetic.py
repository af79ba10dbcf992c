"""A synthetic world where the true next-word distribution p*(.|s) and so epsilon are known exactly.

Saunshi et al. (ICLR 2021) prove: if a task's label is a linear function of p*(.|s) (a *natural*
task), an LM whose cross-entropy is epsilon above the best possible gives features (the conditional
mean Phi p_f(s)) that solve it linearly with error O(sqrt(epsilon)); for the Quad objective the
guarantee is on f(s) itself. On real text epsilon is unknown. Here it is exact:

* the language is a hidden Markov model (:class:`HMMWorld`): K hidden states with sparse Dirichlet
  transition and emission rows over V words. :meth:`HMMWorld.next_word_probs` runs the forward
  filter, so p*(.|s) is exact for every context s;
* a natural task (:class:`NaturalTask`) labels s by v^T p*(s) > t, with v = +1 on half of a word
  subset and -1 on the other half (the "p(great) - p(terrible)" of the paper), and drops contexts
  within a margin of t, so a linear probe on p* is perfect by construction;
* an LM (:class:`SyntheticLM`: a GRU whose feature f(s) in R^d multiplies learned output embeddings
  Phi, logits = Phi^T f(s), no bias, as in the paper) is trained on fresh samples with cross-entropy
  or Quad, and snapshots along training give LMs of decreasing epsilon. For cross-entropy epsilon is
  E_s KL(p*(s) || p_f(s)); for Quad, E_s 1/2 ||Phi^T f(s) - p*(s)||^2 (both: the loss above its
  unrestricted minimum, computed exactly per context and averaged over held-out contexts).

:func:`run_synthetic` measures, for every snapshot, epsilon and the test error of linear probes on
f(s), p_f(s) on the subset, Phi p_f(s) and (Quad) f(s); :func:`fit_power` fits error = a + b eps^c.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.analysis.natural_tasks.probe import L2_GRID, select_probe
from reprlab.errors import ConfigError
from reprlab.logs import progress
from reprlab.nn.quad import LOSSES, quad_distribution, quad_excess, quad_loss_from_logits


# ----------------------------------------------------------------------------- the language


@dataclass
class HMMWorld:
    """A hidden Markov model over ``V`` words: ``start`` (K,), ``trans`` (K, K), ``emit`` (K, V)."""

    start: np.ndarray
    trans: np.ndarray
    emit: np.ndarray

    @classmethod
    def random(cls, vocab_size: int = 50, states: int = 10, concentration: float = 0.1, seed: int = 0) -> "HMMWorld":
        """Rows drawn from a symmetric Dirichlet(``concentration``): small values make sparse rows, so
        contexts leave the hidden state (and so p*) well determined and varied."""
        rng = np.random.default_rng(seed)
        return cls(start=rng.dirichlet(np.ones(states)),
                   trans=rng.dirichlet(np.full(states, concentration), size=states),
                   emit=rng.dirichlet(np.full(vocab_size, concentration), size=states))

    @property
    def vocab_size(self) -> int:
        return self.emit.shape[1]

    def sample(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` word sequences of ``length`` (n, length), int64."""
        K, V = self.emit.shape
        h = rng.choice(K, size=n, p=self.start)
        words = np.empty((n, length), dtype=np.int64)
        cum_emit, cum_trans = self.emit.cumsum(1), self.trans.cumsum(1)
        for t in range(length):
            if t:
                h = (rng.random(n)[:, None] > cum_trans[h]).sum(1).clip(max=K - 1)
            words[:, t] = (rng.random(n)[:, None] > cum_emit[h]).sum(1).clip(max=V - 1)
        return words

    def next_word_probs(self, contexts: np.ndarray) -> np.ndarray:
        """p*(w_{T+1} | w_1..w_T) for each row of ``contexts`` (n, T): the forward filter. (n, V)"""
        belief = np.broadcast_to(self.start, (len(contexts), len(self.start))).copy()  # P(h_1)
        for t in range(contexts.shape[1]):
            if t:
                belief = belief @ self.trans  # P(h_t | w_<t)
            belief = belief * self.emit[:, contexts[:, t]].T  # joint with w_t
            belief /= belief.sum(1, keepdims=True)  # P(h_t | w_<=t)
        return (belief @ self.trans) @ self.emit  # (n, V)


@dataclass
class NaturalTask:
    """Label 1 when ``weights @ p*(s) > threshold``; contexts within ``margin`` of it are dropped."""

    weights: np.ndarray  # (V,)
    threshold: float
    margin: float
    subset: np.ndarray  # the words with a non-zero weight

    def labels(self, probs: np.ndarray) -> np.ndarray:
        return (probs @ self.weights > self.threshold).astype(np.int64)

    def keep(self, probs: np.ndarray) -> np.ndarray:
        return np.abs(probs @ self.weights - self.threshold) >= self.margin


def natural_task(world: HMMWorld, subset_size: int = 10, margin_quantile: float = 0.1, length: int = 12,
                 n_reference: int = 20000, seed: int = 0) -> NaturalTask:
    """v = +1 on half of a random word subset, -1 on the rest; threshold = the median score of random
    contexts (balanced labels), margin = the ``margin_quantile`` quantile of the distance to it."""
    if not 2 <= subset_size <= world.vocab_size:
        raise ConfigError(f"must be in [2, {world.vocab_size}], got {subset_size}", field="subset_size")
    rng = np.random.default_rng(seed)
    subset = rng.choice(world.vocab_size, size=subset_size, replace=False)
    v = np.zeros(world.vocab_size)
    v[subset[: subset_size // 2]], v[subset[subset_size // 2:]] = 1.0, -1.0
    scores = world.next_word_probs(world.sample(n_reference, length, rng)) @ v
    t = float(np.median(scores))
    return NaturalTask(v, t, float(np.quantile(np.abs(scores - t), margin_quantile)), np.sort(subset))


# ----------------------------------------------------------------------------- language models


class SyntheticLM(nn.Module):
    """GRU language model with a softmax (or Quad) word layer: logits = Phi^T f(s), f(s) in R^``dim``."""

    def __init__(self, vocab_size: int, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.bos = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, dim)
        self.output = nn.Parameter(torch.randn(vocab_size, dim) * 0.1)  # rows phi_w: Phi^T (V, d)
        self.distribution = "softmax"  # "quad" for a Quad-trained model: its logits are its distribution

    def features(self, words: torch.Tensor) -> torch.Tensor:
        """f after each prefix of [BOS] + words: (B, T+1, d); position t has seen w_1..w_t."""
        x = torch.cat([torch.full_like(words[:, :1], self.bos), words], 1)  # (B, T+1)
        return self.proj(self.rnn(self.embed(x))[0])  # (B, T+1, d)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.output.T  # (..., V)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, -1) if self.distribution == "softmax" else quad_distribution(logits)

    @torch.no_grad()
    def context_features(self, contexts: np.ndarray) -> dict[str, np.ndarray]:
        """f(s), logits and p_f(s) at the end of each context (n, T)."""
        f = self.features(torch.from_numpy(contexts))[:, -1]  # (n, d)
        z = self.logits(f)
        return {"f": f.numpy(), "logits": z.numpy(), "p": self.probs(z).numpy(), "phi": self.output.detach().numpy()}

    def next_word_probs(self, contexts: np.ndarray) -> np.ndarray:
        return self.context_features(contexts)["p"]


class OracleLM:
    """The true LM of a world: its prediction is p* itself (epsilon 0 by definition, and by test)."""

    def __init__(self, world: HMMWorld):
        self.world = world
        self.distribution = "softmax"

    def next_word_probs(self, contexts: np.ndarray) -> np.ndarray:
        return self.world.next_word_probs(contexts)


def kl_epsilon(p_true: np.ndarray, p_model: np.ndarray) -> float:
    """E_s KL(p*(s) || p_f(s)): cross-entropy of the model above that of p*, per context, averaged."""
    p = np.asarray(p_true, dtype=np.float64)
    q = np.clip(np.asarray(p_model, dtype=np.float64), 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(terms.sum(1).mean())


def lm_epsilon(lm, world: HMMWorld, contexts: np.ndarray) -> dict[str, float]:
    """``kl``: E KL(p* || p_f) for any LM with ``next_word_probs``; ``quad`` (for a :class:`SyntheticLM`):
    E 1/2 ||Phi^T f - p*||^2. ``epsilon`` is the one of the LM's own objective."""
    p_star = world.next_word_probs(contexts)
    out = {"kl": kl_epsilon(p_star, lm.next_word_probs(contexts))}
    if isinstance(lm, SyntheticLM):
        z = torch.from_numpy(lm.context_features(contexts)["logits"])
        out["quad"] = float(quad_excess(z, torch.from_numpy(p_star)).mean())
    out["epsilon"] = out["quad"] if lm.distribution == "quad" else out["kl"]
    return out


def train_lm(world: HMMWorld, lm: SyntheticLM, loss: str = "ce", steps: int = 3000, snapshots: Sequence[int] = (),
             batch_size: int = 64, length: int = 13, lr: float = 3e-3, seed: int = 0,
             show_progress: bool | None = False) -> dict[int, dict]:
    """Train on fresh samples of ``world`` (next-word prediction at every position), with ``loss`` "ce"
    or "quad"; return the state dicts at ``snapshots`` (steps; 0 = the initial model)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}", field="loss")
    rng = np.random.default_rng(seed + 1000)
    torch.manual_seed(seed)
    lm.distribution = "quad" if loss == "quad" else "softmax"
    opt = torch.optim.Adam(lm.parameters(), lr=lr)
    kept = {0: copy.deepcopy(lm.state_dict())} if 0 in snapshots else {}
    for step in progress(range(1, steps + 1), show=show_progress, desc=f"synthetic LM ({loss})"):
        words = torch.from_numpy(world.sample(batch_size, length, rng))  # (B, L)
        z = lm.logits(lm.features(words[:, :-1]))  # (B, L, V): position t predicts w_{t+1}
        flat, targets = z.reshape(-1, z.shape[-1]), words.reshape(-1)
        value = quad_loss_from_logits(flat, targets) if loss == "quad" else F.cross_entropy(flat, targets)
        opt.zero_grad()
        value.backward()
        opt.step()
        if step in snapshots:
            kept[step] = copy.deepcopy(lm.state_dict())
    return kept


# ----------------------------------------------------------------------------- the experiment


@dataclass
class SyntheticConfig:
    """Sizes of the synthetic experiment (defaults: the benchmark's; :meth:`tiny` for tests)."""

    vocab_size: int = 50
    states: int = 10
    concentration: float = 0.1
    length: int = 12  # words per task context
    subset_size: int = 10
    margin_quantile: float = 0.1
    dim: int = 16  # d < V: the softmax bottleneck keeps epsilon > 0
    hidden: int = 64
    steps: int = 3000
    snapshots: tuple[int, ...] = (0, 10, 30, 60, 100, 200, 300, 600, 1000, 2000, 3000)
    batch_size: int = 64
    lr: float = 3e-3
    n_train: int = 2000
    n_dev: int = 1000
    n_test: int = 2000
    losses: tuple[str, ...] = LOSSES
    seeds: tuple[int, ...] = (0, 1, 2)
    l2_grid: tuple[float, ...] = L2_GRID
    extra: dict = field(default_factory=dict)

    @classmethod
    def tiny(cls, **overrides) -> "SyntheticConfig":
        sizes = dict(vocab_size=20, states=4, steps=150, snapshots=(0, 150), n_train=400, n_dev=200, n_test=400,
                     hidden=32, dim=8, seeds=(0,), l2_grid=(1e-4, 1e-2, 1.0))
        return cls(**{**sizes, **overrides})


def task_split(world: HMMWorld, task: NaturalTask, n: int, length: int, rng: np.random.Generator):
    """``n`` task contexts outside the margin, with their p* and labels."""
    contexts, probs = [], []
    while sum(len(c) for c in contexts) < n:
        c = world.sample(2 * n, length, rng)
        p = world.next_word_probs(c)
        keep = task.keep(p)
        contexts.append(c[keep])
        probs.append(p[keep])
    c, p = np.concatenate(contexts)[:n], np.concatenate(probs)[:n]
    return c, p, task.labels(p)


def probe_errors(features: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], labels, l2_grid) -> dict[str, float]:
    """Test error of the dev-selected probe for each feature: ``{name: (train, dev, test) arrays}``."""
    y_train, y_dev, y_test = labels
    out = {}
    for name, (a, b, c) in features.items():
        probe, _ = select_probe(a, y_train, b, y_dev, l2_grid)
        out[name] = 1.0 - probe.accuracy(c, y_test)
    return out


def lm_feature_sets(lm: SyntheticLM, splits, subset: np.ndarray) -> dict[str, tuple]:
    """f(s), p_f(s) on the task's subset and Phi p_f(s) for each split (train, dev, test)."""
    parts = [lm.context_features(c) for c, _, _ in splits]
    return {"f": tuple(x["f"] for x in parts),
            "p_subset": tuple(x["p"][:, subset] for x in parts),
            "phi_p": tuple(x["p"] @ x["phi"] for x in parts)}


def run_seed(config: SyntheticConfig, seed: int, show_progress: bool | None = False) -> list[dict]:
    """One world, one task, one LM per loss: a record per (loss, snapshot) and one for p* itself."""
    world = HMMWorld.random(config.vocab_size, config.states, config.concentration, seed=seed)
    task = natural_task(world, config.subset_size, config.margin_quantile, config.length, seed=seed)
    rng = np.random.default_rng(seed + 1)
    splits = [task_split(world, task, n, config.length, rng) for n in (config.n_train, config.n_dev, config.n_test)]
    labels = tuple(s[2] for s in splits)
    held_out = world.sample(config.n_test, config.length, rng)  # epsilon over all contexts, not just the task's
    oracle = {"p_star": tuple(s[1] for s in splits), "p_star_subset": tuple(s[1][:, task.subset] for s in splits)}
    records = [{"seed": seed, "loss": "oracle", "step": None, **lm_epsilon(OracleLM(world), world, held_out),
                "errors": probe_errors(oracle, labels, config.l2_grid), "positive_rate": float(labels[2].mean())}]
    for loss in config.losses:
        torch.manual_seed(seed)
        lm = SyntheticLM(config.vocab_size, config.dim, config.hidden)
        states = train_lm(world, lm, loss, config.steps, config.snapshots, config.batch_size, config.length + 1,
                          config.lr, seed, show_progress)
        for step, state in sorted(states.items()):
            lm.load_state_dict(state)
            feats = lm_feature_sets(lm, splits, task.subset)
            records.append({"seed": seed, "loss": loss, "step": step, **lm_epsilon(lm, world, held_out),
                            "errors": probe_errors(feats, labels, config.l2_grid)})
    return records


def run_synthetic(config: SyntheticConfig, show_progress: bool | None = None) -> dict:
    """Every seed of :func:`run_seed`; ``{"config", "records"}``."""
    records = []
    for seed in progress(config.seeds, show=show_progress, desc="synthetic seeds"):
        records += run_seed(config, seed)
    return {"config": asdict(config), "records": records}


def fit_power(epsilon: Sequence[float], error: Sequence[float],
              exponents: Sequence[float] = tuple(np.round(np.arange(0.1, 2.01, 0.05), 2))) -> dict[str, float]:
    """Least squares error = a + b * epsilon^c: for c = 1/2 (the paper's rate), c = 1, and the best c
    of ``exponents``; R^2 of each."""
    x, y = np.asarray(epsilon, dtype=np.float64), np.asarray(error, dtype=np.float64)

    def fit(c):
        A = np.stack([np.ones_like(x), np.power(np.clip(x, 0, None), c)], 1)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        resid = y - A @ coef
        total = ((y - y.mean()) ** 2).sum()
        return float(coef[0]), float(coef[1]), float(1 - (resid ** 2).sum() / total) if total > 0 else 1.0

    a, b, r2 = fit(0.5)
    _, _, r2_linear = fit(1.0)
    best = max(exponents, key=lambda c: fit(c)[2])
    return {"a": a, "b": b, "r2_sqrt": r2, "r2_linear": r2_linear, "best_exponent": float(best),
            "r2_best": fit(best)[2], "points": len(x)}
