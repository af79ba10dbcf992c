"""Deep Retrieval (DR): a learnable path structure over the items, searched with beam search.

Gao, Fan, Wang, Sun, Jia, Xiao, Ding, Bin, Yang, Liu, "Deep Retrieval: Learning A Retrievable
Structure for Large-Scale Recommendations" (ICLR 2021 submission, arXiv 2007.07203; CIKM 2021).
No maintained official code; this is a reference PyTorch implementation (PaddleRec's port has a beam
bug: the parent of a flattened beam candidate is ``index // K`` and its node ``index % K``, not
``index % beam``).

What it computes:

* **Structure model.** D layers of K nodes. A user representation ``x`` (:mod:`reprlab.recsys.encoders`)
  gives a distribution over the ``K^D`` paths ``c = (c_1 .. c_D)``::

      p(c | x) = prod_d softmax_K( MLP_d([x; e_1(c_1); ...; e_{d-1}(c_{d-1})]) )[c_d]

  with an embedding table ``e_d`` of the K nodes of layer d.
* **Items on paths.** Each item v is mapped to J distinct paths ``pi_1(v) .. pi_J(v)`` (the buffer
  ``item_paths`` (N, J, D), saved with the weights). Training maximises, over observed pairs (x, y),
  ``log sum_j p(pi_j(y) | x)`` (:meth:`DeepRetrieval.structure_loss` returns its negative mean); the
  mapping is learned by the M-step of :mod:`reprlab.recsys.path_mapping`, run by the recipe.
* **Serving.** Beam search keeps the B partial paths of highest probability (a product, summed in
  logs) layer by layer (:func:`beam_search`; the plain loop :func:`beam_search_reference` and the
  exhaustive :func:`exhaustive_search` are its references); the items on the B final paths are the
  candidates, reranked by a softmax model over items trained jointly with a sampled softmax
  (:meth:`DeepRetrieval.rerank_loss`), and the top k are returned (:func:`retrieve`, reference
  :func:`retrieve_reference`). The reranker reads the user either through the structure model's tower
  (``rerank_tower="shared"``: a linear map of x, so both losses train that tower) or through its own
  :class:`~reprlab.recsys.encoders.UserEncoder` (``"own"``: the reranker is then a two-tower model trained
  beside the structure model on the same batches; neither loss reaches the other's tower), or ``"both"``: the own
  tower reranks, and the shared head (a linear map of x and its own item table) is kept as a training-only
  loss on the structure model's tower. Without the reranker, candidates are ordered by the summed probability
  of their retrieved paths (ties: by ``prior``, e.g. training popularity).

>>> model = DeepRetrieval(DRModelConfig(num_items=20, depth=2, width=4, user_input="user", num_users=3))
>>> x = model.encode({"users": torch.tensor([0, 1])})
>>> paths, log_p = beam_search(model, x, beam=5)
>>> tuple(paths.shape), tuple(log_p.shape)
((2, 5, 2), (2, 5))
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.recsys.encoders import USER_INPUTS, UserEncoder
from reprlab.recsys.metrics import exclude_mask
from reprlab.recsys.path_mapping import PathIndex, path_codes, random_paths

RERANK_TOWERS = ("shared", "own", "both")


@dataclass
class DRModelConfig:
    """The model's shape (``config.json`` of a model folder)."""

    num_items: int
    depth: int = 2  # D
    width: int = 41  # K
    paths_per_item: int = 1  # J
    user_input: str = "history"
    num_users: int = 0
    feature_dim: int = 0
    dim: int = 64
    hidden: int = 128
    node_dim: int = 16
    reranker: bool = True
    seed: int = 0  # of the initial random mapping
    rerank_tower: str = "shared"  # the reranker's user tower: the structure model's ("shared"), its "own", or
    # "both" (its own reranks; the shared head trains the structure tower as an auxiliary loss)

    def __post_init__(self):
        if self.user_input not in USER_INPUTS:
            raise ValueError(f"user_input must be one of {', '.join(USER_INPUTS)}, got {self.user_input!r}")
        if self.rerank_tower not in RERANK_TOWERS:
            raise ValueError(f"rerank_tower must be one of {', '.join(RERANK_TOWERS)}, got {self.rerank_tower!r}")
        if min(self.num_items, self.depth, self.width, self.paths_per_item, self.dim, self.hidden, self.node_dim) < 1:
            raise ValueError(f"every size must be positive: {self}")
        if self.paths_per_item > self.num_paths:
            raise ValueError(f"J = {self.paths_per_item} paths per item but only K^D = {self.num_paths} paths")

    @property
    def num_paths(self) -> int:
        return self.width ** self.depth

    @property
    def own_tower(self) -> bool:
        """The reranker reads the user through its own tower (not the structure model's x)."""
        return self.reranker and self.rerank_tower in ("own", "both")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DRModelConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


class DeepRetrieval(nn.Module):
    """The structure model, the item -> path mapping (a buffer) and the jointly trained reranker."""

    def __init__(self, config: DRModelConfig):
        super().__init__()
        c = self.config = config
        self.user = UserEncoder(c.user_input, c.dim, c.hidden, c.num_items, c.num_users, c.feature_dim)
        self.nodes = nn.ModuleList([nn.Embedding(c.width, c.node_dim) for _ in range(c.depth - 1)])
        self.layers = nn.ModuleList([_mlp(c.dim + d * c.node_dim, c.hidden, c.width) for d in range(c.depth)])
        self.register_buffer("item_paths", random_paths(c.num_items, c.paths_per_item, c.depth, c.width, c.seed))
        if c.own_tower:  # a second user tower, as the two-tower baseline's: u = tower(batch)
            self.rerank_tower = UserEncoder(c.user_input, c.dim, c.hidden, c.num_items, c.num_users, c.feature_dim)
        elif c.reranker:  # u = W x + b on the structure model's x
            self.rerank_user = nn.Linear(c.dim, c.dim)
        if c.reranker and c.rerank_tower == "both":  # the shared head, a training-only loss on x
            self.aux_user = nn.Linear(c.dim, c.dim)
            self.aux_item_vectors = nn.Embedding(c.num_items, c.dim)
            nn.init.normal_(self.aux_item_vectors.weight, std=0.1)
            self.aux_item_bias = nn.Parameter(torch.zeros(c.num_items))
        if c.reranker:
            self.item_vectors = nn.Embedding(c.num_items, c.dim)
            nn.init.normal_(self.item_vectors.weight, std=0.1)
            self.item_bias = nn.Parameter(torch.zeros(c.num_items))

    # ------------------------------------------------------------------ the structure model

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The user representation x: (B, dim)."""
        return self.user(batch)

    def layer_log_probs(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """log p(c_d = . | x, c_1..c_{d-1}) for d = ``prefix.shape[1]`` + 1: x (B, dim), prefix (B, d-1) -> (B, K)."""
        d = prefix.shape[1]
        parts = [x] + [self.nodes[i](prefix[:, i]) for i in range(d)]  # (B, dim), d x (B, node_dim)
        return F.log_softmax(self.layers[d](torch.cat(parts, -1)), dim=-1)

    def path_log_probs(self, x: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        """log p(c | x) of whole paths: x (B, dim), paths (B, P, D) -> (B, P)."""
        b, p, depth = paths.shape
        xe = x.unsqueeze(1).expand(b, p, x.shape[-1]).reshape(b * p, -1)  # (B*P, dim)
        flat = paths.reshape(b * p, depth)  # (B*P, D)
        total = torch.zeros(b * p, device=x.device, dtype=x.dtype)
        for d in range(depth):
            total = total + self.layer_log_probs(xe, flat[:, :d]).gather(1, flat[:, d:d + 1]).squeeze(1)
        return total.reshape(b, p)

    def structure_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-mean over the batch of ``log sum_j p(pi_j(y) | x)``: x (B, dim), targets (B,)."""
        log_p = self.path_log_probs(x, self.item_paths[targets])  # (B, J)
        return -torch.logsumexp(log_p, dim=1).mean()

    # ------------------------------------------------------------------ the reranker

    def rerank_input(self, batch: dict[str, torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """What the reranker reads of the batch's users, r (B, dim): its own tower's output (``rerank_tower``
        "own"), else the structure model's x (``x`` when given, else encoded)."""
        if self.config.own_tower:
            return self.rerank_tower(batch)
        return self.encode(batch) if x is None else x

    def _rerank_vector(self, r: torch.Tensor) -> torch.Tensor:
        return r if self.config.own_tower else self.rerank_user(r)  # (B, dim)

    def rerank_scores(self, r: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Softmax-model logits of ``items`` (B, M) for users r (B, dim) (:meth:`rerank_input`) -> (B, M)."""
        u = self._rerank_vector(r)  # (B, dim)
        return torch.einsum("bmd,bd->bm", self.item_vectors(items), u) + self.item_bias[items]

    def rerank_loss(self, r: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        """Sampled softmax for users r (B, dim) (:meth:`rerank_input`): the target against ``negatives`` (S,)
        shared by the batch (a negative equal to the target is masked out); ``None``: the full softmax."""
        return _softmax_loss(self._rerank_vector(r), self.item_vectors, self.item_bias, targets, negatives)

    def aux_loss(self, x: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        """``rerank_tower="both"``: the shared head's sampled softmax on the structure model's x (B, dim), with its
        own item table; it trains the structure tower as the shared reranker would, and ranks nothing."""
        return _softmax_loss(self.aux_user(x), self.aux_item_vectors, self.aux_item_bias, targets, negatives)

    def forward(self, batch: dict[str, torch.Tensor], rerank_weight: float = 1.0):
        """The training objective of a batch: (loss, metrics, x). ``batch["negatives"]`` (S,) are the sampled
        softmax's negatives (absent: the full softmax)."""
        x = self.encode(batch)
        structure = self.structure_loss(x, batch["targets"])
        metrics = {"structure_loss": float(structure.detach())}
        loss = structure
        if self.config.reranker and rerank_weight:
            rerank = self.rerank_loss(self.rerank_input(batch, x), batch["targets"], batch.get("negatives"))
            metrics["rerank_loss"] = float(rerank.detach())
            loss = loss + rerank_weight * rerank
            if self.config.rerank_tower == "both":
                aux = self.aux_loss(x, batch["targets"], batch.get("negatives"))
                metrics["aux_loss"] = float(aux.detach())
                loss = loss + rerank_weight * aux
        return loss, metrics, x


def _softmax_loss(u: torch.Tensor, vectors: nn.Embedding, bias: torch.Tensor, targets: torch.Tensor,
                  negatives: torch.Tensor | None) -> torch.Tensor:
    """Softmax over items of users u (B, dim): the full one (``negatives`` None), or the target against the
    batch's shared ``negatives`` (S,), a negative equal to the target masked out."""
    if negatives is None:
        return F.cross_entropy(u @ vectors.weight.T + bias, targets)  # (B, N) logits
    positive = (u * vectors(targets)).sum(-1) + bias[targets]  # (B,)
    negative = u @ vectors(negatives).T + bias[negatives]  # (B, S)
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive[:, None], negative], 1)  # (B, 1 + S), the target first
    return F.cross_entropy(logits, torch.zeros_like(targets))


# ----------------------------------------------------------------------------- beam search


def _first_layer_shares(model: DeepRetrieval, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """The first linear layer of MLP_d split by its input blocks: ``W [x; e(c_1); ..] + b = (W_x x + b) + sum_i
    W_i e(c_i)``. Per layer: x's share (U, hidden), and for each earlier layer i a table of its nodes' shares
    ``W_i e_i(.)`` (K, hidden), so that a beam's hidden layer is a sum of rows instead of a product."""
    dim, node_dim = model.config.dim, model.config.node_dim
    out = []
    for d, layer in enumerate(model.layers):
        first = layer[0]
        w = first.weight  # (hidden, dim + d * node_dim)
        base = x @ w[:, :dim].T + first.bias  # (U, hidden)
        tables = [model.nodes[i].weight @ w[:, dim + i * node_dim:dim + (i + 1) * node_dim].T  # (K, hidden)
                  for i in range(d)]
        out.append((base, tables))
    return out


@torch.no_grad()
def beam_search(model: DeepRetrieval, x: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``beam`` most probable paths found layer by layer: x (U, dim) -> paths (U, b, D), log p (U, b), best
    first, ``b = min(beam, K^D)``. The first linear layer of each MLP is evaluated by blocks
    (:func:`_first_layer_shares`); :func:`beam_search_reference` evaluates the MLPs as written."""
    u, k = x.shape[0], model.config.width
    shares = _first_layer_shares(model, x)

    def log_probs(d: int, paths: torch.Tensor) -> torch.Tensor:  # paths (U, b, d) -> (U, b, K)
        base, tables = shares[d]
        hidden = base.unsqueeze(1).expand(-1, paths.shape[1], -1)  # (U, b, hidden)
        for i, table in enumerate(tables):
            hidden = hidden + table[paths[..., i]]
        return F.log_softmax(model.layers[d][2](torch.relu(hidden)), dim=-1)

    first = log_probs(0, x.new_zeros(u, 1, 0, dtype=torch.long))[:, 0]  # (U, K)
    scores, nodes = first.topk(min(beam, k), dim=1)  # (U, b)
    paths = nodes.unsqueeze(-1)  # (U, b, 1)
    for d in range(1, model.config.depth):
        b = paths.shape[1]
        total = (scores.unsqueeze(-1) + log_probs(d, paths)).reshape(u, b * k)  # (U, b*K)
        scores, flat = total.topk(min(beam, b * k), dim=1)  # (U, b')
        parent, node = flat // k, flat % k  # the beam each candidate extends, and its node
        paths = torch.cat([paths.gather(1, parent.unsqueeze(-1).expand(-1, -1, d)), node.unsqueeze(-1)], -1)
    return paths, scores


@torch.no_grad()
def beam_search_reference(model: DeepRetrieval, x: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`beam_search` one user and one partial path at a time (the plain reference of the tests)."""
    out_paths, out_scores = [], []
    for row in range(x.shape[0]):
        beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
        for _ in range(model.config.depth):
            grown = []
            for score, prefix in beams:
                log_p = model.layer_log_probs(x[row:row + 1], torch.tensor([prefix], dtype=torch.long).reshape(1, -1))
                grown += [(score + float(log_p[0, c]), prefix + (c,)) for c in range(model.config.width)]
            beams = sorted(grown, key=lambda t: (-t[0], t[1]))[:beam]
        out_paths.append([p for _, p in beams])
        out_scores.append([s for s, _ in beams])
    return torch.tensor(out_paths, dtype=torch.long), torch.tensor(out_scores)


@torch.no_grad()
def exhaustive_search(model: DeepRetrieval, x: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` most probable of all ``K^D`` paths, each scored in full: (U, top, D), (U, top)."""
    c = model.config
    every = torch.tensor(list(itertools.product(range(c.width), repeat=c.depth)), dtype=torch.long)  # (K^D, D)
    log_p = model.path_log_probs(x, every.unsqueeze(0).expand(x.shape[0], -1, -1))  # (U, K^D)
    scores, idx = log_p.topk(min(top, len(every)), dim=1)
    return every[idx], scores


# ----------------------------------------------------------------------------- retrieval


def _reranker_input(model: DeepRetrieval, x: torch.Tensor, rerank_x: torch.Tensor | None) -> torch.Tensor:
    if rerank_x is not None:
        return rerank_x
    if model.config.own_tower:
        raise ValueError("this model's reranker has its own user tower: pass rerank_x=model.rerank_input(batch)")
    return x


def _order(scores: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """Column order of ``scores`` (U, M), best first; equal scores by ``prior`` (U, M), higher first."""
    if prior is None:
        return torch.argsort(scores, dim=1, descending=True, stable=True)
    first = torch.argsort(prior, dim=1, descending=True, stable=True)
    return first.gather(1, torch.argsort(scores.gather(1, first), dim=1, descending=True, stable=True))


def within_budget(index: PathIndex, codes: torch.Tensor, budget: int) -> torch.Tensor:
    """Which of each user's paths (U, b) (codes, best first) are served under an item budget: paths are taken
    best first while the items on the paths taken so far fit in ``budget``; the best path always is. An item on
    two taken paths (J > 1) counts twice, so the distinct items never exceed the budget (but the best path's)."""
    sizes = index.ptr[codes + 1] - index.ptr[codes]  # (U, b) items on each path
    keep = torch.cumsum(sizes, dim=1) <= budget
    keep[:, 0] = True
    return keep


@torch.no_grad()
def beam_candidates(model: DeepRetrieval, index: PathIndex, x: torch.Tensor, beam: int,
                    budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The items on the ``beam`` paths found for users x (U, dim) (with ``budget``: only the paths
    :func:`within_budget` keeps): candidates (U, M) (each user's distinct items in item order, -1 = padding),
    the summed probability of the retrieved paths each lies on (U, M), and the number of candidates (U,)."""
    u, n = x.shape[0], model.config.num_items
    paths, log_p = beam_search(model, x, beam)  # (U, b, D), (U, b)
    codes = path_codes(paths, model.config.width).cpu()  # (U, b)
    row, slot, items = index.gather(codes)  # (T,) each
    if budget is not None:
        taken = within_budget(index, codes, budget)[row, slot]  # (T,)
        row, slot, items = row[taken], slot[taken], items[taken]
    key = row * n + items
    unique_keys, where = torch.unique(key, return_inverse=True)  # grouped by row, then item
    prob = torch.zeros(len(unique_keys), dtype=log_p.dtype).index_add_(0, where, log_p.exp().cpu()[row, slot])
    r, item = unique_keys // n, unique_keys % n
    counts = torch.bincount(r, minlength=u)  # (U,) items scored
    width = max(int(counts.max()) if len(r) else 0, 1)
    position = torch.arange(len(r)) - torch.searchsorted(r, r)
    cand = torch.full((u, width), -1, dtype=torch.long)  # (U, M)
    cand[r, position] = item
    path_prob = torch.zeros(u, width, dtype=log_p.dtype)
    path_prob[r, position] = prob
    return cand, path_prob, counts


@torch.no_grad()
def retrieve(model: DeepRetrieval, index: PathIndex, x: torch.Tensor, *, beam: int, k: int,
             seen: torch.Tensor | None = None, rerank: bool = True, prior: torch.Tensor | None = None,
             rerank_x: torch.Tensor | None = None, budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items for users x (U, dim): beam search, the items on the final paths (:func:`beam_candidates`;
    ``budget``: at most that many items per user, :func:`within_budget`), then the reranker (or the paths'
    summed probability). ``seen`` (U, L) (item + 1, 0 = pad) are excluded; ``prior`` (N,) breaks ties without
    the reranker; ``rerank_x`` (U, dim): the reranker's input (:meth:`DeepRetrieval.rerank_input`; required when
    the reranker has its own tower, else x). Returns (items (U, k), -1 where fewer were found; items scored (U,))."""
    u = x.shape[0]
    cand, path_prob, counts = beam_candidates(model, index, x, beam, budget)  # (U, M), (U, M), (U,)
    if rerank and model.config.reranker:
        r = _reranker_input(model, x, rerank_x)  # (U, dim)
        scores = model.rerank_scores(r, cand.clamp(min=0).to(r.device)).cpu()  # (U, M)
        tie = None
    else:
        scores = path_prob
        tie = prior.cpu().to(scores.dtype)[cand.clamp(min=0)] if prior is not None else None
    drop = cand < 0
    if seen is not None:
        drop |= exclude_mask(cand, seen.cpu())
    scores = scores.masked_fill(drop, float("-inf"))
    order = _order(scores, tie)[:, :k]  # (U, k')
    top = cand.gather(1, order).masked_fill(scores.gather(1, order) == float("-inf"), -1)
    if top.shape[1] < k:
        top = torch.cat([top, top.new_full((u, k - top.shape[1]), -1)], 1)
    return top, counts


@torch.no_grad()
def retrieve_reference(model: DeepRetrieval, codes: torch.Tensor, x: torch.Tensor, *, beam: int, k: int,
                       seen: torch.Tensor | None = None, rerank: bool = True, prior: torch.Tensor | None = None,
                       rerank_x: torch.Tensor | None = None, budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`retrieve` one user at a time with Python dicts, from the mapping as codes (N, J)."""
    if rerank and model.config.reranker:
        rerank_x = _reranker_input(model, x, rerank_x)  # (U, dim)
    on_path: dict[int, list[int]] = {}
    for item, row in enumerate(codes.tolist()):
        for c in row:
            on_path.setdefault(c, []).append(item)
    tops, counts = [], []
    for u in range(x.shape[0]):
        paths, log_p = beam_search_reference(model, x[u:u + 1], beam)
        prob: dict[int, torch.Tensor] = {}  # summed in the model's precision, in beam order, as retrieve does
        taken = 0  # items on the paths taken so far, with repeats (the budget's count)
        for j, (path, lp) in enumerate(zip(paths[0].tolist(), log_p[0])):
            c = sum(node * model.config.width ** (len(path) - 1 - i) for i, node in enumerate(path))
            taken += len(on_path.get(c, []))
            if budget is not None and j > 0 and taken > budget:
                continue
            for item in on_path.get(c, []):
                prob[item] = prob.get(item, torch.zeros((), dtype=log_p.dtype)) + lp.exp()
        counts.append(len(prob))
        banned = set() if seen is None else {int(s) - 1 for s in seen[u].tolist() if s > 0}
        cand = sorted(i for i in prob if i not in banned)
        if rerank and model.config.reranker:
            s = model.rerank_scores(rerank_x[u:u + 1], torch.tensor([cand], dtype=torch.long)).reshape(-1).tolist() \
                if cand else []
            ranked = sorted(zip(cand, s), key=lambda t: -t[1])
        else:
            pri = [0.0 if prior is None else float(prior[i]) for i in cand]
            ranked = sorted(zip(cand, [float(prob[i]) for i in cand], pri), key=lambda t: (-t[1], -t[2]))
        tops.append([t[0] for t in ranked[:k]] + [-1] * max(0, k - len(ranked)))
    return torch.tensor(tops, dtype=torch.long), torch.tensor(counts)
