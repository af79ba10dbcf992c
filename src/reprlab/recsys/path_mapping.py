"""Deep Retrieval's item -> path mapping: path codes, the inverse index, streaming scores and the M-step.

Gao et al., "Deep Retrieval: Learning A Retrievable Structure for Large-Scale Recommendations" (arXiv
2007.07203, CIKM 2021), section 3. The structure model is :mod:`reprlab.recsys.deep_retrieval`; this
module holds the discrete part of what is learned:

* A path ``c = (c_1 .. c_D)`` with ``c_d`` in ``0..K-1`` is stored as one integer code
  ``sum_d c_d K^(D-d)`` (:func:`path_codes`, :func:`code_paths`); an item has ``J`` distinct paths.
* :class:`PathIndex`: the inverse mapping path -> items (CSR), which serving reads after beam search.
* :class:`PathScores`: for each item v, up to ``S`` candidate paths with scores
  ``s[v, c] = sum over training pairs (x, v) of p(c | x)``, each pair contributing the top paths of a
  beam search for x. Scores decay by ``decay`` per training step (streaming training: recent
  versions of the model count more); the decay is applied lazily, when an item is touched.
* :func:`assign_paths`: the M-step, coordinate descent on
  ``sum_v log sum_j s[v, pi_j(v)] - alpha * sum_c f(|c|)`` with ``f(s) = s^4 / 4`` (the paper's
  Algorithm "coordinate descent with penalty"): for each item, for j = 1..J, the candidate path with
  the largest ``log(s_sum + s[v, c]) - alpha * (f(|c| + 1) - f(|c|))`` is taken (``s_sum`` the
  scores of the paths already chosen for v; ``|c|`` the items on path c), over ``iterations`` sweeps
  that first take the item off its paths. ``alpha = 0`` gives each item its J highest-scoring paths;
  a large ``alpha`` evens the path sizes out. Items with no candidates (never seen in training) keep
  the paths they have; an item with fewer than J candidates takes the least-used paths for the rest.
* ``explore`` (beyond the paper; 0 = the paper's M-step): the item's current paths and the least-used
  sibling of its best candidate (the same first D-1 nodes, so the beams that reach the crowded path
  reach it too) join its candidates with the score ``e = explore * max_c s[v, c]`` (a tie keeps the
  current path: the structure model has been trained on it), and the least-used path of all with
  ``e * explore`` (:func:`_free_paths`; without a width, at ``e`` and no sibling). Without it the penalty can only
  choose among the paths the users' beams already visit, and when those are all crowded (every item of
  a popular region shares them) it cannot spread anything: on a synthetic 10k-item catalogue with
  alpha 0.1 the largest path held 163 items while 97% of the paths stayed empty. With it an item leaves
  a path once ``alpha * (f(|c|+1) - f(|c|))`` exceeds ``-log(explore)`` plus the free path's own
  penalty; the structure model then learns the new path from the item's training pairs. Offering
  only the least-used path made 95% of the items move at every M-step on the synthetic catalogues
  (an item whose path no beam had reached yet lost it to a fresh empty one).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch


def path_codes(paths: torch.Tensor, width: int) -> torch.Tensor:
    """(..., D) node indices -> (...) integer codes (``sum_d c_d K^(D-d)``)."""
    depth = paths.shape[-1]
    weights = width ** torch.arange(depth - 1, -1, -1, device=paths.device)  # (D,)
    return (paths * weights).sum(-1)


def code_paths(codes: torch.Tensor, depth: int, width: int) -> torch.Tensor:
    """(...) codes -> (..., D) node indices; the inverse of :func:`path_codes`."""
    weights = width ** torch.arange(depth - 1, -1, -1, device=codes.device)  # (D,)
    return (codes.unsqueeze(-1) // weights) % width


def random_paths(num_items: int, paths_per_item: int, depth: int, width: int, seed: int) -> torch.Tensor:
    """A random mapping (N, J, D) in which each item's J paths are distinct (the paper starts from one)."""
    num_paths = width ** depth
    if paths_per_item > num_paths:
        raise ValueError(f"{paths_per_item} paths per item but only {num_paths} paths")
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(num_paths, (num_items, paths_per_item), generator=g)
    for j in range(1, paths_per_item):  # move a repeated path to the next free code
        while True:
            dup = (codes[:, j:j + 1] == codes[:, :j]).any(1)
            if not dup.any():
                break
            codes[dup, j] = (codes[dup, j] + 1) % num_paths
    return code_paths(codes, depth, width)


def penalty(size: float) -> float:
    """The paper's size penalty ``f(s) = s^4 / 4``."""
    return size ** 4 / 4.0


def penalty_gain(size: int) -> float:
    """What one more item costs on a path of ``size`` items: ``f(size + 1) - f(size)``."""
    return penalty(size + 1) - penalty(size)


def path_sizes(codes: torch.Tensor, num_paths: int) -> torch.Tensor:
    """Items per path (P,) of a mapping given as codes (N, J)."""
    return torch.bincount(codes.reshape(-1), minlength=num_paths)


def path_statistics(codes: torch.Tensor, num_paths: int) -> dict[str, float]:
    """Largest path, mean size of the non-empty paths, number of empty paths, share of paths used."""
    sizes = path_sizes(codes, num_paths)
    used = sizes > 0
    return {"path_max": int(sizes.max()), "path_mean": float(sizes[used].float().mean()) if used.any() else 0.0,
            "paths_empty": int((~used).sum()), "paths_used": int(used.sum()) / num_paths}


class PathIndex:
    """The inverse mapping: for each path code the items on it (CSR: ``items[ptr[c]:ptr[c+1]]``)."""

    def __init__(self, codes: torch.Tensor, num_paths: int):
        codes = codes.cpu()
        flat = codes.reshape(-1)  # (N * J,)
        order = torch.argsort(flat, stable=True)
        self.items = order // codes.shape[1]  # item of each slot, grouped by path
        self.ptr = torch.zeros(num_paths + 1, dtype=torch.long)
        self.ptr[1:] = torch.cumsum(torch.bincount(flat, minlength=num_paths), 0)
        self.num_paths = num_paths

    def gather(self, paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The items on the paths (U, B) (codes): flat ``(row, beam slot, item)`` triples."""
        paths = paths.cpu()
        start, stop = self.ptr[paths], self.ptr[paths + 1]  # (U, B)
        counts = (stop - start).reshape(-1)  # (U * B,)
        slot = torch.repeat_interleave(torch.arange(counts.numel()), counts)  # (T,)
        offsets = torch.arange(slot.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        items = self.items[start.reshape(-1)[slot] + offsets]
        width = paths.shape[1]
        return slot // width, slot % width, items


class PathScores:
    """Streaming candidate paths and scores per item (see the module docstring): ``codes`` (N, S), -1 = empty;
    ``scores`` (N, S) float64; ``last`` (N,) the step each item's scores were last decayed to."""

    def __init__(self, num_items: int, num_paths: int, candidates: int, decay: float):
        self.num_paths, self.candidates, self.decay = num_paths, candidates, decay
        self.codes = torch.full((num_items, candidates), -1, dtype=torch.long)
        self.scores = torch.zeros(num_items, candidates, dtype=torch.float64)
        self.last = torch.zeros(num_items, dtype=torch.long)

    def _decay_to(self, items: torch.Tensor, step: int) -> None:
        factor = self.decay ** (step - self.last[items]).double()  # (u,)
        self.scores[items] *= factor[:, None]
        self.last[items] = step

    def add(self, items: torch.Tensor, codes: torch.Tensor, probs: torch.Tensor, step: int) -> None:
        """Add ``probs`` (E, B) of paths ``codes`` (E, B) to the scores of ``items`` (E,) at ``step``: equal codes
        add up, and each item keeps its ``S`` best candidates (ties: the lower code)."""
        items, codes, probs = items.cpu(), codes.cpu(), probs.detach().double().cpu()
        rows_items, inverse = torch.unique(items, return_inverse=True)  # (u,), (E,)
        self._decay_to(rows_items, step)
        u, s, b = len(rows_items), self.candidates, codes.shape[1]
        row = torch.cat([torch.arange(u).repeat_interleave(s), inverse.repeat_interleave(b)])
        code = torch.cat([self.codes[rows_items].reshape(-1), codes.reshape(-1)])
        value = torch.cat([self.scores[rows_items].reshape(-1), probs.reshape(-1)])
        keep = code >= 0
        key = row[keep] * self.num_paths + code[keep]
        unique_keys, where = torch.unique(key, return_inverse=True)
        summed = torch.zeros(len(unique_keys), dtype=torch.float64).index_add_(0, where, value[keep])
        r, c = unique_keys // self.num_paths, unique_keys % self.num_paths
        order = torch.argsort(-summed, stable=True)  # best first; equal scores keep the lower code first
        order = order[torch.argsort(r[order], stable=True)]  # grouped by row, best first inside a row
        r, c, summed = r[order], c[order], summed[order]
        position = torch.arange(len(r)) - torch.searchsorted(r, r)  # rank inside the row
        kept = position < s
        new_codes = torch.full((u, s), -1, dtype=torch.long)
        new_scores = torch.zeros(u, s, dtype=torch.float64)
        new_codes[r[kept], position[kept]] = c[kept]
        new_scores[r[kept], position[kept]] = summed[kept]
        self.codes[rows_items], self.scores[rows_items] = new_codes, new_scores

    def current(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scores) with every item's scores decayed to ``step``."""
        self._decay_to(torch.arange(len(self.last)), step)
        return self.codes, self.scores

    def state_dict(self) -> dict:
        return {"codes": self.codes.clone(), "scores": self.scores.clone(), "last": self.last.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("codes", "scores", "last"):
            if tuple(state[name].shape) != tuple(getattr(self, name).shape):
                raise ValueError(f"path scores {name}: shape {tuple(state[name].shape)} does not fit "
                                 f"{tuple(getattr(self, name).shape)}")
            setattr(self, name, state[name].clone())


class _Smallest:
    """The least-used path not in a given set, under size changes (a heap with lazy deletion)."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.heap = [(s, c) for c, s in enumerate(sizes)]
        heapq.heapify(self.heap)

    def changed(self, code: int) -> None:
        heapq.heappush(self.heap, (self.sizes[code], code))

    def pop_not_in(self, taken) -> int:
        held = []
        while True:
            size, code = heapq.heappop(self.heap)
            if size != self.sizes[code]:
                continue  # stale entry
            if code in taken:
                held.append((size, code))
                continue
            for entry in held:
                heapq.heappush(self.heap, entry)
            heapq.heappush(self.heap, (size, code))  # it stays a path; its size changes when it is used
            return code


def _free_paths(cand: list, chosen: list[int], current: list[int], sizes: list[int], smallest: _Smallest,
                score: float, width: int, explore: float) -> list[tuple[int, float]]:
    """What ``explore`` offers an item beside its candidates ``cand`` [(code, score)], as [(code, score)]: its
    ``current`` paths and, with ``width`` > 0, the least-used sibling of its best candidate (same first D-1
    nodes; skipped when that sibling is a candidate or chosen already) at ``score``; the least-used path of all at
    ``score`` (``width`` 0) or ``score * explore`` (``width`` > 0: a far path only wins when the near ones are
    crowded too)."""
    taken = set(chosen).union(c for c, _ in cand)
    extra = [(c, score) for c in current if c not in taken]
    far = score
    if width:
        base = max(cand, key=lambda cs: cs[1])[0] // width * width  # the best candidate's first sibling
        segment = sizes[base:base + width]
        sibling = base + segment.index(min(segment))
        if sibling not in taken and all(sibling != c for c, _ in extra):
            extra.append((sibling, score))
        far = score * explore
    taken.update(c for c, _ in extra)
    if len(taken) < len(sizes):
        extra.append((smallest.pop_not_in(taken), far))
    return extra


def assign_paths(codes: torch.Tensor, scores: torch.Tensor, current: torch.Tensor, num_paths: int,
                 alpha: float = 0.0, iterations: int = 1, explore: float = 0.0, width: int = 0) -> torch.Tensor:
    """The M-step (see the module docstring): candidate ``codes`` / ``scores`` (N, S), the ``current``
    mapping as codes (N, J) -> the new mapping as codes (N, J). ``explore`` > 0 adds the item's current paths, the
    least-used sibling of its best candidate (``width`` K > 0) and the least-used path (:func:`_free_paths`)."""
    n, paths_per_item = current.shape
    codes_np, scores_np = codes.cpu().numpy(), scores.cpu().numpy()
    assigned = current.cpu().numpy().copy()
    current_np = assigned.copy().tolist()  # (N, J) the mapping before this M-step
    has = (codes_np >= 0).any(1)
    sizes = [0] * num_paths
    for v in np.flatnonzero(~has):  # items without candidates keep their paths
        for c in assigned[v].tolist():
            sizes[c] += 1
    smallest = _Smallest(sizes)
    learn = np.flatnonzero(has).tolist()
    for sweep in range(iterations):
        for v in learn:
            if sweep > 0:
                for c in assigned[v].tolist():
                    sizes[c] -= 1
                    smallest.changed(c)
            cand = [(c, s) for c, s in zip(codes_np[v].tolist(), scores_np[v].tolist()) if c >= 0]
            free_score = explore * max(s for _, s in cand)
            chosen: list[int] = []
            s_sum = 0.0
            for _ in range(paths_per_item):
                best, best_gain, best_score = -1, -math.inf, 0.0
                for c, s in cand:
                    if c in chosen:
                        continue
                    gain = math.log(s_sum + s) if s_sum + s > 0 else -math.inf
                    if alpha:
                        gain -= alpha * penalty_gain(sizes[c])
                    if gain > best_gain:
                        best, best_gain, best_score = c, gain, s
                if free_score > 0:  # the paths outside the candidates (in this order: a tie keeps the current one)
                    for c, s in _free_paths(cand, chosen, current_np[v], sizes, smallest, free_score, width, explore):
                        gain = math.log(s_sum + s) - alpha * penalty_gain(sizes[c])
                        if gain > best_gain:
                            best, best_gain, best_score = c, gain, s
                if best < 0:
                    best, best_score = smallest.pop_not_in(chosen), 0.0
                chosen.append(best)
                sizes[best] += 1
                smallest.changed(best)
                s_sum += best_score
            assigned[v] = chosen
    return torch.from_numpy(assigned)
