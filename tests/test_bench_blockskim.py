"""bench/blockskim_transfer.py (fp16 shards and the export -> import of trained runs) and bench/blockskim.py's
timing columns (median and spread of the passes), on tiny synthetic runs: no model, no data, seconds."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import their sibling `common`
transfer = importlib.import_module("blockskim_transfer")
blockskim = importlib.import_module("blockskim")
report = importlib.import_module("blockskim_report")
common = importlib.import_module("common")


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "emb.weight": torch.randn(300, 64, generator=g),  # 76,800 bytes in fp16 *2: cut across shards
        "layer.bias": torch.randn(64, generator=g) * 1e-3,
        "scale": torch.tensor(0.123456789),  # 0-dim
        "position_ids": torch.arange(40).reshape(1, 40),  # integers travel as they are
    }


def cast(state):
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def test_shards_stay_under_the_limit_and_import_equals_a_direct_fp16_cast(tmp_path):
    state = tiny_state()
    shards = transfer.shard_state(state, max_bytes=10_000)
    assert len(shards) > 3 and all(sum(t.numel() * t.element_size() for t in s.values()) <= 10_000 for s in shards)
    assert all(t.dtype in (torch.float16, torch.int64) for s in shards for t in s.values())
    back = transfer.unshard_state(shards, {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()})
    assert list(back) == list(state)
    for k, v in cast(state).items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert not torch.equal(back["scale"], state["scale"])  # it did go through fp16
    files = transfer.write_shards(state, tmp_path, "w", shard_mib=0.08)  # 0.08 MiB files (64 KiB header room)
    assert all(f.stat().st_size < 0.08 * 2**20 for f in files) and len(files) >= 2
    dtypes = {k: "float32" for k in state if k != "position_ids"} | {"position_ids": "int64"}
    back = transfer.unshard_state([load_file(str(f)) for f in files], dtypes)
    assert all(torch.equal(back[k], v) for k, v in cast(state).items())


def test_shards_refuse_values_fp16_cannot_hold():
    with pytest.raises(ValueError, match="not finite"):
        transfer.shard_state({"w": torch.tensor([1e6])}, max_bytes=1000)


def make_run(work: Path, name: str, state, data: list[str], model: str, predictors=None) -> None:
    run = work / name
    (run / "model").mkdir(parents=True)
    save_file(state, str(run / "model" / "model.safetensors"), metadata={"format": "pt"})
    (run / "model" / "vocab.txt").write_text("[PAD]\n[CLS]\n")
    if predictors is not None:
        save_file(predictors, str(run / "model" / "block_skim.safetensors"))
    (run / "checkpoints" / "checkpoint-00000002").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-00000002" / "state.bin").write_bytes(b"x" * 100)
    config = {"output_dir": str(run), "data": data, "model": model, "eval_fraction": 0.3, "train": {"seed": 0}}
    (run / "train_config.json").write_text(json.dumps({"output_dir": str(run), "device": "cuda", "extra": {
        "recipe": "reader", "config": config, "data": data, "eval_fraction": 0.3}}))
    (run / "train_time.json").write_text(json.dumps({"seconds": 12.5}))


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A work dir as the GPU machine leaves it: plain + one frozen run, data under its own data root."""
    there = tmp_path / "there-data"
    (there / "qa").mkdir(parents=True)
    (there / "qa" / "a.json").write_text('{"data": []}')
    (there / "qa" / "b.jsonl").write_text("{}\n")
    data = [str(there / "qa" / "a.json"), str(there / "qa" / "b.jsonl")]
    work = tmp_path / "there-runs"
    state = tiny_state()
    make_run(work, "plain", state, data, "minilm")
    make_run(work, "blockskim-question-frozen", state, data, str(work / "plain" / "model"),
             predictors={"1.w": torch.randn(3, 4)})
    monkeypatch.setenv("REPRLAB_SHARED_DATA", str(there))
    return work, state, there


def test_export_then_import_rebuilds_the_runs_for_reuse(trained, tmp_path, monkeypatch):
    work, state, there = trained
    files = transfer.export_runs(work, tmp_path / "out", shard_mib=0.1)
    assert {f.name for f in files} == {f.name for f in (tmp_path / "out").iterdir()} and len(files) <= 5
    here = tmp_path / "here-data"
    shutil.copytree(there, here)
    monkeypatch.setenv("REPRLAB_SHARED_DATA", str(here))
    local = tmp_path / "here-runs"
    transfer.import_runs(tmp_path / "out", local)
    for name in ("plain", "blockskim-question-frozen"):
        weights = load_file(str(local / name / "model" / "model.safetensors"))
        assert all(torch.equal(weights[k], v) for k, v in cast(state).items())  # fp32 from fp16, both runs alike
        record = json.loads((local / name / "train_config.json").read_text())
        config = record["extra"]["config"]
        assert config["data"] == [str(here / "qa" / "a.json"), str(here / "qa" / "b.jsonl")] == record["extra"]["data"]
        assert config["output_dir"] == record["output_dir"] == str(local / name)
        assert not (local / name / "checkpoints").exists()  # optimizer state never travels
        imported = json.loads((local / name / "imported.json").read_text())
        assert imported["trained_on"]["device"] == "cuda" and "float16" in imported["weights"]
        assert imported["paths_replaced"]["data"][0][0] == str(there / "qa" / "a.json")
        assert imported["start_model"]["same"] and len(imported["start_model"]["minilm_sha256_here"]) == 64
    frozen = json.loads((local / "blockskim-question-frozen" / "train_config.json").read_text())["extra"]["config"]
    assert frozen["model"] == str(local / "plain" / "model")  # the plain reader it started from, here
    original = json.loads((work / "plain" / "train_config.json").read_text())["extra"]["config"]
    rebuilt = json.loads((local / "plain" / "train_config.json").read_text())["extra"]["config"]
    assert {k for k in original if original[k] != rebuilt[k]} == {"output_dir", "data"}  # the recipe is untouched
    assert (local / "blockskim-question-frozen" / "model" / "block_skim.safetensors").read_bytes() == \
        (work / "blockskim-question-frozen" / "model" / "block_skim.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="exists"):  # never over a run folder
        transfer.import_runs(tmp_path / "out", local)


def test_import_refuses_other_data_and_damaged_shards(trained, tmp_path, monkeypatch):
    work, _, there = trained
    out = tmp_path / "out"
    transfer.export_runs(work, out, shard_mib=0.1)
    here = tmp_path / "here-data"
    shutil.copytree(there, here)
    (here / "qa" / "b.jsonl").write_text("{}\n{}\n")  # not the file the readers were trained on
    monkeypatch.setenv("REPRLAB_SHARED_DATA", str(here))
    with pytest.raises(SystemExit, match="sha256"):
        transfer.import_runs(out, tmp_path / "a")
    shutil.copy(there / "qa" / "b.jsonl", here / "qa" / "b.jsonl")
    shard = sorted(out.glob("plain-fp16-*.safetensors"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(SystemExit, match="damaged"):
        transfer.import_runs(out, tmp_path / "b")


def test_export_refuses_a_variant_whose_reader_changed(trained, tmp_path):
    work, state, _ = trained
    changed = dict(state, **{"layer.bias": state["layer.bias"] + 1e-3})
    save_file(changed, str(work / "blockskim-question-frozen" / "model" / "model.safetensors"))
    with pytest.raises(SystemExit, match="differ"):
        transfer.export_runs(work, tmp_path / "out")


def test_timing_columns_give_median_spread_fastest_and_every_pass():
    plain = common.Timing.of([2.0, 3.0, 2.2], cpu=[1.9, 2.9, 2.1])
    skim = common.Timing.of([1.0, 2.0, 1.0], cpu=[1.0, 1.0, 1.4])
    row = blockskim.timing_columns(skim, plain, n_questions=2)
    assert row["ms_per_question"] == 500.0 and row["ms_min"] == 500.0 and row["ms_max"] == 1000.0
    assert row["spread"] == 1.0 and row["passes_s"] == [1.0, 2.0, 1.0]
    assert row["speedup"] == 2.2  # median over median, not the fastest (2.0 / 1.0)
    assert (row["speedup_min"], row["speedup_max"]) == (1.5, 2.2)  # pass by pass: 2.0, 1.5, 2.2
    assert row["fastest_ms_per_question"] == 500.0 and row["fastest_speedup"] == 2.0
    assert row["cpu_ms_per_question"] == 500.0 and row["cpu_speedup"] == 2.1 and row["cpu_passes_s"] == [1.0, 1.0, 1.4]
    assert (row["cpu_speedup_min"], row["cpu_speedup_max"]) == (1.5, 2.9)  # 1.9, 2.9, 1.5
    base = blockskim.timing_columns(plain, plain, n_questions=2)
    assert base["speedup"] == base["speedup_min"] == base["speedup_max"] == 1.0 and base["ms_per_question"] == 1100.0
    line = blockskim.table({"rows": [{"reader": "plain", "skim_layers": None, "threshold": None, "exact_match": 1.0,
                                      "f1": 2.0, "slots": 1.0, **base}]}).splitlines()[-1]
    assert "| 1100.0 | 1000.0-1500.0 | 1.00x (1.00-1.00) |" in line


def test_the_dev_rule_picks_the_fewest_slots_within_one_f1_of_the_plain_reader():
    rows = [{"threshold": 0.1, "f1": 10.2, "slots": 0.9}, {"threshold": 0.3, "f1": 9.5, "slots": 0.6},
            {"threshold": 0.5, "f1": 8.9, "slots": 0.4}, {"threshold": 0.7, "f1": 9.2, "slots": 0.3}]
    assert report.choose_threshold(10.0, rows) == 0.7  # 0.5 is 1.1 below; 0.7 is within 1 and skips the most
    assert report.choose_threshold(10.3, rows) == 0.3
    assert report.choose_threshold(12.0, rows) == 0.0  # none within 1 F1: skip nothing
    assert report.choose_threshold(12.0, rows, slack=3.0) == 0.7
    tuning = {"questions": 4, "plain_f1": 10.0, "chosen": {"Block Skim (x) @ 1": 0.7},
              "rows": [{"reader": "Block Skim (x)", "skim_layers": [1], "exact_match": 0.0, **r} for r in rows]}
    marked = [line for line in report.tuning_table(tuning).splitlines() if "**yes**" in line]
    assert len(marked) == 1 and "| 0.7 |" in marked[0]
