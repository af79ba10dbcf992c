"""Tuning distillation settings on a dev split: SciFact *train* qrels (the test qrels are never read).

``bench/distill.py`` reports on the test qrels with one fixed recipe; settings are chosen here first.
Each call trains one student with the same budget as ``bench/distill.py`` (or takes a finished model
folder with ``--model``) and reports nDCG@10 on the SciFact train queries:

    python bench/distill_dev.py --name ckd-matched --method ckd --layer-map 0:0,1:1,2:5,3:6
    python bench/distill_dev.py --name kd-400 --model /tmp/reprlab-bench-distill/kd/model
    python bench/distill_dev.py --name narrow-kd --method kd --steps 1200 --lr 5e-4 \
        --student config:hidden_size=192,num_heads=6,intermediate_size=768,num_layers=3,embedding_size=384

A finished run folder (``--work-dir``/``--name``) can then be scored on the test qrels without training
again: ``bench/distill.py ... --trained kd=WORK_DIR/NAME``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="names the result file bench/results/distill-dev-NAME.json")
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
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work-dir", default="/tmp/reprlab-distill-dev")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import KDConfig
    from reprlab.distill.recipe import DistillConfig, run_distillation
    from reprlab.distill.seed import SEEDConfig
    from reprlab.encoder import SentenceEncoder
    from reprlab.io import atomic_write_json
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.pipeline import evaluate_retriever
    from reprlab.text.beir import load_beir

    started = time.time()
    scifact = DATA / "scifact" / "beir"
    ckd = None
    if args.model is None:
        w = [float(x) for x in args.ckd_weights.split(",")]
        layer_map = None
        if args.layer_map:
            layer_map = [[int(x) for x in pair.split(":")] for pair in args.layer_map.split(",")]
        ckd = CKDConfig(wr_pair=w[0], wr_triplet=w[1], ltr_pair=w[2], ltr_triplet=w[3], window=21, layer_map=layer_map)
        config = DistillConfig(  # the budget and KD / SEED settings of bench/distill.py
            method=args.method, corpus=[str(scifact)], output_dir=str(Path(args.work_dir) / args.name),
            teacher="minilm", student=args.student, max_length=128, max_steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, warmup_ratio=0.1, device="cpu", seed=args.seed,
            kd=KDConfig(embedding="cosine", embedding_weight=1.0, score_weight=1.0, scale=20.0), ckd=ckd,
            seed_method=SEEDConfig(queue_size=2048, student_temperature=0.2, teacher_temperature=0.01))
        model_dir = run_distillation(config).model_dir
    else:
        model_dir = Path(args.model)
    train_s = time.time() - started
    dev = load_beir(scifact, split="train")  # the dev split: train qrels
    retriever = DenseRetriever(SentenceEncoder.from_pretrained(str(model_dir), max_length=256), batch_size=64)
    retriever.index_corpus(dev.corpus, show_progress=False)
    ndcg = round(evaluate_retriever(retriever, dev)["ndcg_cut_10"], 4)
    out = {"benchmark": "distill-dev", "name": args.name, "date": datetime.date.today().isoformat(),
           "dev": "scifact qrels/train.tsv", "dev_queries": len(dev.judged_queries()), "ndcg@10_dev": ndcg,
           "ckd": None if ckd is None else vars(ckd), "args": vars(args), "train_s": round(train_s, 1),
           "wall_s": round(time.time() - started, 1),
           "command": "python bench/distill_dev.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = REPO / "bench" / "results" / f"distill-dev-{args.name}.json"
    atomic_write_json(path, out)
    print(f"{args.name}: SciFact dev (train qrels) nDCG@10 {ndcg}  ({out['wall_s']} s) -> {path}")
    return out


if __name__ == "__main__":
    main()
