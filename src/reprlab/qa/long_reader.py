"""Long-context reading without windows: the extractive reader on a Cluster-Former encoder.

Wang et al., "Cluster-Former: Clustering-based Sparse Transformer for Question Answering", Findings
of ACL-IJCNLP 2021 (arXiv:2009.06097; no official code). The paper reads a question over thousands
of tokens at once with an encoder that interleaves sliding-window layers (local context) and
Cluster-Former layers (tokens grouped by k-means clusters of their hidden states: long-range
context); see :mod:`reprlab.nn.cluster`. Here the reader of :mod:`reprlab.qa.reader` runs on such an
encoder over a HotpotQA question and **all** of its paragraphs as one sequence (~1,200 word pieces
on average, up to ~3,000), where the plain reader needs overlapping 384-token windows that never see
both supporting paragraphs together.

The encoder starts from a BERT-family checkpoint (all-MiniLM-L6-v2 by default): the q/k/v/out
weights of every layer load into either layer kind. MiniLM has 512 learned positions; inputs up to
``max_positions`` tokens use :func:`extend_position_embeddings`, which tiles the learned table
(positions p and p + 512 start equal), as Longformer (Beltagy et al., 2020) initialised its 4,096
positions by copying RoBERTa's 512; fine-tuning then adapts them.

Three encoders are compared by the recipe (:func:`run_long_reader_training`, ``attention``):

* ``cluster-former``: sliding-window layers with Cluster-Former layers at ``cluster_layers``
  (default layers 2 and 4 of 6: the middle of the stack, as the paper found best); the question
  (the first ``max_question_length + 2`` tokens: [CLS] question [SEP]) joins every window and
  chunk, as the paper concatenates the question to every window;
* ``sliding-window``: every layer a sliding-window layer (the paper's local-only baseline);
* ``softmax``: full attention over the whole input (quadratic; fits at these lengths on a CPU);
* ``windows``: the plain reader with its usual 384-token windows (stride 128) and 512 positions.

Data (:func:`load_long_hotpotqa`): each IRCoT HotpotQA question becomes one example whose context
is its paragraphs in file order, each as ``"<title>: <text>"``, joined by newlines. The training
span is the first whole-word occurrence of a gold answer in a supporting paragraph (else anywhere in
the context). Questions whose answers are yes/no, or found nowhere in the text, are left out (an
extractive reader cannot give them). Train/eval split: the multi-hop rule of
:func:`reprlab.text.hotpotqa.split_questions` (SHA-256 of the question id, eval fraction 0.3: 344
train / 156 eval questions of the 500).

>>> reader = build_long_reader("minilm", LongReaderConfig(attention="cluster-former"))   # doctest: +SKIP
>>> reader.answer("Which city hosted it?", very_long_context)[0].text                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError, ReprlabError, config_from_dict
from reprlab.io import atomic_write_json
from reprlab.qa.reader import Reader, ReaderConfig, collate_features, evaluate_reader, reader_loss
from reprlab.qa.squad import QAExample, paragraphs_example
from reprlab.text.hotpotqa import EVAL_FRACTION, HotpotData, load_hotpotqa, split_questions

logger = logging.getLogger("reprlab")

ENCODERS = ("cluster-former", "sliding-window", "softmax", "windows")


# ------------------------------------------------------------------------------------------------
# positions


def extend_position_embeddings(encoder: Encoder, max_positions: int) -> Encoder:
    """Give ``encoder`` ``max_positions`` learned positions by tiling its table (in place; returns it).

    Row ``p`` of the new table is row ``p mod P`` of the old one (P = the old number of positions),
    as Longformer copied RoBERTa's 512 positions over 4,096. The config's
    ``max_position_embeddings`` changes with it, so ``save_pretrained`` writes the longer table and
    loading restores it. Attention entries whose weights are sized by the number of positions (the
    synthesizers) cannot be extended.
    """
    emb = encoder.embeddings
    old = emb.position.weight
    P, E = old.shape
    if max_positions < P:
        raise ConfigError(f"max_positions {max_positions} is below the encoder's {P} positions; it can only grow")
    if max_positions == P:
        return encoder
    sized = sorted({getattr(layer.attn, "registry_name", "") for layer in encoder.layers if layer.attn is not None}
                   & {n for n in _position_sized()})
    if sized:
        raise ConfigError(f"attention {sized[0]!r} has weights sized by the number of positions; "
                          "its positions cannot be extended")
    table = nn.Embedding(max_positions, E, device=old.device, dtype=old.dtype)
    with torch.no_grad():
        table.weight.copy_(old.detach().repeat(math.ceil(max_positions / P), 1)[:max_positions])
    emb.position = table
    emb.max_positions = max_positions
    encoder.config.max_position_embeddings = max_positions
    return encoder


def _position_sized() -> tuple[str, ...]:
    from reprlab.nn.attention import ATTENTION

    return tuple(n for n in ATTENTION if n.startswith("synthesizer-"))


# ------------------------------------------------------------------------------------------------
# the model


@dataclass
class LongReaderConfig:
    """The encoder and decoding of a long-context reader (see the module docstring for ``attention``)."""

    attention: str = field(default="cluster-former", metadata={"choices": ENCODERS})
    cluster_layers: list[int] = field(default_factory=lambda: [2, 4])  # layers that are Cluster-Former layers
    max_positions: int = 4096  # inputs are truncated to this many tokens (positions tiled from 512)
    window: int = 256  # sliding-window length (tokens after the question)
    stride: int = 128  # sliding-window step: each token is averaged over window / stride windows
    num_clusters: int = 16
    cluster_window: int | None = None  # chunk length in cluster order (None = window)
    memory_size: int = 4096
    memory_per_step: int = 256
    refresh_every: int = 50  # training forward passes between k-means refits
    kmeans_iters: int = 10
    max_question_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    window_length: int = 384  # attention="windows": the plain reader's window and stride
    window_stride: int = 128

    def __post_init__(self):
        if self.attention not in ENCODERS:
            raise ConfigError(f"unknown long-reader attention {self.attention!r}; choose one of: {', '.join(ENCODERS)}")
        if self.max_positions < 1 or self.window < 1 or not 1 <= self.stride <= self.window:
            raise ConfigError("need max_positions >= 1, window >= 1 and 1 <= stride <= window")

    def layer_attention(self, num_layers: int) -> list[str] | None:
        """Per-layer attention names for an encoder of ``num_layers`` layers (None = softmax everywhere)."""
        if self.attention in ("softmax", "windows"):
            return None
        bad = [i for i in self.cluster_layers if not 0 <= i < num_layers]
        if bad:
            raise ConfigError(f"cluster_layers {bad} are outside the encoder's {num_layers} layers")
        names = ["sliding-window"] * num_layers
        if self.attention == "cluster-former":
            for i in self.cluster_layers:
                names[i] = "cluster-former"
        return names

    def attention_kwargs(self) -> dict[str, Any]:
        return dict(window=self.window, stride=self.stride, global_prefix=self.max_question_length + 2,
                    num_clusters=self.num_clusters, cluster_window=self.cluster_window or self.window,
                    memory_size=self.memory_size, memory_per_step=self.memory_per_step,
                    refresh_every=self.refresh_every, kmeans_iters=self.kmeans_iters)

    def reader_config(self) -> ReaderConfig:
        if self.attention == "windows":
            return ReaderConfig(max_length=self.window_length, stride=self.window_stride,
                                max_question_length=self.max_question_length,
                                max_answer_length=self.max_answer_length, n_best=self.n_best)
        # max_length None: one window of up to the encoder's (extended) positions
        return ReaderConfig(max_length=None, stride=min(128, self.max_positions // 4),
                            max_question_length=self.max_question_length, max_answer_length=self.max_answer_length,
                            n_best=self.n_best, batch_size=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LongReaderConfig":
        return config_from_dict(cls, d)


def build_long_reader(model: str | Path, config: LongReaderConfig) -> Reader:
    """A :class:`Reader` for long inputs from an encoder or reader folder (or ``minilm``).

    The checkpoint's q/k/v/out weights load into the sliding-window / Cluster-Former layers (their
    centroids and memory start empty unless the folder has them), positions are tiled to
    ``config.max_positions``, and a ``qa_outputs`` head in the folder is kept. With
    ``attention="windows"`` this is the plain windowed reader.
    """
    if config.attention == "windows":
        return Reader.from_pretrained(model, config.reader_config())
    num_layers = EncoderConfig.from_pretrained(model).num_layers
    overrides: dict[str, Any] = {}
    names = config.layer_attention(num_layers)
    if names is not None:
        overrides = dict(layer_attention=names, attention_kwargs=config.attention_kwargs())
    reader = Reader.from_pretrained(model, config.reader_config(), **overrides)
    extend_position_embeddings(reader.encoder, config.max_positions)
    return reader


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class LongExamples:
    train: list[QAExample]
    eval: list[QAExample]
    skipped: dict[str, int]  # {"yes/no": n, "not found": n}


def long_example(data: HotpotData, question) -> QAExample | str:
    """One question over all its paragraphs, or the reason it is left out ("yes/no", "not found")."""
    answers = [a for a in question.answers if a.strip()]
    if not answers or all(a.strip().lower() in ("yes", "no") for a in answers):
        return "yes/no"
    paragraphs = [(data.corpus[pid]["title"], data.corpus[pid]["text"], pid in question.gold)
                  for pid in question.paragraphs]
    return paragraphs_example(question.id, question.question, paragraphs, answers) or "not found"


def load_long_hotpotqa(path: str | Path, eval_fraction: float = EVAL_FRACTION) -> LongExamples:
    """Train/eval long examples of an IRCoT (or original-layout) HotpotQA file, split by question id."""
    data = load_hotpotqa(path)
    train_q, eval_q = split_questions(data.questions, eval_fraction)
    skipped = {"yes/no": 0, "not found": 0}
    sides = []
    for questions in (train_q, eval_q):
        kept = []
        for q in questions:
            ex = long_example(data, q)
            if isinstance(ex, str):
                skipped[ex] += 1
            else:
                kept.append(ex)
        sides.append(kept)
    return LongExamples(sides[0], sides[1], skipped)


# ------------------------------------------------------------------------------------------------
# the recipe


@dataclass
class LongReaderTrainingConfig:
    """``reprlab train long-reader``: fine-tune a long-context reader on HotpotQA, all paragraphs at once.

    ``model`` is an encoder or reader folder (or ``minilm``): e.g. a reader already fine-tuned on
    SQuAD with ``reprlab train reader``. Before training, the centroids of every Cluster-Former
    layer are fitted on ``calibration_examples`` training inputs (:func:`~reprlab.nn.cluster.calibrate_centroids`);
    training refits them every ``reader.refresh_every`` forward passes.
    """

    output_dir: str
    data: str
    model: str = "minilm"
    reader: LongReaderConfig = field(default_factory=LongReaderConfig)
    eval_fraction: float = EVAL_FRACTION
    max_train_examples: int | None = None  # the first N training questions (budget); None = all
    max_eval_examples: int | None = None
    calibration_examples: int = 16
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 4  # inputs of ~1,200 tokens: one per forward pass by default
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    device: str = "auto"
    evaluate: bool = True

    def __post_init__(self):
        if isinstance(self.reader, dict):
            self.reader = LongReaderConfig.from_dict(self.reader)


@dataclass
class LongReaderTrainingResult:
    model_dir: Path | None
    steps: int
    train_examples: int
    train_features: int
    eval_metrics: dict[str, Any] | None  # EM/F1 (percent), n, seconds_per_question on the eval side
    skipped: dict[str, int]


def run_long_reader_training(
    config: LongReaderTrainingConfig, stop_after: int | None = None
) -> LongReaderTrainingResult:
    """Build the long reader, fit its centroids, fine-tune it on the train side with the span loss on
    the shared loop, save it to ``<output_dir>/model`` and evaluate it on the eval side.

    ``stop_after`` ends the run after that many steps as if killed (for resume tests)."""
    from reprlab.nn.cluster import calibrate_centroids, cluster_layers
    from reprlab.train import TrainConfig, train

    data = load_long_hotpotqa(config.data, config.eval_fraction)
    train_ex = data.train[: config.max_train_examples] if config.max_train_examples else data.train
    eval_ex = data.eval[: config.max_eval_examples] if config.max_eval_examples else data.eval
    if not train_ex:
        raise ConfigError(f"no training questions in {config.data} (eval_fraction {config.eval_fraction})")
    torch.manual_seed(config.seed)  # a fresh head's initialisation is part of the run
    reader = build_long_reader(config.model, config.reader)
    features = reader.training_features(train_ex)
    lengths = [len(f["input_ids"]) for f in features]
    logger.info(f"long reader ({config.reader.attention}): {len(train_ex)} questions, {len(features)} inputs of "
                f"{min(lengths)}-{max(lengths)} tokens")
    if cluster_layers(reader) and not config.resume:
        pad_id = reader.tokenizer.pad_id
        batches = [collate_features([f], None, pad_id) for f in features[: config.calibration_examples]]
        calibrate_centroids(reader, batches, lambda m, b: m.encoder(b["input_ids"], b["attention_mask"],
                                                                    token_type_ids=b["token_type_ids"]))
    out = Path(config.output_dir)
    train_cfg = TrainConfig(
        output_dir=str(out), max_steps=config.max_steps, epochs=config.epochs, batch_size=config.batch_size,
        grad_accum=config.grad_accum, lr=config.lr, warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay, seed=config.seed, checkpoint_every=config.checkpoint_every,
        resume=config.resume, device=config.device,
        extra={"recipe": "long-reader", "data": config.data, "eval_fraction": config.eval_fraction,
               "reader": dataclasses.asdict(config.reader), "model": str(config.model)},
    )
    pad_id = reader.tokenizer.pad_id
    state = train(reader, features, lambda items, rng: collate_features(items, rng, pad_id), reader_loss, train_cfg,
                  stop_after=stop_after)
    if state.step < state.total_steps:
        return LongReaderTrainingResult(None, state.step, len(train_ex), len(features), None, data.skipped)
    model_dir = out / "model"
    metrics = None
    if state.rank == 0:
        reader.save_pretrained(model_dir)
        (model_dir / "long_reader_config.json").write_text(json.dumps(dataclasses.asdict(config.reader), indent=2))
        atomic_write_json(out / "split.json", {
            "rule": "sha256(question id)[:8] / 2**32 < eval_fraction -> eval (reprlab.text.hotpotqa.split_questions)",
            "eval_fraction": config.eval_fraction, "train_examples": len(train_ex), "eval_examples": len(eval_ex),
            "skipped": data.skipped,
        })
        if config.evaluate and eval_ex:
            metrics = evaluate_long_reader(reader, eval_ex)
            atomic_write_json(out / "eval.json", metrics)
            logger.info(f"eval: EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f} on {metrics['n']} questions")
    return LongReaderTrainingResult(model_dir, state.step, len(train_ex), len(features), metrics, data.skipped)


def evaluate_long_reader(reader: Reader, examples: Sequence[QAExample], show_progress: bool | None = None) -> dict:
    """EM/F1 (percent), seconds per question and the number of encoder windows read per question."""
    if not examples:
        raise ReprlabError("no examples to evaluate")
    stats: dict[str, Any] = {}
    metrics = evaluate_reader(reader, examples, show_progress=show_progress)
    # windows per question (1 for the long encoders): count them once more, cheaply, by featurizing
    batch = reader.featurize([ex.question for ex in examples], [ex.context for ex in examples])
    stats["windows_per_question"] = batch.input_ids.shape[0] / len(examples)
    stats["max_tokens"] = int(batch.attention_mask.sum(1).max())
    metrics.update(stats)
    return metrics


def load_long_reader(folder: str | Path) -> Reader:
    """A long reader saved by :func:`run_long_reader_training` (positions, layers and centroids included)."""
    folder = Path(folder)
    cfg_path = folder / "long_reader_config.json"
    if not cfg_path.is_file():
        raise ReprlabError(f"{folder} has no long_reader_config.json; give the 'model' folder of a long-reader run")
    config = LongReaderConfig.from_dict(json.loads(cfg_path.read_text()))
    return Reader.from_pretrained(folder, config.reader_config())


__all__ = ["ENCODERS", "LongExamples", "LongReaderConfig", "LongReaderTrainingConfig", "LongReaderTrainingResult",
           "build_long_reader", "evaluate_long_reader", "extend_position_embeddings", "load_long_hotpotqa",
           "load_long_reader", "long_example", "run_long_reader_training"]
