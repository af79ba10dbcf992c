"""``reprlab train reader``: fine-tune the extractive reader, plain or with Block Skim, on SQuAD / HotpotQA files.

The reader is BERT's extractive-QA head (Devlin et al., "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", NAACL 2019, section 4.2; :mod:`reprlab.qa.reader`).
Block Skim (Guan et al., "Block-Skim: Efficient Question Answering for Transformer", AAAI 2022;
:mod:`reprlab.qa.block_skim`) is an option of the same recipe: with ``block_skim=True`` the model
is a :class:`~reprlab.qa.block_skim.BlockSkimReader` whose skim predictors (``skim``) train jointly
with the span loss, or alone on a fixed reader (``skim.freeze_reader``).

Data: SQuAD v1.1 ``.json`` and HotpotQA ``.jsonl`` files (:func:`reprlab.qa.squad.load_qa_file`),
each cut by the one split rule (:mod:`reprlab.text.splits`) on its examples' group: the article
title for SQuAD, the question id for HotpotQA. The reader trains on the ``train`` side of every file
and is evaluated on each file's ``eval`` side at the end (``eval_fraction=0`` trains on everything
and evaluates nothing). HotpotQA questions that give no example (yes/no answers, no supporting
paragraph, an answer found in no supporting paragraph) are counted by reason, logged and written to
``split.json``.

>>> config = ReaderTrainingConfig(output_dir="runs/reader", data=["xquad.en.json"], block_skim=True)
>>> run_reader(config).summary()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from reprlab.io import atomic_write_json
from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader
from reprlab.qa.reader import Reader, ReaderConfig, evaluate_reader
from reprlab.qa.squad import HOTPOTQA_CONTEXTS, QAExample, load_qa_file
from reprlab.qa.training import collate_features, length_grouped_order, reader_loss, reader_optimizer
from reprlab.text.splits import RULE, check_fractions, split
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


@recipe_config
class ReaderTrainingConfig(RecipeConfig):
    """The reader recipe's settings; ``block_skim`` switches Block Skim on (its options are ``skim``)."""

    output_dir: str = option(help="run folder (checkpoints, metrics, split.json, eval.json; the model in OUT/model)",
                             flag="--out")
    data: list[str] = option(help="SQuAD v1.1 .json and/or HotpotQA .jsonl files, each split by the hash rule")
    model: str = option("minilm", help="encoder or reader folder to start from, or 'minilm'")
    eval_fraction: float = option(0.25, help="share of each file's articles (SQuAD) / questions (HotpotQA) held out "
                                             "and evaluated at the end")
    dev_fraction: float = option(0.0, help="share of each file's articles / questions held out for tuning (the hash "
                                           "rule's dev side): never trained on, not evaluated here")
    evaluate: bool = option(True, help="evaluate EM/F1 on the held-out side of each file at the end")
    group_by_length: bool = option(True, help="batches of windows of similar length (less padding), in a random "
                                              "order")
    hotpotqa_contexts: str = option("supporting", choices=HOTPOTQA_CONTEXTS, help=(
        "HotpotQA .jsonl: one example per supporting paragraph with the answer, or one per question over all "
        "its paragraphs (the distractor setting)"))
    reader: ReaderConfig = option(default_factory=ReaderConfig, help="windows and decoding")
    block_skim: bool = option(False, help="train a Block Skim reader (skim predictors + span loss)")
    skim: BlockSkimConfig = option(default_factory=BlockSkimConfig, help="Block Skim (with --block-skim)")
    train: TrainConfig = loop(epochs=2.0, batch_size=16, lr=1e-4)

    def __post_init__(self):
        if isinstance(self.reader, dict):
            self.reader = ReaderConfig.from_dict(self.reader)
        if isinstance(self.skim, dict):
            self.skim = BlockSkimConfig.from_dict(self.skim)
        self.data = [str(self.data)] if isinstance(self.data, (str, Path)) else [str(d) for d in self.data]
        check(len(self.data) > 0, "data", "no training data: give at least one SQuAD .json or HotpotQA .jsonl file")
        check_choice(self.hotpotqa_contexts, HOTPOTQA_CONTEXTS, "hotpotqa_contexts")
        check_fractions(self.eval_fraction, self.dev_fraction)
        if not self.block_skim:
            default = BlockSkimConfig()
            changed = [f.name for f in dataclasses.fields(BlockSkimConfig)
                       if getattr(self.skim, f.name) != getattr(default, f.name)]
            check(not changed, f"skim.{changed[0]}" if changed else "skim",
                  "Block Skim options need --block-skim (block_skim=True)")


@dataclass
class ReaderTrainingResult(RecipeResult):
    train_examples: int = 0
    train_windows: int = 0
    eval_metrics: dict[str, dict] | None = None  # {data file: EM/F1 (percent), n, seconds_per_question}
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # {HotpotQA file: questions left out, by reason}

    def summary(self) -> str:
        line = f"reader: {self.train_examples} examples ({self.train_windows} windows); " + super().summary()
        for name, m in (self.eval_metrics or {}).items():
            line += f"; {Path(name).name}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} ({m['n']} questions)"
        return line


def load_split(files: Sequence[str], eval_fraction: float, hotpotqa_contexts: str = "supporting",
               skipped: dict[str, dict[str, int]] | None = None, dev_fraction: float = 0.0
               ) -> tuple[list[QAExample], dict[str, list[QAExample]]]:
    """(train examples of all files, {file: eval examples}) by the split rule on each example's group;
    the ``dev_fraction`` dev side is in neither (it is kept for tuning).

    ``skipped``, when given, receives ``{HotpotQA file: questions left out, by reason}``."""
    train_all: list[QAExample] = []
    held: dict[str, list[QAExample]] = {}
    for path in files:
        left_out: dict[str, int] = {}
        parts = split(load_qa_file(path, hotpotqa_contexts, skipped=left_out), key=lambda ex: ex.group,
                      eval_fraction=eval_fraction, dev_fraction=dev_fraction)
        train_all.extend(parts.train)
        held[str(path)] = parts.eval
        if skipped is not None and left_out:
            skipped[str(path)] = left_out
    return train_all, held


def build_reader(config: ReaderTrainingConfig) -> Reader:
    """The model a run starts from: ``config.model`` as a :class:`Reader`, or as a
    :class:`~reprlab.qa.block_skim.BlockSkimReader` when ``config.block_skim``; a fresh head (and fresh
    predictors) are seeded by ``train.seed``, so they are part of the run."""
    torch.manual_seed(config.train.seed)
    if config.block_skim:
        return BlockSkimReader.from_pretrained(config.model, config.reader, config.skim)
    return Reader.from_pretrained(config.model, config.reader)


def _train(config: ReaderTrainingConfig, model: Reader | None, callbacks: Sequence,
           stop_after: int | None) -> ReaderTrainingResult:
    """Fine-tune ``model`` (default: :func:`build_reader`) on the train side with the loss its ``forward``
    returns (span loss, plus Block Skim's), save it to ``<output_dir>/model`` and evaluate it on the eval side."""
    skipped: dict[str, dict[str, int]] = {}
    train_ex, held = load_split(config.data, config.eval_fraction, config.hotpotqa_contexts, skipped,
                                config.dev_fraction)
    check(len(train_ex) > 0, "eval_fraction",
          f"the train side of {', '.join(config.data)} is empty (eval_fraction {config.eval_fraction})")
    model = build_reader(config) if model is None else model
    features = model.training_features(train_ex)
    logger.info(f"reader training: {len(train_ex)} examples, {len(features)} windows")
    # data and eval_fraction also at the top of the run's extra, where runs before the recipe contract had them
    # (bench/clusterformer.py checks a stage-1 reader's data and split there)
    run = config.loop_config("reader", data=list(config.data), eval_fraction=config.eval_fraction)
    dataset: Sequence = features
    if config.group_by_length:  # the loop then reads this pre-arranged sequence in order, once
        steps = run.max_steps or max(1, int(run.epochs * (len(features) // run.batch_size)))
        order = length_grouped_order([len(f["input_ids"]) for f in features], run.batch_size, steps, run.seed)
        dataset = [features[i] for i in order]
        run = dataclasses.replace(run, max_steps=steps, epochs=1.0, shuffle=False)
    pad_id = model.tokenizer.pad_id
    optimizer = reader_optimizer(model, run.lr, run.weight_decay)  # the loop's .to(device) keeps the params
    state = train(model, dataset, lambda items, rng: collate_features(items, rng, pad_id), reader_loss, run,
                  callbacks=callbacks, optimizer=optimizer, stop_after=stop_after)
    out = Path(config.output_dir)
    done = dict(output_dir=out, steps=state.step, train_examples=len(train_ex), train_windows=len(features),
                skipped=skipped)
    if not finished(state):  # stopped early (stop_after): nothing saved but the loop's checkpoints
        return ReaderTrainingResult(model_dir=None, metrics=read_metrics(out, run.metrics_file), **done)
    model_dir, metrics = out / "model", None
    if state.rank == 0:
        model.save_pretrained(model_dir)
        atomic_write_json(out / "split.json", {
            "rule": f"{RULE}; key = the example's group: SQuAD article title / HotpotQA question id",
            "eval_fraction": config.eval_fraction, "dev_fraction": config.dev_fraction,
            "train_examples": len(train_ex), "train_windows": len(features),
            "eval_examples": {f: len(ev) for f, ev in held.items()}, "skipped": skipped,
        })
        if config.evaluate and any(held.values()):
            metrics = {f: evaluate_reader(model, ev) for f, ev in held.items() if ev}
            atomic_write_json(out / "eval.json", metrics)
            for f, m in metrics.items():
                logger.info(f"eval {f}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} on {m['n']} questions")
    return ReaderTrainingResult(model_dir=model_dir, metrics=read_metrics(out, run.metrics_file),
                                eval_metrics=metrics, **done)


@register("train reader", ReaderTrainingConfig,
          help="extractive reader on SQuAD v1.1 .json / HotpotQA .jsonl files (+ Block Skim)")
def run_reader(config: ReaderTrainingConfig, callbacks: Sequence = (), stop_after: int | None = None
               ) -> ReaderTrainingResult:
    """``reprlab train reader``: the plain reader, or Block Skim when ``config.block_skim``.

    ``stop_after`` ends the run after that many steps as if killed (``model_dir`` is then None)."""
    return _train(config, None, callbacks, stop_after)


def run_reader_training(config: ReaderTrainingConfig, model: Reader | None = None, stop_after: int | None = None,
                        callbacks: Sequence = ()) -> ReaderTrainingResult:
    """:func:`run_reader` starting from ``model`` when one is given (e.g. a reader built in Python)."""
    return _train(config, model, callbacks, stop_after)


def run_block_skim_training(config: ReaderTrainingConfig, skim: BlockSkimConfig | None = None,
                            stop_after: int | None = None, callbacks: Sequence = ()) -> ReaderTrainingResult:
    """:func:`run_reader` with Block Skim on and ``skim`` (default ``config.skim``) as its options, both
    recorded in the run's config."""
    config = dataclasses.replace(config, block_skim=True, skim=skim or config.skim)
    return run_reader(config, callbacks=callbacks, stop_after=stop_after)
