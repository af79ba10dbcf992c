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

Training (:func:`run_reader_training`) runs the shared loop on SQuAD v1.1 / HotpotQA files with
the split rule of :mod:`reprlab.qa.squad`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
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
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.qa.squad import HOTPOTQA_CONTEXTS, QAExample, evaluate_examples, load_qa_file, split_examples
from reprlab.text.tokenizer import Batch, Tokenizer

logger = logging.getLogger("reprlab")

READER_CONFIG_FILE = "reader_config.json"


@dataclass
class ReaderConfig:
    """How the reader cuts inputs into windows and decodes spans.

    ``max_length`` is the window length in tokens (question + context + specials); None = the
    encoder's number of positions. ``stride`` tokens of context are shared by neighbouring windows.
    """

    max_length: int | None = 384
    stride: int = 128
    max_question_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    batch_size: int = 32  # windows per forward pass at inference

    def __post_init__(self):
        if self.max_answer_length < 1 or self.n_best < 1 or self.batch_size < 1:
            raise ConfigError("max_answer_length, n_best and batch_size must be at least 1")
        if self.max_length is not None and self.stride >= self.max_length - self.max_question_length - 3:
            raise ConfigError(
                f"stride {self.stride} leaves no new context per window: it must be below max_length "
                f"({self.max_length}) - max_question_length ({self.max_question_length}) - 3"
            )
        if self.stride < 0:
            raise ConfigError("stride must be >= 0")

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
        """Learning-rate multiplier of parameter ``name`` in :func:`run_reader_training` (1 here)."""
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

        The target is the first gold span; a window that does not hold all of it points at the
        [CLS] token (position 0), as in BERT's SQuAD recipe.
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
                a, b = ex.spans[0]
                start = end = 0
                idx = np.nonzero(ctx)[0]
                if len(idx) and offsets[idx[0], 0] <= a and offsets[idx[-1], 1] >= b:
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
# evaluation and the training recipe


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


def collate_features(items: list[dict[str, Any]], rng=None, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad training windows to the longest of the batch."""
    B, T = len(items), max(len(it["input_ids"]) for it in items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    ctx = torch.zeros(B, T, dtype=torch.bool)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = it["input_ids"]
        types[i, :n] = it["token_type_ids"]
        mask[i, :n] = 1
        ctx[i, :n] = it["context_mask"]
    return {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": types, "context_mask": ctx,
        "start_positions": torch.tensor([it["start_positions"] for it in items]),
        "end_positions": torch.tensor([it["end_positions"] for it in items]),
    }


def reader_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    out = model(**batch)
    return out.loss, out.metrics or {}


@dataclass
class ReaderTrainingConfig:
    """``reprlab train reader``: fine-tune a reader on SQuAD v1.1 (.json) / HotpotQA IRCoT (.jsonl) files.

    Examples are split by :func:`reprlab.qa.squad.hash_split` of their group (article title for
    SQuAD, question id for HotpotQA); the reader trains on the ``train`` side only and is evaluated
    on the ``eval`` side at the end (``eval_fraction=0`` trains on everything, evaluates nothing).
    """

    output_dir: str
    data: list[str]
    model: str = "minilm"
    eval_fraction: float = 0.25
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    bf16: bool = False
    device: str = "auto"
    evaluate: bool = True
    group_by_length: bool = True  # batches of windows of similar length (less padding), in a random order
    hotpotqa_contexts: str = field(default="supporting", metadata={
        "choices": HOTPOTQA_CONTEXTS,
        "help": "HotpotQA .jsonl: one example per supporting paragraph with the answer, or one per question "
                "over all its paragraphs (the distractor setting)"})

    def __post_init__(self):
        if isinstance(self.reader, dict):
            self.reader = ReaderConfig.from_dict(self.reader)
        if not self.data:
            raise ConfigError("no training data: give at least one SQuAD .json or HotpotQA .jsonl file")
        if self.hotpotqa_contexts not in HOTPOTQA_CONTEXTS:
            raise ConfigError(f"hotpotqa_contexts must be one of {HOTPOTQA_CONTEXTS}, got {self.hotpotqa_contexts!r}")


@dataclass
class ReaderTrainingResult:
    model_dir: Path | None
    steps: int
    train_examples: int
    train_windows: int
    eval_metrics: dict[str, dict] | None  # {data file: EM/F1 on its eval side}


def load_split(files: Sequence[str], eval_fraction: float, hotpotqa_contexts: str = "supporting"
               ) -> tuple[list[QAExample], dict[str, list[QAExample]]]:
    """(train examples of all files, {file: eval examples}) by the hash split rule."""
    train_all: list[QAExample] = []
    held: dict[str, list[QAExample]] = {}
    for path in files:
        tr, ev = split_examples(load_qa_file(path, hotpotqa_contexts), eval_fraction)
        train_all.extend(tr)
        held[str(path)] = ev
    return train_all, held


def length_grouped_order(lengths: Sequence[int], batch_size: int, steps: int, seed: int) -> list[int]:
    """Indices for ``steps`` batches of ``batch_size`` whose members have similar lengths.

    Each pass over the data draws a random permutation, sorts it by length inside mega-batches of
    32 batches, cuts batches (dropping the remainder) and shuffles the batches' order, so that
    padding is small while the order still changes from pass to pass.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    per_pass = n // batch_size
    if per_pass < 1:
        raise ConfigError(f"{n} training windows are fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    mega = 32 * batch_size
    while len(order) < steps * batch_size:
        perm = rng.permutation(n)
        chunks = np.split(perm, range(mega, n, mega))
        grouped = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
        batches = grouped[: per_pass * batch_size].reshape(per_pass, batch_size)
        order.extend(batches[rng.permutation(per_pass)].reshape(-1).tolist())
    return order[: steps * batch_size]


def reader_optimizer(model: Reader, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with one group per (learning-rate scale, decay or not): no decay on biases and norms, and
    ``model.lr_scale(name)`` x ``lr`` per parameter (e.g. Block Skim's fresh predictors learn faster)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and "norm" not in name.lower()
            groups.setdefault((model.lr_scale(name), decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
         for (scale, decay), ps in sorted(groups.items())], lr=lr)


def run_reader_training(
    config: ReaderTrainingConfig, model: Reader | None = None, stop_after: int | None = None
) -> ReaderTrainingResult:
    """Fine-tune ``model`` (default: ``Reader.from_pretrained(config.model, config.reader)``) with the span
    loss (plus whatever loss ``model.forward`` adds, e.g. Block Skim's) on the shared training loop,
    save it to ``<output_dir>/model`` and evaluate it on the held-out split.

    ``stop_after`` ends the run after that many steps as if killed (nothing saved but the loop's
    checkpoints; ``model_dir`` is then None): for resume tests."""
    from reprlab.train import TrainConfig, train

    train_ex, held = load_split(config.data, config.eval_fraction, config.hotpotqa_contexts)
    if not train_ex:
        raise ConfigError(f"the train side of {', '.join(config.data)} is empty (eval_fraction {config.eval_fraction})")
    if model is None:
        torch.manual_seed(config.seed)  # the fresh head's initialisation is part of the run
        model = Reader.from_pretrained(config.model, config.reader)
    features = model.training_features(train_ex)
    logger.info(f"reader training: {len(train_ex)} examples, {len(features)} windows")
    out = Path(config.output_dir)
    dataset: Sequence = features
    steps, epochs, shuffle = config.max_steps, config.epochs, True
    if config.group_by_length:  # the loop then reads this pre-arranged sequence in order, once
        steps = config.max_steps or max(1, int(config.epochs * (len(features) // config.batch_size)))
        order = length_grouped_order([len(f["input_ids"]) for f in features], config.batch_size, steps, config.seed)
        dataset, epochs, shuffle = [features[i] for i in order], 1.0, False
    train_cfg = TrainConfig(
        output_dir=str(out), max_steps=steps, epochs=epochs, batch_size=config.batch_size,
        grad_accum=config.grad_accum, lr=config.lr, warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay, seed=config.seed, checkpoint_every=config.checkpoint_every,
        resume=config.resume, bf16=config.bf16, device=config.device, shuffle=shuffle,
        extra={"recipe": "reader", "data": list(config.data), "eval_fraction": config.eval_fraction,
               "epochs": config.epochs, "group_by_length": config.group_by_length},
    )
    pad_id = model.tokenizer.pad_id
    optimizer = reader_optimizer(model, config.lr, config.weight_decay)  # the loop's .to(device) keeps the params
    state = train(model, dataset, lambda items, rng: collate_features(items, rng, pad_id), reader_loss, train_cfg,
                  optimizer=optimizer, stop_after=stop_after)
    model_dir = out / "model"
    metrics = None
    if state.step < state.total_steps:  # stopped early (stop_after)
        return ReaderTrainingResult(None, state.step, len(train_ex), len(features), None)
    if state.rank == 0:
        model.save_pretrained(model_dir)
        atomic_write_json(out / "split.json", {
            "rule": "sha256(group)[:8] / 2**32 < eval_fraction -> eval; group = SQuAD article title / HotpotQA "
                    "question id",
            "eval_fraction": config.eval_fraction, "train_examples": len(train_ex), "train_windows": len(features),
            "eval_examples": {f: len(ev) for f, ev in held.items()},
        })
        if config.evaluate and any(held.values()):
            metrics = {f: evaluate_reader(model, ev) for f, ev in held.items() if ev}
            atomic_write_json(out / "eval.json", metrics)
            for f, m in metrics.items():
                logger.info(f"eval {f}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} on {m['n']} questions")
    return ReaderTrainingResult(model_dir, state.step, len(train_ex), len(features), metrics)
