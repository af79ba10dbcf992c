"""bench/reader_distill.py's ``--fid-from``: a FiD reader taken from a `reprlab train fid` checkpoint is the
checkpoint's weights, and one trained on another split is refused (no reported question may have been trained on)."""

import argparse
import json
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprlab.qa.fid import FidConfig, FidReader
from reprlab.qa.fid.recipe import FidTrainingConfig, run_fid

from .conftest import CONTEXTS, QAS, write_squad

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "bench"))  # the script imports its neighbour `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_reader_distill", REPO / "bench" / "reader_distill.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_fid_from_a_checkpoint_is_its_weights_and_another_split_is_refused(bench, tiny_encoder_dir, tmp_path):
    qas = [(f"Question {i} about the game?", a) for i, (_, a) in enumerate(QAS * 3)]
    data = write_squad(tmp_path / "s.json", qas=qas, contexts=CONTEXTS * 3)
    run_fid(FidTrainingConfig(output_dir=str(tmp_path / "run"), data=[str(data)], model=str(tiny_encoder_dir),
                              n_passages=2, eval_passages=2, eval_fraction=0.3, dev_fraction=0.1, evaluate="none",
                              fid=FidConfig(passage_max_length=40), max_steps=3, checkpoint_every=2, batch_size=2,
                              lr=1e-2, device="cpu"))
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-00000002"
    args = argparse.Namespace(fid_from=checkpoint, eval_fraction=0.3, dev_fraction=0.1, work_dir=tmp_path / "work")
    folder, info = bench.imported_fid_reader(args, {"squad": data})
    assert info["step"] == 2 and info["total_steps"] == 3 and len(info["sha256"]) == 64
    saved = load_file(str(checkpoint / "model.safetensors"))
    imported = FidReader.from_pretrained(folder).state_dict()
    assert set(saved) <= set(imported)
    assert all(torch.equal(imported[k], v) for k, v in saved.items())
    fresh = FidReader.from_encoder(tiny_encoder_dir, FidConfig(passage_max_length=40)).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items())  # the checkpoint is not the initial reader
    # the finished model folder (train_config.json beside it) is taken as it is
    assert bench.imported_fid_reader(args_with(args, fid_from=tmp_path / "run" / "model"), {"squad": data})[0] == \
        (tmp_path / "run" / "model").resolve()
    for wrong in ({"eval_fraction": 0.2}, {"dev_fraction": 0.0}):
        with pytest.raises(SystemExit, match="was trained with"):
            bench.imported_fid_reader(args_with(args, **wrong), {"squad": data})
    with pytest.raises(SystemExit, match="was trained with"):
        bench.imported_fid_reader(args, {"squad": data, "other": tmp_path / "other.json"})


def args_with(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})


def test_the_headline_takes_the_iteration_chosen_on_dev(bench):
    """The headline row is the distilled iteration with the best dev recall@5 (the earlier on a tie), not the last
    one, and says so; without dev recall it falls back to the last iteration (numerically: iter-10 after iter-2)."""
    report = importlib.import_module("reader_distill_report")

    def rec(r5):
        return {"recall@2": r5 / 2, "recall@5": r5, "recall@10": r5}

    recall = {"bm25": rec(0.5), "minilm": rec(0.6), "dpr": rec(0.8), "distill-extractive-iter-1": rec(0.7),
              "distill-extractive-iter-2": rec(0.65), "distill-extractive-iter-3": rec(0.75)}
    dev = {"iter-0": {"dev": rec(0.5)}, "iter-1": {"dev": rec(0.9)}, "iter-2": {"dev": rec(0.4)},
           "iter-3": {"dev": rec(0.9)}}
    record = {"datasets": {"x": {"recall": recall}}, "distillation": {"x-extractive": {"recall": dev}}}
    row = report.headline(record)["x-extractive"]
    assert row["distilled"] == "distill-extractive-iter-1" and row["chosen_on"] == "dev recall@5"
    assert row["recall@5"] == 0.7 and row["best_baseline"] == "minilm"
    assert row["gap_closed"] == pytest.approx((0.7 - 0.6) / (0.8 - 0.6))
    dev["iter-2"]["dev"] = rec(0.95)
    assert report.headline(record)["x-extractive"]["distilled"] == "distill-extractive-iter-2"
    no_dev = {"datasets": {"x": {"recall": {**recall, "distill-extractive-iter-10": rec(0.1)}}}}
    row = report.headline(no_dev)["x-extractive"]
    assert row["distilled"] == "distill-extractive-iter-10" and row["chosen_on"] == "last iteration"


def test_distant_examples_take_answer_passages_and_the_top_negatives(bench, tmp_path):
    """Every top-k passage holding an answer (whole word) is a positive; with negatives=n, the n highest-ranked
    passages without one become unanswerable (SQuAD 2.0) examples, which the reader's loader reads as such."""
    from types import SimpleNamespace

    from reprlab.qa.squad import load_squad

    corpus = {d: {"title": d, "text": t} for d, t in (("p1", "Paris is in France."), ("n1", "Lyon is big."),
                                                       ("n2", "Nice is sunny."), ("p2", "The capital: Paris."),
                                                       ("n3", "Parisian food."))}
    q = SimpleNamespace(id="q", question="Capital?", answers=["Paris"])
    yes_no = SimpleNamespace(id="y", question="Is it?", answers=["yes"])
    ranked = {"q": [(d, 0.0) for d in ("n1", "p1", "n3", "n2", "p2")], "y": [("p1", 0.0)]}
    data = SimpleNamespace(corpus=corpus)
    plain = bench.distant_examples(data, [q, yes_no], ranked, k=5)
    assert [p["qas"][0]["id"] for p in plain] == ["q|p1", "q|p2"]
    mixed = bench.distant_examples(data, [q, yes_no], ranked, k=5, negatives=2)
    assert [p["qas"][0]["id"] for p in mixed] == ["q|n1", "q|p1", "q|n3", "q|p2"]  # "Parisian" is no whole word
    assert [bool(p["qas"][0].get("is_impossible")) for p in mixed] == [True, False, True, False]
    assert bench.distant_examples(data, [q], ranked, k=2, negatives=5) == mixed[:2]  # only the top k
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": "2.0", "data": [{"title": "t", "paragraphs": mixed}]}))
    assert [(ex.id, ex.answers) for ex in load_squad(path)] == [("q|n1", []), ("q|p1", ["Paris"]), ("q|n3", []),
                                                               ("q|p2", ["Paris"])]
