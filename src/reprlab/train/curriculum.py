"""Curricula: the order in which training examples are shown, how fast the pool grows, and how to score them.

Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021 (official code:
google-research/understanding-curricula). A curriculum has three parts:

* a **scoring function**: each example's difficulty. :func:`loss_cscore` is the paper's loss-based
  c-score (the loss of an example under a model trained without it: k-fold retraining, averaged over
  repeats); :func:`learned_epoch` is the epoch from which an example is predicted correctly and stays
  so; :func:`read_scores` reads any precomputed score file.
* an **ordering** (:class:`Ordering`): ``curriculum`` (easy to hard), ``anti-curriculum`` (exactly the
  reverse), ``random`` (a random order, kept for its pacing) or ``standard`` (no curriculum: the
  training loop's plain epochs). :func:`order_examples` sorts and, optionally, interleaves classes
  (:func:`class_balanced`: the k-th easiest example of every class before any (k + 1)-th).
* a **pacing function** g(t): how many of the ordered examples are in the pool at step t of T. With
  N examples, a in (0, inf) the share of the steps after which the pool is full, b in [0, 1] its
  initial share, the six functions of the paper (Table 1) are

      linear  Nb + N(1 - b) t / (aT)
      quad    Nb + N(1 - b) (t / (aT))^2
      root    Nb + N(1 - b) (t / (aT))^(1/2)
      step    Nb + N floor(t / (aT))
      exp     Nb + N(1 - b) (exp(10 t / (aT)) - 1) / (exp(10) - 1)
      log     Nb + N(1 - b) (1 + log(t / (aT) + exp(-10)) / 10)

  each clipped to [min_size, N] (:func:`pacing_function`), so g(0) = bN and g(aT) = N.

:class:`CurriculumSampler` turns an order and a pacing function into the batches of a run and plugs
into the one training loop (``train(..., sampler=...)``), so any recipe can train with a curriculum.
Two samplings: ``pass`` (the official code): shuffled passes over the current pool, the pool
re-measured as g(t) at the start of each pass (once the pool is full, these are plain epochs); and
``step`` (the paper's Algorithm 1): every step draws its batch uniformly from the pool of size g(t).
Either resumes exactly: its state (the pass, its size and position) is checkpointed with the run.

The official README's ``--ordering anti-curr`` silently ran a curriculum (the code tests
``anti_curr``) and its ``standard`` branch raised a NameError; here an ordering is an enum, every
spelling the paper and the code use maps to it, and anything else is a ConfigError.

>>> g = pacing_function("linear", a=0.5, b=0.2, total_steps=100, n=1000, min_size=1)
>>> g(0), g(25), g(50), g(99)
(200, 600, 1000, 1000)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from reprlab.errors import ConfigError, DataFormatError
from reprlab.io import read_utf8
from reprlab.train.recipe import option


class Ordering(str, Enum):
    CURRICULUM = "curriculum"
    ANTI = "anti-curriculum"
    RANDOM = "random"
    STANDARD = "standard"


ORDERING_ALIASES = {"curr": Ordering.CURRICULUM, "anti": Ordering.ANTI, "anti-curr": Ordering.ANTI,
                    "anti_curr": Ordering.ANTI, "anti_curriculum": Ordering.ANTI, "rand": Ordering.RANDOM,
                    "none": Ordering.STANDARD}
ORDERINGS = tuple(o.value for o in Ordering)
PACINGS = ("linear", "quad", "root", "step", "exp", "log")
SAMPLINGS = ("pass", "step")


def parse_ordering(value: str | Ordering) -> Ordering:
    """An :class:`Ordering` from its name or one of the spellings of the paper's code; else a ConfigError."""
    if isinstance(value, Ordering):
        return value
    key = str(value).strip().lower()
    try:
        return Ordering(key)
    except ValueError:
        if key in ORDERING_ALIASES:
            return ORDERING_ALIASES[key]
    raise ConfigError(f"unknown ordering {value!r}; choose one of: {', '.join(ORDERINGS)}", field="ordering")


# ----------------------------------------------------------------------------- pacing


def pacing_value(name: str, t: float, a: float, b: float, total_steps: int, n: int) -> float:
    """The paper's pacing function ``name`` at step ``t`` (real-valued, not clipped)."""
    at = a * total_steps  # the step at which the pool is full
    start = n * b
    if name == "linear":
        return start + n * (1 - b) * t / at
    if name == "quad":
        return start + n * (1 - b) * (t / at) ** 2
    if name == "root":
        return start + n * (1 - b) * (t / at) ** 0.5
    if name == "step":
        return start + n * math.floor(t / at)
    if name == "exp":
        x = 10.0 * t / at
        return n if x > 700 else start + n * (1 - b) * math.expm1(x) / math.expm1(10.0)
    if name == "log":
        return start + n * (1 - b) * (1 + math.log(t / at + math.exp(-10.0)) / 10.0)
    raise ConfigError(f"unknown pacing function {name!r}; choose one of: {', '.join(PACINGS)}", field="pacing")


def pacing_function(name: str, a: float, b: float, total_steps: int, n: int, min_size: int = 1) -> Callable[[int], int]:
    """g(t): the pool size at step t, ``pacing_value`` rounded down and clipped to [``min_size``, ``n``]."""
    if name not in PACINGS:
        raise ConfigError(f"unknown pacing function {name!r}; choose one of: {', '.join(PACINGS)}", field="pacing")
    if not a > 0:
        raise ConfigError(f"must be positive (the share of the steps after which all data is used), got {a}",
                          field="pacing_a")
    if not 0 <= b <= 1:
        raise ConfigError(f"must be in [0, 1] (the initial share of the data), got {b}", field="pacing_b")
    if total_steps < 1 or n < 1:
        raise ConfigError(f"a pacing function needs steps and data, got {total_steps} steps and {n} examples")
    low = min(max(1, min_size), n)

    def g(step: int) -> int:
        value = pacing_value(name, step, a, b, total_steps, n)
        return int(min(n, max(low, math.floor(value + 1e-9))))  # 1e-9: g(aT) = N despite rounding

    return g


# ----------------------------------------------------------------------------- orderings


def class_balanced(order: Sequence[int], labels: Sequence[int]) -> list[int]:
    """Interleave classes: the k-th example of every class (in ``order``) comes before any class's (k + 1)-th,
    and within such a group the examples keep their order (the official ``balance_order``)."""
    rank_in_class: dict[int, int] = {}
    keyed = []
    for position, i in enumerate(order):
        label = int(labels[i])
        k = rank_in_class.get(label, 0)
        rank_in_class[label] = k + 1
        keyed.append((k, position, int(i)))
    return [i for _, _, i in sorted(keyed)]


def order_examples(difficulty: Sequence[float], ordering: str | Ordering, seed: int = 0,
                   labels: Sequence[int] | None = None) -> np.ndarray:
    """Example indices in training order: easiest first (``curriculum``; ties by index), its exact reverse
    (``anti-curriculum``) or a seeded permutation (``random``); class-balanced when ``labels`` are given
    (before the reversal, so that anti is the reverse of curriculum in every case)."""
    ordering = parse_ordering(ordering)
    scores = np.asarray(difficulty, dtype=np.float64)
    if ordering is Ordering.STANDARD:
        raise ConfigError("the standard ordering has no curriculum order: train without a sampler", field="ordering")
    if ordering is Ordering.RANDOM:
        return np.random.default_rng([seed, 7919]).permutation(len(scores))
    if not np.all(np.isfinite(scores)):
        raise DataFormatError("difficulty scores must be finite numbers")
    order = np.lexsort((np.arange(len(scores)), scores))  # ascending difficulty, ties by index
    if labels is not None:
        order = np.asarray(class_balanced(order.tolist(), labels))
    return order[::-1].copy() if ordering is Ordering.ANTI else order


# ----------------------------------------------------------------------------- scoring functions


def loss_cscore(n: int, train_and_score: Callable[[np.ndarray, np.ndarray, int], Sequence[float]], folds: int = 4,
                repeats: int = 1, seed: int = 0) -> np.ndarray:
    """The loss-based c-score: each example's mean loss under models that did not train on it (difficulty).

    For each of ``repeats`` random splits into ``folds`` parts, ``train_and_score(train_idx, held_out_idx,
    run)`` trains a fresh model on the other parts and returns the per-example losses of ``held_out_idx``
    (in that order); every example is held out once per repeat. Higher = harder."""
    if folds < 2 or repeats < 1:
        raise ConfigError(f"need folds >= 2 and repeats >= 1, got {folds} and {repeats}", field="folds")
    total = np.zeros(n)
    rng = np.random.default_rng([seed, 104729])
    run = 0
    for _ in range(repeats):
        parts = np.array_split(rng.permutation(n), folds)
        for k, held in enumerate(parts):
            train_idx = np.concatenate([p for j, p in enumerate(parts) if j != k])
            losses = np.asarray(train_and_score(train_idx, held, run), dtype=np.float64)
            if losses.shape != (len(held),):
                raise ValueError(f"train_and_score returned {losses.shape} losses for {len(held)} held-out examples")
            total[held] += losses
            run += 1
    return total / repeats


def learned_epoch(correct: np.ndarray) -> np.ndarray:
    """From a (epochs, n) record of whether each example was predicted correctly after each epoch, the first
    epoch from which it stays correct to the end (difficulty); ``epochs`` for one never learned for good."""
    c = np.asarray(correct, dtype=bool)
    epochs = c.shape[0]
    wrong = ~c
    last_wrong = np.where(wrong.any(0), epochs - 1 - np.argmax(wrong[::-1], axis=0), -1)  # (n,)
    return (last_wrong + 1).astype(np.int64)


def read_scores(path: str | Path, n: int | None = None) -> np.ndarray:
    """Difficulty scores from a file: JSON (a list, or ``{"scores": [...], "higher": "harder"|"easier"}``)
    or text (one number per line, example order); ``easier`` scores are negated so higher = harder."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("score file not found", path=str(path))
    text = read_utf8(path)
    higher = "harder"
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                higher = data.get("higher", "harder")
                data = data.get("scores")
            scores = np.asarray(data, dtype=np.float64)
        else:
            scores = np.asarray([float(x) for x in text.split()], dtype=np.float64)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"not a list of numbers ({exc})", path=str(path)) from exc
    if higher not in ("harder", "easier"):
        raise DataFormatError(f"'higher' must be 'harder' or 'easier', got {higher!r}", path=str(path))
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise DataFormatError("scores must be one finite number per example", path=str(path))
    if n is not None and len(scores) != n:
        raise DataFormatError(f"{len(scores)} scores for {n} training examples", path=str(path))
    return -scores if higher == "easier" else scores


# ----------------------------------------------------------------------------- the sampler


@dataclass
class CurriculumConfig:
    """A recipe's curriculum options (``standard``: none; the loop's plain epochs)."""

    ordering: str = option("standard", choices=ORDERINGS, help="example order: standard (no curriculum), "
                           "curriculum (easy first), anti-curriculum, random (pacing only)")
    pacing: str = option("linear", choices=PACINGS, help="how the pool of examples grows")
    pacing_a: float = option(0.8, help="share of the steps after which all data is in the pool")
    pacing_b: float = option(0.2, help="share of the data in the pool at the start")
    scores: str | None = option(None, help="difficulty score file (JSON, or one number per line in example order); "
                                "default: the recipe's own scoring")
    balance: bool = option(True, help="interleave classes in the order (when the data has labels)")
    sampling: str = option("pass", choices=SAMPLINGS, help="pass: shuffled passes over the pool (official code); "
                           "step: every batch drawn from the pool of size g(t) (the paper's Algorithm 1)")

    def __post_init__(self):
        self.ordering = parse_ordering(self.ordering).value
        if self.pacing not in PACINGS:
            raise ConfigError(f"unknown pacing function {self.pacing!r}; choose one of: {', '.join(PACINGS)}",
                              field="pacing")
        if not (math.isfinite(self.pacing_a) and self.pacing_a > 0):
            raise ConfigError(f"must be a positive number, got {self.pacing_a}", field="pacing_a")
        if not 0 <= self.pacing_b <= 1:
            raise ConfigError(f"must be in [0, 1], got {self.pacing_b}", field="pacing_b")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {self.sampling!r}; choose one of: {', '.join(SAMPLINGS)}",
                              field="sampling")
        if self.scores and self.ordering not in (Ordering.CURRICULUM.value, Ordering.ANTI.value):
            raise ConfigError(f"a score file orders the examples only with the curriculum or anti-curriculum "
                              f"ordering; the {self.ordering} ordering would ignore it", field="scores")

    @property
    def active(self) -> bool:
        return self.ordering != Ordering.STANDARD.value


class CurriculumSampler:
    """The batches of a curriculum run, for ``train(..., sampler=...)``: ``indices(step, batch_size)``.

    ``order`` holds the example indices in curriculum order, ``pacing`` is g(t). The pool at step t is
    ``order[:g(t)]`` (never smaller than one batch). Deterministic given ``seed``; the state of the
    ``pass`` sampling is three integers and a fingerprint of the order (a resumed run with another
    order is refused)."""

    def __init__(self, order: Sequence[int], pacing: Callable[[int], int], seed: int = 0, sampling: str = "pass"):
        if sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}", field="sampling")
        self.order = np.asarray(order, dtype=np.int64)
        self.pacing, self.seed, self.sampling = pacing, seed, sampling
        self.passes = 0  # passes started
        self.pool = 0  # size of the current pass's pool
        self.position = 0  # examples of the current pass already drawn
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.order.tobytes()).hexdigest()[:16]

    def pool_size(self, step: int, batch_size: int = 1) -> int:
        """g(step), at least one batch and at most the data."""
        return min(len(self.order), max(batch_size, int(self.pacing(step))))

    def indices(self, step: int, batch_size: int) -> list[int]:
        if batch_size > len(self.order):
            raise ConfigError(f"batch_size {batch_size} exceeds the {len(self.order)} training examples",
                              field="batch_size")
        if self.sampling == "step":
            pool = self.pool_size(step, batch_size)
            rng = np.random.default_rng([self.seed, step, 2])
            return self.order[rng.choice(pool, size=batch_size, replace=False)].tolist()
        if self.passes == 0 or self.position + batch_size > self.pool:  # a new pass over the pool at g(step)
            self.passes, self.pool, self.position = self.passes + 1, self.pool_size(step, batch_size), 0
        if self._perm is None or self._perm[0] != self.passes:
            self._perm = (self.passes, np.random.default_rng([self.seed, self.passes, 1]).permutation(self.pool))
        chosen = self._perm[1][self.position:self.position + batch_size]
        self.position += batch_size
        return self.order[chosen].tolist()

    def state_dict(self) -> dict:
        return {"passes": self.passes, "pool": self.pool, "position": self.position, "order": self.fingerprint,
                "sampling": self.sampling}

    def load_state_dict(self, state: dict) -> None:
        if state.get("order") != self.fingerprint or state.get("sampling") != self.sampling:
            raise ConfigError("the checkpoint was written with another curriculum (order or sampling); resume with "
                              "the same scores and settings", field="curriculum")
        self.passes, self.pool, self.position = int(state["passes"]), int(state["pool"]), int(state["position"])
        self._perm = None


def build_sampler(config: CurriculumConfig, difficulty: Sequence[float] | None, total_steps: int, batch_size: int,
                  seed: int = 0, labels: Sequence[int] | None = None, n: int | None = None) -> CurriculumSampler | None:
    """The sampler of ``config`` (None for ``standard``): the order from ``difficulty`` (or, for ``random``,
    from ``n`` alone), balanced by ``labels`` when ``config.balance``, paced over ``total_steps``."""
    if not config.active:
        return None
    ordering = parse_ordering(config.ordering)
    if difficulty is None:
        if ordering is not Ordering.RANDOM or n is None:
            raise ConfigError("a curriculum needs difficulty scores (--curriculum-scores or the recipe's scoring)",
                              field="scores")
        difficulty = np.zeros(n)
    order = order_examples(difficulty, ordering, seed, labels if config.balance else None)
    g = pacing_function(config.pacing, config.pacing_a, config.pacing_b, total_steps, len(order), batch_size)
    return CurriculumSampler(order, g, seed, config.sampling)
