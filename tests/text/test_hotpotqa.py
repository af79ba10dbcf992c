"""HotpotQA reader: both layouts, the open corpus, hop order, the split rule on questions, malformed records."""

import json

import pytest

from reprlab.errors import DataFormatError
from reprlab.text.hotpotqa import derive_hops, load_hotpotqa, mentions
from reprlab.text.splits import EVAL_FRACTION, hash_fraction, split


def processed(qid, question, answer, contexts):
    return {"question_id": qid, "question_text": question, "answers_objects": [{"spans": [answer]}],
            "contexts": [{"id": str(i), "title": t, "paragraph_text": x, "is_supporting": s}
                         for i, (t, x, s) in enumerate(contexts)]}


KISS = ("Kiss and Tell (1945 film)", "Kiss and Tell is a comedy film starring Shirley Temple as Corliss Archer.")
TEMPLE = ("Shirley Temple", "Shirley Temple was an actress who later served as Chief of Protocol.")
WALDO = ("Janet Waldo", "Janet Waldo voiced Corliss Archer on the radio.")
WOOD = ("Ed Wood", "Ed Wood was an American filmmaker.")
DERRICKSON = ("Scott Derrickson", "Scott Derrickson is an American director.")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def two_questions():
    return [
        processed("q1", "What position was held by the woman who starred in Kiss and Tell?", "Chief of Protocol",
                  [(*WALDO, False), (*TEMPLE, True), (*KISS, True)]),
        processed("q2", "Were Scott Derrickson and Ed Wood of the same nationality?", "yes",
                  [(*WOOD, True), (*WALDO, False), (*DERRICKSON, True)]),
    ]


def test_processed_layout_corpus_gold_and_hop_order(tmp_path):
    data = load_hotpotqa(write_jsonl(tmp_path / "h.jsonl", two_questions()))
    # the union of all paragraphs, deduplicated (Janet Waldo appears twice), ids = titles, file order
    assert list(data.corpus) == ["Janet Waldo", "Shirley Temple", "Kiss and Tell (1945 film)", "Ed Wood",
                                 "Scott Derrickson"]
    assert data.corpus["Ed Wood"] == {"title": "Ed Wood", "text": WOOD[1]}
    q1, q2 = data.questions
    # bridge: the film's paragraph names the actress, so it is hop 1 and her paragraph hop 2
    assert (q1.type, q1.ordered, q1.gold) == ("bridge", True, ("Kiss and Tell (1945 film)", "Shirley Temple"))
    assert q1.answers == ["Chief of Protocol"] and q1.paragraphs == ["Janet Waldo", "Shirley Temple",
                                                                   "Kiss and Tell (1945 film)"]
    assert (q2.type, q2.ordered, set(q2.gold)) == ("comparison", False, {"Ed Wood", "Scott Derrickson"})


def test_original_layout_json_list(tmp_path):
    records = [{
        "_id": "a1", "question": "What position was held by the woman who starred in Kiss and Tell?",
        "answer": "Chief of Protocol", "type": "bridge", "level": "hard",
        "supporting_facts": [["Shirley Temple", 0], ["Kiss and Tell (1945 film)", 0], ["Shirley Temple", 1]],
        "context": [["Janet Waldo", [WALDO[1]]], ["Shirley Temple", ["Shirley Temple was an actress", " who later "
                    "served as Chief of Protocol."]], ["Kiss and Tell (1945 film)", [KISS[1]]]],
    }]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(records, indent=1))
    data = load_hotpotqa(path)
    (q,) = data.questions
    assert q.gold == ("Kiss and Tell (1945 film)", "Shirley Temple") and q.ordered and q.level == "hard"
    assert data.corpus["Shirley Temple"]["text"] == TEMPLE[1]  # sentences joined as they are


def test_same_title_with_another_text_gets_a_suffixed_id(tmp_path):
    other = processed("q3", "Who voiced Corliss Archer?", "Janet Waldo",
                      [("Janet Waldo", "Janet Waldo was a voice actress.", True), (*KISS, True)])
    data = load_hotpotqa(write_jsonl(tmp_path / "h.jsonl", two_questions() + [other]))
    assert data.corpus["Janet Waldo#2"] == {"title": "Janet Waldo", "text": "Janet Waldo was a voice actress."}
    assert "Janet Waldo#2" in data.questions[2].gold


@pytest.mark.parametrize("breakage, message", [
    (lambda r: "{not json", "not valid JSON"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "question_text"}), "question_text"),
    (lambda r: json.dumps({**r, "contexts": r["contexts"][:2]}), "exactly 2 gold"),
    (lambda r: json.dumps({**r, "contexts": [{**r["contexts"][0], "is_supporting": "yes"}] + r["contexts"][1:]}),
     "is_supporting"),
    (lambda r: json.dumps({**r, "question_id": "q1"}), "duplicate question id"),
    (lambda r: json.dumps({"foo": 1}), "not a HotpotQA record"),
])
def test_malformed_jsonl_records_name_the_line(tmp_path, breakage, message):
    good = two_questions()
    third = processed("q3", "What position was held by the star of Kiss and Tell?", "Chief of Protocol",
                      [(*WALDO, False), (*TEMPLE, True), (*KISS, True)])
    lines = [json.dumps(good[0]), "", json.dumps(good[1]), breakage(third)]  # the bad record is on line 4
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=message) as err:
        load_hotpotqa(path)
    assert err.value.line == 4 and "bad.jsonl:4:" in str(err.value)


def test_malformed_record_in_a_json_list_names_its_first_line(tmp_path):
    good = {"_id": "a1", "question": "Q?", "answer": "x", "type": "bridge",
            "supporting_facts": [["A", 0], ["B", 0]], "context": [["A", ["a names B."]], ["B", ["b x."]]]}
    bad = {**good, "_id": "a2", "supporting_facts": [["A", 0], ["Z", 0]]}
    text = json.dumps([good, bad], indent=1)
    (tmp_path / "h.json").write_text(text)
    bad_line = text[: text.index('"a2"')].count("\n")  # the line of the '{' that opens the second record
    with pytest.raises(DataFormatError, match="'Z', which is not in the context") as err:
        load_hotpotqa(tmp_path / "h.json")
    assert err.value.line == bad_line
    (tmp_path / "t.json").write_text(json.dumps([good, {**good, "_id": "a3", "type": "other"}], indent=1))
    with pytest.raises(DataFormatError, match="type must be one of"):
        load_hotpotqa(tmp_path / "t.json")
    (tmp_path / "u.json").write_text(json.dumps([good, {**good, "_id": "a4"}], indent=1)[:-2])
    with pytest.raises(DataFormatError, match="not closed|not valid JSON"):
        load_hotpotqa(tmp_path / "u.json")
    with pytest.raises(DataFormatError, match="no such file"):
        load_hotpotqa(tmp_path / "missing.json")


def test_hop_order_rules():
    a, b = ("Film X", "Film X stars Jane Roe."), ("Jane Roe (actress)", "Jane Roe is an actress.")
    assert mentions(a[1], b[0]) and not mentions(b[1], a[0])  # "(actress)" dropped, whole words only
    assert not mentions("Jane Roes", "Jane Roe")
    assert derive_hops("Which award did the star of Film X win?", ["Oscar"], b, a) == ("bridge", True, True)
    assert derive_hops("Is Film X older than Jane Roe?", ["no"], a, b) == ("comparison", False, False)
    c, d = ("Ann Lee", "Ann Lee is a painter."), ("Bob Ray", "Bob Ray is a painter born in Oslo.")
    assert derive_hops("Who is older, Ann Lee or Bob Ray?", ["Bob Ray"], c, d) == ("comparison", False, False)
    # neither names the other and the question names one: the answer's paragraph is hop 2
    assert derive_hops("Where was the painter Ann Lee's teacher born?", ["Oslo"], d, c) == ("bridge", True, True)
    assert derive_hops("Q?", ["Oslo"], c, d, qtype="comparison") == ("comparison", False, False)
    assert derive_hops("Who?", ["nothing"], c, d, qtype="bridge") == ("bridge", False, False)


def test_questions_without_a_gold_pair_are_kept_only_when_asked(tmp_path):
    records = two_questions() + [processed("q3", "Who voiced Corliss Archer?", "Janet Waldo",
                                           [(*WALDO, True), (*KISS, False)])]
    path = write_jsonl(tmp_path / "h.jsonl", records)
    with pytest.raises(DataFormatError, match="exactly 2 gold"):
        load_hotpotqa(path)
    q1, q2, q3 = load_hotpotqa(path, require_gold_pair=False).questions
    assert q1.gold == ("Kiss and Tell (1945 film)", "Shirley Temple") and q1.supporting == [1, 2]
    assert q3.gold == () and not q3.ordered and q3.supporting == [0] and q3.paragraphs == ["Janet Waldo", KISS[0]]


def test_split_rule_on_question_ids(tmp_path):
    questions = load_hotpotqa(write_jsonl(tmp_path / "h.jsonl", two_questions())).questions
    for f in (0.0, 0.3, 1.0):
        held = split(questions, key=lambda q: q.id, eval_fraction=f).eval
        assert [q.id for q in held] == [q.id for q in questions if hash_fraction(q.id) < f]


def test_real_ircot_file(shared_data):
    data = load_hotpotqa(shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl"))
    assert len(data.questions) == 500 and len(data.corpus) == 4858
    parts = split(data.questions, key=lambda q: q.id, eval_fraction=EVAL_FRACTION)
    train, held = parts.train, parts.eval
    assert (len(train), len(held)) == (344, 156)
    assert all(len(q.supporting) == 2 and {q.paragraphs[i] for i in q.supporting} == set(q.gold)
               for q in data.questions)
    assert not {q.id for q in train} & {q.id for q in held}
    assert all(g in data.corpus for q in data.questions for g in q.gold)
    assert sum(q.type == "comparison" for q in data.questions) == 250
