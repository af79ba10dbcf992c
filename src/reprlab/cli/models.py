"""``reprlab model-info | pmi-vocab``: what an encoder costs, and the PMI-Masking vocabulary of a corpus."""

from __future__ import annotations

import json
import logging
import time

from reprlab.cli.options import add_config_options, config_from_args
from reprlab.cli_format import print_table
from reprlab.io import check_output

logger = logging.getLogger("reprlab")


def cmd_model_info(args) -> None:
    from reprlab.analysis.model_info import load_named_config, model_info

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
    from reprlab.pretrain.pmi import pmi_vocab_from_corpus

    config = config_from_args(args.options, args)
    check_output(args.out, "file")
    model = None if args.model.lower() == "none" else args.model
    t0 = time.time()
    vocab = pmi_vocab_from_corpus(args.corpus, out=args.out, config=config, model=model, max_texts=args.max_texts)
    stats = vocab.stats
    logger.info(f"pmi-vocab: {len(vocab)} n-grams from {stats.get('texts')} texts ({stats.get('words')} words) "
                f"in {time.time() - t0:.1f}s -> {args.out}")
    rows = [{"rank": i, "n-gram": e.text, "n": len(e.ngram), "count": e.count, "score": f"{e.score:.3f}"}
            for i, e in enumerate(vocab.top(args.top), 1)]
    print_table(rows, ["rank", "n-gram", "n", "count", "score"])


def add_commands(sub) -> None:
    from reprlab.analysis.model_info import MLM_HEADS, named_sizes
    from reprlab.nn.attention import ATTENTION
    from reprlab.pretrain.pmi import PMIConfig

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
    p.add_argument("--corpus", nargs="+", required=True, help="text files, JSONL files or BEIR folders (required)")
    p.add_argument("--out", required=True, help="vocabulary JSON to write (required)")
    p.add_argument("--model", default="minilm",
                   help="tokenizer whose words are counted: a model folder, 'minilm', or 'none' for plain words")
    p.add_argument("--max-texts", type=int, default=None, help="read at most this many texts")
    p.add_argument("--top", type=int, default=20, help="n-grams to print (default: 20)")
    options = add_config_options(p, PMIConfig)
    p.set_defaults(func=cmd_pmi_vocab, options=options)
