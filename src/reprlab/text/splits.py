"""The one split rule: a deterministic hash of each item's key puts it in ``train``, ``dev`` or ``eval``.

Every recipe and benchmark that cuts held-out data out of a file uses this rule, so that a split
needs no seed, no stored list of ids and no coordination between programs:

* ``eval``: the held-out side a method is *reported* on (HotpotQA questions, SQuAD articles);
* ``dev``: a slice for *tuning and model selection* (DPR/ANCE dev queries cut from SciFact's train
  split, MDR's fusion weights, AxFormer's search), never reported as a result;
* ``train``: the rest.

An item's number is ``h = int(sha256(key)[:8], 16) / 2**32`` in [0, 1): ``h < eval_fraction`` is
``eval``, ``h < eval_fraction + dev_fraction`` is ``dev``, anything else ``train``. Growing one
fraction moves items from ``train`` only, never between ``dev`` and ``eval``. Group keys keep related
items together (SQuAD is split by article title, so no paragraph of a test article is trained on).

>>> side("5ab92dba554299131ca422a2", eval_fraction=0.3)   # its hash fraction is 0.2356
'eval'
>>> parts = split(["q1", "q2", "q3", "q4"], dev_fraction=0.5)
>>> sorted(parts.train + parts.dev)
['q1', 'q2', 'q3', 'q4']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, TypeVar

from reprlab.errors import ConfigError

T = TypeVar("T")
SIDES = ("train", "dev", "eval")
EVAL_FRACTION = 0.3  # the eval side of HotpotQA / SQuAD files unless a recipe says otherwise


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key``: the first 32 bits of its SHA-256, over 2**32."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def check_fractions(eval_fraction: float, dev_fraction: float = 0.0) -> None:
    for name, value in (("eval_fraction", eval_fraction), ("dev_fraction", dev_fraction)):
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise ConfigError(f"must be in [0, 1], got {value}", field=name)
    if eval_fraction + dev_fraction > 1.0:
        raise ConfigError(f"eval_fraction {eval_fraction} + dev_fraction {dev_fraction} is more than 1",
                          field="dev_fraction")


def side(key: str, eval_fraction: float = 0.0, dev_fraction: float = 0.0) -> str:
    """``"eval"``, ``"dev"`` or ``"train"`` for one key (see the module docstring)."""
    check_fractions(eval_fraction, dev_fraction)
    h = hash_fraction(key)
    return "eval" if h < eval_fraction else "dev" if h < eval_fraction + dev_fraction else "train"


@dataclass
class Split(Generic[T]):
    train: list[T] = field(default_factory=list)
    dev: list[T] = field(default_factory=list)
    eval: list[T] = field(default_factory=list)

    def __getitem__(self, name: str) -> list[T]:
        if name not in SIDES:
            raise ConfigError(f"unknown split side {name!r}; choose one of: {', '.join(SIDES)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self[name]) for name in SIDES}


def split(items: Iterable[T], key: Callable[[T], str] = str, eval_fraction: float = 0.0,
          dev_fraction: float = 0.0) -> Split[T]:
    """Each item to its side by :func:`side` of ``key(item)``; the input order is kept within a side."""
    check_fractions(eval_fraction, dev_fraction)
    parts: Split[T] = Split()
    for item in items:
        parts[side(key(item), eval_fraction, dev_fraction)].append(item)
    return parts


RULE = ("sha256(key)[:8] / 2**32: < eval_fraction -> eval; < eval_fraction + dev_fraction -> dev; else train "
        "(reprlab.text.splits)")
