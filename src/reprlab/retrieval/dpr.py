"""Dense passage retrieval training: a dual encoder with in-batch and hard negatives.

Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering", EMNLP 2020
(facebookresearch/DPR). Each training query comes with a positive passage and ``num_negatives``
hard negatives (mined with BM25 by default, or read from a ``reprlab mine`` file); the loss is the
softmax NLL of the positive among all positives and negatives of the global batch
(:func:`~reprlab.retrieval.losses.contrastive_loss`, gathered across ranks under DDP). Passages
relevant to a query other than its target are masked out of its softmax. Runs on the shared
training loop, so it checkpoints, resumes and runs under ``torchrun``. The data side (pairs,
batches, options) is :mod:`reprlab.retrieval.pairs`, shared with semantic hashing.

With ``--curriculum-ordering`` the pairs are shown in a curriculum (Wu, Dyer & Neyshabur, "When Do
Curricula Work?", ICLR 2021; :mod:`reprlab.train.curriculum`, the loop's sampler): a pair's difficulty
is the rank of its positive in BM25's ranking of the corpus for its query
(:func:`positive_bm25_ranks`; 1 = BM25 already finds it first), or a ``--curriculum-scores`` file.
The scores are written to ``OUT/scores.json``.

>>> result = run_dpr(DprConfig(data="scifact/beir", output_dir="runs/dpr"))   # doctest: +SKIP
>>> result.model_dir                                                            # doctest: +SKIP
PosixPath('runs/dpr/model')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from reprlab.errors import ConfigError
from reprlab.io import atomic_write_json
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.losses import contrastive_loss
from reprlab.retrieval.pairs import (
    PairCollate,
    PairDataConfig,
    PairTrainingResult,
    load_training_examples,
    model_dir,
    pairs_from_examples,
)
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.beir import load_beir
from reprlab.text.examples import TrainingExample
from reprlab.train.curriculum import CurriculumConfig, build_sampler, read_scores
from reprlab.train.loop import TrainConfig, planned_steps, train
from reprlab.train.recipe import check, finished, loop, option, read_metrics, recipe_config, register

logger = logging.getLogger("reprlab")


@recipe_config
class DprConfig(PairDataConfig):
    curriculum: CurriculumConfig = option(default_factory=CurriculumConfig, prefix="curriculum",
                                          help="curriculum over the (query, positive) pairs (Wu et al. 2021); "
                                               "difficulty: the BM25 rank of the positive")
    train: TrainConfig = loop(epochs=3.0, batch_size=32, lr=2e-5)

    def __post_init__(self):
        super().__post_init__()
        check(not (self.curriculum.ordering in ("curriculum", "anti-curriculum") and not self.curriculum.scores
                   and self.data is None), "curriculum.scores",
              "the BM25 difficulty of a curriculum needs the corpus (--data); or give a score file")


DprResult = PairTrainingResult


def dpr_loss(scale: float):
    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])  # (B, H), (B + B * n, H)
        B = q.size(0)
        return contrastive_loss(q, p[:B], p[B:], scale=scale, candidate_ids=batch["candidate_ids"],
                                query_positive_ids=batch["relevant"])

    return loss_fn


def positive_bm25_ranks(examples: Sequence[TrainingExample], corpus: Mapping, depth: int = 1000) -> list[int]:
    """The difficulty of every (query, positive) pair, in :func:`pairs_from_examples`' order (each example's
    positives in turn): the rank of the positive in BM25's top ``min(depth, len(corpus))`` for its query
    (1 = first), that depth + 1 when BM25 does not find it there."""
    depth = min(depth, len(corpus))
    _, found = bm25_for_corpus(corpus).search([ex.query for ex in examples], k=depth)
    ranks = []
    for ex, ids in zip(examples, found):
        rank = {d: i + 1 for i, d in enumerate(ids) if d is not None}
        ranks += [rank.get(p.id, depth + 1) for p in ex.positives]
    return ranks


def curriculum_difficulty(config: DprConfig, examples: Sequence[TrainingExample], n: int) -> np.ndarray | None:
    """The difficulty of each of the ``n`` pairs for ``config.curriculum``: its score file, else the BM25
    rank of the positive; None for the random ordering (and without a curriculum)."""
    c = config.curriculum
    if c.scores:
        return read_scores(c.scores, n)
    if not c.active or c.ordering == "random":
        return None
    corpus = load_beir(config.data, split=config.split).corpus
    return np.asarray(positive_bm25_ranks(examples, corpus), dtype=np.float64)


@register("train dpr", DprConfig, help="dual encoder with in-batch + BM25 hard negatives (DPR)")
def run_dpr(config: DprConfig, callbacks: Sequence = (), stop_after: int | None = None) -> DprResult:
    """Train a dual encoder; the final model is saved to ``<output_dir>/model`` (sentence-transformers layout)."""
    examples = load_training_examples(config)
    pairs = pairs_from_examples(examples)
    if not pairs:
        raise ConfigError("no training pairs: the split has no judged queries with positives")
    model = DualEncoder.from_pretrained(config.model, shared=config.shared)
    run = config.loop_config("dpr", examples=len(examples))
    collate = PairCollate(model.query_encoder.tokenizer, config.num_negatives, config.query_max_length,
                          config.passage_max_length)
    logger.info(f"DPR: {len(pairs)} (query, positive) pairs from {len(examples)} queries, "
                f"{config.num_negatives} hard negative(s) each")
    c, difficulty = config.curriculum, curriculum_difficulty(config, examples, len(pairs))
    sampler = build_sampler(c, difficulty, planned_steps(run, len(pairs)), run.batch_size, run.seed, n=len(pairs))
    if sampler is not None:
        median = "" if difficulty is None else f"; median difficulty {float(np.median(difficulty)):g}"
        logger.info(f"DPR curriculum: {c.ordering} ordering, {c.pacing} pacing (a {c.pacing_a:g}, b {c.pacing_b:g}, "
                    f"{c.sampling} sampling){median}")
    state = train(model, pairs, collate, dpr_loss(config.scale), run, callbacks=callbacks, stop_after=stop_after,
                  sampler=sampler)
    if difficulty is not None and state.rank == 0:  # what the pairs were ordered by (a score file for a rerun)
        atomic_write_json(Path(config.output_dir) / "scores.json", {"scores": difficulty.tolist(), "higher": "harder",
                          "source": c.scores or "BM25 rank of the positive"}, indent=None)
    out = model_dir(config.output_dir) if finished(state) else None
    if out is not None and state.rank == 0:
        model.save_pretrained(out)
    return DprResult(Path(config.output_dir), out, state.step, read_metrics(config.output_dir), len(examples),
                     str(Path(config.output_dir) / run.metrics_file))
