"""MDR's model side: the queries, the two-hop loss, the memory bank, the training batches, the model folder.

Xiong et al., "Answering Complex Open-Domain Questions with Multi-Hop Dense Retrieval", ICLR 2021
(https://github.com/facebookresearch/multihop_dense_retrieval).

* **Queries** (:func:`hop2_query`). Hop 1 embeds the question; hop 2 embeds ``question [SEP] title
  text`` of the hop-1 passage (one segment; ``[SEP]`` is the tokenizer's own separator token, so
  truncation at ``max_query_length`` cuts the passage, never the question). The official code pairs
  the question with the passage *text* only; ``hop2_title=False`` does the same. Passages are
  embedded as ``title text``, as :class:`~reprlab.retrieval.dense.DenseRetriever` indexes them.
* **Loss** (:func:`mdr_loss`, :func:`mdr_scores`). For question i with gold passages (p1_i, p2_i) and
  the candidates C = [p1 of the batch; p2 of the batch; hard negatives of the batch] (gathered over
  DDP ranks with gradients): hop 1 is cross-entropy of p1_i among C with p2_i removed (finding the
  other gold passage first is no error; the paper masks it too); hop 2 is cross-entropy of p2_i among
  C from the hop-2 query (p1_i stays a negative, so hop 2 learns not to return the passage it was
  given). Scores are ``scale`` times cosine similarities (the paper: raw inner products of RoBERTa
  vectors). Any other candidate with the id of a gold passage (a passage shared by two questions of
  the batch) is removed from that question's softmax.
* **Hop order** (:class:`MDRCollate`). Bridge questions train hop 1 on the passage that names the
  bridge entity and hop 2 on the entity's own passage; comparison (and unordered) questions draw an
  order per step from the loop's seeded generator, so a resumed run draws the same orders.
* **Memory bank** (:class:`MemoryBank`; second stage). As in the paper, the passage encoder is frozen
  (the first-stage model) and only the query encoder trains; the gold passage vectors of past batches
  are kept in a FIFO of size K and serve as extra negatives for both hops. Because the passage encoder
  is frozen, every training passage is encoded once before training and batches look its vector up
  (:class:`PassageTable`; the paper re-encodes each batch with the frozen copy: same vectors, tested).
* **Model folder** (:func:`save_mdr`, :func:`load_mdr`): one sentence encoder (first stage) or
  ``query/`` + ``passage/`` towers (second stage), with the query settings in ``mdr.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_write_json
from reprlab.text.beir import doc_text
from reprlab.retrieval.losses import gather_with_grad

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
        order = (start + torch.arange(n, device=x.device)) % self.size  # (filled,)
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
    return torch.cat(parts)  # (W*P,)


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
        doc_ids = torch.cat([doc_ids, bank_ids])  # (N + K,)
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
        doc_ids = _gather_ids(batch["doc_ids"]) if distributed else batch["doc_ids"]  # (W*P,)
        offset = (dist.get_rank() * out["docs"].size(0)) if distributed else 0
        bank = bank_ids = None
        if core.memory is not None:
            bank, bank_ids = core.memory.vectors(), core.memory.ids()  # (K, H), (K,)
        s1, s2, t1, t2 = mdr_scores(out["q"], out["hop2"], docs, doc_ids, batch["gold"], scale, bank, bank_ids, offset)
        loss1, loss2 = F.cross_entropy(s1, t1), F.cross_entropy(s2, t2)
        if core.memory is not None:
            gold_vectors = out["docs"][: 2 * B]  # this rank's p1 and p2, (2B, H)
            gold_ids = batch["doc_ids"][: 2 * B]
            if distributed:
                gold_vectors, gold_ids = gather_with_grad(gold_vectors.detach()), _gather_ids(gold_ids)  # (W*2B, H)
            core.memory.enqueue(gold_vectors, gold_ids)
        return loss1 + loss2, {"hop1_loss": loss1.item(), "hop2_loss": loss2.item()}

    return loss_fn


# ------------------------------------------------------------------------------------------------
# training batches


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
        self.vectors: torch.Tensor | None = None  # (len(ids), H) when frozen

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
        doc_idx = first + second + negs  # (2B + B*n,)
        batch = {
            "questions": self.tok([ex.question for ex in items], max_length=self.qlen).model_inputs(),
            "hop2_queries": self.tok(hop2, max_length=self.qslen).model_inputs(),
            "doc_ids": torch.tensor(doc_idx, dtype=torch.long),
            "gold": torch.tensor(list(zip(first, second)), dtype=torch.long),  # (B, 2)
        }
        if self.table.vectors is not None:
            batch["passage_vectors"] = self.table.vectors[batch["doc_ids"]]  # (2B + B*n, H)
        else:
            batch["passages"] = self.tok([self.table.texts[i] for i in doc_idx], max_length=self.plen).model_inputs()
        return batch


# ------------------------------------------------------------------------------------------------
# the model folder


def save_mdr(query_encoder: SentenceEncoder, frozen: SentenceEncoder | None, model_dir: Path, hop2_title: bool,
             max_question_length: int, max_query_length: int, max_passage_length: int) -> None:
    """Write the trained model: one encoder (first stage) or ``query/`` + ``passage/`` (second stage,
    ``frozen`` the passage tower), and the query settings in ``mdr.json``."""
    if frozen is None:
        query_encoder.save_pretrained(model_dir)
    else:
        from reprlab.retrieval.dual_encoder import DualEncoder

        DualEncoder(query_encoder, frozen).save_pretrained(model_dir)
    atomic_write_json(Path(model_dir) / SETTINGS_FILE, {
        "method": "mdr", "hop2_title": hop2_title, "max_question_length": max_question_length,
        "max_query_length": max_query_length, "max_passage_length": max_passage_length,
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
    """(query encoder, passage encoder, settings) of a folder written by
    :func:`~reprlab.retrieval.mdr.run_mdr_training`, or of any sentence encoder (``minilm``: shared
    towers, default settings)."""
    folder = Path(str(path))
    settings = mdr_settings(path)
    if (folder / "query").is_dir() and (folder / "passage").is_dir():
        return (SentenceEncoder.from_pretrained(folder / "query"), SentenceEncoder.from_pretrained(folder / "passage"),
                settings)
    model = SentenceEncoder.from_pretrained(path)
    return model, model, settings
