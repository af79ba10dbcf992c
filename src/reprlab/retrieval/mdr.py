"""Multi-hop dense retrieval (MDR): retrieve a passage, re-encode the question with it, retrieve again.

Xiong, Li, Iyer, Du, Lewis, Wang, Mehdad, Yih, Riedel, Kiela, Oğuz, "Answering Complex Open-Domain
Questions with Multi-Hop Dense Retrieval", ICLR 2021 (https://github.com/facebookresearch/multihop_dense_retrieval).
One encoder embeds the question (hop-1 query), the question followed by a retrieved passage (hop-2
query) and the passages; training is a softmax NLL per hop over the passages of the batch plus hard
negatives, and inference is a beam search whose chains are ranked by the sum of the two hops' scores.

What this module implements, and where it follows or departs from the paper's code:

* **Queries.** Hop 1 embeds the question; hop 2 embeds ``question [SEP] title text`` of the hop-1
  passage (one segment; ``[SEP]`` is the tokenizer's own separator token, so truncation at
  ``max_query_length`` cuts the passage, never the question). The official code pairs the question
  with the passage *text* only; ``hop2_title=False`` does the same. Passages are embedded as
  ``title text``, as :class:`~reprlab.retrieval.dense.DenseRetriever` indexes them.
* **Loss** (:func:`mdr_loss`). For question i with gold passages (p1_i, p2_i) and the candidates
  C = [p1 of the batch; p2 of the batch; hard negatives of the batch] (gathered over DDP ranks with
  gradients): hop 1 is cross-entropy of p1_i among C with p2_i removed (finding the other gold
  passage first is no error; the paper masks it too); hop 2 is cross-entropy of p2_i among C from
  the hop-2 query (p1_i stays a negative, so hop 2 learns not to return the passage it was given).
  Scores are ``scale`` times cosine similarities (the paper: raw inner products of RoBERTa vectors).
  Any other candidate with the id of a gold passage (a passage shared by two questions of the
  batch) is removed from that question's softmax.
* **Hard negatives** (:func:`mine_negatives`). The paper draws them from a TF-IDF search with the
  question, i.e. passages that are hard for hop 1; ``distractors`` / ``bm25`` / ``dense`` do the same.
  Our extension, ``bm25-hop2`` / ``dense-hop2``, searches with the hop-2 query of the gold hop-1
  passage instead, so the negatives are what hop 2 confuses with the second gold passage (on our
  HotpotQA train side, most failed bridge chains had the right hop-1 passage and a wrong hop-2 one).
* **Hop order.** Bridge questions train hop 1 on the passage that names the bridge entity and hop 2
  on the entity's own passage; comparison (and unordered) questions draw an order per step from the
  loop's seeded generator, so a resumed run draws the same orders (:mod:`reprlab.text.hotpotqa`).
* **Memory bank** (second stage, ``freeze_passages=True, memory_bank=K``). As in the paper, the
  passage encoder is frozen (the first-stage model) and only the query encoder trains; the gold
  passage vectors of past batches are kept in a FIFO :class:`MemoryBank` of size K and serve as extra
  negatives for both hops. Because the passage encoder is frozen, every training passage is encoded
  once before training and batches look its vector up (the paper re-encodes each batch with the
  frozen copy; same vectors, tested). The result has two towers: ``query/`` (trained) and ``passage/``
  (the frozen first-stage model); the index is the first stage's.
* **Beam search** (:func:`multihop_search`). Top-B hop-1 passages; each (question, passage) is
  re-encoded and searched for its top-B hop-2 passages (the hop-1 passage itself excluded); the B x B
  chains are ranked by s1 + s2, and a pair found in both orders is kept once, in its better order.
  Any :class:`~reprlab.retrieval.index.Index` works (exact or approximate).
* **BM25 fusion** (:class:`SparseFusion`, our extension; the paper searches dense only). Each hop's
  dense scores are interpolated with BM25 scores of the same hop's query (hop 1: the question; hop 2:
  the question followed by the hop-1 passage's title and text), ``s + w * bm25 / max bm25`` over the
  union of both top-``depth`` lists (:func:`reprlab.retrieval.fusion.interpolate`). A hop-2 passage
  is usually named in the hop-1 passage, which is what BM25 matches best. On HotpotQA, with weights
  chosen on the train-side holdout (0.888 -> 0.948 there), pair recall@10 on the eval side went from
  0.872 to 0.962 (BENCHMARKS.md). Weights 0 give the dense search.
* **Metrics** (:func:`chain_metrics`), the paper's: exact-pair match of the top chain (``exact_pair``,
  "P EM"), passage-pair recall at k chains (``pair_recall@k``: both gold passages among the passages
  of the top-k chains, "PR"), ``chain_recall@k`` (the gold pair is one of the top-k chains), and at a
  budget of k passages (the first k distinct passages of the ranked chains; a single-hop ranking is
  its own top k): ``passage_pair_recall@k`` (both gold) and ``passage_recall@k`` (single-passage
  recall, the fraction of gold passages found).

>>> result = run_mdr_training(MDRConfig(data="hotpot.jsonl", output_dir="runs/mdr"))      # doctest: +SKIP
>>> model = SentenceEncoder.from_pretrained(result.model_dir)                              # doctest: +SKIP
>>> chains = multihop_search(model, ["Which government position ...?"], index, corpus)   # doctest: +SKIP
>>> chains[0][0].passages, chains[0][0].score                                              # doctest: +SKIP
(('Kiss and Tell (1945 film)', 'Shirley Temple'), 1.42)
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_write_json
from reprlab.retrieval.dense import doc_text
from reprlab.retrieval.fusion import interpolate
from reprlab.retrieval.index import FaissIndex, Index
from reprlab.retrieval.losses import gather_with_grad
from reprlab.text.hotpotqa import EVAL_FRACTION, HotpotData, HotpotQuestion, hash_fraction, load_hotpotqa
from reprlab.train.loop import TrainConfig, train

logger = logging.getLogger("reprlab")

NEGATIVE_SOURCES = ("distractors", "bm25", "dense", "bm25-hop2", "dense-hop2")
DEFAULT_KS = (2, 10, 20)
SETTINGS_FILE = "mdr.json"

Corpus = Mapping[str, Mapping[str, str]]


# ------------------------------------------------------------------------------------------------
# queries


def separator_of(encoder) -> str:
    """The separator token string of ``encoder``'s tokenizer (``[SEP]`` for BERT word pieces)."""
    tok = getattr(encoder, "tokenizer", None)
    if tok is not None and getattr(tok, "sep_id", None) is not None:
        return tok.convert_ids_to_tokens([tok.sep_id])[0]
    return "[SEP]"


def hop2_query(question: str, passage: Mapping[str, str], sep: str = "[SEP]", title: bool = True) -> str:
    """The hop-2 query text: ``question [SEP] title text`` (``title=False``: ``question [SEP] text``)."""
    body = doc_text(passage) if title else passage.get("text", "").strip()
    return f"{question.strip()} {sep} {body}"


# ------------------------------------------------------------------------------------------------
# beam search


@dataclass(frozen=True)
class Chain:
    """A retrieved passage chain: (hop-1 id, hop-2 id), their scores, and the chain score s1 + s2."""

    passages: tuple[str, str]
    scores: tuple[float, float]

    @property
    def score(self) -> float:
        return self.scores[0] + self.scores[1]


def rank_chains(
    s1: np.ndarray, ids1: np.ndarray, s2: np.ndarray, ids2: np.ndarray, top_k: int | None = None,
    exclude_hop1: bool = True, dedup: bool = True, hop2_k: int | None = None,
) -> list[Chain]:
    """The chains of one question, best first.

    Args:
        s1, ids1: (B,) hop-1 scores and ids (``None`` ids are padding).
        s2, ids2: (B, B2) hop-2 scores and ids of each hop-1 passage's query.
        top_k: chains kept (None = all).
        exclude_hop1: drop hop-2 results equal to their hop-1 passage.
        dedup: keep an unordered pair once, in its best-scoring order.
        hop2_k: hop-2 passages kept per hop-1 passage, after the exclusion (None = all given).

    Ties are broken by hop-1 rank, then hop-2 rank, so the order is deterministic.
    """
    cands = []
    for i in range(len(ids1)):
        if ids1[i] is None:
            continue
        kept = 0
        for j in range(ids2.shape[1]):
            p2 = ids2[i, j]
            if p2 is None or (exclude_hop1 and p2 == ids1[i]):
                continue
            if hop2_k is not None and kept >= hop2_k:
                break
            kept += 1
            cands.append((-(float(s1[i]) + float(s2[i, j])), i, j))
    cands.sort()
    chains, seen = [], set()
    for _, i, j in cands:
        pair = (ids1[i], ids2[i, j])
        if dedup:
            key = frozenset(pair)
            if key in seen:
                continue
            seen.add(key)
        chains.append(Chain(pair, (float(s1[i]), float(s2[i, j]))))
        if top_k is not None and len(chains) >= top_k:
            break
    return chains


@dataclass
class SparseFusion:
    """BM25 fusion for :func:`multihop_search`: each hop's dense scores plus ``weight * bm25 / max bm25``.

    ``retriever`` is a sparse search over the same corpus as the dense index (``search(texts, k) ->
    (scores, ids)``, e.g. :func:`reprlab.retrieval.pipeline.bm25_for_corpus`); ``depth`` results of each
    search are fused. Default weights: chosen on the train-side holdout of HotpotQA (BENCHMARKS.md).
    """

    retriever: Any
    hop1_weight: float = 0.2
    hop2_weight: float = 0.3
    depth: int = 50

    def __post_init__(self):
        if self.hop1_weight < 0 or self.hop2_weight < 0:
            raise ConfigError(f"BM25 fusion weights must be >= 0, got {self.hop1_weight}, {self.hop2_weight}")
        if self.depth < 1:
            raise ConfigError(f"BM25 fusion depth must be at least 1, got {self.depth}")


def multihop_search(
    encoder,
    questions: Sequence[str] | str,
    index: Index,
    corpus: Corpus,
    beam_size: int = 10,
    top_k: int | None = 10,
    hop2_title: bool = True,
    max_question_length: int | None = 64,
    max_query_length: int | None = 256,
    batch_size: int = 64,
    exclude_hop1: bool = True,
    dedup: bool = True,
    show_progress: bool | None = False,
    search_params: Mapping[str, float] | None = None,
    hop1: tuple[np.ndarray, np.ndarray] | None = None,
    sparse: SparseFusion | None = None,
) -> list[list[Chain]]:
    """MDR beam search: the top chains of each question, best first.

    Args:
        encoder: the query encoder: anything with ``encode(texts, batch_size=, max_length=,
            show_progress=) -> (N, d) float32`` (a :class:`~reprlab.encoder.SentenceEncoder`).
        questions: question texts (or one question).
        index: passage vectors with string ids (exact or approximate; any ``Index``).
        corpus: ``{id: {"title", "text"}}`` for the ids of ``index`` (to form hop-2 queries).
        beam_size: B, hop-1 passages kept and hop-2 passages searched for each.
        top_k: chains returned per question (None = all, at most B x B).
        hop1: precomputed hop-1 ``(scores (Q, B), ids (Q, B))`` (e.g. from another retriever).
        sparse: fuse each hop's dense scores with BM25's (:class:`SparseFusion`; None = dense only).
        Other arguments: see :func:`rank_chains` and the module docstring.
    """
    if isinstance(questions, str):
        questions = [questions]
    if beam_size < 1:
        raise ConfigError(f"beam_size must be at least 1, got {beam_size}")
    params = dict(search_params or {})
    fuse1 = sparse is not None and sparse.hop1_weight > 0
    fuse2 = sparse is not None and sparse.hop2_weight > 0
    if hop1 is None:
        qv = encoder.encode(list(questions), batch_size=batch_size, max_length=max_question_length,
                            show_progress=show_progress)  # (Q, d)
        if fuse1:
            dense = index.search(qv, max(beam_size, sparse.depth), **params)  # (Q, depth)
            s1, ids1 = interpolate(*dense, *sparse.retriever.search(list(questions), sparse.depth),
                                   sparse.hop1_weight, beam_size)  # (Q, B)
        else:
            s1, ids1 = index.search(qv, beam_size, **params)  # (Q, B)
    else:
        s1, ids1 = hop1
    sep = separator_of(encoder)
    texts, rows = [], []  # one hop-2 query per (question, hop-1 passage)
    for q, question in enumerate(questions):
        for i, pid in enumerate(ids1[q]):
            if pid is None:
                continue
            if pid not in corpus:
                raise ModelLoadError(f"hop-1 passage {pid!r} is in the index but not in the corpus given")
            texts.append(hop2_query(question, corpus[pid], sep, hop2_title))
            rows.append((q, i))
    B = ids1.shape[1]
    depth = B + 1 if exclude_hop1 else B
    s2 = np.full((len(questions), B, depth), -np.inf, dtype=np.float32)  # (Q, B, B + 1)
    ids2 = np.full((len(questions), B, depth), None, dtype=object)
    if texts:
        v2 = encoder.encode(texts, batch_size=batch_size, max_length=max_query_length,
                            show_progress=show_progress)  # (Q*B, d)
        if fuse2:
            dense = index.search(v2, max(depth, sparse.depth), **params)  # (Q*B, depth')
            sparse_texts = [questions[q] + " " + doc_text(corpus[ids1[q][i]]) for q, i in rows]
            found_s, found_ids = interpolate(*dense, *sparse.retriever.search(sparse_texts, sparse.depth),
                                             sparse.hop2_weight, depth)  # (Q*B, B + 1)
        else:
            found_s, found_ids = index.search(v2, depth, **params)  # (Q*B, B + 1)
        for r, (q, i) in enumerate(rows):
            s2[q, i], ids2[q, i] = found_s[r], found_ids[r]
    return [rank_chains(s1[q], ids1[q], s2[q], ids2[q], top_k, exclude_hop1, dedup, hop2_k=beam_size)
            for q in range(len(questions))]


def chains_from_ranking(scores: np.ndarray, ids: np.ndarray, top_k: int | None = None) -> list[Chain]:
    """Chains of a single-hop ranking: every pair of its passages, ranked by the sum of their scores.

    (Passages enter the chain ranking in the order of the ranking, so the first k distinct
    passages of the chains are the ranking's top k.)
    """
    keep = [(float(s), d) for s, d in zip(scores, ids) if d is not None]
    cands = [(-(keep[i][0] + keep[j][0]), i, j) for i in range(len(keep)) for j in range(i + 1, len(keep))]
    cands.sort()
    if top_k is not None:
        cands = cands[:top_k]
    return [Chain((keep[i][1], keep[j][1]), (keep[i][0], keep[j][0])) for _, i, j in cands]


# ------------------------------------------------------------------------------------------------
# metrics


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


# ------------------------------------------------------------------------------------------------
# model, memory bank, loss


class MemoryBank(nn.Module):
    """A FIFO queue of the last ``size`` passage vectors (and their passage ids), never trained.

    ``enqueue`` stores detached copies, overwriting the oldest entries first; ``vectors()``/``ids()``
    return the filled part (detached). The buffers are part of the model's state, so checkpoints
    hold the queue and a resumed run continues with the same negatives.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ConfigError(f"memory bank size must be at least 1, got {size}")
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.bank.size(0)

    @torch.no_grad()
    def enqueue(self, vectors: torch.Tensor, ids: torch.Tensor) -> None:
        """Add (n, dim) vectors with their (n,) passage ids, oldest entries replaced first."""
        vectors, ids = vectors.detach()[-self.size:], ids.detach()[-self.size:]  # only the newest can stay
        n = vectors.size(0)
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size  # (n,)
        self.bank[slots] = vectors.to(self.bank.dtype)
        self.bank_ids[slots] = ids.to(self.bank_ids.device)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def vectors(self) -> torch.Tensor:
        """(filled, dim), oldest first."""
        return self._ordered(self.bank).detach()

    def ids(self) -> torch.Tensor:
        return self._ordered(self.bank_ids)

    def _ordered(self, x: torch.Tensor) -> torch.Tensor:
        n = int(self.count)
        start = (int(self.ptr) - n) % self.size
        order = (start + torch.arange(n, device=x.device)) % self.size
        return x[order]


class MDRModel(nn.Module):
    """The query encoder (questions and hop-2 queries), the passage encoder and an optional memory bank.

    ``passage_encoder=None`` shares the query encoder (first stage). In the second stage batches carry
    frozen passage vectors (``passage_vectors``) and no passage encoder is trained.
    """

    def __init__(self, query_encoder: SentenceEncoder, passage_encoder: SentenceEncoder | None = None,
                 memory_bank: int = 0):
        super().__init__()
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder
        self.memory = MemoryBank(memory_bank, query_encoder.dim) if memory_bank else None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        enc = self.query_encoder
        q = enc(batch["questions"]["input_ids"], batch["questions"]["attention_mask"])  # (B, H)
        qs = enc(batch["hop2_queries"]["input_ids"], batch["hop2_queries"]["attention_mask"])  # (B, H)
        if "passage_vectors" in batch:
            docs = batch["passage_vectors"]  # (2B + B*n, H), frozen
        else:
            penc = self.passage_encoder or enc
            docs = penc(batch["passages"]["input_ids"], batch["passages"]["attention_mask"])  # (2B + B*n, H)
        return {"q": q, "hop2": qs, "docs": docs}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_ids(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def mdr_scores(
    q: torch.Tensor, hop2: torch.Tensor, docs: torch.Tensor, doc_ids: torch.Tensor, gold: torch.Tensor,
    scale: float, bank: torch.Tensor | None = None, bank_ids: torch.Tensor | None = None, offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked hop-1 and hop-2 score matrices and their targets (the plain, single-process form).

    Args:
        q, hop2: (B, H) hop-1 and hop-2 query vectors.
        docs: (N, H) candidates; local row i's hop-1 target is ``offset + i``, its hop-2 target
            ``offset + B + i`` (the layout [p1 of the batch; p2 of the batch; negatives]).
        doc_ids: (N,) passage ids of ``docs``; gold: (B, 2) ids of (hop-1, hop-2) gold passages.
        bank, bank_ids: (K, H) memory-bank vectors and their (K,) ids, appended as negatives.

    Returns:
        scores1, scores2: (B, N [+ K]) with removed candidates at -inf; target1, target2: (B,).
    """
    B = q.size(0)
    rows = torch.arange(B, device=q.device)
    target1, target2 = rows + offset, rows + offset + B
    if bank is not None and bank.numel():
        docs = torch.cat([docs, bank.to(docs.dtype)])  # (N + K, H)
        doc_ids = torch.cat([doc_ids, bank_ids])
    s1 = scale * (q @ docs.T).float()  # (B, N + K)
    s2 = scale * (hop2 @ docs.T).float()
    is_p1 = doc_ids[None, :] == gold[:, :1]  # (B, N + K)
    is_p2 = doc_ids[None, :] == gold[:, 1:]
    drop1, drop2 = is_p1 | is_p2, is_p2.clone()
    drop1[rows, target1] = False
    drop2[rows, target2] = False
    return s1.masked_fill(drop1, float("-inf")), s2.masked_fill(drop2, float("-inf")), target1, target2


def mdr_loss(scale: float = 20.0, gather: bool = True):
    """``loss_fn(model, batch)`` for :func:`~reprlab.train.train`: hop-1 + hop-2 softmax NLL (module docstring).

    Under DDP the candidates of all ranks are gathered (with gradients) and the memory bank receives
    the gold passages of all ranks, so every rank keeps the same queue.
    """

    def loss_fn(model, batch):
        out = model(batch)
        core = _unwrap(model)
        B = out["q"].size(0)
        distributed = gather and _distributed()
        docs = gather_with_grad(out["docs"]) if distributed else out["docs"]  # (W*P, H)
        doc_ids = _gather_ids(batch["doc_ids"]) if distributed else batch["doc_ids"]
        offset = (dist.get_rank() * out["docs"].size(0)) if distributed else 0
        bank = bank_ids = None
        if core.memory is not None:
            bank, bank_ids = core.memory.vectors(), core.memory.ids()
        s1, s2, t1, t2 = mdr_scores(out["q"], out["hop2"], docs, doc_ids, batch["gold"], scale, bank, bank_ids, offset)
        loss1, loss2 = F.cross_entropy(s1, t1), F.cross_entropy(s2, t2)
        if core.memory is not None:
            gold_vectors = out["docs"][: 2 * B]  # this rank's p1 and p2, (2B, H)
            gold_ids = batch["doc_ids"][: 2 * B]
            if distributed:
                gold_vectors, gold_ids = gather_with_grad(gold_vectors.detach()), _gather_ids(gold_ids)
            core.memory.enqueue(gold_vectors, gold_ids)
        return loss1 + loss2, {"hop1_loss": loss1.item(), "hop2_loss": loss2.item()}

    return loss_fn


# ------------------------------------------------------------------------------------------------
# training data


@dataclass
class MDRExample:
    """One training question: gold passage indices (hop 1, hop 2) into the passage table, negatives."""

    question: str
    hop1: int
    hop2: int
    ordered: bool
    negatives: list[int]


class PassageTable:
    """Training passages by integer index: ids, texts and (second stage) frozen vectors."""

    def __init__(self, corpus: Corpus, ids: Sequence[str]):
        self.ids = list(ids)
        self.index = {d: i for i, d in enumerate(self.ids)}
        self.docs = [corpus[d] for d in self.ids]
        self.texts = [doc_text(d) for d in self.docs]
        self.vectors: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


class MDRCollate:
    """Build a batch: questions, hop-2 queries, passages [p1...; p2...; negatives...] and their ids.

    Unordered (comparison) questions draw their hop order, and every question its ``num_negatives``
    negatives, from the loop's generator ``rng`` (so resume redraws the same).
    """

    def __init__(self, tokenizer, table: PassageTable, num_negatives: int, max_question_length: int,
                 max_query_length: int, max_passage_length: int, hop2_title: bool = True):
        self.tok, self.table, self.n = tokenizer, table, num_negatives
        self.qlen, self.qslen, self.plen = max_question_length, max_query_length, max_passage_length
        self.hop2_title = hop2_title
        self.sep = tokenizer.convert_ids_to_tokens([tokenizer.sep_id])[0] if tokenizer is not None else "[SEP]"

    def __call__(self, items: list[MDRExample], rng: np.random.Generator) -> dict:
        first, second, negs, hop2 = [], [], [], []
        for ex in items:
            a, b = ex.hop1, ex.hop2
            if not ex.ordered and rng.random() < 0.5:
                a, b = b, a
            first.append(a)
            second.append(b)
            if self.n:
                pool = [p for p in ex.negatives if p not in (a, b)]
                if not pool:
                    raise ConfigError(f"question {ex.question[:60]!r} has no negatives; set num_negatives 0 "
                                      "or mine from more sources")
                picks = rng.choice(len(pool), size=self.n, replace=len(pool) < self.n)
                negs.extend(pool[i] for i in picks)
            hop2.append(hop2_query(ex.question, self.table.docs[a], self.sep, self.hop2_title))
        doc_idx = first + second + negs
        batch = {
            "questions": self.tok([ex.question for ex in items], max_length=self.qlen).model_inputs(),
            "hop2_queries": self.tok(hop2, max_length=self.qslen).model_inputs(),
            "doc_ids": torch.tensor(doc_idx, dtype=torch.long),
            "gold": torch.tensor(list(zip(first, second)), dtype=torch.long),
        }
        if self.table.vectors is not None:
            batch["passage_vectors"] = self.table.vectors[batch["doc_ids"]]  # (2B + B*n, H)
        else:
            batch["passages"] = self.tok([self.table.texts[i] for i in doc_idx], max_length=self.plen).model_inputs()
        return batch


def train_side(questions: Sequence[HotpotQuestion], eval_fraction: float, holdout_fraction: float = 0.0
               ) -> tuple[list[HotpotQuestion], list[HotpotQuestion], list[HotpotQuestion]]:
    """(train, holdout, eval) by the hash rule: hash < eval_fraction -> eval; hash < eval_fraction +
    holdout_fraction -> holdout (a validation slice of the train split, for tuning); else train."""
    if not 0 <= eval_fraction <= 1 or not 0 <= holdout_fraction <= 1 - eval_fraction:
        raise ConfigError(f"need 0 <= eval_fraction ({eval_fraction}) and 0 <= holdout_fraction "
                          f"({holdout_fraction}) with a sum <= 1")
    train_q, hold, held = [], [], []
    for q in questions:
        h = hash_fraction(q.id)
        (held if h < eval_fraction else hold if h < eval_fraction + holdout_fraction else train_q).append(q)
    return train_q, hold, held


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
                                     max_length=max_length)
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


@dataclass
class MDRConfig:
    """``reprlab train mdr``: train MDR on the train side of a HotpotQA file.

    First stage: ``model`` (default MiniLM) is the shared encoder. Second stage: ``model`` is the
    first stage's output, ``freeze_passages=True`` and ``memory_bank`` > 0.
    """

    output_dir: str
    data: str  # HotpotQA file, original (.json) or IRCoT processed (.jsonl) layout
    model: str = "minilm"
    eval_fraction: float = EVAL_FRACTION  # the held-out split (never trained on)
    holdout_fraction: float = 0.0  # a further slice of the train split, held out for tuning
    freeze_passages: bool = False  # second stage: passages by the frozen `model`, only queries train
    memory_bank: int = 0  # FIFO of past gold passage vectors as extra negatives (needs freeze_passages)
    num_negatives: int = 2  # hard negatives per question in each batch (shared by both hops)
    negative_sources: tuple[str, ...] = ("distractors", "bm25")
    negative_depth: int = 10  # per ranked source
    max_question_length: int = 64
    max_query_length: int = 256  # question [SEP] title text
    max_passage_length: int = 192
    hop2_title: bool = True
    scale: float = 20.0  # 1 / temperature over cosine similarities
    evaluate: bool = True  # beam-search the held-out questions over the whole corpus at the end
    beam_size: int = 10
    eval_batch_size: int = 64
    index_max_length: int = 256  # passages when indexing the corpus for evaluation
    train: TrainConfig | None = None  # loop settings; output_dir is filled in

    def __post_init__(self):
        if isinstance(self.negative_sources, str):
            self.negative_sources = tuple(s for s in self.negative_sources.split(",") if s)
        self.negative_sources = tuple(self.negative_sources)
        if self.memory_bank < 0 or self.num_negatives < 0:
            raise ConfigError("memory_bank and num_negatives must be >= 0")
        if self.memory_bank and not self.freeze_passages:
            raise ConfigError("the memory bank holds frozen passage vectors: set freeze_passages (the second "
                              "stage, starting from a first-stage model)")
        if self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")


@dataclass
class MDRResult:
    model_dir: str | None  # None when stopped early (stop_after)
    steps: int
    train_questions: int
    holdout_questions: int
    eval_questions: int
    eval_metrics: dict | None


def _save(model: MDRModel, frozen: SentenceEncoder | None, config: MDRConfig, model_dir: Path) -> None:
    if frozen is None:
        model.query_encoder.save_pretrained(model_dir)
    else:
        from reprlab.retrieval.dual_encoder import DualEncoder

        DualEncoder(model.query_encoder, frozen).save_pretrained(model_dir)
    atomic_write_json(model_dir / SETTINGS_FILE, {
        "method": "mdr", "hop2_title": config.hop2_title, "max_question_length": config.max_question_length,
        "max_query_length": config.max_query_length, "max_passage_length": config.max_passage_length,
    })


def mdr_settings(path: str | Path | None) -> dict:
    """Query settings saved with an MDR model (``mdr.json``), or the defaults for any other model."""
    settings = {"hop2_title": True, "max_question_length": 64, "max_query_length": 256, "max_passage_length": 256}
    file = Path(str(path)) / SETTINGS_FILE if path else None
    if file is not None and file.is_file():
        try:
            settings.update(json.loads(file.read_text()))
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{file}: not valid JSON ({exc.msg})") from exc
    return settings


def load_mdr(path: str | Path) -> tuple[SentenceEncoder, SentenceEncoder, dict]:
    """(query encoder, passage encoder, settings) of a folder written by :func:`run_mdr_training`,
    or of any sentence encoder (``minilm``: shared towers, default settings)."""
    folder = Path(str(path))
    settings = mdr_settings(path)
    if (folder / "query").is_dir() and (folder / "passage").is_dir():
        return (SentenceEncoder.from_pretrained(folder / "query"), SentenceEncoder.from_pretrained(folder / "passage"),
                settings)
    model = SentenceEncoder.from_pretrained(path)
    return model, model, settings


def run_mdr_training(config: MDRConfig, callbacks: Sequence = (), stop_after: int | None = None,
                     frozen_vectors: tuple[Sequence[str], np.ndarray] | None = None) -> MDRResult:
    """Train MDR on the train side of ``config.data``; save to ``<output_dir>/model``; evaluate.

    The training corpus (in-batch passages, hard negatives, memory bank) holds only the paragraphs of
    the training questions; evaluation searches the whole corpus (every question's paragraphs) for
    the held-out questions. ``stop_after`` ends the run after that many steps as if killed (for resume
    tests). ``frozen_vectors`` = (ids, (N, d) vectors) of the passages by ``config.model``, e.g. the
    first stage's index, saves the second stage from encoding the training passages again.
    """
    data = load_hotpotqa(config.data)
    train_q, hold_q, eval_q = train_side(data.questions, config.eval_fraction, config.holdout_fraction)
    if not train_q:
        raise ConfigError(f"the train side of {config.data} is empty (eval_fraction {config.eval_fraction}, "
                          f"holdout_fraction {config.holdout_fraction})")
    loop = copy.deepcopy(config.train) if config.train is not None else TrainConfig(output_dir=config.output_dir)
    loop.output_dir = config.output_dir
    loop.extra = {**loop.extra, "recipe": "mdr", "config": {k: v for k, v in asdict(config).items() if k != "train"}}
    torch.manual_seed(loop.seed)

    encoder = SentenceEncoder.from_pretrained(config.model)
    pool_ids = list(dict.fromkeys(p for q in train_q for p in q.paragraphs))
    table = PassageTable(data.corpus, pool_ids)
    frozen = None
    if config.freeze_passages:
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
            table.vectors = torch.from_numpy(np.asarray(frozen_vectors[1])[[row[d] for d in table.ids]])
        else:
            logger.info(f"MDR: encoding {len(table)} training passages with the frozen passage encoder")
            table.vectors = torch.from_numpy(frozen.encode(table.texts, batch_size=config.eval_batch_size,
                                                           max_length=config.max_passage_length))
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
    state = train(model, examples, collate, mdr_loss(config.scale), loop, callbacks=callbacks, stop_after=stop_after)
    sizes = (len(train_q), len(hold_q), len(eval_q))
    if state.step < state.total_steps:
        return MDRResult(None, state.step, *sizes, None)
    out = Path(config.output_dir)
    model_dir = out / "model"
    metrics = None
    if state.rank == 0:
        _save(model, frozen, config, model_dir)
        atomic_write_json(out / "split.json", {
            "rule": "sha256(question id)[:8] / 2**32: < eval_fraction -> eval; < eval_fraction + "
                    "holdout_fraction -> holdout; else train",
            "eval_fraction": config.eval_fraction, "holdout_fraction": config.holdout_fraction,
            "train": len(train_q), "holdout": len(hold_q), "eval": len(eval_q),
        })
        if config.evaluate and eval_q:
            passage_model = frozen or model.query_encoder
            index = index_corpus(passage_model, data.corpus, config.eval_batch_size, config.index_max_length)
            metrics = evaluate_mdr(model.query_encoder, index, data, eval_q, config.beam_size,
                                   hop2_title=config.hop2_title, max_query_length=config.max_query_length,
                                   batch_size=config.eval_batch_size)
            atomic_write_json(out / "eval.json", metrics)
            m = metrics["all"]
            logger.info(f"MDR eval ({m['n']} questions): exact pair {m['exact_pair']:.3f}, "
                        f"pair recall@10 {m['pair_recall@10']:.3f}")
    return MDRResult(str(model_dir), state.step, *sizes, metrics)


# ------------------------------------------------------------------------------------------------
# evaluation and search helpers (library, CLI, bench, demo)


def index_corpus(encoder, corpus: Corpus, batch_size: int = 64, max_length: int | None = 256,
                 factory: str = "Flat", show_progress: bool | None = None) -> Index:
    """Encode ``title text`` of every passage into a new index (ids = corpus ids)."""
    ids = list(corpus)
    vectors = encoder.encode([doc_text(corpus[d]) for d in ids], batch_size=batch_size, max_length=max_length,
                             show_progress=show_progress)
    index = FaissIndex(vectors.shape[1], factory=factory)
    index.add(ids, vectors)
    return index


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
    (:func:`chains_from_ranking`)."""
    depth = max(ks) + 1
    scores, ids = retriever.search([q.question for q in questions], depth)
    chains = {q.id: chains_from_ranking(scores[n], ids[n]) for n, q in enumerate(questions)}
    return evaluate_chains(chains, questions, ks)


@dataclass
class MultiHopEvalConfig:
    """``reprlab evaluate --multihop``: one retriever on one side of a HotpotQA file's split."""

    data: str
    retriever: str = "minilm"  # bm25 | minilm | an MDR / sentence-encoder folder
    split: str = "eval"  # eval | train | all
    eval_fraction: float = EVAL_FRACTION
    single_hop: bool = False  # rank pairs of one retrieval instead of the beam search
    beam_size: int = 10
    ks: tuple[int, ...] = DEFAULT_KS
    batch_size: int = 64
    max_length: int = 256  # passages when indexing the corpus
    factory: str = "Flat"
    bm25_weights: tuple[float, float] | None = None  # (hop 1, hop 2): fuse BM25 into the beam search


def evaluate_multihop(config: MultiHopEvalConfig) -> dict:
    """Evaluate a retriever's chains on a split of a HotpotQA file (its whole corpus searched)."""
    data = load_hotpotqa(config.data)
    train_q, _, eval_q = train_side(data.questions, config.eval_fraction)
    questions = {"eval": eval_q, "train": train_q, "all": data.questions}.get(config.split)
    if questions is None:
        raise ConfigError(f"unknown split {config.split!r}; choose eval, train or all")
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


def search_index_folder(path: str | Path, questions: Sequence[str], beam_size: int = 10, top_k: int = 5,
                        model: str | None = None, bm25_weights: tuple[float, float] | None = None,
                        ) -> tuple[list[list[Chain]], dict[str, dict[str, str]]]:
    """``reprlab search --multihop --index DIR``: beam search over an index folder written by ``reprlab index``.

    ``model`` overrides the query model recorded in the folder (e.g. the ``query/`` tower of a
    second-stage MDR model whose ``passage/`` tower built the index). ``bm25_weights`` (hop 1, hop 2)
    fuses BM25 over the folder's documents into both hops (:class:`SparseFusion`). Returns (chains, docs).
    """
    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.load(path)
    source = model or retriever.model_name
    settings = mdr_settings(source)
    query_model = SentenceEncoder.from_pretrained(model) if model else retriever.model
    if not retriever.docs:
        raise ModelLoadError(f"{path} has no docs.jsonl: rebuild it with `reprlab index` to search it multi-hop")
    sparse = None
    if bm25_weights is not None:
        from reprlab.retrieval.pipeline import bm25_for_corpus

        sparse = SparseFusion(bm25_for_corpus(retriever.docs), *bm25_weights)
    chains = multihop_search(query_model, list(questions), retriever.index, retriever.docs, beam_size, top_k,
                             settings["hop2_title"], settings["max_question_length"], settings["max_query_length"],
                             sparse=sparse)
    return chains, retriever.docs


def format_chains(question: str, chains: Sequence[Chain], docs: Corpus, gold: Sequence[str] = (),
                  width: int = 70) -> str:
    """Printable top chains: rank, chain score, and each hop's score and title (``*`` = gold)."""

    def name(pid: str) -> str:
        title = (docs.get(pid) or {}).get("title") or pid
        mark = "*" if pid in gold else " "
        return f"{mark}{title[:width]}"

    lines = [f"Q: {question}"]
    for rank, c in enumerate(chains, 1):
        lines.append(f"  {rank}. [{c.score:.3f}] {name(c.passages[0])} ({c.scores[0]:.3f})  ->  "
                     f"{name(c.passages[1])} ({c.scores[1]:.3f})")
    return "\n".join(lines)


DEMO_PASSAGES = {
    "bm25s": {"title": "bm25s", "text": "bm25s is a Python library written by Xing Han Lù that computes BM25 scores "
              "for the whole vocabulary at indexing time and stores them in a sparse matrix, so that a query is "
              "answered by summing a few rows."},
    "pytrec-eval": {"title": "pytrec_eval", "text": "pytrec_eval was written by Christophe Van Gysel and Maarten de "
                    "Rijke. It calls the C code of trec_eval directly from Python, so measures are computed without "
                    "writing run files to disk."},
}
"""Passages proposed for the embedded demo corpus; each completes a chain with an existing passage."""

DEMO_QUESTIONS = {
    "Who wrote the Python binding that reprlab evaluates retrieval with?": ("metrics", "pytrec-eval"),
    "Who wrote the library that reprlab uses for BM25?": ("bm25", "bm25s"),
}
"""Two-hop questions over the demo corpus plus :data:`DEMO_PASSAGES`, with their gold chains."""


def multihop_demo(encoder, index: Index, corpus: Corpus, questions: Mapping[str, Sequence[str]] | Sequence[str],
                  beam_size: int = 5, top_k: int = 3, out=print) -> list[list[Chain]]:
    """``reprlab demo``'s multi-hop step: beam-search each question and print its top chains next to
    the single-hop top 2 (``*`` marks gold passages when ``questions`` maps each question to its gold ids).

    ``encoder``/``index`` are the demo's dense retriever's (``retriever.model``, ``retriever.index``), so
    nothing is encoded twice.
    """
    gold = dict(questions) if isinstance(questions, Mapping) else {q: () for q in questions}
    texts = list(gold)
    chains = multihop_search(encoder, texts, index, corpus, beam_size, top_k)
    _, single = index.search(encoder.encode(texts), 2)  # (Q, 2)
    for q, found, top2 in zip(texts, chains, single):
        out(format_chains(q, found, corpus, gold[q]))
        names = ", ".join(("*" if p in gold[q] else "") + (corpus.get(p) or {}).get("title", str(p)) for p in top2)
        out(f"  single-hop top 2: {names}")
    return chains
