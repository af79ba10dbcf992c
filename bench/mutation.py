"""Mutation testing of the core mechanisms: does a test fail when the code is broken?

For each core module, mutmut (https://github.com/boxed/mutmut, the ``dev`` extra) makes small changes to
the code one at a time (an operator flipped, a constant changed, an argument dropped, a line deleted) and
runs the module's own tests against each; a mutant is *killed* when a test fails. The score is the share
killed. Survivors are listed per module in the JSON, with their diffs, to be killed by a new test or
explained (an equivalent mutant: a change that computes the same thing, e.g. a different epsilon that no
input reaches, or an error message's wording).

Each module runs in a fresh copy of the repository (``git archive`` of HEAD plus the working tree's
``src`` and ``tests``), so nothing here touches the checkout.

    python bench/mutation.py                          # every module (about an hour on 2 cores)
    python bench/mutation.py --modules ckd kd         # some of them
    python bench/mutation.py --quick                  # one small module, a few mutants: a smoke run
"""

from __future__ import annotations

import argparse
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
# module -> (source files mutated, tests that defend them)
MODULES = {
    "metrics": (["retrieval/metrics.py"], ["tests/retrieval/test_metrics.py"]),
    "losses": (["retrieval/losses.py"], ["tests/retrieval/test_losses.py"]),
    "ance-negatives": (["retrieval/ance/recipe.py"], ["tests/retrieval/test_ance.py"]),
    "mdr-beam-search": (["retrieval/mdr/search.py"], ["tests/retrieval/test_mdr.py"]),
    "ckd": (["distill/ckd.py"], ["tests/distill/test_ckd.py"]),
    "kd": (["distill/kd.py"], ["tests/distill/test_kd.py"]),
    "seed": (["distill/seed.py"], ["tests/distill/test_seed.py"]),
    "hashing": (["retrieval/hashing.py"], ["tests/retrieval/test_hashing.py"]),
    "masking": (["pretrain/masking.py"], ["tests/pretrain/test_masking.py"]),
    "block-skim": (["qa/block_skim.py"], ["tests/qa/test_block_skim.py"]),
    "training-loop": (["train/loop.py", "train/checkpoint.py"], ["tests/train/test_loop.py"]),
}


def prepare(workdir: Path, sources: list[str], tests: list[str]) -> None:
    """A copy of the repository whose pyproject.toml tells mutmut what to mutate and which tests to run."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    for part in ("src", "tests"):  # the working tree's code, committed or not
        shutil.rmtree(workdir / part)
        shutil.copytree(REPO / part, workdir / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    config = "\n".join([
        "", "[tool.mutmut]", 'source_paths = ["src/reprlab"]',
        f"only_mutate = {[f'src/reprlab/{s}' for s in sources]!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]', 'process_isolation = "forkserver"', ""])
    with open(workdir / "pyproject.toml", "a") as f:
        f.write(config)


def run_module(name: str, children: int) -> dict:
    sources, tests = MODULES[name]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp:
        work = Path(tmp)
        prepare(work, sources, tests)
        env = {**os.environ, "PYTHONPATH": "src"}  # the mutated copy, not the installed package
        mutmut = [sys.executable, "-m", "mutmut"]
        t0 = time.time()
        subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work, env=env, capture_output=True,
                       text=True, timeout=4 * 3600)
        seconds = time.time() - t0
        out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True).stdout
        status = dict(re.findall(r"^\s*(\S+): (\w[\w ]*)$", out, re.M))
        survivors = sorted(k for k, v in status.items() if v == "survived")
        diffs = {}
        for mutant in survivors:
            shown = subprocess.run([*mutmut, "show", mutant], cwd=work, env=env, capture_output=True, text=True)
            diffs[mutant] = "\n".join(line for line in shown.stdout.splitlines() if line.startswith(("+", "-"))
                                      and not line.startswith(("+++", "---")))
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    tested = sum(v for k, v in counts.items() if k in ("killed", "survived", "timeout"))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    return {"module": name, "sources": sources, "tests": tests, "mutants": len(status), "counts": counts,
            "score": round(killed / tested, 4) if tested else None, "seconds": round(seconds, 1),
            "survivors": diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.bench_options(device=None, append=False)])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=sorted(MODULES))
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default: 2)")
    args = common.parse(parser, argv)
    modules = ["kd"] if args.quick else args.modules  # a quick run: one small module, a few minutes
    rows = []
    for name in modules:
        row = run_module(name, args.children)
        rows.append(row)
        print(f"{name:16s} {row['counts']} score {row['score']} ({row['seconds']} s)", flush=True)
    common.write_result("mutation", {"modules": rows}, args, argv)
    print("\n| module | mutants | killed | survived | score |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['module']} | {r['mutants']} | {r['counts'].get('killed', 0)} | "
              f"{r['counts'].get('survived', 0)} | {r['score']:.1%} |" if r["score"] is not None else
              f"| {r['module']} | {r['mutants']} | - | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
