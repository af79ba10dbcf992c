"""The stages of one distillation iteration, each written atomically and skipped when a rerun finds it done.

An iteration folder ``OUT/iter-N/`` holds ``manifest.json`` (the settings it was made with and the
stages done), ``scores.jsonl`` (the teacher's scores of the candidates: a
:mod:`reprlab.text.score_runs` file), ``retriever/`` (a training-loop run: checkpoints, metrics, the
model in ``retriever/model``) and, when the reader is re-trained, ``reader/``. :class:`Manifest` refuses
a folder made with other settings, so a rerun can never mix two configurations; a training stage
cut short resumes from its newest checkpoint through the loop's own resume.

Also here: the score stage (:func:`score_candidates`), and the training stage's batches
(:class:`ScoreCollate`) and loss (:func:`distill_loss_fn`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError, DataFormatError
from reprlab.io import atomic_write_json
from reprlab.logs import progress
from reprlab.retrieval.reader_distill.losses import distillation_loss
from reprlab.text.beir import doc_text
from reprlab.text.score_runs import ScoredPassage, ScoredQuery

MANIFEST = "manifest.json"


class Manifest:
    """``manifest.json`` of an iteration folder: ``{"iteration", "settings", "stages": {name: info}}``."""

    def __init__(self, folder: str | Path, iteration: int, settings: dict):
        self.folder, self.iteration, self.settings = Path(folder), iteration, settings
        self.stages: dict[str, dict] = {}
        path = self.folder / MANIFEST
        if path.is_file():
            try:
                recorded = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataFormatError(f"damaged ({exc}); delete {self.folder} to redo that iteration",
                                      str(path)) from None
            if not isinstance(recorded, dict) or not isinstance(recorded.get("stages", {}), dict):
                raise DataFormatError(f"not an iteration manifest; delete {self.folder} to redo that iteration",
                                      str(path))
            if recorded.get("settings") != settings:
                old, new = recorded.get("settings", {}), settings
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"{self.folder} was made with other settings ({', '.join(changed)}); use the same "
                                  "ones to resume it, or a new output folder")
            self.stages = recorded.get("stages", {})

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str, **info) -> None:
        """Record ``stage`` as done (atomically, after its outputs are in place)."""
        self.stages[stage] = info
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / MANIFEST, {"iteration": self.iteration, "settings": self.settings,
                                                   "stages": self.stages})


def score_candidates(teacher, questions: Sequence, corpus: Mapping[str, Mapping[str, str]],
                     ranked: Mapping[str, Sequence[tuple[str, float]]], chunk: int = 8) -> list[ScoredQuery]:
    """The teacher's score of each question's ranked candidates (in the retriever's order)."""
    out: list[ScoredQuery] = []
    with progress(total=len(questions), desc="score", unit="q") as bar:
        for lo in range(0, len(questions), chunk):
            part = questions[lo: lo + chunk]
            lists = [ranked[q.id] for q in part]
            scores = teacher.score_passages([q.question for q in part],
                                            [[(corpus[d].get("title", ""), corpus[d].get("text", "")) for d, _ in ps]
                                             for ps in lists])
            for q, ps, s in zip(part, lists, scores):
                out.append(ScoredQuery(q.id, q.question, [ScoredPassage(d, float(x), float(r))
                                                          for (d, r), x in zip(ps, s)], list(q.answers)))
            bar.update(len(part))
    return out


class ScoreCollate:
    """Tokenize a batch of scored questions: queries (B), then ``sample`` of each one's candidates drawn
    with the step's generator (all when ``sample`` is 0 or covers them), padded to (B, M) with a mask."""

    def __init__(self, tokenizer, corpus: Mapping[str, Mapping[str, str]], sample: int, query_max_length: int,
                 passage_max_length: int):
        self.tok, self.corpus, self.sample = tokenizer, corpus, sample
        self.qlen, self.plen = query_max_length, passage_max_length

    def __call__(self, items: Sequence[ScoredQuery], rng: np.random.Generator) -> dict:
        chosen = []
        for it in items:
            n = len(it.passages)
            if self.sample and self.sample < n:
                chosen.append(sorted(rng.choice(n, size=self.sample, replace=False).tolist()))
            else:
                chosen.append(list(range(n)))
        M = max(len(c) for c in chosen)
        teacher = torch.zeros(len(items), M)
        mask = torch.zeros(len(items), M, dtype=torch.bool)
        texts = []
        for b, (it, idx) in enumerate(zip(items, chosen)):
            for j in range(M):
                if j < len(idx):
                    p = it.passages[idx[j]]
                    texts.append(doc_text(self.corpus[p.id]))
                    teacher[b, j], mask[b, j] = p.score, True
                else:
                    texts.append("")  # a padding slot: [CLS] [SEP], masked out of the loss
        queries = self.tok([it.query for it in items], max_length=self.qlen)
        passages = self.tok(texts, max_length=self.plen)
        return {"queries": queries.model_inputs(), "passages": passages.model_inputs(), "teacher": teacher,
                "mask": mask}


def distill_loss_fn(kind: str, scale: float, temperature: float, margin: float):
    """The training stage's ``loss_fn(model, batch)`` for a :class:`~reprlab.retrieval.dual_encoder.DualEncoder`."""

    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])  # (B, H), (B*M, H)
        B, M = batch["teacher"].shape
        student = scale * torch.einsum("bh,bmh->bm", q, p.view(B, M, -1))  # (B, M)
        return distillation_loss(student, batch["teacher"], batch["mask"], kind, temperature, margin)

    return loss_fn
