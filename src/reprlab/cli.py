"""The ``reprlab`` command.

Subcommands and their choices come from the registries (attention variants, retrievers, masking
schemes, ...), never from lists copied here. Bad input prints one line and exits with status 2.

    reprlab demo [--data BEIR_DIR]
    reprlab index --corpus DIR --model minilm --out INDEX_DIR [--factory STR]
    reprlab search --index INDEX_DIR "query text" [-k 10]
    reprlab evaluate --data BEIR_DIR --split test --retriever minilm|bm25|hybrid|MODEL_DIR [--json]
    reprlab index --corpus DIR --model M --out INDEX_DIR --binary BITS [--hash-method flat|hash|multihash]
    reprlab train hashing --data BEIR_DIR --out RUN_DIR [--scale 50] [--similarity angular]
    reprlab train mdr --data HOTPOT.jsonl --out RUN_DIR [--freeze-passages --memory-bank K]
    reprlab index --multihop --data HOTPOT.jsonl --model M --out INDEX_DIR
    reprlab search --multihop --index INDEX_DIR "question" [-k 5] [--beam 10] [--query-model DIR] [--bm25-weights W1,W2]
    reprlab evaluate --multihop --data HOTPOT.jsonl --retriever bm25|minilm|MODEL_DIR [--split eval] [--json]
        [--bm25-weights W1,W2]
    reprlab train reader --data SQUAD.json|HOTPOT.jsonl --out RUN_DIR [--block-skim --skim-layers 1]
    reprlab answer --model READER_DIR --question "..." (--context TEXT | --index INDEX_DIR [-k 5])
    reprlab model-info tiny|minilm_l6|CONFIG.json|MODEL_DIR|minilm [--seq-len 512] [--attention NAME] [--json]
    reprlab pmi-vocab --corpus FILE|DIR --out VOCAB.json [--max-n 5 --min-count 10 --size 10000]
    reprlab pretrain mlm --corpus FILE|DIR --model minilm --masking wwm|span|pmi|... --out RUN_DIR [--pmi-vocab F]
    reprlab pretrain cmlm --corpus SENTENCES.jsonl|DIR --model minilm --out RUN_DIR [--num-vectors 15]
    reprlab distill kd|ckd|seed --teacher minilm --student layers:0,2,4|every:2|config:...|auto:3 --corpus DIR
        --out RUN_DIR
    reprlab compress approx --model DIR --data BEIR_DIR --out RUN_DIR [--tolerance 0.01]
    (training recipes take --max-steps, --batch-size, --checkpoint-every, --resume, ...; see --help)
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


def add_retrieval_recipe(recipes, name: str, help: str, config_cls, func, dev_default: float, dev_help: str,
                         **train_defaults) -> None:
    """``reprlab train NAME --data BEIR --out DIR``: the config's fields, --dev-fraction and the loop's options."""
    p = recipes.add_parser(name, help=help)
    p.add_argument("--out", dest="output_dir", required=True)
    p.add_argument("--dev-fraction", type=float, default=dev_default, help=dev_help)
    add_config_options(p, config_cls, skip=("output_dir",))
    add_train_options(p, **train_defaults)
    p.set_defaults(func=func)


def train_config(args):
    from reprlab.train.loop import TrainConfig

    return config_from_args(TrainConfig, args, output_dir=args.output_dir)


# ----------------------------------------------------------------------------- index / search / evaluate


def cmd_index(args) -> None:
    from reprlab.retrieval.dense import DenseRetriever

    if _index_variant(args):  # --binary / --multihop (section "hashing, multi-hop, QA")
        return
    corpus = load_corpus(args.corpus)
    t0 = time.time()
    retriever = DenseRetriever.from_model(args.model, batch_size=args.batch_size, precision=args.precision)
    retriever.index_corpus(corpus, factory=args.factory)
    retriever.save(args.out)
    logger.info(f"indexed {len(corpus)} documents with {args.model} ({args.factory}) in {time.time() - t0:.1f}s "
                f"-> {args.out}")


def cmd_search(args) -> None:
    from reprlab.retrieval.dense import DenseRetriever

    if getattr(args, "multihop", False):
        return cmd_search_multihop(args)
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

    if getattr(args, "multihop", False):
        return cmd_evaluate_multihop(args)
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


def _index_variant(args) -> bool:
    """Run ``index --binary`` / ``index --multihop`` and return True, or False for the plain dense index."""
    multihop, binary = getattr(args, "multihop", False), getattr(args, "binary", None)
    data = getattr(args, "data", None)
    if multihop and (not data or args.corpus):
        raise ReprlabError("--multihop indexes the open corpus of a HotpotQA file: give --data HOTPOT.jsonl "
                           "(and no --corpus)")
    if data and not multihop:
        raise ReprlabError("--data (a HotpotQA file) is read with --multihop; give a BEIR corpus with --corpus")
    if not multihop and not args.corpus:
        raise ReprlabError("the following arguments are required: --corpus (or --multihop --data HOTPOT.jsonl)")
    hashing = {"--hash-method": (args.hash_method, "flat"), "--hash-bits": (args.hash_bits, 16),
               "--tables": (args.tables, 1), "--nflip": (args.nflip, 1), "--hash-seed": (args.hash_seed, 0),
               "--hash-score": (args.hash_score, "angular")}
    stray = [flag for flag, (value, default) in hashing.items() if value != default]
    if stray and not binary:
        raise ReprlabError(f"{stray[0]} is an option of binary indexes: add --binary BITS")
    if not multihop and not binary:
        return False
    cmd_index_variant(args)
    return True


def cmd_index_variant(args) -> None:
    """A SimHash binary index (``--binary BITS``) and/or the open corpus of a HotpotQA file (``--multihop``)."""
    from reprlab.retrieval.dense import DenseRetriever

    if args.multihop:
        from reprlab.text.hotpotqa import load_hotpotqa

        corpus, source = load_hotpotqa(args.data).corpus, args.data
    else:
        corpus, source = load_corpus(args.corpus), args.corpus
    t0 = time.time()
    if args.binary:
        from reprlab.retrieval.hashing import binary_retriever

        if args.factory != "Flat":
            raise ReprlabError("--factory builds float indexes; a --binary index is searched by --hash-method")
        retriever = binary_retriever(args.model, corpus, bits=args.binary, method=args.hash_method,
                                     hash_bits=args.hash_bits, tables=args.tables, nflip=args.nflip,
                                     seed=args.hash_seed, score=args.hash_score, batch_size=args.batch_size,
                                     precision=args.precision)
        kind = f"{args.binary}-bit SimHash codes, {args.hash_method}"
    else:
        retriever = DenseRetriever.from_model(args.model, batch_size=args.batch_size, precision=args.precision)
        retriever.index_corpus(corpus, factory=args.factory)
        kind = args.factory
    retriever.save(args.out)
    logger.info(f"indexed {len(corpus)} passages of {source} with {args.model} ({kind}) in {time.time() - t0:.1f}s "
                f"-> {args.out}")


def _weight_pair(text: str) -> tuple[float, float]:
    """``--bm25-weights W1,W2``: two non-negative numbers."""
    try:
        w1, w2 = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated weights (hop 1, hop 2), got {text!r}")
    if w1 < 0 or w2 < 0:
        raise argparse.ArgumentTypeError(f"weights must be >= 0, got {text!r}")
    return w1, w2


def cmd_search_multihop(args) -> None:
    from reprlab.retrieval.mdr import format_chains, search_index_folder

    chains, docs = search_index_folder(args.index, args.query, beam_size=args.beam, top_k=args.k,
                                       model=args.query_model, bm25_weights=args.bm25_weights)
    for question, found in zip(args.query, chains):
        print(format_chains(question, found, docs))


def cmd_evaluate_multihop(args) -> None:
    from reprlab.retrieval.mdr import MultiHopEvalConfig, evaluate_multihop

    config = MultiHopEvalConfig(
        data=args.data, retriever=args.retriever, split="eval" if args.split == "test" else args.split,
        eval_fraction=args.eval_fraction, single_hop=args.single_hop, beam_size=args.beam, ks=tuple(args.ks),
        batch_size=args.batch_size, max_length=args.max_length, factory=args.factory, bm25_weights=args.bm25_weights)
    metrics = evaluate_multihop(config)
    if args.json:
        print(json.dumps(metrics))
        return
    groups = [g for g, v in metrics.items() if isinstance(v, dict)]
    logger.info(f"{args.retriever} on the {config.split} side of {args.data} "
                f"({metrics['all']['n']} questions) in {metrics['seconds']}s")
    rows = [{"measure": m, **{g: f"{metrics[g][m]:.4f}" for g in groups}} for m in metrics["all"] if m != "n"]
    rows.append({"measure": "questions", **{g: metrics[g]["n"] for g in groups}})
    print_table(rows, ["measure", *groups])


def cmd_train_hashing(args) -> None:
    from reprlab.retrieval.hashing import HashingConfig, run_hashing

    config = config_from_args(HashingConfig, args, exclude_queries=_dev_ids(args) if args.data else (),
                              train=train_config(args))
    result = run_hashing(config)
    logger.info(f"hashing: {result.steps} steps on {result.examples} queries; model -> {result.model_dir} "
                f"(index it with `reprlab index --binary BITS --model {result.model_dir}`)")


def cmd_train_mdr(args) -> None:
    from reprlab.retrieval.mdr import NEGATIVE_SOURCES, MDRConfig, run_mdr_training

    sources = tuple(s for s in args.negative_sources.split(",") if s)
    bad = [s for s in sources if s not in NEGATIVE_SOURCES]
    if bad:
        raise ReprlabError(f"unknown negative source {bad[0]!r} in --negative-sources; choose from "
                           f"{', '.join(NEGATIVE_SOURCES)}")
    config = config_from_args(MDRConfig, args, negative_sources=sources, train=train_config(args))
    result = run_mdr_training(config)
    line = f"MDR: {result.steps} steps on {result.train_questions} questions; model -> {result.model_dir}"
    if result.eval_metrics:
        m = result.eval_metrics["all"]
        line += f"; eval ({m['n']} questions): exact pair {m['exact_pair']:.3f}, pair recall@10 " \
                f"{m.get('pair_recall@10', float('nan')):.3f}"
    logger.info(line)


def cmd_train_reader(args) -> None:
    from reprlab.qa.reader import ReaderConfig, ReaderTrainingConfig, run_reader_training

    reader = config_from_args(ReaderConfig, args, batch_size=args.reader_batch_size)
    config = config_from_args(ReaderTrainingConfig, args, reader=reader)
    if not args.block_skim:
        from reprlab.qa.block_skim import BlockSkimConfig

        if config_from_args(BlockSkimConfig, args) != BlockSkimConfig():
            raise ReprlabError("Block Skim options (--block-size, --threshold, --skim-layers, ...) need --block-skim")
    if args.block_skim:
        from reprlab.qa.block_skim import BlockSkimConfig, run_block_skim_training

        result = run_block_skim_training(config, config_from_args(BlockSkimConfig, args))
    else:
        result = run_reader_training(config)
    line = f"reader: {result.steps} steps on {result.train_examples} examples ({result.train_windows} windows); " \
           f"model -> {result.model_dir}"
    for name, m in (result.eval_metrics or {}).items():
        line += f"; {Path(name).name}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} ({m['n']} questions)"
    logger.info(line)


def load_reader(path: str):
    """A reader folder saved by ``reprlab train reader`` (Block Skim when it holds block_skim.json) or by
    transformers' ``BertForQuestionAnswering``; anything else is a ModelLoadError."""
    from reprlab.errors import ModelLoadError
    from reprlab.hub import resolve_model_path
    from reprlab.qa.block_skim import SKIM_CONFIG_FILE, BlockSkimReader
    from reprlab.qa.reader import READER_CONFIG_FILE, Reader

    folder = resolve_model_path(path)
    config = folder / "config.json"
    is_hf_qa = config.is_file() and "ForQuestionAnswering" in config.read_text(encoding="utf-8")
    if not (folder / READER_CONFIG_FILE).is_file() and not is_hf_qa:
        raise ModelLoadError(f"{path} is not a reader (no {READER_CONFIG_FILE} and no question-answering head); "
                             "train one with `reprlab train reader`")
    cls = BlockSkimReader if (folder / SKIM_CONFIG_FILE).is_file() else Reader
    return cls.from_pretrained(folder).eval()


def cmd_answer(args) -> None:
    if not args.question.strip():
        raise ReprlabError("--question is empty")
    if args.k < 1 or args.top < 1:
        raise ReprlabError("-k and --top must be at least 1")
    if args.context is not None and not args.context.strip():
        raise ReprlabError("--context is empty")
    reader = load_reader(args.model)
    ids, docs, contexts = None, {}, [args.context]
    if args.index is not None:
        from reprlab.retrieval.dense import DenseRetriever

        retriever = DenseRetriever.load(args.index)
        if not retriever.docs:
            raise ReprlabError(f"{args.index} has no docs.jsonl (the passages' texts); rebuild it with `reprlab index`")
        _, found = retriever.search([args.question], k=args.k)
        ids = [d for d in found[0] if d is not None]
        docs = retriever.docs
        contexts = [docs[d].get("text", "") for d in ids]
    answers = reader.answer(args.question, contexts, top_k=args.top, context_ids=ids)
    rows = []
    for rank, a in enumerate(answers, 1):
        row = {"rank": rank, "answer": a.text, "score": round(a.score, 4), "start": a.start, "end": a.end}
        if ids is not None:
            row.update(passage=a.context_id, title=docs[a.context_id].get("title", ""))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    print(f"Q: {args.question}")
    columns = ["rank", "answer", "score"] + (["passage", "title"] if ids is not None else [])
    print_table([{**r, "answer": short(r["answer"], 60), "score": f"{r['score']:.3f}",
                  "title": short(r.get("title", ""), 50)} for r in rows], columns)


def add_retrieval_qa_commands(sub, recipes) -> None:
    """``index --binary``, ``train hashing|mdr|reader``, ``search/evaluate --multihop``, ``answer``."""
    from reprlab.qa.block_skim import FEATURES, BlockSkimConfig
    from reprlab.qa.reader import ReaderConfig, ReaderTrainingConfig
    from reprlab.retrieval.hashing import METHODS, SCORES, HashingConfig
    from reprlab.retrieval.mdr import DEFAULT_KS, NEGATIVE_SOURCES, MDRConfig
    from reprlab.text.hotpotqa import EVAL_FRACTION

    # index --binary BITS (semantic hashing) / --multihop --data HOTPOT (the open corpus of a HotpotQA file)
    p = sub.choices["index"]
    g = p.add_argument_group("binary codes (semantic hashing)")
    g.add_argument("--binary", type=int, metavar="BITS",
                   help="index SimHash codes of BITS bits (a multiple of 8), searched by Hamming distance")
    g.add_argument("--hash-method", choices=METHODS, default="flat",
                   help="flat: exact Hamming scan; hash / multihash: bucket lookup in one / --tables hash tables")
    g.add_argument("--hash-bits", type=int, default=16, help="bits of a hash-table key (hash, multihash)")
    g.add_argument("--tables", type=int, default=1, help="hash tables of multihash (disjoint key slices)")
    g.add_argument("--nflip", type=int, default=1, help="key bits a lookup may flip (hash, multihash)")
    g.add_argument("--hash-seed", type=int, default=0, help="seed of the random hyperplanes")
    g.add_argument("--hash-score", choices=SCORES, default="angular",
                   help="score shown: angular = 1 - hamming/bits, cosine = cos(pi hamming/bits)")
    g = p.add_argument_group("multi-hop (MDR)")
    g.add_argument("--multihop", action="store_true", help="index the passages of the HotpotQA file --data")
    g.add_argument("--data", help="HotpotQA file (.json original or .jsonl IRCoT layout), with --multihop")

    p = sub.choices["search"]
    g = p.add_argument_group("multi-hop (MDR beam search; -k = chains shown)")
    g.add_argument("--multihop", action="store_true", help="search two-hop chains: question, then question + passage")
    g.add_argument("--beam", type=int, default=10, help="hop-1 passages kept and hop-2 passages searched for each")
    g.add_argument("--query-model", help="query model instead of the index's (the query/ tower of a 2-stage MDR model)")
    g.add_argument("--bm25-weights", type=_weight_pair, default=None, metavar="W1,W2",
                   help="fuse BM25 into hop 1 and hop 2 with these weights (e.g. 0.2,0.3; default: dense only)")

    p = sub.choices["evaluate"]
    g = p.add_argument_group("multi-hop (MDR): --data is a HotpotQA file, --retriever bm25 | minilm | MODEL_DIR")
    g.add_argument("--multihop", action="store_true",
                   help="chain metrics (exact pair, pair / chain / passage recall@k) on a HotpotQA file; "
                        "--split eval (default; 'test' means eval) | train | all, by the hash split rule")
    g.add_argument("--beam", type=int, default=10, help="beam size")
    g.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="k of the @k metrics")
    g.add_argument("--eval-fraction", type=float, default=EVAL_FRACTION, help="share of questions on the eval side")
    g.add_argument("--single-hop", action="store_true", help="rank pairs of one retrieval instead of the beam search")
    g.add_argument("--max-length", type=int, default=256, help="passage tokens when indexing the corpus")
    g.add_argument("--bm25-weights", type=_weight_pair, default=None, metavar="W1,W2",
                   help="beam search with BM25 fused into hop 1 and hop 2 (e.g. 0.2,0.3; default: dense only)")

    add_retrieval_recipe(recipes, "hashing",
                         "semantic hashing: DPR with the angular-similarity loss (for SimHash codes)",
                         HashingConfig, cmd_train_hashing, 0.0, "train queries held out (not trained on)",
                         epochs=1.0, batch_size=32, lr=5e-5)

    p = recipes.add_parser("mdr", help="multi-hop dense retrieval on a HotpotQA file (evaluated on its eval side)")
    p.add_argument("--out", dest="output_dir", required=True)
    p.add_argument("--data", required=True, help="HotpotQA file (.json original or .jsonl IRCoT layout)")
    p.add_argument("--negative-sources", default=",".join(MDRConfig.negative_sources),
                   help=f"comma-separated hard-negative sources from: {', '.join(NEGATIVE_SOURCES)}")
    add_config_options(p, MDRConfig, skip=("output_dir", "data"))
    add_train_options(p, epochs=4.0, batch_size=16, lr=3e-5)
    p.set_defaults(func=cmd_train_mdr)

    p = recipes.add_parser("reader", help="extractive reader on SQuAD v1.1 .json / HotpotQA .jsonl (+ Block Skim)")
    p.add_argument("--out", dest="output_dir", required=True)
    p.add_argument("--data", nargs="+", required=True, help="SQuAD v1.1 .json and/or HotpotQA IRCoT .jsonl files")
    add_config_options(p, ReaderTrainingConfig, skip=("output_dir", "data"))
    g = p.add_argument_group("windows and decoding")
    add_config_options(g, ReaderConfig, skip=("batch_size",))
    g.add_argument("--eval-batch-size", dest="reader_batch_size", type=int, default=ReaderConfig.batch_size,
                   help=f"windows per forward pass at evaluation (default: {ReaderConfig.batch_size})")
    g = p.add_argument_group("Block Skim")
    g.add_argument("--block-skim", action="store_true", help="train a Block Skim reader (skim predictors + span loss)")
    add_config_options(g, BlockSkimConfig, skip=("skim_layers", "features"))
    g.add_argument("--skim-layers", type=int, nargs="+", default=BlockSkimConfig().skim_layers,
                   help="0-based layers whose attention feeds a predictor")
    g.add_argument("--features", choices=FEATURES, default=BlockSkimConfig.features, help="predictor input")
    p.set_defaults(func=cmd_train_reader)

    p = sub.add_parser("answer", help="extract an answer with a reader from --context or an index's top passages")
    p.add_argument("--model", required=True, help="reader folder (from `reprlab train reader`)")
    p.add_argument("--question", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to read")
    source.add_argument("--index", help="index folder (`reprlab index`): read the top -k passages")
    p.add_argument("-k", type=int, default=5, help="passages read with --index")
    p.add_argument("--top", type=int, default=1, help="answers shown")
    p.add_argument("--json", action="store_true", help="print the answers as one JSON list")
    p.set_defaults(func=cmd_answer)


# ----------------------------------------------------------------------------- model info, pre-training, compression


def add_model_commands(sub, recipes) -> None:
    """``model-info``, ``pmi-vocab``, ``pretrain mlm|cmlm``, ``distill kd|ckd|seed``, ``compress approx``."""
    from reprlab.analysis.model_info import MLM_HEADS
    from reprlab.distill.approx import ApproxConfig, ApproxRecipeConfig
    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import EMBEDDING_LOSSES, KDConfig
    from reprlab.distill.recipe import METHODS, DistillConfig
    from reprlab.distill.seed import SEEDConfig
    from reprlab.nn.attention import ATTENTION
    from reprlab.pretrain.cmlm import CMLMConfig
    from reprlab.pretrain.masking import MASKING
    from reprlab.pretrain.mlm import MLMConfig
    from reprlab.pretrain.pmi import SCORES, PMIConfig

    p = sub.add_parser("model-info", help="parameters and FLOPs of an encoder, per layer and per block")
    p.add_argument("config", metavar="CONFIG|MODEL",
                   help=f"a named size ({', '.join(named_sizes())}), a config JSON file, a model folder or 'minilm'")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text the FLOPs are counted for (default: 128)")
    p.add_argument("--batch-size", type=int, default=1, help="texts per forward pass (default: 1)")
    p.add_argument("--attention", choices=list(ATTENTION), help="count with this attention in every layer instead")
    p.add_argument("--mlm-head", choices=MLM_HEADS, help="add an MLM head (tied or decoupled)")
    p.add_argument("--json", action="store_true", help="print one JSON object (rows, totals, config)")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("pmi-vocab", help="build a PMI-Masking vocabulary of collocated n-grams from a corpus")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, JSONL files or BEIR folders")
    p.add_argument("--out", required=True, help="vocabulary JSON to write")
    p.add_argument("--model", default="minilm",
                   help="tokenizer whose words are counted: a model folder, 'minilm', or 'none' for plain words")
    p.add_argument("--max-texts", type=int, default=None, help="read at most this many texts")
    p.add_argument("--proportions", type=_floats, default=None,
                   help="share of the size per length min-n..max-n, e.g. 0.5,0.5 (default: halving, last two equal)")
    p.add_argument("--top", type=int, default=20, help="n-grams to print (default: 20)")
    add_recipe_options(p, PMIConfig, choices={"score": SCORES})
    p.set_defaults(func=cmd_pmi_vocab)

    pretrain = sub.add_parser("pretrain", help="masked-language-model pre-training recipes")
    kinds = pretrain.add_subparsers(dest="recipe", required=True, parser_class=ArgumentParser)
    corpus_help = "text files, JSONL files or BEIR folders"
    p = kinds.add_parser("mlm", help="(continued) MLM pre-training with a masking scheme")
    p.add_argument("--corpus", nargs="+", required=True, help=corpus_help)
    p.add_argument("--out", dest="output_dir", required=True, help="output folder (model in OUT/model)")
    add_recipe_options(p, MLMConfig, choices={"masking": list(MASKING)}, helps={
        "model": "model folder (HF BERT layout) or 'minilm'",
        "pmi_vocab": "vocabulary from `reprlab pmi-vocab` for --masking pmi (default: built from the corpus)",
    })
    p.set_defaults(func=cmd_pretrain_mlm)

    p = kinds.add_parser("cmlm", help="conditional MLM: sentence vectors that predict the next sentence's tokens")
    p.add_argument("--corpus", nargs="+", required=True, help=corpus_help + " (paragraphs of 2+ sentences)")
    p.add_argument("--out", dest="output_dir", required=True, help="output folder (model in OUT/model)")
    # CMLM's target sentences are masked without a PMI vocabulary
    add_recipe_options(p, CMLMConfig, choices={"masking": [m for m in MASKING if m != "pmi"]},
                       helps={"model": "model folder (HF BERT layout) or 'minilm'"})
    p.set_defaults(func=cmd_pretrain_cmlm)

    distill = sub.add_parser("distill", help="distil a text encoder into a smaller student on unlabelled text")
    methods = distill.add_subparsers(dest="recipe", required=True, parser_class=ArgumentParser)
    for method in METHODS:
        p = methods.add_parser(method, help=f"{method} distillation (see reprlab.distill)")
        p.add_argument("--corpus", nargs="+", required=True, help="BEIR folders, JSONL files or text files")
        p.add_argument("--out", dest="output_dir", required=True, help="output folder (student in OUT/model)")
        add_recipe_options(p, DistillConfig, skip=("method",), helps={
            "teacher": "teacher model folder or 'minilm'",
            "student": "layers:0,2,4 | every:2 | config:tiny | config:num_layers=3,... | auto:3 | a model folder",
        })
        if method in ("kd", "ckd"):
            add_nested_options(p, KDConfig, "kd", "plain KD terms", choices={"embedding": EMBEDDING_LOSSES})
        if method == "ckd":
            add_nested_options(p, CKDConfig, "ckd", "CKD relation terms")
        if method == "seed":
            add_nested_options(p, SEEDConfig, "seed_method", "SEED queue", flag_prefix="seed")
        p.set_defaults(func=cmd_distill)

    compress = sub.add_parser("compress", help="compress a fine-tuned model")
    kinds = compress.add_subparsers(dest="recipe", required=True, parser_class=ArgumentParser)
    p = kinds.add_parser("approx", help="AxFormer: greedy removal of FFN/attention blocks, heads and neurons")
    p.add_argument("--model", required=True, help="fine-tuned model folder or 'minilm'")
    p.add_argument("--data", required=True, help="BEIR folder whose training queries are held out for the search")
    p.add_argument("--out", dest="output_dir", required=True, help="output folder (model, plan.json)")
    add_recipe_options(p, ApproxRecipeConfig, skip=("model", "data"))
    add_nested_options(p, ApproxConfig, "search", "greedy search", flag_prefix="")
    p.set_defaults(func=cmd_compress_approx)


def named_sizes() -> list[str]:
    """The named-size builders of EncoderConfig (classmethods that take only ``**overrides``)."""
    import inspect

    from reprlab.encoder import EncoderConfig

    names = []
    for name, value in vars(EncoderConfig).items():
        if isinstance(value, classmethod):
            params = list(inspect.signature(getattr(EncoderConfig, name)).parameters.values())
            if params and all(p.kind is p.VAR_KEYWORD for p in params):
                names.append(name)
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


class _Options:
    """Forwards ``add_argument(flag, dest=..., ...)`` to a parser, prefixing flag and dest and filling in
    choices and help, so that :func:`add_config_options` can fill a nested config or a group."""

    def __init__(self, target, dest_prefix: str = "", flag_prefix: str = "", choices=None, helps=None):
        self.target, self.dest_prefix, self.flag_prefix = target, dest_prefix, flag_prefix
        self.choices, self.helps = choices or {}, helps or {}

    def add_argument(self, flag, dest, **kw):
        if dest in self.choices:
            kw["choices"] = tuple(self.choices[dest])
        if dest in self.helps:
            kw["help"] = self.helps[dest] + ("" if "action" in kw else f" (default: {kw.get('default')})")
        if self.flag_prefix:
            flag = f"--{self.flag_prefix}-{flag[2:]}"
        if self.dest_prefix and "action" not in kw and not kw.get("choices"):
            kw["metavar"] = dest.upper()
        return self.target.add_argument(flag, dest=self.dest_prefix + dest, **kw)


def add_recipe_options(parser, cls, skip=(), choices=None, helps=None) -> None:
    """Options for a recipe config whose fields include the training loop's: those go in a "training loop"
    group with TrainConfig's help and choices but the recipe's defaults."""
    import dataclasses

    from reprlab.train.loop import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(cls)}
    loop = [n for n in fields if n in {f.name for f in dataclasses.fields(TrainConfig)} and n not in TRAIN_SKIP]
    if "max_steps" not in loop:  # not a training recipe (e.g. only a ``seed``)
        loop = []
    add_config_options(_Options(parser, choices=choices, helps=helps), cls,
                       skip=("output_dir", *skip, *loop))
    if loop:
        group = parser.add_argument_group("training loop")
        defaults = {n: fields[n].default for n in loop}
        add_config_options(group, TrainConfig, skip=[f.name for f in dataclasses.fields(TrainConfig)
                                                     if f.name not in loop], defaults=defaults)


def add_nested_options(parser, cls, name: str, title: str, flag_prefix: str | None = None, choices=None) -> None:
    """``--<flag_prefix>-<field>`` options for the config in field ``name`` of a recipe config."""
    flag_prefix = name if flag_prefix is None else flag_prefix
    group = parser.add_argument_group(title)
    add_config_options(_Options(group, f"{name}__", flag_prefix.replace("_", "-"), choices=choices), cls)


def nested_from_args(cls, args, name: str):
    prefix = f"{name}__"
    return cls(**{k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)})


def load_named_config(name: str):
    """An EncoderConfig from a named size, a config JSON file, a model folder or 'minilm'."""
    from reprlab.analysis.model_info import config_from_name
    from reprlab.encoder import EncoderConfig
    from reprlab.errors import ConfigError
    from reprlab.hub import MODEL_ALIASES

    key = name.lower().replace("-", "_")
    sizes = named_sizes()
    if key in sizes:
        return getattr(EncoderConfig, key)()
    if Path(name).exists() or name.lower() in MODEL_ALIASES:
        return config_from_name(name)
    raise ConfigError(f"unknown config {name!r}: give a named size ({', '.join(sizes)}), an existing config JSON "
                      f"file or model folder, or 'minilm'")


def cmd_model_info(args) -> None:
    from reprlab.analysis.model_info import model_info

    config = load_named_config(args.config)
    if args.attention:  # every layer; another attention's kwargs do not carry over
        kwargs = config.attention_kwargs if args.attention == config.attention else {}
        config = config.replace(attention=args.attention, layer_attention=None, attention_kwargs=kwargs)
    info = model_info(config, seq_len=args.seq_len, batch_size=args.batch_size, mlm_head=args.mlm_head)
    if args.json:
        print(json.dumps(info.to_dict()))
        return
    c = config
    attention = ",".join(c.layer_attention) if c.layer_attention else c.attention
    print(f"{args.config}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, attention {attention}; "
          f"FLOPs of one forward pass of {info.batch_size} x {info.seq_len} tokens (matrix products)")
    unit = lambda flops: f"{flops / 1e6:,.2f}"  # noqa: E731
    rows = [{"block": r.name, "layer": "" if r.layer is None else r.layer, "params": f"{r.params:,}",
             "MFLOPs": unit(r.flops)} for r in info.rows]
    print_table(rows, ["block", "layer", "params", "MFLOPs"])
    print()
    rows = [{"block": block, "params": f"{d['params']:,}", "MFLOPs": unit(d["flops"])}
            for block, d in info.by_block().items()]
    rows.append({"block": "total", "params": f"{info.total_params:,}", "MFLOPs": unit(info.total_flops)})
    print_table(rows, ["block", "params", "MFLOPs"])
    if info.buffers:
        print(f"(plus {info.buffers:,} numbers in non-trainable buffers)")


def cmd_pmi_vocab(args) -> None:
    import dataclasses

    from reprlab.pretrain.pmi import PMIConfig, pmi_vocab_from_corpus

    lengths = args.max_n - args.min_n + 1
    proportions = args.proportions
    if proportions is None:
        default = next(f.default for f in dataclasses.fields(PMIConfig) if f.name == "proportions")
        if len(default) == lengths:
            proportions = default
        else:  # the paper's rule for 2..5: halve per length, the last two equal
            proportions = tuple(0.5 ** min(i + 1, max(lengths - 1, 0)) for i in range(lengths))
    config = config_from_args(PMIConfig, args, proportions=proportions)
    model = None if args.model.lower() == "none" else args.model
    t0 = time.time()
    vocab = pmi_vocab_from_corpus(args.corpus, out=args.out, config=config, model=model, max_texts=args.max_texts)
    stats = vocab.stats
    logger.info(f"pmi-vocab: {len(vocab)} n-grams from {stats.get('texts')} texts ({stats.get('words')} words) "
                f"in {time.time() - t0:.1f}s -> {args.out}")
    rows = [{"rank": i, "n-gram": e.text, "n": len(e.ngram), "count": e.count, "score": f"{e.score:.3f}"}
            for i, e in enumerate(vocab.top(args.top), 1)]
    print_table(rows, ["rank", "n-gram", "n", "count", "score"])


def cmd_pretrain_mlm(args) -> None:
    from reprlab.pretrain.mlm import MLMConfig, run_mlm

    from reprlab.errors import ConfigError

    if args.pmi_vocab and args.masking != "pmi":
        raise ConfigError(f"--pmi-vocab is read only with --masking pmi (got --masking {args.masking})")
    config = config_from_args(MLMConfig, args)
    result = run_mlm(config)
    logger.info(f"mlm ({config.masking}): {result.steps} steps on {result.chunks} chunks, final loss "
                f"{result.final_loss:.4f}; model -> {result.model_dir}")


def cmd_pretrain_cmlm(args) -> None:
    from reprlab.pretrain.cmlm import CMLMConfig, run_cmlm

    result = run_cmlm(config_from_args(CMLMConfig, args))
    logger.info(f"cmlm: {result.steps} steps on {result.pairs} sentence pairs, final loss {result.final_loss:.4f}; "
                f"model -> {result.model_dir}")


def cmd_distill(args) -> None:
    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import KDConfig
    from reprlab.distill.recipe import DistillConfig, run_distillation
    from reprlab.distill.seed import SEEDConfig

    config = config_from_args(DistillConfig, args, method=args.recipe, kd=nested_from_args(KDConfig, args, "kd"),
                              ckd=nested_from_args(CKDConfig, args, "ckd"),
                              seed_method=nested_from_args(SEEDConfig, args, "seed_method"))
    result = run_distillation(config)
    logger.info(f"distill {config.method}: {result.steps} steps on {result.texts} texts, final loss "
                f"{result.final_loss:.4f}; student -> {result.model_dir}")


def cmd_compress_approx(args) -> None:
    from reprlab.distill.approx import ApproxConfig, ApproxRecipeConfig, run_approx

    config = config_from_args(ApproxRecipeConfig, args, search=nested_from_args(ApproxConfig, args, "search"))
    result = run_approx(config)
    plan = result.plan
    rows = []
    for i in range(plan.num_layers):
        heads, groups = plan.heads_removed.get(i, []), plan.groups_removed.get(i, [])
        attention = "removed" if i in plan.attention_removed else \
            f"heads {','.join(map(str, heads))} removed" if heads else "kept"
        ffn = "removed" if i in plan.ffn_removed else \
            f"{len(groups)}/{plan.neuron_groups} neuron groups removed" if groups else "kept"
        rows.append({"layer": i, "attention": attention, "ffn": ffn})
    print_table(rows, ["layer", "attention", "ffn"])
    before, after = result.parameters_before, result.parameters_after
    print(f"parameters: {before:,} -> {after:,} ({100 * (before - after) / before:.1f}% fewer); held-out loss "
          f"{plan.base_loss:.4f} -> {plan.final_loss:.4f} on {len(result.heldout_queries)} queries")
    logger.info(f"approx: model -> {result.model_dir}, plan -> {Path(config.output_dir) / 'plan.json'}")


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
    # required unless --multihop --data (checked in _index_variant, where those options are added)
    p.add_argument("--corpus", help="BEIR folder, corpus.jsonl or MS MARCO collection.tsv (required)")
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

    add_retrieval_recipe(recipes, "dpr", "dual encoder with in-batch + BM25 hard negatives", DprConfig, cmd_train_dpr,
                         0.0, "train queries held out (not trained on)", epochs=3.0, batch_size=32, lr=2e-5)
    add_retrieval_recipe(recipes, "ance", "ANCE: negatives from an asynchronously refreshed ANN index", AnceConfig,
                         cmd_train_ance, 0.1, "train queries held out and scored per refresh",
                         epochs=3.0, batch_size=32, lr=2e-5)

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
    except BrokenPipeError:  # e.g. `reprlab model-info minilm | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
