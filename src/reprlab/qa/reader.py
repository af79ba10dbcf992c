"""The extractive reader: start/end heads on an :class:`Encoder`, windows, n-best span decoding.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
NAACL 2019, section 4.2 (https://github.com/google-research/bert, ``run_squad.py``). A linear head
on every token gives a start and an end logit; a span's score is start + end logit. Contexts longer
than ``max_length`` are read in overlapping windows (``stride`` tokens shared by neighbours); the
best spans of every window and every context compete on score, and a span is mapped back to the
context's characters through the tokenizer's offsets, so the answer is always a substring of a
context: never question, special or padding tokens, ``end >= start``, at most
``max_answer_length`` tokens.

The encoder is any :class:`Encoder` (any attention from the registry, any length its positions
allow: with ``max_length`` at least the input's length there is one window per context). Saved
folders use the layout of ``transformers``' ``BertForQuestionAnswering`` (``bert.*`` encoder
weights + ``qa_outputs``), so ``AutoModelForQuestionAnswering.from_pretrained(folder)`` loads them.

>>> reader = Reader.from_pretrained("trained-reader-folder")                    # doctest: +SKIP
>>> reader.answer("Who wrote it?", "It was written by Ada Lovelace in 1843.")[0].text  # doctest: +SKIP
'Ada Lovelace'

:func:`load_reader` opens any reader folder as its own kind (a Block Skim folder as a
:class:`~reprlab.qa.block_skim.BlockSkimReader`: subclasses register the file that marks their
folders in :data:`READER_KINDS`). Training is the ``train reader`` recipe (:mod:`reprlab.qa.recipe`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from reprlab.encoder import Encoder
from reprlab.errors import ConfigError, ModelLoadError, ReprlabError, config_from_dict
from reprlab.io import atomic_dir
from reprlab.qa.squad import QAExample, evaluate_examples
from reprlab.text.tokenizer import Batch, Tokenizer
from reprlab.train.recipe import check, option

logger = logging.getLogger("reprlab")

READER_CONFIG_FILE = "reader_config.json"


@dataclass
class ReaderConfig:
    """How the reader cuts inputs into windows and decodes spans.

    ``max_length`` is the window length in tokens (question + context + specials); None = the
    encoder's number of positions. ``stride`` tokens of context are shared by neighbouring windows.
    """

    max_length: int | None = option(384, help="window length in tokens (question + context + specials)")
    stride: int = option(128, help="context tokens shared by neighbouring windows")
    max_question_length: int = option(64, help="question tokens kept (a longer question is clipped)")
    max_answer_length: int = option(30, help="longest answer span in tokens")
    n_best: int = option(20, help="best spans of each window that compete for the answer")
    batch_size: int = option(32, help="windows per forward pass at inference and evaluation", flag="--eval-batch-size")

    def __post_init__(self):
        for name in ("max_answer_length", "n_best", "batch_size"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        check(self.stride >= 0, "stride", f"must be >= 0, got {self.stride}")
        check(self.max_length is None or self.stride < self.max_length - self.max_question_length - 3, "stride",
              f"stride {self.stride} leaves no new context per window: it must be below max_length "
              f"({self.max_length}) - max_question_length ({self.max_question_length}) - 3")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReaderConfig":
        return config_from_dict(cls, d)


@dataclass
class Answer:
    """A span of one context: its text, score (start + end logit) and character offsets."""

    text: str
    score: float
    start: int
    end: int
    context_index: int = 0
    context_id: str | None = None


class ReaderOutput(NamedTuple):
    start_logits: torch.Tensor  # (B, T); -inf at positions a Block Skim reader removed
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None
    metrics: dict[str, float] | None = None
    layer_lengths: list[int] | None = None  # sequence length entering each layer (Block Skim)
    keep_probs: list[torch.Tensor] | None = None  # (B, blocks) P(keep) at each skim layer (Block Skim)


def span_loss(start_logits, end_logits, attention_mask, start_positions, end_positions) -> torch.Tensor:
    """Mean of the start and end cross-entropies over the real tokens of each window."""
    pad = ~attention_mask.bool()
    s = start_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    e = end_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    return (F.cross_entropy(s, start_positions) + F.cross_entropy(e, end_positions)) / 2


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    max_answer_length: int,
    n_best: int,
) -> list[list[tuple[float, int, int]]]:
    """The ``n_best`` highest-scoring valid spans of each window, as (score, start token, end token).

    Valid: start and end are context tokens (``context_mask``), ``start <= end < start +
    max_answer_length``, and both logits are finite. Scores are start + end logit, best first.
    """
    B, T = start_logits.shape
    L = min(max_answer_length, T)
    neg = float("-inf")
    s = start_logits.float().masked_fill(~context_mask, neg)
    e = end_logits.float().masked_fill(~context_mask, neg)
    e_ahead = F.pad(e, (0, L - 1), value=neg).unfold(1, L, 1)  # (B, T, L): e_ahead[b, i, d] = e[b, i + d]
    scores = (s[:, :, None] + e_ahead).reshape(B, T * L)  # span (i, i + d) at i * L + d
    k = min(n_best, T * L)
    top, idx = scores.topk(k, dim=1)
    out: list[list[tuple[float, int, int]]] = []
    for b in range(B):
        spans = []
        for score, flat in zip(top[b].tolist(), idx[b].tolist()):
            if score == neg or score != score:  # -inf or NaN: no valid span left
                break
            i, d = divmod(flat, L)
            spans.append((score, i, i + d))
        out.append(spans)
    return out


class Reader(nn.Module):
    """Extractive QA on an :class:`Encoder`: ``qa_outputs`` maps each token to a start and an end logit.

    ``forward(input_ids, attention_mask, token_type_ids=None, context_mask=None, start_positions=None,
    end_positions=None) -> ReaderOutput``; with positions it also returns the span loss.
    ``answer(question, contexts)`` is the inference path: windows, batching, n-best decoding.
    """

    def __init__(self, encoder: Encoder, tokenizer: Tokenizer, config: ReaderConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config or ReaderConfig()
        positions = encoder.config.max_position_embeddings
        if self.config.max_length is not None and self.config.max_length > positions:
            raise ConfigError(f"max_length {self.config.max_length} exceeds the encoder's {positions} positions")
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.qa_outputs.bias)

    @property
    def device(self) -> torch.device:
        return self.qa_outputs.weight.device

    @property
    def max_length(self) -> int:
        return self.config.max_length or self.encoder.config.max_position_embeddings

    def lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of parameter ``name`` in training (1 here; see
        :func:`~reprlab.qa.training.reader_optimizer`)."""
        return 1.0

    def span_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.qa_outputs(hidden).unbind(-1)  # (B, T) each
        return start, end

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> ReaderOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids=token_type_ids).last_hidden_state
        start, end = self.span_logits(hidden)
        if start_positions is None:
            return ReaderOutput(start, end)
        loss = span_loss(start, end, attention_mask, start_positions, end_positions)
        return ReaderOutput(start, end, loss, {"qa_loss": loss.item()})

    # -------------------------------------------------------------------------------- features

    def _clip_question(self, question: str) -> str:
        """The question cut to ``max_question_length`` tokens (at a token boundary of the text)."""
        if not question.strip():
            raise ReprlabError("the question is empty")
        enc = self.tokenizer.encode_raw([question])[0]
        n_special = sum(1 for s in enc.sequence_ids if s is None)
        if len(enc.ids) - n_special <= self.config.max_question_length:
            return question
        return question[: enc.offsets[self.config.max_question_length][1]]

    def featurize(self, questions: Sequence[str], contexts: Sequence[str]) -> Batch:
        """Windows of every (question, context) pair: a padded :class:`Batch` with offsets,
        sequence ids and ``overflow_to_sample`` (the pair index of each window)."""
        questions = [self._clip_question(q) for q in questions]
        try:
            return self.tokenizer(
                questions, pairs=list(contexts), max_length=self.max_length, truncation="only_second",
                stride=self.config.stride, return_overflowing=True, return_offsets=True,
            )
        except Exception as exc:
            if isinstance(exc, ReprlabError):
                raise
            raise ReprlabError(f"cannot cut the inputs into windows of {self.max_length} tokens with stride "
                               f"{self.config.stride}: {exc}") from exc

    def _ensure_window_length(self) -> None:
        if self.max_length > self.tokenizer.model_max_length:
            # the tokenizer's limit stands for the model's; this reader's encoder has the positions
            self.tokenizer.model_max_length = self.max_length

    # -------------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def window_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
        """Start/end logits (float32, on CPU) of every window of ``batch``, in chunks of ``batch_size``,
        and (for a model that reports them, e.g. Block Skim) the token slots entering each layer."""
        starts, ends = [], []
        lengths = None
        n = batch.input_ids.shape[0]
        context_mask = batch.sequence_ids == 1
        for lo in range(0, n, self.config.batch_size):
            hi = min(n, lo + self.config.batch_size)
            real = int(batch.attention_mask[lo:hi].sum(1).max())
            out = self(
                batch.input_ids[lo:hi, :real].to(self.device),
                batch.attention_mask[lo:hi, :real].to(self.device),
                token_type_ids=batch.token_type_ids[lo:hi, :real].to(self.device),
                context_mask=context_mask[lo:hi, :real].to(self.device),
            )
            T = batch.input_ids.shape[1]
            pad = (0, T - real)
            starts.append(F.pad(out.start_logits.float().cpu(), pad, value=float("-inf")))
            ends.append(F.pad(out.end_logits.float().cpu(), pad, value=float("-inf")))
            if out.layer_lengths is not None:  # token slots (rows x length) entering each layer
                slots = [n * (hi - lo) for n in out.layer_lengths]
                lengths = slots if lengths is None else [a + b for a, b in zip(lengths, slots)]
        return torch.cat(starts), torch.cat(ends), lengths

    def answer_batch(
        self,
        questions: Sequence[str],
        contexts: Sequence[Sequence[str]],
        top_k: int = 1,
        context_ids: Sequence[Sequence[str]] | None = None,
        stats: dict | None = None,
    ) -> list[list[Answer]]:
        """Ranked answers for each question over its own list of contexts.

        ``stats``, when given, accumulates ``windows`` and (Block Skim) ``layer_slots``: the token
        slots that entered each layer."""
        if len(questions) != len(contexts):
            raise ReprlabError(f"{len(questions)} questions but {len(contexts)} context lists")
        pair_q, pair_c, owner = [], [], []
        for qi, (question, ctxs) in enumerate(zip(questions, contexts)):
            if isinstance(ctxs, str):
                ctxs = [ctxs]
            for ci, ctx in enumerate(ctxs):
                pair_q.append(question)
                pair_c.append(ctx)
                owner.append((qi, ci))
        results: list[list[Answer]] = [[] for _ in questions]
        if not pair_q:
            return results
        self._ensure_window_length()
        was_training = self.training
        self.eval()
        try:
            batch = self.featurize(pair_q, pair_c)
            start, end, slots = self.window_logits(batch)
        finally:
            self.train(was_training)
        if stats is not None:
            stats["windows"] = stats.get("windows", 0) + batch.input_ids.shape[0]
            if slots is not None:
                prev = stats.get("layer_slots")
                stats["layer_slots"] = slots if prev is None else [a + b for a, b in zip(prev, slots)]
        context_mask = (batch.sequence_ids == 1) & batch.attention_mask.bool()
        spans = best_spans(start, end, context_mask, self.config.max_answer_length, self.config.n_best)
        offsets = batch.offsets.tolist()
        best: list[dict[tuple[int, int, int], Answer]] = [{} for _ in questions]
        for w, window_spans in enumerate(spans):
            qi, ci = owner[int(batch.overflow_to_sample[w])]
            text = pair_c[int(batch.overflow_to_sample[w])]
            for score, i, j in window_spans:
                a, b = offsets[w][i][0], offsets[w][j][1]
                key = (ci, a, b)
                if key not in best[qi] or best[qi][key].score < score:
                    cid = context_ids[qi][ci] if context_ids is not None else None
                    best[qi][key] = Answer(text[a:b], score, a, b, ci, cid)
        for qi in range(len(questions)):
            results[qi] = sorted(best[qi].values(), key=lambda x: -x.score)[:top_k]
        return results

    def answer(
        self,
        question: str,
        contexts: str | Sequence[str],
        top_k: int = 1,
        context_ids: Sequence[str] | None = None,
        stats: dict | None = None,
    ) -> list[Answer]:
        """The ``top_k`` best spans over ``contexts`` (one string or several), best first.

        Each :class:`Answer` names its context (``context_index``, and ``context_id`` when ids are
        given, e.g. the passage ids of a retrieval run) and its character span in it.
        """
        if isinstance(contexts, str):
            contexts = [contexts]
        if context_ids is not None and len(context_ids) != len(contexts):
            raise ReprlabError(f"{len(contexts)} contexts but {len(context_ids)} context ids")
        ids = [list(context_ids)] if context_ids is not None else None
        return self.answer_batch([question], [list(contexts)], top_k=top_k, context_ids=ids, stats=stats)[0]

    def predict(
        self, examples: Sequence[QAExample], show_progress: bool | None = None, stats: dict | None = None
    ) -> dict[str, str]:
        """``{example id: best answer text}`` ('' when no span is possible), one question at a time."""
        from reprlab.logs import progress

        out = {}
        for ex in progress(examples, show=show_progress, desc="answer", unit="q"):
            found = self.answer(ex.question, ex.context, stats=stats)
            out[ex.id] = found[0].text if found else ""
        return out

    # -------------------------------------------------------------------------------- training data

    def training_features(self, examples: Sequence[QAExample]) -> list[dict[str, Any]]:
        """One training item per window: token ids, context mask and the answer's token span.

        The target is the first gold span; a window that does not hold all of it, and every window of
        an example without answers (SQuAD 2.0's unanswerable), points at the [CLS] token (position 0),
        as in BERT's SQuAD recipe.
        """
        self._ensure_window_length()
        items: list[dict[str, Any]] = []
        chunk = 256
        for lo in range(0, len(examples), chunk):
            part = examples[lo : lo + chunk]
            batch = self.featurize([ex.question for ex in part], [ex.context for ex in part])
            for w in range(batch.input_ids.shape[0]):
                ex = part[int(batch.overflow_to_sample[w])]
                n = int(batch.attention_mask[w].sum())
                ctx = (batch.sequence_ids[w, :n] == 1).numpy()
                offsets = batch.offsets[w, :n].numpy()
                a, b = ex.spans[0] if ex.spans else (-1, -1)  # no answer (SQuAD 2.0): every window at [CLS]
                start = end = 0
                idx = np.nonzero(ctx)[0]
                if ex.spans and len(idx) and offsets[idx[0], 0] <= a and offsets[idx[-1], 1] >= b:
                    start = int(idx[offsets[idx, 0] <= a][-1])
                    end = int(idx[offsets[idx, 1] >= b][0])
                    if end < start:  # an answer inside one token
                        end = start
                items.append({
                    "input_ids": batch.input_ids[w, :n].clone(),
                    "token_type_ids": batch.token_type_ids[w, :n].clone(),
                    "context_mask": torch.from_numpy(ctx.copy()),
                    "start_positions": start,
                    "end_positions": end,
                })
        return items

    # -------------------------------------------------------------------------------- persistence

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, config: ReaderConfig | None = None, dtype: torch.dtype | None = None,
        **encoder_overrides,
    ) -> "Reader":
        """A reader folder (ours or ``transformers``' BertForQuestionAnswering), or any encoder folder /
        ``minilm`` to start training from (the head is then initialised fresh)."""
        from reprlab.hub import resolve_model_path

        folder = resolve_model_path(name_or_path)
        encoder = Encoder.from_pretrained(folder, dtype=dtype, **encoder_overrides)
        saved_cfg = folder / READER_CONFIG_FILE
        if config is None and saved_cfg.is_file():
            try:
                config = ReaderConfig.from_dict(json.loads(saved_cfg.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ModelLoadError(f"{saved_cfg}: not a reader config ({exc})") from exc
        reader = cls(encoder, Tokenizer.from_pretrained(folder), config)
        head = _read_tensors(folder / "model.safetensors", "qa_outputs.")
        if head:
            try:
                reader.qa_outputs.load_state_dict(head)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"{folder}/model.safetensors: qa_outputs does not fit this encoder ({exc})") from exc
        else:
            logger.info(f"{folder} has no qa_outputs head: initialised fresh")
        reader._load_extra(folder)
        if dtype is not None:
            reader.to(dtype)
        return reader

    def _load_extra(self, folder: Path) -> None:
        """Hook for subclasses that save more than the encoder and the head."""

    def save_pretrained(self, path: str | Path) -> None:
        """Write the folder atomically: config.json + model.safetensors (BertForQuestionAnswering names),
        the tokenizer files and reader_config.json."""
        with atomic_dir(path) as tmp:
            self._write_files(tmp)

    def _write_files(self, folder: Path) -> None:
        from reprlab.hub import encoder_state_for_hf, hf_config

        hf = hf_config(self.encoder.config)
        hf["architectures"] = ["BertForQuestionAnswering"]
        (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        state = {f"bert.{k}": v for k, v in encoder_state_for_hf(self.encoder).items()}
        state.update({f"qa_outputs.{k}": v.detach().contiguous() for k, v in self.qa_outputs.state_dict().items()})
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save(folder)
        (folder / READER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")


def _read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors of ``path`` whose names start with ``prefix`` (prefix removed), as float32."""
    if not path.is_file():
        return {}
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.startswith(prefix):
                t = f.get_tensor(key)
                out[key[len(prefix):]] = t.float() if t.is_floating_point() else t
    return out


# ------------------------------------------------------------------------------------------------
# evaluation and loading


def evaluate_reader(reader: Reader, examples: Sequence[QAExample], show_progress: bool | None = None) -> dict:
    """EM/F1 (percent) of ``reader`` on ``examples`` and the wall time per question (one at a time)."""
    if not examples:
        raise ReprlabError("no examples to evaluate")
    t0 = time.perf_counter()
    predictions = reader.predict(examples, show_progress=show_progress)
    seconds = time.perf_counter() - t0
    metrics = evaluate_examples(examples, predictions)
    metrics.update(n=len(examples), seconds_per_question=seconds / len(examples))
    return metrics


READER_KINDS: dict[str, type[Reader]] = {}
"""Reader classes by the file that marks their folders (``block_skim.json``: Block Skim); a subclass
registers itself when its module is imported (``reprlab.qa`` imports them all)."""


def load_reader(path: str | Path) -> Reader:
    """A reader folder saved by ``reprlab train reader`` (as the kind its files name, e.g. Block Skim) or by
    transformers' ``BertForQuestionAnswering``, in eval mode; anything else is a ModelLoadError."""
    from reprlab.hub import resolve_model_path

    folder = resolve_model_path(path)
    config = folder / "config.json"
    is_hf_qa = config.is_file() and "ForQuestionAnswering" in config.read_text(encoding="utf-8")
    if not (folder / READER_CONFIG_FILE).is_file() and not is_hf_qa:
        raise ModelLoadError(f"{path} is not a reader (no {READER_CONFIG_FILE} and no question-answering head); "
                             "train one with `reprlab train reader`")
    cls = next((kind for marker, kind in READER_KINDS.items() if (folder / marker).is_file()), Reader)
    return cls.from_pretrained(folder).eval()
