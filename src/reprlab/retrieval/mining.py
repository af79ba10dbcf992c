"""Static hard-negative mining: retrieve once with any retriever, keep high-ranked non-relevant documents.

The baseline every dense-retrieval toolkit offers (DPR's BM25 negatives, Karpukhin et al. 2020;
sentence-transformers' ``mine_hard_negatives``; tevatron). For each training query the retriever's
top ``depth`` documents are taken; ranks outside ``rank_range`` are dropped (the very top is where
unjudged relevant documents hide), as are the query's positives, near-duplicates of a positive
(same normalised text, or word-set Jaccard >= ``duplicate_jaccard``), and, with ``relative_margin``,
any document scored above ``(1 - relative_margin)`` times the best positive's score. The result is
a list of :class:`~reprlab.text.examples.TrainingExample` with the provenance (model, index, date,
parameters) that ``write_examples`` stores in the file.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping

from reprlab.errors import ConfigError
from reprlab.retrieval.dense import Corpus
from reprlab.text.beir import doc_text
from reprlab.retrieval.pipeline import Retriever, retrieve
from reprlab.text.examples import TrainingExample

_WORD = re.compile(r"\w+")


@dataclass
class MiningConfig:
    depth: int = field(default=100, metadata={"help": "documents retrieved per query"})
    rank_range: tuple[int, int] = field(default=(1, 100), metadata={
        "help": "1-based inclusive ranks that may become negatives"})
    num_negatives: int = field(default=30, metadata={"help": "negatives kept per query (best ranked first)"})
    duplicate_jaccard: float = field(default=0.9, metadata={
        "help": "word-set Jaccard with a positive at or above which a document is a near-duplicate"})
    relative_margin: float | None = field(default=None, metadata={
        "help": "drop negatives scored above (1 - margin) x the best positive's score"})

    def __post_init__(self):
        lo, hi = self.rank_range
        if not 1 <= lo <= hi:
            raise ConfigError(f"must be 1 <= start <= end, got {self.rank_range}", field="rank_range")
        if self.depth < 1:
            raise ConfigError(f"must be at least 1, got {self.depth}", field="depth")
        if self.num_negatives < 1:
            raise ConfigError(f"must be at least 1, got {self.num_negatives}", field="num_negatives")
        if not 0.0 <= self.duplicate_jaccard <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {self.duplicate_jaccard}", field="duplicate_jaccard")
        if self.relative_margin is not None and not 0.0 <= self.relative_margin < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.relative_margin}", field="relative_margin")


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def mine_hard_negatives(
    retriever: Retriever,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Corpus,
    config: MiningConfig = MiningConfig(),
) -> list[TrainingExample]:
    """One example per query with at least one positive; negatives ordered best-ranked first."""
    judged = {q: t for q, t in queries.items() if any(r > 0 for r in qrels.get(q, {}).values())}
    run = retrieve(retriever, judged, k=max(config.depth, config.rank_range[1]))
    lo, hi = config.rank_range
    examples = []
    for qid, text in judged.items():
        positives = [d for d, r in qrels[qid].items() if r > 0 and d in corpus]
        if not positives:
            continue
        pos_words = [_words(doc_text(corpus[d])) for d in positives]
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])
        pos_scores = [s for d, s in ranked if d in qrels[qid] and qrels[qid][d] > 0]
        ceiling = None
        if config.relative_margin is not None and pos_scores:
            ceiling = (1 - config.relative_margin) * max(pos_scores)
        negatives = []
        for rank, (doc, score) in enumerate(ranked, 1):
            if rank < lo or rank > hi or qrels[qid].get(doc, 0) > 0:
                continue
            if ceiling is not None and score > ceiling:
                continue
            words = _words(doc_text(corpus[doc]))
            if any(_jaccard(words, p) >= config.duplicate_jaccard for p in pos_words):
                continue
            negatives.append(doc)
            if len(negatives) == config.num_negatives:
                break
        examples.append(TrainingExample(query=text, query_id=qid, positives=list(positives), negatives=negatives))
    return examples


def provenance(model: str, index: str, config: MiningConfig, **extra) -> dict:
    return {
        "tool": "reprlab mine",
        "model": model,
        "index": index,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameters": {**asdict(config), **extra},
    }

