"""HotpotQA: questions, their gold paragraphs in hop order, an open corpus; the one reader of the file.

Yang et al., "HotpotQA: A Dataset for Diverse, Explainable Multi-hop Question Answering", EMNLP 2018
(https://hotpotqa.github.io). Two layouts are read, chosen per record by its fields:

* **original** (the distractor / full-wiki dev and train files; a JSON list, or JSONL)::

    {"_id", "question", "answer", "supporting_facts": [[title, sent_id], ...],
     "context": [[title, [sentence, ...]], ...], "type": "bridge"|"comparison", "level"}

  A paragraph's text is its sentences joined as they are (HotpotQA's sentences keep their
  leading spaces); the gold paragraphs are the titles named in ``supporting_facts``.
* **processed** (IRCoT's JSONL, e.g. ``shared/data/hotpotqa_dev500_ircot``)::

    {"question_id", "question_text", "answers_objects": [{"spans": [...]}, ...],
     "contexts": [{"id", "title", "paragraph_text", "is_supporting"}, ...]}

Every question must have exactly two gold paragraphs with different titles (multi-hop retrieval
needs the pair); ``require_gold_pair=False`` keeps the other questions too, with an empty ``gold``,
for uses that need no pair (the extractive reader of :mod:`reprlab.qa.squad` reads answers from
:class:`HotpotData`). A malformed record is a :class:`~reprlab.errors.DataFormatError` naming the
file and the line the record starts on.

**The open corpus** is the union of all questions' paragraphs (gold and distractors), deduplicated
by (title, text), in file order. A passage's id is its title; should the same title come with a
different text, the n-th distinct text gets the id ``"<title>#<n>"``. The 500 IRCoT questions pool
4,858 paragraphs.

**Hop order** (MDR trains hop 1 on one gold paragraph and hop 2 on the other). Bridge questions are
ordered: hop 1 is the paragraph that mentions the other's title (the bridge entity), hop 2 the
bridge entity's own paragraph. Comparison questions are unordered, and training draws an order per
step, as MDR does. The processed layout has no ``type``; :func:`derive_hops` derives it. "A names
B" below means that A contains B's title (lower-cased whole words, a trailing ``" (...)"``
disambiguation of the title dropped):

* type: **comparison** when the answer is ``yes``/``no``, or when the question names both titles
  and neither gold paragraph names the other; otherwise **bridge**;
* order of a bridge question: when exactly one gold paragraph names the other, it is hop 1;
  otherwise, when the question names both titles, unordered; otherwise, when exactly one gold
  paragraph contains an answer, it is hop 2; otherwise unordered.

In the original layout the ``type`` field is kept and only the order is derived. On the 500 IRCoT
questions this gives 250 comparison and 250 bridge questions, of which 231 are ordered.

**Train/eval split**: the one rule of :mod:`reprlab.text.splits`, keyed by the question id (eval
fraction :data:`~reprlab.text.splits.EVAL_FRACTION` = 0.3: 344 train / 156 eval of the 500 IRCoT
questions). The reader's HotpotQA examples are grouped by question id under the same rule, so its
eval side at fraction 0.25 lies inside this eval side.

>>> data = load_hotpotqa("hotpotqa_dev500_ircot/dev_subsampled.jsonl")   # doctest: +SKIP
>>> len(data.questions), len(data.corpus)                                 # doctest: +SKIP
(500, 4858)
>>> from reprlab.text.splits import EVAL_FRACTION, split
>>> parts = split(data.questions, key=lambda q: q.id, eval_fraction=EVAL_FRACTION)   # doctest: +SKIP
>>> len(parts.train), len(parts.eval)                                                # doctest: +SKIP
(344, 156)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from reprlab.errors import DataFormatError
from reprlab.io import read_utf8
# the split rule's names, for the modules that still import them from here (reprlab.retrieval.mdr)
from reprlab.text.splits import EVAL_FRACTION, hash_fraction  # noqa: F401

QUESTION_TYPES = ("bridge", "comparison")
ORIGINAL_FIELDS = '{"_id", "question", "answer", "supporting_facts", "context", "type"}'
PROCESSED_FIELDS = '{"question_id", "question_text", "answers_objects", "contexts"}'


@dataclass
class HotpotQuestion:
    """One question with its two gold passages (corpus ids).

    ``gold`` is in hop order (hop 1, hop 2) when ``ordered``; otherwise its order carries no meaning
    (empty for a question without a gold pair, read with ``require_gold_pair=False``).
    ``paragraphs`` are the ids of all the paragraphs the record came with (gold and distractors), in
    the record's order; ``supporting`` the positions in ``paragraphs`` of its supporting (gold) ones.
    """

    id: str
    question: str
    answers: list[str]
    gold: tuple[str, str] | tuple[()]
    type: str
    ordered: bool
    paragraphs: list[str] = field(default_factory=list)
    level: str | None = None
    supporting: list[int] = field(default_factory=list)


@dataclass
class HotpotData:
    questions: list[HotpotQuestion]
    corpus: dict[str, dict[str, str]]  # {id: {"title", "text"}}, the union of all paragraphs
    path: str = ""

    def subset(self, ids: Sequence[str]) -> list[HotpotQuestion]:
        keep = set(ids)
        return [q for q in self.questions if q.id in keep]


# ------------------------------------------------------------------------------------------------
# hop order


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def _bare_title(title: str) -> str:
    return re.sub(r"\s*\([^()]*\)\s*$", "", title).strip() or title


def mentions(text: str, title: str) -> bool:
    """Whether ``text`` names ``title`` (lower-cased whole words; a trailing "(...)" of the title dropped)."""
    name = _words(_bare_title(title))
    return name.strip() != "" and name in _words(text)


def _has_answer(text: str, answers: Sequence[str]) -> bool:
    return any(a.strip() and _words(a) in _words(text) for a in answers)


def derive_hops(
    question: str, answers: Sequence[str], first: tuple[str, str], second: tuple[str, str], qtype: str | None = None
) -> tuple[str, bool, bool]:
    """(type, ordered, swap) for gold paragraphs ``first`` and ``second``, each ``(title, text)``.

    ``swap`` is True when hop 1 is ``second``. ``qtype`` is the record's own type (original layout),
    or None to derive it (rules in the module docstring).
    """
    a_names_b, b_names_a = mentions(first[1], second[0]), mentions(second[1], first[0])
    both_asked = mentions(question, first[0]) and mentions(question, second[0])
    if qtype is None:
        yes_no = any(a.strip().lower() in ("yes", "no") for a in answers)
        qtype = "comparison" if yes_no or (both_asked and not (a_names_b or b_names_a)) else "bridge"
    if qtype == "comparison":
        return "comparison", False, False
    if a_names_b != b_names_a:
        return "bridge", True, b_names_a
    if both_asked:
        return "bridge", False, False
    a_ans, b_ans = _has_answer(first[1], answers), _has_answer(second[1], answers)
    if a_ans != b_ans:
        return "bridge", True, a_ans
    return "bridge", False, False


# ------------------------------------------------------------------------------------------------
# readers


class _Corpus:
    """Paragraph ids by (title, text), deduplicated in order of first appearance."""

    def __init__(self):
        self.docs: dict[str, dict[str, str]] = {}
        self._ids: dict[tuple[str, str], str] = {}
        self._texts_per_title: dict[str, int] = {}

    def add(self, title: str, text: str) -> str:
        key = (title, text)
        if key in self._ids:
            return self._ids[key]
        n = self._texts_per_title.get(title, 0) + 1
        self._texts_per_title[title] = n
        doc_id = title if n == 1 else f"{title}#{n}"
        while doc_id in self.docs:  # a real title that looks like "<title>#<n>"
            n += 1
            doc_id = f"{title}#{n}"
        self._ids[key] = doc_id
        self.docs[doc_id] = {"title": title, "text": text}
        return doc_id


def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed record) for a JSON list file or a JSONL file."""
    text = read_utf8(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError("the file is empty; give a HotpotQA JSON list or a JSONL file", str(path))
    if stripped[0] == "[":
        yield from _array_records(path, text)
        return
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), line_no) from exc


def _array_records(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """The elements of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        if pos >= len(text):
            raise DataFormatError("the JSON list is not closed (missing ']')", str(path), line_at(len(text)))
        start_line = line_at(pos)
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"not valid JSON ({exc.msg})", str(path), exc.lineno) from exc
        yield start_line, record
        pos = skip(end)
        if pos >= len(text):
            raise DataFormatError("the JSON list is not closed (missing ']')", str(path), line_at(len(text)))
        if text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataFormatError("expected ',' or ']' after a record of the JSON list", str(path), line_at(pos))


def _need(record: dict, key: str, kind, where) -> object:
    path, line = where
    if key not in record:
        raise DataFormatError(f"missing field {key!r}", path, line)
    value = record[key]
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"field {key!r} must be {name}, got {type(value).__name__}", path, line)
    return value


class _Parsed(NamedTuple):
    qid: str
    question: str
    answers: list[str]
    paragraphs: list[str]  # corpus ids, the record's order
    gold: list[tuple[str, str, str]]  # (corpus id, title, text) of the gold paragraphs
    supporting: list[int]  # their positions in ``paragraphs``
    qtype: str | None
    level: str | None


def _processed(record: dict, where, corpus: _Corpus) -> _Parsed:
    path, line = where
    qid = str(_need(record, "question_id", (str, int), where))
    question = _need(record, "question_text", str, where)
    answers = []
    for obj in _need(record, "answers_objects", list, where):
        if not isinstance(obj, dict) or not isinstance(obj.get("spans", []), list):
            raise DataFormatError("answers_objects must be a list of {\"spans\": [...]} objects", path, line)
        answers += [s for s in obj.get("spans", []) if isinstance(s, str) and s.strip()]
    paragraphs, gold, positions = [], [], []
    for i, ctx in enumerate(_need(record, "contexts", list, where)):
        if not isinstance(ctx, dict):
            raise DataFormatError(f"contexts[{i}] must be an object", path, line)
        title, text = ctx.get("title"), ctx.get("paragraph_text")
        if not isinstance(title, str) or not isinstance(text, str):
            raise DataFormatError(f"contexts[{i}] needs string fields 'title' and 'paragraph_text'", path, line)
        supporting = ctx.get("is_supporting", False)
        if not isinstance(supporting, bool):
            raise DataFormatError(f"contexts[{i}].is_supporting must be true or false", path, line)
        doc_id = corpus.add(title, text)
        paragraphs.append(doc_id)
        if supporting:
            gold.append((doc_id, title, text))
            positions.append(i)
    return _Parsed(qid, question, answers, paragraphs, gold, positions, None, None)


def _original(record: dict, where, corpus: _Corpus) -> _Parsed:
    path, line = where
    qid = str(_need(record, "_id", (str, int), where))
    question = _need(record, "question", str, where)
    answer = _need(record, "answer", str, where)
    qtype = _need(record, "type", str, where)
    if qtype not in QUESTION_TYPES:
        raise DataFormatError(f"type must be one of {QUESTION_TYPES}, got {qtype!r}", path, line)
    facts = _need(record, "supporting_facts", list, where)
    support = []
    for fact in facts:
        if not isinstance(fact, list) or len(fact) != 2 or not isinstance(fact[0], str):
            raise DataFormatError("supporting_facts must be [title, sentence index] pairs", path, line)
        if fact[0] not in support:
            support.append(fact[0])
    paragraphs, by_title = [], {}
    for i, item in enumerate(_need(record, "context", list, where)):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], list) or not all(isinstance(s, str) for s in item[1])):
            raise DataFormatError(f"context[{i}] must be [title, [sentence, ...]]", path, line)
        title, text = item[0], "".join(item[1]).strip()
        doc_id = corpus.add(title, text)
        paragraphs.append(doc_id)
        by_title[title] = (i, doc_id, title, text)
    missing = [t for t in support if t not in by_title]
    if missing:
        raise DataFormatError(f"supporting_facts name {missing[0]!r}, which is not in the context", path, line)
    gold = [by_title[t][1:] for t in support]
    positions = sorted(by_title[t][0] for t in support)
    return _Parsed(qid, question, [answer], paragraphs, gold, positions, qtype, record.get("level"))


def _question(parsed: _Parsed, where, require_gold_pair: bool) -> HotpotQuestion:
    """The question of a parsed record, its gold pair in hop order (see the module docstring)."""
    qid, question, answers, paragraphs, gold, supporting, qtype, level = parsed
    titles = {g[1] for g in gold}
    if len(gold) != 2 or len(titles) != 2:
        if not require_gold_pair:
            return HotpotQuestion(qid, question, answers, (), qtype or "", False, paragraphs, level, supporting)
        raise DataFormatError(f"question {qid}: expected exactly 2 gold (supporting) paragraphs with "
                              f"different titles, found {len(gold)} ({len(titles)} titles)", *where)
    (id_a, *a), (id_b, *b) = gold
    kind, ordered, swap = derive_hops(question, answers, tuple(a), tuple(b), qtype)
    pair = (id_b, id_a) if swap else (id_a, id_b)
    return HotpotQuestion(qid, question, answers, pair, kind, ordered, paragraphs, level, supporting)


def load_hotpotqa(path: str | Path, require_gold_pair: bool = True) -> HotpotData:
    """Questions and the open corpus of a HotpotQA file in the original or the processed layout.

    ``require_gold_pair=False`` keeps questions without exactly two gold paragraphs of different
    titles (``gold`` empty, ``ordered`` False, ``type`` the record's or ""), instead of refusing the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file; give a HotpotQA .json (original layout) or IRCoT .jsonl file",
                              str(path))
    corpus = _Corpus()
    questions: list[HotpotQuestion] = []
    seen: dict[str, int] = {}
    for line_no, record in _records(path):
        where = (str(path), line_no)
        if not isinstance(record, dict):
            raise DataFormatError(f"a record must be a JSON object, got {type(record).__name__}", *where)
        if "question_text" in record or "contexts" in record:
            parsed = _processed(record, where, corpus)
        elif "question" in record or "context" in record:
            parsed = _original(record, where, corpus)
        else:
            raise DataFormatError(f"not a HotpotQA record: expected the original layout {ORIGINAL_FIELDS} "
                                  f"or the processed layout {PROCESSED_FIELDS}", *where)
        if not parsed.question.strip():
            raise DataFormatError(f"question {parsed.qid}: the question text is empty", *where)
        if parsed.qid in seen:
            raise DataFormatError(f"duplicate question id {parsed.qid!r} (first on line {seen[parsed.qid]})", *where)
        seen[parsed.qid] = line_no
        questions.append(_question(parsed, where, require_gold_pair))
    if not questions:
        raise DataFormatError("no questions in the file", str(path))
    return HotpotData(questions, corpus.docs, str(path))
