"""ANCE: the refresher publishes versions, the trainer switches to the newest, resume restores the index."""

import json

import pytest
import torch

from reprlab.demo import demo_data_path
from reprlab.errors import ConfigError
from reprlab.retrieval.ance import AnceConfig, run_ance
from reprlab.train import TrainConfig


def _config(out, model, steps, **loop):
    return AnceConfig(output_dir=str(out), data=str(demo_data_path()), split="test", model=str(model),
                      refresh_every=2, top_k=10, num_negatives=1, query_max_length=32, passage_max_length=64,
                      dev_queries=["q17", "q18"],
                      train=TrainConfig(output_dir="", max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=1,
                                        log_every=1, **loop))


def _log(path):
    return [json.loads(line) for line in open(path)]


def test_refresher_publishes_versions_and_trainer_uses_the_newest(tmp_path, tiny_model_dir):
    result = run_ance(_config(tmp_path, tiny_model_dir, steps=10))
    log = _log(result.refresh_log)
    versions = [r["version"] for r in log]
    assert versions[0] == 0 and len(versions) >= 2, log
    assert versions == sorted(set(versions)), "versions are switched to in increasing order"
    for r in log:  # an index is used only after the step whose weights built it
        assert r["switched_at_step"] >= r["checkpoint_step"] and r["staleness_steps"] >= 0
        assert "dev_ndcg_cut_10" in r and r["encode_seconds"] > 0
    steps = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    used = [s["ance_version"] for s in steps]
    assert used == sorted(used) and used[-1] == versions[-1]
    published = sorted(int(p.name[len("index-v"):]) for p in (tmp_path / "ance").glob("index-v*"))
    assert versions[-1] in published  # (a refresh still running at the end may publish one more)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_resume_restores_step_optimizer_and_index_version(tmp_path, tiny_model_dir):
    run_ance(_config(tmp_path, tiny_model_dir, steps=12, checkpoint_every=6), stop_after=8)
    ckpt = tmp_path / "checkpoints" / "checkpoint-00000006"
    saved = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    version_at_checkpoint = saved["callbacks"][0]["version"]
    assert saved["step"] == 6 and version_at_checkpoint >= 0
    restored = {}

    class Probe:  # records what the resumed run starts from
        def on_train_start(self, state, model):
            restored["step"] = state.step

        def on_step_end(self, state, model, metrics):
            restored.setdefault("first_version", metrics["ance_version"])

    result = run_ance(_config(tmp_path, tiny_model_dir, steps=12, checkpoint_every=6, resume=True),
                      callbacks=[Probe()])
    assert restored["step"] == 6
    assert restored["first_version"] >= version_at_checkpoint
    assert result.steps == 12


def test_bad_settings():
    with pytest.raises(ConfigError, match="loss"):
        AnceConfig(output_dir="x", data="y", loss="hinge")
    with pytest.raises(ConfigError, match="skip_top"):
        AnceConfig(output_dir="x", data="y", top_k=5, skip_top=5)
