"""Checkpoints without pickles: the flattened state by hand, RNG round trips, folders, damage, config changes, metrics
trimming, and the loop's resume rules (refusals, allowed changes, kept checkpoints, time-based saving)."""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reprlab.errors import ConfigError
from reprlab.train import TrainConfig, train
from reprlab.train.checkpoint import (
    CheckpointError,
    comparable,
    config_changes,
    flatten,
    list_checkpoints,
    load_checkpoint,
    read_state,
    rng_state,
    set_rng_state,
    trim_metrics,
    unflatten,
)
from reprlab.train.loop import default_optimizer

# ----------------------------------------------------------------------------- the state as JSON + tensors



def test_tensors_in_lists_and_tuples_get_keys_of_their_own():
    a, b, c = torch.zeros(2), torch.ones(2), torch.full((2,), 2.0)
    tensors = {}
    flat = flatten({"xs": [a, b], "pair": (c, a)}, tensors)
    assert flat == {"xs": [{"__tensor__": "xs.0"}, {"__tensor__": "xs.1"}],
                    "pair": {"__tuple__": [{"__tensor__": "pair.0"}, {"__tensor__": "pair.1"}]}}
    assert torch.equal(tensors["xs.1"], b) and torch.equal(tensors["pair.0"], c)

def test_flatten_by_hand_and_back():
    t, a = torch.arange(3.0), np.array([[1, 2], [3, 4]], dtype=np.int32)
    state = {"opt": {"state": {0: {"m": t}, 1: {}}, "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
             "rng": a, "flags": [True, None, "x", 3]}
    tensors = {}
    flat = flatten(state, tensors)
    assert flat == {
        "opt": {"state": {"0": {"m": {"__tensor__": "opt.state.0.m"}}, "1": {}, "__int_keys__": True},
                "groups": [{"lr": 0.1, "betas": {"__tuple__": [0.9, 0.99]}}]},
        "rng": {"__tensor__": "rng"},
        "flags": [True, None, "x", 3],
    }
    assert sorted(tensors) == ["opt.state.0.m", "rng"] and torch.equal(tensors["opt.state.0.m"], t)
    json.dumps(flat)  # plain JSON
    back = unflatten(json.loads(json.dumps(flat)), tensors)
    assert back["opt"]["state"][0]["m"] is tensors["opt.state.0.m"] and back["opt"]["state"][1] == {}
    assert back["opt"]["groups"] == [{"lr": 0.1, "betas": (0.9, 0.99)}]
    assert back["rng"].tolist() == [[1, 2], [3, 4]] and back["flags"] == [True, None, "x", 3]
    # a tensor at the top, string keys that look like numbers, an empty dict
    top = {}
    assert flatten(t, top) == {"__tensor__": "tensor"} and torch.equal(top["tensor"], t)
    assert unflatten(flatten({"1": 2, "a": {}}, {}), {}) == {"1": 2, "a": {}}
    # tensors inside a list and a tuple (e.g. the CUDA generators' states, a callback's buffers) come back too
    nested = {"a": [t, (t + 1, 2)]}
    back = unflatten(json.loads(json.dumps(flatten(nested, tensors := {}))), tensors)
    assert torch.equal(back["a"][0], t) and torch.equal(back["a"][1][0], t + 1) and back["a"][1][1] == 2


def test_flatten_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match=r"^cannot store a set in a checkpoint \(at a\.b\)$"):
        flatten({"a": {"b": {1, 2}}}, {})
    with pytest.raises(TypeError, match=r"^cannot store a object in a checkpoint \(at the top\)$"):
        flatten(object(), {})


def test_rng_states_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    saved = json.loads(json.dumps(flatten(rng_state(), tensors := {})))
    first = (torch.rand(3).tolist(), random.random(), np.random.normal(), np.random.normal(), np.random.rand())
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    set_rng_state(unflatten(saved, tensors))
    assert (torch.rand(3).tolist(), random.random(), np.random.normal(), np.random.normal(), np.random.rand()) == first


# ----------------------------------------------------------------------------- folders and damage


def _checkpoint(root, name, files=("trainer_state.json",)):
    folder = root / "checkpoints" / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_text("{}")
    return folder


def test_list_checkpoints(tmp_path):
    assert list_checkpoints(tmp_path) == []
    ten = _checkpoint(tmp_path, "checkpoint-00000010")
    two = _checkpoint(tmp_path, "checkpoint-00000002")
    _checkpoint(tmp_path, "checkpoint-00000011", files=())  # incomplete: no state file
    _checkpoint(tmp_path, "checkpoint-latest")
    _checkpoint(tmp_path, "old-checkpoint-00000012")
    assert list_checkpoints(tmp_path) == [(2, two), (10, ten)]
    _checkpoint(tmp_path, "checkpoint-00000020", files=("trainer_state.pt",))
    with pytest.raises(CheckpointError, match="older reprlab"):
        list_checkpoints(tmp_path)


def test_read_state_names_what_is_wrong(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    path = folder / "trainer_state.json"
    path.write_text('{"format": "reprlab-checkpoint", "trainer": {}, "step": 3}')
    assert read_state(folder)["step"] == 3
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=f"^{path} is damaged"):
        read_state(folder)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="is damaged"):
        read_state(folder)
    for bad in ('["a list"]', '{"format": "other", "trainer": {}}', '{"format": "reprlab-checkpoint"}'):
        path.write_text(bad)
        with pytest.raises(CheckpointError, match=f"^{path} is not a reprlab checkpoint state$"):
            read_state(folder)


# ----------------------------------------------------------------------------- config changes and metrics


def test_config_changes():
    stored = {"lr": 1e-3, "device": "cpu", "resume": False, "allow_config_change": (), "betas": (0.9, 0.99),
              "extra": {"config": {"scale": 20.0, "data": "a", "train": {"lr": 1e-3}}}}
    assert comparable(stored) == {"lr": 1e-3, "betas": [0.9, 0.99], "extra.config.scale": 20.0,
                                  "extra.config.data": "a"}
    same = {**stored, "device": "cuda", "resume": True, "betas": [0.9, 0.99],  # benign, and a tuple read back as a list
            "extra": {"config": {"scale": 20.0, "data": "a", "train": {"lr": 5.0}}}}
    assert config_changes(stored, same) == []
    other = {**stored, "lr": 2e-3, "extra": {"config": {"scale": 10.0, "data": "a", "new": 1}}}
    assert config_changes(stored, other) == ["extra.config.new", "extra.config.scale", "lr"]
    assert config_changes(stored, other, allowed=["lr", "extra.config.scale"]) == ["extra.config.new"]
    assert config_changes(stored, other, allowed=["scale", "new"]) == ["lr"]  # by field name
    assert config_changes(stored, other, allowed=["config.scale"]) == ["extra.config.new", "extra.config.scale", "lr"]


def test_trim_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    trim_metrics(path, 3)  # no file: nothing to do
    assert not path.exists()
    lines = ['{"step": 1}', "", '{"step": 3, "loss": 1.0}', '{"other": 1}', '{"step": 4}', '{"step": 2']
    path.write_text("\n".join(lines) + "\n")
    trim_metrics(path, 3)
    assert path.read_text() == '{"step": 1}\n{"step": 3, "loss": 1.0}\n{"other": 1}\n'
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 2}\n')  # a cut line is skipped, not the end of the file
    trim_metrics(path, 3)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ----------------------------------------------------------------------------- the loop's resume rules


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x).squeeze(-1)


DATA = [torch.tensor([float(i), 1.0, -float(i)]) for i in range(16)]


def collate(items, rng):
    return torch.stack(items)


def loss_fn(model, batch):
    return (model(batch) - 1.0).pow(2).mean()


class Counter:
    """A callback with state that must survive a resume."""

    def __init__(self):
        self.steps, self.saved_at, self.events = 0, [], []

    def on_train_start(self, state, model):
        self.events.append(("start", state.step))

    def on_step_end(self, state, model, metrics):
        self.steps += 1
        self.events.append(("step", state.step))

    def on_checkpoint(self, state, folder):
        self.saved_at.append((state.step, folder.name))

    def on_train_end(self, state, model):
        self.events.append(("end", state.step))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def cfg(out, **kw):
    base = dict(output_dir=str(out), max_steps=6, batch_size=4, lr=0.1, checkpoint_every=2, checkpoint_minutes=0,
                log_every=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def names(out):
    return [p.name for _, p in list_checkpoints(out)]


def test_checkpoints_kept_saved_and_reported(tmp_path):
    counter = Counter()
    state = train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "a", keep_checkpoints=1), callbacks=[counter])
    assert names(tmp_path / "a") == ["checkpoint-00000006"]  # every 2 steps, the newest one kept
    assert counter.saved_at == [(2, "checkpoint-00000002"), (4, "checkpoint-00000004"), (6, "checkpoint-00000006")]
    assert counter.events == [("start", 0), *[("step", s) for s in range(1, 7)], ("end", 6)]
    saved = read_state(tmp_path / "a" / "checkpoints" / "checkpoint-00000006")
    assert (saved["format"], saved["version"], saved["step"], saved["total_steps"]) == ("reprlab-checkpoint", 2, 6, 6)
    assert (saved["epoch"], saved["position"]) == (state.epoch, state.position) == (1, 8)  # 4 steps per epoch
    assert saved["config"]["keep_checkpoints"] == 1
    train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "b", keep_checkpoints=0))
    assert names(tmp_path / "b") == [f"checkpoint-0000000{s}" for s in (2, 4, 6)]  # 0 keeps all
    train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "c", checkpoint_every=0))
    assert names(tmp_path / "c") == ["checkpoint-00000006"]  # by time only (0 minutes: never): the final one
    train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "d", checkpoint_every=0, checkpoint_minutes=1e-9))
    assert names(tmp_path / "d") == ["checkpoint-00000005", "checkpoint-00000006"]  # due at every step
    metrics = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and {m["epoch"] for m in metrics} == {0, 1}
    assert json.loads((tmp_path / "a" / "train_config.json").read_text())["keep_checkpoints"] == 1


def test_resume_restores_callbacks_and_refuses_changes(tmp_path):
    full = Model()
    train(full, DATA, collate, loss_fn, cfg(tmp_path / "full"))
    first, counter = Model(), Counter()
    train(first, DATA, collate, loss_fn, cfg(tmp_path / "cut"), callbacks=[counter], stop_after=3)
    assert names(tmp_path / "cut") == ["checkpoint-00000002"] and counter.steps == 3
    with pytest.raises(ConfigError, match=r"started with other settings \(lr\)"):
        train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "cut", resume=True, lr=0.2))
    resumed, again = Model(), Counter()
    state = train(resumed, DATA, collate, loss_fn, cfg(tmp_path / "cut", resume=True, log_every=2),
                  callbacks=[again])  # log_every may change
    assert again.steps == 6 and again.events[0] == ("start", 2) and state.step == 6
    assert torch.equal(resumed.lin.weight, full.lin.weight)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4, 6]  # step 3 was logged after the checkpoint: dropped, then every 2nd step
    # a named change is allowed
    train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "lr", max_steps=2))
    state = train(Model(), DATA, collate, loss_fn,
                  cfg(tmp_path / "lr", max_steps=4, resume=True, allow_config_change=("max_steps",)))
    assert state.step == 4


def test_fresh_runs_and_damaged_checkpoints(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder") as err:
        train(Model(), DATA, collate, loss_fn, cfg(tmp_path / "file"))
    assert err.value.field == "output_dir"
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 99}\n')  # left by an earlier run without checkpoints
    state = train(Model(), DATA, collate, loss_fn, cfg(out, resume=True, max_steps=2))  # nothing to resume: fresh
    assert state.step == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    folder = out / "checkpoints" / "checkpoint-00000002"
    (folder / "trainer_state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged or does not fit this model") as err:
        train(Model(), DATA, collate, loss_fn, cfg(out, resume=True, max_steps=4, allow_config_change=("max_steps",)))
    assert f"({str(err.value.__cause__).splitlines()[0]})" in str(err.value)  # the reader's own words: the cause


def test_load_checkpoint_skips_callbacks_without_state(tmp_path):
    class Stateless:
        pass

    counter = Counter()
    train(Model(), DATA, collate, loss_fn, cfg(tmp_path, max_steps=2), callbacks=[Stateless(), counter])
    model = Model()
    opt = default_optimizer(model, cfg(tmp_path))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    fresh = Counter()
    state = type("S", (), {})()
    load_checkpoint(tmp_path / "checkpoints" / "checkpoint-00000002", model, opt, sched, [Stateless(), fresh], state)
    assert fresh.steps == 2 and (state.step, state.epoch, state.position) == (2, 0, 8)

    class LoadOnly:  # can load a state, but the checkpoint holds none for its slot: it must not be called
        def load_state_dict(self, state):
            raise AssertionError(f"called with {state!r}")

    load_checkpoint(tmp_path / "checkpoints" / "checkpoint-00000002", model, opt, sched, [LoadOnly(), Counter()],
                    state)


def test_resume_starts_from_the_newest_checkpoint_and_cleans_up_after_killed_writers(tmp_path):
    out = tmp_path / "deep" / "run"  # parents are created
    first, counter = Model(), Counter()
    train(first, DATA, collate, loss_fn, cfg(out), callbacks=[counter], stop_after=5)
    assert names(out) == ["checkpoint-00000002", "checkpoint-00000004"]
    dead = 2**22 + 12345  # no such process
    stale = [out / f".metrics.jsonl.{dead}.abc.tmp", out / "checkpoints" / f".checkpoint-00000006.{dead}.x1.tmp"]
    stale[1].mkdir()
    stale[0].write_text("half a line")
    again = Counter()
    train(Model(), DATA, collate, loss_fn, cfg(out, resume=True), callbacks=[again])
    assert again.events[0] == ("start", 4) and again.steps == 4 + 2  # restored count + the 2 steps after step 4
    assert not any(p.exists() for p in stale)
    with pytest.raises(ConfigError, match=rf"^{out} already has checkpoints; pass resume=True \(--resume\) to continue "
                                          "that run or choose a new output folder$"):
        train(Model(), DATA, collate, loss_fn, cfg(out))
    with pytest.raises(ConfigError, match=rf"^the run in {out} was started with other settings \(batch_size, lr\); "
                                          r"resume with the same ones, name the change with allow_config_change "
                                          r"\(--allow-config-change batch_size lr\), or choose a new output "
                                          r"folder$"):
        train(Model(), DATA, collate, loss_fn, cfg(out, resume=True, lr=0.3, batch_size=8))


def test_the_loop_needs_an_output_folder_and_finishes_a_run_stopped_at_its_last_step(tmp_path):
    with pytest.raises(ConfigError, match="^output_dir: the training loop needs an output folder$") as err:
        train(Model(), DATA, collate, loss_fn, cfg(""))
    assert err.value.field == "output_dir"
    counter = Counter()
    state = train(Model(), DATA, collate, loss_fn, cfg(tmp_path, max_steps=2), callbacks=[counter], stop_after=2)
    assert state.step == 2 and counter.events[-1] == ("end", 2) and names(tmp_path) == ["checkpoint-00000002"]


def test_a_given_optimizer_is_used_and_the_lr_metric_follows_the_schedule(tmp_path):
    model = Model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)  # one parameter group
    train(model, DATA, collate, loss_fn, cfg(tmp_path, lr=0.5, warmup_steps=2, schedule="linear"), optimizer=sgd)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # logged after s steps: the lr of the next step, 0.5 x ((s + 1) / 2 while s < 2 warm-up steps, else (6 - s) / 4)
    assert lrs == pytest.approx([0.5 * f for f in (1.0, 1.0, 0.75, 0.5, 0.25, 0.0)])
    assert sgd.state_dict()["param_groups"][0]["lr"] == 0.0


def test_checkpoints_by_time():
    import time

    from reprlab.train.loop import TrainState, _checkpoint_due

    state = TrainState(step=3)
    by_time = cfg("x", checkpoint_every=0, checkpoint_minutes=2)
    assert not _checkpoint_due(by_time, state, time.time() - 100)  # 100 s < 2 minutes
    assert _checkpoint_due(by_time, state, time.time() - 121)
    one = cfg("x", checkpoint_every=0, checkpoint_minutes=1)
    assert _checkpoint_due(one, state, time.time() - 60.5) and not _checkpoint_due(one, state, time.time() - 59)
    assert not _checkpoint_due(cfg("x", checkpoint_every=0, checkpoint_minutes=0), state, 0.0)  # never by time
    assert _checkpoint_due(cfg("x", checkpoint_every=3, checkpoint_minutes=0), state, time.time())
    assert not _checkpoint_due(cfg("x", checkpoint_every=2, checkpoint_minutes=60), state, time.time())


def test_epoch_order():
    from reprlab.train.loop import _epoch_order

    assert _epoch_order(5, 7, 2, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(7 * 1_000_003 + 2))
    assert torch.equal(_epoch_order(50, 7, 2, shuffle=True), expected)
    assert not torch.equal(_epoch_order(50, 7, 3, shuffle=True), expected)  # a new order each epoch



def test_a_field_added_since_the_run_started_is_no_change_at_its_default(tmp_path):
    """A run checkpointed before the code gained a field resumes when the field keeps its default (the behaviour
    the code had), and is refused when it does not; the recipe's own fields reach the loop as config_defaults."""
    stored = {"lr": 1.0, "extra": {"config": {"scale": 1.0}}}
    grown = {"lr": 1.0, "new_loop": 0, "extra": {"config": {"scale": 1.0, "dev": 0.0}}}
    defaults = {"new_loop": 0, "extra.config.dev": 0.0}
    assert config_changes(stored, grown) == ["extra.config.dev", "new_loop"]  # no defaults given: both changed
    assert config_changes(stored, grown, defaults=defaults) == []
    moved = {"lr": 1.0, "new_loop": 1, "extra": {"config": {"scale": 1.0, "dev": 0.2}}}
    assert config_changes(stored, moved, defaults=defaults) == ["extra.config.dev", "new_loop"]
    assert config_changes({**stored, "new_loop": 1}, {**stored, "new_loop": 0}, defaults=defaults) == ["new_loop"]
    # the loop: a checkpoint whose recorded recipe config lacks "dev"
    out = tmp_path / "run"
    train(Model(), DATA, collate, loss_fn, cfg(out, extra={"config": {"scale": 1.0}}), stop_after=3)
    later = {"config": {"scale": 1.0, "dev": 0.0}, "config_defaults": {"dev": 0.0}}
    with pytest.raises(ConfigError, match=r"other settings \(dev\)"):
        train(Model(), DATA, collate, loss_fn,
              cfg(out, resume=True, extra={**later, "config": {"scale": 1.0, "dev": 0.2}}))
    assert train(Model(), DATA, collate, loss_fn, cfg(out, resume=True, extra=later)).step == 6


def test_field_defaults_flatten_a_config_class_and_reuse_accepts_a_new_field_at_its_default(tmp_path):
    from reprlab.qa.recipe import ReaderTrainingConfig
    from reprlab.train.checkpoint import field_defaults
    from reprlab.train.recipe import run_differences

    d = field_defaults(ReaderTrainingConfig)
    assert d["dev_fraction"] == 0.0 and d["eval_fraction"] == 0.25 and d["reader.max_length"] == 384
    assert d["train.lr"] == 1e-4 and "output_dir" not in d and "data" not in d  # no default: not listed
    assert field_defaults(TrainConfig)["lr"] == 2e-5

    @dataclasses.dataclass
    class WithPath:
        where: Path = Path("runs/x")  # not JSON: written as its string, as to_dict writes it
    assert field_defaults(WithPath) == {"where": "runs/x"}
    config = ReaderTrainingConfig(output_dir=str(tmp_path), data=["x.json"])
    old = config.to_dict()
    del old["dev_fraction"]  # a run made before the field existed
    (tmp_path / "train_config.json").write_text(json.dumps({"extra": {"config": old}}))
    assert run_differences(config) == []
    assert run_differences(ReaderTrainingConfig(output_dir=str(tmp_path), data=["x.json"], dev_fraction=0.1)) == [
        "dev_fraction"]
    assert run_differences(ReaderTrainingConfig(output_dir=str(tmp_path), data=["y.json"])) == ["data"]
    carried = config.loop_config("reader").extra["config_defaults"]  # what the loop's resume check reads
    assert carried["dev_fraction"] == 0.0 and not any(k.startswith("train.") for k in carried)

def test_nested_settings_benign_leaves_and_the_refusal_names_them(tmp_path):
    """A benign setting nested in a recipe's config (``extra.config.output_dir``) may change on resume; a changed
    nested setting is named in the refusal with its leaf for --allow-config-change; the resume is logged."""
    import logging

    stored = {"lr": 1.0, "extra": {"config": {"output_dir": "a", "device": "cpu", "scale": 1.0}}}
    moved = {"lr": 1.0, "extra": {"config": {"output_dir": "b", "device": "cuda", "scale": 1.0}}}
    assert config_changes(stored, moved) == []  # benign by its leaf's name, however deep
    out = tmp_path / "run"
    train(Model(), DATA, collate, loss_fn, cfg(out, extra={"data": {"path": "a"}, "config": {"scale": 1.0}}),
          stop_after=3)
    changed = cfg(out, resume=True, extra={"data": {"path": "b"}, "config": {"scale": 2.0}})
    with pytest.raises(ConfigError, match=r"other settings \(scale, extra\.data\.path\); .*"
                                          r"\(--allow-config-change scale path\)"):
        train(Model(), DATA, collate, loss_fn, changed)
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    reprlab_logger = logging.getLogger("reprlab")
    reprlab_logger.addHandler(handler)
    level = reprlab_logger.level
    reprlab_logger.setLevel(logging.INFO)
    try:
        state = train(Model(), DATA, collate, loss_fn,
                      cfg(out, resume=True, extra={"data": {"path": "b"}, "config": {"scale": 2.0}},
                          allow_config_change=("path", "scale")))
    finally:
        reprlab_logger.removeHandler(handler)
        reprlab_logger.setLevel(level)
    assert state.step == 6
    assert f"resumed from {out / 'checkpoints' / 'checkpoint-00000002'} at step 2" in [r.getMessage() for r in records]


def test_an_old_checkpoint_that_cannot_be_removed_does_not_stop_the_save(tmp_path):
    """Removing checkpoints beyond keep_checkpoints is best effort: one that cannot be removed (here a symbolic link,
    which rmtree refuses) stays, and the new checkpoint is saved all the same."""
    from reprlab.train.checkpoint import save_checkpoint
    from reprlab.train.loop import TrainState

    out = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trainer_state.json").write_text("{}")
    (out / "checkpoints").mkdir(parents=True)
    link = out / "checkpoints" / "checkpoint-00000001"
    link.symlink_to(elsewhere, target_is_directory=True)
    model = Model()
    opt = default_optimizer(model, cfg(out))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    folder = save_checkpoint(TrainState(step=5, output_dir=out), model, opt, sched, [], cfg(out, keep_checkpoints=1))
    assert folder == out / "checkpoints" / "checkpoint-00000005" and read_state(folder)["step"] == 5
    assert link.is_symlink() and (elsewhere / "trainer_state.json").is_file()


def test_checkpoint_time_is_due_at_the_minute_and_rank_0_decides(monkeypatch):
    """Due once checkpoint_minutes have passed, the boundary included; in a multi-process run every rank takes rank
    0's verdict (its clock), broadcast from rank 0: here a stand-in 2-rank world in which this process is rank 1,
    whose own clock says not yet, and rank 0's says due."""
    import reprlab.train.loop as loop

    state = loop.TrainState(step=3)
    one = cfg("x", checkpoint_every=0, checkpoint_minutes=1)
    monkeypatch.setattr(loop.time, "time", lambda: 1000.0)
    assert loop._checkpoint_due(one, state, 940.0)  # exactly 60 s: due
    verdicts = {0: 1.0, 1: 0.0}  # each rank's own clock: rank 0 due, rank 1 (this process) not

    def broadcast(tensor, src, group=None, async_op=False):
        tensor.fill_(verdicts[src])

    monkeypatch.setattr(loop.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(loop.dist, "broadcast", broadcast)
    assert loop._checkpoint_due(one, state, 999.0)  # 1 s on this rank's clock, but rank 0 decides
