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
    python bench/distill_gpu.py --device cpu --quick --steps 4      # smoke run here
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
STUDENT = "config:hidden_size=192,num_heads=6,intermediate_size=768,num_layers=3,embedding_size=384"


def distill_config(method: str, seed: int, steps: int, output_dir: Path, args):
    """The recipe of the CPU narrow-student runs (bench/distill_dev.py), on ``args.device``."""
    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import KDConfig
    from reprlab.distill.recipe import DistillConfig

    return DistillConfig(
        method=method, corpus=[str(Path(args.data) / "scifact" / "beir")], output_dir=str(output_dir),
        teacher=args.teacher, student=args.student, max_length=128, max_steps=steps, batch_size=32, lr=args.lr,
        warmup_ratio=0.1, device=args.device, seed=seed, log_every=10, max_texts=args.max_texts,
        kd=KDConfig(embedding="cosine", embedding_weight=1.0, score_weight=1.0, scale=20.0),
        ckd=CKDConfig(wr_pair=100, wr_triplet=10, ltr_pair=100, ltr_triplet=10, window=21))


def train_one(method: str, seed: int, steps: int, output_dir: Path, args) -> dict:
    import torch

    from reprlab.distill.recipe import run_distillation

    torch.set_num_threads(args.threads)
    started = time.time()
    result = run_distillation(distill_config(method, seed, steps, output_dir, args))
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


def score(model_dir: str, sets: dict, device: str) -> dict:
    """nDCG@10 of one encoder on every evaluation set, by exact inner-product search over the corpus."""
    import torch

    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.metrics import evaluate, to_run
    from reprlab.text.beir import doc_text

    model = SentenceEncoder.from_pretrained(model_dir, max_length=256).to(device)
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

    root = Path(args.data)
    sets = {"scifact_dev": ("scifact", load_beir(root / "scifact" / "beir", split="train")),
            "scifact": ("scifact", load_beir(root / "scifact" / "beir", split="test")),
            "cranfield": ("cranfield", load_beir(root / "cranfield" / "beir", split="test")),
            "cisi": ("cisi", load_beir(root / "cisi" / "beir", split="test"))}
    if args.quick:
        from distill import subsample  # bench/distill.py

        sets = {name: (f"{key}-{name}", subsample(data, 20, 200)) for name, (key, data) in sets.items()}
    return sets


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="minilm", help="teacher model folder or name")
    p.add_argument("--data", default=str(DATA), help="folder holding scifact/, cranfield/ and cisi/ (BEIR)")
    p.add_argument("--student", default=STUDENT)
    p.add_argument("--methods", default="kd,ckd")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=None, help="steps per student (default: fill --train-seconds)")
    p.add_argument("--train-seconds", type=float, default=300.0)
    p.add_argument("--calibration-steps", type=int, default=60, help="steps of the timing run (at least 30)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per training process")
    p.add_argument("--max-texts", type=int, default=None, help="train on the first N texts (smoke runs)")
    p.add_argument("--quick", action="store_true", help="evaluate on small subsamples (smoke runs)")
    p.add_argument("--work-dir", default="/tmp/reprlab-distill-gpu")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "distill-gpu.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: METHOD:SEED:STEPS:FOLDER, train one student
    args = p.parse_args(argv)
    if args.one:
        method, seed, steps, folder = args.one.split(":", 3)
        print(json.dumps(train_one(method, int(seed), int(steps), Path(folder), args)))
        return {}

    from reprlab.io import atomic_write_json
    from reprlab.logs import machine_summary

    started = time.time()
    jobs = [(m, int(s)) for m in args.methods.split(",") for s in args.seeds.split(",")]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sets = evaluation_sets(args)  # read (and validated) before any training
    steps, per_step = args.steps, None
    if steps is None:
        calib = work / "calibration"
        calib.mkdir(exist_ok=True)
        done = launch(jobs, args.calibration_steps, calib, args, deadline_s=600)
        if any("error" in r for r in done):
            raise SystemExit(f"calibration failed: {done}")
        per_step = seconds_per_step(calib, jobs)
        steps = max(100, int(args.train_seconds / per_step) // 100 * 100)
        print(f"calibration: {per_step * 1000:.1f} ms/step with {len(jobs)} jobs at once -> {steps} steps",
              file=sys.stderr)
    run_dir = work / f"steps{steps}"
    run_dir.mkdir(exist_ok=True)
    budget = (per_step or 1.0) * steps * 1.5 + 120
    trained = launch(jobs, steps, run_dir, args, deadline_s=budget)

    rows = [{"model": "teacher", **score(args.teacher, sets, args.device)}]
    print(f"teacher: {rows[0]}", file=sys.stderr)
    for r in trained:
        if "error" not in r:
            rows.append({"model": f"{r['method']} seed {r['seed']}", **score(r["model"], sets, args.device)})
            print(f"{rows[-1]}", file=sys.stderr)
    record = {"benchmark": "distill-gpu", "date": datetime.date.today().isoformat(), "machine": machine_summary(),
              "command": "python bench/distill_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "student": args.student, "steps": steps, "seconds_per_step": per_step, "jobs_at_once": len(jobs),
              "texts": "SciFact corpus + queries", "trained": trained, "scores": rows,
              "wall_s": round(time.time() - started, 1)}
    atomic_write_json(Path(args.output), record)
    keys = ["scifact_dev", "scifact", "cranfield", "cisi"]
    print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['model']} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    return record


if __name__ == "__main__":
    main()
