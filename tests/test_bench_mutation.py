"""bench/mutation.py's parallel runs: per-module parts, time limits, the merge that rebuilds the result elsewhere."""

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
try:
    import mutation
finally:
    sys.path.remove(str(REPO / "bench"))


def fake_row(name, mutants=10, checked=10, killed=8, finished=True, survivor="x\u01c1f__mutmut_1"):
    counts = {"killed": killed, "survived": checked - killed}
    if checked < mutants:
        counts["not checked"] = mutants - checked
    sources, tests, scope = mutation.MODULES[name]
    return mutation.classify({
        "module": name, "sources": sources, "tests": tests, "functions": scope, "mutants": mutants,
        "checked": checked, "finished": finished, "limit_s": 100.0, "children": 2, "counts": counts,
        "second_pass": 0, "killed": killed, "seconds": 50.0,
        "survivors": {f"reprlab.m.{survivor}": {"status": "survived", "diff": "-a = 1\n+a = 2"}}})


def test_parallel_run_writes_parts_and_merge_rebuilds_the_result(tmp_path, monkeypatch):
    calls = {}

    def run_module(name, children, limit=None, log_path=None):
        calls[name] = (children, limit)
        if name == "seed":
            raise RuntimeError("clean tests failed")
        return fake_row(name, finished=False, checked=4, killed=4) if name == "kd" else fake_row(name)

    monkeypatch.setattr(mutation, "run_module", run_module)
    out = tmp_path / "mutation.json"
    mutation.main(["--modules", "kd", "ckd", "seed", "--jobs", "3", "--processes", "9", "--time-limit", "100",
                   "--output", str(out)])
    parts = tmp_path / "mutation-parts"
    assert sorted(p.name for p in parts.glob("*.json")) == ["ckd.json", "kd.json", "run.json", "seed.json"]
    assert set(calls) == {"kd", "ckd", "seed"} and all(limit == 100 for _, limit in calls.values())
    assert sum(children for children, _ in calls.values()) in range(8, 11)  # --processes shared out
    record = json.loads(out.read_text())
    rows = {r["module"]: r for r in record["modules"]}
    assert [r["module"] for r in record["modules"]] == ["kd", "ckd", "seed"]  # the order asked, not finishing order
    assert rows["kd"]["score"] == 1.0 and rows["ckd"]["score"] == 0.8  # over the checked mutants
    assert "clean tests failed" in rows["seed"]["error"]
    md = out.with_suffix(".md").read_text()
    assert "kd (cut at 50 s: 4 of 10 checked)" in md and "6 mutants not checked" in md
    assert "| seed | no result: RuntimeError: clean tests failed" in md and "Modules without a result: seed" in md

    # the parts alone (as brought back from another machine) give the same record, with that run's command
    run = json.loads((parts / "run.json").read_text())
    run["machine"], run["command"] = "elsewhere: 16 cores", "python bench/mutation.py --jobs 11"
    (parts / "run.json").write_text(json.dumps(run))
    again = tmp_path / "again.json"
    mutation.main(["--merge", "--parts", str(parts), "--output", str(again)])
    merged = json.loads(again.read_text())
    assert merged["modules"] == record["modules"]
    assert merged["machine"] == "elsewhere: 16 cores" and merged["command"] == "python bench/mutation.py --jobs 11"
    assert "Machine: elsewhere: 16 cores" in again.with_suffix(".md").read_text()


def test_merge_names_a_module_whose_part_is_missing(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"machine": "m", "date": "d", "command": "c",
                                                   "modules": ["kd", "ckd"]}))
    (tmp_path / "kd.json").write_text(json.dumps(fake_row("kd")))
    record = mutation.merge(tmp_path)
    assert record["modules"][0]["score"] == 0.8 and "no part" in record["modules"][1]["error"]
    assert "| ckd | no result: no part" in mutation.markdown(record)


def test_a_module_gets_no_start_without_time_left(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "run_module", lambda *a, **k: pytest.fail("started"))
    row = mutation.run_part("kd", 2, tmp_path, limit=300, deadline=time.time() + 30)
    assert "not started" in row["error"] and json.loads((tmp_path / "kd.json").read_text()) == row
    limits = []
    monkeypatch.setattr(mutation, "run_module", lambda name, c, limit, log: limits.append(limit) or {})
    mutation.run_part("kd", 2, tmp_path, limit=300, deadline=time.time() + 120)
    assert 100 < limits[-1] <= 120  # the run's deadline shortens the module's own limit
    mutation.run_part("kd", 2, tmp_path, limit=30, deadline=None)
    assert limits[-1] == 30  # a short limit of its own still runs


def test_children_follow_module_size(monkeypatch):
    mods = ["training-loop", "kd", "metrics"]
    shared = mutation.share_children(mods, 24, jobs=3)
    weights = {m: mutation.weight(m) for m in mods}
    big, small = max(weights, key=weights.get), min(weights, key=weights.get)
    assert shared[big] > shared[small] >= 1 and abs(sum(shared.values()) - 24) <= 3
    assert mutation.share_children(mods, 24, jobs=2) == {m: 12 for m in mods}  # queued: equal shares
    monkeypatch.setitem(mutation.MODULES, "new", (["distill/kd.py"], ["tests/distill/test_kd.py"], ["KDLoss"]))
    lines = len((REPO / "src/reprlab/distill/kd.py").read_text().splitlines())
    assert 10 < mutation.weight("new") < lines  # not measured: the lines of the named functions


def test_mutmut_env_puts_the_copy_first_and_drops_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", str(REPO / "src"), str(REPO / "bench")]))
    env = mutation._env()
    assert env["PYTHONPATH"].split(os.pathsep) == ["src", "/tmp/site"]
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"


def test_time_limit_interrupts_mutmut_and_keeps_what_it_saved(tmp_path):
    """A stand-in ``mutmut`` that saves a verdict per step and handles Ctrl-C as mutmut does."""
    (tmp_path / "fake" / "mutmut").mkdir(parents=True)
    (tmp_path / "fake" / "mutmut" / "__init__.py").write_text("")
    (tmp_path / "fake" / "mutmut" / "__main__.py").write_text(textwrap.dedent("""
        import time
        from pathlib import Path
        try:
            for i in range(1000):
                Path(f"verdict{i}").write_text("killed")
                time.sleep(0.1)
        except KeyboardInterrupt:
            Path("stopped").write_text("ctrl-c")
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    with open(tmp_path / "log", "w") as log:
        t0 = time.time()
        finished = mutation._mutmut(["run"], tmp_path, env, log, deadline=time.time() + 2)
    assert not finished and time.time() - t0 < 20
    assert (tmp_path / "stopped").read_text() == "ctrl-c" and len(list(tmp_path.glob("verdict*"))) >= 5
    with open(tmp_path / "log", "w") as log:
        (tmp_path / "fake" / "mutmut" / "__main__.py").write_text("")
        assert mutation._mutmut(["run"], tmp_path, env, log, deadline=time.time() + 30)


def test_the_copy_needs_no_git(tmp_path, monkeypatch):
    """The GPU machine gets the working tree without .git: the copy is made from files alone."""
    pytest.importorskip("libcst", reason="marking functions out of scope needs libcst (mutmut's, the dev extra)")
    real_run = mutation.subprocess.run
    monkeypatch.setattr(mutation.subprocess, "run", lambda cmd, *a, **k: pytest.fail(f"ran {cmd}")
                        if cmd[0] == "git" else real_run(cmd, *a, **k))
    mutation.prepare(tmp_path, ["train/loop.py"], ["tests/train/test_loop.py"], ["train"])
    config = (tmp_path / "pyproject.toml").read_text()
    assert '[tool.mutmut]' in config and 'only_mutate = ["src/reprlab/train/loop.py"]' in config
    assert (tmp_path / "tests" / "conftest.py").is_file() and not (tmp_path / ".git").exists()
    marked = (tmp_path / "src" / "reprlab" / "train" / "loop.py").read_text()
    assert "def train(" in marked and mutation.NO_MUTATE in marked  # the other functions are out of scope


def test_sigterm_stops_the_mutmut_runs(tmp_path):
    """An outer ``timeout`` must not leave mutmut runs (in sessions of their own) burning the machine's cores."""
    (tmp_path / "fake" / "mutmut").mkdir(parents=True)
    (tmp_path / "fake" / "mutmut" / "__init__.py").write_text("")
    (tmp_path / "fake" / "mutmut" / "__main__.py").write_text(
        "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    driver = textwrap.dedent(f"""
        import os, signal, sys, threading, time
        sys.path.insert(0, {str(REPO / "bench")!r})
        import mutation
        signal.signal(signal.SIGTERM, mutation._stop_all)
        env = {{**os.environ, "PYTHONPATH": {str(tmp_path / "fake")!r}}}
        threading.Thread(target=mutation._mutmut, args=(["run"], {str(tmp_path)!r}, env, None, None), daemon=True).start()
        time.sleep(60)
    """)
    import subprocess
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench")])}
    proc = subprocess.Popen([sys.executable, "-c", driver], env=env)
    for _ in range(100):
        if (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text():
            break
        time.sleep(0.1)
    child = int((tmp_path / "pid").read_text())
    proc.terminate()
    assert proc.wait(timeout=20) == 128 + 15
    time.sleep(0.5)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # gone, or a zombie nobody reaped yet


def test_notes_of_an_assembled_run_reach_the_markdown(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"machine": "m", "date": "d", "command": "a; b", "modules": ["kd"],
                                                   "notes": ["kd comes from run b"]}))
    (tmp_path / "kd.json").write_text(json.dumps(fake_row("kd")))
    record = mutation.merge(tmp_path)
    assert record["notes"] == ["kd comes from run b"]
    text = mutation.markdown(record)
    assert "\n- kd comes from run b\n" in text and text.index("kd comes") < text.index("### kd")
    (tmp_path / "run.json").write_text(json.dumps({"machine": "m", "date": "d", "command": "c", "modules": ["kd"]}))
    assert "notes" not in mutation.merge(tmp_path)


def test_a_survivor_killed_by_a_later_test_is_counted_apart(monkeypatch):
    monkeypatch.setattr(mutation, "KILLED_AFTER", {"reprlab.m.x\u01c1f__mutmut_1": "tests/x.py::test_f"})
    row = fake_row("kd")  # 10 checked, 8 killed, the survivor named above
    assert row["killed_after"] == 1 and row["score"] == 0.8 and row["score_with_new_tests"] == 0.9
    text = mutation.markdown({"machine": "m", "date": "d", "command": "c", "modules": [row]})
    assert "| 1 | 90.0% |" in text and "killed after the run by `tests/x.py::test_f`" in text
