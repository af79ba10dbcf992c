"""bench/curricula.py and bench/cka.py: the parts that decide what a time-boxed run reports (no training)."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
curricula = pytest.importorskip("curricula")
cka = pytest.importorskip("cka")


def _row(noise, budget, ordering, seed, test, dev=None, pacing=("linear", 0.8, 0.2)):
    return {"noise": noise, "budget": budget, "ordering": ordering, "seed": seed, "test_accuracy": test,
            "dev_accuracy": test if dev is None else dev, "pacing": None if ordering == "standard" else list(pacing)}


def test_pacing_is_chosen_on_dev_and_one_seed_gives_no_verdict():
    rows = [_row(0.2, "1/5", "standard", s, t) for s, t in ((0, 0.60), (1, 0.62))]
    rows += [_row(0.2, "1/5", "curriculum", s, t, dev=0.5, pacing=("root", 0.4, 0.1)) for s, t in ((0, 0.9), (1, 0.9))]
    rows += [_row(0.2, "1/5", "curriculum", s, t, dev=0.7) for s, t in ((0, 0.70), (1, 0.71))]
    rows += [_row(0.2, "1/5", "random", 0, 0.99)]
    table = curricula.select(rows)
    cur = next(t for t in table if t["ordering"] == "curriculum")
    assert cur["pacing"] == ["linear", 0.8, 0.2] and cur["test"] == pytest.approx(0.705)  # by dev, not by test
    found = curricula.image_findings(table)
    assert found["noise 0.2, 1/5, curriculum"]["verdict"] == "better"
    assert found["noise 0.2, 1/5, random"]["verdict"] == "one seed: no verdict"


def test_gap_inside_two_seed_sds_is_a_tie():
    rows = [_row(0.0, "full", "standard", s, t) for s, t in ((0, 0.80), (1, 0.84))]
    rows += [_row(0.0, "full", "curriculum", s, t) for s, t in ((0, 0.83), (1, 0.85))]
    assert curricula.image_findings(curricula.select(rows))["noise 0, full, curriculum"]["verdict"] == "tie"


def test_plot_skips_a_setting_the_run_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row(0.0, b, o, 0, 0.5) for b in ("full", "1/5") for o in ("standard", "curriculum")]
    rows += [_row(0.4, "full", o, 0, 0.5) for o in ("standard", "curriculum")]  # no (0.4, 1/5) cell
    curricula.plot_images(curricula.select(rows), tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_run_budget_cuts_the_last_seeds_first(tmp_path, monkeypatch):
    """--budget-min: the seeds are the outer loop, so the runs left are the last seed's; --budgets selects."""
    import reprlab.analysis.image_classifier as ic

    now = [0.0]

    def fake_run(config):
        now[0] += 30.0  # every run takes 30 s
        Path(config.output_dir).mkdir(parents=True)
        (Path(config.output_dir) / "results.json").write_text(json.dumps({"dev_accuracy": 0.5, "test_accuracy": 0.5}))

    monkeypatch.setattr(ic, "run_image_classifier", fake_run)
    monkeypatch.setattr(curricula, "scores_for", lambda args, noise: tmp_path / "scores.json")
    monkeypatch.setattr(curricula.time, "time", lambda: now[0])
    args = curricula.parse_args(["--parts", "images", "--work-dir", str(tmp_path), "--seeds", "0", "1",
                                 "--noise", "0.2", "--budgets", "full", "1/5", "--budget-min", "6.9"])
    rows = curricula.image_runs(args)
    assert {r["budget"] for r in rows} == {"full", "1/5"}
    assert [r["seed"] for r in rows] == [0] * 14  # 14 of seed 0's 20 runs (10 settings x 2 budgets) fit in 7 minutes
    assert curricula.planned_runs(args) == 40


def test_cka_grid_shards_cover_the_grid_once_and_keep_the_priority_order():
    specs, settings = cka.grid("cpu", quick=False)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    shards = [specs[i::3] for i in range(3)]
    assert sorted(s.name for shard in shards for s in shard) == sorted(names)
    assert names.index("r44-x1-f0.0625-s1") < names.index("r8-x2-f1-s0")  # the second seed before the data axis
    assert settings["reference"] == (8, 1 / 16)
