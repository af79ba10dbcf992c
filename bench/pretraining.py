"""Domain-adaptive pre-training on SciFact, then retrieval fine-tuning: does the masking scheme matter?

The real use of the pre-training recipes: continue pre-training all-MiniLM-L6-v2 on the SciFact
corpus with each masking scheme (random, whole-word, span, PMI, fully-explored) under the same
budget (the same number of optimizer steps over the same number of masked rows of the same length),
fine-tune each result with the same retrieval recipe (reprlab's DPR recipe, in-batch negatives, on
SciFact's train qrels), and score SciFact test (BEIR) nDCG@10 against fine-tuning MiniLM with no
continued pre-training. CMLM is scored zero-shot: MiniLM after CMLM on SciFact's abstract sentences
(adjacent sentences as pairs) against the original MiniLM. The top PMI n-grams of the corpus are
printed.

Each part runs on its own and its result is merged into the JSON, so the parts can be run one at a
time (each fits in well under 30 minutes on 2 CPU cores)::

    python bench/pretraining.py --parts zero-shot,none            # the baselines
    python bench/pretraining.py --parts random,wwm                # two schemes
    python bench/pretraining.py --parts cmlm
    python bench/pretraining.py --table                           # print what is there
    python bench/pretraining.py --quick                           # smoke run of every part (3 steps each)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

import common

SCHEMES = ("random", "wwm", "span", "pmi", "fully-explored")
PARTS = ("zero-shot", "none", *SCHEMES, "cmlm")


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(model_dir: str, data, args) -> dict:
    """SciFact test: encode corpus + judged queries, exact inner-product search (FAISS flat)."""
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.pipeline import evaluate_retriever

    t = time.time()
    retriever = DenseRetriever.from_model(model_dir, batch_size=32)
    retriever.model.max_length = args.eval_max_length
    retriever.index_corpus(data.corpus)
    scores = evaluate_retriever(retriever, data, k=100, metrics=("ndcg_cut_10", "recall_100"))
    return {"ndcg@10": scores["ndcg_cut_10"], "recall@100": scores["recall_100"],
            "eval_seconds": round(time.time() - t)}


# ----------------------------------------------------------------------------- fine-tuning


def finetune(model_dir: str, out: Path, args) -> tuple[str, dict]:
    """The same retrieval fine-tuning for every starting point; returns (model folder, info)."""
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.train import TrainConfig

    loop = TrainConfig(output_dir=str(out), epochs=args.ft_epochs, max_steps=args.ft_steps, batch_size=args.ft_batch,
                       lr=args.ft_lr, warmup_ratio=0.1, seed=args.seed, device=args.device, log_every=5)
    t = time.time()
    cfg = DprConfig(output_dir=str(out), data=str(args.data), split="train", model=model_dir, num_negatives=0,
                    query_max_length=64, passage_max_length=args.ft_max_length, train=loop)
    result = run_dpr(cfg)
    return result.model_dir, {"recipe": "reprlab.retrieval.dpr (in-batch negatives)", "ft_steps": result.steps,
                              "ft_seconds": round(time.time() - t)}


# ----------------------------------------------------------------------------- parts


def run_part(part: str, data, args) -> dict:
    from reprlab.pretrain.cmlm import CMLMConfig, run_cmlm
    from reprlab.pretrain.masking import MaskingConfig, build_masking
    from reprlab.pretrain.mlm import MLMConfig, run_mlm

    work = args.work_dir / part
    if work.exists():
        shutil.rmtree(work)
    record: dict = {"part": part}
    if part == "zero-shot":
        record.update(evaluate_model("minilm", data, args))
        return record
    if part == "cmlm":
        t = time.time()
        cfg = CMLMConfig(corpus=[str(args.sentences)], output_dir=str(work / "cmlm"), model="minilm",
                         max_length=args.cmlm_max_length, max_steps=args.steps, batch_size=args.cmlm_batch,
                         lr=args.lr, seed=args.seed, device=args.device, max_groups=args.max_texts)
        result = run_cmlm(cfg)
        losses = [m["loss"] for m in result.metrics]
        record.update(pretrain_seconds=round(time.time() - t), pairs=result.pairs, steps=result.steps,
                      loss_first=float(np.mean(losses[:3])), loss_last=float(np.mean(losses[-3:])))
        record.update(evaluate_model(str(result.model_dir), data, args))
        return record
    start = "minilm"
    if part in SCHEMES:
        copies = build_masking(part, MaskingConfig(budget=args.budget)).copies if part != "pmi" else 1
        if args.rows % copies:
            raise SystemExit(f"--rows {args.rows} must be a multiple of the {copies} fully-explored copies")
        t = time.time()
        cfg = MLMConfig(corpus=[str(args.data)], output_dir=str(work / "mlm"), model="minilm", masking=part,
                        budget=args.budget, max_length=args.max_length, max_texts=args.max_texts,
                        max_steps=args.steps, batch_size=args.rows // copies, lr=args.lr, warmup_ratio=0.1,
                        head_warmup_steps=args.head_warmup, seed=args.seed, device=args.device, log_every=5)
        result = run_mlm(cfg)
        losses = [m["loss"] for m in result.metrics]
        record.update(pretrain_seconds=round(time.time() - t), steps=result.steps, texts_per_step=cfg.batch_size,
                      rows_per_step=args.rows, chunks=result.chunks, mlm_loss_first=float(np.mean(losses[:2])),
                      mlm_loss_last=float(np.mean(losses[-2:])))
        if part == "pmi":
            from reprlab.pretrain.pmi import PMIVocab
            from reprlab.pretrain.corpus import read_texts, split_words
            from reprlab.text.tokenizer import Tokenizer

            vocab = PMIVocab.load(result.pmi_vocab)
            tok = Tokenizer.from_pretrained("minilm")
            sample = [split_words(x, tok) for x in read_texts(args.data, max_texts=500)]
            record["pmi_vocab"] = {"size": len(vocab), "stats": vocab.stats, "coverage": vocab.coverage(sample),
                                   "top": {str(n): [[e.text, e.count, round(e.score, 2)] for e in vocab.top(12, n)]
                                           for n in (2, 3, 4, 5)}}
        start = str(result.model_dir)
    model_dir, info = finetune(start, work / "ft", args)
    record.update(info)
    record.update(evaluate_model(model_dir, data, args))
    return record


def table(results: dict, args) -> str:
    lines = [f"SciFact test (BEIR, 300 queries), MiniLM-L6: continued MLM pre-training on the SciFact corpus "
             f"({args.steps} steps x {args.rows} rows of {args.max_length} tokens, head warm-up {args.head_warmup}), "
             f"then the same retrieval fine-tuning", "",
             "| continued pre-training | masked rows/step | MLM loss first -> last | pre-train s | nDCG@10 | R@100 |",
             "|---|---|---|---|---|---|"]
    for part in ("none", *SCHEMES):
        r = results.get(part)
        if not r:
            continue
        if part == "none":
            lines.append(f"| none (fine-tune MiniLM directly) | - | - | - | {r['ndcg@10']:.4f} | "
                         f"{r['recall@100']:.4f} |")
        else:
            lines.append(f"| {part} | {r['rows_per_step']} ({r['texts_per_step']} texts) | "
                         f"{r['mlm_loss_first']:.2f} -> {r['mlm_loss_last']:.2f} | {r['pretrain_seconds']} | "
                         f"{r['ndcg@10']:.4f} | {r['recall@100']:.4f} |")
    recipes = {r.get("recipe") for r in results.values() if r.get("recipe")}
    lines += ["", f"fine-tuning recipe: {', '.join(sorted(recipes)) or '-'}", "",
              "| zero-shot | CMLM loss first -> last | nDCG@10 | R@100 |", "|---|---|---|---|"]
    if "zero-shot" in results:
        r = results["zero-shot"]
        lines.append(f"| all-MiniLM-L6-v2 as shipped | - | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} |")
    if "cmlm" in results:
        r = results["cmlm"]
        lines.append(f"| after CMLM on SciFact sentences ({r['steps']} steps, {r['pairs']} pairs) | "
                     f"{r['loss_first']:.2f} -> {r['loss_last']:.2f} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} |")
    pmi = results.get("pmi", {}).get("pmi_vocab")
    if pmi:
        lines += ["", f"PMI vocabulary: {pmi['size']} n-grams, covering {pmi['coverage']:.0%} of the words of "
                  "500 abstracts",
                  "", "| n | top n-grams by PMI_n (count) |", "|---|---|"]
        for n, top in pmi["top"].items():
            lines.append(f"| {n} | " + "; ".join(f"{t} ({c})" for t, c, _ in top[:8]) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    scifact = common.data_path("scifact", check=False)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 parents=[common.bench_options(work_dir="/tmp/reprlab-bench-pretraining")])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from: {', '.join(PARTS)}")
    ap.add_argument("--data", type=Path, default=scifact / "beir")
    ap.add_argument("--sentences", type=Path, default=scifact / "corpus_sentences.jsonl")
    ap.add_argument("--steps", type=int, default=60, help="pre-training optimizer steps (MLM and CMLM)")
    ap.add_argument("--rows", type=int, default=14, help="masked rows per MLM step (fully-explored: texts x copies)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-warmup", type=int, default=10, help="MLM steps that train only the fresh head")
    ap.add_argument("--max-texts", type=int, default=None)
    ap.add_argument("--cmlm-batch", type=int, default=16)
    ap.add_argument("--cmlm-max-length", type=int, default=64)
    ap.add_argument("--ft-epochs", type=float, default=1.0)
    ap.add_argument("--ft-steps", type=int, default=None)
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--ft-lr", type=float, default=2e-5)
    ap.add_argument("--ft-max-length", type=int, default=128)
    ap.add_argument("--eval-max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="only print the table of the saved results")
    ap.add_argument("--work", dest="work_dir", type=Path, help=argparse.SUPPRESS)  # the older name of --work-dir
    ap.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    args = common.parse(ap, argv)
    if args.quick:
        args.steps, args.ft_steps, args.max_texts, args.eval_max_length, args.head_warmup = 3, 3, 200, 64, 1
        args.max_length, args.ft_max_length, args.ft_batch, args.cmlm_batch = 64, 64, 8, 8
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    return args


def run_parts(args, out: Path, argv=None) -> dict:
    """Run every ``--parts`` entry on SciFact test (a slice in a quick run) and merge each record into ``out``
    as soon as it is done; returns the merged results."""
    import logging

    import torch

    from reprlab.text.beir import load_beir

    logging.getLogger("reprlab").setLevel("INFO")
    torch.manual_seed(args.seed)
    data = load_beir(common.require(args.data, "--data"), split="test")
    if args.quick:  # every judged document of 20 queries plus 100 others
        data = common.subsample(data, 20, 100)
    saved = {}
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        print(f"=== {part}", flush=True)
        record = run_part(part, data, args)
        record.update(device=args.device, **common.stamp(argv))
        # re-read before merging: another run may have recorded other parts meanwhile
        saved = {k: v for k, v in common.read_result(out).items() if k not in ("machine", "date", "command")}
        saved.setdefault("results", {})[part] = record
        saved["args"] = {k: v for k, v in common.settings(args).items() if k not in ("parts", "table")}
        common.write_result("pretraining", saved, args, argv)
        print(json.dumps({k: v for k, v in record.items() if k != "pmi_vocab"}), flush=True)
    return saved


def main(argv=None) -> None:
    args = parse_args(argv)
    out = common.result_path("pretraining", args)
    saved = common.read_result(out) if args.table else run_parts(args, out, argv)
    saved = saved or {"results": {}}
    text = table(saved["results"], argparse.Namespace(**{**vars(args), **saved.get("args", {})}))
    print("\n" + text + f"\n\nresults: {out}")
    if args.append:
        common.append_benchmarks(common.section("Domain-adaptive pre-training on SciFact (`bench/pretraining.py`)",
                                                {**common.stamp(argv), **saved}, text))


if __name__ == "__main__":
    main()
