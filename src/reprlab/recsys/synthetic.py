"""A synthetic catalogue drawn from a known latent model, so that recall is measurable at any size.

The model (all of it seeded):

* ``T = num_items / items_per_topic`` topics, each a random unit vector ``e_z`` in ``R^F``; topic
  popularity ``~ 1 / rank^topic_zipf``; every item belongs to one topic (a random partition) with a
  weight ``w_v ~ 1 / rank^item_zipf`` inside it;
* a user likes ``favourites`` topics (drawn by popularity) with shares ``pi ~ Dirichlet(1)``, and is seen
  as features ``x = sum_z pi_z e_z + noise``;
* the user's item is drawn from ``p(v | user) = sum_z pi_z w_v / W_z`` over its topics (``W_z`` the topic's
  total weight).

Each example is a fresh user with one item, so the splits share no user and nothing is excluded at
ranking time. :meth:`SyntheticCatalogue.oracle_topk` ranks by the true ``p(v | user)``: its recall is the
ceiling any model can reach on these examples. The object has the interface of
:class:`~reprlab.recsys.data.LeaveLastOut` that training and :func:`~reprlab.recsys.metrics.evaluate` use
(``examples``, ``batch``, ``num_items``, ``popularity``); its user input is ``features``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reprlab.recsys.data import Examples


@dataclass
class SyntheticCatalogue:
    num_items: int
    train_examples: int
    eval_examples: int = 2000
    items_per_topic: int = 100
    feature_dim: int = 64
    favourites: int = 3
    topic_zipf: float = 0.8
    item_zipf: float = 1.0
    noise: float = 0.05
    seed: int = 0

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        n = self.num_items
        self.num_topics = t = max(1, n // self.items_per_topic)
        vectors = rng.standard_normal((t, self.feature_dim)).astype(np.float32)
        self.topic_vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (T, F)
        pop = 1.0 / np.arange(1, t + 1) ** self.topic_zipf
        self.topic_popularity = pop[rng.permutation(t)] / pop.sum()
        self.item_topic = rng.permutation(np.arange(n) % t)  # (N,) a random partition into topics
        order = np.argsort(self.item_topic, kind="stable")  # items grouped by topic
        self.topic_ptr = np.searchsorted(self.item_topic[order], np.arange(t + 1))
        rank_in_topic = np.arange(n) - self.topic_ptr[self.item_topic[order]]
        weight = np.empty(n)
        weight[order] = 1.0 / (rank_in_topic + 1.0) ** self.item_zipf
        self.item_weight = weight
        self.topic_items = order  # topic z's items are topic_items[topic_ptr[z]:topic_ptr[z+1]], heaviest first
        self.topic_total = np.add.reduceat(weight[order], self.topic_ptr[:-1])  # (T,)
        total = self.train_examples + 2 * self.eval_examples
        self.favourite, self.shares, self.features, self.targets = self._users(rng, total)
        self.num_users = total
        e = self.eval_examples
        self._ranges = {"train": (0, self.train_examples), "val": (self.train_examples, self.train_examples + e),
                        "test": (self.train_examples + e, total)}

    def _users(self, rng: np.random.Generator, count: int):
        fav = rng.choice(self.num_topics, size=(count, self.favourites), p=self.topic_popularity)  # (E, f)
        shares = rng.dirichlet(np.ones(self.favourites), size=count)  # (E, f)
        features = np.einsum("ef,efd->ed", shares, self.topic_vectors[fav])
        features += self.noise * rng.standard_normal(features.shape)
        topic = fav[np.arange(count), (rng.random((count, 1)) > np.cumsum(shares, 1)).sum(1).clip(
            max=self.favourites - 1)]  # (E,) one of the user's topics, by share
        start, stop = self.topic_ptr[topic], self.topic_ptr[topic + 1]
        members = self.topic_items
        cum = np.cumsum(self.item_weight[members])  # running weight over the topic-grouped items
        before = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        draw = before + rng.random(count) * (cum[stop - 1] - before)
        pos = np.minimum(np.searchsorted(cum, draw, side="right"), stop - 1)
        return fav, shares, features.astype(np.float32), members[pos].astype(np.int64)

    def examples(self, split: str) -> Examples:
        a, b = self._ranges[split]
        idx = np.arange(a, b, dtype=np.int64)
        return Examples(idx, self.targets[a:b], np.zeros(b - a, dtype=np.int64))

    def batch(self, examples: Examples, rows, length: int = 0, seen: bool = True) -> dict[str, torch.Tensor]:
        users = examples.users[np.asarray(rows, dtype=np.int64)]
        return {"users": torch.from_numpy(users), "features": torch.from_numpy(self.features[users]),
                "targets": torch.from_numpy(self.targets[users])}

    def popularity(self) -> np.ndarray:
        a, b = self._ranges["train"]
        return np.bincount(self.targets[a:b], minlength=self.num_items)

    def true_probabilities(self, user: int) -> np.ndarray:
        """p(v | user) over all items (N,): for tests."""
        p = np.zeros(self.num_items)
        for z, s in zip(self.favourite[user], self.shares[user]):
            members = self.topic_items[self.topic_ptr[z]:self.topic_ptr[z + 1]]
            p[members] += s * self.item_weight[members] / self.topic_total[z]
        return p

    def oracle_topk(self, split: str, k: int) -> np.ndarray:
        """The k items of highest true probability for each example of ``split``: (E, k)."""
        a, b = self._ranges[split]
        out = np.empty((b - a, k), dtype=np.int64)
        for row, user in enumerate(range(a, b)):
            cand, score = [], []
            for z, s in zip(self.favourite[user], self.shares[user]):
                members = self.topic_items[self.topic_ptr[z]:self.topic_ptr[z + 1]][:k]
                cand.append(members)
                score.append(s * self.item_weight[members] / self.topic_total[z])
            cand, score = np.concatenate(cand), np.concatenate(score)
            merged: dict[int, float] = {}
            for c, v in zip(cand.tolist(), score.tolist()):
                merged[c] = merged.get(c, 0.0) + v
            best = sorted(merged, key=lambda c: -merged[c])[:k]
            out[row] = best + [-1] * (k - len(best))
        return out
