"""``reprlab train mdr``: train multi-hop dense retrieval on the train side of a HotpotQA file.

Xiong et al., "Answering Complex Open-Domain Questions with Multi-Hop Dense Retrieval", ICLR 2021
(https://github.com/facebookresearch/multihop_dense_retrieval).

* **Data.** Questions are split by the one rule of :mod:`reprlab.text.splits` on their ids: ``eval``
  (``eval_fraction``, reported), ``dev`` (``dev_fraction``, a tuning slice, neither trained on nor
  evaluated here) and ``train``. The training corpus (in-batch passages, hard negatives, memory
  bank) holds only the paragraphs of the training questions; the final evaluation searches the whole
  corpus (every question's paragraphs) for the eval-side questions.
* **Hard negatives** (:func:`mine_negatives`). The paper draws them from a TF-IDF search with the
  question, i.e. passages that are hard for hop 1; ``distractors`` / ``bm25`` / ``dense`` do the same.
  Our extension, ``bm25-hop2`` / ``dense-hop2``, searches with the hop-2 query of the gold hop-1
  passage instead, so the negatives are what hop 2 confuses with the second gold passage (on a dev
  slice of our HotpotQA train side, most failed bridge chains had the right hop-1 passage and a wrong
  hop-2 one).
* **Stages.** First stage: ``model`` (default MiniLM) is the shared encoder. Second stage: ``model``
  is the first stage's output, ``freeze_passages=True`` and ``memory_bank`` > 0; the result has two
  towers, ``query/`` (trained) and ``passage/`` (the frozen first-stage model), and the index is the
  first stage's (:mod:`reprlab.retrieval.mdr.model`).

>>> result = run_mdr_training(MDRConfig(data="hotpot.jsonl", output_dir="runs/mdr"))   # doctest: +SKIP
>>> result.model_dir, result.eval_questions                                            # doctest: +SKIP
(PosixPath('runs/mdr/model'), 156)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.io import atomic_write_json
from reprlab.text.beir import doc_text
from reprlab.retrieval.index import FaissIndex
from reprlab.retrieval.mdr.evaluate import evaluate_mdr, question_sides
from reprlab.retrieval.mdr.model import (
    Corpus,
    MDRCollate,
    MDRExample,
    MDRModel,
    PassageTable,
    hop2_query,
    mdr_loss,
    save_mdr,
    separator_of,
)
from reprlab.retrieval.mdr.search import index_corpus
from reprlab.text.hotpotqa import HotpotQuestion, load_hotpotqa
from reprlab.text.splits import EVAL_FRACTION, RULE, check_fractions
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

NEGATIVE_SOURCES = ("distractors", "bm25", "dense", "bm25-hop2", "dense-hop2")


# ------------------------------------------------------------------------------------------------
# hard negatives


def mine_negatives(questions: Sequence[HotpotQuestion], corpus: Corpus, pool_ids: Sequence[str],
                   sources: Sequence[str], depth: int, encoder: SentenceEncoder | None = None,
                   batch_size: int = 64, max_length: int = 256, max_query_length: int = 256,
                   hop2_title: bool = True, pool_vectors: np.ndarray | None = None) -> list[list[str]]:
    """Hard-negative candidates per question (gold passages excluded), from ``pool_ids`` only.

    Question-side sources (hard for hop 1): ``distractors``, the question's own non-gold paragraphs;
    ``bm25``: BM25's top ``depth`` for the question; ``dense``: ``encoder``'s top ``depth``.
    Hop-2 sources (our extension; the paper mines from the question only): the same two retrievers
    queried with the hop-2 query of the gold hop-1 passage (both gold passages for an unordered
    question), so the negatives are passages that resemble "what the first passage points to" but
    are not the second gold passage: ``bm25-hop2`` and ``dense-hop2`` (with ``encoder`` as the hop-2
    query encoder). Sources are merged in the order given, deduplicated. ``pool_vectors``: ``encoder``'s
    (len(pool_ids), d) passage vectors, when already computed.
    """
    bad = [s for s in sources if s not in NEGATIVE_SOURCES]
    if bad:
        raise ConfigError(f"unknown negative source {bad[0]!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
    allowed = set(pool_ids)
    texts = [q.question for q in questions]
    # hop-2 queries: (question row, text) for the gold hop-1 passage, or both golds when unordered
    hop2_rows = [(n, g) for n, q in enumerate(questions) for g in (q.gold[:1] if q.ordered else q.gold)]
    sep = separator_of(encoder) if encoder is not None else "[SEP]"
    hop2_texts = [hop2_query(questions[n].question, corpus[g], sep, hop2_title) for n, g in hop2_rows]
    ranked: dict[str, list[list[str]]] = {}  # source -> per question, ranked ids
    bm25 = dense = None
    if {"bm25", "bm25-hop2"} & set(sources):
        from reprlab.retrieval.pipeline import bm25_for_corpus

        bm25 = bm25_for_corpus({d: corpus[d] for d in pool_ids})
    if {"dense", "dense-hop2"} & set(sources):
        if encoder is None:
            raise ConfigError("the 'dense' and 'dense-hop2' negative sources need an encoder")
        vectors = pool_vectors
        if vectors is None:
            vectors = encoder.encode([doc_text(corpus[d]) for d in pool_ids], batch_size=batch_size,
                                     max_length=max_length)  # (len(pool_ids), d)
        dense = FaissIndex(vectors.shape[1])
        dense.add(list(pool_ids), vectors)

    def per_question(ids: np.ndarray, rows: Sequence[int]) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in questions]
        for r, n in enumerate(rows):
            out[n] += [d for d in ids[r] if d is not None]
        return out

    every = range(len(questions))
    hop2_of = [n for n, _ in hop2_rows]
    for source in sources:
        if source == "bm25":
            ranked[source] = per_question(bm25.search(texts, depth + 2)[1], every)
        elif source == "bm25-hop2":
            ranked[source] = per_question(bm25.search(hop2_texts, depth + 3)[1], hop2_of)  # +1: the query's own
        elif source == "dense":
            ranked[source] = per_question(dense.search(encoder.encode(texts, batch_size=batch_size), depth + 2)[1],
                                          every)
        elif source == "dense-hop2":
            v2 = encoder.encode(hop2_texts, batch_size=batch_size, max_length=max_query_length)  # (rows, d)
            ranked[source] = per_question(dense.search(v2, depth + 3)[1], hop2_of)
    found: list[list[str]] = []
    for n, q in enumerate(questions):
        candidates: list[str] = []
        for source in sources:
            candidates += list(q.paragraphs) if source == "distractors" else ranked[source][n]
        out: list[str] = []
        for d in candidates:
            if d in allowed and d not in q.gold and d not in out:
                out.append(d)
        found.append(out)
    return found


# ------------------------------------------------------------------------------------------------
# the recipe


def _source_names(value) -> tuple[str, ...]:
    """Negative sources from ``"a,b"`` or a list (whose items may hold commas too)."""
    items = [value] if isinstance(value, str) else list(value)
    return tuple(s.strip() for item in items for s in str(item).split(",") if s.strip())


@recipe_config
class MDRConfig(RecipeConfig):
    """``reprlab train mdr``: train MDR on the train side of a HotpotQA file (module docstring)."""

    output_dir: str = option(help="run folder (checkpoints, metrics, split.json, eval.json; the model in OUT/model)",
                             flag="--out")
    data: str = option(help="HotpotQA file (.json original or .jsonl IRCoT layout)")
    model: str = option("minilm", help="model folder or 'minilm' to start from (second stage: the first stage's "
                                       "OUT/model)")
    eval_fraction: float = option(EVAL_FRACTION, help="share of questions on the eval side (never trained on; "
                                                      "evaluated at the end)")
    dev_fraction: float = option(0.0, help="share of questions in the dev slice (not trained on, for tuning)")
    freeze_passages: bool = option(False, help="second stage: passages by the frozen --model, only queries train")
    memory_bank: int = option(0, help="FIFO of past gold passage vectors as extra negatives, 0 = off (needs "
                                      "--freeze-passages)")
    num_negatives: int = option(2, help="hard negatives per question in each batch (shared by both hops)")
    negative_sources: tuple[str, ...] = option(
        ("distractors", "bm25"), choices=NEGATIVE_SOURCES,
        help=f"hard-negative sources, merged in the order given, from: {', '.join(NEGATIVE_SOURCES)}")
    negative_depth: int = option(10, help="top-k mined from each ranked negative source")
    max_question_length: int = option(64, help="question tokens (the hop-1 query)")
    max_query_length: int = option(256, help="hop-2 query tokens (question [SEP] title text)")
    max_passage_length: int = option(192, help="passage tokens in training")
    hop2_title: bool = option(True, help="the hop-2 query holds the hop-1 passage's title (--no-hop2-title: its "
                                         "text only, as the paper)")
    scale: float = option(20.0, help="1 / temperature over cosine similarities")
    evaluate: bool = option(True, help="beam-search the eval-side questions over the whole corpus at the end")
    beam_size: int = option(10, help="beam size of the final evaluation")
    eval_batch_size: int = option(64, help="texts per batch when encoding for mining, frozen vectors and evaluation")
    index_max_length: int = option(256, help="passage tokens when indexing the corpus for evaluation")
    train: TrainConfig = loop(epochs=4.0, batch_size=16, lr=3e-5)

    def __post_init__(self):
        self.negative_sources = _source_names(self.negative_sources)
        for source in self.negative_sources:
            check(source in NEGATIVE_SOURCES, "negative_sources",
                  f"unknown negative source {source!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
        check_fractions(self.eval_fraction, self.dev_fraction)
        check(self.num_negatives >= 0, "num_negatives", f"must be >= 0, got {self.num_negatives}")
        check(not self.num_negatives or bool(self.negative_sources), "negative_sources",
              f"num_negatives {self.num_negatives} needs at least one source (or set num_negatives 0)")
        check(self.negative_depth >= 1, "negative_depth", f"must be at least 1, got {self.negative_depth}")
        check(self.memory_bank >= 0, "memory_bank", f"must be >= 0, got {self.memory_bank}")
        check(not self.memory_bank or self.freeze_passages, "memory_bank",
              "the memory bank holds frozen passage vectors: set freeze_passages (the second stage, starting "
              "from a first-stage model)")
        for name in ("max_question_length", "max_query_length", "max_passage_length", "index_max_length"):
            value = getattr(self, name)
            check(value >= 2, name, f"must be >= 2 ([CLS], [SEP]), got {value}")
        check(self.scale > 0, "scale", f"must be positive, got {self.scale}")
        check(self.beam_size >= 1, "beam_size", f"must be at least 1, got {self.beam_size}")
        check(self.eval_batch_size >= 1, "eval_batch_size", f"must be at least 1, got {self.eval_batch_size}")


@dataclass
class MDRResult(RecipeResult):
    """The run's question counts by side of the split, and the eval-side metrics (None when not evaluated)."""

    train_questions: int = 0
    dev_questions: int = 0
    eval_questions: int = 0
    eval_metrics: dict | None = None

    def summary(self) -> str:
        line = (f"{super().summary()}; {self.train_questions} train / {self.dev_questions} dev / "
                f"{self.eval_questions} eval questions")
        if self.eval_metrics:
            m = self.eval_metrics["all"]
            line += (f"; eval ({m['n']} questions): exact pair {m['exact_pair']:.3f}, pair recall@10 "
                     f"{m.get('pair_recall@10', float('nan')):.3f}")
        return line


def _freeze(encoder: SentenceEncoder, table: PassageTable, config: MDRConfig,
            frozen_vectors: tuple[Sequence[str], np.ndarray] | None) -> tuple[SentenceEncoder, SentenceEncoder]:
    """Second stage: (a trainable copy of ``encoder`` for queries, ``encoder`` frozen); ``table`` gets
    the frozen passage vectors (from ``frozen_vectors`` when given)."""
    frozen = encoder
    encoder = copy.deepcopy(frozen)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    if frozen_vectors is not None:
        row = {d: i for i, d in enumerate(frozen_vectors[0])}
        missing = [d for d in table.ids if d not in row]
        if missing:
            raise ConfigError(f"frozen_vectors lack training passage {missing[0]!r}")
        table.vectors = torch.from_numpy(np.asarray(frozen_vectors[1])[[row[d] for d in table.ids]])  # (P, H)
    else:
        logger.info(f"MDR: encoding {len(table)} training passages with the frozen passage encoder")
        table.vectors = torch.from_numpy(frozen.encode(table.texts, batch_size=config.eval_batch_size,
                                                       max_length=config.max_passage_length))  # (P, H)
    return encoder, frozen


@register("train mdr", MDRConfig, help="multi-hop dense retrieval on a HotpotQA file (evaluated on its eval side)")
def run_mdr_training(config: MDRConfig, callbacks: Sequence = (), stop_after: int | None = None,
                     frozen_vectors: tuple[Sequence[str], np.ndarray] | None = None) -> MDRResult:
    """Train MDR on the train side of ``config.data``; save to ``<output_dir>/model``; evaluate.

    ``stop_after`` ends the run after that many steps as if killed (for resume tests).
    ``frozen_vectors`` = (ids, (N, d) vectors) of the passages by ``config.model``, e.g. the first
    stage's index, saves the second stage from encoding the training passages again.
    """
    data = load_hotpotqa(config.data)
    train_q, dev_q, eval_q = question_sides(data.questions, config.eval_fraction, config.dev_fraction)
    if not train_q:
        raise ConfigError(f"the train side of {config.data} is empty (eval_fraction {config.eval_fraction}, "
                          f"dev_fraction {config.dev_fraction})", field="eval_fraction")
    run = config.loop_config("mdr")
    torch.manual_seed(run.seed)

    encoder = SentenceEncoder.from_pretrained(config.model)
    pool_ids = list(dict.fromkeys(p for q in train_q for p in q.paragraphs))
    table = PassageTable(data.corpus, pool_ids)
    frozen = None
    if config.freeze_passages:
        encoder, frozen = _freeze(encoder, table, config, frozen_vectors)
    negatives = mine_negatives(train_q, data.corpus, pool_ids, config.negative_sources if config.num_negatives else (),
                               config.negative_depth, frozen or encoder, config.eval_batch_size,
                               config.max_passage_length, config.max_query_length, config.hop2_title,
                               None if table.vectors is None else table.vectors.numpy())
    examples = [MDRExample(q.question, table.index[q.gold[0]], table.index[q.gold[1]], q.ordered,
                           [table.index[d] for d in negs]) for q, negs in zip(train_q, negatives)]
    model = MDRModel(encoder, None, config.memory_bank)
    collate = MDRCollate(encoder.tokenizer, table, config.num_negatives, config.max_question_length,
                         config.max_query_length, config.max_passage_length, config.hop2_title)
    logger.info(f"MDR: {len(examples)} training questions ({sum(q.ordered for q in train_q)} ordered), "
                f"{len(table)} training passages, {config.num_negatives} hard negative(s) per question, "
                f"memory bank {config.memory_bank or 'off'}")
    state = train(model, examples, collate, mdr_loss(config.scale), run, callbacks=callbacks, stop_after=stop_after)
    out = Path(config.output_dir)
    sizes = {"train_questions": len(train_q), "dev_questions": len(dev_q), "eval_questions": len(eval_q)}
    if not finished(state):
        return MDRResult(out, None, state.step, read_metrics(out), **sizes)
    model_dir = out / "model"
    metrics = None
    if state.rank == 0:
        save_mdr(model.query_encoder, frozen, model_dir, config.hop2_title, config.max_question_length,
                 config.max_query_length, config.max_passage_length)
        atomic_write_json(out / "split.json", {
            "rule": RULE, "eval_fraction": config.eval_fraction, "dev_fraction": config.dev_fraction,
            "train": len(train_q), "dev": len(dev_q), "eval": len(eval_q),
        })
        if config.evaluate and eval_q:
            index = index_corpus(frozen or model.query_encoder, data.corpus, config.eval_batch_size,
                                 config.index_max_length)
            metrics = evaluate_mdr(model.query_encoder, index, data, eval_q, config.beam_size,
                                   hop2_title=config.hop2_title, max_question_length=config.max_question_length,
                                   max_query_length=config.max_query_length, batch_size=config.eval_batch_size)
            atomic_write_json(out / "eval.json", metrics)
            m = metrics["all"]
            logger.info(f"MDR eval ({m['n']} questions): exact pair {m['exact_pair']:.3f}, "
                        f"pair recall@10 {m['pair_recall@10']:.3f}")
    return MDRResult(out, model_dir, state.step, read_metrics(out), **sizes, eval_metrics=metrics)
