"""``reprlab train reader-distill``: the paper's loop, retrieve -> read -> score -> train the retriever -> again.

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584, section 3.4; official code facebookresearch/FiD, ``train_retriever.py``). From
question-answer pairs alone, iteration n:

1. (with ``retrain_reader``, from the second iteration) re-train the reader on each training
   question's top ``reader_passages`` passages from the current retriever (the paper's step 1);
2. retrieve each training question's top ``candidates`` from the passage pool with the current
   retriever (iteration 1: ``retriever``, BM25 by default; then the last iteration's model,
   re-encoding the pool) and let the reader score them (:mod:`reprlab.qa.teachers`: FiD
   cross-attention, or an extractive reader's span / attention scores); write ``scores.jsonl``;
3. train the dual encoder (``student``, or the previous iteration's retriever) to match the
   teacher's scores over the candidates (:mod:`reprlab.retrieval.reader_distill.losses`; ``sample``
   candidates per question per step);
4. (with ``evaluate``) measure the new retriever's gold recall on the dev slice and the eval side.

Each iteration's stages are written atomically into ``OUT/iter-N/`` and recorded in its manifest
(:mod:`reprlab.retrieval.reader_distill.stages`); a rerun with ``--resume`` skips the stages done,
refuses a folder made with other settings, and resumes a training stage from its checkpoint. The
final retriever is ``OUT/model`` (sentence-transformers layout: ``reprlab evaluate --retriever
OUT/model`` and ``SentenceTransformer(OUT/model)`` load it). Gold passages are never used for
training, only for the recall figures.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from reprlab.errors import ConfigError
from reprlab.io import atomic_dir, atomic_write_json, check_output
from reprlab.qa.open_qa import OpenQuestion, gold_recall, load_open_qa, mean_recall, rank_pool, reader_examples
from reprlab.qa.teachers import ScoringConfig, resolve_signal, teacher_kind
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.pipeline import build_retriever
from reprlab.retrieval.reader_distill.losses import LOSSES
from reprlab.retrieval.reader_distill.stages import Manifest, ScoreCollate, distill_loss_fn, score_candidates
from reprlab.text.score_runs import read_score_run, write_score_run
from reprlab.text.splits import EVAL_FRACTION, check_fractions
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

# run-control fields that a resumed run may change without remaking any stage
_FREE = {"output_dir", "iterations", "evaluate", "ks"}
_FREE_LOOP = {"resume", "allow_config_change", "device", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
              "log_every", "output_dir", "extra"}


@recipe_config
class ReaderDistillConfig(RecipeConfig):
    output_dir: str = option(help="run folder (iter-N/ stages; the final retriever in OUT/model)", flag="--out")
    data: str = option(help="HotpotQA .jsonl or SQuAD v1.1 .json file: its questions and answers, and the pool "
                            "of its passages retrieved from")
    reader: str = option(help="the teacher: a FiD folder (`reprlab train fid`) or an extractive reader folder "
                              "(`reprlab train reader`)")
    retriever: str = option("bm25", help="the first iteration's retriever: bm25, minilm or a model folder")
    student: str = option("minilm", help="the dual encoder trained (shared towers)")
    iterations: int = option(3, help="retrieve -> score -> train rounds")
    candidates: int = option(20, help="top passages of the current retriever scored by the reader, per question")
    sample: int = option(8, help="candidates of each question in a training step (0: all)")
    loss: str = option("kl", choices=LOSSES, help="kl (the paper's), mse or margin")
    temperature: float = option(1.0, help="the teacher's scores are divided by it (kl, mse)")
    margin: float = option(1.0, help="margin of the max-margin loss")
    scale: float = option(20.0, help="the student's score: scale x cosine similarity")
    restart_student: bool = option(False, help="each iteration trains `student` afresh (default: continues the "
                                               "previous iteration's retriever)")
    retrain_reader: bool = option(False, help="from iteration 2, re-train the reader on the current retriever's "
                                              "passages first (needs a FiD reader)")
    reader_passages: int = option(10, help="passages per question when re-training the reader")
    reader_epochs: float = option(1.0, help="epochs of each reader re-training")
    reader_lr: float = option(5e-5, help="learning rate of each reader re-training")
    reader_batch_size: int = option(4, help="questions per step of each reader re-training")
    query_max_length: int = option(64, help="question tokens")
    passage_max_length: int = option(192, help="passage tokens")
    eval_fraction: float = option(EVAL_FRACTION, help="share of the questions held out (by question id)")
    dev_fraction: float = option(0.0, help="share of the questions kept as a dev slice (not trained on)")
    max_questions: int | None = option(None, help="training questions kept (the first ones; for smoke runs)")
    evaluate: bool = option(True, help="gold recall of each iteration's retriever on the dev and eval sides")
    ks: list[int] = option(default_factory=lambda: [2, 5, 10], help="recall cut-offs")
    scoring: ScoringConfig = option(default_factory=ScoringConfig, help="how the reader scores passages")
    train: TrainConfig = loop(epochs=2.0, batch_size=8, lr=2e-5, warmup_ratio=0.1)

    def __post_init__(self):
        if isinstance(self.scoring, dict):
            self.scoring = ScoringConfig.from_dict(self.scoring)
        self.ks = [int(k) for k in self.ks]
        check_choice(self.loss, LOSSES, "loss")
        for name in ("iterations", "candidates", "reader_passages", "reader_batch_size", "query_max_length",
                     "passage_max_length"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        check(self.candidates >= 2, "candidates", f"a distribution needs at least 2, got {self.candidates}")
        check(self.sample == 0 or self.sample >= 2, "sample", f"must be 0 (all) or at least 2, got {self.sample}")
        for name in ("temperature", "margin", "scale", "reader_epochs", "reader_lr"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.max_questions is None or self.max_questions >= 1, "max_questions", "must be at least 1")
        check(len(self.ks) > 0 and min(self.ks) >= 1, "ks", f"must be positive cut-offs, got {self.ks}")
        check_fractions(self.eval_fraction, self.dev_fraction)


@dataclass
class ReaderDistillResult(RecipeResult):
    iterations: int = 0  # iterations completed
    recall: dict[str, dict] = field(default_factory=dict)  # {"iter-N": {"dev": {...}, "eval": {...}}}
    teacher: dict[str, dict] = field(default_factory=dict)  # {"iter-N": the teacher's and retriever's candidate recall}

    def summary(self) -> str:
        line = f"reader distillation: {self.iterations} iteration(s); " + super().summary()
        last = self.recall.get(f"iter-{self.iterations}", {}).get("eval")
        if last:
            line += "; eval " + " ".join(f"{k} {v:.3f}" for k, v in last.items())
        return line


def _settings(config: ReaderDistillConfig) -> dict:
    """What a stage's outputs depend on: the config without the run-control fields."""
    d = config.to_dict()
    for key in _FREE:
        d.pop(key, None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in _FREE_LOOP}
    d["scoring"] = {k: v for k, v in d["scoring"].items() if k != "batch_size"}
    return d


class _Retrievers:
    """Retrievers over the pool by spec (a name or a model folder), each built (the pool encoded) once."""

    def __init__(self, corpus):
        self.corpus, self.built = corpus, {}

    def rank(self, spec, questions: Sequence[OpenQuestion], depth: int):
        key = str(spec)
        if key not in self.built:
            self.built[key] = build_retriever(key, self.corpus)
        return rank_pool(self.built[key], self.corpus, questions, depth)


class _StepCounter:
    def __init__(self):
        self.steps = 0

    def on_step_end(self, state, model, metrics):
        self.steps += 1


def _candidate_recall(records, gold: dict[str, list[str]], ks: Sequence[int]) -> dict:
    """Gold recall of the teacher's ranking and of the retriever's among the candidates (train questions with
    gold passages): how much the reader knows beyond the retriever it reads from."""
    judged = [r for r in records if gold.get(r.query_id)]
    if not judged:
        return {}
    out = {}
    for name, ranking in (("teacher", lambda r: r.ranking()), ("retriever", lambda r: [p.id for p in r.passages])):
        out[name] = {f"recall@{k}": sum(gold_recall(ranking(r), gold[r.query_id], k) for r in judged) / len(judged)
                     for k in ks}
    out["questions"] = len(judged)
    return out


class _Run:
    """One call of the recipe: the data, the iterations' state, and the stop_after budget."""

    def __init__(self, config: ReaderDistillConfig, callbacks: Sequence, stop_after: int | None):
        self.config, self.stop_after = config, stop_after
        self.counter = _StepCounter()
        self.callbacks = [*callbacks, self.counter]
        self.out = Path(config.output_dir)
        self.data = load_open_qa(config.data)
        parts = self.data.split(config.eval_fraction, config.dev_fraction)
        self.train_q = parts.train[: config.max_questions] if config.max_questions else parts.train
        self.held = {"dev": parts.dev, "eval": parts.eval}
        check(len(self.train_q) >= 1, "eval_fraction", f"{config.data}: no training questions")
        self.kind = teacher_kind(config.reader)
        self.signal = resolve_signal(self.kind, config.scoring)
        if config.retrain_reader and self.kind.fine_tune is None:
            raise ConfigError(f"a {self.kind.name} reader cannot be re-trained in the loop", field="retrain_reader")
        self.settings = _settings(config)
        self.retrievers = _Retrievers(self.data.corpus)
        self.last_state = None

    def steps_left(self) -> int | None:
        return None if self.stop_after is None else self.stop_after - self.counter.steps

    def loop_config(self, folder: Path, iteration: int, **changes) -> TrainConfig:
        return dataclasses.replace(self.config.train, output_dir=str(folder), **changes,
                                   extra={"recipe": "reader-distill", "iteration": iteration,
                                          "settings": self.settings})

    def evaluate(self, spec) -> dict:
        ks = self.config.ks
        out = {}
        for side, questions in self.held.items():
            if questions:
                ranked = self.retrievers.rank(spec, questions, max(ks))
                out[side] = mean_recall({q: [d for d, _ in r] for q, r in ranked.items()}, questions, ks)
        return out

    def read_stage(self, manifest: Manifest, folder: Path, reader: str, retriever, n: int) -> str | None:
        """Re-train the reader on the current retriever's passages; its folder, or None when stopped early."""
        if not manifest.done("read"):
            ranked = self.retrievers.rank(retriever, self.train_q, self.config.reader_passages)
            examples = reader_examples(self.train_q, self.data.corpus, ranked, self.config.reader_passages)
            run = self.loop_config(folder / "reader", n, max_steps=None, epochs=self.config.reader_epochs,
                                   lr=self.config.reader_lr, batch_size=self.config.reader_batch_size, grad_accum=1)
            state, saved = self.kind.fine_tune(reader, examples, folder / "reader", run, self.callbacks,
                                               self.steps_left())
            self.last_state = state
            if saved is None:
                return None
            manifest.mark("read", model="reader/model", steps=state.step, retriever=str(retriever))
        return str(folder / "reader" / "model")

    def score_stage(self, manifest: Manifest, folder: Path, reader: str, retriever, n: int):
        if not manifest.done("score"):
            config = self.config
            ranked = self.retrievers.rank(retriever, self.train_q, config.candidates)
            teacher = self.kind.load(Path(reader), config.scoring)
            records = score_candidates(teacher, self.train_q, self.data.corpus, ranked,
                                       chunk=max(8, config.scoring.batch_size))
            provenance = {"teacher": str(reader), "kind": self.kind.name, "signal": self.signal,
                          "scoring": dataclasses.asdict(config.scoring), "retriever": str(retriever),
                          "candidates": config.candidates, "data": config.data, "iteration": n}
            write_score_run(folder / "scores.jsonl", records, provenance)
            gold = {q.id: q.gold for q in self.train_q}
            manifest.mark("score", file="scores.jsonl", questions=len(records), reader=str(reader),
                          retriever=str(retriever), candidate_recall=_candidate_recall(records, gold, config.ks))
        return read_score_run(folder / "scores.jsonl")

    def train_stage(self, manifest: Manifest, folder: Path, records, init, n: int) -> bool:
        """Train the retriever on the scores; False when stopped early (``stop_after``)."""
        if manifest.done("train"):
            return True
        config = self.config
        model = DualEncoder.from_pretrained(init, shared=True)
        collate = ScoreCollate(model.query_encoder.tokenizer, self.data.corpus, config.sample,
                               config.query_max_length, config.passage_max_length)
        loss_fn = distill_loss_fn(config.loss, config.scale, config.temperature, config.margin)
        state = train(model, records, collate, loss_fn, self.loop_config(folder / "retriever", n),
                      callbacks=self.callbacks, stop_after=self.steps_left())
        self.last_state = state
        if not finished(state):
            return False
        if state.rank == 0:
            model.save_pretrained(folder / "retriever" / "model")
        manifest.mark("train", model="retriever/model", steps=state.step, initialised_from=str(init))
        return True


def _result(run: _Run, done: int, recall: dict, teacher: dict, model_dir: Path | None) -> ReaderDistillResult:
    state = run.last_state
    steps = state.step if state is not None else 0
    metrics_dir = run.out / f"iter-{max(done, 1)}" / "retriever"
    return ReaderDistillResult(run.out, model_dir, steps, read_metrics(metrics_dir), done, recall, teacher)


@register("train reader-distill", ReaderDistillConfig,
          help="a retriever from question-answer pairs alone: distil a reader's passage scores (Izacard & Grave)")
def run_reader_distill(config: ReaderDistillConfig, callbacks: Sequence = (), stop_after: int | None = None
                       ) -> ReaderDistillResult:
    """Run the iterations (see the module docstring); ``stop_after`` ends the run after that many training
    steps of this call as if killed (``model_dir`` is then None)."""
    out = check_output(config.output_dir)
    if any(out.glob("iter-*/manifest.json")) and not config.train.resume:
        raise ConfigError(f"{out} already holds iterations; pass --resume to continue that run or choose a new "
                          "output folder", field="output_dir")
    DualEncoder.from_pretrained(config.student, shared=True)  # a bad student folder fails before any stage runs
    run = _Run(config, callbacks, stop_after)
    recall, teacher = {}, {}
    if config.evaluate:
        recall["iter-0"] = run.evaluate(config.retriever)
    reader, retriever, init = config.reader, config.retriever, config.student
    for n in range(1, config.iterations + 1):
        folder = out / f"iter-{n}"
        manifest = Manifest(folder, n, run.settings)
        if config.retrain_reader and n >= 2:
            reader = run.read_stage(manifest, folder, reader, retriever, n)
            if reader is None:
                return _result(run, n - 1, recall, teacher, None)
        records = run.score_stage(manifest, folder, reader, retriever, n)
        teacher[f"iter-{n}"] = manifest.stages["score"].get("candidate_recall", {})
        if not run.train_stage(manifest, folder, records, init, n):
            return _result(run, n - 1, recall, teacher, None)
        retriever = folder / "retriever" / "model"
        init = config.student if config.restart_student else retriever
        if config.evaluate:
            if not manifest.done("eval"):
                manifest.mark("eval", **run.evaluate(retriever))
            recall[f"iter-{n}"] = manifest.stages["eval"]
        logger.info(f"iteration {n}: " + ", ".join(f"{side} {m}" for side, m in recall.get(f"iter-{n}", {}).items()))
    final = out / "model"
    with atomic_dir(final) as tmp:
        shutil.copytree(retriever, tmp, dirs_exist_ok=True)
    atomic_write_json(out / "eval.json", {"recall": recall, "teacher_candidate_recall": teacher})
    return _result(run, config.iterations, recall, teacher, final)
