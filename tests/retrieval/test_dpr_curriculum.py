"""``train dpr`` with a curriculum: pairs ordered by the BM25 rank of their positive, paced by the loop's sampler."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from reprlab.demo import demo_data_path
from reprlab.errors import ConfigError, DataFormatError
from reprlab.retrieval import dpr
from reprlab.retrieval.dpr import DprConfig, run_dpr
from reprlab.retrieval.pairs import PairCollate, load_training_examples, pairs_from_examples
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.beir import load_beir
from reprlab.train import TrainConfig
from reprlab.train.curriculum import CurriculumConfig


def _config(out, model, curriculum=None, **loop):
    loop = {"batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "device": "cpu", **loop}
    return DprConfig(output_dir=str(out), data=str(demo_data_path()), split="test", model=str(model), num_negatives=1,
                     mine_depth=5, query_max_length=16, passage_max_length=32,
                     curriculum=curriculum or CurriculumConfig(), train=TrainConfig(**loop))


@pytest.fixture(scope="module")
def ranks():
    """Reference: each pair's (query, positive text) -> the rank of its positive when BM25 ranks the whole corpus."""
    config = _config("x", "minilm")
    examples = load_training_examples(config)
    corpus = load_beir(demo_data_path(), split="test").corpus
    _, found = bm25_for_corpus(corpus).search([ex.query for ex in examples], k=len(corpus))
    out = {}
    for ex, ids in zip(examples, found):
        for p in ex.positives:
            out[(ex.query, ((p.title or "") + " " + (p.text or "")).strip())] = list(ids).index(p.id) + 1
    assert len(out) == len(pairs_from_examples(examples)) == 20 and len(set(out.values())) > 2  # not all tied
    return out


def _drawn(monkeypatch, config) -> list[list[tuple[str, str]]]:
    """Run ``config``; the (query, positive) pairs of every batch, in step order."""
    batches = []

    class Recording(PairCollate):
        def __call__(self, items, rng):
            batches.append([(ex.query, ex.positive[1]) for ex in items])
            return super().__call__(items, rng)

    monkeypatch.setattr(dpr, "PairCollate", Recording)
    run_dpr(config)
    return batches


# pool = 20 pairs x b = 4 = one batch, for every step (the step pacing grows only at a T = the end)
POOL = dict(pacing="step", pacing_a=1.0, pacing_b=0.2)


def test_curriculum_draws_the_easiest_pairs_and_anti_the_hardest(tmp_path, tiny_model_dir, monkeypatch, ranks):
    by_rank = sorted(ranks.values())
    easy = _drawn(monkeypatch, _config(tmp_path / "c", tiny_model_dir, CurriculumConfig("curriculum", **POOL),
                                       max_steps=4))
    hard = _drawn(monkeypatch, _config(tmp_path / "a", tiny_model_dir, CurriculumConfig("anti-curriculum", **POOL),
                                       max_steps=4))
    plain = _drawn(monkeypatch, _config(tmp_path / "s", tiny_model_dir, max_steps=4))
    assert len(easy) == len(hard) == len(plain) == 4
    assert all(ranks[p] <= by_rank[3] for batch in easy for p in batch), [[ranks[p] for p in b] for b in easy]
    hardest = {p for p in ranks if ranks[p] >= by_rank[-4]}
    assert len(hardest) == 4 and all(set(batch) == hardest for batch in hard), [[ranks[p] for p in b] for b in hard]
    # the check can fail: plain epochs (no curriculum) draw harder pairs in these steps
    assert any(ranks[p] > by_rank[3] for batch in plain for p in batch)
    scores = json.loads((tmp_path / "c" / "scores.json").read_text())
    assert scores["higher"] == "harder" and sorted(scores["scores"]) == by_rank
    assert not (tmp_path / "s" / "scores.json").exists()


def test_a_score_file_overrides_bm25_and_random_needs_none(tmp_path, tiny_model_dir, monkeypatch, ranks):
    pairs = pairs_from_examples(load_training_examples(_config("x", tiny_model_dir)))
    keys = [(p.query, p.positive[1]) for p in pairs]
    path = tmp_path / "easier.json"  # BM25's ranks as "higher = easier": the curriculum shows the BM25-hard first
    path.write_text(json.dumps({"scores": [ranks[k] for k in keys], "higher": "easier"}))
    flipped = _drawn(monkeypatch, _config(tmp_path / "f", tiny_model_dir,
                                          CurriculumConfig("curriculum", scores=str(path), **POOL), max_steps=3))
    hardest = sorted(ranks.values())[-4]
    assert all(ranks[p] >= hardest for batch in flipped for p in batch)
    drawn = _drawn(monkeypatch, _config(tmp_path / "r", tiny_model_dir, CurriculumConfig("random", **POOL),
                                        max_steps=3))
    assert len(drawn) == 3 and all(set(b) == set(drawn[0]) for b in drawn)  # one pool of one batch throughout
    assert not (tmp_path / "r" / "scores.json").exists()
    short = tmp_path / "short.txt"
    short.write_text("1\n2\n")
    with pytest.raises(DataFormatError, match="2 scores for 20"):
        run_dpr(_config(tmp_path / "bad", tiny_model_dir, CurriculumConfig("curriculum", scores=str(short)),
                        max_steps=2))


def test_curriculum_run_resumes_exactly(tmp_path, tiny_model_dir):
    curriculum = CurriculumConfig("curriculum", pacing="linear", pacing_a=0.8, pacing_b=0.25)
    kw = dict(max_steps=8, checkpoint_every=3)
    full = run_dpr(_config(tmp_path / "full", tiny_model_dir, curriculum, **kw))
    run_dpr(_config(tmp_path / "cut", tiny_model_dir, curriculum, **kw), stop_after=5)
    cut = run_dpr(_config(tmp_path / "cut", tiny_model_dir, curriculum, resume=True, **kw))
    a = load_file(f"{full.model_dir}/model.safetensors")
    b = load_file(f"{cut.model_dir}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_options_round_trip_and_bad_values_name_the_flag(tmp_path, capsys):
    from reprlab.cli import main
    from reprlab.cli.options import add_config_options, argv_of, config_from_args
    from reprlab.recipes import RECIPES

    recipe = RECIPES["train dpr"]
    parser = argparse.ArgumentParser()
    options = add_config_options(parser, recipe.config, hidden=recipe.hidden, fixed=recipe.fixed)
    config = config_from_args(options, parser.parse_args(
        ["--data", str(demo_data_path()), "--out", "o", "--curriculum-ordering", "anti-curriculum",
         "--curriculum-pacing", "root", "--curriculum-pacing-b", "0.1"]))
    assert (config.curriculum.ordering, config.curriculum.pacing, config.curriculum.pacing_b) == \
        ("anti-curriculum", "root", 0.1)
    assert config_from_args(options, parser.parse_args(argv_of(options, config))) == config

    scores = tmp_path / "s.txt"
    scores.write_text("1\n")
    base = ["-q", "train", "dpr", "--data", str(demo_data_path()), "--out", str(tmp_path / "x")]
    code = main(base + ["--curriculum-ordering", "random", "--curriculum-scores", str(scores)])
    err = capsys.readouterr().err
    assert code == 2 and "--curriculum-scores" in err and "random" in err, err
    code = main(base + ["--curriculum-pacing-b", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--curriculum-pacing-b" in err, err
    with pytest.raises(ConfigError, match="needs the corpus") as info:  # no corpus for BM25 without --data
        DprConfig(output_dir="o", examples="train.jsonl", curriculum=CurriculumConfig("curriculum"))
    assert info.value.field == "curriculum.scores"
    DprConfig(output_dir="o", examples="train.jsonl", curriculum=CurriculumConfig("random"))  # needs no scores
