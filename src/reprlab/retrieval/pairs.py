"""What dual-encoder training recipes share: (query, positive, negatives) pairs, their batches, the data options.

DPR (:mod:`reprlab.retrieval.dpr`), semantic hashing (:mod:`reprlab.retrieval.hashing`) and ANCE
(:mod:`reprlab.retrieval.ance`) all train a :class:`~reprlab.retrieval.dual_encoder.DualEncoder` on
the same kind of batch and differ in the loss or in where negatives come from. The parts they share
live here, so that no method module imports another's internals:

* :class:`PairExample` and :func:`pairs_from_examples`: one training pair per (query, positive), the
  query's other positives masked out of its softmax (never used as negatives); passages carry integer
  keys from :class:`DocKeys`.
* :class:`PairCollate`: tokenizes a batch of queries, then the positives followed by ``n`` negatives
  sampled per query (with the step's seeded ``rng``, so a resumed run draws the same ones).
* :class:`PairDataConfig`: the data options of a pairs recipe (a BEIR folder with BM25-mined negatives,
  or a ``reprlab mine`` file; a dev slice of the training queries by :mod:`reprlab.text.splits`), and
  :func:`load_pairs`, which reads them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError
from reprlab.retrieval.mining import MiningConfig, mine_hard_negatives
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.beir import BeirDataset, load_beir
from reprlab.text.examples import Passage, TrainingExample, read_examples, resolve_example
from reprlab.text.splits import split
from reprlab.train.recipe import RecipeConfig, RecipeResult, check, option


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


class PairCollate:
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
        relevant = torch.full((len(items), width), -1, dtype=torch.long)  # (B, max positives), -1 = padding
        for i, ex in enumerate(items):
            relevant[i, : len(ex.relevant)] = torch.tensor(ex.relevant)
        return {
            "queries": queries.model_inputs(),
            "passages": passages.model_inputs(),
            "candidate_ids": torch.tensor([ex.positive[0] for ex in items] + neg_keys, dtype=torch.long),
            "relevant": relevant,
        }


# ----------------------------------------------------------------------------- data options of a pairs recipe


@dataclass
class PairDataConfig(RecipeConfig):
    """Data, towers and lengths of a dual-encoder recipe (DPR, semantic hashing); a recipe adds its loss."""

    output_dir: str = option(help="run folder (checkpoints, metrics; the model in OUT/model)", flag="--out")
    data: str | None = option(None, help="BEIR folder: queries + qrels/<split>.tsv + corpus")
    split: str = option("train", help="qrels split trained on")
    examples: str | None = option(None, help="training JSONL (e.g. from `reprlab mine`) instead of BM25 negatives")
    model: str = option("minilm", help="model folder or 'minilm' to start from")
    shared: bool = option(True, help="one encoder for queries and passages (--no-shared: two towers)")
    num_negatives: int = option(1, help="hard negatives per query in each batch")
    mine_depth: int = option(30, help="BM25 top-k mined for negatives when no --examples file is given")
    query_max_length: int = option(64, help="query tokens")
    passage_max_length: int = option(256, help="passage tokens")
    scale: float = option(20.0, help="1 / temperature over the similarities")
    dev_fraction: float = option(0.0, help="share of the training queries held out as a dev slice (not trained on)")
    exclude_queries: Sequence[str] = option((), cli=False, help="query ids never trained on (besides the dev slice)")

    def __post_init__(self):
        check(self.data is not None or self.examples is not None, "data",
              "give a BEIR folder (--data) or a training JSONL file (--examples)")
        check(self.num_negatives >= 0, "num_negatives", f"must be >= 0, got {self.num_negatives}")
        check(self.mine_depth >= 1, "mine_depth", f"must be >= 1, got {self.mine_depth}")
        check(self.query_max_length >= 2, "query_max_length", f"must be >= 2 ([CLS], [SEP]), got {self.query_max_length}")
        check(self.passage_max_length >= 2, "passage_max_length",
              f"must be >= 2 ([CLS], [SEP]), got {self.passage_max_length}")
        check(self.scale > 0, "scale", f"must be positive, got {self.scale}")
        check(0.0 <= self.dev_fraction < 1.0, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")


@dataclass
class PairTrainingResult(RecipeResult):
    examples: int = 0  # training queries
    metrics_file: str = ""

    def summary(self) -> str:
        return f"{self.examples} training queries; " + super().summary()


def dev_queries(data: BeirDataset, fraction: float) -> list[str]:
    """The dev slice of a split's judged queries (:func:`reprlab.text.splits.split`, by query id)."""
    return split(sorted(data.judged_queries()), dev_fraction=fraction).dev if fraction else []


def examples_from_beir(data: BeirDataset, depth: int, exclude: Sequence[str] = ()) -> list[TrainingExample]:
    """Training examples from qrels with BM25-mined negatives (ids resolved to text)."""
    skip = set(exclude)
    queries = {q: t for q, t in data.judged_queries().items() if q not in skip}
    mined = mine_hard_negatives(bm25_for_corpus(data.corpus), queries, data.qrels, data.corpus,
                                MiningConfig(depth=depth, rank_range=(1, depth), num_negatives=depth))
    return [resolve_example(e, data.corpus) for e in mined]


def load_training_examples(config: PairDataConfig) -> list[TrainingExample]:
    """The recipe's training examples: the examples file (resolved against the corpus when there is one)
    or BM25-mined negatives for the split's judged queries; the dev slice and excluded queries left out."""
    data = load_beir(config.data, split=config.split) if config.data else None
    skip = set(config.exclude_queries) | set(dev_queries(data, config.dev_fraction) if data else ())
    if config.examples:
        corpus = data.corpus if data else None
        examples = [e for e in read_examples(config.examples, corpus=corpus) if e.query_id not in skip]
        return [resolve_example(e, corpus) if corpus else e for e in examples]
    return examples_from_beir(data, config.mine_depth, sorted(skip))


def model_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "model"
