"""Open-domain QA data: questions with answers over a pool of passages, and what readers read from it.

The FiD reader (:mod:`reprlab.qa.fid`) and reader-to-retriever distillation
(:mod:`reprlab.retrieval.reader_distill`) both need questions, their gold answers and a passage pool
to retrieve from; both read them here, so neither imports the other.

* HotpotQA (``.jsonl``/``.json``, read by :func:`reprlab.text.hotpotqa.load_hotpotqa`): the pool is
  the union of all questions' paragraphs (4,858 for the 500 IRCoT questions); a question's gold
  passages are its two supporting paragraphs. Yes/no answers are kept (a generative reader can give
  them).
* SQuAD v1.1 (``.json``, e.g. XQuAD-en, read by :func:`reprlab.qa.squad.load_squad`): the pool is the
  file's paragraphs (240 for XQuAD), each titled with its article's title (underscores as spaces)
  and identified as ``"<article title>#<k>"`` (k-th distinct paragraph of the article, from 0); a
  question's gold passage is its own paragraph.

Gold passages are for evaluation (recall, the supervised DPR ceiling); reader distillation never
trains on them. Questions split by the one rule of :mod:`reprlab.text.splits` on the question id.

>>> data = load_open_qa("xquad.en.json")                      # doctest: +SKIP
>>> len(data.questions), len(data.corpus)                     # doctest: +SKIP
(1190, 240)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from reprlab.errors import DataFormatError
from reprlab.qa.squad import load_squad
from reprlab.text.hotpotqa import load_hotpotqa
from reprlab.text.splits import Split, split


@dataclass
class OpenQuestion:
    """A question, its gold answer strings and (for evaluation only) the ids of its gold passages."""

    id: str
    question: str
    answers: list[str]
    gold: list[str] = field(default_factory=list)


@dataclass
class OpenQAData:
    questions: list[OpenQuestion]
    corpus: dict[str, dict[str, str]]  # {passage id: {"title", "text"}}
    path: str = ""

    def split(self, eval_fraction: float, dev_fraction: float = 0.0) -> Split[OpenQuestion]:
        """The questions by :func:`reprlab.text.splits.split` on their ids."""
        return split(self.questions, key=lambda q: q.id, eval_fraction=eval_fraction, dev_fraction=dev_fraction)


@dataclass
class ReaderExample:
    """One question with the passages a reader reads for it: ``(passage id, title, text)`` each."""

    id: str
    question: str
    answers: list[str]
    passages: list[tuple[str, str, str]]


def _squad_open(path: Path) -> OpenQAData:
    examples = load_squad(path)
    corpus: dict[str, dict[str, str]] = {}
    ids: dict[tuple[str, str], str] = {}
    per_title: dict[str, int] = {}
    questions = []
    for ex in examples:
        key = (ex.title, ex.context)
        if key not in ids:
            k = per_title.get(ex.title, 0)
            per_title[ex.title] = k + 1
            ids[key] = f"{ex.title}#{k}"
            corpus[ids[key]] = {"title": ex.title.replace("_", " "), "text": ex.context}
        if ex.answers:  # an unanswerable question (SQuAD 2.0) has no gold passage: its paragraph stays in the pool
            questions.append(OpenQuestion(ex.id, ex.question, list(ex.answers), [ids[key]]))
    return OpenQAData(questions, corpus, str(path))


def load_open_qa(path: str | Path) -> OpenQAData:
    """A HotpotQA file (``.jsonl``, or ``.json`` holding a JSON list) or a SQuAD v1.1 ``.json`` file as
    open-domain QA data (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file; give a HotpotQA .jsonl or a SQuAD v1.1 .json file", str(path))
    if path.suffix == ".json" and path.read_text(encoding="utf-8", errors="replace").lstrip()[:1] == "{":
        return _squad_open(path)
    if path.suffix not in (".json", ".jsonl"):
        raise DataFormatError("unknown QA file type: give a HotpotQA .jsonl or a SQuAD v1.1 .json file", str(path))
    data = load_hotpotqa(path, require_gold_pair=False)
    questions = [OpenQuestion(q.id, q.question, [a for a in q.answers if a.strip()], list(q.gold))
                 for q in data.questions if any(a.strip() for a in q.answers)]
    return OpenQAData(questions, data.corpus, str(path))


def reader_examples(questions: Sequence[OpenQuestion], corpus: Mapping[str, Mapping[str, str]],
                    ranked: Mapping[str, Sequence[tuple[str, float]]], n: int) -> list[ReaderExample]:
    """Each question with the (id, title, text) of its first ``n`` ranked passages."""
    return [ReaderExample(q.id, q.question, list(q.answers),
                          [(d, corpus[d].get("title", ""), corpus[d].get("text", "")) for d, _ in ranked[q.id][:n]])
            for q in questions]


def rank_pool(retriever, corpus: Mapping[str, Mapping[str, str]], questions: Sequence[OpenQuestion], depth: int,
              show_progress: bool | None = False) -> dict[str, list[tuple[str, float]]]:
    """``{question id: [(passage id, retriever score), ...]}``, the top ``depth`` of ``corpus`` for each question.

    ``retriever`` is a name or folder for :func:`reprlab.retrieval.pipeline.build_retriever` (``bm25``,
    ``minilm``, a model folder), indexed over ``corpus`` here, or anything with ``search(texts, k)``."""
    from reprlab.retrieval.pipeline import build_retriever

    if isinstance(retriever, (str, Path)):
        retriever = build_retriever(retriever, corpus, show_progress=show_progress)
    if not questions:
        return {}
    scores, ids = retriever.search([q.question for q in questions], min(depth, len(corpus)))
    return {q.id: [(str(d), float(s)) for d, s in zip(id_row, score_row) if d is not None]
            for q, id_row, score_row in zip(questions, ids, scores)}


def gold_recall(ranked: Sequence[str], gold: Sequence[str], k: int) -> float:
    """1.0 when every gold passage is among the first ``k`` of ``ranked`` (HotpotQA: both paragraphs;
    SQuAD: the question's paragraph), else 0.0."""
    top = set(ranked[:k])
    return float(bool(gold) and all(g in top for g in gold))


def mean_recall(rankings: Mapping[str, Sequence[str]], questions: Sequence[OpenQuestion], ks: Sequence[int]
                ) -> dict[str, float]:
    """``{"recall@k": mean of gold_recall}`` over the questions that have gold passages."""
    judged = [q for q in questions if q.gold]
    if not judged:
        return {f"recall@{k}": float("nan") for k in ks}
    return {f"recall@{k}": sum(gold_recall(rankings[q.id], q.gold, k) for q in judged) / len(judged) for k in ks}
