"""Metrics: pytrec_eval measures against hand-computed values, judged-query and tie semantics."""

import math

import numpy as np
import pytest

from reprlab.errors import ConfigError, ReprlabError
from reprlab.retrieval.metrics import evaluate, ranked, to_run, truncate_run

QRELS = {
    "q1": {"d1": 3, "d2": 1, "d3": 0, "d4": 2},  # graded; d4 never retrieved
    "q2": {"d5": 1},
    "q3": {"d6": 1},  # judged but missing from the run: counts 0
    "q4": {"d7": 0},  # no relevant document: not a judged query
}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d9": 0.7, "d2": 0.6},  # grades by rank: 0, 3, (unjudged), 1
    "q2": {"d8": 0.5, "d9": 0.4, "d5": 0.3},
    "q4": {"d7": 1.0},
    "q5": {"d1": 1.0},  # not in the qrels: ignored
}


def dcg(gains):
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


# by hand, per judged query (q1, q2, q3)
NDCG10 = [dcg([0, 3, 0, 1]) / dcg([3, 2, 1, 0]), dcg([0, 0, 1]) / dcg([1]), 0.0]
NDCG2 = [dcg([0, 3]) / dcg([3, 2]), 0.0, 0.0]
RECALL100 = [2 / 3, 1.0, 0.0]
RR = [1 / 2, 1 / 3, 0.0]
AP = [(1 / 2 + 2 / 4) / 3, (1 / 3) / 1, 0.0]
P2 = [1 / 2, 0.0, 0.0]
MRR2 = [1 / 2, 0.0, 0.0]


def test_hand_computed_means():
    result = evaluate(QRELS, RUN, metrics=("ndcg_cut_10", "ndcg_cut_2", "recall_100", "recip_rank", "map", "P_2"))
    expected = {
        "ndcg_cut_10": np.mean(NDCG10),
        "ndcg_cut_2": np.mean(NDCG2),
        "recall_100": np.mean(RECALL100),
        "recip_rank": np.mean(RR),
        "map": np.mean(AP),
        "P_2": np.mean(P2),
    }
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


def test_aliases_and_mrr_cutoff():
    result = evaluate(QRELS, RUN, metrics=("ndcg@10", "recall@100", "recall@3", "mrr@2", "mrr@10", "p@2", "map@100"))
    assert result["ndcg@10"] == pytest.approx(np.mean(NDCG10), abs=1e-12)
    assert result["recall@100"] == pytest.approx(np.mean(RECALL100), abs=1e-12)
    assert result["recall@3"] == pytest.approx(np.mean([1 / 3, 1.0, 0.0]), abs=1e-12)  # q2's d5 is 3rd
    assert result["mrr@2"] == pytest.approx(np.mean(MRR2), abs=1e-12)
    assert result["mrr@10"] == pytest.approx(np.mean(RR), abs=1e-12)
    assert result["p@2"] == pytest.approx(np.mean(P2), abs=1e-12)
    assert result["map@100"] == pytest.approx(np.mean(AP), abs=1e-12)


def test_per_query_and_missing_queries_count_zero():
    per_query = evaluate(QRELS, RUN, metrics=("ndcg@10", "recip_rank"), per_query=True)
    assert sorted(per_query) == ["q1", "q2", "q3"]  # judged queries only; q4, q5 ignored
    assert per_query["q3"] == {"ndcg@10": 0.0, "recip_rank": 0.0}
    assert per_query["q1"]["ndcg@10"] == pytest.approx(NDCG10[0], abs=1e-12)
    # dropping a query from the run lowers the mean (plain pytrec_eval would average over q1 only)
    only_q1 = evaluate(QRELS, {"q1": RUN["q1"]}, metrics=("recip_rank",))
    assert only_q1["recip_rank"] == pytest.approx(0.5 / 3)


def test_ignore_identical_ids():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 2.0, "d1": 1.0}}
    assert evaluate(qrels, run, metrics=("recip_rank",))["recip_rank"] == 1.0
    assert evaluate(qrels, run, metrics=("recip_rank",), ignore_identical_ids=False)["recip_rank"] == 0.5


def test_ties_ranked_by_doc_id_descending_like_trec_eval():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    assert ranked(run["q"]) == ["b", "a", "c"]
    assert evaluate(qrels, run, metrics=("recip_rank", "mrr@1", "mrr@2")) == {
        "recip_rank": 0.5,
        "mrr@1": 0.0,
        "mrr@2": 0.5,
    }
    assert truncate_run(run, 1) == {"q": {"b": 1.0}}


def test_relevance_level():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"a": 2.0, "b": 1.0}}
    assert evaluate(qrels, run, metrics=("recip_rank",), relevance_level=2)["recip_rank"] == 0.5


def test_to_run_drops_padding():
    scores = np.array([[3.0, 2.0, -np.inf], [1.0, -np.inf, -np.inf]], np.float32)
    ids = np.array([["a", "b", None], ["c", None, None]], dtype=object)
    run = to_run(["q1", "q2"], scores, ids)
    assert run == {"q1": {"a": 3.0, "b": 2.0}, "q2": {"c": 1.0}}
    assert all(type(s) is float for docs in run.values() for s in docs.values())
    with pytest.raises(ReprlabError):
        to_run(["q1"], scores, ids)


def test_bad_metric_names_and_empty_qrels():
    with pytest.raises(ConfigError, match="ndcg@10"):
        evaluate(QRELS, RUN, metrics=("ndgc@10",))
    with pytest.raises(ConfigError, match="cut-off"):
        evaluate(QRELS, RUN, metrics=("ndcg_cut",))
    with pytest.raises(ReprlabError, match="no document of relevance"):
        evaluate({"q": {"a": 0}}, RUN)


def test_default_metrics():
    assert set(evaluate(QRELS, RUN)) == {"ndcg_cut_10", "recall_100", "recip_rank", "map"}


def test_to_run_accepts_lists_and_integer_scores_and_returns_plain_types():
    run = to_run(["q1"], np.array([[3, 1]]), [["a", "b"]])  # integer scores, ids as a plain list of rows
    assert run == {"q1": {"a": 3.0, "b": 1.0}}
    assert all(type(s) is float for s in run["q1"].values())
    run = to_run(["q1"], np.array([[2.0, 1.0]]), np.array([["a", "b"]]))  # a numpy string array
    assert list(run["q1"]) == ["a", "b"] and all(type(d) is str for d in run["q1"])
    with pytest.raises(ReprlabError, match="1 query ids for 2 score rows"):
        to_run(["q1"], np.zeros((2, 1)), np.array([["a"], ["b"]], dtype=object))


def test_alias_families_are_case_insensitive_and_a_single_name_is_one_metric():
    upper = evaluate(QRELS, RUN, metrics=("NDCG@10", "P@2", "MRR@2", "Recall@3"))
    assert upper == pytest.approx({"NDCG@10": np.mean(NDCG10), "P@2": np.mean(P2), "MRR@2": np.mean(MRR2),
                                   "Recall@3": np.mean([1 / 3, 1.0, 0.0])}, abs=1e-12)
    assert evaluate(QRELS, RUN, "recip_rank") == pytest.approx({"recip_rank": np.mean(RR)}, abs=1e-12)


def test_errors_name_the_fix():
    with pytest.raises(ConfigError, match="e.g. ndcg_cut_10 or ndcg@10"):
        evaluate(QRELS, RUN, metrics=("ndcg_cut",))
    with pytest.raises(ConfigError, match="unknown metric 'bogus'"):  # no alias, no cut-off
        evaluate(QRELS, RUN, metrics=("bogus",))
    with pytest.raises(ConfigError, match="unknown metric 'bogus_10'"):
        evaluate(QRELS, RUN, metrics=("bogus_10",))


def test_check_metrics_takes_one_name_or_several():
    from reprlab.retrieval.metrics import check_metrics

    check_metrics("ndcg@10")
    check_metrics(["ndcg_cut_10", "mrr@10", "recall_100"])
    for bad in ("bogus", ["ndcg@10", "bogus"]):
        with pytest.raises(ConfigError, match="bogus"):
            check_metrics(bad)
