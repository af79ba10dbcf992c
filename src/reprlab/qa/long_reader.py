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

Data (:func:`load_long_hotpotqa`): the HotpotQA file is read by
:func:`reprlab.text.hotpotqa.load_hotpotqa` and each question becomes one example whose context is
its paragraphs in file order, each as ``"<title>: <text>"``, joined by newlines
(:func:`reprlab.qa.squad.hotpotqa_examples` with ``contexts="all"``). The training span is the
first whole-word occurrence of a gold answer in a supporting paragraph (else anywhere in the
context). Questions whose answers are yes/no, or found nowhere in the text, are left out (an
extractive reader cannot give them) and counted. Train/eval split: the one rule of
:mod:`reprlab.text.splits` on the question id, as for multi-hop retrieval (eval fraction 0.3: 344
train / 156 eval questions of the 500).

The recipe is ``reprlab train long-reader`` (:func:`run_long_reader_training`).

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
from reprlab.qa.reader import Reader, ReaderConfig, evaluate_reader
from reprlab.qa.squad import HotpotExamples, QAExample, hotpotqa_examples, log_skipped
from reprlab.qa.training import collate_features, reader_loss
from reprlab.text.hotpotqa import load_hotpotqa
from reprlab.text.splits import EVAL_FRACTION, RULE, check_fractions, split
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    check_choice,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

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

    attention: str = option("cluster-former", choices=ENCODERS, help="the encoder (see reprlab.qa.long_reader)")
    cluster_layers: list[int] = option(default_factory=lambda: [2, 4], help="0-based layers that are Cluster-Former "
                                                                            "layers (attention cluster-former)")
    max_positions: int = option(4096, help="inputs are truncated to this many tokens (positions tiled from 512)")
    window: int = option(256, help="sliding-window length (tokens after the question)")
    stride: int = option(128, help="sliding-window step: each token is averaged over window / stride windows")
    num_clusters: int = option(16, help="k-means clusters of a Cluster-Former layer")
    cluster_window: int | None = option(None, help="chunk length in cluster order (default: window)")
    memory_size: int = option(4096, help="hidden states kept for the k-means refits")
    memory_per_step: int = option(256, help="hidden states added to the memory per forward pass")
    refresh_every: int = option(50, help="training forward passes between k-means refits")
    kmeans_iters: int = option(10, help="k-means iterations per refit")
    max_question_length: int = option(64, help="question tokens kept (they join every window and chunk)")
    max_answer_length: int = option(30, help="longest answer span in tokens")
    n_best: int = option(20, help="best spans that compete for the answer")
    window_length: int = option(384, help="attention windows: the plain reader's window length")
    window_stride: int = option(128, help="attention windows: the plain reader's stride")

    def __post_init__(self):
        check_choice(self.attention, ENCODERS, "attention")
        check(self.max_positions >= 1, "max_positions", f"must be >= 1, got {self.max_positions}")
        check(self.window >= 1, "window", f"must be >= 1, got {self.window}")
        check(1 <= self.stride <= self.window, "stride", f"must be in [1, window ({self.window})], got {self.stride}")

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
    skipped: dict[str, int]  # questions left out: {"yes/no": n, "not found": n}


def load_long_hotpotqa(path: str | Path, eval_fraction: float = EVAL_FRACTION) -> LongExamples:
    """Train/eval long examples of a HotpotQA file (either layout), split by question id; the questions
    left out are counted and logged."""
    check_fractions(eval_fraction)
    data = load_hotpotqa(path, require_gold_pair=False)
    parts = split(data.questions, key=lambda q: q.id, eval_fraction=eval_fraction)
    train_side, eval_side = (hotpotqa_examples(data, "all", questions) for questions in (parts.train, parts.eval))
    skipped = {reason: train_side.skipped[reason] + eval_side.skipped[reason] for reason in train_side.skipped}
    both = HotpotExamples(train_side.examples + eval_side.examples, skipped)
    log_skipped(str(path), len(data.questions), both, "all")
    return LongExamples(train_side.examples, eval_side.examples, skipped)


# ------------------------------------------------------------------------------------------------
# the recipe


@recipe_config
class LongReaderTrainingConfig(RecipeConfig):
    """``reprlab train long-reader``: fine-tune a long-context reader on HotpotQA, all paragraphs at once.

    ``model`` is an encoder or reader folder (or ``minilm``): e.g. a reader already fine-tuned on
    SQuAD with ``reprlab train reader``. Before training, the centroids of every Cluster-Former
    layer are fitted on ``calibration_examples`` training inputs (:func:`~reprlab.nn.cluster.calibrate_centroids`);
    training refits them every ``reader.refresh_every`` forward passes.
    """

    output_dir: str = option(help="run folder (checkpoints, metrics, split.json, eval.json; the model in OUT/model)",
                             flag="--out")
    data: str = option(help="HotpotQA file (IRCoT .jsonl or original .json): each question over all its paragraphs")
    model: str = option("minilm", help="encoder or reader folder to start from (e.g. a SQuAD reader), or 'minilm'")
    reader: LongReaderConfig = option(default_factory=LongReaderConfig, help="the long-context encoder and decoding")
    eval_fraction: float = option(EVAL_FRACTION, help="share of the questions held out (by the hash of their id) and "
                                                      "evaluated at the end")
    max_train_examples: int | None = option(None, help="train on the first N training questions only (default: all)")
    max_eval_examples: int | None = option(None, help="evaluate on the first N eval questions only (default: all)")
    calibration_examples: int = option(16, help="training inputs the Cluster-Former centroids are first fitted on")
    evaluate: bool = option(True, help="evaluate EM/F1 on the eval side at the end")
    train: TrainConfig = loop(epochs=1.0, batch_size=4, grad_accum=4, lr=5e-5)  # ~1,200-token inputs: one per pass

    def __post_init__(self):
        if isinstance(self.reader, dict):
            self.reader = LongReaderConfig.from_dict(self.reader)
        check_fractions(self.eval_fraction)
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, f"must be at least 1 (or unset for all), got {value}")
        check(self.calibration_examples >= 0, "calibration_examples", f"must be >= 0, got {self.calibration_examples}")


@dataclass
class LongReaderTrainingResult(RecipeResult):
    train_examples: int = 0
    train_features: int = 0
    eval_metrics: dict[str, Any] | None = None  # EM/F1 (percent), n, seconds_per_question on the eval side
    skipped: dict[str, int] = field(default_factory=dict)  # questions left out, by reason

    def summary(self) -> str:
        line = f"long reader: {self.train_examples} questions; " + super().summary()
        if self.eval_metrics:
            m = self.eval_metrics
            line += f"; eval: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} ({m['n']} questions)"
        return line


def _calibrate(reader: Reader, features: list[dict], n: int) -> None:
    """Fit the Cluster-Former centroids on the first ``n`` training inputs (nothing without such layers)."""
    from reprlab.nn.cluster import calibrate_centroids, cluster_layers

    if not cluster_layers(reader):
        return
    pad_id = reader.tokenizer.pad_id
    batches = [collate_features([f], None, pad_id) for f in features[:n]]
    calibrate_centroids(reader, batches, lambda m, b: m.encoder(b["input_ids"], b["attention_mask"],
                                                                token_type_ids=b["token_type_ids"]))


@register("train long-reader", LongReaderTrainingConfig,
          help="long-context reader (Cluster-Former / sliding-window / full attention) on HotpotQA, all paragraphs "
               "at once")
def run_long_reader_training(config: LongReaderTrainingConfig, callbacks: Sequence = (),
                             stop_after: int | None = None) -> LongReaderTrainingResult:
    """Build the long reader, fit its centroids, fine-tune it on the train side with the span loss on
    the shared loop, save it to ``<output_dir>/model`` and evaluate it on the eval side.

    ``stop_after`` ends the run after that many steps as if killed (for resume tests)."""
    data = load_long_hotpotqa(config.data, config.eval_fraction)
    train_ex = data.train[: config.max_train_examples] if config.max_train_examples else data.train
    eval_ex = data.eval[: config.max_eval_examples] if config.max_eval_examples else data.eval
    check(len(train_ex) > 0, "eval_fraction",
          f"no training questions in {config.data} (eval_fraction {config.eval_fraction})")
    torch.manual_seed(config.train.seed)  # a fresh head's initialisation is part of the run
    reader = build_long_reader(config.model, config.reader)
    features = reader.training_features(train_ex)
    lengths = [len(f["input_ids"]) for f in features]
    logger.info(f"long reader ({config.reader.attention}): {len(train_ex)} questions, {len(features)} inputs of "
                f"{min(lengths)}-{max(lengths)} tokens")
    if not config.train.resume:
        _calibrate(reader, features, config.calibration_examples)
    out = Path(config.output_dir)
    run = config.loop_config("long-reader")
    pad_id = reader.tokenizer.pad_id
    state = train(reader, features, lambda items, rng: collate_features(items, rng, pad_id), reader_loss, run,
                  callbacks=callbacks, stop_after=stop_after)
    done = dict(output_dir=out, steps=state.step, train_examples=len(train_ex), train_features=len(features),
                skipped=data.skipped)
    if not finished(state):
        return LongReaderTrainingResult(model_dir=None, metrics=read_metrics(out, run.metrics_file), **done)
    model_dir, metrics = out / "model", None
    if state.rank == 0:
        reader.save_pretrained(model_dir)
        (model_dir / "long_reader_config.json").write_text(json.dumps(dataclasses.asdict(config.reader), indent=2))
        atomic_write_json(out / "split.json", {
            "rule": f"{RULE}; key = the question id", "eval_fraction": config.eval_fraction,
            "train_examples": len(train_ex), "eval_examples": len(eval_ex), "skipped": data.skipped,
        })
        if config.evaluate and eval_ex:
            metrics = evaluate_long_reader(reader, eval_ex)
            atomic_write_json(out / "eval.json", metrics)
            logger.info(f"eval: EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f} on {metrics['n']} questions")
    return LongReaderTrainingResult(model_dir=model_dir, metrics=read_metrics(out, run.metrics_file),
                                    eval_metrics=metrics, **done)


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
           "load_long_reader", "run_long_reader_training"]
