"""MDR's evaluation: the paper's chain metrics on a side of a HotpotQA file's split.

Xiong et al., "Answering Complex Open-Domain Questions with Multi-Hop Dense Retrieval", ICLR 2021
(https://github.com/facebookresearch/multihop_dense_retrieval).

Metrics (:func:`chain_metrics`), the paper's: exact-pair match of the top chain (``exact_pair``, "P EM"),
passage-pair recall at k chains (``pair_recall@k``: both gold passages among the passages of the top-k
chains, "PR"), ``chain_recall@k`` (the gold pair is one of the top-k chains), and at a budget of k
passages (the first k distinct passages of the ranked chains; a single-hop ranking is its own top k):
``passage_pair_recall@k`` (both gold) and ``passage_recall@k`` (single-passage recall, the fraction of
gold passages found). :func:`evaluate_chains` averages them overall and per question type.

Questions are split by the one rule of :mod:`reprlab.text.splits` on their ids
(:func:`question_sides`): ``eval`` is the reported side, ``dev`` a tuning slice of the rest.
``reprlab evaluate --multihop`` is :func:`evaluate_multihop` with a :class:`MultiHopEvalConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from reprlab.retrieval.index import Index
from reprlab.retrieval.mdr.model import load_mdr
from reprlab.retrieval.mdr.search import Chain, SparseFusion, chains_from_ranking, index_corpus, multihop_search
from reprlab.text.hotpotqa import HotpotData, HotpotQuestion, load_hotpotqa
from reprlab.text.splits import EVAL_FRACTION, check_fractions, split
from reprlab.train.recipe import check, check_choice, option

DEFAULT_KS = (2, 10, 20)
EVAL_SIDES = ("eval", "train", "all")


Questions = list[HotpotQuestion]


def question_sides(questions: Sequence[HotpotQuestion], eval_fraction: float = EVAL_FRACTION,
                   dev_fraction: float = 0.0) -> tuple[Questions, Questions, Questions]:
    """(train, dev, eval) questions by :func:`reprlab.text.splits.split` of their ids, file order kept."""
    parts = split(questions, lambda q: q.id, eval_fraction, dev_fraction)
    return parts.train, parts.dev, parts.eval


def chain_metrics(chains: Sequence[Chain], gold: Sequence[str], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics of one question's ranked chains against its two gold passage ids (module docstring)."""
    gold_set = set(gold)
    distinct: list[str] = []
    for c in chains:
        for p in c.passages:
            if p not in distinct:
                distinct.append(p)
    out = {"exact_pair": float(bool(chains) and set(chains[0].passages) == gold_set)}
    for k in ks:
        top = chains[:k]
        covered = {p for c in top for p in c.passages}
        out[f"pair_recall@{k}"] = float(gold_set <= covered)
        out[f"chain_recall@{k}"] = float(any(set(c.passages) == gold_set for c in top))
        first = set(distinct[:k])
        out[f"passage_pair_recall@{k}"] = float(gold_set <= first)
        out[f"passage_recall@{k}"] = len(gold_set & first) / len(gold_set)
    return out


def evaluate_chains(
    chains: Mapping[str, Sequence[Chain]], questions: Sequence[HotpotQuestion], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float]]:
    """Mean metrics over ``questions`` (a question without chains scores 0), overall and per type.

    Returns ``{"all": {metric: mean, ..., "n": count}, "bridge": {...}, "comparison": {...}}``.
    """
    groups: dict[str, list[dict[str, float]]] = {"all": []}
    for q in questions:
        m = chain_metrics(chains.get(q.id, []), q.gold, ks)
        groups["all"].append(m)
        groups.setdefault(q.type, []).append(m)
    out = {}
    for name, rows in groups.items():
        if not rows:
            continue
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"n": len(rows)}
    return out


def evaluate_mdr(encoder, index: Index, data: HotpotData, questions: Sequence[HotpotQuestion],
                 beam_size: int = 10, ks: Sequence[int] = DEFAULT_KS, hop2_title: bool = True,
                 max_question_length: int = 64, max_query_length: int = 256, batch_size: int = 64,
                 show_progress: bool | None = None, sparse: SparseFusion | None = None) -> dict:
    """Beam-search ``questions`` (all B x B chains kept) and score them with :func:`evaluate_chains`."""
    chains = multihop_search(encoder, [q.question for q in questions], index, data.corpus, beam_size, None,
                             hop2_title, max_question_length, max_query_length, batch_size,
                             show_progress=show_progress, sparse=sparse)
    return evaluate_chains({q.id: c for q, c in zip(questions, chains)}, questions, ks)


def evaluate_single_hop(retriever, questions: Sequence[HotpotQuestion], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Chains of a single-hop retriever (``search(texts, k)``): pairs of its top passages
    (:func:`~reprlab.retrieval.mdr.search.chains_from_ranking`)."""
    depth = max(ks) + 1
    scores, ids = retriever.search([q.question for q in questions], depth)  # (Q, depth)
    chains = {q.id: chains_from_ranking(scores[n], ids[n]) for n, q in enumerate(questions)}
    return evaluate_chains(chains, questions, ks)


def weight_pair(value) -> tuple[float, float] | None:
    """(hop 1, hop 2) BM25 weights from a pair or a ``"W1,W2"`` string; None stays None."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        w1, w2 = (float(x) for x in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected two weights (hop 1, hop 2), e.g. 0.2,0.3; got {value!r}") from None
    return w1, w2


@dataclass
class MultiHopEvalConfig:
    """``reprlab evaluate --multihop``: one retriever on one side of a HotpotQA file's split."""

    data: str = option(help="HotpotQA file (.json original or .jsonl IRCoT layout)")
    retriever: str = option("minilm", help="bm25, minilm, or an MDR / sentence-encoder model folder")
    split: str = option("eval", choices=EVAL_SIDES,
                        help="questions scored: the eval side, the train side (the rest) or all (hash split rule)")
    eval_fraction: float = option(EVAL_FRACTION, help="share of questions on the eval side")
    single_hop: bool = option(False, help="rank pairs of one retrieval instead of the beam search")
    beam_size: int = option(10, flag="--beam", help="beam size")
    ks: tuple[int, ...] = option(DEFAULT_KS, help="k of the @k metrics")
    batch_size: int = option(64, help="texts per batch when encoding")
    max_length: int = option(256, help="passage tokens when indexing the corpus")
    factory: str = option("Flat", help="FAISS index factory string for the corpus index")
    bm25_weights: tuple[float, float] | None = option(
        None, metavar="W1,W2",
        help="beam search with BM25 fused into hop 1 and hop 2 (e.g. 0.2,0.3; default: dense only)")

    def __post_init__(self):
        check_choice(self.split, EVAL_SIDES, "split")
        check_fractions(self.eval_fraction)
        check(self.beam_size >= 1, "beam_size", f"must be at least 1, got {self.beam_size}")
        self.ks = tuple(self.ks)
        check(bool(self.ks) and all(k >= 1 for k in self.ks), "ks", f"need one or more k >= 1, got {self.ks}")
        check(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        check(self.max_length >= 2, "max_length", f"must be >= 2 ([CLS], [SEP]), got {self.max_length}")
        try:
            self.bm25_weights = weight_pair(self.bm25_weights)
        except ValueError as exc:
            check(False, "bm25_weights", str(exc))
        if self.bm25_weights is not None:
            check(min(self.bm25_weights) >= 0, "bm25_weights", f"weights must be >= 0, got {self.bm25_weights}")


def evaluate_multihop(config: MultiHopEvalConfig) -> dict:
    """Evaluate a retriever's chains on a split of a HotpotQA file (its whole corpus searched)."""
    data = load_hotpotqa(config.data)
    train_q, _, eval_q = question_sides(data.questions, config.eval_fraction)
    questions = {"eval": eval_q, "train": train_q, "all": data.questions}[config.split]
    t0 = time.time()
    if config.retriever == "bm25":
        from reprlab.retrieval.pipeline import bm25_for_corpus

        metrics = evaluate_single_hop(bm25_for_corpus(data.corpus), questions, config.ks)
    else:
        query, passage, settings = load_mdr(config.retriever)
        index = index_corpus(passage, data.corpus, config.batch_size, config.max_length, config.factory)
        if config.single_hop:
            from reprlab.retrieval.dense import DenseRetriever

            metrics = evaluate_single_hop(DenseRetriever(query, index, batch_size=config.batch_size), questions,
                                          config.ks)
        else:
            sparse = None
            if config.bm25_weights is not None:
                from reprlab.retrieval.pipeline import bm25_for_corpus

                sparse = SparseFusion(bm25_for_corpus(data.corpus), *config.bm25_weights)
            metrics = evaluate_mdr(query, index, data, questions, config.beam_size, config.ks,
                                   settings["hop2_title"], settings["max_question_length"],
                                   settings["max_query_length"], config.batch_size, sparse=sparse)
    metrics["seconds"] = round(time.time() - t0, 1)
    return metrics
