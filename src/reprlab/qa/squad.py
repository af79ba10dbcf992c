"""Extractive-QA data and metrics: SQuAD v1.1 files, HotpotQA answers in their paragraphs, EM/F1.

Rajpurkar et al., "SQuAD: 100,000+ Questions for Machine Comprehension of Text", EMNLP 2016
(https://rajpurkar.github.io/SQuAD-explorer/). The metrics follow the official v1.1 evaluation
script: both strings are lower-cased, stripped of ASCII punctuation and of the articles a/an/the,
and their whitespace is collapsed; exact match compares the normalised strings, F1 the bags of
their tokens; a question scores the maximum over its gold answers; totals are percentages over
all questions, an unanswered one counting 0.

HotpotQA (Yang et al., EMNLP 2018) questions are read by the one HotpotQA reader,
:func:`reprlab.text.hotpotqa.load_hotpotqa` (both layouts, file:line errors), and become extractive
examples here (:func:`hotpotqa_examples`) by finding each gold answer in each supporting paragraph
(whole-word, case-sensitive first, then case-insensitive). With ``contexts="all"`` (the distractor
setting: what a reader sees after retrieval) each question is one example over all of its
paragraphs (:func:`paragraphs_example`). Questions an extractive reader cannot learn from are left
out and counted by reason (:data:`SKIP_REASONS`), and the counts are logged: yes/no answers, no
supporting paragraph (``"supporting"`` only), an answer found in no supporting paragraph (nowhere
in the context, for ``"all"``).

Train/eval split: the one rule of :mod:`reprlab.text.splits` on each example's ``group``. SQuAD
groups by article title (no paragraph of an eval article is trained on); HotpotQA groups by
question id (all paragraphs of one question fall on one side, the side the question has in
multi-hop retrieval).

>>> normalize_answer("The  Denver Broncos!")
'denver broncos'
>>> round(f1_score("Denver Broncos", "the Broncos"), 3)
0.667
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from reprlab.errors import ConfigError, DataFormatError
from reprlab.io import read_utf8
from reprlab.text.hotpotqa import HotpotData, HotpotQuestion, load_hotpotqa

logger = logging.getLogger("reprlab")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
HOTPOTQA_CONTEXTS = ("supporting", "all")  # see hotpotqa_examples
# why a HotpotQA question gives no example: no extractive answer; no supporting paragraph to read
# ("supporting" contexts only); its answer in no supporting paragraph (in no paragraph, for "all")
SKIP_REASONS = {"supporting": ("yes/no", "no supporting paragraph", "not found"), "all": ("yes/no", "not found")}


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

    A question without a prediction scores 0, as in the official script; a question without gold answers
    (SQuAD 2.0's unanswerable) scores 1 for an empty prediction and 0 otherwise.
    """
    if not gold:
        raise ConfigError("no questions to evaluate")
    em = f1 = 0.0
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        if not answers:  # SQuAD 2.0's unanswerable question: right only when nothing is predicted
            right = float(not normalize_answer(predictions[qid]))
            em, f1 = em + right, f1 + right
            continue
        em += max_over_ground_truths(exact_match_score, predictions[qid], answers)
        f1 += max_over_ground_truths(f1_score, predictions[qid], answers)
    return {"exact_match": 100.0 * em / len(gold), "f1": 100.0 * f1 / len(gold)}


def evaluate_examples(examples: Sequence[QAExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """EM/F1 of ``predictions`` ({example id: answer text}) against the examples' answers."""
    return squad_metrics({ex.id: ex.answers for ex in examples}, predictions)


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

    SQuAD 2.0's unanswerable questions (``"is_impossible": true``, no answers) are read too: an example
    without answers, which a reader learns to point at [CLS] and which scores EM/F1 1 only for an
    empty prediction (the official 2.0 rule).

    ``check_spans`` verifies that every ``answer_start`` points at its answer text in the context;
    a mismatch is a :class:`DataFormatError` naming the question.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file; give a SQuAD v1.1 JSON file", str(path))
    try:
        data = json.loads(read_utf8(path))
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
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataFormatError(f"{where_q}.is_impossible: expected true or false, got {impossible!r}",
                                          str(path))
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
                if impossible and texts:
                    raise DataFormatError(f"{where_q} (question {qid}): is_impossible is true but it has "
                                          f"{len(texts)} answers", str(path))
                if not texts and not impossible:
                    raise DataFormatError(f"{where_q} (question {qid}): no answers; mark a question without an "
                                          'answer "is_impossible": true (SQuAD 2.0)', str(path))
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


@dataclass
class HotpotExamples:
    examples: list[QAExample]
    skipped: dict[str, int]  # questions left out, by reason (SKIP_REASONS of the contexts)


def _supporting_examples(data: HotpotData, q: HotpotQuestion, answers: list[str]) -> list[QAExample] | str:
    """One example per supporting paragraph holding a gold answer, or the reason there is none."""
    if not q.supporting:
        return "no supporting paragraph"
    found = []
    for position in q.supporting:
        doc = data.corpus[q.paragraphs[position]]
        for answer in answers:
            start = _find_whole_word(doc["text"], answer)
            if start >= 0:
                found.append(QAExample(f"{q.id}:{position}", q.question, doc["text"], list(answers),
                                       [(start, start + len(answer))], group=q.id, title=doc["title"]))
                break
    return found or "not found"


def hotpotqa_examples(data: HotpotData, contexts: str = "supporting",
                      questions: Sequence[HotpotQuestion] | None = None) -> HotpotExamples:
    """Extractive examples of HotpotQA questions (``questions``, default all of ``data``), in order.

    ``contexts="supporting"``: one example per (question, supporting paragraph that contains a gold
    answer); its id is ``<question id>:<position of the paragraph in the record>``, its group the
    question id, its context the paragraph text. The gold answers of an example are all of the
    question's answers (for EM/F1); the training span is the first one found in that paragraph.

    ``contexts="all"``: one example per question over all of its paragraphs (gold and distractors, in
    the record's order), as :func:`paragraphs_example` builds it; its id is the question id.
    """
    if contexts not in HOTPOTQA_CONTEXTS:
        raise ConfigError(f"contexts must be one of {HOTPOTQA_CONTEXTS}, got {contexts!r}")
    skipped = dict.fromkeys(SKIP_REASONS[contexts], 0)
    examples: list[QAExample] = []
    for q in data.questions if questions is None else questions:
        answers = [a for a in q.answers if a.strip()]
        if not answers or all(a.strip().lower() in ("yes", "no") for a in answers):
            skipped["yes/no"] += 1
            continue
        if contexts == "all":
            paragraphs = [(data.corpus[pid]["title"], data.corpus[pid]["text"], i in q.supporting)
                          for i, pid in enumerate(q.paragraphs)]
            example = paragraphs_example(q.id, q.question, paragraphs, answers)
            found = [example] if example is not None else "not found"
        else:
            found = _supporting_examples(data, q, answers)
        if isinstance(found, str):
            skipped[found] += 1
        else:
            examples.extend(found)
    return HotpotExamples(examples, skipped)


def log_skipped(source: str, questions: int, found: HotpotExamples, contexts: str) -> None:
    """Say how many HotpotQA questions gave no example, and why (a warning when any lacked supporting facts)."""
    why = {"yes/no": "with a yes/no answer", "no supporting paragraph": "without a supporting paragraph",
           "not found": "with the answer in no supporting paragraph" if contexts == "supporting"
           else "with the answer nowhere in the text"}
    left_out = sum(found.skipped.values())
    reasons = ", ".join(f"{n} {why[reason]}" for reason, n in found.skipped.items() if n)
    message = (f"{source}: {questions} HotpotQA questions -> {len(found.examples)} examples ({contexts} contexts)"
               + (f"; {left_out} questions left out: {reasons}" if left_out else ""))
    (logger.warning if found.skipped.get("no supporting paragraph") else logger.info)(message)


def load_hotpotqa_answers(path: str | Path, contexts: str = "supporting",
                          skipped: dict[str, int] | None = None) -> list[QAExample]:
    """Extractive examples (:func:`hotpotqa_examples`) of a HotpotQA file in either layout (read by
    :func:`reprlab.text.hotpotqa.load_hotpotqa`, which keeps questions without a gold pair here).

    The questions left out are logged and, when ``skipped`` is given, counted into it by reason."""
    if contexts not in HOTPOTQA_CONTEXTS:
        raise ConfigError(f"contexts must be one of {HOTPOTQA_CONTEXTS}, got {contexts!r}")
    data = load_hotpotqa(path, require_gold_pair=False)
    found = hotpotqa_examples(data, contexts)
    log_skipped(str(path), len(data.questions), found, contexts)
    if skipped is not None:
        for reason, n in found.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    return found.examples


def load_qa_file(path: str | Path, hotpotqa_contexts: str = "supporting",
                 skipped: dict[str, int] | None = None) -> list[QAExample]:
    """A SQuAD v1.1 ``.json`` file or a HotpotQA ``.jsonl`` file, chosen by the suffix
    (``hotpotqa_contexts`` and ``skipped``: see :func:`load_hotpotqa_answers`)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return load_hotpotqa_answers(path, contexts=hotpotqa_contexts, skipped=skipped)
    if path.suffix == ".json":
        return load_squad(path)
    raise DataFormatError("unknown QA file type: give a SQuAD v1.1 .json file or an IRCoT HotpotQA .jsonl file",
                          str(path))
