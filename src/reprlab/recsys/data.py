"""Interaction data for recommendation: readers, implicit feedback and the leave-last-out protocol.

Readers:

* :func:`read_interactions`: any ``user item rating timestamp`` file (tab-, comma- or space-separated,
  an optional header line), or a MovieLens folder (its ``u.data``). Ids must be integers; every
  malformed line is a :class:`~reprlab.errors.DataFormatError` naming the file and the line.
* :func:`read_titles` (``u.item``), :func:`read_split` (MovieLens-100k's ``u1..u5`` / ``ua`` / ``ub``
  base/test files).

The protocol (:class:`LeaveLastOut`), used by the recipe, the benchmark and the tests alike:

* implicit feedback: a rating ``>= min_rating`` (4) is a positive; the other ratings only put the item
  in the catalogue (every item of the file is ranked, whether or not anyone liked it);
* per user, the positives in time order (ties by item id) ``s_0 .. s_{n-1}``; with ``n >= 3`` the last
  one is the **test** target, the one before it the **validation** target, and ``s_0 .. s_{n-3}`` are the
  user's training positives (users with fewer than 3 positives only train);
* an example is (user, target, history) where the history is the user's positives before the target
  (the input of sequence models, at most ``history_length`` of the latest); training examples are the
  training positives ``s_t`` with ``t >= 1`` (``s_0`` is only history);
* at ranking time the items of the whole history (``batch["seen"]``) are excluded (a user is not recommended what they already
  liked); settings are chosen on validation, results reported on test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reprlab.errors import DataFormatError

COLUMNS = ("user", "item", "rating", "timestamp")
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
_INT = re.compile(r"^[+-]?\d+$")


@dataclass
class Interactions:
    """Rows of (user, item, rating, timestamp) as numpy arrays; ``source`` names the file."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    times: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


def interactions_file(path: str | Path) -> Path:
    """``path`` itself, or the ``u.data`` of a MovieLens folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "u.data").is_file():
            raise DataFormatError("a folder of interactions needs a u.data file (user item rating timestamp)",
                                  str(path))
        return path / "u.data"
    if not path.exists():
        raise DataFormatError("no such file or folder", str(path))
    return path


def _split_line(line: str) -> list[str]:
    if "\t" in line:
        return [x.strip() for x in line.split("\t")]
    if "," in line:
        return [x.strip() for x in line.split(",")]
    return line.split()


def _number(text: str, what: str, path: str, lineno: int, integer: bool) -> float:
    if integer:
        if not _INT.match(text):
            raise DataFormatError(f"{what} {text!r} is not an integer", path, lineno)
        if abs(int(text)) >= 2 ** 63:
            raise DataFormatError(f"{what} {text!r} is out of range (a 64-bit integer)", path, lineno)
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(f"{what} {text!r} is not a number", path, lineno) from None
    if not np.isfinite(value):
        raise DataFormatError(f"{what} {text!r} is not a finite number", path, lineno)
    return value


def read_interactions(path: str | Path) -> Interactions:
    """Read ``user item rating timestamp`` rows (see the module docstring)."""
    path = interactions_file(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", name) from None
    rows: list[tuple[int, int, float, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = _split_line(line)
        if not rows and lineno == 1 and fields and fields[0].lower() in ("user", "user_id", "userid"):
            continue  # a header line
        if len(fields) < 4:
            raise DataFormatError(f"expected 4 columns ({' '.join(COLUMNS)}), got {len(fields)}: {line[:80]!r}",
                                  name, lineno)
        user = _number(fields[0], "user id", name, lineno, integer=True)
        item = _number(fields[1], "item id", name, lineno, integer=True)
        rating = _number(fields[2], "rating", name, lineno, integer=False)
        stamp = _number(fields[3], "timestamp", name, lineno, integer=True)
        rows.append((user, item, rating, stamp))
    if not rows:
        raise DataFormatError("no interactions (the file is empty)", name)
    users, items, ratings, times = zip(*rows)
    return Interactions(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
                        np.asarray(ratings, dtype=np.float64), np.asarray(times, dtype=np.int64), name)


def read_titles(folder: str | Path) -> dict[int, str]:
    """MovieLens ``u.item``: item id -> title (``{}`` when the folder has no ``u.item``)."""
    path = Path(folder) / "u.item"
    if not path.exists():
        return {}
    if not path.is_file():
        raise DataFormatError("is not a file (MovieLens u.item: 'item id|title|...' lines)", str(path))
    titles = {}
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not _INT.match(fields[0]):
            raise DataFormatError("expected 'item id|title|...'", str(path), lineno)
        titles[int(fields[0])] = fields[1]
    return titles


def read_split(folder: str | Path, name: str) -> tuple[Interactions, Interactions]:
    """MovieLens-100k's own splits: (``NAME.base``, ``NAME.test``) for NAME in u1..u5, ua, ub."""
    if name not in SPLITS:
        raise DataFormatError(f"unknown MovieLens split {name!r}; choose one of {', '.join(SPLITS)}", str(folder))
    return read_interactions(Path(folder) / f"{name}.base"), read_interactions(Path(folder) / f"{name}.test")


# ----------------------------------------------------------------------------- the protocol


@dataclass
class Examples:
    """(user, target, history end) triples: the history of example e is ``sequences[user[e]][:end[e]]``."""

    users: np.ndarray
    targets: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class LeaveLastOut:
    """Users' positives in time order and the leave-last-out examples (see the module docstring).

    Users and items are indexed 0..U-1 and 0..N-1 in the order of their raw ids (``user_ids``,
    ``item_ids``); ``sequences[u]`` holds the item indices of user u's positives in time order.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    sequences: list[np.ndarray]
    min_rating: float = 4.0
    _examples: dict = field(default_factory=dict, repr=False)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_interactions(cls, rows: Interactions, min_rating: float = 4.0) -> "LeaveLastOut":
        user_ids, user_index = np.unique(rows.users, return_inverse=True)
        item_ids, item_index = np.unique(rows.items, return_inverse=True)
        positive = rows.ratings >= min_rating
        if not positive.any():
            raise DataFormatError(f"no rating is >= {min_rating}, so there are no positives", rows.source)
        u, i, t = user_index[positive], item_index[positive], rows.times[positive]
        order = np.lexsort((i, t, u))  # by user, then time, then item
        u, i = u[order], i[order]
        bounds = np.searchsorted(u, np.arange(len(user_ids) + 1))
        sequences = [i[bounds[k]:bounds[k + 1]].astype(np.int64) for k in range(len(user_ids))]
        return cls(user_ids, item_ids, sequences, min_rating)

    def train_positives(self, user: int) -> np.ndarray:
        seq = self.sequences[user]
        return seq[:-2] if len(seq) >= 3 else seq

    def examples(self, split: str) -> Examples:
        """The examples of ``split``: "train", "val" or "test"."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if split not in self._examples:
            users, targets, ends = [], [], []
            for u, seq in enumerate(self.sequences):
                n = len(seq)
                if split == "train":
                    last = n - 2 if n >= 3 else n
                    positions = range(1, last)
                else:
                    positions = [n - (2 if split == "val" else 1)] if n >= 3 else []
                for t in positions:
                    users.append(u)
                    targets.append(seq[t])
                    ends.append(t)
            self._examples[split] = Examples(np.asarray(users, dtype=np.int64), np.asarray(targets, dtype=np.int64),
                                             np.asarray(ends, dtype=np.int64))
        return self._examples[split]

    def histories(self, users: np.ndarray, ends: np.ndarray, length: int) -> torch.Tensor:
        """The latest ``length`` positives before each end, as item index + 1, left-aligned, 0-padded: (B, L)."""
        out = torch.zeros(len(users), length, dtype=torch.long)
        for row, (u, end) in enumerate(zip(users.tolist(), ends.tolist())):
            h = self.sequences[u][max(0, end - length):end]
            out[row, :len(h)] = torch.from_numpy(h + 1)
        return out

    def batch(self, examples: Examples, rows, length: int, seen: bool = True) -> dict[str, torch.Tensor]:
        """Model inputs of some examples: ``users`` (B,), ``history`` (B, L) (the latest ``length`` positives)
        and ``targets`` (B,); with ``seen``, also the whole history (B, max length), the items to exclude."""
        rows = np.asarray(rows, dtype=np.int64)
        users, ends = examples.users[rows], examples.ends[rows]
        out = {"users": torch.from_numpy(users), "history": self.histories(users, ends, length),
               "targets": torch.from_numpy(examples.targets[rows])}
        if seen:
            out["seen"] = self.histories(users, ends, max(1, int(ends.max()) if len(ends) else 1))
        return out

    def popularity(self) -> np.ndarray:
        """How often each item is a training positive: (N,) counts."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for u in range(self.num_users):
            np.add.at(counts, self.train_positives(u), 1)
        return counts

    def full_histories(self, length: int) -> torch.Tensor:
        """Every user's whole positive history (for serving): (U, L), as :meth:`histories`."""
        users = np.arange(self.num_users)
        return self.histories(users, np.asarray([len(s) for s in self.sequences]), length)


def load_leave_last_out(path: str | Path, min_rating: float = 4.0) -> LeaveLastOut:
    """:func:`read_interactions` then :meth:`LeaveLastOut.from_interactions`."""
    return LeaveLastOut.from_interactions(read_interactions(path), min_rating)


class ExampleCollate:
    """The training loop's ``collate(rows, rng)`` over the examples of a split: model inputs (see
    :meth:`LeaveLastOut.batch`) plus, with ``negatives > 0``, that many items drawn uniformly by the loop's
    step-seeded ``rng`` (the sampled softmax's negatives, the same again on resume)."""

    def __init__(self, data, split: str, history_length: int, negatives: int = 0):
        self.data, self.examples = data, data.examples(split)
        self.history_length, self.negatives = history_length, negatives

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> int:
        return i

    def __call__(self, rows: list[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = self.data.batch(self.examples, rows, self.history_length, seen=False)
        if self.negatives:
            batch["negatives"] = torch.from_numpy(rng.integers(0, self.data.num_items, size=self.negatives))
        return batch
