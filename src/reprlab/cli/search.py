"""``reprlab demo | index | search | evaluate | mine``: search and evaluation on the command line.

``index`` builds a dense FAISS index (``--factory``), a SimHash binary index (``--binary BITS``) or
the index of a HotpotQA file's open corpus (``--multihop --data``); ``search`` and ``evaluate`` read
and score them, ``--multihop`` running MDR's two-hop beam search. Handlers are thin: the work is the
library's (``reprlab.retrieval``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from reprlab.cli_format import print_table, short
from reprlab.errors import ConfigError, ReprlabError
from reprlab.io import check_output

logger = logging.getLogger("reprlab")


# ----------------------------------------------------------------------------- handlers


def cmd_demo(args) -> None:
    from reprlab.demo import run_demo

    run_demo(data=args.data, show=args.show, ance_steps=args.ance_steps)


def _check_index_options(args) -> None:
    """The combinations of ``index`` options: one source (--corpus, or --multihop --data), binary options
    only with --binary, --factory only for float indexes."""
    if args.multihop and (not args.data or args.corpus):
        raise ReprlabError("--multihop indexes the open corpus of a HotpotQA file: give --data HOTPOT.jsonl "
                           "(and no --corpus)")
    if args.data and not args.multihop:
        raise ReprlabError("--data (a HotpotQA file) is read with --multihop; give a BEIR corpus with --corpus")
    if not args.multihop and not args.corpus:
        raise ReprlabError("the following arguments are required: --corpus (or --multihop --data HOTPOT.jsonl)")
    hashing = {"--hash-method": (args.hash_method, "flat"), "--hash-bits": (args.hash_bits, 16),
               "--tables": (args.tables, 1), "--nflip": (args.nflip, 1), "--hash-seed": (args.hash_seed, 0),
               "--hash-score": (args.hash_score, "angular")}
    stray = [flag for flag, (value, default) in hashing.items() if value != default]
    if stray and not args.binary:
        raise ReprlabError(f"{stray[0]} is an option of binary indexes: add --binary BITS")
    if args.binary and args.factory != "Flat":
        raise ReprlabError("--factory builds float indexes; a --binary index is searched by --hash-method")
    if args.max_length is not None and args.max_length < 2:
        raise ConfigError(f"must be at least 2 ([CLS] and [SEP]), got {args.max_length}", field="max_length")
    _check_scale_options(args)


def _check_scale_options(args) -> None:
    """--engine ray's options only with it, --backend qdrant's only with it, neither with --multihop."""
    ray = {"--address": (args.address, None), "--num-workers": (args.num_workers, 2),
           "--gpus-per-worker": (args.gpus_per_worker, 0), "--cpus-per-worker": (args.cpus_per_worker, 1)}
    stray = [flag for flag, (value, default) in ray.items() if value != default]
    if stray and args.engine != "ray":
        raise ReprlabError(f"{stray[0]} is an option of distributed encoding: add --engine ray")
    qdrant = {"--qdrant-url": (args.qdrant_url, None), "--qdrant-path": (args.qdrant_path, None),
              "--collection": (args.collection, None), "--quantization": (args.quantization, "none"),
              "--overwrite-collection": (args.overwrite_collection, False), "--upload-batch": (args.upload_batch, 256)}
    stray = [flag for flag, (value, default) in qdrant.items() if value != default]
    if stray and args.backend != "qdrant":
        raise ReprlabError(f"{stray[0]} is an option of the qdrant backend: add --backend qdrant")
    if args.backend == "qdrant" and (args.binary or args.factory != "Flat"):
        raise ReprlabError("--backend qdrant stores float vectors in Qdrant: drop --binary / --factory "
                           "(--quantization chooses how a server compresses them)")
    if args.shard_size < 1:
        raise ConfigError(f"must be a positive integer, got {args.shard_size}", field="shard_size")
    if args.vectors:
        vectors, out = Path(args.vectors).resolve(), Path(args.out).resolve()
        if vectors == out or out in vectors.parents or vectors in out.parents:
            raise ReprlabError(f"--vectors {args.vectors} and --out {args.out} overlap: the index is written as a "
                               "whole folder, so the shards need a folder of their own")
    scaled = args.engine != "local" or args.backend != "faiss" or args.vectors
    if args.multihop and scaled:
        raise ReprlabError("--multihop builds its index in one process: drop --engine / --backend / --vectors")


def cmd_index(args) -> None:
    from reprlab.retrieval.binary import binary_retriever
    from reprlab.text.corpus import read_documents
    from reprlab.text.hotpotqa import load_hotpotqa

    _check_index_options(args)
    check_output(args.out, "folder")
    source = args.data if args.multihop else args.corpus
    corpus = load_hotpotqa(args.data).corpus if args.multihop else read_documents(args.corpus)
    t0 = time.time()
    if args.engine != "local" or args.backend != "faiss" or args.vectors:
        return _index_scaled(args, corpus, t0)
    retriever = _retriever(args)
    if args.binary:
        retriever = binary_retriever(retriever, corpus, bits=args.binary, method=args.hash_method,
                                     hash_bits=args.hash_bits, tables=args.tables, nflip=args.nflip,
                                     seed=args.hash_seed, score=args.hash_score)
        kind = f"{args.binary}-bit SimHash codes, {args.hash_method}"
    else:
        retriever.index_corpus(corpus, factory=args.factory)
        kind = args.factory
    retriever.save(args.out)
    logger.info(f"indexed {len(corpus)} documents of {source} with {args.model} ({kind}) in {time.time() - t0:.1f}s "
                f"-> {args.out}")


def _retriever(args):
    """The retriever ``index`` encodes with: --model, --batch-size, --precision, and --max-length passage tokens
    (the document tower's; queries are encoded at search time with the model's own length)."""
    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.from_model(args.model, batch_size=args.batch_size, precision=args.precision)
    if args.max_length is not None:
        retriever.doc_model.max_length = args.max_length
    return retriever


def _index_scaled(args, corpus, t0: float) -> None:
    """``index`` through vector shards (--engine ray, or --vectors) and/or into Qdrant (--backend qdrant)."""
    from reprlab.retrieval.binary import BinaryIndex
    from reprlab.retrieval.distributed import index_corpus
    from reprlab.retrieval.index import FaissIndex
    from reprlab.retrieval.qdrant import QdrantIndex, document_payloads, read_metadata

    out = Path(args.out)
    vectors = args.vectors or (str(out.with_name(out.name + ".vectors")) if args.engine == "ray" else None)
    retriever = _retriever(args)
    dim, payloads = retriever.doc_model.dim, None
    if args.backend == "qdrant":
        path = None if args.qdrant_url else (args.qdrant_path or str(out.with_name(out.name + ".qdrant")))
        index = QdrantIndex(dim, collection=args.collection or out.name, url=args.qdrant_url, path=path,
                            quantization=args.quantization, overwrite=args.overwrite_collection,
                            upload_batch=args.upload_batch)
        metadata = read_metadata(args.corpus)
        payloads = lambda ids: document_payloads(corpus, ids, metadata)  # noqa: E731
        kind = f"qdrant collection {index.collection!r} at {index.where}"
    elif args.binary:
        index = BinaryIndex(dim, args.binary, args.hash_method, args.hash_bits, args.tables, args.nflip,
                            args.hash_seed, args.hash_score)
        kind = f"{args.binary}-bit SimHash codes, {args.hash_method}"
    else:
        index, kind = FaissIndex(dim, factory=args.factory), args.factory
    try:
        report = index_corpus(retriever, corpus, index, vectors=vectors, engine=args.engine, payloads=payloads,
                              shard_size=args.shard_size, dtype=args.vector_dtype, num_workers=args.num_workers,
                              gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                              address=args.address, max_length=args.max_length)
        retriever.save(args.out)
    finally:
        if isinstance(index, QdrantIndex):
            index.close()
    shards = f"; shards in {vectors}: {len(report.encoded)} encoded, {len(report.kept)} kept" if report else ""
    logger.info(f"indexed {len(corpus)} documents of {args.corpus} with {args.model} ({kind}, engine {args.engine}) "
                f"in {time.time() - t0:.1f}s -> {args.out}{shards}")


def cmd_search(args) -> None:
    from reprlab.retrieval.dense import DenseRetriever

    queries = [q for q in args.query if q.strip()]
    if len(queries) != len(args.query):
        raise ReprlabError("a query is empty: give the text to search for")
    if args.multihop:
        from reprlab.retrieval.mdr import format_chains, search_index_folder

        chains, docs = search_index_folder(args.index, args.query, beam_size=args.beam, top_k=args.k,
                                           model=args.query_model, bm25_weights=args.bm25_weights)
        for question, found in zip(args.query, chains):
            print(format_chains(question, found, docs))
        return
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
    from reprlab.retrieval.mdr import DEFAULT_KS
    from reprlab.retrieval.metrics import check_metrics, evaluate
    from reprlab.retrieval.pipeline import build_retriever, retrieve
    from reprlab.text.beir import load_beir
    from reprlab.text.splits import EVAL_FRACTION
    from reprlab.text.trec import write_run

    if args.multihop:
        return _evaluate_multihop(args)
    stray = [flag for flag, value, default in (("--beam", args.beam, 10), ("--ks", args.ks, list(DEFAULT_KS)),
                                                 ("--eval-fraction", args.eval_fraction, EVAL_FRACTION),
                                                 ("--single-hop", args.single_hop, False),
                                                 ("--max-length", args.max_length, 256),
                                                 ("--bm25-weights", args.bm25_weights, None)) if value != default]
    if stray:
        raise ReprlabError(f"{stray[0]} is an option of multi-hop evaluation: add --multihop (and a HotpotQA --data)")
    if args.run_out:
        check_output(args.run_out, "file")
    check_metrics(args.metrics)
    data = load_beir(args.data, split=args.split, strict=args.strict_qrels)
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


def _evaluate_multihop(args) -> None:
    from reprlab.cli.options import Options
    from reprlab.retrieval.mdr import MultiHopEvalConfig, evaluate_multihop

    args.options = Options(MultiHopEvalConfig, flags={  # a ConfigError's field, shown as the flag typed
        "data": "--data", "retriever": "--retriever", "split": "--split", "eval_fraction": "--eval-fraction",
        "beam_size": "--beam", "ks": "--ks", "batch_size": "--batch-size", "max_length": "--max-length",
        "factory": "--factory", "bm25_weights": "--bm25-weights"})
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


def cmd_mine(args) -> None:
    from reprlab.cli.options import config_from_args
    from reprlab.retrieval.mining import mine_hard_negatives, provenance
    from reprlab.retrieval.pipeline import build_retriever
    from reprlab.text.beir import load_beir
    from reprlab.text.examples import write_examples

    check_output(args.out, "file")
    lo, _, hi = args.range.partition("-")
    try:
        rank_range = (int(lo), int(hi or args.depth))
    except ValueError:
        raise ReprlabError(f"--range must look like 10-100, got {args.range!r}") from None
    config = config_from_args(args.options, args, rank_range=rank_range)
    data = load_beir(args.data, split=args.split)
    retriever = build_retriever(args.retriever, data.corpus, factory=args.factory, batch_size=args.batch_size,
                                precision=args.precision)
    examples = mine_hard_negatives(retriever, data.judged_queries(), data.qrels, data.corpus, config)
    meta = provenance(args.retriever, "bm25s" if args.retriever == "bm25" else args.factory, config,
                      data=str(args.data), split=args.split)
    n = write_examples(args.out, examples, provenance=meta)
    logger.info(f"wrote {n} training examples with up to {config.num_negatives} negatives each -> {args.out}")


# ----------------------------------------------------------------------------- parsers


def _weight_pair(text: str) -> tuple[float, float]:
    """``--bm25-weights W1,W2``: two finite non-negative numbers."""
    import math

    try:
        w1, w2 = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated weights (hop 1, hop 2), got {text!r}")
    if not (math.isfinite(w1) and math.isfinite(w2)) or w1 < 0 or w2 < 0:
        raise argparse.ArgumentTypeError(f"weights must be finite and >= 0, got {text!r}")
    return w1, w2


def _encoding_options(p) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    from reprlab.encoder import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="encoder precision; auto: bf16 where it is native, fp32 elsewhere (default: fp32)")
    p.add_argument("--factory", default="Flat", help='FAISS factory string, e.g. "HNSW32" (default: Flat, exact)')


def _index_parser(sub) -> None:
    from reprlab.retrieval.binary import METHODS, SCORES

    p = sub.add_parser("index", help="encode a corpus into a searchable index folder")
    p.add_argument("--corpus", help="BEIR folder, corpus.jsonl or MS MARCO collection.tsv (required unless --multihop)")
    p.add_argument("--model", default="minilm", help="model folder or 'minilm' (default: minilm)")
    p.add_argument("--out", required=True, help="index folder to write (required)")
    _encoding_options(p)
    p.add_argument("--max-length", type=int, default=None,
                   help="passage tokens kept when encoding, with every engine and backend (default: the model's own, "
                        "256 for minilm)")
    g = p.add_argument_group("binary codes (semantic hashing)")
    g.add_argument("--binary", type=int, metavar="BITS",
                   help="index SimHash codes of BITS bits (a multiple of 8), searched by Hamming distance")
    g.add_argument("--hash-method", choices=METHODS, default="flat",
                   help="flat: exact Hamming scan; hash / multihash: bucket lookup in one / --tables hash tables")
    g.add_argument("--hash-bits", type=int, default=16, help="bits of a hash-table key (default: 16)")
    g.add_argument("--tables", type=int, default=1, help="hash tables of multihash (default: 1)")
    g.add_argument("--nflip", type=int, default=1, help="key bits a lookup may flip (default: 1)")
    g.add_argument("--hash-seed", type=int, default=0, help="seed of the random hyperplanes (default: 0)")
    g.add_argument("--hash-score", choices=SCORES, default="angular",
                   help="score shown: angular = 1 - hamming/bits, cosine = cos(pi hamming/bits) (default: angular)")
    _scale_options(p)
    g = p.add_argument_group("multi-hop (MDR)")
    g.add_argument("--multihop", action="store_true", help="index the passages of the HotpotQA file --data")
    g.add_argument("--data", help="HotpotQA file (.json original or .jsonl IRCoT layout), with --multihop")
    p.set_defaults(func=cmd_index)


def _scale_options(p) -> None:
    from reprlab.retrieval.distributed import DTYPES, ENGINES
    from reprlab.retrieval.qdrant import QUANTIZATIONS

    g = p.add_argument_group("distributed encoding (vector shards; see docs/SCALE.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process; ray: a Ray Data actor pool writing vector shards (default: local)")
    g.add_argument("--vectors", help="folder of the vector shards (Parquet + manifest.json); a killed job resumes "
                                     "from it (default with --engine ray: OUT.vectors)")
    g.add_argument("--shard-size", type=int, default=10_000, help="passages per shard (default: 10000)")
    g.add_argument("--vector-dtype", choices=DTYPES, default="float32", help="dtype in the shards (default: float32)")
    g.add_argument("--address", help="Ray cluster to join, e.g. auto (default: start a local Ray)")
    g.add_argument("--num-workers", type=int, default=2, help="encoder actors, each loads the model once (default: 2)")
    g.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per actor (default: 0, CPU)")
    g.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) per actor (default: 1)")
    g = p.add_argument_group("vector database")
    g.add_argument("--backend", choices=("faiss", "qdrant"), default="faiss",
                   help="faiss: index files in OUT; qdrant: a Qdrant collection, OUT holds its address (default: faiss)")
    g.add_argument("--qdrant-url", help="Qdrant server or cluster, e.g. http://localhost:6333 (default: local mode)")
    g.add_argument("--qdrant-path", help="folder of Qdrant's local mode (default: OUT.qdrant)")
    g.add_argument("--collection", help="collection name (default: the name of OUT)")
    g.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                   help="how a Qdrant server keeps the vectors: none, scalar (int8), binary, pq (default: none)")
    g.add_argument("--overwrite-collection", action="store_true", help="replace an existing collection of that name")
    g.add_argument("--upload-batch", type=int, default=256, help="points per upload request (default: 256)")


def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="search an index folder")
    p.add_argument("--index", required=True, help="index folder (from `reprlab index`)")
    p.add_argument("query", nargs="+", help="one or more queries")
    p.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    g = p.add_argument_group("multi-hop (MDR beam search; -k = chains shown)")
    g.add_argument("--multihop", action="store_true", help="search two-hop chains: question, then question + passage")
    g.add_argument("--beam", type=int, default=10, help="hop-1 passages kept and hop-2 passages searched for each")
    g.add_argument("--query-model", help="query model instead of the index's (the query/ tower of a 2-stage MDR model)")
    g.add_argument("--bm25-weights", type=_weight_pair, default=None, metavar="W1,W2",
                   help="fuse BM25 into hop 1 and hop 2 with these weights (e.g. 0.2,0.3; default: dense only)")
    p.set_defaults(func=cmd_search)


def _evaluate_parser(sub) -> None:
    from reprlab.retrieval.mdr import DEFAULT_KS
    from reprlab.retrieval.metrics import DEFAULT_METRICS
    from reprlab.retrieval.pipeline import RETRIEVER_NAMES
    from reprlab.text.splits import EVAL_FRACTION

    p = sub.add_parser("evaluate", help="evaluate a retriever on a BEIR folder (or a HotpotQA file with --multihop)")
    p.add_argument("--data", required=True, help="BEIR folder (a HotpotQA file with --multihop)")
    p.add_argument("--split", default="test", help="qrels split (--multihop: eval | train | all) (default: test)")
    p.add_argument("--retriever", default="minilm", help=f"{' | '.join(RETRIEVER_NAMES)} | MODEL_DIR (default: minilm)")
    p.add_argument("-k", type=int, default=100, help="results per query (default: 100)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="pytrec_eval measure names")
    p.add_argument("--keep-identical-ids", action="store_true",
                   help="score a result whose id equals its query id (BEIR removes them)")
    p.add_argument("--run-out", help="write the run as a TREC run file")
    p.add_argument("--strict-qrels", action="store_true",
                   help="judgements of documents missing from the corpus are an error (default: a warning)")
    p.add_argument("--json", action="store_true", help="print one JSON object of the measures")
    _encoding_options(p)
    g = p.add_argument_group("multi-hop (MDR): --data is a HotpotQA file, --retriever bm25 | minilm | MODEL_DIR")
    g.add_argument("--multihop", action="store_true",
                   help="chain metrics (exact pair, pair / chain / passage recall@k) on a HotpotQA file")
    g.add_argument("--beam", type=int, default=10, help="beam size (default: 10)")
    g.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="k of the @k metrics")
    g.add_argument("--eval-fraction", type=float, default=EVAL_FRACTION,
                   help=f"share of questions on the eval side (default: {EVAL_FRACTION})")
    g.add_argument("--single-hop", action="store_true", help="rank pairs of one retrieval instead of the beam search")
    g.add_argument("--max-length", type=int, default=256, help="passage tokens when indexing (default: 256)")
    g.add_argument("--bm25-weights", type=_weight_pair, default=None, metavar="W1,W2",
                   help="beam search with BM25 fused into hop 1 and hop 2 (e.g. 0.2,0.3; default: dense only)")
    p.set_defaults(func=cmd_evaluate)


def _mine_parser(sub) -> None:
    from reprlab.cli.options import add_config_options
    from reprlab.retrieval.mining import MiningConfig
    from reprlab.retrieval.pipeline import RETRIEVER_NAMES

    p = sub.add_parser("mine", help="mine hard negatives once with any retriever -> training JSONL")
    p.add_argument("--data", required=True, help="BEIR folder (required)")
    p.add_argument("--split", default="train", help="qrels split whose queries are mined (default: train)")
    p.add_argument("--retriever", default="bm25", help=f"{' | '.join(RETRIEVER_NAMES)} | MODEL_DIR (default: bm25)")
    p.add_argument("--out", required=True, help="training JSONL to write (required)")
    p.add_argument("--range", default="1-100", help="ranks that may become negatives, e.g. 10-100 (default: 1-100)")
    _encoding_options(p)
    options = add_config_options(p, MiningConfig, hidden=("rank_range",))
    p.set_defaults(func=cmd_mine, options=options)


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded corpus (or --data BEIR_DIR)")
    p.add_argument("--data", help="a BEIR folder to use instead of the embedded corpus")
    p.add_argument("--show", type=int, default=3, help="questions whose results are printed (default: 3)")
    p.add_argument("--ance-steps", type=int, default=12, help="steps of the ANCE fine-tune (0 = skip it) (default: 12)")
    p.set_defaults(func=cmd_demo)
    _index_parser(sub)
    _search_parser(sub)
    _evaluate_parser(sub)
    _mine_parser(sub)
