"""``run_distillation``: distil a text encoder into a student on unlabelled text (kd | ckd | seed).

The recipe behind ``reprlab distill kd|ckd|seed``. The teacher (``minilm`` or a model folder) is
frozen; the student is built from it by a spec (``layers:0,2,4``, ``every:2``, ``config:...``; see
``students.py``) or loaded from a folder; the texts come from BEIR folders (documents, and the
queries of the qrels splits ``queries`` names, less the ``dev_fraction`` hash dev slice of them),
JSONL files (``text``, with ``title`` when present) or plain text files (one text per non-empty
line), read by :func:`reprlab.text.corpus.read_texts`. No labels are read. The methods:

* ``kd``: embedding regression + in-batch score KL (:mod:`reprlab.distill.kd`);
* ``ckd``: the same plus CKD's word-relation and layer-transforming-relation terms
  (:mod:`reprlab.distill.ckd`), so that ckd vs kd isolates what the contextual terms add;
* ``seed``: SEED's queue-based similarity distillation (:mod:`reprlab.distill.seed`).

Training runs on the shared loop (checkpoints, exact resume, DDP under torchrun); the student is
saved as a sentence-encoder folder (HF BERT layout + sentence-transformers files).

>>> run_distillation(DistillConfig(method="ckd", corpus=["scifact/beir"], output_dir="runs/ckd"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.distill.ckd import CKDConfig, ckd_loss
from reprlab.distill.kd import KDConfig, KDLoss
from reprlab.distill.seed import SEED, SEEDConfig
from reprlab.distill.students import build_student, select_layers
from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.text.corpus import TextOptions, read_texts
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

METHODS = ("kd", "ckd", "seed")


# ----------------------------------------------------------------------------- texts


class TextCollate:
    """``collate(texts, rng)``: tokenize a batch of texts into ``{"input_ids", "attention_mask"}``."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(items), max_length=self.max_length).model_inputs()


# ----------------------------------------------------------------------------- kd / ckd model


def _embed(model: SentenceEncoder, input_ids, attention_mask, hidden: bool):
    out = model.encoder(input_ids, attention_mask, output_hidden_states=hidden or
                        getattr(model.pooling, "needs_hidden_states", False))
    v = model.pooling(out.last_hidden_state, attention_mask.bool(), out.hidden_states)
    return (F.normalize(v, dim=-1) if model.normalize else v), out.hidden_states


class Distiller(nn.Module):
    """Student + frozen teacher + plain KD (+ CKD) terms; ``forward(batch) -> (loss, metrics)``."""

    def __init__(self, student: SentenceEncoder, teacher: SentenceEncoder, kd: KDConfig, ckd: CKDConfig | None = None):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.kd = KDLoss(kd, student.dim, teacher.dim)
        self.ckd_config = ckd

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.ckd_config is not None
        with torch.no_grad():
            t_vec, t_states = _embed(self.teacher, ids, mask, hidden)
        s_vec, s_states = _embed(self.student, ids, mask, hidden)
        loss, metrics = self.kd(s_vec, t_vec)
        if hidden:
            extra, terms = ckd_loss(s_states, t_states, mask, self.ckd_config)
            loss = loss + extra
            metrics.update(terms)
        return loss, metrics


def _loss_fn(model, batch):
    loss, metrics = model(batch)
    return loss, {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- recipe


def _queries(value):
    """``--queries``: "all", "none" or comma-separated qrels split names."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(value)
    value = str(value).strip()
    if value in ("", "none"):
        return None
    return "all" if value == "all" else tuple(x for x in value.split(",") if x)


@recipe_config
class DistillConfig(RecipeConfig):
    method: str = option(help="kd | ckd | seed", choices=METHODS, cli=False)
    corpus: list[str] = option(help="BEIR folders, JSONL files or text files (one text per line)")
    output_dir: str = option(help="output folder (student in OUT/model)", flag="--out")
    teacher: str = option("minilm", help="teacher model folder or 'minilm'")
    student: str = option("layers:0,2,4", help="layers:0,2,4 | every:2 | config:tiny | config:num_layers=3,... | "
                                               "auto:3 | a model folder")
    max_length: int = option(128, help="word pieces per text")
    max_texts: int | None = option(None, help="read at most this many texts")
    queries: str | tuple[str, ...] | None = option(
        ("train",), parse=_queries, help="BEIR folders: add the queries judged in these qrels splits "
                                         "(comma-separated), 'all' or 'none'; never a split you report on")
    dev_fraction: float = option(
        0.0, help="BEIR folders: leave out the text of the queries whose id falls in this hash dev slice "
                  "(reprlab.text.splits, the slice DPR/ANCE's --dev-fraction holds out), so they can be a "
                  "dev set the student never read; 0 = hold none out")
    kd: KDConfig = option(default_factory=KDConfig, prefix="kd", help="plain KD terms")
    ckd: CKDConfig = option(default_factory=CKDConfig, prefix="ckd", help="CKD relation terms")
    seed_method: SEEDConfig = option(default_factory=SEEDConfig, prefix="seed", help="SEED queue")
    train: TrainConfig = loop(lr=1e-4)

    def __post_init__(self):
        check_choice(self.method, METHODS, "method")
        if isinstance(self.corpus, (str, Path)):
            self.corpus = [str(self.corpus)]
        check(bool(self.corpus), "corpus", "give at least one BEIR folder, JSONL file or text file")
        self.queries = _queries(self.queries)
        for name, cls in (("kd", KDConfig), ("ckd", CKDConfig), ("seed_method", SEEDConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        check(self.max_length >= 3, "max_length", f"must be at least 3, got {self.max_length}")
        check(0.0 <= self.dev_fraction < 1.0, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")

    def text_options(self) -> TextOptions:
        return TextOptions(unit="line", queries=self.queries, max_texts=self.max_texts, dev_fraction=self.dev_fraction)


@dataclass
class DistillResult(RecipeResult):
    texts: int = 0

    def summary(self) -> str:
        return f"{self.texts} texts; " + super().summary()


def load_student(teacher: SentenceEncoder, spec: str, texts: Sequence[str] = (), max_length: int = 128,
                 sample: int = 256, seed: int = 0) -> SentenceEncoder:
    """A student from a spec (``layers:...``, ``every:...``, ``config:...``, ``auto:N``) or a model folder.

    ``auto:N`` picks the N layers that agree best with the teacher on ``sample`` of ``texts``.
    """
    kind, _, rest = spec.partition(":")
    if kind == "auto":
        if not texts:
            raise ConfigError("student 'auto:N' chooses layers on the training texts; none were given")
        try:
            n = int(rest)
        except ValueError as exc:
            raise ConfigError(f"bad student spec {spec!r}: give auto:N, e.g. auto:3") from exc
        rng = np.random.default_rng(seed)
        chosen = [texts[i] for i in sorted(rng.choice(len(texts), size=min(sample, len(texts)), replace=False))]
        ranked = select_layers(teacher, chosen, n, max_length=max_length)
        logger.info("student layers by agreement with the teacher: "
                    + ", ".join(f"{list(layers)} {score:.3f}" for layers, score in ranked[:5]))
        return build_student(teacher, "layers:" + ",".join(map(str, ranked[0][0])))
    if kind in ("layers", "every", "config"):
        return build_student(teacher, spec)
    student = SentenceEncoder.from_pretrained(spec)
    if student.tokenizer.vocab_size != teacher.tokenizer.vocab_size:
        raise ConfigError(f"student {spec} has a different vocabulary from the teacher: distillation here "
                          "needs one tokenizer for both")
    return student


def build_distillation_model(config: DistillConfig, teacher: SentenceEncoder, student: SentenceEncoder) -> nn.Module:
    if config.method == "seed":
        return SEED(student, teacher, config.seed_method)
    return Distiller(student, teacher, config.kd, config.ckd if config.method == "ckd" else None)


@register("distill kd", DistillConfig, help="plain KD: embedding regression + in-batch score KL",
          method="kd", hidden=("ckd", "seed_method"))
@register("distill ckd", DistillConfig, help="contextual KD (CKD): KD + word-relation and layer-transforming terms",
          method="ckd", hidden=("seed_method",))
@register("distill seed", DistillConfig, help="SEED: queue-based self-supervised similarity distillation",
          method="seed", hidden=("kd", "ckd"))
def run_distillation(config: DistillConfig, callbacks: Sequence = (), stop_after: int | None = None) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` on ``config.corpus``; save to ``<output_dir>/model``.

    ``stop_after`` ends the run early as if killed (for resume tests): then only checkpoints are written.
    """
    texts = read_texts(config.corpus, config.text_options())
    torch.manual_seed(config.train.seed)  # fresh student weights / heads are the same in every run of a config
    teacher = SentenceEncoder.from_pretrained(config.teacher)
    student = load_student(teacher, config.student, texts, config.max_length, seed=config.train.seed)
    model = build_distillation_model(config, teacher, student)
    logger.info(f"distill {config.method}: {len(texts)} texts, teacher {config.teacher} "
                f"({teacher.encoder.config.num_layers} layers) -> student {config.student} "
                f"({student.encoder.config.num_layers} layers, width {student.dim})")
    state = train(model, texts, TextCollate(student.tokenizer, config.max_length), _loss_fn,
                  config.loop_config(f"distill-{config.method}"), callbacks=callbacks, stop_after=stop_after)
    out = Path(config.output_dir)
    student.to("cpu")
    done = finished(state)
    if state.rank == 0 and done:
        student.save_pretrained(out / "model")
    return DistillResult(out, out / "model" if done else None, state.step, read_metrics(out), texts=len(texts))
