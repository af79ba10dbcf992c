"""Dense passage retrieval training: a dual encoder with in-batch and hard negatives.

Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering", EMNLP 2020
(facebookresearch/DPR). Each training query comes with a positive passage and ``num_negatives``
hard negatives (mined with BM25 by default, or read from a ``reprlab mine`` file); the loss is the
softmax NLL of the positive among all positives and negatives of the global batch
(:func:`~reprlab.retrieval.losses.contrastive_loss`, gathered across ranks under DDP). Passages
relevant to a query other than its target are masked out of its softmax. Runs on the shared
training loop, so it checkpoints, resumes and runs under ``torchrun``. The data side (pairs,
batches, options) is :mod:`reprlab.retrieval.pairs`, shared with semantic hashing.

>>> result = run_dpr(DprConfig(data="scifact/beir", output_dir="runs/dpr"))   # doctest: +SKIP
>>> result.model_dir                                                            # doctest: +SKIP
PosixPath('runs/dpr/model')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from reprlab.errors import ConfigError
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
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import finished, loop, read_metrics, recipe_config, register

logger = logging.getLogger("reprlab")


@recipe_config
class DprConfig(PairDataConfig):
    train: TrainConfig = loop(epochs=3.0, batch_size=32, lr=2e-5)


DprResult = PairTrainingResult


def dpr_loss(scale: float):
    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])  # (B, H), (B + B * n, H)
        B = q.size(0)
        return contrastive_loss(q, p[:B], p[B:], scale=scale, candidate_ids=batch["candidate_ids"],
                                query_positive_ids=batch["relevant"])

    return loss_fn


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
    state = train(model, pairs, collate, dpr_loss(config.scale), run, callbacks=callbacks, stop_after=stop_after)
    out = model_dir(config.output_dir) if finished(state) else None
    if out is not None and state.rank == 0:
        model.save_pretrained(out)
    return DprResult(Path(config.output_dir), out, state.step, read_metrics(config.output_dir), len(examples),
                     str(Path(config.output_dir) / run.metrics_file))
