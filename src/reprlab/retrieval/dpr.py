"""Dense passage retrieval training: a dual encoder with in-batch and hard negatives.

Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering", EMNLP 2020
(facebookresearch/DPR). Each training query comes with a positive passage and ``num_negatives``
hard negatives (mined with BM25 by default, or read from a ``reprlab mine`` file); the loss is the
softmax NLL of the positive among all positives and negatives of the global batch
(:func:`~reprlab.retrieval.losses.contrastive_loss`, gathered across ranks under DDP). Passages
relevant to a query other than its target are masked out of its softmax. Runs on the shared
training loop, so it checkpoints, resumes and runs under ``torchrun``.

>>> result = run_dpr(DprConfig(data="scifact/beir", output_dir="runs/dpr"))   # doctest: +SKIP
>>> result.model_dir                                                            # doctest: +SKIP
'runs/dpr/model'
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.losses import contrastive_loss
from reprlab.retrieval.mining import MiningConfig, mine_hard_negatives
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.beir import BeirDataset, load_beir
from reprlab.text.examples import Passage, TrainingExample, read_examples, resolve_example
from reprlab.train.loop import TrainConfig, train

logger = logging.getLogger("reprlab")


@dataclass
class DprConfig:
    output_dir: str
    data: str | None = None  # BEIR folder: queries + qrels/<split>.tsv + corpus
    split: str = "train"
    examples: str | None = None  # training JSONL (e.g. from `reprlab mine`) instead of mining with BM25
    model: str = "minilm"
    shared: bool = True  # one encoder for queries and passages
    num_negatives: int = 1  # hard negatives per query in each batch
    mine_depth: int = 30  # BM25 top-k mined for negatives when no examples file is given
    query_max_length: int = 64
    passage_max_length: int = 256
    scale: float = 20.0  # 1 / temperature over cosine similarities
    exclude_queries: Sequence[str] = ()  # query ids held out (e.g. a dev slice of the training split)
    train: TrainConfig | None = None  # loop settings; output_dir is filled in

    def __post_init__(self):
        if self.data is None and self.examples is None:
            raise ConfigError("DPR needs --data (a BEIR folder) or --examples (a training JSONL file)")
        if self.num_negatives < 0:
            raise ConfigError("num_negatives must be >= 0")


@dataclass
class DprResult:
    model_dir: str
    steps: int
    examples: int
    metrics_file: str


@dataclass
class PairExample:
    """One (query, positive) pair with its pool of negatives; passages carry an integer doc key."""

    query: str
    positive: tuple[int, str]
    negatives: list[tuple[int, str]]
    relevant: list[int] = field(default_factory=list)


def passage_text(p: Passage) -> str:
    return ((p.title or "") + " " + (p.text or "")).strip()


class DocKeys:
    """Integer keys for passages (by id, or by text when a passage has none), for false-negative masks."""

    def __init__(self):
        self.keys: dict[str, int] = {}

    def __call__(self, p: Passage | str) -> int:
        name = p if isinstance(p, str) else (p.id or "text:" + hashlib.sha1(passage_text(p).encode()).hexdigest())
        return self.keys.setdefault(name, len(self.keys))


def pairs_from_examples(examples: Sequence[TrainingExample]) -> list[PairExample]:
    """One training pair per (query, positive); the query's other positives are masked, not negatives."""
    keys = DocKeys()
    pairs = []
    for ex in examples:
        relevant = [keys(p) for p in ex.positives]
        negatives = [(keys(n), passage_text(n)) for n in ex.negatives]
        for p, key in zip(ex.positives, relevant):
            pairs.append(PairExample(ex.query, (key, passage_text(p)), negatives, relevant))
    return pairs


def examples_from_beir(data: BeirDataset, depth: int, exclude: Sequence[str] = ()) -> list[TrainingExample]:
    """Training examples from qrels with BM25-mined negatives (ids resolved to text)."""
    skip = set(exclude)
    queries = {q: t for q, t in data.judged_queries().items() if q not in skip}
    mined = mine_hard_negatives(bm25_for_corpus(data.corpus), queries, data.qrels, data.corpus,
                                MiningConfig(depth=depth, rank_range=(1, depth), num_negatives=depth))
    return [resolve_example(e, data.corpus) for e in mined]


def load_training_examples(config: DprConfig) -> list[TrainingExample]:
    data = load_beir(config.data, split=config.split) if config.data else None
    if config.examples:
        corpus = data.corpus if data else None
        examples = read_examples(config.examples, corpus=corpus)
        skip = set(config.exclude_queries)
        examples = [e for e in examples if e.query_id not in skip]
        return [resolve_example(e, corpus) if corpus else e for e in examples]
    return examples_from_beir(data, config.mine_depth, config.exclude_queries)


class DprCollate:
    """Tokenize a batch: queries, then positives followed by ``n`` sampled negatives per query."""

    def __init__(self, tokenizer, num_negatives: int, query_max_length: int, passage_max_length: int):
        self.tok, self.n = tokenizer, num_negatives
        self.qlen, self.plen = query_max_length, passage_max_length

    def __call__(self, items: list[PairExample], rng: np.random.Generator) -> dict:
        negatives, neg_keys = [], []
        for ex in items:
            pool = [n for n in ex.negatives if n[0] not in ex.relevant]
            if self.n and len(pool) < self.n:  # too few mined negatives: repeat what there is
                pool = pool * (self.n // max(1, len(pool)) + 1) if pool else []
            if self.n and not pool:
                raise ConfigError(f"query {ex.query[:60]!r} has no negatives; mine deeper or set num_negatives 0")
            chosen = rng.choice(len(pool), size=self.n, replace=False) if self.n else []
            for i in chosen:
                neg_keys.append(pool[i][0])
                negatives.append(pool[i][1])
        queries = self.tok([ex.query for ex in items], max_length=self.qlen)
        passages = self.tok([ex.positive[1] for ex in items] + negatives, max_length=self.plen)
        width = max(len(ex.relevant) for ex in items)
        relevant = torch.full((len(items), width), -1, dtype=torch.long)
        for i, ex in enumerate(items):
            relevant[i, : len(ex.relevant)] = torch.tensor(ex.relevant)
        return {
            "queries": queries.model_inputs(),
            "passages": passages.model_inputs(),
            "candidate_ids": torch.tensor([ex.positive[0] for ex in items] + neg_keys, dtype=torch.long),
            "relevant": relevant,
        }


def dpr_loss(scale: float):
    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])
        B = q.size(0)
        loss = contrastive_loss(q, p[:B], p[B:], scale=scale, candidate_ids=batch["candidate_ids"],
                                query_positive_ids=batch["relevant"])
        return loss

    return loss_fn


def run_dpr(config: DprConfig, callbacks: Sequence = (), stop_after: int | None = None) -> DprResult:
    """Train a dual encoder; the final model is saved to ``<output_dir>/model`` (sentence-transformers layout)."""
    examples = load_training_examples(config)
    pairs = pairs_from_examples(examples)
    if not pairs:
        raise ConfigError("no training pairs: the split has no judged queries with positives")
    model = DualEncoder.from_pretrained(config.model, shared=config.shared)
    loop = config.train or TrainConfig(output_dir=config.output_dir)
    loop.output_dir = config.output_dir
    loop.extra = {**loop.extra, "recipe": "dpr", "model": config.model, "examples": len(examples)}
    collate = DprCollate(model.query_encoder.tokenizer, config.num_negatives, config.query_max_length,
                         config.passage_max_length)
    logger.info(f"DPR: {len(pairs)} (query, positive) pairs from {len(examples)} queries, "
                f"{config.num_negatives} hard negative(s) each")
    state = train(model, pairs, collate, dpr_loss(config.scale), loop, callbacks=callbacks, stop_after=stop_after)
    model_dir = str(Path(config.output_dir) / "model")
    if stop_after is None or state.step >= state.total_steps:
        if state.rank == 0:
            model.save_pretrained(model_dir)
    return DprResult(model_dir, state.step, len(examples), str(Path(config.output_dir) / loop.metrics_file))
