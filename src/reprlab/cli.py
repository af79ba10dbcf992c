"""The ``reprlab`` command.

Subcommands and their choices come from the registries (attention variants, retrievers, masking
schemes, ...), never from lists copied here. Bad input prints one line and exits with status 2.

    reprlab demo [--data BEIR_DIR]
    reprlab index --corpus DIR --model minilm --out INDEX_DIR [--factory STR]
    reprlab search --index INDEX_DIR "query text" [-k 10]
    reprlab evaluate --data BEIR_DIR --split test --retriever minilm|bm25|hybrid|MODEL_DIR [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from reprlab.cli_format import print_table, short
from reprlab.errors import ReprlabError

logger = logging.getLogger("reprlab")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- helpers


def load_corpus(path: str):
    """A corpus from a BEIR folder, a corpus .jsonl file or an MS MARCO collection .tsv."""
    from reprlab.text import beir, msmarco

    p = Path(path)
    if p.is_dir():
        return beir.read_corpus(p / "corpus.jsonl")
    if p.suffix == ".tsv":
        return msmarco.read_collection(p)
    return beir.read_corpus(p)


# ----------------------------------------------------------------------------- config dataclasses as options


def _simple_type(hint):
    """int/float/str/bool for ``X`` or ``X | None``; None for anything else (lists, configs, ...)."""
    import types
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return hint if hint in (int, float, str, bool) else None


def add_config_options(parser, cls, skip=(), defaults=None) -> None:
    """One ``--field-name`` option per simple field of a config dataclass (help and choices from metadata)."""
    import dataclasses

    import typing

    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _simple_type(hints[f.name])
        if f.name in skip or kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_ = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"),
                                help=f"{help_} (default: {default})".strip())


def config_from_args(cls, args, **extra):
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(extra)
    return cls(**values)


TRAIN_SKIP = ("output_dir", "extra", "metrics_file", "find_unused_parameters")


def add_train_options(parser, **defaults) -> None:
    from reprlab.train.loop import TrainConfig

    group = parser.add_argument_group("training loop")
    add_config_options(group, TrainConfig, skip=TRAIN_SKIP, defaults=defaults)


def train_config(args):
    from reprlab.train.loop import TrainConfig

    return config_from_args(TrainConfig, args, output_dir=args.output_dir)


# ----------------------------------------------------------------------------- index / search / evaluate


def cmd_index(args) -> None:
    from reprlab.retrieval.dense import DenseRetriever

    corpus = load_corpus(args.corpus)
    t0 = time.time()
    retriever = DenseRetriever.from_model(args.model, batch_size=args.batch_size, precision=args.precision)
    retriever.index_corpus(corpus, factory=args.factory)
    retriever.save(args.out)
    logger.info(f"indexed {len(corpus)} documents with {args.model} ({args.factory}) in {time.time() - t0:.1f}s "
                f"-> {args.out}")


def cmd_search(args) -> None:
    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.load(args.index)
    scores, ids = retriever.search(args.query, k=args.k)
    for qi, query in enumerate(args.query):
        if len(args.query) > 1:
            print(f"# {query}")
        rows = []
        for rank, (doc_id, score) in enumerate(zip(ids[qi], scores[qi]), 1):
            if doc_id is None:
                break
            doc = retriever.docs.get(doc_id, {})
            rows.append({"rank": rank, "id": doc_id, "score": f"{score:.4f}",
                         "title": short(doc.get("title") or doc.get("text", ""), 70)})
        print_table(rows, ["rank", "id", "score", "title"])


def cmd_evaluate(args) -> None:
    from reprlab.retrieval.metrics import check_metrics, evaluate
    from reprlab.retrieval.pipeline import build_retriever, retrieve
    from reprlab.text.beir import load_beir
    from reprlab.text.trec import write_run

    check_metrics(args.metrics)
    data = load_beir(args.data, split=args.split)
    t0 = time.time()
    retriever = build_retriever(args.retriever, data.corpus, factory=args.factory, batch_size=args.batch_size,
                                precision=args.precision)
    queries = {q: data.queries[q] for q in data.judged_queries()}
    run = retrieve(retriever, queries, k=args.k)
    metrics = evaluate(data.qrels, run, metrics=args.metrics, ignore_identical_ids=not args.keep_identical_ids)
    if args.run_out:
        write_run(args.run_out, run, tag=Path(str(args.retriever)).name)
    if args.json:
        print(json.dumps(metrics))
        return
    logger.info(f"{args.retriever} on {args.data} ({args.split}, {len(queries)} judged queries) in "
                f"{time.time() - t0:.1f}s")
    print_table([{"measure": k, "value": f"{v:.4f}"} for k, v in metrics.items()], ["measure", "value"])


# ----------------------------------------------------------------------------- dense training


def cmd_mine(args) -> None:
    from reprlab.retrieval.mining import MiningConfig, mine_hard_negatives, provenance
    from reprlab.retrieval.pipeline import build_retriever
    from reprlab.text.beir import load_beir
    from reprlab.text.examples import write_examples

    lo, _, hi = args.range.partition("-")
    try:
        rank_range = (int(lo), int(hi or args.depth))
    except ValueError:
        raise ReprlabError(f"--range must look like 10-100, got {args.range!r}") from None
    config = MiningConfig(depth=args.depth, rank_range=rank_range, num_negatives=args.num_negatives,
                          duplicate_jaccard=args.duplicate_jaccard, relative_margin=args.relative_margin)
    data = load_beir(args.data, split=args.split)
    retriever = build_retriever(args.retriever, data.corpus, factory=args.factory, batch_size=args.batch_size,
                                precision=args.precision)
    examples = mine_hard_negatives(retriever, data.judged_queries(), data.qrels, data.corpus, config)
    meta = provenance(args.retriever, "bm25s" if args.retriever == "bm25" else args.factory, config,
                      data=str(args.data), split=args.split)
    n = write_examples(args.out, examples, provenance=meta)
    logger.info(f"wrote {n} training examples with up to {config.num_negatives} negatives each -> {args.out}")


def _dev_ids(args):
    from reprlab.retrieval.pipeline import holdout
    from reprlab.text.beir import load_beir

    if not args.dev_fraction:
        return []
    return holdout(list(load_beir(args.data, split=args.split).judged_queries()), args.dev_fraction)


def cmd_train_dpr(args) -> None:
    from reprlab.retrieval.dpr import DprConfig, run_dpr

    config = config_from_args(DprConfig, args, exclude_queries=_dev_ids(args) if args.data else (),
                              train=train_config(args))
    result = run_dpr(config)
    logger.info(f"DPR: {result.steps} steps on {result.examples} queries; model -> {result.model_dir}")


def cmd_train_ance(args) -> None:
    from reprlab.retrieval.ance import AnceConfig, run_ance

    config = config_from_args(AnceConfig, args, dev_queries=_dev_ids(args), train=train_config(args))
    result = run_ance(config)
    logger.info(f"ANCE: {result.steps} steps, {result.versions} index versions ({result.refresh_log}); "
                f"model -> {result.model_dir}")


# ----------------------------------------------------------------------------- demo


def cmd_demo(args) -> None:
    from reprlab.demo import run_demo

    run_demo(data=args.data, show=args.show, ance_steps=args.ance_steps)


# ----------------------------------------------------------------------------- hashing, multi-hop, QA


def add_retrieval_qa_commands(sub, recipes) -> None:
    """``index --binary``, ``train hashing|mdr|reader``, ``search/evaluate --multihop``, ``answer``."""


# ----------------------------------------------------------------------------- model info, pre-training, compression


def add_model_commands(sub, recipes) -> None:
    """``model-info``, ``pmi-vocab``, ``pretrain mlm|cmlm``, ``distill kd|ckd|seed``, ``compress approx``."""


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from reprlab.retrieval.metrics import DEFAULT_METRICS
    from reprlab.retrieval.pipeline import RETRIEVER_NAMES

    parser = ArgumentParser(prog="reprlab", description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("demo", help="the main job on the embedded corpus (or --data BEIR_DIR)")
    p.add_argument("--data", help="a BEIR folder to use instead of the embedded corpus")
    p.add_argument("--show", type=int, default=3, help="questions whose results are printed")
    p.add_argument("--ance-steps", type=int, default=12, help="steps of the ANCE fine-tune (0 = skip it)")
    p.set_defaults(func=cmd_demo)

    def encoding_options(p):
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
        p.add_argument("--factory", default="Flat", help='FAISS factory string, e.g. "HNSW32" (default: exact)')

    p = sub.add_parser("index", help="encode a corpus into a searchable index folder")
    p.add_argument("--corpus", required=True, help="BEIR folder, corpus.jsonl or MS MARCO collection.tsv")
    p.add_argument("--model", default="minilm", help="model folder or 'minilm'")
    p.add_argument("--out", required=True, help="index folder to write")
    encoding_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index folder")
    p.add_argument("--index", required=True)
    p.add_argument("query", nargs="+")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("evaluate", help="evaluate a retriever on a BEIR folder")
    p.add_argument("--data", required=True, help="BEIR folder")
    p.add_argument("--split", default="test")
    p.add_argument("--retriever", default="minilm", help=f"{' | '.join(RETRIEVER_NAMES)} | MODEL_DIR")
    p.add_argument("-k", type=int, default=100, help="results per query")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="pytrec_eval measure names")
    p.add_argument("--keep-identical-ids", action="store_true",
                   help="score a result whose id equals its query id (BEIR removes them)")
    p.add_argument("--run-out", help="write the run as a TREC run file")
    p.add_argument("--json", action="store_true", help="print one JSON object of the measures")
    encoding_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mine", help="mine hard negatives once with any retriever -> training JSONL")
    p.add_argument("--data", required=True, help="BEIR folder")
    p.add_argument("--split", default="train")
    p.add_argument("--retriever", default="bm25", help=f"{' | '.join(RETRIEVER_NAMES)} | MODEL_DIR")
    p.add_argument("--out", required=True, help="training JSONL to write")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--range", default="1-100", help="ranks that may become negatives, e.g. 10-100")
    p.add_argument("--num-negatives", type=int, default=30)
    p.add_argument("--duplicate-jaccard", type=float, default=0.9, help="word-set Jaccard marking a near-duplicate")
    p.add_argument("--relative-margin", type=float, default=None)
    encoding_options(p)
    p.set_defaults(func=cmd_mine)

    train_parser = sub.add_parser("train", help="training recipes")
    recipes = train_parser.add_subparsers(dest="recipe", required=True, parser_class=ArgumentParser)
    from reprlab.retrieval.ance import AnceConfig
    from reprlab.retrieval.dpr import DprConfig

    p = recipes.add_parser("dpr", help="dual encoder with in-batch + BM25 hard negatives")
    p.add_argument("--out", dest="output_dir", required=True)
    p.add_argument("--dev-fraction", type=float, default=0.0, help="train queries held out (not trained on)")
    add_config_options(p, DprConfig, skip=("output_dir",))
    add_train_options(p, epochs=3.0, batch_size=32, lr=2e-5)
    p.set_defaults(func=cmd_train_dpr)

    p = recipes.add_parser("ance", help="ANCE: negatives from an asynchronously refreshed ANN index")
    p.add_argument("--out", dest="output_dir", required=True)
    p.add_argument("--dev-fraction", type=float, default=0.1, help="train queries held out and scored per refresh")
    add_config_options(p, AnceConfig, skip=("output_dir",))
    add_train_options(p, epochs=3.0, batch_size=32, lr=2e-5)
    p.set_defaults(func=cmd_train_ance)

    add_retrieval_qa_commands(sub, recipes)
    add_model_commands(sub, recipes)
    return parser


def _command(args) -> str:
    return " ".join(x for x in (args.command, getattr(args, "recipe", None)) if x)


def main(argv: list[str] | None = None) -> int:
    from reprlab.logs import setup_cli_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(logging.WARNING if args.quiet or getattr(args, "json", False) else logging.INFO)
    try:
        args.func(args)
    except ReprlabError as exc:
        print(f"reprlab {_command(args)}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"reprlab {_command(args)}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reprlab {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
