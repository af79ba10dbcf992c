"""``reprlab train fid``: the Fusion-in-Decoder reader trained on retrieved passages, with teacher forcing.

Izacard & Grave (EACL 2021; ICLR 2021, arXiv:2012.04584): each training question is read with the
top ``n_passages`` passages a retriever (BM25 by default) finds in its file's passage pool -- no
passage labels are used, as in the papers -- and the decoder learns the gold answer (one of them,
drawn per step with the step's seeded generator, as the official code samples a target) by
cross-entropy under teacher forcing. The reader starts from our encoder with a decoder warm-started
from the encoder's layers (:meth:`~reprlab.qa.fid.model.FidReader.from_encoder`), or from a FiD
folder to train further. Questions are split by the one rule of :mod:`reprlab.text.splits` on their
ids: the ``eval`` side (and the ``dev`` slice) are never trained on; at the end the chosen held-out
side is answered (greedy or beam search) and scored with the official SQuAD EM/F1.

The loop is the shared one (:mod:`reprlab.train.loop`): checkpoints, exact resume, DDP. Registering
this module also registers the teacher kind ``fid`` (:data:`reprlab.qa.teachers.TEACHER_KINDS`),
whose ``fine_tune`` (:func:`fine_tune_fid`) lets reader distillation re-train the reader on each
iteration's passages.

    reprlab train fid --data hotpot.jsonl xquad.en.json --out runs/fid --n-passages 10 --epochs 3
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError
from reprlab.io import atomic_write_json
from reprlab.qa.fid.model import FID_CONFIG_FILE, FidBatch, FidConfig, FidReader
from reprlab.qa.fid.scores import FidTeacher
from reprlab.qa.open_qa import ReaderExample, load_open_qa, rank_pool, reader_examples
from reprlab.qa.squad import squad_metrics
from reprlab.qa.teachers import TeacherKind, register_teacher_kind
from reprlab.text.splits import EVAL_FRACTION, RULE, check_fractions
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

EVALUATE = ("eval", "dev", "none")


@recipe_config
class FidTrainingConfig(RecipeConfig):
    output_dir: str = option(help="run folder (checkpoints, metrics, split.json, eval.json; the model in OUT/model)",
                             flag="--out")
    data: list[str] = option(help="HotpotQA .jsonl and/or SQuAD v1.1 .json files; each file's questions read "
                                  "passages retrieved from that file's own passage pool")
    model: str = option("minilm", help="encoder to warm-start from ('minilm' or a folder), or a FiD folder to "
                                       "train further")
    retriever: str = option("bm25", help="what finds each question's passages: bm25, minilm or a model folder")
    n_passages: int = option(10, help="passages read per question in training")
    eval_passages: int = option(10, help="passages read per question when evaluating")
    eval_fraction: float = option(EVAL_FRACTION, help="share of each file's questions held out (by question id)")
    dev_fraction: float = option(0.0, help="share of each file's questions kept as a dev slice (not trained on)")
    evaluate: str = option("eval", choices=EVALUATE, help="held-out side answered and scored at the end")
    max_questions: int | None = option(None, help="training questions kept per file (the first ones; for smoke runs)")
    new_lr_scale: float = option(1.0, help="learning-rate multiplier of the fresh parts (cross-attention, head)")
    fid: FidConfig = option(default_factory=FidConfig, help="the reader's shape and lengths")
    train: TrainConfig = loop(epochs=3.0, batch_size=4, lr=1e-4, warmup_ratio=0.1)

    def __post_init__(self):
        if isinstance(self.fid, dict):
            self.fid = FidConfig.from_dict(self.fid)
        self.data = [str(self.data)] if isinstance(self.data, (str, Path)) else [str(d) for d in self.data]
        check(len(self.data) > 0, "data", "give at least one HotpotQA .jsonl or SQuAD .json file")
        check(self.n_passages >= 1, "n_passages", f"must be at least 1, got {self.n_passages}")
        check(self.eval_passages >= 1, "eval_passages", f"must be at least 1, got {self.eval_passages}")
        check(self.max_questions is None or self.max_questions >= 1, "max_questions", "must be at least 1")
        check(self.new_lr_scale > 0, "new_lr_scale", f"must be positive, got {self.new_lr_scale}")
        check_choice(self.evaluate, EVALUATE, "evaluate")
        check_fractions(self.eval_fraction, self.dev_fraction)


@dataclass
class FidTrainingResult(RecipeResult):
    train_questions: int = 0
    eval_metrics: dict[str, dict] | None = None  # {data file: EM/F1 (percent), n, seconds_per_question}
    # {file: share of the training questions that read at least one gold passage}
    context_recall: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        line = f"FiD: {self.train_questions} training questions; " + super().summary()
        for name, m in (self.eval_metrics or {}).items():
            line += f"; {Path(name).name}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} ({m['n']} questions)"
        return line


# ------------------------------------------------------------------------------------------------
# data, batches, loss


class FidCollate:
    """Tokenize a batch of :class:`ReaderExample`: passages into (B, n, L), one gold answer drawn per question."""

    def __init__(self, reader: FidReader, n_passages: int):
        self.reader, self.n = reader, n_passages

    def __call__(self, items: Sequence[ReaderExample], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # slots: n_passages, or fewer when no question of the batch has that many (a pool smaller than n)
        n = min(self.n, max(len(it.passages) for it in items))
        batch = self.reader.featurize([it.question for it in items],
                                      [[(t, c) for _, t, c in it.passages] for it in items], n)
        answers = [it.answers[int(rng.integers(len(it.answers)))] for it in items]
        inputs, labels = self.reader.targets(answers)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                "passage_mask": batch.passage_mask, "decoder_input_ids": inputs, "labels": labels}


def fid_loss(model, batch: dict[str, torch.Tensor]):
    """Teacher-forced cross-entropy of the answer tokens (and [SEP])."""
    fid = FidBatch(batch["input_ids"], batch["attention_mask"], batch["passage_mask"])
    out = model(fid, batch["decoder_input_ids"], batch["labels"])
    return out.loss


def fid_optimizer(model: FidReader, lr: float, weight_decay: float, new_lr_scale: float) -> torch.optim.Optimizer:
    """AdamW, no decay on biases and norms, ``new_lr_scale`` x ``lr`` for the fresh cross-attention and head."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        fresh = ".cross." in name or ".cross_norm." in name or name.startswith("lm_head.")
        decay = p.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((new_lr_scale if fresh else 1.0, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": lr * s, "weight_decay": weight_decay if d else 0.0}
                              for (s, d), ps in sorted(groups.items())], lr=lr)


def train_fid(model: FidReader, examples: Sequence[ReaderExample], run: TrainConfig, n_passages: int,
              new_lr_scale: float = 1.0, callbacks: Sequence = (), stop_after: int | None = None):
    """Train ``model`` on ``examples`` with the shared loop; returns the loop's final state."""
    if not examples:
        raise ConfigError("no training questions", field="data")
    optimizer = fid_optimizer(model, run.lr, run.weight_decay, new_lr_scale)
    return train(model, list(examples), FidCollate(model, n_passages), fid_loss, run, callbacks=callbacks,
                 optimizer=optimizer, stop_after=stop_after)


def evaluate_fid(reader: FidReader, examples: Sequence[ReaderExample], num_beams: int | None = None,
                 batch_size: int = 4, bf16: bool = False) -> dict:
    """EM/F1 (percent, official SQuAD normalisation) of the reader's answers and the seconds per question."""
    t0 = time.perf_counter()
    answers = reader.answer_batch([e.question for e in examples], [[(t, c) for _, t, c in e.passages]
                                                                    for e in examples], num_beams, batch_size, bf16)
    metrics = squad_metrics({e.id: e.answers for e in examples}, {e.id: a for e, a in zip(examples, answers)})
    metrics.update(n=len(examples), seconds_per_question=(time.perf_counter() - t0) / max(1, len(examples)))
    return metrics


# ------------------------------------------------------------------------------------------------
# the recipe


def _load_data(config: FidTrainingConfig):
    """{file: (train examples, held-out examples)} and the gold-recall of each file's training contexts."""
    out, recall = {}, {}
    for path in config.data:
        data = load_open_qa(path)
        parts = data.split(config.eval_fraction, config.dev_fraction)
        train_q = parts.train[: config.max_questions] if config.max_questions else parts.train
        held = [] if config.evaluate == "none" else parts[config.evaluate]
        depth = max(config.n_passages, config.eval_passages)
        ranked = rank_pool(config.retriever, data.corpus, train_q + held, depth)
        out[path] = (reader_examples(train_q, data.corpus, ranked, config.n_passages),
                     reader_examples(held, data.corpus, ranked, config.eval_passages))
        judged = [q for q in train_q if q.gold]
        recall[path] = (sum(any(d in q.gold for d, _ in ranked[q.id][: config.n_passages]) for q in judged)
                        / max(1, len(judged)))
    return out, recall


def build_fid(config: FidTrainingConfig) -> FidReader:
    """The model a run starts from: a FiD folder, or a warm-started reader on an encoder (seeded by the run)."""
    torch.manual_seed(config.train.seed)
    if (Path(config.model) / FID_CONFIG_FILE).is_file():
        return FidReader.from_pretrained(config.model)
    return FidReader.from_encoder(config.model, config.fid)


@register("train fid", FidTrainingConfig, help="Fusion-in-Decoder reader (generative QA over retrieved passages)")
def run_fid(config: FidTrainingConfig, callbacks: Sequence = (), stop_after: int | None = None) -> FidTrainingResult:
    """Train the reader; the model is saved to ``<output_dir>/model`` and evaluated on the held-out side."""
    data, recall = _load_data(config)
    train_ex = [e for tr, _ in data.values() for e in tr]
    check(len(train_ex) > 0, "eval_fraction", "the train side of the data is empty")
    model = build_fid(config)
    logger.info(f"FiD: {len(train_ex)} training questions, {config.n_passages} passages each from {config.retriever}")
    run = config.loop_config("fid", data=list(config.data))
    state = train_fid(model, train_ex, run, config.n_passages, config.new_lr_scale, callbacks, stop_after)
    out = Path(config.output_dir)
    common = dict(output_dir=out, steps=state.step, train_questions=len(train_ex), context_recall=recall)
    if not finished(state):
        return FidTrainingResult(model_dir=None, metrics=read_metrics(out, run.metrics_file), **common)
    metrics = None
    if state.rank == 0:
        model.save_pretrained(out / "model")
        atomic_write_json(out / "split.json", {
            "rule": f"{RULE}; key = the question id", "eval_fraction": config.eval_fraction,
            "dev_fraction": config.dev_fraction, "train_questions": {f: len(tr) for f, (tr, _) in data.items()},
            "held_out": config.evaluate, "held_out_questions": {f: len(ev) for f, (_, ev) in data.items()},
            "train_context_recall": recall})
        if config.evaluate != "none":
            metrics = {f: evaluate_fid(model, ev, bf16=config.train.bf16) for f, (_, ev) in data.items() if ev}
            atomic_write_json(out / "eval.json", {"side": config.evaluate, "metrics": metrics})
    return FidTrainingResult(model_dir=out / "model", metrics=read_metrics(out, run.metrics_file),
                             eval_metrics=metrics, **common)


def fine_tune_fid(model_dir: str | Path, examples: Sequence[ReaderExample], output_dir: str | Path,
                  run: TrainConfig, callbacks: Sequence = (), stop_after: int | None = None,
                  new_lr_scale: float = 1.0):
    """Train the FiD folder ``model_dir`` further on ``examples`` (each read with its own passages) into
    ``output_dir`` (a loop run folder; the model in ``output_dir/model``). Returns (state, model folder or
    None when stopped early). The teacher kind ``fid``'s re-training step in reader distillation."""
    reader = FidReader.from_pretrained(model_dir)
    n = max(len(e.passages) for e in examples)
    state = train_fid(reader, examples, run, n, new_lr_scale, callbacks, stop_after)
    if not finished(state):
        return state, None
    saved = Path(output_dir) / "model"
    if state.rank == 0:
        reader.save_pretrained(saved)
    return state, saved


register_teacher_kind(TeacherKind(
    name="fid", marker=FID_CONFIG_FILE, signals=("cross-attention",),
    load=lambda path, scoring: FidTeacher(FidReader.from_pretrained(path), scoring), fine_tune=fine_tune_fid))
