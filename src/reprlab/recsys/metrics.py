"""Top-k metrics with one held-out target per example (leave-last-out), and the shared evaluation loop.

With one relevant item per example, recall@k is the hit rate (is the target among the top k?) and
NDCG@k is ``1 / log2(rank + 1)`` when the target is at ``rank <= k``, else 0 (the ideal DCG is 1).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

KS = (10, 20, 50)


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row of ``topk`` (E, k); 0 where it is not there."""
    hit = topk == targets[:, None]  # (E, k)
    return np.where(hit.any(1), hit.argmax(1) + 1, 0)


def topk_metrics(topk: np.ndarray, targets: np.ndarray, ks: Sequence[int] = KS, ndcg_at: int = 10) -> dict[str, float]:
    """recall@k for each k and NDCG@``ndcg_at``, averaged over the examples."""
    ranks = target_ranks(np.asarray(topk), np.asarray(targets))
    out = {f"recall@{k}": float(((ranks > 0) & (ranks <= k)).mean()) for k in ks}
    gain = np.where((ranks > 0) & (ranks <= ndcg_at), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)
    out[f"ndcg@{ndcg_at}"] = float(gain.mean())
    return out


def exclude_mask(candidates: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """True where ``candidates`` (B, M) item indices are among ``seen`` (B, L) (item index + 1, 0 = pad)."""
    num = int(max(candidates.max().item() if candidates.numel() else 0, seen.max().item() if seen.numel() else 0)) + 2
    rows = torch.arange(len(candidates))[:, None]
    keys = rows * num + candidates + 1  # (B, M)
    seen_keys = torch.where(seen > 0, rows * num + seen, -1)  # (B, L)
    return torch.isin(keys, seen_keys)


def evaluate(recommend: Callable[[dict], tuple[torch.Tensor, torch.Tensor]], data, split: str, *, k: int = 50,
             batch_size: int = 256, history_length: int = 50, ks: Sequence[int] = KS,
             max_examples: int | None = None) -> dict[str, float]:
    """Run ``recommend(batch) -> (top-k item indices (B, k), items scored (B,))`` over the examples of
    ``split`` of a :class:`~reprlab.recsys.data.LeaveLastOut` and return the metrics, the mean items
    scored per user and the seconds per 1,000 users of this pass."""
    examples = data.examples(split)
    n = len(examples) if max_examples is None else min(max_examples, len(examples))
    batches = [data.batch(examples, range(s, min(n, s + batch_size)), history_length) for s in range(0, n, batch_size)]
    tops, scored = [], []
    start = time.perf_counter()  # the recommender's time only, not the building of its inputs
    for batch in batches:
        top, count = recommend(batch)
        tops.append(top[:, :k].cpu().numpy())
        scored.append(count.cpu().numpy())
    seconds = time.perf_counter() - start
    out = topk_metrics(np.concatenate(tops), examples.targets[:n], ks)
    out.update(items_scored=float(np.concatenate(scored).mean()), users=n, seconds_per_1000=1000 * seconds / max(n, 1))
    return out
