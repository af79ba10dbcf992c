"""``reprlab train deep-retrieval`` and ``reprlab recommend``: training with the EM step, exact resume of model and
mapping, the model folder, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprlab.cli import main
from reprlab.errors import ConfigError, ModelLoadError, ReprlabError
from reprlab.recsys.path_mapping import path_codes
from reprlab.recsys.recipe import DeepRetrievalConfig, Recommender, run_deep_retrieval

RATINGS = str(Path(__file__).resolve().parents[1] / "data" / "tiny_ratings")  # 10 users x 8 ratings of 12 items
LOOP = dict(batch_size=4, lr=1e-2, log_every=1, device="cpu", warmup_steps=0)
TINY = dict(depth=2, width=3, paths_per_item=2, dim=8, hidden=8, node_dim=4, history_length=4, negatives=3,
            em_every=2, em_beam=3, em_candidates=4, alpha=0.01, em_stop=1.0)


def config(tmp_path, out, **kw):
    return DeepRetrievalConfig(output_dir=str(tmp_path / out), data=RATINGS, **{**TINY, **LOOP, **kw})


def test_training_moves_the_mapping_and_logs_path_statistics(tmp_path):
    result = run_deep_retrieval(config(tmp_path, "run", max_steps=6))
    steps = [m for m in result.metrics if "path_max" in m]
    assert [m["step"] for m in steps] == [2, 4, 6]
    assert any(m["paths_changed"] > 0 for m in steps)
    assert set(result.path_stats) >= {"path_max", "path_mean", "paths_empty"}
    assert result.val and 0 <= result.val["recall@20"] <= 1 and result.val["items_scored"] > 0
    folder = result.model_dir
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "items.json", "model.safetensors", "users.json"]
    weights = load_file(folder / "model.safetensors")
    assert weights["item_paths"].shape == (12, 2, 2)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model"]["width"] == 3 and meta["path_stats"]["path_max"] == result.path_stats["path_max"]


def test_a_run_stopped_after_an_m_step_resumes_to_the_same_model_and_mapping(tmp_path):
    """Stopped at step 5 (checkpoint at 4, M-steps at 2, 4, 6): the M-step at 6 needs the streaming scores of
    steps 1..6, restored from the checkpoint's callback state; the mapping is a buffer of the model."""
    full = run_deep_retrieval(config(tmp_path, "full", max_steps=7, checkpoint_every=4))
    cut = run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4), stop_after=5)
    assert cut.model_dir is None and cut.steps == 5
    resumed = run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4, resume=True))
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def at(result, step):
        return [{k: v for k, v in m.items() if k != "elapsed"} for m in result.metrics if m["step"] == step]

    assert at(full, 6)[0]["paths_changed"] > 0  # the last M-step did move items, after the checkpoint
    assert at(resumed, 6) == at(full, 6)


@pytest.mark.parametrize("user_input", ["user", "history"])
def test_both_user_inputs_train_and_serve(tmp_path, user_input):
    result = run_deep_retrieval(config(tmp_path, user_input, max_steps=3, user_input=user_input))
    found = Recommender.load(result.model_dir).recommend(1, k=3)
    assert 1 <= len(found) <= 3


def test_resume_without_the_streaming_scores_would_differ(tmp_path):
    """The scores are state: a resumed run whose learner starts from empty scores ends with another mapping
    (the check that the exact-resume test above can fail)."""
    from reprlab.recsys import recipe

    full = run_deep_retrieval(config(tmp_path, "full", max_steps=7, checkpoint_every=4))
    run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4), stop_after=5)
    original = recipe.PathLearner.load_state_dict
    try:
        recipe.PathLearner.load_state_dict = lambda self, state: None
        broken = run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4, resume=True))
    finally:
        recipe.PathLearner.load_state_dict = original
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(broken.model_dir / "model.safetensors")
    assert not torch.equal(a["item_paths"], b["item_paths"])


def test_cli_trains_and_recommends_with_titles(tmp_path, capsys):
    data = RATINGS
    out = tmp_path / "run"
    argv = ["-q", "train", "deep-retrieval", "--data", data, "--out", str(out), "--max-steps", "4",
            "--batch-size", "4", "--depth", "2", "--width", "3", "--dim", "8", "--hidden", "8", "--node-dim", "4",
            "--negatives", "3", "--em-every", "2", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recall@20" in printed and "paths: largest" in printed
    assert main(["-q", "recommend", "--model", str(out / "model"), "--user", "3", "-k", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert 1 <= len(rows) <= 4 and all(r["title"].startswith("Movie ") for r in rows)
    liked = {int(line.split("\t")[1]) for line in open(f"{data}/u.data") if line.startswith("3\t")
             and int(line.split("\t")[2]) >= 4}
    assert not liked & {r["item"] for r in rows}  # what the user already liked is left out
    assert main(["-q", "recommend", "--model", str(out / "model"), "--user", "3", "-k", "4", "--no-rerank"]) == 0
    assert "Movie" in capsys.readouterr().out


def test_recommend_errors_are_one_clear_line(tmp_path, capsys):
    data = RATINGS
    run_deep_retrieval(config(tmp_path, "run", max_steps=2, evaluate=False))
    model = str(tmp_path / "run" / "model")
    assert main(["-q", "recommend", "--model", model, "--user", "999"]) == 2
    err = capsys.readouterr().err
    assert "user 999 is not in this model's data" in err and "ids 1..10" in err and err.count("\n") == 1
    with pytest.raises(ReprlabError, match="user 42"):
        Recommender.load(model).recommend(42)
    assert main(["-q", "recommend", "--model", str(tmp_path), "--user", "1"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-q", "recommend", "--model", model, "--user", "abc"])
    assert "a user id is an integer" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"format": "reprlab-deep-retrieval", "model": {
        "num_items": 12, "depth": 2, "width": 4}}))
    (tmp_path / "bad" / "model.safetensors").write_bytes((tmp_path / "run" / "model" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="does not fit"):
        Recommender.load(tmp_path / "bad")
    assert data


def test_bad_settings_and_bad_data_name_the_option_or_the_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="em_candidates"):
        DeepRetrievalConfig(output_dir="x", data="d", paths_per_item=3, em_candidates=2)
    with pytest.raises(ConfigError, match="alpha"):
        DeepRetrievalConfig(output_dir="x", data="d", alpha=-1)
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\t5\t100\n1\tx\t4\t101\n")
    code = main(["-q", "train", "deep-retrieval", "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: item id 'x' is not an integer" in err
    assert main(["-q", "train", "deep-retrieval", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--width", "1"]) == 2
    assert "--width" in capsys.readouterr().err


def test_the_recommender_serves_the_mapping_it_was_saved_with(tmp_path):
    result = run_deep_retrieval(config(tmp_path, "run", max_steps=4))
    rec = Recommender.load(result.model_dir)
    saved = load_file(result.model_dir / "model.safetensors")["item_paths"]
    assert torch.equal(rec.model.item_paths, saved)
    codes = path_codes(saved, 3)
    assert sorted(rec.index.items.tolist()) == sorted(i for i in range(12) for _ in range(codes.shape[1]))


def test_the_learner_credits_each_users_beam_paths_to_that_users_item():
    from reprlab.recsys.deep_retrieval import DeepRetrieval, DRModelConfig, beam_search
    from reprlab.recsys.recipe import PathLearner

    torch.manual_seed(0)
    model = DeepRetrieval(DRModelConfig(num_items=10, depth=2, width=4, user_input="user", num_users=5, dim=8,
                                        hidden=8, node_dim=4))
    learner = PathLearner(model, every=1, beam=3, candidates=16, decay=1.0, alpha=0.0, iterations=1)
    x = model.encode({"users": torch.arange(5)})
    targets = torch.tensor([7, 2, 7, 9, 0])
    learner.collect(x, targets)
    paths, log_p = beam_search(model, x, 3)
    expected: dict[int, dict[int, float]] = {}
    for user, item in enumerate(targets.tolist()):
        for code, p in zip(path_codes(paths[user], 4).tolist(), log_p[user].exp().tolist()):
            expected.setdefault(item, {})[code] = expected.get(item, {}).get(code, 0.0) + p
    for item in range(10):
        got = {c: s for c, s in zip(learner.scores.codes[item].tolist(), learner.scores.scores[item].tolist())
               if c >= 0}
        assert got.keys() == expected.get(item, {}).keys()
        assert all(abs(got[c] - expected[item][c]) < 1e-6 for c in got)
    # the M-step then gives each item its best path (no penalty)
    learner.m_step()
    for item, scores in expected.items():
        best = max(scores, key=lambda c: (scores[c], -c))
        assert path_codes(model.item_paths[item], 4).tolist() == [best]


def test_em_stop_freezes_the_mapping_for_the_last_steps(tmp_path):
    """With ``em_stop`` 0.5 of 8 steps, M-steps run at steps 2 and 4 only; steps 5..8 train the model on the final
    mapping (with 1.0 the last M-step falls on the last step, and the saved model never trained on it)."""
    late = run_deep_retrieval(config(tmp_path, "late", max_steps=8, em_stop=1.0, evaluate=False))
    assert [m["step"] for m in late.metrics if "paths_changed" in m] == [2, 4, 6, 8]
    early = run_deep_retrieval(config(tmp_path, "early", max_steps=8, em_stop=0.5, evaluate=False))
    assert [m["step"] for m in early.metrics if "paths_changed" in m] == [2, 4]
    with pytest.raises(ConfigError, match="em_stop"):
        config(tmp_path, "bad", em_stop=1.5)


def test_own_rerank_tower_resumes_exactly_and_serves(tmp_path):
    """``--rerank-tower own``: the second tower is in the checkpoints (exact resume) and the model folder, and
    ``recommend`` scores with it."""
    full = run_deep_retrieval(config(tmp_path, "full", max_steps=7, checkpoint_every=4, rerank_tower="own"))
    run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4, rerank_tower="own"), stop_after=5)
    resumed = run_deep_retrieval(config(tmp_path, "cut", max_steps=7, checkpoint_every=4, rerank_tower="own",
                                        resume=True))
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert any(k.startswith("rerank_tower.") for k in a) and not any(k.startswith("rerank_user.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rec = Recommender.load(full.model_dir)
    assert rec.model.config.rerank_tower == "own"
    found = rec.recommend(1, k=3)
    u = rec.user_index[1]
    history = torch.tensor(rec.histories[u][-4:]) + 1
    r = rec.model.rerank_input({"history": history.reshape(1, -1), "users": torch.tensor([u])})
    want = rec.model.rerank_scores(r, torch.tensor([[rec.item_ids.index(f.item) for f in found]]))[0]
    assert [f.score for f in found] == pytest.approx(want.tolist(), abs=1e-6)


def test_a_model_folder_saved_before_rerank_tower_loads_as_shared(tmp_path):
    result = run_deep_retrieval(config(tmp_path, "run", max_steps=3, evaluate=False, rerank_tower="shared"))
    meta_path = result.model_dir / "config.json"
    meta = json.loads(meta_path.read_text())
    assert meta["model"].pop("rerank_tower") == "shared"
    meta_path.write_text(json.dumps(meta))  # the config.json of a folder written before the option existed
    rec = Recommender.load(result.model_dir)
    assert rec.model.config.rerank_tower == "shared" and 1 <= len(rec.recommend(1, k=3)) <= 3


def test_em_explore_reaches_the_m_step_and_spreads_the_items(tmp_path, monkeypatch):
    """``--em-explore``: with a heavy penalty the M-step may move items to paths no beam visited; the paper's M-step
    (0) keeps them on their candidates. The largest path shrinks and more paths are used; the M-step gets the
    share and the width K (for the siblings)."""
    import reprlab.recsys.recipe as recipe

    calls = []

    def spy(*args):
        calls.append(args[5:])  # (iterations, explore, width)
        return assign(*args)

    assign = recipe.assign_paths
    monkeypatch.setattr(recipe, "assign_paths", spy)
    kw = dict(max_steps=6, alpha=10.0, paths_per_item=1, evaluate=False)
    paper = run_deep_retrieval(config(tmp_path, "paper", **kw))
    explore = run_deep_retrieval(config(tmp_path, "explore", em_explore=0.01, **kw))
    assert calls and calls[-1][1:] == (0.01, 3) and calls[0][1:] == (0.0, 3)
    assert explore.path_stats["path_max"] < paper.path_stats["path_max"]
    assert explore.path_stats["paths_empty"] < paper.path_stats["paths_empty"]
    with pytest.raises(ConfigError, match="em_explore"):
        config(tmp_path, "bad", em_explore=1.0)
