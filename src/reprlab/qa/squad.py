"""Extractive-QA data and metrics: SQuAD v1.1 files, HotpotQA answers in their paragraphs, EM/F1.

Rajpurkar et al., "SQuAD: 100,000+ Questions for Machine Comprehension of Text", EMNLP 2016
(https://rajpurkar.github.io/SQuAD-explorer/). The metrics follow the official v1.1 evaluation
script: both strings are lower-cased, stripped of ASCII punctuation and of the articles a/an/the,
and their whitespace is collapsed; exact match compares the normalised strings, F1 the bags of
their tokens; a question scores the maximum over its gold answers; totals are percentages over
all questions, an unanswered one counting 0.

HotpotQA (Yang et al., EMNLP 2018) questions of the IRCoT processed layout become extractive
examples by finding each gold answer in each supporting paragraph (whole-word, case-sensitive
first, then case-insensitive); yes/no answers and answers found in no supporting paragraph are
left out. With ``contexts="all"`` (the distractor setting: what a reader sees after retrieval)
each question is one example over all of its paragraphs (:func:`paragraphs_example`).

Train/eval split rule (:func:`hash_split`): a group key is hashed with SHA-256, and the group goes
to ``eval`` when the first 8 hex digits, read as an integer and divided by 2**32, fall below
``eval_fraction``. SQuAD groups by article title (no paragraph of an eval article is trained
on); HotpotQA groups by question id (all paragraphs of one question fall on one side). The rule
needs no seed and no list of ids, so every script that uses it draws the same split.

>>> normalize_answer("The  Denver Broncos!")
'denver broncos'
>>> round(f1_score("Denver Broncos", "the Broncos"), 3)
0.667
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from reprlab.errors import ConfigError, DataFormatError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
HOTPOTQA_CONTEXTS = ("supporting", "all")  # see load_hotpotqa_answers


@dataclass
class QAExample:
    """One question over one context: gold answer texts (for EM/F1) and their character spans.

    ``spans`` are (start, end) character offsets in ``context``; the first is the training target.
    """

    id: str
    question: str
    context: str
    answers: list[str]
    spans: list[tuple[int, int]]
    group: str  # the split key: the article title (SQuAD) or the question id (HotpotQA)
    title: str = ""


# ------------------------------------------------------------------------------------------------
# metrics (official SQuAD v1.1 semantics)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-bag F1 of the normalised strings; 0 when they share no token (even if both are empty)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(metric, prediction: str, ground_truths: Sequence[str]) -> float:
    if not ground_truths:
        raise ConfigError("a question has no gold answers; SQuAD v1.1 metrics need at least one")
    return max(metric(prediction, gt) for gt in ground_truths)


def squad_metrics(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent over every question of ``gold`` ({id: [answers]}).

    A question without a prediction scores 0, as in the official script.
    """
    if not gold:
        raise ConfigError("no questions to evaluate")
    em = f1 = 0.0
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        em += max_over_ground_truths(exact_match_score, predictions[qid], answers)
        f1 += max_over_ground_truths(f1_score, predictions[qid], answers)
    return {"exact_match": 100.0 * em / len(gold), "f1": 100.0 * f1 / len(gold)}


def evaluate_examples(examples: Sequence[QAExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """EM/F1 of ``predictions`` ({example id: answer text}) against the examples' answers."""
    return squad_metrics({ex.id: ex.answers for ex in examples}, predictions)


# ------------------------------------------------------------------------------------------------
# split rule


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key``: the first 32 bits of its SHA-256, over 2**32."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def hash_split(key: str, eval_fraction: float) -> str:
    """``"eval"`` when ``hash_fraction(key) < eval_fraction``, else ``"train"``."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    return "eval" if hash_fraction(key) < eval_fraction else "train"


def split_examples(
    examples: Iterable[QAExample], eval_fraction: float
) -> tuple[list[QAExample], list[QAExample]]:
    """(train, eval) by :func:`hash_split` of each example's ``group``."""
    train, held = [], []
    for ex in examples:
        (held if hash_split(ex.group, eval_fraction) == "eval" else train).append(ex)
    return train, held


# ------------------------------------------------------------------------------------------------
# readers


def _need(obj, key: str, kind, path, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{where}: missing field {key!r}", str(path))
    value = obj[key]
    if not isinstance(value, kind):
        raise DataFormatError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}", str(path))
    return value


def load_squad(path: str | Path, check_spans: bool = True) -> list[QAExample]:
    """Examples of a SQuAD v1.1 JSON file, one per question, in file order; grouped by article title.

    ``check_spans`` verifies that every ``answer_start`` points at its answer text in the context;
    a mismatch is a :class:`DataFormatError` naming the question.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file; give a SQuAD v1.1 JSON file", str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), exc.lineno) from exc
    articles = _need(data, "data", list, path, "top level")
    examples: list[QAExample] = []
    seen: set[str] = set()
    for a, article in enumerate(articles):
        where_a = f"data[{a}]"
        title = article.get("title", f"article-{a}") if isinstance(article, dict) else ""
        for p, para in enumerate(_need(article, "paragraphs", list, path, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _need(para, "context", str, path, where_p)
            for q, qa in enumerate(_need(para, "qas", list, path, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qid = str(_need(qa, "id", (str, int), path, where_q))
                question = _need(qa, "question", str, path, where_q)
                if qid in seen:
                    raise DataFormatError(f"{where_q}: duplicate question id {qid!r}", str(path))
                seen.add(qid)
                texts, spans = [], []
                for k, ans in enumerate(_need(qa, "answers", list, path, where_q)):
                    where_k = f"{where_q}.answers[{k}]"
                    text = _need(ans, "text", str, path, where_k)
                    start = _need(ans, "answer_start", int, path, where_k)
                    if check_spans and context[start : start + len(text)] != text:
                        raise DataFormatError(
                            f"{where_k} (question {qid}): answer_start {start} does not point at {text!r} "
                            f"in the context (found {context[start:start + len(text)]!r})", str(path))
                    texts.append(text)
                    spans.append((start, start + len(text)))
                if not texts:
                    raise DataFormatError(f"{where_q} (question {qid}): no answers; SQuAD v1.1 questions "
                                          "are all answerable", str(path))
                examples.append(QAExample(qid, question, context, texts, spans, group=title, title=title))
    return examples


def _find_whole_word(text: str, answer: str) -> int:
    """Start of the first whole-word occurrence of ``answer`` in ``text`` (exact case, then any), or -1."""
    for flags in (0, re.IGNORECASE):
        m = re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", text, flags)
        if m:
            return m.start()
    return -1


def paragraphs_example(qid: str, question: str, paragraphs: Sequence[tuple[str, str, bool]],
                       answers: Sequence[str]) -> QAExample | None:
    """One question over all of its ``(title, text, is_supporting)`` paragraphs, or None if no answer is found.

    The context is the paragraphs in the given order, each as ``"<title>: <text>"``, joined by newlines.
    The training span is the first whole-word occurrence of a gold answer in a supporting paragraph,
    else anywhere in the context; the group (split key) is the question id.
    """
    pieces, regions, pos = [], [], 0
    for title, text, supporting in paragraphs:
        piece = f"{title}: {text}"
        if supporting:
            regions.append((pos, pos + len(piece)))
        pieces.append(piece)
        pos += len(piece) + 1
    context = "\n".join(pieces)
    for lo, hi in regions + [(0, len(context))]:
        for answer in answers:
            at = _find_whole_word(context[lo:hi], answer)
            if at >= 0:
                return QAExample(qid, question, context, list(answers), [(lo + at, lo + at + len(answer))], group=qid)
    return None


def load_hotpotqa_answers(path: str | Path, contexts: str = "supporting") -> list[QAExample]:
    """Extractive examples from HotpotQA in the IRCoT processed layout (JSONL).

    ``contexts="supporting"``: one example per (question, supporting paragraph that contains a gold
    answer); its id is ``<question_id>:<paragraph id>``, its group the question id, its context the
    paragraph text. The gold answers of an example are all of the question's answers (for EM/F1); the
    training span is the first one found in that paragraph.

    ``contexts="all"``: one example per question over all of its paragraphs (gold and distractors, file
    order), as :func:`paragraphs_example` builds it; its id is the question id.
    """
    if contexts not in HOTPOTQA_CONTEXTS:
        raise ConfigError(f"contexts must be one of {HOTPOTQA_CONTEXTS}, got {contexts!r}")
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file; give the IRCoT HotpotQA JSONL file", str(path))
    examples: list[QAExample] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), line_no) from exc
            try:
                qid = str(record["question_id"])
                question = record["question_text"]
                spans = [s for obj in record["answers_objects"] for s in obj.get("spans", []) if s and s.strip()]
                paragraphs = record["contexts"]
            except (KeyError, TypeError, AttributeError) as exc:
                raise DataFormatError(
                    f"expected question_id, question_text, answers_objects[].spans and contexts ({exc!r})",
                    str(path), line_no) from exc
            if not spans or all(s.strip().lower() in ("yes", "no") for s in spans):
                continue
            for ctx in paragraphs:
                if not isinstance(ctx, dict) or "paragraph_text" not in ctx:
                    raise DataFormatError("a context lacks paragraph_text", str(path), line_no)
            if contexts == "all":
                example = paragraphs_example(
                    qid, question, [(c.get("title", ""), c["paragraph_text"], bool(c.get("is_supporting")))
                                    for c in paragraphs], spans)
                if example is not None:
                    examples.append(example)
                continue
            for ctx in paragraphs:
                if not ctx.get("is_supporting"):
                    continue
                text = ctx["paragraph_text"]
                for span in spans:
                    start = _find_whole_word(text, span)
                    if start >= 0:
                        examples.append(QAExample(
                            f"{qid}:{ctx.get('id', '')}", question, text, list(spans), [(start, start + len(span))],
                            group=qid, title=ctx.get("title", "")))
                        break
    return examples


def load_qa_file(path: str | Path, hotpotqa_contexts: str = "supporting") -> list[QAExample]:
    """A SQuAD v1.1 ``.json`` file or an IRCoT HotpotQA ``.jsonl`` file, chosen by the suffix
    (``hotpotqa_contexts``: see :func:`load_hotpotqa_answers`)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return load_hotpotqa_answers(path, contexts=hotpotqa_contexts)
    if path.suffix == ".json":
        return load_squad(path)
    raise DataFormatError("unknown QA file type: give a SQuAD v1.1 .json file or an IRCoT HotpotQA .jsonl file",
                          str(path))
