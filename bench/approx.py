"""Approximate computing (AxFormer) on a retriever fine-tuned on SciFact: speed-up, size, nDCG@10 change.

1. Fine-tune all-MiniLM-L6-v2 on SciFact's training qrels with the DPR recipe
   (``reprlab.retrieval.dpr``: in-batch + 1 BM25 negative per query), leaving out a seeded 20% of the
   training queries.
2. Search (``reprlab.distill.approx.run_approx``) on those held-out *training* queries: their relevant
   documents plus BM25 negatives, loss = contrastive NLL. The paper's criterion (a removal is kept
   only when the held-out loss falls and, as in its code, more than half of the held-out queries are
   no worse) and, for comparison, a loss budget (kept while the loss stays within 1 + t of the
   fine-tuned model's). The plan is applied by physically removing weights.
3. Evaluate the fine-tuned and the pruned models on SciFact's test qrels (nDCG@10), time them encoding
   the same SciFact documents, count parameters. The paper reports up to 4x faster and 14x smaller
   models with < 0.5% accuracy loss on GLUE (BERT-base/large); the test split is used only here.

    flock /tmp/reprlab-heavy.lock python bench/approx.py          # the recorded run (CPU): bench/results/approx.json
    python bench/approx.py --quick                                # smoke run: 60 training queries, 3 steps
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import torch

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(work_dir="/tmp/reprlab-bench-approx")])
    p.add_argument("--model", default=None, help="an already fine-tuned retriever folder (skips step 1)")
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--dev-fraction", "--heldout-fraction", type=float, default=0.2,
                   help="the dev slice of SciFact's train queries held out for the search (reprlab.text.splits)")
    p.add_argument("--negatives", type=int, default=1, help="BM25 negatives per held-out query in the search")
    p.add_argument("--train-max-length", type=int, default=128, help="passage length for fine-tuning")
    p.add_argument("--search-max-length", type=int, default=96, help="passage length for the held-out loss")
    p.add_argument("--eval-max-length", type=int, default=256)
    p.add_argument("--tolerances", default="0,0.05", help="0 = the paper's criterion; t > 0 = loss budget 1 + t")
    p.add_argument("--min-improved-fraction", type=float, default=0.5,
                   help="with tolerance 0: more than this fraction of held-out queries no worse (paper code)")
    p.add_argument("--speed-texts", type=int, default=256)
    args = common.parse(p, argv)
    if args.quick:
        args.eval_max_length, args.search_max_length, args.train_max_length, args.speed_texts = 64, 32, 32, 32
    return args


def finetune(args, scifact, held: list[str]) -> tuple[str, float]:
    """Step 1: DPR fine-tuning of MiniLM on the training qrels minus the held-out queries."""
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.train import TrainConfig

    t0 = time.time()
    if args.model:
        return args.model, round(time.time() - t0, 1)
    loop = TrainConfig(output_dir="", max_steps=3 if args.quick else None, epochs=args.finetune_epochs,
                       batch_size=8 if args.quick else args.batch_size, lr=args.lr, warmup_ratio=0.1,
                       device=args.device, log_every=5)
    dpr = DprConfig(output_dir=str(args.work_dir / "dpr"), data=str(scifact), split="train", model="minilm",
                    num_negatives=1, mine_depth=30, query_max_length=64, passage_max_length=args.train_max_length,
                    exclude_queries=held, train=loop)
    return run_dpr(dpr).model_dir, round(time.time() - t0, 1)


def search(args, scifact, finetuned: str, held: list[str]) -> dict[str, tuple]:
    """Step 2: one AxFormer search per tolerance; {row name: (model folder, plan, search seconds)}."""
    from reprlab.distill.approx import ApproxConfig, ApproxRecipeConfig, run_approx

    variants = {"fine-tuned (unpruned)": (finetuned, None, None)}
    for tol in [float(t) for t in args.tolerances.split(",") if t.strip()]:
        t0 = time.time()
        config = ApproxConfig(tolerance=tol, min_improved_fraction=args.min_improved_fraction if tol == 0 else 0.0,
                              batch_size=64)
        result = run_approx(ApproxRecipeConfig(
            model=str(finetuned), data=str(scifact), output_dir=str(args.work_dir / f"approx-{tol:g}"),
            split="train", dev_queries=held, negatives=args.negatives, query_max_length=64,
            passage_max_length=args.search_max_length, search=config))
        name = "AxFormer, paper criterion" if tol == 0 else f"AxFormer, loss budget +{100 * tol:g}%"
        variants[name] = (str(result.model_dir), result.plan, round(time.time() - t0, 1))
        print(f"[approx] {name}: {result.plan.summary()} ({variants[name][2]} s)", file=sys.stderr)
    return variants


def evaluate(args, variants: dict, test) -> list[dict]:
    """Step 3: nDCG@10 on the test qrels, encode time (interleaved passes) and size of every variant."""
    from reprlab.distill.approx import count_parameters
    from reprlab.encoder import SentenceEncoder
    from reprlab.text.beir import doc_text

    speed_texts = [doc_text(d) for d in list(test.corpus.values())[: args.speed_texts]]
    models = {name: SentenceEncoder.from_pretrained(folder, max_length=args.eval_max_length).to(args.device).eval()
              for name, (folder, _, _) in variants.items()}
    timing = common.encode_seconds(models, speed_texts, 64)
    rows = []
    for name, (folder, plan, search_s) in variants.items():
        model = models[name]
        t0 = time.time()
        ndcg = common.evaluate_dense(model, test, batch_size=64)["ndcg_cut_10"]
        eval_s = time.time() - t0
        enc = model.encoder
        total = count_parameters(enc)
        body = total - count_parameters(enc.embeddings)
        rows.append({
            "model": name, "ndcg@10": round(ndcg, 4), "params_m": round(total / 1e6, 2),
            "non_embedding_m": round(body / 1e6, 2), "encode_s": round(timing[name]["median"], 2),
            "encode_spread": round(timing[name]["spread"], 3),
            "encode_timing": timing[name].rounded(),
            "layer_heads": enc.config.layer_heads, "layer_intermediate": enc.config.layer_intermediate,
            "plan": plan.summary() if plan else None, "base_loss": plan.base_loss if plan else None,
            "final_loss": plan.final_loss if plan else None, "candidates_tried": len(plan.history) if plan else None,
            "search_s": search_s, "eval_s": round(eval_s, 1),
        })
        print(f"[approx] {name}: nDCG@10 {ndcg:.4f}, {timing[name]['median']:.1f} s encode (median of "
              f"{len(timing[name]['passes'])})", file=sys.stderr)
    base = rows[0]
    for r in rows:
        r["speedup"] = round(base["encode_s"] / r["encode_s"], 2)  # of the medians
        r["size_ratio"] = round(base["params_m"] / r["params_m"], 2)
        r["non_embedding_size_ratio"] = round(base["non_embedding_m"] / r["non_embedding_m"], 2)
        r["ndcg_change_pct"] = round(100 * (r["ndcg@10"] - base["ndcg@10"]) / base["ndcg@10"], 2)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | SciFact nDCG@10 | change | encode speed-up (medians of 3; spread) | size x (all / non-embedding) | "
             "what was removed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ndcg@10']:.4f} | {r['ndcg_change_pct']:+.2f}% | {r['speedup']}x "
                     f"({r.get('encode_spread', 0):.2f}) | "
                     f"{r['size_ratio']}x / {r['non_embedding_size_ratio']}x | {r['plan'] or '-'} |")
    lines.append("| paper (AxFormer, GLUE, BERT) | - | < 0.5% loss | up to 4x | up to 14x | - |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from reprlab.text.beir import load_beir
    from reprlab.text.splits import split

    args = parse_args(argv)
    started = time.time()
    torch.manual_seed(0)
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    scifact = common.data_path("scifact", "beir")
    judged = sorted(load_beir(scifact, split="train").judged_queries())
    held = split(judged[:60] if args.quick else judged, dev_fraction=args.dev_fraction).dev
    test = load_beir(scifact, split="test")
    if args.quick:
        test = common.subsample(test, 20, 100)

    finetuned, finetune_s = finetune(args, scifact, held)
    print(f"[approx] fine-tuned model {finetuned} ({finetune_s} s); {len(held)} held-out training queries",
          file=sys.stderr)
    rows = evaluate(args, search(args, scifact, finetuned, held), test)
    table = markdown(rows)
    print(table)
    record = common.write_result("approx", {
        "benchmark": "approx", "device": args.device, "torch_threads": torch.get_num_threads(),
        "args": common.settings(args), "heldout_queries": len(held), "finetune_s": finetune_s, "rows": rows,
        "table": table, "wall_s": round(time.time() - started, 1)}, args, argv)
    if args.append:
        common.append_benchmarks(common.section(
            "Approximate computing (AxFormer) on a SciFact-fine-tuned MiniLM (`bench/approx.py`)", record, table))
    return record


if __name__ == "__main__":
    main()
