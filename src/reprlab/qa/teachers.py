"""Readers as teachers of retrievers: one relevance score per (question, passage), by reader kind.

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584): a reader that reads many passages knows which ones it used, so its attention is
a relevance label for training a retriever without passage-level labels. This module is what the
distillation recipe (:mod:`reprlab.retrieval.reader_distill`) and ``reprlab score-passages`` see of a
reader, whatever its kind:

* :class:`ScoringConfig`: which signal and how it is aggregated;
* :class:`PassageTeacher`: ``score_passages(questions, passages) -> one array of scores per question``;
* :data:`TEACHER_KINDS`: the kinds of reader folders, each with the file that marks its folders, its
  signals, its loader and (for readers that can be re-trained inside the distillation loop) its
  ``fine_tune``. A kind registers itself when its module is imported (``import reprlab.qa`` imports
  them all): the Fusion-in-Decoder reader (:mod:`reprlab.qa.fid`, signal ``cross-attention``, the
  paper's) and, here, the extractive reader of :mod:`reprlab.qa.reader`.

The extractive reader reads each passage alone with the question (``[CLS] q [SEP] title: text
[SEP]``, in windows when long), so its signals, beyond the paper, are

* ``span``: the best answer span's score (start + end logit) in the passage (max over windows), the
  passage score of extractive open-domain readers;
* ``span-null``: the best span's score minus the window's null score (the start + end logit of
  [CLS], where a reader points when a window holds no answer), max over windows: SQuAD 2.0's
  answerability margin (Devlin et al. 2019), comparable across passages because each window's
  logits are measured against their own null;
* ``question-attention``: its encoder's attention from the question's tokens to the passage's, with
  the options of the FiD signal: pre- or post-softmax scores (``softmax``), averaged over heads,
  ``layers`` and question tokens, and over (``reduce="mean"``) or summed over the passage's tokens
  (mean over windows).

>>> teacher = load_teacher("runs/fid/model", ScoringConfig())                          # doctest: +SKIP
>>> teacher.score_passages(["who wrote emma?"], [[("Emma", "Emma is a novel ..."), ("X", "...")]])  # doctest: +SKIP
[array([1.93, -0.41], dtype=float32)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError, ModelLoadError, ReprlabError, config_from_dict
from reprlab.nn.attention import split_heads
from reprlab.qa.reader import READER_CONFIG_FILE, Reader, best_spans, load_reader
from reprlab.train.recipe import check, check_choice, option

SOFTMAX = ("pre", "post")
TOKENS = ("first", "all")
REDUCE = ("mean", "sum")
Passages = Sequence[Sequence[tuple[str, str]]]  # per question: (title, text) of each passage


@dataclass
class ScoringConfig:
    """How a reader scores passages (the paper's choice is the default of every field)."""

    signal: str | None = option(None, help="teacher signal: cross-attention (FiD), span or question-attention "
                                           "(extractive reader); default: the reader's first")
    softmax: str = option("pre", choices=SOFTMAX, help="attention scores before the softmax (the paper's) or after")
    tokens: str = option("first", choices=TOKENS, help="FiD decoder positions averaged: the first decoded token "
                                                       "(the paper's) or every token of the greedy answer")
    layers: list[int] | None = option(None, help="layers averaged (FiD: decoder layers; extractive: encoder "
                                                 "layers); default: all")
    reduce: str = option("mean", choices=REDUCE, help="over a passage's non-padding tokens: mean (the paper's) or sum")
    batch_size: int = option(2, help="questions per forward pass while scoring", flag="--score-batch-size")
    bf16: bool = option(False, help="score under bfloat16 autocast (faster where bf16 is native)", flag="--score-bf16")

    def __post_init__(self):
        check_choice(self.softmax, SOFTMAX, "softmax")
        check_choice(self.tokens, TOKENS, "tokens")
        check_choice(self.reduce, REDUCE, "reduce")
        check(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
            check(len(self.layers) > 0 and min(self.layers) >= 0, "layers",
                  f"must name at least one layer (>= 0), got {self.layers}")

    @classmethod
    def from_dict(cls, d: dict) -> "ScoringConfig":
        return config_from_dict(cls, d)


class PassageTeacher(Protocol):
    signal: str

    def score_passages(self, questions: Sequence[str], passages: Passages) -> list[np.ndarray]:
        """One float32 array per question: a score for each of its passages (higher = more relevant)."""


@dataclass(frozen=True)
class TeacherKind:
    """A kind of reader folder: ``marker`` names the file that tells its folders apart."""

    name: str
    marker: str
    signals: tuple[str, ...]
    load: Callable[[Path, ScoringConfig], PassageTeacher]
    # fine_tune(model_dir, examples, output_dir, train_config, callbacks, stop_after) -> (state, saved folder
    # or None): trains the reader further on (question, answers, passages) examples; None = the kind cannot.
    fine_tune: Callable | None = None


TEACHER_KINDS: dict[str, TeacherKind] = {}


def register_teacher_kind(kind: TeacherKind) -> TeacherKind:
    if kind.name in TEACHER_KINDS and TEACHER_KINDS[kind.name] != kind:
        raise ValueError(f"teacher kind {kind.name!r} is registered twice")
    TEACHER_KINDS[kind.name] = kind
    return kind


def teacher_kind(path: str | Path) -> TeacherKind:
    """The kind of the reader folder ``path`` (by its marker file; a folder with a question-answering head
    and no marker is an extractive reader)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"reader folder {folder} does not exist; train one with `reprlab train fid` or "
                             "`reprlab train reader`")
    for kind in TEACHER_KINDS.values():
        if (folder / kind.marker).is_file():
            return kind
    config = folder / "config.json"
    if config.is_file() and "ForQuestionAnswering" in config.read_text(encoding="utf-8"):
        return TEACHER_KINDS["extractive"]
    raise ModelLoadError(f"{folder} is not a reader this version can score with (kinds: "
                         f"{', '.join(f'{k.name} ({k.marker})' for k in TEACHER_KINDS.values())}); "
                         "import reprlab.qa to register every kind")


def resolve_signal(kind: TeacherKind, scoring: ScoringConfig) -> str:
    """``scoring.signal``, or the kind's first signal; a signal the kind lacks is a ConfigError."""
    signal = scoring.signal or kind.signals[0]
    if signal not in kind.signals:
        raise ConfigError(f"a {kind.name} reader gives {', '.join(kind.signals)}, not {signal!r}", field="signal")
    return signal


def load_teacher(path: str | Path, scoring: ScoringConfig | None = None) -> PassageTeacher:
    """The reader folder ``path`` as a :class:`PassageTeacher` of its kind."""
    scoring = scoring or ScoringConfig()
    kind = teacher_kind(path)
    resolve_signal(kind, scoring)
    return kind.load(Path(path), scoring)


# ------------------------------------------------------------------------------------------------
# the extractive reader as a teacher


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on ``device`` when ``bf16`` (LayerNorm and softmax stay float32), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def passage_context(title: str, text: str) -> str:
    """What the extractive teacher reads of a passage: ``"<title>: <text>"`` (the answer may be the title)."""
    return f"{title}: {text}" if title else text


class ExtractiveTeacher:
    """Span scores or question-to-passage attention of an extractive :class:`~reprlab.qa.reader.Reader`."""

    def __init__(self, reader: Reader, scoring: ScoringConfig):
        self.reader, self.scoring = reader.eval(), scoring
        self.signal = scoring.signal or "span"
        if self.signal not in EXTRACTIVE_SIGNALS:
            raise ConfigError(f"an extractive reader gives {', '.join(EXTRACTIVE_SIGNALS)}, not {self.signal!r}",
                              field="signal")

    def score_passages(self, questions: Sequence[str], passages: Passages) -> list[np.ndarray]:
        if len(questions) != len(passages):
            raise ReprlabError(f"{len(questions)} questions but {len(passages)} passage lists")
        pair_q = [q for q, ps in zip(questions, passages) for _ in ps]
        pair_c = [passage_context(t, c) for ps in passages for t, c in ps]
        flat = np.zeros(len(pair_q), dtype=np.float32)
        if pair_q:
            self.reader._ensure_window_length()
            batch = self.reader.featurize(pair_q, pair_c)
            spans = self.signal.startswith("span")
            with autocast(self.reader.device, self.scoring.bf16):
                per_window = self._span_scores(batch, minus_null=self.signal == "span-null") if spans \
                    else self._attention_scores(batch)
            owner = batch.overflow_to_sample.numpy()
            for i in range(len(pair_q)):
                values = per_window[owner == i]
                flat[i] = values.max() if spans else values.mean()
        out, at = [], 0
        for ps in passages:
            out.append(flat[at: at + len(ps)])
            at += len(ps)
        return out

    def _span_scores(self, batch, minus_null: bool = False) -> np.ndarray:
        """The best valid span's score in each window (-1e4 when a window has none), less the window's null score
        (start + end logit at [CLS], position 0) when ``minus_null``."""
        start, end, _ = self.reader.window_logits(batch)
        context_mask = (batch.sequence_ids == 1) & batch.attention_mask.bool()
        spans = best_spans(start, end, context_mask, self.reader.config.max_answer_length, 1)
        best = np.array([s[0][0] if s else -1e4 for s in spans], dtype=np.float32)
        return best - (start[:, 0] + end[:, 0]).float().numpy() if minus_null else best

    @torch.inference_mode()
    def _attention_scores(self, batch) -> np.ndarray:
        encoder = self.reader.encoder
        layers = self.scoring.layers or list(range(len(encoder.layers)))
        if max(layers) >= len(encoder.layers):
            raise ConfigError(f"layers {layers}: the reader's encoder has {len(encoder.layers)}", field="layers")
        out = []
        size = self.reader.config.batch_size
        for lo in range(0, batch.input_ids.shape[0], size):
            part = slice(lo, lo + size)
            out.append(question_passage_attention(
                encoder, batch.input_ids[part], batch.attention_mask[part], batch.token_type_ids[part],
                batch.sequence_ids[part], layers, self.scoring.softmax, self.scoring.reduce, self.reader.device))
        return np.concatenate(out)


@torch.inference_mode()
def question_passage_attention(encoder, input_ids, attention_mask, token_type_ids, sequence_ids, layers, softmax: str,
                               reduce: str, device) -> np.ndarray:
    """Per window: the encoder's attention scores from question tokens (sequence 0) to passage tokens
    (sequence 1), averaged over ``layers``, heads and question tokens, and over (``mean``) or summed over
    (``sum``) the passage tokens; (B,) float32. Every layer must be softmax attention."""
    ids, mask = input_ids.to(device), attention_mask.to(device).bool()
    seq = sequence_ids.to(device)
    q_tok, p_tok = (seq == 0) & mask, (seq == 1) & mask  # (B, T) each
    pair = q_tok[:, None, :, None] & p_tok[:, None, None, :]  # (B, 1, Tq, Tk)
    x = encoder.embed(ids, token_type_ids.to(device))
    total = torch.zeros(ids.size(0), device=device)
    for i, layer in enumerate(encoder.layers):
        if i in layers:
            attn = layer.attn
            if attn is None or not hasattr(attn, "query") or type(attn).__name__ != "SoftmaxAttention":
                raise ConfigError(f"layer {i} is not softmax attention: question-attention needs its scores",
                                  field="layers")
            q = split_heads(attn.query(x), attn.num_heads)  # (B, nh, T, hs)
            k = split_heads(attn.key(x), attn.num_heads)
            s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, nh, T, T) pre-softmax
            if softmax == "post":
                s = s.masked_fill(~mask[:, None, None, :], torch.finfo(s.dtype).min).softmax(-1)
            total += (s * pair).float().sum(dim=(1, 2, 3)) / attn.num_heads
        x, _ = layer(x, mask)
    n_q = q_tok.sum(1).clamp(min=1)
    count = n_q * (p_tok.sum(1).clamp(min=1) if reduce == "mean" else 1) * len(layers)
    return (total / count).cpu().numpy().astype(np.float32)


EXTRACTIVE_SIGNALS = ("span", "question-attention", "span-null")

register_teacher_kind(TeacherKind(
    name="extractive", marker=READER_CONFIG_FILE, signals=EXTRACTIVE_SIGNALS,
    load=lambda path, scoring: ExtractiveTeacher(load_reader(path), scoring)))
