"""Mutation testing of the core mechanisms: does a test fail when the code is broken?

For each core module, mutmut (https://github.com/boxed/mutmut, the ``dev`` extra) makes small changes to
the code one at a time (an operator flipped, a constant changed, an argument dropped, a line deleted) and
runs the module's own tests against each; a mutant is *killed* when a test fails. The score is the share
killed. Survivors are listed per module in the JSON, with their diffs, to be killed by a new test or
explained (an equivalent mutant: a change that computes the same thing, e.g. a different epsilon that no
input reaches, or an error message's wording).

Each module runs in a fresh copy of the repository (its top-level files and the working tree's ``src`` and
``tests``; no git needed), so nothing here touches the checkout. Where a file holds more than the mechanism
(configs, I/O, printing), only the functions named in ``MODULES`` are mutated: the copy marks the others
with mutmut's ``# pragma: no mutate block``.

mutmut runs, for each mutant, the tests that called the mutated function in-process while it collected
its statistics; a function called only in child processes (DDP ranks started with ``mp.spawn``) would get
no test at all. Those mutants get a second pass against every selected test of their module. A mutant
left with no test counts as surviving.

On many cores, ``--jobs N`` runs N modules at once, each its own copy and mutmut process, with mutmut's
``--max-children`` shared out by module size (``--processes`` in all). Each module writes its part
(``<output>-parts/<module>.json`` and its mutmut log) as it ends; ``--time-limit`` stops a module after so many
seconds (the mutants it checked keep their verdicts, the rest are reported as not checked) and ``--deadline``
bounds the whole run. ``--merge`` builds the JSON and markdown from a parts folder, e.g. one brought back from
another machine. Every test process runs with one thread and no GPU.

    python bench/mutation.py                          # every module (about an hour on 2 cores)
    python bench/mutation.py --modules ckd kd         # some of them
    python bench/mutation.py --quick                  # one small module, a few mutants: a smoke run
    python bench/mutation.py --jobs 11 --time-limit 330 --deadline 340   # all at once on a 16-core machine
    python bench/mutation.py --merge --parts DIR      # the JSON and .md from another run's parts
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import common

REPO = common.REPO
# module -> (source files mutated, tests that defend them, functions mutated: None = all of the files)
MODULES = {
    "metrics": (["retrieval/metrics.py"], ["tests/retrieval/test_metrics.py"], None),
    "losses": (["retrieval/losses.py"], ["tests/retrieval/test_losses.py"], None),
    "ance-negatives": (["retrieval/ance/recipe.py", "retrieval/ance/refresher.py"], ["tests/retrieval/test_ance.py"],
                       ["AnceCollate.__call__", "ance_loss", "AnceNegatives.load", "IndexRefresher.state_dict",
                        "IndexRefresher.load_state_dict", "IndexRefresher._receive", "IndexRefresher.on_train_start",
                        "IndexRefresher.on_step_end"]),
    "mdr-beam-search": (["retrieval/mdr/search.py"], ["tests/retrieval/test_mdr.py"],
                        ["Chain.score", "rank_chains", "SparseFusion.__post_init__", "multihop_search",
                         "chains_from_ranking"]),
    "ckd": (["distill/ckd.py"], ["tests/distill/test_ckd.py"], None),
    "kd": (["distill/kd.py"], ["tests/distill/test_kd.py"], None),
    "seed": (["distill/seed.py"], ["tests/distill/test_seed.py"], None),
    "hashing": (["retrieval/hashing.py"], ["tests/retrieval/test_hashing.py"], None),
    "masking": (["pretrain/masking.py"], ["tests/pretrain/test_masking.py"], None),
    "block-skim": (["qa/block_skim.py"], ["tests/qa/test_block_skim.py"],
                   ["context_blocks", "diagonal_blocks", "question_attention", "block_labels", "_compact",
                    "BlockSkimReader._block_logits", "BlockSkimReader.skim_forward"]),
    # the loop's resume mechanism: what saves, finds, checks and restores a run's state (the step body of ``train``
    # itself, 270 more mutants, is left out: 805 mutants at ~2 CPU-s each do not fit a 2-core lock budget)
    "training-loop": (["train/loop.py", "train/checkpoint.py"],
                      ["tests/train/test_loop.py", "tests/train/test_checkpoint.py"],
                      ["_epoch_order", "_start", "_checkpoint_due", "flatten", "unflatten", "rng_state",
                       "set_rng_state", "list_checkpoints", "save_checkpoint", "read_state", "load_checkpoint",
                       "leaves", "comparable", "field_defaults", "config_changes", "trim_metrics"]),
}
NO_MUTATE = "# pragma: no mutate block"

MD_HEAD = """## Mutation testing of the core mechanisms

Does a test fail when the code of a mechanism is broken? mutmut 3 changes one thing at a time in each module
(an operator, a constant, an argument, a call's result) and runs the module's tests; a mutant is *killed* when a
test fails. *Score* = killed / all mutants (a mutant no test reaches counts as surviving); the next column also
counts the survivors shown below to be equivalent (they compute the same thing on every input the code can get,
or change only an error message's wording); the last two count the survivors that a test written after the run
kills (checked by hand, not yet by a re-run) and the score with those and the equivalent ones. Each remaining
survivor is listed with the reason it is left.

Command: `{command}` ({how}; a module runs in a fresh copy of the repository). Date: {date}.
Machine: {machine_line}. JSON: `bench/results/mutation.json` (every survivor's diff)."""

from mutation_notes import EQUIVALENT, KILLED_AFTER, LEFT  # noqa: E402  (the notes on survivors)


def mark_out_of_scope(path: Path, keep: list[str]) -> None:
    """Put mutmut's no-mutate pragma on every function of ``path`` (a copy) not named in ``keep``.

    Names are qualified (``Class.method``); a function nested in a kept one is kept with it.
    """
    import libcst as cst  # a dependency of mutmut

    class Mark(cst.CSTTransformer):
        def __init__(self):
            self.stack: list[str] = []

        def visit_ClassDef(self, node):
            self.stack.append(node.name.value)

        def leave_ClassDef(self, original, updated):
            self.stack.pop()
            return updated

        def visit_FunctionDef(self, node):
            self.stack.append(node.name.value)

        def leave_FunctionDef(self, original, updated):
            name = ".".join(self.stack)
            self.stack.pop()
            kept = any(name == k or name.startswith(k + ".") for k in keep)
            if kept or not isinstance(updated.body, cst.IndentedBlock):
                return updated
            header = cst.TrailingWhitespace(whitespace=cst.SimpleWhitespace("  "), comment=cst.Comment(NO_MUTATE))
            return updated.with_changes(body=updated.body.with_changes(header=header))

    tree = cst.parse_module(path.read_text())
    path.write_text(tree.visit(Mark()).code)


def prepare(workdir: Path, sources: list[str], tests: list[str], scope: list[str] | None = None) -> None:
    """A copy of the repository whose pyproject.toml tells mutmut what to mutate and which tests to run."""
    for path in REPO.iterdir():  # the top-level files (pyproject.toml...): no git needed, a bare copy will do
        if path.is_file() and path.name != ".git":  # (a worktree's .git is a file)
            shutil.copy2(path, workdir / path.name)
    for part in ("src", "tests"):  # the working tree's code, committed or not
        shutil.copytree(REPO / part, workdir / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if scope is not None:
        for source in sources:
            mark_out_of_scope(workdir / "src" / "reprlab" / source, scope)
    config = "\n".join([
        "", "[tool.mutmut]", 'source_paths = ["src/reprlab"]',
        f"only_mutate = {[f'src/reprlab/{s}' for s in sources]!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]', 'process_isolation = "forkserver"', ""])
    with open(workdir / "pyproject.toml", "a") as f:
        f.write(config)


def _env() -> dict:
    """A module's mutmut environment: the mutated copy's ``src`` first, then the rest of PYTHONPATH (where a machine
    without an install carries mutmut and its wheels) without this checkout's ``src``/``bench``; no GPU (a forked
    child must not touch CUDA, and another job may hold it) and one thread per process (many run at once)."""
    ours = {(REPO / "src").resolve(), (REPO / "bench").resolve()}
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() not in ours]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(["src", *rest]), "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _mutmut(args: list[str], work: Path, env: dict, log, deadline: float | None) -> bool:
    """Run ``mutmut ARGS`` in ``work``; at ``deadline`` interrupt it (mutmut saves each verdict as it comes, so the
    mutants checked so far keep theirs). True when it finished on its own."""
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", *args], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)
    RUNNING.add(proc.pid)
    try:
        proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
        return True
    except subprocess.TimeoutExpired:  # Ctrl-C to mutmut alone: it stops its workers, registers nothing more
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of its process group (workers, the forkserver)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return False
    finally:
        RUNNING.discard(proc.pid)


RUNNING: set[int] = set()  # process groups of the mutmut runs under way


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default. A shell starts background jobs with SIGINT ignored,
    and Python keeps an ignored SIGINT ignored, so the Ctrl-C that stops mutmut at the deadline would not reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_all(signum, frame) -> None:
    """On SIGTERM (e.g. an outer ``timeout``): kill every mutmut run's process group (they are in sessions of their
    own, so nothing else would stop them), then exit; the modules that ended have their parts already."""
    for pgid in list(RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(128 + signum)


def _statuses(work: Path, env: dict) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                         capture_output=True, text=True).stdout
    return dict(re.findall(r"^\s*(\S+): (\w[\w ]*)$", out, re.M))


def _give_every_test(work: Path, untested: list[str]) -> None:
    """The mutants of functions no test called in-process get every selected test (for the second pass)."""
    stats_path = work / "mutants" / "mutmut-stats.json"
    stats = json.loads(stats_path.read_text())
    every_test = sorted(stats["duration_by_test"])
    for mutant in untested:
        stats["tests_by_mangled_function_name"][mutant.rsplit("__mutmut_", 1)[0]] = every_test
    stats_path.write_text(json.dumps(stats, indent=4))


SHOW = """import contextlib, io, json, sys
from mutmut.__main__ import cli
out = {}
for name in json.load(sys.stdin):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli.main(["show", name], standalone_mode=False)
        except SystemExit:
            pass
    out[name] = buf.getvalue()
print("\\nDIFFS " + json.dumps(out))
"""


def _diffs(work: Path, env: dict, names: list[str]) -> dict[str, str]:
    """``mutmut show`` of each mutant, in one process (one per mutant costs a second each): the changed lines."""
    if not names:
        return {}
    shown = subprocess.run([sys.executable, "-c", SHOW], cwd=work, env=env, input=json.dumps(names),
                           capture_output=True, text=True, timeout=600)
    out = json.loads(shown.stdout.rsplit("\nDIFFS ", 1)[1]) if "\nDIFFS " in shown.stdout else {}
    return {name: "\n".join(line for line in out.get(name, "").splitlines() if line.startswith(("+", "-"))
                            and not line.startswith(("+++", "---"))) for name in names}


def run_module(name: str, children: int, limit: float | None = None, log_path: Path | None = None) -> dict:
    """One module's mutation run in a fresh copy; stopped ``limit`` seconds after it starts (then the mutants not
    reached are counted apart as ``not checked``, and the score is over the checked ones)."""
    sources, tests, scope = MODULES[name]
    t0 = time.time()
    deadline = None if limit is None else t0 + limit
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp, \
            open(log_path or os.devnull, "w") as log:
        work = Path(tmp)
        prepare(work, sources, tests, scope)
        env = _env()  # the mutated copy, not the installed package
        finished = _mutmut(["run", "--max-children", str(children)], work, env, log, deadline)
        status = _statuses(work, env)
        untested = sorted(k for k, v in status.items() if v == "no tests")
        if untested and finished:  # second pass: functions reached only in child processes (mp.spawn)
            _give_every_test(work, untested)
            finished = _mutmut(["run", "--max-children", str(children), *untested], work, env, log, deadline)
            status = _statuses(work, env)
        seconds = time.time() - t0
        survivors = sorted(k for k, v in status.items() if v not in ("killed", "timeout", "not checked"))
        diffs = _diffs(work, env, survivors)
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    return classify({"module": name, "sources": sources, "tests": tests, "functions": scope, "mutants": len(status),
                     "checked": len(status) - counts.get("not checked", 0), "finished": finished,
                     "limit_s": limit, "children": children, "counts": counts, "second_pass": len(untested),
                     "killed": killed, "seconds": round(seconds, 1),
                     "survivors": {k: {"status": status[k], "diff": diffs[k]} for k in survivors}})


def classify(row: dict) -> dict:
    """Mark the survivors named in EQUIVALENT / LEFT; scores with and without the equivalent ones, over the mutants
    checked (all of them, unless the module's time limit cut it)."""
    if "error" in row:  # a module that did not run to a result (crashed, or no time left to start it)
        return row
    for name, survivor in row["survivors"].items():
        survivor["equivalent"] = EQUIVALENT.get(name)
        survivor["left"] = LEFT.get(name)
        survivor["killed_after"] = KILLED_AFTER.get(name)
    equivalent = sum(1 for s in row["survivors"].values() if s["equivalent"])
    after = sum(1 for s in row["survivors"].values() if s["killed_after"] and not s["equivalent"])
    n, killed = row.get("checked", row["mutants"]), row["killed"]
    row["equivalent"] = equivalent
    row["killed_after"] = after
    row["score"] = round(killed / n, 4) if n else None
    row["score_equivalent_as_killed"] = round((killed + equivalent) / n, 4) if n else None
    row["score_with_new_tests"] = round((killed + equivalent + after) / n, 4) if n else None
    return row


def short_name(mutant: str) -> str:
    """``reprlab.distill.kd.x\u01c1KDLoss\u01c1forward__mutmut_3`` -> ``KDLoss.forward #3``."""
    base, number = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)
    base = base[2:].replace("\u01c1", ".") if base.startswith("x\u01c1") else base[2:]
    return f"{base} #{number}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def markdown(record: dict) -> str:
    """The results as the BENCHMARKS section: the table, then each module's remaining survivors with the reason.

    A module cut by its time limit shows how far it got (its score is over the mutants it checked); one that gave
    no result (crashed, or not started for lack of time) is named with the reason."""
    jobs = min(record.get("settings", {}).get("jobs", 1), len(record["modules"]))
    how = ("under the shared lock" if jobs == 1 else
           f"{jobs} modules at once, each test process on one thread; mutmut runs the quickest-tested mutants first, "
           "so those a time limit leaves unchecked are the slow ones")
    out = [MD_HEAD.format(**record, how=how, machine_line=record["machine"] if isinstance(record["machine"], str)
                          else json.dumps(record["machine"])), "",
           "| module | mutants | killed | survived | equivalent | score | score, equivalent as killed | "
           "killed by a test written after the run | score with those and the equivalent |",
           "|---|---|---|---|---|---|---|---|---|"]
    missing = [r for r in record["modules"] if "error" in r]
    for r in record["modules"]:
        if "error" in r:
            out.append(f"| {r['module']} | no result: {r['error'].splitlines()[-1][:100]} | | | | | | | |")
            continue
        checked = r.get("checked", r["mutants"])
        name = r["module"] if r.get("finished", True) else \
            f"{r['module']} (cut at {r['seconds']:.0f} s: {checked} of {r['mutants']} checked)"
        out.append(f"| {name} | {checked} | {r['killed']} | {checked - r['killed']} | "
                   f"{r['equivalent']} | {_pct(r['score'])} | {_pct(r['score_equivalent_as_killed'])} | "
                   f"{r.get('killed_after', 0)} | {_pct(r.get('score_with_new_tests', r['score_equivalent_as_killed']))} |")
    if record.get("notes"):  # how a run assembled from several (e.g. under a lock budget) came together
        out += [""] + [f"- {note}" for note in record["notes"]]
    for r in record["modules"]:
        if "error" in r:
            continue
        scope = ", ".join(f"`{f}`" for f in r["functions"]) if r["functions"] else "all functions"
        out += ["", f"### {r['module']}", "",
                f"Mutated: {', '.join('`src/reprlab/' + s + '`' for s in r['sources'])} ({scope}); tests: "
                f"{', '.join('`' + t + '`' for t in r['tests'])}; {r['seconds'] / 60:.0f} min"
                + ("." if r.get("finished", True) else
                   f", stopped by its {r['limit_s']:.0f} s limit with {r['mutants'] - r['checked']} mutants "
                   "not checked."), ""]
        if not r["survivors"]:
            out.append("No survivor.")
        for name, s in r["survivors"].items():
            change = " / ".join(line[1:].strip() for line in s["diff"].splitlines() if line.startswith("+"))
            why = (f"equivalent: {s['equivalent']}" if s["equivalent"] else
                   f"killed after the run by `{s['killed_after']}`" if s.get("killed_after") else
                   f"left: {s['left']}" if s["left"] else "NOT CLASSIFIED")
            out.append(f"- `{short_name(name)}` ({s['status']}): `{change[:150]}` -- {why}")
    if missing:
        out += ["", "Modules without a result: " + "; ".join(f"{r['module']} ({r['error'].splitlines()[-1]})"
                                                              for r in missing) + "."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- many modules at once, in parts


# Mutants per module (mutmut 3.8.1's generation, 2026-12-04) and the CPU seconds a mutant's tests took on the 2-core
# machine where measured (metrics 40 s for 161 mutants on 2 cores, kd 132 s for 170 while sharing 2 cores with metrics,
# ckd 233 s for 482 on 2, training-loop 95 in its first 100 s on 2; mutmut runs the quickest first, so that one is a
# floor); 1.0 where not measured. Only for sharing out the test processes: a module not listed weighs its line count.
MUTANTS = {"metrics": 161, "losses": 141, "ance-negatives": 183, "mdr-beam-search": 252, "ckd": 482, "kd": 172,
           "seed": 254, "hashing": 135, "masking": 509, "block-skim": 595, "training-loop": 548}
SECONDS_PER_MUTANT = {"metrics": 0.5, "kd": 0.8, "ckd": 1.0, "training-loop": 2.0}


def weight(name: str) -> float:
    """A module's expected CPU seconds (:data:`MUTANTS` x :data:`SECONDS_PER_MUTANT`), or the lines it mutates."""
    if name in MUTANTS:
        return MUTANTS[name] * SECONDS_PER_MUTANT.get(name, 1.0)
    import ast

    sources, _, scope = MODULES[name]
    total = 0
    for source in sources:
        text = (REPO / "src" / "reprlab" / source).read_text()
        if scope is None:
            total += len(text.splitlines())
            continue

        def walk(node, prefix=""):
            nonlocal total
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    walk(child, prefix + child.name + ".")
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(  # as mark_out_of_scope
                        prefix + child.name == k or (prefix + child.name).startswith(k + ".") for k in scope):
                    total += child.end_lineno - child.lineno + 1

        walk(ast.parse(text))
    return max(total, 1)


def share_children(modules: list[str], processes: int, jobs: int) -> dict[str, int]:
    """mutmut's ``--max-children`` per module: when every module runs at once, ``processes`` split by
    :func:`weight` (at least 2 each); otherwise ``processes // jobs`` each. More processes than cores keeps every
    core busy after the small modules end (a mutant's time limit counts CPU seconds, so crowding cannot time it
    out)."""
    if jobs < len(modules):
        return {m: max(1, processes // jobs) for m in modules}
    weights = {m: weight(m) for m in modules}
    total = sum(weights.values())
    return {m: max(2, round(processes * w / total)) for m, w in weights.items()}


def run_part(name: str, children: int, parts: Path, limit: float | None, deadline: float | None) -> dict:
    """Run one module and write ``parts/<name>.json`` (its log beside it); a crash or no time left is a part too."""
    from reprlab.io import atomic_write_json

    left = None if deadline is None else deadline - time.time()
    limit = left if limit is None else limit if left is None else min(limit, left)
    try:
        if left is not None and left < 60:
            raise TimeoutError(f"not started: {max(left, 0):.0f} s left of the run's --deadline")
        row = run_module(name, children, limit, parts / f"{name}.log")
    except Exception as exc:  # one module's failure must not lose the others' results
        row = {"module": name, "error": "".join(traceback.format_exception_only(exc)).strip()}
    atomic_write_json(parts / f"{name}.json", row)
    return row


def run_parts(modules: list[str], parts: Path, jobs: int, children: dict[str, int], limit: float | None,
              deadline: float | None) -> list[dict]:
    """Modules ``jobs`` at a time (the biggest first), each in its own fresh copy and mutmut process."""
    parts.mkdir(parents=True, exist_ok=True)
    order = sorted(modules, key=weight, reverse=True)
    rows = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # the work is in mutmut's processes; threads only wait
        futures = {pool.submit(run_part, m, children[m], parts, limit, deadline): m for m in order}
        for future in as_completed(futures):
            row = future.result()
            rows[row["module"]] = row
            state = row.get("error") or (f"{row['counts']} score {row['score']} ({row['seconds']} s"
                                         + ("" if row["finished"] else ", CUT by the time limit") + ")")
            print(f"[{len(rows)}/{len(order)}] {row['module']:16s} {state}", flush=True)
    return [rows[m] for m in modules]


def merge(parts: Path, modules: list[str] | None = None) -> dict:
    """The record of a run from its parts folder: ``run.json`` (command, machine, date, settings) and one
    ``<module>.json`` per module (a module named in ``run.json`` without its part is reported as having none)."""
    run = json.loads((parts / "run.json").read_text())
    names = modules or run.get("modules") or [m for m in MODULES if (parts / f"{m}.json").is_file()]
    rows = []
    for name in names:
        path = parts / f"{name}.json"
        rows.append(classify(json.loads(path.read_text())) if path.is_file() else
                    {"module": name, "error": "no part: the run stopped before this module wrote its result"})
    return {**{k: run[k] for k in ("machine", "date", "command")}, "settings": run.get("settings", {}),
            **({"notes": run["notes"]} if run.get("notes") else {}), "modules": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.bench_options(device=None, append=False)])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=sorted(MODULES))
    parser.add_argument("--jobs", type=int, default=1, help="modules run at once, each its own mutmut (default 1)")
    parser.add_argument("--children", type=int, default=None,
                        help="mutants tested at once per module (default: with --jobs 1, 2; otherwise --processes "
                             "shared among the modules by their size)")
    parser.add_argument("--processes", type=int, default=None,
                        help="test processes in all, for the default --children (default: 2.5 x the CPU count)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds a module may run; then it stops and reports the mutants it checked")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole run: a module gets at most what is left (none under 60 s)")
    parser.add_argument("--parts", type=Path, default=None,
                        help="folder of the per-module results and logs (default: beside --output, <name>-parts)")
    parser.add_argument("--merge", action="store_true",
                        help="only build the JSON and .md of --output from the --parts folder (e.g. unpacked from "
                             "another machine's run)")
    parser.add_argument("--markdown", action="store_true",
                        help="only rewrite the .md of --output from its JSON with the current EQUIVALENT / LEFT notes")
    args = common.parse(parser, argv)
    modules = ["kd"] if args.quick else args.modules  # a quick run: one small module, a few minutes
    output = common.result_path("mutation", args)
    parts = args.parts or output.with_name(output.stem + "-parts")
    if args.markdown:
        record = json.loads(output.read_text())
        record["modules"] = [classify(r) for r in record["modules"]]
    elif args.merge:
        record = merge(parts)
        common.write_result("mutation", record, args, argv)
    else:
        t0 = time.time()
        processes = args.processes or round(2.5 * (os.cpu_count() or 2))
        children = ({m: args.children for m in modules} if args.children else
                    {m: 2 for m in modules} if args.jobs == 1 else share_children(modules, processes, args.jobs))
        from reprlab.io import atomic_write_json

        parts.mkdir(parents=True, exist_ok=True)
        for stale in parts.glob("*.json"):
            stale.unlink()
        atomic_write_json(parts / "run.json", {**common.stamp(argv), "modules": modules,
                                                "settings": {**common.settings(args), "children": children}})
        print(f"{len(modules)} modules, {args.jobs} at a time; mutmut children {children}", flush=True)
        signal.signal(signal.SIGTERM, _stop_all)
        run_parts(modules, parts, args.jobs, children, args.time_limit,
                  None if args.deadline is None else t0 + args.deadline)
        record = common.write_result("mutation", merge(parts), args, argv)
    text = markdown(record)
    output.with_suffix(".md").write_text(text)
    print(text)
    print(f"-> {output}, {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
