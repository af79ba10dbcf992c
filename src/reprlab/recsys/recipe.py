"""``reprlab train deep-retrieval``: Deep Retrieval trained on interactions, with its EM step; the model folder
and ``reprlab recommend``'s loader.

The recipe reads interactions (:mod:`reprlab.recsys.data`, leave-last-out), trains the structure model
and the reranker (:mod:`reprlab.recsys.deep_retrieval`) on the shared loop, and learns the item -> path
mapping with :class:`PathLearner`, a loop callback:

* while training, every batch's users are beam-searched (``em_beam`` paths) and the paths'
  probabilities are added to their target items' streaming scores (:class:`~reprlab.recsys.path_mapping.PathScores`);
* every ``em_every`` steps (default: once per epoch), up to ``em_stop`` of the training steps, it runs the M-step
  (:func:`~reprlab.recsys.path_mapping.assign_paths`, penalty ``alpha``) and writes the new mapping into
  the model's ``item_paths`` buffer; the path-size statistics are logged with that step's metrics;
* after ``em_stop`` (default 0.8) of the steps the mapping is frozen and the last steps train the structure
  model and the reranker on the mapping that is saved and served. An M-step moves about a quarter of the
  items even late in training (MovieLens-100k, D=3, alpha 0.01); with M-steps to the end, the last one fell
  on the last step and the beam searched a model that had never seen the served mapping.

The reranker has its own user tower by default (``rerank_tower="own"``): the structure loss trains the
structure model's tower, the reranker's sampled softmax its own, on the same batches (on MovieLens-100k
validation, 3 seeds, B=10: recall@20 0.247 against 0.239 with the shared tower).

Exact resume: the mapping is a buffer of the model (in every checkpoint's ``model.safetensors``), the
streaming scores are the callback's ``state_dict`` (in the checkpoint's trainer state). Under DDP each rank
collects scores from its own share of the batch and DDP broadcasts rank 0's buffers, so the mapping in use
is the one rank 0 computed.

A model folder (``OUT/model``) holds ``config.json`` (the model's shape, serving settings and path
statistics), ``model.safetensors`` (weights and the item -> path mapping ``item_paths`` (N, J, D)),
``items.json`` (raw item ids, titles from ``u.item`` when there is one, training popularity) and
``users.json`` (raw user ids and their positives in time order, the input of ``reprlab recommend``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from reprlab.errors import ModelLoadError, ReprlabError
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.recsys.data import ExampleCollate, LeaveLastOut, interactions_file, load_leave_last_out, read_titles
from reprlab.recsys.deep_retrieval import DeepRetrieval, DRModelConfig, beam_search, retrieve
from reprlab.recsys.metrics import evaluate
from reprlab.recsys.path_mapping import (
    PathIndex,
    PathScores,
    assign_paths,
    code_paths,
    path_codes,
    path_statistics,
)
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

logger = logging.getLogger("reprlab")
FORMAT = "reprlab-deep-retrieval"
# The path tables (the inverse index, the path sizes of the M-step) hold one entry per path, K^D of them:
# 2^24 paths is ~0.5 GB of tables, far more paths than items for any data set this recipe reads.
MAX_PATHS = 2 ** 24


@recipe_config
class DeepRetrievalConfig(RecipeConfig):
    output_dir: str = option(help="run folder (the model in OUT/model)", flag="--out")
    data: str = option(help="interactions: a MovieLens folder (u.data, u.item) or a 'user item rating timestamp' "
                            "file (tab, comma or space separated)")
    min_rating: float = option(4.0, help="ratings >= this are positives (implicit feedback)")
    user_input: str = option("history", choices=("history", "user"),
                             help="the user's input: their earlier positives (mean of item embeddings) or a user id "
                                  "embedding")
    history_length: int = option(50, help="latest positives read as the user's history")
    depth: int = option(2, help="D: layers of the structure")
    width: int = option(0, help="K: nodes per layer (0: the smallest K with K^D >= the number of items)")
    paths_per_item: int = option(1, help="J: paths per item")
    dim: int = option(64, help="size of the user representation")
    hidden: int = option(128, help="hidden units of each layer's MLP")
    node_dim: int = option(16, help="size of a node's embedding (the input of the next layers)")
    reranker: bool = option(True, help="train a softmax reranker jointly and rerank the beam's items with it")
    rerank_tower: str = option("own", choices=("shared", "own", "both"),
                               help="the reranker's user tower: 'own' (a separate user tower of the same kind and "
                                    "sizes, trained on the same batches; chosen on MovieLens validation), "
                                    "'shared' (the structure model's user representation, trained by both losses) "
                                    "or 'both' (the own tower reranks; the shared head is kept as a training-only "
                                    "loss on the structure model's tower)")
    rerank_weight: float = option(1.0, help="weight of the reranker's loss")
    negatives: int = option(256, help="sampled-softmax negatives of the reranker per batch (0: the full softmax)")
    alpha: float = option(0.0, help="weight of the path-size penalty f(|c|) = |c|^4/4 in the M-step (0: none)")
    em_every: int = option(0, help="steps between M-steps (0: once per epoch)")
    em_beam: int = option(10, help="paths per training pair whose probabilities feed the items' path scores")
    em_candidates: int = option(16, help="candidate paths kept per item")
    em_decay: float = option(0.999, help="decay of the path scores per step (streaming training)")
    em_iterations: int = option(2, help="coordinate-descent sweeps of each M-step")
    em_explore: float = option(0.0, help="beyond the paper: in the M-step an item may also take its current paths or "
                                         "the least-used sibling of its best candidate, scored this share of its "
                                         "best candidate score, or the least-used path of all at the square of it, "
                                         "so the size penalty can move items off crowded paths (0: the paper's "
                                         "M-step, candidates only; with alpha 0.01, 0.01 held the synthetic "
                                         "catalogues' largest path to 9-10 items)")
    em_stop: float = option(0.8, help="share of the training steps after which the mapping is frozen (no more "
                                      "M-steps), so that the last steps train the model on the mapping it serves "
                                      "(1: M-steps to the end, the last one after the last training step)")
    beam: int = option(20, help="B: paths kept by beam search when evaluating and serving")
    evaluate: bool = option(True, help="report recall/NDCG on the validation and test positives at the end")
    train: TrainConfig = loop(lr=3e-3, batch_size=256, epochs=10, weight_decay=0.0, warmup_ratio=0.0,
                              max_grad_norm=None)

    def __post_init__(self):
        check(math.isfinite(self.min_rating), "min_rating", f"must be a number, got {self.min_rating}")
        check(self.history_length >= 1, "history_length", f"must be at least 1, got {self.history_length}")
        check(1 <= self.depth <= 6, "depth", f"must be 1..6, got {self.depth}")
        check(self.width == 0 or self.width >= 2, "width", f"must be at least 2 (or 0: automatic), got {self.width}")
        check(self.paths_per_item >= 1, "paths_per_item", f"must be at least 1, got {self.paths_per_item}")
        for name in ("dim", "hidden", "node_dim", "em_beam", "em_candidates", "em_iterations", "beam"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        check(self.negatives >= 0, "negatives", f"must be >= 0, got {self.negatives}")
        check(self.em_every >= 0, "em_every", f"must be >= 0 (0: once per epoch), got {self.em_every}")
        check(math.isfinite(self.alpha) and self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")
        check(math.isfinite(self.rerank_weight) and self.rerank_weight >= 0, "rerank_weight",
              f"must be >= 0, got {self.rerank_weight}")
        check(0 < self.em_decay <= 1, "em_decay", f"must be in (0, 1], got {self.em_decay}")
        check(0 <= self.em_stop <= 1, "em_stop", f"must be in [0, 1], got {self.em_stop}")
        check(0 <= self.em_explore < 1, "em_explore", f"must be in [0, 1), got {self.em_explore}")
        check(self.em_candidates >= self.paths_per_item, "em_candidates",
              f"must be at least paths_per_item ({self.paths_per_item}), got {self.em_candidates}")
        check(self.width ** self.depth <= MAX_PATHS, "width",
              f"K^D = {self.width}^{self.depth} paths is more than the {MAX_PATHS} the path tables are sized for; "
              "choose a smaller --width (0: automatic) or --depth")

    def model_config(self, num_items: int, num_users: int) -> DRModelConfig:
        width = self.width or max(2, math.ceil(num_items ** (1.0 / self.depth) - 1e-9))
        if self.paths_per_item > width ** self.depth:
            raise ReprlabError(f"--paths-per-item {self.paths_per_item} exceeds the K^D = {width ** self.depth} paths")
        return DRModelConfig(num_items=num_items, depth=self.depth, width=width, paths_per_item=self.paths_per_item,
                             user_input=self.user_input, num_users=num_users, dim=self.dim, hidden=self.hidden,
                             node_dim=self.node_dim, reranker=self.reranker, seed=self.train.seed,
                             rerank_tower=self.rerank_tower)


class PathLearner:
    """The EM step as a loop callback (see the module docstring). ``collect`` is called by the loss function."""

    def __init__(self, model: DeepRetrieval, every: int, beam: int, candidates: int, decay: float, alpha: float,
                 iterations: int, stop: float = 1.0, explore: float = 0.0):
        c = model.config
        self.model, self.every, self.beam, self.alpha, self.iterations = model, every, beam, alpha, iterations
        self.explore = explore  # score share of the paths outside its candidates offered to each item
        self.stop = stop  # share of the training steps after which no M-step runs
        self.total = 0  # the run's training steps (set at the start)
        self.scores = PathScores(c.num_items, c.num_paths, candidates, decay)
        self.step = 0
        self.last_stats: dict[str, float] = path_statistics(path_codes(model.item_paths, c.width), c.num_paths)

    def on_train_start(self, state, model) -> None:
        self.step, self.total = state.step, state.total_steps

    def frozen(self, step: int) -> bool:
        """No M-step at or after ``step``: the mapping is final (past ``stop`` of the training steps)."""
        return step > self.stop * self.total

    @torch.no_grad()
    def collect(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        if self.total and self.frozen(self.step + 1):  # this step's scores would feed no M-step
            return
        paths, log_p = beam_search(self.model, x.detach(), self.beam)  # (B, b, D), (B, b)
        self.scores.add(targets, path_codes(paths, self.model.config.width), log_p.exp(), self.step)

    def m_step(self) -> dict[str, float]:
        c = self.model.config
        codes, scores = self.scores.current(self.step)
        current = path_codes(self.model.item_paths, c.width).cpu()  # (N, J)
        new = assign_paths(codes, scores, current, c.num_paths, self.alpha, self.iterations, self.explore,
                           c.width)
        self.model.item_paths.copy_(code_paths(new, c.depth, c.width).to(self.model.item_paths.device))
        stats = path_statistics(new, c.num_paths)
        stats["paths_changed"] = float((new != current).any(1).float().mean())
        self.last_stats = stats
        return stats

    def on_step_end(self, state, model, metrics: dict) -> None:
        self.step = state.step
        if self.every and state.step % self.every == 0 and not self.frozen(state.step):
            metrics.update(self.m_step())

    def state_dict(self) -> dict:
        return {"step": self.step, "scores": self.scores.state_dict(), "last_stats": dict(self.last_stats)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.scores.load_state_dict(state["scores"])
        self.last_stats = dict(state["last_stats"])


@dataclass
class DeepRetrievalResult(RecipeResult):
    items: int = 0
    path_stats: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)

    def summary(self) -> str:
        line = super().summary()
        if self.val:
            line += f"; val recall@20 {self.val['recall@20']:.4f}, test recall@20 {self.test['recall@20']:.4f}"
        return line

    def report(self) -> str | None:
        if not self.val:
            return None
        rows = ["split  recall@10  recall@20  recall@50  ndcg@10  items scored"]
        for name, m in (("val", self.val), ("test", self.test)):
            rows.append(f"{name:5}  {m['recall@10']:9.4f}  {m['recall@20']:9.4f}  {m['recall@50']:9.4f}  "
                        f"{m['ndcg@10']:7.4f}  {m['items_scored']:12.1f}")
        stats = self.path_stats
        rows.append(f"paths: largest {stats.get('path_max')}, mean {stats.get('path_mean', 0):.2f} items on the "
                    f"non-empty ones, {stats.get('paths_empty')} empty")
        return "\n".join(rows)


def build_model(config: DeepRetrievalConfig, data: LeaveLastOut) -> DeepRetrieval:
    torch.manual_seed(config.train.seed)  # fresh weights are a function of the seed
    return DeepRetrieval(config.model_config(data.num_items, data.num_users))


def fit(model: DeepRetrieval, data, config: DeepRetrievalConfig, callbacks: Sequence = (),
        stop_after: int | None = None):
    """Train ``model`` on the training examples of ``data`` (a :class:`~reprlab.recsys.data.LeaveLastOut`, or
    anything with its ``examples`` / ``batch`` interface) with the EM step; returns (loop state, learner)."""
    negatives = config.negatives
    if negatives >= data.num_items:  # as many draws as items: the full softmax is exact and cheaper
        logger.info(f"deep retrieval: --negatives {negatives} >= the {data.num_items} items; using the full softmax")
        negatives = 0
    collate = ExampleCollate(data, "train", config.history_length, negatives)
    every = config.em_every or max(1, len(collate) // config.train.batch_size)
    learner = PathLearner(model, every, config.em_beam, config.em_candidates, config.em_decay, config.alpha,
                          config.em_iterations, config.em_stop, config.em_explore)

    def loss_fn(m, batch):
        loss, metrics, x = m(batch, config.rerank_weight)
        learner.collect(x, batch["targets"])
        return loss, metrics

    logger.info(f"deep retrieval: {data.num_items} items, {len(collate)} training pairs; D={model.config.depth} "
                f"K={model.config.width} J={model.config.paths_per_item}, M-step every {every} steps")
    state = train(model, collate, collate, loss_fn, config.loop_config("deep-retrieval"), [learner, *callbacks],
                  stop_after=stop_after)
    return state, learner


@register("train deep-retrieval", DeepRetrievalConfig,
          help="Deep Retrieval (Gao et al.): a learned path structure over the items, EM for the item->path mapping, "
               "beam search + a softmax reranker")
def run_deep_retrieval(config: DeepRetrievalConfig, callbacks: Sequence = (),
                       stop_after: int | None = None) -> DeepRetrievalResult:
    data = load_leave_last_out(config.data, config.min_rating)
    titles = read_titles(interactions_file(config.data).parent)  # read (and checked) before training
    model = build_model(config, data)
    state, learner = fit(model, data, config, callbacks, stop_after)
    out = Path(config.output_dir)
    result = DeepRetrievalResult(out, None, state.step, read_metrics(out), items=data.num_items,
                                 path_stats=learner.last_stats)
    if not finished(state):
        return result
    model.eval()
    if config.evaluate:
        for split in ("val", "test"):
            setattr(result, split, evaluate_model(model, data, split, beam=config.beam,
                                                  history_length=config.history_length))
    if state.rank == 0:
        save_folder(out / "model", model, data, config, titles)
    result.model_dir = out / "model"
    return result


def evaluate_model(model: DeepRetrieval, data, split: str, *, beam: int, history_length: int, rerank: bool = True,
                   k: int = 50, prior: torch.Tensor | None = None, max_examples: int | None = None) -> dict:
    """recall@10/20/50, NDCG@10, items scored and time per 1,000 users of DR on ``split``."""
    model.eval()
    device = next(model.parameters()).device
    index = PathIndex(path_codes(model.item_paths, model.config.width), model.config.num_paths)

    def recommend(batch):
        batch = {key: v.to(device) for key, v in batch.items()}
        x = model.encode(batch)
        return retrieve(model, index, x, beam=beam, k=k, seen=batch.get("seen"), rerank=rerank, prior=prior,
                        rerank_x=model.rerank_input(batch, x) if rerank and model.config.reranker else None)

    return evaluate(recommend, data, split, k=k, history_length=history_length, max_examples=max_examples)


# ----------------------------------------------------------------------------- the model folder


def save_folder(folder: Path, model: DeepRetrieval, data: LeaveLastOut, config: DeepRetrievalConfig,
                titles: dict[int, str] | None = None) -> None:
    if titles is None:
        titles = read_titles(interactions_file(config.data).parent)
    c = model.config
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", {
            "format": FORMAT, "version": 1, "model": c.to_dict(), "beam": config.beam,
            "history_length": config.history_length, "min_rating": config.min_rating,
            "path_stats": path_statistics(path_codes(model.item_paths, c.width), c.num_paths)})
        atomic_write_json(tmp / "items.json", {
            "ids": data.item_ids.tolist(), "titles": [titles.get(int(i), "") for i in data.item_ids],
            "popularity": data.popularity().tolist()}, indent=None)
        atomic_write_json(tmp / "users.json", {
            "ids": data.user_ids.tolist(), "histories": [s.tolist() for s in data.sequences]}, indent=None)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} is not a deep-retrieval model folder: {path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is damaged ({exc})") from exc


def _check_folder(folder: Path, meta, items, users, num_items: int) -> None:
    """The JSON files of a model folder agree with each other and with the weights (``num_items`` items)."""
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ModelLoadError(f"{folder / name} is damaged: {what}; save the model again")

    for key in ("history_length", "beam"):
        need(isinstance(meta.get(key), int) and meta[key] >= 1, "config.json", f"{key!r} must be a positive integer")
    need(isinstance(items, dict), "items.json", "expected an object with ids, titles and popularity")
    for key in ("ids", "titles", "popularity"):
        need(isinstance(items.get(key), list) and len(items[key]) == num_items, "items.json",
             f"{key!r} must list the model's {num_items} items")
    need(isinstance(users, dict) and isinstance(users.get("ids"), list) and isinstance(users.get("histories"), list)
         and len(users["ids"]) == len(users["histories"]), "users.json", "expected ids and histories of equal length")
    need(all(isinstance(h, list) and all(isinstance(i, int) and 0 <= i < num_items for i in h)
             for h in users["histories"]), "users.json", f"a history names an item outside 0..{num_items - 1}")


@dataclass
class Recommendation:
    item: int  # raw item id
    title: str
    score: float


class Recommender:
    """A trained model folder, ready to serve: ``Recommender.load(folder).recommend(user_id, k=10)``."""

    def __init__(self, model: DeepRetrieval, meta: dict, items: dict, users: dict):
        self.model, self.meta = model.eval(), meta
        self.item_ids, self.titles = items["ids"], items["titles"]
        self.user_index = {int(u): i for i, u in enumerate(users["ids"])}
        self.histories = users["histories"]
        self.index = PathIndex(path_codes(model.item_paths, model.config.width), model.config.num_paths)
        self.prior = torch.tensor(items["popularity"], dtype=torch.float32)

    @classmethod
    def load(cls, folder: str | Path) -> "Recommender":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelLoadError(f"{folder} is not a folder (give the model folder of `reprlab train deep-retrieval`)")
        meta = _read_json(folder / "config.json")
        if meta.get("format") != FORMAT:
            raise ModelLoadError(f"{folder}/config.json is not a deep-retrieval model (format {meta.get('format')!r})")
        try:
            model = DeepRetrieval(DRModelConfig.from_dict(meta["model"]))
            load_model(model, str(folder / "model.safetensors"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{folder}/config.json: a bad model description ({exc})") from exc
        except (OSError, SafetensorError, RuntimeError) as exc:
            raise ModelLoadError(f"{folder}/model.safetensors is missing, damaged or does not fit config.json "
                                 f"({str(exc).splitlines()[0]})") from exc
        items, users = _read_json(folder / "items.json"), _read_json(folder / "users.json")
        _check_folder(folder, meta, items, users, model.config.num_items)
        return cls(model, meta, items, users)

    @torch.no_grad()
    def recommend(self, user: int, k: int = 10, beam: int | None = None, rerank: bool = True) -> list[Recommendation]:
        """The top ``k`` items for a known user (raw id), from their whole positive history; the items they
        already liked are left out."""
        if k < 1:
            raise ReprlabError(f"k must be at least 1, got {k}")
        if user not in self.user_index:
            known = sorted(self.user_index)
            raise ReprlabError(f"user {user} is not in this model's data ({len(known)} users, ids {known[0]}.."
                               f"{known[-1]}); a new user needs a model trained on their interactions")
        k = min(k, len(self.item_ids))  # more than every item would only allocate padding
        u = self.user_index[user]
        length = self.meta["history_length"]
        history = torch.tensor(self.histories[u], dtype=torch.long)
        recent = torch.zeros(1, length, dtype=torch.long)
        tail = history[-length:] + 1
        recent[0, :len(tail)] = tail
        seen = (history + 1).reshape(1, -1) if len(history) else torch.zeros(1, 1, dtype=torch.long)
        batch = {"history": recent, "users": torch.tensor([u])}
        x = self.model.encode(batch)
        reranked = rerank and self.model.config.reranker
        r = self.model.rerank_input(batch, x) if reranked else None  # (1, dim)
        top, _ = retrieve(self.model, self.index, x, beam=beam or self.meta["beam"], k=k, seen=seen, rerank=rerank,
                          prior=self.prior, rerank_x=r)
        items = [i for i in top[0].tolist() if i >= 0]
        if reranked:
            scores = self.model.rerank_scores(r, torch.tensor([items], dtype=torch.long))[0].tolist() if items else []
        else:
            scores = [float("nan")] * len(items)
        return [Recommendation(int(self.item_ids[i]), self.titles[i], float(s)) for i, s in zip(items, scores)]
