"""SQuAD v1.1 metrics (official-script semantics), readers with validation, HotpotQA examples derived
from the one HotpotQA reader, the split rule on QA examples."""

import json
import logging

import pytest

from reprlab.errors import ConfigError, DataFormatError
from reprlab.qa.squad import (
    QAExample,
    evaluate_examples,
    exact_match_score,
    f1_score,
    hotpotqa_examples,
    load_hotpotqa_answers,
    load_qa_file,
    load_squad,
    max_over_ground_truths,
    normalize_answer,
    squad_metrics,
)
from reprlab.text.hotpotqa import load_hotpotqa
from reprlab.text.splits import hash_fraction, side, split


def split_examples(examples, eval_fraction):
    """(train, eval) of QA examples by the one split rule on their group."""
    parts = split(examples, key=lambda ex: ex.group, eval_fraction=eval_fraction)
    return parts.train, parts.eval

# (prediction, gold answers, EM, F1) worked out by hand with the rules of the official v1.1 script:
# lower-case -> drop string.punctuation -> replace \b(a|an|the)\b by a space -> collapse whitespace.
CASES = [
    ("The Denver Broncos", ["Denver Broncos"], 1.0, 1.0),  # article dropped
    ("Denver Broncos.", ["denver broncos"], 1.0, 1.0),  # case and punctuation
    ("  Denver \t  Broncos\n", ["Denver Broncos"], 1.0, 1.0),  # whitespace collapsed
    ("Broncos", ["Denver Broncos"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # P=1, R=1/2
    ("Carolina Panthers", ["Denver Broncos", "the Carolina Panthers team"], 0.0, 0.8),  # max over golds: P=1, R=2/3
    ("Denver", ["Denver", "Denver Broncos"], 1.0, 1.0),  # the best gold wins for each metric
    ("new york new", ["New York"], 0.0, 0.8),  # token bags: P=2/3, R=1
    ("U.S.", ["US"], 1.0, 1.0),  # punctuation inside a token is removed, tokens join
    ("the", ["a"], 1.0, 0.0),  # both normalise to '': EM 1 but F1 0 in v1.1 (v2.0 would give 1)
    ("Broncos\u2013", ["Broncos"], 0.0, 0.0),  # non-ASCII punctuation is kept
    ("Anne", ["Ann"], 0.0, 0.0),  # 'an' inside a word is not an article
    ("the-end", ["end"], 0.0, 0.0),  # punctuation goes before articles: 'theend'
    ("An apple", ["apple, the"], 1.0, 1.0),
]


@pytest.mark.parametrize("prediction,golds,em,f1", CASES)
def test_metrics_equal_the_official_definition(prediction, golds, em, f1):
    assert max_over_ground_truths(exact_match_score, prediction, golds) == em
    assert max_over_ground_truths(f1_score, prediction, golds) == pytest.approx(f1)


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("a an the") == ""


def test_totals_are_percentages_and_missing_predictions_count_zero():
    gold = {"q1": ["Denver Broncos"], "q2": ["Broncos"], "q3": ["1998"], "q4": ["x"]}
    predictions = {"q1": "the Denver Broncos", "q2": "Denver Broncos", "q3": "in 1998"}  # q4 unanswered
    m = squad_metrics(gold, predictions)
    assert m["exact_match"] == pytest.approx(100 * 1 / 4)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3 + 0) / 4)
    examples = [QAExample(q, "?", "ctx", a, [(0, 1)], group="g") for q, a in gold.items()]
    assert evaluate_examples(examples, predictions) == m
    with pytest.raises(ConfigError):
        squad_metrics({}, {})


def _squad_file(tmp_path, qas, context="Denver Broncos won Super Bowl 50."):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def test_load_squad_and_bad_inputs(tmp_path):
    ok = [{"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0},
                                                           {"text": "Broncos", "answer_start": 7}]}]
    (ex,) = load_squad(_squad_file(tmp_path, ok))
    assert ex.answers == ["Denver Broncos", "Broncos"] and ex.spans == [(0, 14), (7, 14)] and ex.group == "T"
    assert load_qa_file(tmp_path / "s.json")[0].id == "a"

    bad_start = [{"id": "b", "question": "Who?", "answers": [{"text": "Broncos", "answer_start": 3}]}]
    with pytest.raises(DataFormatError, match=r"s.json.*qas\[0\].*question b.*answer_start 3"):
        load_squad(_squad_file(tmp_path, bad_start))
    no_question = [{"id": "c", "answers": []}]
    with pytest.raises(DataFormatError, match=r"qas\[0\].*missing field 'question'"):
        load_squad(_squad_file(tmp_path, no_question))
    dup = ok + ok
    with pytest.raises(DataFormatError, match="duplicate question id 'a'"):
        load_squad(_squad_file(tmp_path, dup))
    (tmp_path / "broken.json").write_text("{\n  \"data\": [\n")
    with pytest.raises(DataFormatError, match="broken.json"):
        load_squad(tmp_path / "broken.json")
    with pytest.raises(DataFormatError, match="unknown QA file type"):
        load_qa_file(tmp_path / "x.txt")


def test_squad2_unanswerable_questions_are_read_and_scored_by_the_official_rule(tmp_path):
    qas = [{"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 0}]},
           {"id": "n", "question": "Who lost?", "answers": [], "is_impossible": True,
            "plausible_answers": [{"text": "Broncos", "answer_start": 7}]}]
    a, n = load_squad(_squad_file(tmp_path, qas))
    assert a.answers == ["Denver Broncos"] and n.answers == [] and n.spans == [] and n.context == a.context
    m = squad_metrics({"a": a.answers, "n": n.answers}, {"a": "Denver Broncos", "n": ""})
    assert m == {"exact_match": 100.0, "f1": 100.0}
    m = squad_metrics({"a": a.answers, "n": n.answers}, {"a": "Denver Broncos", "n": "the Broncos"})
    assert m == {"exact_match": 50.0, "f1": 50.0}
    assert squad_metrics({"n": []}, {"n": "The"}) == {"exact_match": 100.0, "f1": 100.0}  # normalised to nothing
    for bad, match in (([{**qas[1], "is_impossible": "yes"}], r"qas\[0\].is_impossible: expected true or false"),
                       ([{**qas[0], "is_impossible": True}], "is_impossible is true but it has 1 answers"),
                       ([{**qas[1], "is_impossible": False}], r"question n\): no answers.*is_impossible")):
        with pytest.raises(DataFormatError, match=match):
            load_squad(_squad_file(tmp_path, bad))


def test_open_qa_keeps_the_paragraph_of_an_unanswerable_question_but_not_the_question(tmp_path):
    from reprlab.qa.open_qa import load_open_qa

    path = tmp_path / "two.json"
    path.write_text(json.dumps({"version": "2.0", "data": [{"title": "T", "paragraphs": [
        {"context": "Denver Broncos won.", "qas": [{"id": "a", "question": "Who won?",
                                                   "answers": [{"text": "Denver Broncos", "answer_start": 0}]}]},
        {"context": "It rained.", "qas": [{"id": "n", "question": "Who lost?", "answers": [],
                                          "is_impossible": True}]}]}]}))
    data = load_open_qa(path)
    assert [q.id for q in data.questions] == ["a"] and data.questions[0].gold == ["T#0"]
    assert sorted(data.corpus) == ["T#0", "T#1"]


def hotpot_record(qid, answer, paragraphs):
    """One IRCoT HotpotQA line: ``paragraphs`` are (text, is_supporting) pairs titled t0, t1, ..."""
    return json.dumps({"question_id": qid, "question_text": f"q {qid}?", "answers_objects": [{"spans": [answer]}],
                       "contexts": [{"id": str(i), "title": f"t{i}", "paragraph_text": t, "is_supporting": s}
                                    for i, (t, s) in enumerate(paragraphs)]})


def test_hotpotqa_answers_are_found_in_supporting_paragraphs(tmp_path, caplog):
    lines = [
        hotpot_record("1", "Paris", [("Paris is big.", False), ("He moved to paris in 1900.", True),
                              ("Paris, again.", True)]),
        hotpot_record("2", "no", [("There is no answer here.", True)]),  # yes/no: skipped
        hotpot_record("3", "Rome", [("Romeo lived in Verona.", True)]),  # only inside a word: not found
        hotpot_record("4", "Oslo", [("Oslo is cold.", False)]),  # no supporting paragraph: skipped
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n")
    skipped = {}
    with caplog.at_level(logging.INFO, logger="reprlab"):
        found = load_hotpotqa_answers(path, skipped=skipped)
    assert [e.id for e in found] == ["1:1", "1:2"]
    assert found[0].spans == [(12, 17)] and found[0].context[12:17] == "paris"  # case-insensitive fallback
    assert found[1].spans == [(0, 5)] and {e.group for e in found} == {"1"}
    assert skipped == {"yes/no": 1, "no supporting paragraph": 1, "not found": 1}
    (record,) = [r for r in caplog.records if "h.jsonl" in r.getMessage()]
    assert record.levelno == logging.WARNING and "3 questions left out" in record.getMessage()
    assert "1 without a supporting paragraph" in record.getMessage()
    # the one HotpotQA reader validates: errors name the file and line
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataFormatError, match=r"h.jsonl:2"):
        load_hotpotqa_answers(path)
    path.write_text(json.dumps({"question_id": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"h.jsonl:1: not a HotpotQA record"):
        load_hotpotqa_answers(path)


def test_hotpotqa_all_paragraphs_context(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join([
        # the answer is in a distractor first: the span must point into the supporting paragraph
        hotpot_record("1", "Paris", [("Paris is big.", False), ("He moved to Paris.", True), ("Rome.", False)]),
        hotpot_record("2", "Oslo", [("Oslo is cold.", False), ("Nothing.", True)]),  # only in a distractor: used
        hotpot_record("3", "Rome", [("Romeo lived in Verona.", True)]),  # nowhere as a whole word: left out
    ]) + "\n")
    found = load_hotpotqa_answers(path, contexts="all")
    assert [e.id for e in found] == ["1", "2"] and [e.group for e in found] == ["1", "2"]
    first = found[0]
    assert first.context == "t0: Paris is big.\nt1: He moved to Paris.\nt2: Rome."
    a, b = first.spans[0]
    assert first.context[a:b] == "Paris" and a > first.context.index("t1:")
    assert found[1].context[slice(*found[1].spans[0])] == "Oslo"
    assert load_qa_file(path, hotpotqa_contexts="all") == found
    with pytest.raises(ConfigError, match="contexts"):
        load_hotpotqa_answers(path, contexts="some")


def test_hotpotqa_examples_come_from_the_one_reader(tmp_path):
    """The original layout (a JSON list) gives the same examples as its IRCoT form: one parser, one derivation."""
    original = [{"_id": "a1", "question": "Where did Ann move?", "answer": "Paris", "type": "bridge",
                 "supporting_facts": [["Ann", 0], ["Move", 0]],
                 "context": [["Other", ["Paris is big."]], ["Ann", ["Ann is a painter."]],
                             ["Move", ["She moved to ", "Paris."]]]}]
    (tmp_path / "h.json").write_text(json.dumps(original))
    (tmp_path / "h.jsonl").write_text(json.dumps({
        "question_id": "a1", "question_text": "Where did Ann move?", "answers_objects": [{"spans": ["Paris"]}],
        "contexts": [{"title": t, "paragraph_text": x, "is_supporting": sup} for t, x, sup in (
            ("Other", "Paris is big.", False), ("Ann", "Ann is a painter.", True),
            ("Move", "She moved to Paris.", True))]}) + "\n")
    for contexts in ("supporting", "all"):
        a = hotpotqa_examples(load_hotpotqa(tmp_path / "h.json"), contexts).examples
        b = hotpotqa_examples(load_hotpotqa(tmp_path / "h.jsonl"), contexts).examples
        assert [(e.id, e.spans, e.context[slice(*e.spans[0])]) for e in a] == \
               [(e.id, e.spans, e.context[slice(*e.spans[0])]) for e in b]
    (ex,) = hotpotqa_examples(load_hotpotqa(tmp_path / "h.json"), "supporting").examples
    assert ex.id == "a1:2" and ex.title == "Move" and ex.context == "She moved to Paris."


def test_real_hotpotqa_all_paragraphs_match_the_long_reader(shared_data):
    from reprlab.qa.long_reader import load_long_hotpotqa

    path = shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl")
    examples = load_hotpotqa_answers(path, contexts="all")
    long = load_long_hotpotqa(path, eval_fraction=0.3)
    train, held = split_examples(examples, 0.3)
    assert train == long.train and held == long.eval  # one builder, one split rule
    assert sum(len(e.context) for e in examples) / len(examples) > 4000  # ~10 paragraphs each


def test_split_rule_is_the_documented_hash():
    # sha256("abc") starts with ba7816bf; 0xba7816bf / 2**32 = 0.72839...
    assert hash_fraction("abc") == pytest.approx(0xBA7816BF / 2**32)
    assert side("abc", 0.7) == "train" and side("abc", 0.75) == "eval"
    assert side("abc", 0.0) == "train" and side("abc", 1.0) == "eval"
    with pytest.raises(ConfigError):
        side("abc", 1.5)
    examples = [QAExample(f"q{i}", "?", "ctx", ["a"], [(0, 1)], group=f"g{i % 7}") for i in range(50)]
    train, held = split_examples(examples, 0.5)
    assert {e.group for e in held} == {f"g{k}" for k in range(7) if hash_fraction(f"g{k}") < 0.5}
    assert not {e.group for e in train} & {e.group for e in held}


def test_real_squad_split_keeps_articles_apart(shared_data):
    examples = load_squad(shared_data("squad_v1.1_dev_xquad_en", "xquad.en.json"))
    assert len(examples) == 1190 and len({e.group for e in examples}) == 48
    train, held = split_examples(examples, 0.25)
    assert len(train) + len(held) == 1190 and 150 < len(held) < 450
    assert not {e.group for e in train} & {e.group for e in held}
    assert not {e.context for e in train} & {e.context for e in held}
    assert split_examples(examples, 0.25)[1] == held  # no seed: the same split every time


def test_real_hotpotqa_answers(shared_data):
    skipped = {}
    examples = load_hotpotqa_answers(shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl"), skipped=skipped)
    # the counts of the former second parser of the file (before the one reader): 495 examples of 419 questions
    assert (len(examples), len({e.group for e in examples})) == (495, 419)
    assert skipped == {"yes/no": 80, "no supporting paragraph": 0, "not found": 1}
    assert examples[0].id == "5a8c7595554299585d9e36b6:1" and examples[0].title == "Shirley Temple"
    assert examples[0].spans == [(315, 332)] and examples[0].answers == ["Chief of Protocol"]
    assert len(load_hotpotqa_answers(shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl"), "all")) == 420
    for ex in examples:
        a, b = ex.spans[0]
        assert normalize_answer(ex.context[a:b]) in {normalize_answer(x) for x in ex.answers}
