"""Dense-retrieval training on SciFact: zero-shot MiniLM, BM25, the sentence-transformers peer, our DPR and ANCE.

One run, one budget: every trained row starts from all-MiniLM-L6-v2 and gets the same epochs, batch
size, learning rate, max length and number of hard negatives per query. Training uses SciFact's
``qrels/train.tsv`` minus a held-out dev slice (``--dev-fraction``, by hash of the query id; ANCE
scores it at each refresh); every row is evaluated on ``qrels/test.tsv``, and zero-shot on Cranfield
and CISI. The peer is sentence-transformers' MultipleNegativesRankingLoss with one hard negative mined
by its own ``mine_hard_negatives`` (dense, with the model being trained), run inside this script. The row
``st-mnrl-b64`` is the peer's best recipe that the issue measured on a GPU: MNRL with in-batch negatives only,
at twice the batch (64 queries and 64 passages per step: as many passages as a batch of 32 with one hard
negative each), the other settings as for every row.

    python bench/train_retrieval.py --epochs 3 --batch-size 32 --lr 5e-5
    python bench/train_retrieval.py --quick          # smoke run: 40 training queries, ~200 documents, 1 epoch
    python bench/train_retrieval.py --quick --rows minilm bm25 dpr ance   # without the peer (needs `datasets`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common
from reprlab.io import atomic_write_json

ROWS = ("minilm", "bm25", "st-mnrl", "st-mnrl-b64", "dpr", "ance", "ance-top50")


def train_pairs(data, exclude):
    from reprlab.text.beir import doc_text

    pairs = []
    for q, text in data.judged_queries().items():
        if q in exclude:
            continue
        for d, r in data.qrels[q].items():
            if r > 0 and d in data.corpus:
                pairs.append((text, doc_text(data.corpus[d])))
    return pairs


def run_peer(data, exclude, args, out: Path, batch_size: int, num_negatives: int) -> tuple[str, float]:
    """sentence-transformers MNRL with ``num_negatives`` mined hard negatives (its own miner and trainer)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from sentence_transformers.util import mine_hard_negatives

    from reprlab.hub import resolve_model_path
    from reprlab.text.beir import doc_text

    t0 = time.time()
    model = SentenceTransformer(str(resolve_model_path("minilm")), device=args.device)
    model.max_seq_length = args.max_length
    mined = out / "train-mined.jsonl"  # kept, so that a resumed run trains on the same triples
    if mined.is_file():
        dataset = Dataset.from_json(str(mined))
    else:
        pairs = train_pairs(data, exclude)
        dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
        if num_negatives:
            dataset = mine_hard_negatives(dataset, model, corpus=[doc_text(d) for d in data.corpus.values()],
                                          num_negatives=num_negatives, range_min=10, range_max=50,
                                          relative_margin=0.05, sampling_strategy="random", batch_size=64,
                                          use_faiss=True, verbose=False)
        out.mkdir(parents=True, exist_ok=True)
        dataset.to_json(str(mined.with_suffix(".tmp")))
        mined.with_suffix(".tmp").replace(mined)
    checkpoints = out / "st-checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=args.epochs,
        per_device_train_batch_size=batch_size, learning_rate=args.lr, warmup_ratio=0.1, seed=args.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="steps", save_steps=25, save_total_limit=1,
        logging_steps=10, report_to="none", use_cpu=args.device == "cpu", disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train(resume_from_checkpoint=True if resume else None)  # a cut run goes on from its last save
    model.save(str(out / "model"))
    return str(out / "model"), time.time() - t0


def evaluate_model(spec: str, datasets: dict, args) -> dict:
    from reprlab.retrieval.pipeline import build_retriever, evaluate_retriever

    scores = {}
    for name, data in datasets.items():
        retriever = build_retriever(spec, data.corpus, batch_size=64)
        if hasattr(retriever, "model"):
            retriever.model.max_length = args.max_length
        scores[name] = evaluate_retriever(retriever, data, metrics=("ndcg_cut_10", "recall_100"))
    return scores


# The arguments a row's numbers depend on; --reuse keeps a row only if they match.
SETTINGS = ("epochs", "batch_size", "lr", "max_length", "num_negatives", "refresh_every", "skip_top", "ance_loss",
            "dev_fraction", "seed", "ance_top_k", "quick", "zero_shot")


def save_rows(path: Path, rows: list[dict]) -> None:
    """Merge ``rows`` into the results file at ``path``, replacing rows of the same name and keeping the others
    (so runs of different rows into one folder, even at the same time, do not drop each other's rows)."""
    kept = json.loads(path.read_text()) if path.is_file() else []
    names = {r["row"] for r in rows}
    atomic_write_json(path, [r for r in kept if r["row"] not in names] + rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common.bench_options(
        work_dir=str(common.REPO / "runs" / "bench-train-retrieval"))])
    parser.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    parser.add_argument("--zero-shot", nargs="*", type=Path, default=[common.data_path(name, "beir", check=False)
                                                                       for name in ("cranfield", "cisi")])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--refresh-every", type=int, default=20, help="ANCE: steps between index refreshes")
    parser.add_argument("--skip-top", type=int, default=0, help="ANCE: top ranks never used as negatives")
    parser.add_argument("--ance-loss", default="softmax", choices=("softmax", "pairwise"))
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ance-top-k", type=int, default=200, help="ANCE: ANN depth negatives are sampled from")
    parser.add_argument("--reuse", action="store_true",
                        help="keep rows already in <work-dir>/results.json (same settings)")
    parser.add_argument("--results", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    args = common.parse(parser, argv)
    common.require(args.data, "--data")
    if args.quick:
        args.epochs, args.batch_size, args.max_length, args.refresh_every = 1, 8, 64, 3
    else:
        for folder in args.zero_shot:
            common.require(folder, "--zero-shot")
    return args


def prepare(args) -> tuple[Path, object, list[str], dict]:
    """(the BEIR folder trained on, its train split, the dev query ids held out of training, the test sets);
    a quick run trains on a small folder (40 train + 30 test queries, their documents and 100 others) and is
    scored on its test side only."""
    from reprlab.retrieval.pipeline import holdout
    from reprlab.text.beir import load_beir

    data_dir = args.data
    if args.quick:
        data_dir = common.write_subsample(args.data, args.work_dir / "data", {"train": 40, "test": 30}, 100)
    train_data = load_beir(data_dir, split="train")
    dev = holdout(list(train_data.judged_queries()), args.dev_fraction)
    eval_sets = {"scifact": load_beir(data_dir, split="test")}
    if not args.quick:
        eval_sets.update({Path(p).parent.name: load_beir(p, split="test") for p in args.zero_shot})
    return data_dir, train_data, dev, eval_sets


def train_row(row: str, args, data_dir: Path, train_data, dev: list[str]) -> tuple[str, dict]:
    """Train one row (nothing for the zero-shot ones); (retriever spec or model folder, info)."""
    from reprlab.retrieval.ance import AnceConfig, run_ance
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.train import TrainConfig

    out = args.work_dir
    loop = TrainConfig(output_dir=str(out / row), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       warmup_ratio=0.1, seed=args.seed, device=args.device, log_every=5,
                       checkpoint_every=25, resume=True)  # a cut run resumes
    t0 = time.time()
    info: dict = {}
    if row in ("minilm", "bm25"):
        return row, info
    if row == "st-mnrl":
        spec, info["train_seconds"] = run_peer(train_data, set(dev), args, out / row, args.batch_size,
                                               args.num_negatives)
    elif row == "st-mnrl-b64":  # the peer's best recipe: in-batch negatives only, batch 64
        spec, info["train_seconds"] = run_peer(train_data, set(dev), args, out / row, 64, 0)
    elif row == "dpr":
        result = run_dpr(DprConfig(output_dir=str(out / row), data=str(data_dir), split="train", model="minilm",
                                   num_negatives=args.num_negatives, passage_max_length=args.max_length,
                                   exclude_queries=dev, train=loop))
        spec, info["train_seconds"] = result.model_dir, time.time() - t0
    else:  # "ance": the paper's top-200; "ance-top50": negatives from the top 50 (1% of SciFact's corpus)
        top_k = 50 if row == "ance-top50" else args.ance_top_k
        result = run_ance(AnceConfig(output_dir=str(out / row), data=str(data_dir), split="train", model="minilm",
                                     refresh_every=args.refresh_every, num_negatives=args.num_negatives,
                                     top_k=top_k, skip_top=args.skip_top, loss=args.ance_loss,
                                     passage_max_length=args.max_length, dev_queries=dev, train=loop))
        spec, info["train_seconds"] = result.model_dir, time.time() - t0
        info["refreshes"] = [json.loads(line) for line in open(result.refresh_log)]
    return spec, info


def run_rows(args, data_dir: Path, train_data, dev: list[str], eval_sets: dict) -> list[dict]:
    """Every ``--rows`` entry trained and scored, each saved to <work-dir>/results.json as soon as it is
    done (``--reuse`` keeps the saved rows made with the same settings)."""
    out = args.work_dir
    settings = {k: getattr(args, k) for k in SETTINGS}
    settings["zero_shot"] = [str(p) for p in args.zero_shot]
    settings["data"] = str(Path(args.data).resolve())
    done = {}
    if args.reuse and (out / "results.json").is_file():
        done = {r["row"]: r for r in json.loads((out / "results.json").read_text())}
    results = []
    for row in args.rows:
        if row in done:
            if done[row].get("settings") != settings:
                raise SystemExit(f"{out / 'results.json'}: row {row!r} was made with settings "
                                 f"{done[row].get('settings')}, not {settings}; use another --work-dir or "
                                 "drop --reuse")
            results.append(done[row])
            continue
        info: dict = {"row": row, "settings": settings}
        if (out / row / "checkpoints").is_dir() or any((out / row / "st-checkpoints").glob("checkpoint-*")):
            info["resumed"] = True  # its train time covers this invocation only
        spec, trained = train_row(row, args, data_dir, train_data, dev)
        info.update(trained)
        t1 = time.time()
        info["scores"] = evaluate_model(spec, eval_sets, args)
        info["eval_seconds"] = time.time() - t1
        results.append(info)
        print(f"{row}: {json.dumps(info['scores'])}", file=sys.stderr, flush=True)
        save_rows(out / "results.json", [info])
    return results


def markdown(results: list[dict], sets: list[str], args, stamp: dict) -> str:
    lines = [
        f"### Dense-retrieval training on SciFact ({'quick subset' if args.quick else 'full'}; "
        f"{args.epochs:g} epochs, batch {args.batch_size}, lr {args.lr:g}, max length {args.max_length}, "
        f"{args.num_negatives} hard negative(s), {args.device})",
        "",
        f"`{stamp['command']}` on {stamp['machine']}, {stamp['date']}. "
        f"Trained on SciFact train minus a {args.dev_fraction:.0%} dev slice; "
        "nDCG@10 / recall@100 on each test split; Cranfield and CISI are zero-shot.",
        "",
        "| row | " + " | ".join(f"{s} nDCG@10 | {s} R@100" for s in sets) + " | train time (s) |",
        "|---|" + "---|---|" * len(sets) + "---|",
    ]
    for r in results:
        cells = " | ".join(f"{r['scores'][s]['ndcg_cut_10']:.4f} | {r['scores'][s]['recall_100']:.4f}" for s in sets)
        resumed = " (resumed)" if r.get("resumed") else ""
        lines.append(f"| {r['row']} | {cells} | {r.get('train_seconds', 0):.0f}{resumed} |")
    if any(r.get("resumed") for r in results):
        lines += ["", "(resumed): the row went on from a cut run's checkpoint; its train time covers the last "
                  "invocation only."]
    for ance in (r for r in results if r["row"].startswith("ance")):
        lines += ["", f"{ance['row']} refreshes (version: weights of step -> used from step, encode seconds, "
                  "dev nDCG@10): " + "; ".join(
                      f"v{x['version']}: {x['checkpoint_step']}->{x['switched_at_step']}, {x['encode_seconds']:.0f}s, "
                      f"{x.get('dev_ndcg_cut_10', float('nan')):.4f}" for x in ance["refreshes"])]
    return "\n".join(lines)


def main(argv=None) -> None:
    import logging

    import torch

    from reprlab.logs import setup_cli_logging

    args = parse_args(argv)
    setup_cli_logging(logging.INFO)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data_dir, train_data, dev, eval_sets = prepare(args)
    results = run_rows(args, data_dir, train_data, dev, eval_sets)
    stamp = common.stamp(argv)
    table = markdown(results, list(eval_sets), args, stamp)
    print(table)
    common.write_result("train_retrieval", {**stamp, "args": common.settings(args), "results": results}, args, argv)
    if args.append:
        common.append_benchmarks(table)


if __name__ == "__main__":
    main()
