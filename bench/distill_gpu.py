"""KD vs CKD on the narrow fresh-body student at a long budget, on one GPU.

The CPU runs of BENCHMARKS.md ("A narrow student with a fresh body") stop at 1,200 steps, where the
student keeps only 65% of the teacher and KD leads CKD on SciFact. This script asks whether that order
holds when both students train much longer. Every (method, seed) student trains at the same time, each
in its own process on the one GPU, with the recipe of those CPU runs:

* student ``config:hidden_size=192,num_heads=6,intermediate_size=768,num_layers=3,embedding_size=384``
  (the teacher's 384-wide embeddings copied, a fresh 192-wide body);
* texts: the SciFact corpus and queries (no qrels read); batch 32, length 128, lr 5e-4, warm-up 10%;
* KD: embedding cosine 1 + in-batch score KL 1 (scale 20); CKD: the same plus relation weights
  100, 10, 100, 10, window 21, default layer map.

A short calibration run of all the jobs at once measures seconds per step under that sharing, and the
step count is chosen to fill ``--train-seconds`` (or given by ``--steps``); it is the same for every
job and is fixed before any student is scored. The teacher and each student are then scored with exact
inner-product search (nDCG@10) on SciFact dev (the train qrels, the split settings are chosen on),
SciFact test, Cranfield and CISI.

    python bench/distill_gpu.py --train-seconds 300                # on a GPU machine
    python bench/distill_gpu.py --quick                             # smoke run on CPU: 2 steps, 1 seed, subsamples
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common

STUDENT = "config:hidden_size=192,num_heads=6,intermediate_size=768,num_layers=3,embedding_size=384"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common.bench_options(device=None, threads=None, work_dir="/tmp/reprlab-distill-gpu")])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default cuda (cpu with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per training process")
    p.add_argument("--teacher", default="minilm", help="teacher model folder or name")
    p.add_argument("--data", type=Path, default=common.data_root(),
                   help="folder holding scifact/, cranfield/ and cisi/ (BEIR; default $REPRLAB_SHARED_DATA)")
    p.add_argument("--student", default=STUDENT)
    p.add_argument("--methods", default="kd,ckd")
    p.add_argument("--seeds", default=None, help="default 0,1 (0 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per student (default: fill --train-seconds; 2 with --quick)")
    p.add_argument("--train-seconds", type=float, default=300.0)
    p.add_argument("--calibration-steps", type=int, default=60, help="steps of the timing run (at least 30)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-texts", type=int, default=None, help="train on the first N texts (64 with --quick)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: METHOD:SEED:STEPS:FOLDER, train one student
    args = common.parse(p, argv)
    args.device = args.device or ("cpu" if args.quick else "cuda")
    args.seeds = args.seeds or ("0" if args.quick else "0,1")
    if args.quick:
        args.steps, args.max_texts = args.steps or 2, args.max_texts or 64
    return args


def train_one(method: str, seed: int, steps: int, output_dir: Path, args) -> dict:
    """One student with the recipe of the CPU narrow-student runs (bench/distill_dev.py), on ``args.device``."""
    import torch

    from reprlab.distill.recipe import run_distillation

    torch.set_num_threads(args.threads)
    started = time.time()
    config = common.distill_config(method, args.student, output_dir, Path(args.data) / "scifact" / "beir",
                                   teacher=args.teacher, steps=steps, lr=args.lr, device=args.device, seed=seed,
                                   max_texts=args.max_texts)
    result = run_distillation(config)
    return {"method": method, "seed": seed, "steps": result.steps, "final_loss": result.final_loss,
            "train_s": round(time.time() - started, 1), "model": str(result.model_dir)}


def launch(jobs: list[tuple[str, int]], steps: int, folder: Path, args, deadline_s: float) -> list[dict]:
    """Train every job at once, each in its own process; jobs still running at the deadline are stopped."""
    procs = []
    for method, seed in jobs:
        out = folder / f"{method}-seed{seed}"
        cmd = [sys.executable, __file__, "--one", f"{method}:{seed}:{steps}:{out}", "--teacher", args.teacher,
               "--data", str(args.data), "--student", args.student, "--lr", str(args.lr), "--device", args.device,
               "--threads", str(args.threads)] + (["--max-texts", str(args.max_texts)] if args.max_texts else [])
        log = open(folder / f"{method}-seed{seed}.log", "w")
        procs.append((method, seed, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True), log))
    end = time.time() + deadline_s
    results = []
    for method, seed, proc, log in procs:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, end - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            print(f"{method} seed {seed}: stopped at the deadline", file=sys.stderr)
            results.append({"method": method, "seed": seed, "error": "deadline"})
            continue
        finally:
            log.close()
        if proc.returncode:
            tail = (folder / f"{method}-seed{seed}.log").read_text()[-2000:]
            print(f"{method} seed {seed} failed:\n{tail}", file=sys.stderr)
            results.append({"method": method, "seed": seed, "error": tail[-300:]})
            continue
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def seconds_per_step(folder: Path, jobs: list[tuple[str, int]]) -> float:
    """The slowest job's seconds per step between its 20th and last logged calibration step."""
    worst = 0.0
    for method, seed in jobs:
        rows = [json.loads(x) for x in (folder / f"{method}-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        first = next(r for r in rows if r["step"] >= 20)
        worst = max(worst, (rows[-1]["elapsed"] - first["elapsed"]) / max(1, rows[-1]["step"] - first["step"]))
    return worst


def calibrate(jobs: list[tuple[str, int]], args) -> tuple[int, float]:
    """Run every job at once for ``--calibration-steps``; (steps filling ``--train-seconds``, seconds per step)."""
    calib = args.work_dir / "calibration"
    calib.mkdir(exist_ok=True)
    done = launch(jobs, args.calibration_steps, calib, args, deadline_s=600)
    if any("error" in r for r in done):
        raise SystemExit(f"calibration failed: {done}")
    per_step = seconds_per_step(calib, jobs)
    steps = max(100, int(args.train_seconds / per_step) // 100 * 100)
    print(f"calibration: {per_step * 1000:.1f} ms/step with {len(jobs)} jobs at once -> {steps} steps",
          file=sys.stderr)
    return steps, per_step


def score(model_dir: str, sets: dict, device: str, max_length: int = 256) -> dict:
    """nDCG@10 of one encoder on every evaluation set, by exact inner-product search over the corpus."""
    import torch

    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.metrics import evaluate, to_run
    from reprlab.text.beir import doc_text

    model = SentenceEncoder.from_pretrained(model_dir, max_length=max_length).to(device)
    out, encoded = {}, {}
    for name, (corpus_key, data) in sets.items():
        if corpus_key not in encoded:
            ids = list(data.corpus)
            docs = model.encode([doc_text(data.corpus[i]) for i in ids], batch_size=128, show_progress=False)
            encoded[corpus_key] = (np.asarray(ids, dtype=object), torch.from_numpy(docs).to(device))
        ids, docs = encoded[corpus_key]
        queries = data.judged_queries()
        q = torch.from_numpy(model.encode(list(queries.values()), batch_size=128, show_progress=False)).to(device)
        scores, top = (q @ docs.T).topk(min(100, len(ids)), dim=1)  # (Q, k)
        run = to_run(list(queries), scores.cpu().numpy(), ids[top.cpu().numpy()])
        out[name] = round(evaluate(data.qrels, run, metrics=("ndcg_cut_10",))["ndcg_cut_10"], 4)
    return out


def evaluation_sets(args) -> dict:
    """{name: (corpus key, BeirDataset)}: SciFact dev (train qrels) and test, Cranfield, CISI."""
    from reprlab.text.beir import load_beir

    root = common.require(args.data, "--data")
    sets = {"scifact_dev": ("scifact", load_beir(root / "scifact" / "beir", split="train")),
            "scifact": ("scifact", load_beir(root / "scifact" / "beir", split="test")),
            "cranfield": ("cranfield", load_beir(root / "cranfield" / "beir", split="test")),
            "cisi": ("cisi", load_beir(root / "cisi" / "beir", split="test"))}
    if args.quick:
        sets = {name: (f"{key}-{name}", common.subsample(data, 10, 50)) for name, (key, data) in sets.items()}
    return sets


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.one:
        method, seed, steps, folder = args.one.split(":", 3)
        print(json.dumps(train_one(method, int(seed), int(steps), Path(folder), args)))
        return {}

    started = time.time()
    jobs = [(m, int(s)) for m in args.methods.split(",") for s in args.seeds.split(",")]
    if args.quick and args.work_dir.exists():  # a smoke run starts afresh (a full run's folders are kept)
        import shutil

        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sets = evaluation_sets(args)  # read (and validated) before any training
    steps, per_step = (args.steps, None) if args.steps else calibrate(jobs, args)
    run_dir = args.work_dir / f"steps{steps}"
    run_dir.mkdir(exist_ok=True)
    budget = (per_step or 1.0) * steps * 1.5 + 120
    trained = launch(jobs, steps, run_dir, args, deadline_s=budget)

    max_length = 64 if args.quick else 256
    rows = [{"model": "teacher", **score(args.teacher, sets, args.device, max_length)}]
    print(f"teacher: {rows[0]}", file=sys.stderr)
    for r in trained:
        if "error" not in r:
            rows.append({"model": f"{r['method']} seed {r['seed']}",
                         **score(r["model"], sets, args.device, max_length)})
            print(f"{rows[-1]}", file=sys.stderr)
    record = common.write_result("distill-gpu", {
        "benchmark": "distill-gpu", "student": args.student, "steps": steps, "seconds_per_step": per_step,
        "jobs_at_once": len(jobs), "texts": "SciFact corpus + train-split queries (the recipe default)", "trained": trained, "scores": rows,
        "wall_s": round(time.time() - started, 1)}, args, argv)
    table = markdown(rows)
    print(table)
    if args.append:
        common.append_benchmarks(common.section(
            "Longer budgets on a GPU: KD vs CKD (`bench/distill_gpu.py`)", record,
            f"{steps} steps per student, {len(jobs)} jobs at once; nDCG@10:\n\n{table}"))
    return record


def markdown(rows: list[dict]) -> str:
    keys = ["scifact_dev", "scifact", "cranfield", "cisi"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {row['model']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
