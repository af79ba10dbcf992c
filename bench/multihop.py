"""Multi-hop retrieval on HotpotQA (IRCoT's 500 dev questions): single-hop baselines vs MDR beam search.

One run, on the eval side of the documented split (reprlab.text.hotpotqa: SHA-256 of the question
id < 0.3 -> eval, 156 questions; the other 344 train MDR). Every retriever searches the open corpus
of all 500 questions' paragraphs (4,858). Rows:

1. BM25 single-hop: chains are pairs of its top passages (ranked by the sum of their scores);
2. MiniLM single-hop (all-MiniLM-L6-v2, the same pairs);
3. MiniLM with MDR's beam search, no training (hop 2 = "question [SEP] title text" of each hop-1 passage);
   with ``--bm25-weights``, also with BM25 fused into each hop (the control for row 6);
4. MDR trained from MiniLM on the train side (shared encoder, in-batch + hard negatives), beam search;
5. MDR second stage: the query encoder trained further against a memory bank of frozen passage
   vectors (the passage side, and so the index, stay the first stage's);
6. with ``--bm25-weights W1,W2``: the last MDR model's beam search with BM25 fused into each hop
   (reprlab.retrieval.mdr.SparseFusion, our extension; weights chosen with ``--fusion-grid`` on the
   train-side holdout).

Metrics (reprlab.retrieval.mdr): exact pair = the top chain is the gold pair; pair recall@k = both
gold passages among the top-k chains; passage-pair recall@k = both gold among the first k distinct
passages (a single retrieval's top k, comparable with the issue's reference numbers, which the run
also re-measures over all 500 questions).

    flock /tmp/reprlab-heavy.lock python bench/multihop.py --threads 1 --work-dir runs/multihop-full --append
    python bench/multihop.py --stage2-negative-sources dense-hop2 --stage2-negatives 4   # hop-2 negatives
    python bench/multihop.py --stage2-negative-sources dense-hop2 --stage2-negatives 4 --bm25-weights 0.2,0.3
    python bench/multihop.py --quick        # 21 questions and their paragraphs, 1 epoch: a smoke run

Tuning happens on a hash slice of the train side, never on the eval side: ``--holdout 0.25`` trains on
the rest of the train side and reports on the slice. ``--stage1-model RUN/stage1`` reuses a first stage
trained by an earlier run of this script (``--work-dir RUN``) with the same split and recipe (checked), so
second-stage settings can be compared without retraining the first stage; ``--stage2-model RUN/stage2`` does the
same for the second stage, so an eval-side rerun (e.g. with ``--bm25-weights``) trains nothing.
``--fusion-grid 0,0.1,0.2/0,0.1,0.3`` evaluates the last MDR model with BM25 fusion at every (hop-1,
hop-2) weight pair of the grid (hop-2 queries are encoded once and reused across the grid) and records
the grid in the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import common
REFERENCE = {"minilm": (0.346, 0.752, 0.820), "bm25": (0.260, 0.798, 0.894)}  # the issue, all 500 questions


def last_metric(run: Path, key: str):
    """The last logged value of ``key`` in a training run's metrics.jsonl (None if never logged)."""
    value = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        value = json.loads(line).get(key, value)
    return value


class MemoEncoder:
    """An encoder that encodes each distinct (text, max_length) once: a weight grid re-runs the same
    beam searches, whose hop-2 queries repeat."""

    def __init__(self, model):
        self.model, self.tokenizer, self.memo = model, model.tokenizer, {}

    def encode(self, texts, batch_size=64, max_length=None, show_progress=None):
        new = [t for t in dict.fromkeys(texts) if (t, max_length) not in self.memo]
        if new:
            vectors = self.model.encode(new, batch_size=batch_size, max_length=max_length, show_progress=show_progress)
            self.memo.update({(t, max_length): v for t, v in zip(new, vectors)})
        return np.stack([self.memo[(t, max_length)] for t in texts])  # (N, d)


def weight_pair(text: str) -> tuple[float, float]:
    w1, w2 = (float(x) for x in text.split(","))
    return w1, w2


def reused_stage(run: Path, cfg, option: str = "--stage1-model"):
    """A finished MDR run folder (first or second stage) as a :class:`MDRResult`, after checking that it
    used ``cfg``'s recipe; ``option`` names the command-line option in the errors."""
    from reprlab.retrieval.mdr import MDRResult

    try:
        saved = json.loads((run / "train_config.json").read_text())
        split = json.loads((run / "split.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{option} {run}: not a finished MDR run folder ({e})")
    want = {k: getattr(cfg, k) for k in ("eval_fraction", "dev_fraction", "num_negatives",
                                         "negative_sources", "negative_depth", "max_question_length",
                                         "max_query_length", "max_passage_length", "hop2_title", "scale",
                                         "freeze_passages", "memory_bank")}
    want["negative_sources"] = list(want["negative_sources"])
    want |= {f"train.{k}": getattr(cfg.train, k) for k in ("epochs", "lr", "batch_size", "warmup_ratio", "seed")}
    config = saved.get("extra", {}).get("config", {})
    have = {k: config.get(k) for k in want if not k.startswith("train.")}
    have |= {k: saved.get(k[len("train."):]) for k in want if k.startswith("train.")}
    for key in ("data", "model"):  # paths compare resolved; "minilm" stays a name
        want[key], have[key] = (str(Path(x).resolve()) if x != "minilm" else x
                                for x in (str(getattr(cfg, key)), str(config.get(key, ""))))
    wrong = {k: (have[k], v) for k, v in want.items() if have[k] != v}
    if wrong:
        sys.exit(f"{option} {run} was trained with another recipe: "
                 + ", ".join(f"{k} = {a!r}, this run {b!r}" for k, (a, b) in wrong.items()))
    if not (run / "model" / "mdr.json").is_file():
        sys.exit(f"{option} {run}: no finished model in {run / 'model'}")
    return MDRResult(output_dir=run, model_dir=str(run / "model"), steps=int(last_metric(run, "step") or 0),
                     train_questions=split["train"], dev_questions=split["dev"],
                     eval_questions=split["eval"], eval_metrics=None)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common.bench_options(
        work_dir=None)])
    parser.add_argument("--data", type=Path,
                        default=common.data_path("hotpotqa_dev500_ircot", "dev_subsampled.jsonl", check=False))
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=2)
    parser.add_argument("--negative-sources", default="distractors,bm25", help="first stage (reprlab.retrieval.mdr)")
    parser.add_argument("--stage2-negative-sources", default="distractors,bm25",
                        help="second stage; dense-hop2 mines with the first-stage model's hop-2 queries")
    parser.add_argument("--stage2-negatives", type=int, default=None, help="default: --negatives")
    parser.add_argument("--stage2-epochs", type=float, default=3.0, help="0 skips the memory-bank stage")
    parser.add_argument("--stage2-lr", type=float, default=2e-5)
    parser.add_argument("--memory-bank", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256, help="passages at indexing time")
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="tuning: train on the train side minus this hash slice and report on the slice")
    parser.add_argument("--stage1-model", default=None,
                        help="reuse this first-stage run folder (an earlier run's WORK_DIR/stage1; recipe checked)")
    parser.add_argument("--stage2-model", default=None,
                        help="reuse this second-stage run folder (an earlier run's WORK_DIR/stage2, trained on the "
                             "same first stage; recipe checked)")
    parser.add_argument("--bm25-weights", type=weight_pair, default=None, metavar="W1,W2",
                        help="add a row: the last MDR model with BM25 fused into hop 1 / hop 2 at these weights")
    parser.add_argument("--fusion-grid", default=None, metavar="W1,../W2,..",
                        help="tuning (with --holdout): BM25 fusion at every pair of these hop-1 / hop-2 weights")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder for the trained models (default: a temp folder; --output was its name before)")
    parser.add_argument("--results", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    parser.add_argument("--cache", default=None, help="development: keep MiniLM's corpus vectors in this folder")
    args = common.parse(parser, argv)
    if args.fusion_grid and not args.holdout:
        parser.error("--fusion-grid chooses weights: run it with --holdout, never on the eval side")
    common.require(args.data, "--data")
    args.work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="reprlab-multihop-"))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.epochs, args.stage2_epochs, args.beam = 1.0, min(args.stage2_epochs, 1.0), min(args.beam, 5)
        args.batch_size, args.max_length = 8, 128
    return args


@dataclass
class Run:
    """One run: the questions and passages, the questions reported on, and the table the steps fill."""

    args: argparse.Namespace
    data: object  # reprlab.text.hotpotqa.HotpotData
    data_file: str  # what the MDR recipe reads (a slice of the data in a quick run)
    targets: list
    side: str
    rows: list = field(default_factory=list)
    sanity: dict = field(default_factory=dict)

    def __post_init__(self):
        from reprlab.text.beir import doc_text

        self.ids = list(self.data.corpus)
        self.texts = [doc_text(self.data.corpus[d]) for d in self.ids]

    def add(self, name: str, metrics: dict, seconds: float, note: str = "") -> None:
        self.rows.append({"retriever": name, "seconds": round(seconds, 1), "note": note, **metrics})
        m = metrics["all"]
        print(f"{name}: exact pair {m['exact_pair']:.3f}, pair recall@10 {m['pair_recall@10']:.3f} "
              f"({seconds:.0f}s)", file=sys.stderr)

    def encode_corpus(self, model, cache_name: str | None = None):
        """(FAISS index, vectors, seconds) of the corpus; with ``--cache`` and a name, vectors are kept."""
        from reprlab.retrieval.index import FaissIndex

        t = time.time()
        cached = None
        if self.args.cache and cache_name:
            cached = Path(self.args.cache) / f"{cache_name}-{len(self.texts)}-{self.args.max_length}.npy"
        if cached is not None and cached.is_file():
            vectors = np.load(cached)
        else:
            vectors = model.encode(self.texts, batch_size=64, max_length=self.args.max_length)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, vectors)
        index = FaissIndex(vectors.shape[1])
        index.add(self.ids, vectors)
        return index, vectors, time.time() - t


def load_run(args) -> Run:
    """The documented split; a quick run keeps 16 train + 5 eval questions and only their paragraphs,
    written as a small file for the MDR recipe."""
    from reprlab.retrieval.mdr import question_sides
    from reprlab.text.hotpotqa import EVAL_FRACTION, HotpotData, load_hotpotqa

    data = load_hotpotqa(args.data)
    train_q, hold_q, eval_q = question_sides(data.questions, EVAL_FRACTION, args.holdout)
    data_file = str(args.data)
    if args.quick:
        train_q, eval_q = train_q[:16], eval_q[:5]
        keep = [q for q in data.questions if q in train_q or q in eval_q]
        corpus = {p: data.corpus[p] for q in keep for p in q.paragraphs}
        data = HotpotData(keep, corpus, data.path)
        data_file = str(args.work_dir / "quick.jsonl")
        with open(data_file, "w") as f:
            for q in keep:
                f.write(json.dumps({"question_id": q.id, "question_text": q.question,
                                    "answers_objects": [{"spans": q.answers}],
                                    "contexts": [{"id": str(i), "title": corpus[p]["title"],
                                                  "paragraph_text": corpus[p]["text"], "is_supporting": p in q.gold}
                                                 for i, p in enumerate(q.paragraphs)]}) + "\n")
    targets = hold_q if args.holdout else eval_q
    side = "holdout slice of the train side" if args.holdout else "eval side"
    print(f"{len(data.questions)} questions ({len(train_q)} train, {len(hold_q)} holdout, {len(eval_q)} eval), "
          f"{len(data.corpus)} passages; reporting on the {side} ({len(targets)})", file=sys.stderr)
    return Run(args, data, data_file, targets, side)


def baselines(run: Run):
    """Rows 1-3 (and the fusion control): BM25 and MiniLM single-hop, MiniLM + beam search untrained;
    returns the BM25 index."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.mdr import SparseFusion, evaluate_mdr, evaluate_single_hop
    from reprlab.retrieval.pipeline import bm25_for_corpus

    args, data, targets = run.args, run.data, run.targets
    t = time.time()
    bm25 = bm25_for_corpus(data.corpus)
    run.add("BM25 single-hop (pairs of its top passages)", evaluate_single_hop(bm25, targets), time.time() - t)
    run.sanity["bm25"] = evaluate_single_hop(bm25, data.questions)["all"]

    minilm = SentenceEncoder.from_pretrained("minilm").to(torch.device(args.device))
    index, _, t_index = run.encode_corpus(minilm, "minilm")
    t = time.time()
    run.add("MiniLM single-hop", evaluate_single_hop(DenseRetriever(minilm, index), targets),
            t_index + time.time() - t, f"corpus encoding {t_index:.0f}s")
    run.sanity["minilm"] = evaluate_single_hop(DenseRetriever(minilm, index), data.questions)["all"]
    t = time.time()
    run.add(f"MiniLM + MDR beam search (B={args.beam}), no training",
            evaluate_mdr(minilm, index, data, targets, args.beam), time.time() - t, "corpus index reused")
    if args.bm25_weights:  # what the fusion gives without any MDR training (the control for row 6)
        t = time.time()
        w1, w2 = args.bm25_weights
        run.add(f"MiniLM + MDR beam search + BM25 fusion ({w1:g}, {w2:g}), no training",
                evaluate_mdr(minilm, index, data, targets, args.beam, sparse=SparseFusion(bm25, w1, w2)),
                time.time() - t, "corpus index reused; the control for the fused MDR row")
    return bm25


def mdr_config(run: Run, stage: int, model: str):
    """The MDR recipe of either stage (stage 2: frozen passages, memory bank, its own negatives and epochs)."""
    from reprlab.retrieval.mdr import MDRConfig
    from reprlab.train import TrainConfig

    args = run.args
    loop = dict(batch_size=args.batch_size, warmup_ratio=0.1, log_every=5, device=args.device, seed=0)
    if stage == 1:
        return MDRConfig(output_dir=str(args.work_dir / "stage1"), data=run.data_file, model=model,
                         dev_fraction=args.holdout, num_negatives=args.negatives, evaluate=False,
                         negative_sources=args.negative_sources,
                         train=TrainConfig(output_dir="", epochs=args.epochs, lr=args.lr, **loop))
    return MDRConfig(output_dir=str(args.work_dir / "stage2"), data=run.data_file, model=model,
                     dev_fraction=args.holdout, evaluate=False,
                     num_negatives=args.negatives if args.stage2_negatives is None else args.stage2_negatives,
                     negative_sources=args.stage2_negative_sources, freeze_passages=True,
                     memory_bank=args.memory_bank,
                     train=TrainConfig(output_dir="", epochs=args.stage2_epochs, lr=args.stage2_lr, **loop))


def first_stage(run: Run):
    """Row 4: MDR trained (or reused, recipe checked) from MiniLM; returns (model, index, vectors)."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.mdr import evaluate_mdr, evaluate_single_hop, run_mdr_training

    args = run.args
    cfg = mdr_config(run, 1, "minilm")
    t = time.time()
    if args.stage1_model:
        stage1 = reused_stage(Path(args.stage1_model), cfg)
        t_train = last_metric(Path(args.stage1_model), "elapsed") or 0.0
    else:
        stage1 = run_mdr_training(cfg)
        t_train = time.time() - t
    mdr = SentenceEncoder.from_pretrained(stage1.model_dir).to(torch.device(args.device))
    index, vectors, t_index = run.encode_corpus(mdr)
    t = time.time()
    reused = f", reused from {args.stage1_model}" if args.stage1_model else ""
    run.add(f"MDR trained (stage 1: {stage1.train_questions} questions, {args.epochs:g} epochs), beam B={args.beam}",
            evaluate_mdr(mdr, index, run.data, run.targets, args.beam), t_index + time.time() - t,
            f"training {t_train:.0f}s ({stage1.steps} steps{reused}), corpus encoding {t_index:.0f}s")
    t = time.time()
    run.add("MDR trained (stage 1), single-hop", evaluate_single_hop(DenseRetriever(mdr, index), run.targets),
            time.time() - t, "stage-1 index reused")
    return stage1, mdr, index, vectors


def second_stage(run: Run, stage1, index, vectors):
    """Row 5: the query encoder trained further against a memory bank of the first stage's frozen passage
    vectors (or reused, recipe checked); returns the query encoder."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.mdr import evaluate_mdr, run_mdr_training

    args = run.args
    cfg = mdr_config(run, 2, stage1.model_dir)
    t = time.time()
    if args.stage2_model:
        stage2 = reused_stage(Path(args.stage2_model), cfg, "--stage2-model")
        t_train = last_metric(Path(args.stage2_model), "elapsed") or 0.0
    else:
        stage2 = run_mdr_training(cfg, frozen_vectors=(run.ids, vectors))
        t_train = time.time() - t
    query2 = SentenceEncoder.from_pretrained(Path(stage2.model_dir) / "query").to(torch.device(args.device))
    t = time.time()
    negs = f"{cfg.num_negatives} negatives from {'+'.join(cfg.negative_sources)}"
    run.add(f"MDR + memory bank (stage 2: K={args.memory_bank}, {args.stage2_epochs:g} epochs, {negs}), "
            f"beam B={args.beam}",
            evaluate_mdr(query2, index, run.data, run.targets, args.beam), time.time() - t,
            f"training {t_train:.0f}s ({stage2.steps} steps"
            + (f", reused from {args.stage2_model}" if args.stage2_model else "") + "), stage-1 index reused")
    return query2


def fusion(run: Run, last, last_name: str, index, bm25) -> list[dict]:
    """Row 6 (``--bm25-weights``) and the ``--fusion-grid``: BM25 fused into both hops of ``last``'s beam search."""
    from reprlab.retrieval.mdr import SparseFusion, evaluate_mdr

    args = run.args
    if args.bm25_weights:
        t = time.time()
        w1, w2 = args.bm25_weights
        run.add(f"{last_name} + BM25 fusion (hop-1 weight {w1:g}, hop-2 weight {w2:g}), beam B={args.beam}",
                evaluate_mdr(last, index, run.data, run.targets, args.beam, sparse=SparseFusion(bm25, w1, w2)),
                time.time() - t, "weights chosen on the train-side holdout; BM25 index of row 1 reused")
    grid = []
    if args.fusion_grid:
        memo = MemoEncoder(last)
        w1s, w2s = grid_weights(args.fusion_grid)
        for w1 in w1s:
            for w2 in w2s:
                m = evaluate_mdr(memo, index, run.data, run.targets, args.beam, sparse=SparseFusion(bm25, w1, w2))
                grid.append({"hop1_weight": w1, "hop2_weight": w2, **m})
                print(f"BM25 fusion {w1:g} / {w2:g}: exact pair {m['all']['exact_pair']:.3f}, pair recall@10 "
                      f"{m['all']['pair_recall@10']:.3f}", file=sys.stderr)
    return grid


def grid_weights(text: str) -> tuple[list[float], list[float]]:
    w1s, w2s = ([float(x) for x in part.split(",")] for part in text.split("/"))
    return w1s, w2s


def markdown(run: Run, grid: list[dict], last_name: str, stamp: dict) -> str:
    args, rows, data = run.args, run.rows, run.data
    lines = [
        f"### Multi-hop retrieval (MDR), HotpotQA IRCoT dev-500, {run.side} ({len(run.targets)} questions: "
        f"{rows[0]['bridge']['n'] if 'bridge' in rows[0] else 0} bridge, "
        f"{rows[0]['comparison']['n'] if 'comparison' in rows[0] else 0} comparison), "
        f"corpus {len(data.corpus)} passages, {args.device}",
        "",
        f"`flock /tmp/reprlab-heavy.lock {stamp['command']}` on {stamp['machine']}, {stamp['date']}; whole run "
        f"{stamp['minutes']:.1f} min. "
        "Chains: pairs of passages; exact pair = top chain is the gold pair; pair R@k = both gold passages in "
        "the top-k chains; passage-pair R@k = both gold among the first k distinct passages (for a single-hop "
        "retriever: its top k). Seconds = corpus encoding (where new) + search + scoring; training apart.",
        "",
        "| retriever | exact pair | pair R@2 | pair R@10 | pair R@20 | passage-pair R@2 | R@10 | R@20 | "
        "exact pair bridge / comparison | seconds | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["all"]
        per_type = " / ".join(f"{r[t]['exact_pair']:.3f}" if t in r else "-" for t in ("bridge", "comparison"))
        lines.append(
            f"| {r['retriever']} | {m['exact_pair']:.3f} | {m['pair_recall@2']:.3f} | {m['pair_recall@10']:.3f} | "
            f"{m['pair_recall@20']:.3f} | {m['passage_pair_recall@2']:.3f} | {m['passage_pair_recall@10']:.3f} | "
            f"{m['passage_pair_recall@20']:.3f} | {per_type} | {r['seconds']:.0f} | {r['note']} |")
    lines += ["", f"Sanity, all {len(data.questions)} questions, single retrieval's top 2 / 10 / 20 holding both gold "
              "paragraphs (issue's reference in brackets): " + "; ".join(
                  f"{name} {s['passage_pair_recall@2']:.3f} / {s['passage_pair_recall@10']:.3f} / "
                  f"{s['passage_pair_recall@20']:.3f} ({' / '.join(f'{x:.3f}' for x in REFERENCE[name])})"
                  for name, s in run.sanity.items())]
    if grid:
        w1s, w2s = grid_weights(args.fusion_grid)
        lines += ["", f"BM25 fusion grid ({last_name}, beam B={args.beam}; rows: hop-1 weight, columns: hop-2 weight; "
                  "cells: exact pair / pair R@10):", "",
                  "| hop-1 \\ hop-2 | " + " | ".join(f"{w:g}" for w in w2s) + " |", "|---|" + "---|" * len(w2s)]
        for w1 in w1s:
            cells = [f"{g['all']['exact_pair']:.3f} / {g['all']['pair_recall@10']:.3f}" for g in grid
                     if g["hop1_weight"] == w1]
            lines.append(f"| {w1:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.getLogger("reprlab").setLevel(logging.WARNING)
    t_start = time.time()
    run = load_run(args)
    bm25 = baselines(run)
    stage1, last, index, vectors = first_stage(run)
    last_name = "MDR (stage 1)"
    if args.stage2_epochs > 0:
        last, last_name = second_stage(run, stage1, index, vectors), "MDR + memory bank"
    grid = fusion(run, last, last_name, index, bm25)
    stamp = {**common.stamp(argv), "minutes": (time.time() - t_start) / 60}
    table = markdown(run, grid, last_name, stamp)
    print(table)
    name = "multihop" if args.quick else ("multihop-holdout" if args.holdout else f"multihop-{args.device}")
    common.write_result(name, {**stamp, "args": common.settings(args), "rows": run.rows,
                               "sanity_all_questions": run.sanity, "fusion_grid": grid}, args, argv)
    if args.append:
        common.append_benchmarks(table)


if __name__ == "__main__":
    main()
