"""Tuning distillation settings on a dev split of SciFact's *train* queries (the test qrels are never read).

``bench/distill.py`` reports on the test qrels with one fixed recipe; settings are chosen here first.
Each call trains one student with the same budget as ``bench/distill.py`` (or takes a finished model
folder with ``--model``) and reports nDCG@10 on the dev slice: the train-split queries whose id falls
in the ``--dev-fraction`` (0.2) hash slice of :mod:`reprlab.text.splits`, the same slice DPR/ANCE's
``--dev-fraction`` and ``bench/curricula.py`` hold out. The student is distilled on the SciFact corpus
plus the *other* train-split queries: the dev queries' text is never read (``DistillConfig.dev_fraction``),
and the result JSON lists the dev query ids and checks that none of their texts is a training text.
``--dev-fraction 0`` is the old transductive study (all 809 train queries, read in training too).

    python bench/distill_dev.py --name ckd-matched --method ckd --layer-map 0:0,1:1,2:5,3:6
    python bench/distill_dev.py --name kd-400 --model /tmp/reprlab-bench-distill/kd/model
    python bench/distill_dev.py --name narrow-kd --method kd --steps 1200 --lr 5e-4 \
        --student config:hidden_size=192,num_heads=6,intermediate_size=768,num_layers=3,embedding_size=384
    python bench/distill_dev.py --quick --method ckd                 # smoke run: 3 steps, 20 dev queries

A finished run folder (``--work-dir``/``--name``) can then be scored on the test qrels without training
again: ``bench/distill.py ... --trained kd=WORK_DIR/NAME``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common.bench_options(work_dir="/tmp/reprlab-distill-dev")])
    p.add_argument("--name", default=None,
                   help="names the result file bench/results/distill-dev-NAME.json (required, but for --quick)")
    p.add_argument("--model", default=None, help="evaluate this finished student folder instead of training one")
    p.add_argument("--method", choices=("kd", "ckd", "seed"), default="ckd")
    p.add_argument("--student", default="layers:0,4,5", help="the layers bench/distill.py's auto:3 chose")
    p.add_argument("--ckd-weights", default="100,10,100,10", help="wr_pair,wr_triplet,ltr_pair,ltr_triplet")
    p.add_argument("--layer-map", default=None, help="student:teacher hidden-state pairs, e.g. 0:0,1:1,2:5,3:6 "
                   "(default: student state i with teacher state round(i * 6 / 3))")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, fresh weights)")
    p.add_argument("--dev-fraction", type=float, default=0.2,
                   help="the hash dev slice of the train-split queries (reprlab.text.splits by query id, as DPR/ANCE "
                        "and curricula.py): left out of the training text and scored on; 0 = all train queries, "
                        "read in training too (the old transductive study)")
    p.add_argument("--train-only", action="store_true",
                   help="train, write WORK_DIR/NAME/trained.json and stop; score later with --model WORK_DIR/NAME/model "
                        "(which reads trained.json back), e.g. on another machine or in another process")
    args = common.parse(p, argv)
    if args.name is None and not args.quick:
        p.error("--name is required (it names the result file)")
    args.name = args.name or args.method
    if not 0.0 <= args.dev_fraction < 1.0:
        p.error(f"--dev-fraction must be in [0, 1), got {args.dev_fraction}")
    if args.quick:
        args.steps, args.batch_size = 3, 8
    return args


def train(args, scifact: Path):
    """One student with bench/distill.py's recipe, the dev slice's query text left out; returns the model
    folder and the config it was trained with."""
    from reprlab.distill.recipe import run_distillation

    config = distill_config(args, scifact)
    return run_distillation(config).model_dir, config


def distill_config(args, scifact: Path):
    layer_map = [[int(x) for x in pair.split(":")] for pair in args.layer_map.split(",")] if args.layer_map else None
    return common.distill_config(
        args.method, args.student, args.work_dir / args.name, scifact, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, device=args.device, seed=args.seed, max_texts=200 if args.quick else None,
        ckd_weights=args.ckd_weights.split(","), layer_map=layer_map, dev_fraction=args.dev_fraction)


def dev_split(scifact: Path, fraction: float, quick: bool):
    """The dev slice of SciFact's train-split queries (all of them for ``fraction`` 0) as a BeirDataset."""
    from reprlab.retrieval.pairs import dev_queries
    from reprlab.text.beir import BeirDataset, load_beir

    data = load_beir(scifact, split="train")
    dev = dev_queries(data, fraction) if fraction else sorted(data.judged_queries())
    data = BeirDataset(data.corpus, {q: data.queries[q] for q in dev}, {q: data.qrels[q] for q in dev})
    return common.subsample(data, 20, 100) if quick else data


def leaked(config, dev) -> tuple[int, int]:
    """(training texts, dev query texts among them): what ``config`` reads, checked against the dev slice."""
    from reprlab.text.corpus import read_texts

    texts = set(read_texts(config.corpus, config.text_options()))
    return len(texts), sum(text.strip() in texts for text in dev.judged_queries().values())


def main(argv=None) -> dict:
    from reprlab.encoder import SentenceEncoder
    from reprlab.io import atomic_write_json

    args = parse_args(argv)
    started = time.time()
    scifact = common.data_path("scifact", "beir")
    dev = dev_split(scifact, args.dev_fraction, args.quick)
    trained_fraction = args.dev_fraction  # the dev fraction the student was trained with (None: unknown)
    if args.model:
        model_dir, ckd, train_s, trained_fraction = Path(args.model), None, None, None
        trained = model_dir.parent / "trained.json"
        if trained.is_file():  # trained by --train-only: its seconds, CKD and dev settings
            done = json.loads(trained.read_text())
            ckd, train_s, trained_fraction = done["ckd"], done["train_s"], done.get("dev_fraction")
    else:
        model_dir, config = train(args, scifact)
        ckd, train_s = vars(config.ckd), round(time.time() - started, 1)
        if args.train_only:
            atomic_write_json(model_dir.parent / "trained.json", {
                "ckd": ckd, "train_s": train_s, "model": str(model_dir), "dev_fraction": args.dev_fraction,
                "command": common.command_line(argv)})
            print(f"{args.name}: trained in {train_s} s -> {model_dir}")
            return {"train_s": train_s, "model": str(model_dir)}
    known = trained_fraction == args.dev_fraction  # then the training texts are those of distill_config(args)
    n_texts, in_training = leaked(distill_config(args, scifact), dev) if known else (None, None)
    if in_training:
        print(f"warning: {in_training} dev query texts are also training texts", flush=True)
    model = SentenceEncoder.from_pretrained(str(model_dir), max_length=64 if args.quick else 256).to(args.device)
    ndcg = round(common.evaluate_dense(model, dev, batch_size=64)["ndcg_cut_10"], 4)
    dev_ids = list(dev.judged_queries())
    record = common.write_result(f"distill-dev-{args.name}", {
        "benchmark": "distill-dev", "name": args.name,
        "dev": (f"scifact qrels/train.tsv, the {args.dev_fraction} hash dev slice of its queries "
                "(reprlab.retrieval.pairs.dev_queries), their text left out of the distillation texts"
                if args.dev_fraction else "scifact qrels/train.tsv, every query (also read as training text)"),
        "dev_fraction": args.dev_fraction, "dev_queries": len(dev_ids), "dev_query_ids": dev_ids,
        "training_texts": n_texts, "dev_texts_in_training": in_training,
        "dev_text_excluded": None if not known else bool(args.dev_fraction) and in_training == 0,
        "ndcg@10_dev": ndcg, "ckd": ckd,
        "args": common.settings(args), "train_s": train_s, "wall_s": round(time.time() - started, 1)},
        args, argv)
    print(f"{args.name}: SciFact dev ({len(dev_ids)} train-split queries, text excluded: "
          f"{record['dev_text_excluded']}) nDCG@10 {ndcg}  ({record['wall_s']} s)")
    if args.append:
        common.append_benchmarks(common.section(
            f"Distillation settings on the dev split: {args.name} (`bench/distill_dev.py`)", record,
            f"| run | method | student | steps | SciFact dev nDCG@10 ({record['dev_queries']} queries) |\n"
            f"|---|---|---|---|---|\n| {args.name} | {args.method} | {args.student} | {args.steps} | {ndcg:.4f} |"))
    return record


if __name__ == "__main__":
    main()
