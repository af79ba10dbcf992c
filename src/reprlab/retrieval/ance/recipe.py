"""ANCE's training recipe: config, batches with negatives from the current index version, the loss, ``run_ance``.

See :mod:`reprlab.retrieval.ance` for the method and :mod:`reprlab.retrieval.ance.refresher` for the
refresher process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from reprlab.errors import ConfigError, ReprlabError
from reprlab.retrieval.ance.refresher import REFRESH_MODES, AnceNegatives, IndexRefresher, RefreshJob
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.losses import contrastive_loss, pairwise_loss
from reprlab.retrieval.pairs import DocKeys, PairCollate, PairExample, dev_queries, model_dir
from reprlab.text.beir import doc_text, load_beir
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    check_choice,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

logger = logging.getLogger("reprlab")

LOSSES = ("softmax", "pairwise")


@recipe_config
class AnceConfig(RecipeConfig):
    output_dir: str = option(help="run folder (checkpoints, index versions; the model in OUT/model)", flag="--out")
    data: str = option(help="BEIR folder: the corpus that is indexed, and the queries + qrels/<split>.tsv trained on")
    split: str = option("train", help="qrels split trained on")
    model: str = option("minilm", help="warm start: a model folder (e.g. a DPR run's model) or 'minilm'")
    refresh_every: int = option(50, help="optimizer steps between refresh requests")
    top_k: int = option(200, help="ANN depth negatives are sampled from")
    skip_top: int = option(0, help="top ranks never used as negatives (unjudged positives hide there)")
    num_negatives: int = option(1, help="ANCE negatives per query per step")
    loss: str = option("softmax", choices=LOSSES, help="softmax: in-batch + ANCE negatives; pairwise: the paper's")
    scale: float = option(20.0, help="1 / temperature over cosine similarities")
    query_max_length: int = option(64, help="query tokens")
    passage_max_length: int = option(256, help="passage tokens")
    encode_batch_size: int = option(64, help="texts per batch when the refresher encodes the corpus")
    refresher_threads: int = option(1, help="torch threads of the refresher process")
    refresh_mode: str = option("async", choices=REFRESH_MODES,
                               help="async: train on while the next index is built (the paper's; not bit-for-bit); "
                                    "sync: wait for it at every refresh (deterministic, exact resume)")
    dev_fraction: float = option(0.1, help="share of the training queries held out and scored at each refresh")
    dev_queries: Sequence[str] | None = option(None, cli=False, help="explicit dev query ids (instead of the slice)")
    train: TrainConfig = loop(epochs=3.0, batch_size=32, lr=2e-5)

    def __post_init__(self):
        check_choice(self.loss, LOSSES, "loss")
        check_choice(self.refresh_mode, REFRESH_MODES, "refresh_mode")
        check(self.num_negatives >= 1, "num_negatives", f"ANCE needs at least 1, got {self.num_negatives}")
        check(self.skip_top >= 0, "skip_top", f"must be >= 0, got {self.skip_top}")
        check(self.skip_top + self.num_negatives <= self.top_k, "top_k",
              f"{self.top_k} leaves too few candidates after skip_top {self.skip_top}")
        check(self.refresh_every >= 1, "refresh_every", f"must be at least 1, got {self.refresh_every}")
        check(self.scale > 0, "scale", f"must be positive, got {self.scale}")
        check(0.0 <= self.dev_fraction < 1.0, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")
        check(self.encode_batch_size >= 1, "encode_batch_size", f"must be at least 1, got {self.encode_batch_size}")
        check(self.refresher_threads >= 1, "refresher_threads", f"must be at least 1, got {self.refresher_threads}")


@dataclass
class AnceResult(RecipeResult):
    versions: int = 0
    refresh_log: str = ""

    def summary(self) -> str:
        return f"{self.versions} index versions ({self.refresh_log}); " + super().summary()


class AnceCollate:
    """Builds DPR batches whose negatives are sampled from the current ANN ranking of each query."""

    def __init__(self, base: PairCollate, negatives: AnceNegatives, keys: DocKeys, corpus, relevant_ids,
                 top_k: int, skip_top: int):
        self.base, self.negatives, self.keys, self.corpus = base, negatives, keys, corpus
        self.relevant_ids, self.top_k, self.skip_top = relevant_ids, top_k, skip_top

    def __call__(self, items: list[tuple[str, str, str]], rng: np.random.Generator) -> dict:
        pairs = []
        for qid, query, positive in items:
            ranked = self.negatives.ranked.get(qid)
            if ranked is None:
                raise ReprlabError(f"query {qid} is missing from ANCE index v{self.negatives.version}")
            relevant = self.relevant_ids[qid]
            pool = [d for d in ranked[self.skip_top: self.top_k] if d not in relevant]
            negatives = [(self.keys(d), doc_text(self.corpus[d])) for d in pool]
            pairs.append(PairExample(query, (self.keys(positive), doc_text(self.corpus[positive])), negatives,
                                     [self.keys(d) for d in relevant]))
        return self.base(pairs, rng)


def ance_loss(kind: str, scale: float):
    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])
        B = q.size(0)
        if kind == "pairwise":
            return pairwise_loss(q, p[:B], p[B:], scale=scale)
        return contrastive_loss(q, p[:B], p[B:], scale=scale, candidate_ids=batch["candidate_ids"],
                                query_positive_ids=batch["relevant"])

    return loss_fn


@register("train ance", AnceConfig, help="ANCE: negatives from an asynchronously refreshed ANN index")
def run_ance(config: AnceConfig, callbacks: Sequence = (), stop_after: int | None = None) -> AnceResult:
    """Train with ANCE negatives; the final model is saved to ``<output_dir>/model``."""
    data = load_beir(config.data, split=config.split)
    dev = set(config.dev_queries if config.dev_queries is not None else dev_queries(data, config.dev_fraction))
    train_queries = {q: t for q, t in data.judged_queries().items() if q not in dev}
    relevant = {q: {d for d, r in data.qrels[q].items() if r > 0 and d in data.corpus} for q in train_queries}
    items = [(q, train_queries[q], d) for q in train_queries for d in sorted(relevant[q])]
    if not items:
        raise ConfigError(f"{config.data}: split {config.split!r} has no judged training queries")
    model = DualEncoder.from_pretrained(config.model, shared=True)
    out = Path(config.output_dir)
    job = RefreshJob(
        data=str(config.data), split=config.split, query_ids=list(train_queries), dev_ids=sorted(dev),
        publish_dir=str(out / "ance"), top_k=config.top_k, batch_size=config.encode_batch_size,
        query_max_length=config.query_max_length, passage_max_length=config.passage_max_length,
        threads=config.refresher_threads,
    )
    negatives = AnceNegatives()
    refresher = IndexRefresher(job, negatives, model, config.refresh_every, config.refresh_mode)
    base = PairCollate(model.query_encoder.tokenizer, config.num_negatives, config.query_max_length,
                       config.passage_max_length)
    collate = AnceCollate(base, negatives, DocKeys(), data.corpus, relevant, config.top_k, config.skip_top)
    logger.info(f"ANCE: {len(items)} (query, positive) pairs, {len(data.corpus)} documents indexed, "
                f"refresh every {config.refresh_every} steps, negatives from the top {config.top_k}")
    try:
        state = train(model, items, collate, ance_loss(config.loss, config.scale), config.loop_config("ance"),
                      callbacks=[refresher, *callbacks], stop_after=stop_after)
    finally:
        refresher.close()
    saved = model_dir(out) if finished(state) else None
    if saved is not None and state.rank == 0:
        model.save_pretrained(saved)
    return AnceResult(out, saved, state.step, read_metrics(out), negatives.version + 1, str(refresher.log_path))
