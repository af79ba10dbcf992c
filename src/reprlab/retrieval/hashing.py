"""Semantic hashing with locality-sensitive embeddings: angular-similarity training, SimHash codes, Hamming search.

Paper: "Semantic Hashing with Locality Sensitive Embeddings", anonymous ICLR 2021 submission
(OpenReview ``sFDJNhwz7S``; no official code). Binary codes: Charikar, "Similarity Estimation
Techniques from Rounding Algorithms", STOC 2002 (SimHash, random-hyperplane LSH).

A random hyperplane through the origin separates two vectors at angle theta with probability
theta/pi, so one sign bit collides with probability ``1 - theta/pi``, the *angular similarity*.
The paper trains embeddings whose optimised similarity is this collision probability rather than
the cosine, so that b-bit SimHash codes of the embeddings (sign of b Gaussian projections) keep the
ranking the model learned, and near neighbours share hash buckets (exact hashing retrieval is a table
lookup). Here the angular similarity replaces the cosine in DPR's softmax loss (in-batch + hard
negatives, the data and collate of :mod:`reprlab.retrieval.pairs`, the shared training loop), and codes
are searched by Hamming distance in FAISS binary indexes behind the common
:class:`~reprlab.retrieval.index.Index` interface.

Parts:

* :func:`angular_similarity`, :func:`angular_contrastive_loss`: the paper's loss, checked against a
  plain computation in the tests.
* :class:`HashingConfig`, :func:`run_hashing`: the training recipe (``reprlab train hashing``), on the
  pairs data of :mod:`reprlab.retrieval.pairs`.
* The codes and the Hamming index are :mod:`reprlab.retrieval.binary` (:class:`BinaryIndex`,
  :func:`binary_retriever`, ``reprlab index --binary BITS``).

>>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
>>> angular_similarity(q, q).diagonal().round(decimals=4).tolist()
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

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
from reprlab.train.recipe import check_choice, finished, loop, option, read_metrics, recipe_config, register

logger = logging.getLogger("reprlab")

SIMILARITIES = ("angular", "log-angular")


# --------------------------------------------------------------------------------------------
# the angular similarity and the training loss


class _SafeArccos(torch.autograd.Function):
    """arccos with a bounded derivative: -1 / sqrt(max(1 - x^2, eps)).

    The true derivative is infinite at x = +-1 (identical or opposite vectors), and autograd's
    ``0 * inf`` there turns every gradient into NaN. The input is clamped to [-1, 1] first, so
    rounding (a cosine of 1.0000001) cannot produce NaN in the forward pass either.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.clamp(-1.0, 1.0)
        ctx.save_for_backward(x)
        ctx.eps = eps
        return torch.arccos(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return -grad * torch.rsqrt((1.0 - x * x).clamp_min(ctx.eps)), None


def safe_arccos(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``torch.arccos`` whose gradient stays finite at +-1 (capped at 1 / sqrt(eps))."""
    return _SafeArccos.apply(x, eps)


def angular_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Pairwise angular similarity 1 - theta / pi of the rows of ``a`` (A, H) and ``b`` (N, H) -> (A, N).

    It is the probability that one random hyperplane puts both vectors on the same side (the
    SimHash collision probability): 1 for equal directions, 1/2 for orthogonal, 0 for opposite.
    Vectors need not be normalised; computed in float32.
    """
    with torch.autocast(a.device.type, enabled=False):  # arccos near +-1 needs float32 cosines
        cos = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # (A, N)
        return 1.0 - safe_arccos(cos, eps) / math.pi


def angular_contrastive_loss(
    q: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 50.0,
    similarity: str = "angular",
    gather: bool = True,
    candidate_ids: torch.Tensor | None = None,
    query_positive_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax NLL of each query's positive among all (gathered) candidates, scored by angular similarity.

    The same loss as :func:`~reprlab.retrieval.losses.contrastive_loss` (DPR / MultipleNegatives-
    RankingLoss: in-batch positives of the other queries + hard negatives, gathered across ranks with
    gradients under DDP, false negatives masked), with the cosine replaced by the angular similarity
    s = 1 - theta/pi that b-bit SimHash codes estimate:

    * ``similarity="angular"``: logits = ``scale`` * s. s spans [0, 1] and around cos = 0.5 moves
      0.37 per unit of cosine, so ``scale`` 50 is about the sharpness of a cosine softmax at scale 20.
    * ``similarity="log-angular"``: logits = ``scale`` * log s, i.e. the softmax of s ** scale, the
      probability that all ``scale`` bits of a hash key collide: the positive's share of the
      collision probabilities of a ``scale``-bit hash table (an option of ours, not the paper's).

    Inputs are as for ``contrastive_loss``: q (B, H), positives (B, H), negatives (B * n, H) or None,
    candidate_ids (B + B*n,) and query_positive_ids (B, P) (-1 padded) for the false-negative mask.
    """
    if similarity not in SIMILARITIES:
        raise ConfigError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    def score(a: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        s = angular_similarity(a, docs)  # (B, N) float32
        return scale * (s if similarity == "angular" else torch.log(s.clamp_min(1e-6)))

    return contrastive_loss(q, positives, negatives, gather=gather, candidate_ids=candidate_ids,
                            query_positive_ids=query_positive_ids, score=score)


# --------------------------------------------------------------------------------------------
# the training recipe (the pairs data, collate and loop of DPR; the angular loss)


@recipe_config
class HashingConfig(PairDataConfig):
    """The pairs recipe's options (data, negatives, lengths, towers, ``train`` loop settings) with the angular loss."""

    scale: float = option(50.0, help="logit scale over angular similarities in [0, 1]")
    similarity: str = option("angular", choices=SIMILARITIES,
                             help="angular: scale * (1 - theta/pi); log-angular: scale * log(1 - theta/pi)")
    train: TrainConfig = loop(epochs=1.0, batch_size=32, lr=5e-5)

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.similarity, SIMILARITIES, "similarity")


def hashing_loss(scale: float, similarity: str = "angular"):
    """A ``loss_fn(model, batch)`` for :func:`~reprlab.train.loop.train` over :class:`PairCollate` batches."""

    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])  # (B, H), (B + B*n, H)
        B = q.size(0)
        loss = angular_contrastive_loss(q, p[:B], p[B:], scale=scale, similarity=similarity,
                                        candidate_ids=batch["candidate_ids"],
                                        query_positive_ids=batch["relevant"])
        with torch.no_grad():
            s_pos = angular_similarity(q, p[:B]).diagonal().mean()
        return loss, {"angular_positive": float(s_pos)}

    return loss_fn


@register("train hashing", HashingConfig, help="semantic hashing: DPR with the angular-similarity loss (for SimHash codes)")
def run_hashing(config: HashingConfig, callbacks: Sequence = (), stop_after: int | None = None) -> PairTrainingResult:
    """Fine-tune a dual encoder with the angular-similarity loss; the model goes to ``<output_dir>/model``.

    Same data, negatives, checkpoints and resume as :func:`~reprlab.retrieval.dpr.run_dpr`; index the
    result with :func:`~reprlab.retrieval.binary.binary_retriever` (``reprlab index --binary BITS``).
    """
    examples = load_training_examples(config)
    pairs = pairs_from_examples(examples)
    if not pairs:
        raise ConfigError("no training pairs: the split has no judged queries with positives")
    model = DualEncoder.from_pretrained(config.model, shared=config.shared)
    run = config.loop_config("hashing", examples=len(examples))
    collate = PairCollate(model.query_encoder.tokenizer, config.num_negatives, config.query_max_length,
                          config.passage_max_length)
    logger.info(f"hashing: {len(pairs)} (query, positive) pairs from {len(examples)} queries, "
                f"{config.num_negatives} hard negative(s) each, {config.similarity} similarity x {config.scale}")
    state = train(model, pairs, collate, hashing_loss(config.scale, config.similarity), run,
                  callbacks=callbacks, stop_after=stop_after)
    out = model_dir(config.output_dir) if finished(state) else None
    if out is not None and state.rank == 0:
        model.save_pretrained(out)
    return PairTrainingResult(Path(config.output_dir), out, state.step, read_metrics(config.output_dir),
                              len(examples), str(Path(config.output_dir) / run.metrics_file))
