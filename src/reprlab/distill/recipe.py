"""``run_distillation``: distil a text encoder into a student on unlabelled text (kd | ckd | seed).

The recipe behind ``reprlab distill kd|ckd|seed``. The teacher (``minilm`` or a model folder) is
frozen; the student is built from it by a spec (``layers:0,2,4``, ``every:2``, ``config:...``; see
``students.py``) or loaded from a folder; the texts come from BEIR folders (documents and queries),
JSONL files (``text``, with ``title`` when present) or plain text files (one text per non-empty
line). No labels are read. The methods:

* ``kd``: embedding regression + in-batch score KL (:mod:`reprlab.distill.kd`);
* ``ckd``: the same plus CKD's word-relation and layer-transforming-relation terms
  (:mod:`reprlab.distill.ckd`), so that ckd vs kd isolates what the contextual terms add;
* ``seed``: SEED's queue-based similarity distillation (:mod:`reprlab.distill.seed`).

Training runs on the shared loop (checkpoints, exact resume, DDP under torchrun); the student is
saved as a sentence-encoder folder (HF BERT layout + sentence-transformers files).

>>> run_distillation(DistillConfig(method="ckd", corpus=["scifact/beir"], output_dir="runs/ckd"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
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
from reprlab.errors import ConfigError, DataFormatError, ReprlabError
from reprlab.train import TrainConfig, train

logger = logging.getLogger("reprlab")

METHODS = ("kd", "ckd", "seed")


# ----------------------------------------------------------------------------- texts


def read_distill_texts(paths: str | Path | Sequence[str | Path], max_texts: int | None = None,
                       include_queries: bool = True) -> list[str]:
    """Unlabelled texts from BEIR folders (corpus + queries), JSONL files or plain text files."""
    from reprlab.text.beir import read_corpus, read_queries

    if isinstance(paths, (str, Path)):
        paths = [paths]
    texts: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / "corpus.jsonl").is_file():
                raise DataFormatError("a corpus folder must be a BEIR folder with corpus.jsonl", path=str(p))
            corpus = read_corpus(p / "corpus.jsonl")
            texts += [(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus.values()]
            if include_queries and (p / "queries.jsonl").is_file():
                texts += list(read_queries(p / "queries.jsonl").values())
        elif p.suffix == ".jsonl" and p.is_file():
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataFormatError(f"not valid JSON ({exc.msg})", path=str(p), line=n) from exc
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise DataFormatError('expected an object with a "text" string, e.g. {"text": "..."}',
                                              path=str(p), line=n)
                    texts.append((str(obj.get("title") or "") + " " + obj["text"]).strip())
        elif p.is_file():
            texts += [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise ReprlabError(f"corpus {p} does not exist; give BEIR folders, JSONL files or text files")
    texts = [t for t in texts if t]
    if not texts:
        raise ReprlabError(f"no texts found in {', '.join(map(str, paths))}")
    return texts[:max_texts] if max_texts else texts


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


@dataclass
class DistillConfig:
    method: str  # kd | ckd | seed
    corpus: list[str]  # BEIR folders, JSONL or text files
    output_dir: str
    teacher: str = "minilm"
    student: str = "layers:0,2,4"  # a spec (students.build_student; or auto:N) or a model folder
    max_length: int = 128
    max_texts: int | None = None
    include_queries: bool = True
    kd: KDConfig = field(default_factory=KDConfig)
    ckd: CKDConfig = field(default_factory=CKDConfig)
    seed_method: SEEDConfig = field(default_factory=SEEDConfig)
    # the shared loop
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    bf16: bool = False
    checkpoint_every: int = 0
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 10

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown distillation method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if isinstance(self.corpus, (str, Path)):
            self.corpus = [str(self.corpus)]
        for name, cls in (("kd", KDConfig), ("ckd", CKDConfig), ("seed_method", SEEDConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))

    def train_config(self) -> TrainConfig:
        record = dataclasses.asdict(self)
        return TrainConfig(
            output_dir=self.output_dir, max_steps=self.max_steps, epochs=self.epochs, batch_size=self.batch_size,
            grad_accum=self.grad_accum, lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
            schedule=self.schedule, bf16=self.bf16, checkpoint_every=self.checkpoint_every, resume=self.resume,
            seed=self.seed, device=self.device, log_every=self.log_every,
            extra={"recipe": f"distill-{self.method}", **record},
        )


@dataclass
class DistillResult:
    model_dir: Path
    steps: int
    final_loss: float
    texts: int
    metrics: list[dict] = field(default_factory=list)


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


def run_distillation(config: DistillConfig, stop_after: int | None = None, callbacks: Sequence = ()) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` on ``config.corpus``; save to ``<output_dir>/model``.

    ``stop_after`` ends the run early as if killed (for resume tests): then only checkpoints are written.
    """
    texts = read_distill_texts(config.corpus, config.max_texts, config.include_queries)
    torch.manual_seed(config.seed)  # fresh student weights / heads are the same in every run of a config
    teacher = SentenceEncoder.from_pretrained(config.teacher)
    student = load_student(teacher, config.student, texts, config.max_length, seed=config.seed)
    model = build_distillation_model(config, teacher, student)
    logger.info(f"distill {config.method}: {len(texts)} texts, teacher {config.teacher} "
                f"({teacher.encoder.config.num_layers} layers) -> student {config.student} "
                f"({student.encoder.config.num_layers} layers, width {student.dim})")
    state = train(model, texts, TextCollate(student.tokenizer, config.max_length), _loss_fn, config.train_config(),
                  callbacks=callbacks, stop_after=stop_after)
    out = Path(config.output_dir)
    student.to("cpu")
    if state.rank == 0 and state.step >= state.total_steps:
        student.save_pretrained(out / "model")
    metrics_path = out / "metrics.jsonl"
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    metrics = [json.loads(x) for x in lines if x.strip()]
    return DistillResult(out / "model", state.step, state.last_loss, len(texts), metrics)
