"""``reprlab kg-eval``: fine-tune and evaluate a knowledge module (JAKET or a plain encoder) on a KG task.

    reprlab kg-eval --task link     --kg DIR --model OUT/model [--no-graph] [--steps 500]
    reprlab kg-eval --task category --kg DIR --model minilm --categories TSV [--no-graph]
    reprlab kg-eval --task relation --kg DIR --model OUT/model --shots 5 [--labelled TRIPLES.tsv]

``--model`` is a JAKET model folder (its LM1, knowledge module and relation head) or any encoder
folder / ``minilm`` (its sentence vectors and a fresh module: the same LM without JAKET pre-training).
The tasks are described in :mod:`reprlab.pretrain.jaket.tasks`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from reprlab.cli_format import print_table

logger = logging.getLogger("reprlab")


def cmd_kg_eval(args) -> None:
    from reprlab.errors import ConfigError
    from reprlab.pretrain.jaket import tasks
    from reprlab.text.kg import read_categories, read_kg, read_triples

    for name in ("steps", "shots", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"must be at least 1, got {getattr(args, name)}", field=name)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"must be a positive number, got {args.lr}", field="lr")
    if args.task == "category" and not args.categories:
        raise ConfigError("the category task needs --categories (a TSV entity<TAB>category)", field="categories")
    kg = read_kg(args.kg, args.descriptions)
    labelled = read_triples(args.labelled, kg) if args.labelled else None
    categories = read_categories(args.categories, kg) if args.categories else None
    vectors = tasks.description_vectors(args.model, kg)
    if args.task == "link":
        result = tasks.link_prediction(vectors, kg, graph=args.graph, steps=args.steps, batch_size=args.batch_size,
                                       lr=args.lr, seed=args.seed, split=args.split)
    elif args.task == "category":
        result = tasks.category_prediction(vectors, kg, categories, use_km=args.graph, seed=args.seed)
    else:
        result = tasks.relation_prediction(vectors, kg, shots=args.shots, steps=args.steps, lr=args.lr,
                                           seed=args.seed, split=args.split, labelled=labelled)
    result = {"task": args.task, "model": vectors.source, "graph": args.graph, **result}
    if args.json:
        print(json.dumps(result))
    else:
        print_table([{"metric": k, "value": f"{v:.4f}" if isinstance(v, float) else v} for k, v in result.items()],
                    ["metric", "value"])


def add_commands(sub) -> None:
    from reprlab.pretrain.jaket.tasks import TASKS

    p = sub.add_parser("kg-eval", help="fine-tune and evaluate a knowledge module on link, category or relation "
                       "prediction (JAKET)")
    p.add_argument("--task", choices=TASKS, required=True, help="the task (required)")
    p.add_argument("--kg", required=True, help="knowledge-graph folder (required)")
    p.add_argument("--model", default="minilm", help="JAKET model folder, or an encoder folder / 'minilm' "
                   "(default: minilm)")
    p.add_argument("--descriptions", default="entity2text.txt", help="entity description file in the KG folder "
                   "(default: entity2text.txt)")
    p.add_argument("--categories", default=None, help="TSV entity<TAB>category (the category task)")
    p.add_argument("--labelled", default=None, help="relation task: TSV of the labelled triples to fine-tune on "
                   "(default: --shots training triples per relation)")
    p.add_argument("--shots", type=int, default=5, help="relation task: labelled triples per relation (default: 5)")
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                   help="run the knowledge module over the graph (--no-graph: descriptions only) (default: on)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=512, help="link task: triples per step (default: 512)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: 0.001)")
    p.add_argument("--split", default="test", help="split reported (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and fresh weights (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_kg_eval)
