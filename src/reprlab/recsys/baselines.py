"""The baselines Deep Retrieval is compared with, on the same examples and the same exclusion of seen items.

* :func:`popularity_topk`: the most frequent training positives.
* :class:`ImplicitPeer`: the ``implicit`` library's ALS (Hu, Koren, Volinsky 2008; the user's factors are
  recomputed from the example's history, as for a new session) or BPR (its trained user factors), fit
  on the training positives; an optional dependency (``pip install 'reprlab[recsys]'``).
* :class:`IVFTwoTower`: FAISS IVF over a two-tower model's item vectors (with the bias as one more
  coordinate, so the inner product is the model's score); ``nprobe`` lists are scanned, and the items
  scored are the centroids plus the items of the scanned lists.
"""

from __future__ import annotations

import numpy as np
import torch

from reprlab.errors import require
from reprlab.recsys.two_tower import TwoTower, exclude_history


def popularity_topk(counts: np.ndarray, batch: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most popular items not in each user's history: ((B, k), items scored (B,) = N)."""
    n = len(counts)
    order = torch.from_numpy(np.argsort(-counts, kind="stable"))
    b = len(batch["targets"])
    width = min(n, k + (batch["seen"].shape[1] if "seen" in batch else 0))
    cand = order[:width].expand(b, width)  # (B, W): enough to fill k after removing the history
    drop = exclude_history(cand, batch)
    rank = torch.arange(width, dtype=torch.float32).expand(b, width).masked_fill(drop, float("inf"))
    top = cand.gather(1, rank.argsort(dim=1, stable=True)[:, :k])
    return top, torch.full((b,), n)


def _csr(rows: list[np.ndarray], num_items: int):
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    return csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), num_items))


def user_item_matrix(data):
    """The training positives of every user as a CSR matrix (U, N) of ones."""
    return _csr([data.train_positives(u) for u in range(data.num_users)], data.num_items)


class ImplicitPeer:
    """``implicit``'s ALS or BPR fit on the training positives of a :class:`~reprlab.recsys.data.LeaveLastOut`."""

    def __init__(self, kind: str = "als", factors: int = 64, iterations: int = 15, regularization: float = 0.01,
                 alpha: float = 1.0, learning_rate: float = 0.01, threads: int = 1, seed: int = 0):
        require("implicit", extra="recsys")
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits  # implicit's own advice: no BLAS threads under its loops

        if kind not in ("als", "bpr"):
            raise ValueError(f"kind must be als or bpr, got {kind!r}")
        with threadpool_limits(1, "blas"):
            if kind == "als":
                self.model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                                     iterations=iterations, num_threads=threads, random_state=seed)
            else:
                self.model = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate,
                                                         regularization=regularization, iterations=iterations,
                                                         num_threads=threads, random_state=seed)
        self.kind = kind

    def fit(self, data) -> "ImplicitPeer":
        from threadpoolctl import threadpool_limits

        self.data = data
        with threadpool_limits(1, "blas"):
            self.model.fit(user_item_matrix(data), show_progress=False)
        return self

    def topk(self, batch: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        users = batch["users"].numpy()
        history = batch["seen"].numpy()  # (B, L), item + 1, 0 = pad: the example's whole history
        seen = _csr([row[row > 0] - 1 for row in history], self.data.num_items)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            ids, _ = self.model.recommend(users, seen, N=k, filter_already_liked_items=True,
                                          recalculate_user=self.kind == "als")
        return torch.from_numpy(np.asarray(ids, dtype=np.int64)), torch.full((len(users),), self.data.num_items)


class IVFTwoTower:
    """FAISS ``IndexIVFFlat`` (inner product) over a :class:`~reprlab.recsys.two_tower.TwoTower`'s items."""

    def __init__(self, model: TwoTower, nlist: int, seed: int = 0):
        faiss = require("faiss", extra="recsys", package="faiss-cpu")
        self.model = model
        vectors = np.ascontiguousarray(model.item_matrix().cpu().numpy(), dtype=np.float32)  # (N, d)
        self.quantizer = faiss.IndexFlatIP(vectors.shape[1])
        self.index = faiss.IndexIVFFlat(self.quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed
        self.index.train(vectors)
        self.index.add(vectors)
        invlists = self.index.invlists
        self.list_sizes = np.asarray([invlists.list_size(i) for i in range(nlist)], dtype=np.int64)
        self.nlist = nlist

    @torch.no_grad()
    def topk(self, batch: dict[str, torch.Tensor], k: int, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = np.ascontiguousarray(self.model.query_matrix(batch).cpu().numpy(), dtype=np.float32)
        self.index.nprobe = nprobe
        extra = batch["seen"].shape[1] if "seen" in batch else 0
        _, ids = self.index.search(queries, k + extra)  # (B, k + L), -1 where fewer were found
        _, lists = self.quantizer.search(queries, nprobe)  # the scanned lists
        scored = self.nlist + self.list_sizes[lists].sum(1)
        cand = torch.from_numpy(ids.astype(np.int64))
        drop = exclude_history(cand.clamp(min=0), batch) | (cand < 0)
        rank = torch.arange(cand.shape[1], dtype=torch.float32).expand_as(cand).masked_fill(drop, float("inf"))
        order = rank.argsort(dim=1, stable=True)[:, :k]
        top = cand.gather(1, order).masked_fill(rank.gather(1, order) == float("inf"), -1)
        return top, torch.from_numpy(scored)
