"""Mutation testing of the core mechanisms: does a test fail when the code is broken?

For each core module, mutmut (https://github.com/boxed/mutmut, the ``dev`` extra) makes small changes to
the code one at a time (an operator flipped, a constant changed, an argument dropped, a line deleted) and
runs the module's own tests against each; a mutant is *killed* when a test fails. The score is the share
killed. Survivors are listed per module in the JSON, with their diffs, to be killed by a new test or
explained (an equivalent mutant: a change that computes the same thing, e.g. a different epsilon that no
input reaches, or an error message's wording).

Each module runs in a fresh copy of the repository (``git archive`` of HEAD plus the working tree's
``src`` and ``tests``), so nothing here touches the checkout. Where a file holds more than the mechanism
(configs, I/O, printing), only the functions named in ``MODULES`` are mutated: the copy marks the others
with mutmut's ``# pragma: no mutate block``.

mutmut runs, for each mutant, the tests that called the mutated function in-process while it collected
its statistics; a function called only in child processes (DDP ranks started with ``mp.spawn``) would get
no test at all. Those mutants get a second pass against every selected test of their module. A mutant
left with no test counts as surviving.

    python bench/mutation.py                          # every module (about an hour on 2 cores)
    python bench/mutation.py --modules ckd kd         # some of them
    python bench/mutation.py --quick                  # one small module, a few mutants: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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
    "training-loop": (["train/loop.py", "train/checkpoint.py"],
                      ["tests/train/test_loop.py", "tests/train/test_checkpoint.py"],
                      ["_epoch_order", "_start", "_checkpoint_due", "train", "flatten", "unflatten", "rng_state",
                       "set_rng_state", "list_checkpoints", "save_checkpoint", "read_state", "load_checkpoint",
                       "_leaves", "comparable", "config_changes", "trim_metrics"]),
}
NO_MUTATE = "# pragma: no mutate block"

MD_HEAD = """## Mutation testing of the core mechanisms

Does a test fail when the code of a mechanism is broken? mutmut 3 changes one thing at a time in each module
(an operator, a constant, an argument, a call's result) and runs the module's tests; a mutant is *killed* when a
test fails. *Score* = killed / all mutants (a mutant no test reaches counts as surviving); the last column also
counts the survivors shown below to be equivalent (they compute the same thing on every input the code can get,
or change only an error message's wording). Each remaining survivor is listed with the reason it is left.

Command: `{command}` (under the shared lock; a module runs in a fresh copy of the repository). Date: {date}.
Machine: {machine_line}. JSON: `bench/results/mutation.json` (every survivor's diff)."""

# Surviving mutants that compute the same thing as the original on every input the code can get (or differ only in
# an error message's wording): mutant name -> why. mutmut numbers mutants per function in source order, so the names
# hold as long as the mutated code does not change; a name whose diff no longer matches is reported unclassified.
EQUIVALENT: dict[str, str] = {}
# Survivors that are not equivalent but are left, with the reason (e.g. a retry bound no test input reaches).
LEFT: dict[str, str] = {}

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
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    for part in ("src", "tests"):  # the working tree's code, committed or not
        shutil.rmtree(workdir / part)
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


def _statuses(mutmut: list[str], work: Path, env: dict) -> dict[str, str]:
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"^\s*(\S+): (\w[\w ]*)$", out, re.M))


def _second_pass(mutmut: list[str], work: Path, env: dict, untested: list[str], children: int) -> None:
    """Give the mutants of functions no test called in-process every selected test, and run them again."""
    stats_path = work / "mutants" / "mutmut-stats.json"
    stats = json.loads(stats_path.read_text())
    every_test = sorted(stats["duration_by_test"])
    for mutant in untested:
        stats["tests_by_mangled_function_name"][mutant.rsplit("__mutmut_", 1)[0]] = every_test
    stats_path.write_text(json.dumps(stats, indent=4))
    subprocess.run([*mutmut, "run", "--max-children", str(children), *untested], cwd=work, env=env,
                   capture_output=True, text=True, timeout=4 * 3600)


def run_module(name: str, children: int) -> dict:
    sources, tests, scope = MODULES[name]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp:
        work = Path(tmp)
        prepare(work, sources, tests, scope)
        env = {**os.environ, "PYTHONPATH": "src"}  # the mutated copy, not the installed package
        mutmut = [sys.executable, "-m", "mutmut"]
        t0 = time.time()
        subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work, env=env, capture_output=True,
                       text=True, timeout=4 * 3600)
        status = _statuses(mutmut, work, env)
        untested = sorted(k for k, v in status.items() if v == "no tests")
        if untested:
            _second_pass(mutmut, work, env, untested, children)
            status = _statuses(mutmut, work, env)
        seconds = time.time() - t0
        survivors = sorted(k for k, v in status.items() if v not in ("killed", "timeout"))
        diffs = {}
        for mutant in survivors:
            shown = subprocess.run([*mutmut, "show", mutant], cwd=work, env=env, capture_output=True, text=True)
            diffs[mutant] = "\n".join(line for line in shown.stdout.splitlines() if line.startswith(("+", "-"))
                                      and not line.startswith(("+++", "---")))
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    return classify({"module": name, "sources": sources, "tests": tests, "functions": scope, "mutants": len(status),
                     "counts": counts, "second_pass": len(untested), "killed": killed, "seconds": round(seconds, 1),
                     "survivors": {k: {"status": status[k], "diff": diffs[k]} for k in survivors}})


def classify(row: dict) -> dict:
    """Mark the survivors named in EQUIVALENT / LEFT; scores with and without the equivalent ones."""
    for name, survivor in row["survivors"].items():
        survivor["equivalent"] = EQUIVALENT.get(name)
        survivor["left"] = LEFT.get(name)
    equivalent = sum(1 for s in row["survivors"].values() if s["equivalent"])
    n, killed = row["mutants"], row["killed"]
    row["equivalent"] = equivalent
    row["score"] = round(killed / n, 4) if n else None
    row["score_equivalent_as_killed"] = round((killed + equivalent) / n, 4) if n else None
    return row


def short_name(mutant: str) -> str:
    """``reprlab.distill.kd.x\u01c1KDLoss\u01c1forward__mutmut_3`` -> ``KDLoss.forward #3``."""
    base, number = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)
    base = base[2:].replace("\u01c1", ".") if base.startswith("x\u01c1") else base[2:]
    return f"{base} #{number}"


def markdown(record: dict) -> str:
    """The results as the BENCHMARKS section: the table, then each module's remaining survivors with the reason."""
    out = [MD_HEAD.format(**record, machine_line=record["machine"] if isinstance(record["machine"], str)
                          else json.dumps(record["machine"])), "",
           "| module | mutants | killed | survived | equivalent | score | score, equivalent as killed |",
           "|---|---|---|---|---|---|---|"]
    for r in record["modules"]:
        out.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['mutants'] - r['killed']} | "
                   f"{r['equivalent']} | {r['score']:.1%} | {r['score_equivalent_as_killed']:.1%} |")
    for r in record["modules"]:
        scope = ", ".join(f"`{f}`" for f in r["functions"]) if r["functions"] else "all functions"
        out += ["", f"### {r['module']}", "",
                f"Mutated: {', '.join('`src/reprlab/' + s + '`' for s in r['sources'])} ({scope}); tests: "
                f"{', '.join('`' + t + '`' for t in r['tests'])}; {r['seconds'] / 60:.0f} min.", ""]
        if not r["survivors"]:
            out.append("No survivor.")
        for name, s in r["survivors"].items():
            change = " / ".join(line[1:].strip() for line in s["diff"].splitlines() if line.startswith("+"))
            why = (f"equivalent: {s['equivalent']}" if s["equivalent"] else
                   f"left: {s['left']}" if s["left"] else "NOT CLASSIFIED")
            out.append(f"- `{short_name(name)}` ({s['status']}): `{change[:150]}` -- {why}")
    return "\n".join(out) + "\n"

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.bench_options(device=None, append=False)])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=sorted(MODULES))
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default: 2)")
    parser.add_argument("--markdown", action="store_true",
                        help="only rewrite the .md of --output from its JSON with the current EQUIVALENT / LEFT notes")
    args = common.parse(parser, argv)
    modules = ["kd"] if args.quick else args.modules  # a quick run: one small module, a few minutes
    output = common.result_path("mutation", args)
    if args.markdown:
        record = json.loads(output.read_text())
        record["modules"] = [classify(r) for r in record["modules"]]
    else:
        rows = []
        for name in modules:
            row = run_module(name, args.children)
            rows.append(row)
            print(f"{name:16s} {row['counts']} score {row['score']} ({row['seconds']} s)", flush=True)
        record = common.write_result("mutation", {"modules": rows}, args, argv)
    text = markdown(record)
    output.with_suffix(".md").write_text(text)
    print(text)
    print(f"-> {output}, {output.with_suffix('.md')}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
