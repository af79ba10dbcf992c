"""Encoder building blocks trained from scratch on the same masked-LM budget.

The same small encoder (default 4 layers, hidden 128, 4 heads, FFN 512, MiniLM's 30,522 word
pieces, tied MLM head; hidden 256 with ``--hidden 256`` where the CPU budget allows) is pre-trained
from random initialisation with each attention variant:
softmax (the baseline), every Synthesizer variant (Tay et al.), collaborative heads at D~ = 1/2 and
1/4 of the hidden size (Cordonnier et al.) and memory tokens (Burtsev et al.: MemTransformer,
MemCtrl, MemBottleneck). Same data order, masks, optimiser, steps and seed for all.

Data: ten Project Gutenberg novels + WikiText-2 *valid* for training; WikiText-2 *test* (fixed
masks) for the held-out MLM loss. Masking: ``reprlab.pretrain.masking`` "random" (15%, 80/10/10).

Per variant: held-out MLM loss (nats), encoder parameters, forward FLOPs (``reprlab.analysis.
model_info``), training throughput (tokens/s of forward + backward, 4,096 tokens per batch) and
activation memory (bytes saved for backward, batch 1) at 128, 512 and 2,048 tokens. The encoder used
at 512/2,048 tokens is the same architecture with more positions (random init; Synthesizer's
position-indexed parameters grow with it), since throughput and memory do not depend on training.

    python bench/architectures.py --quick            # smoke run: 2 variants, 5 steps, 128 tokens
    python bench/architectures.py                    # the full table (2 CPU cores: ~35-40 minutes)
    python bench/architectures.py --speed-only       # sizes, FLOPs, throughput and memory only (no training,
                                                     # ~5 minutes at 1 thread): bench/results/architectures-speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common
from reprlab.analysis.model_info import model_info
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.pretrain.corpus import tokenize_chunks
from reprlab.pretrain.masking import IGNORE_INDEX, MaskingConfig, SpecialTokens, build_masking
from reprlab.pretrain.mlm import MLMCollate, MLMModel, mlm_loss
from reprlab.text.tokenizer import Tokenizer
from reprlab.train import TrainConfig, train


def variants(hidden: int) -> dict[str, dict]:
    return {
        "softmax": dict(attention="softmax"),
        "synthesizer-dense": dict(attention="synthesizer-dense"),
        "synthesizer-random": dict(attention="synthesizer-random"),
        "synthesizer-random-fixed": dict(attention="synthesizer-random-fixed"),
        "synthesizer-factorized-dense": dict(attention="synthesizer-factorized-dense"),
        "synthesizer-factorized-random": dict(attention="synthesizer-factorized-random"),
        "synthesizer-dense+dot": dict(attention="synthesizer-dense+dot"),
        "synthesizer-random+dot": dict(attention="synthesizer-random+dot"),
        **{f"collaborative D~={d}": dict(attention="collaborative", attention_kwargs={"shared_dim": d})
           for d in (hidden // 2, hidden // 4)},
        "memory tokens (8)": dict(num_memory_tokens=8, memory_mode="tokens"),
        "MemCtrl (8)": dict(num_memory_tokens=8, memory_mode="ctrl"),
        "MemBottleneck (8)": dict(num_memory_tokens=8, memory_mode="bottleneck"),
    }


QUICK = ("softmax", "collaborative D~={q}")


# ----------------------------------------------------------------------------- data


def grouped(paragraphs: list[str], words: int = 1500) -> list[str]:
    """Join consecutive paragraphs into texts of about ``words`` words, so that chunks are full."""
    out, cur, n = [], [], 0
    for p in paragraphs:
        cur.append(p)
        n += len(p.split())
        if n >= words:
            out.append(" ".join(cur))
            cur, n = [], 0
    if cur:
        out.append(" ".join(cur))
    return out


def load_corpora(quick: bool) -> tuple[list[str], list[str]]:
    guten = common.data_path("gutenberg_books10", "paragraphs.jsonl")
    wiki = common.data_path("wikitext2_raw_valid_test")
    by_book: dict[str, list[str]] = {}
    with open(guten, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            by_book.setdefault(obj["book"], []).append(obj["text"])
    train_texts = [t for paras in by_book.values() for t in grouped(paras)]

    def wiki_paragraphs(name):
        raw = (wiki / name).read_text(encoding="utf-8")
        return [" ".join(p.split()) for p in raw.split("\n") if p.strip()]

    train_texts += grouped(wiki_paragraphs("wiki.valid.raw"))
    held_out = grouped(wiki_paragraphs("wiki.test.raw"))
    if quick:
        train_texts, held_out = train_texts[::20], held_out[:4]
    return train_texts, held_out


# ----------------------------------------------------------------------------- measurements


def held_out_loss(model: MLMModel, batches: list[dict], device) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            n = int((b["labels"] != IGNORE_INDEX).sum())
            loss, _ = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device))
            total += float(loss) * n
            count += n
    model.train()
    return total / count


def activation_bytes(encoder: Encoder, length: int, device) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (batch 1), deduplicated."""
    seen: dict[tuple, int] = {}

    def pack(t):
        if t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(1000, 20000, (1, length), device=device)
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = encoder(ids, torch.ones_like(ids)).last_hidden_state
    del out
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)


def throughput(encoder: Encoder, length: int, device, tokens: int = 4096, repeats: int = common.MIN_PASSES
               ) -> common.Timing:
    """Seconds of one training step (forward + backward of the encoder, random inputs, ``tokens`` tokens),
    ``repeats`` passes after a warm-up one; tokens/s = ``tokens_per_batch(length) / seconds``."""
    ids = torch.randint(1000, 20000, (tokens_per_batch(length, tokens) // length, length), device=device)
    mask = torch.ones_like(ids)
    encoder.train()

    def step():
        out = encoder(ids, mask).last_hidden_state
        out.float().pow(2).mean().backward()
        encoder.zero_grad(set_to_none=True)

    return common.timed(step, repeats, warmup=1, sync=torch.cuda.synchronize if device.type == "cuda" else None)


def tokens_per_batch(length: int, tokens: int = 4096) -> int:
    return max(1, tokens // length) * length


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common.bench_options(append=True)])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per variant")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-chunks", type=int, default=192)
    p.add_argument("--lengths", default="128,512,2048", help="lengths for throughput, memory and FLOPs")
    p.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=common.MIN_PASSES, help="timed passes per throughput cell (>= 3)")
    p.add_argument("--speed-only", action="store_true",
                   help="no training: sizes, FLOPs, throughput and activation memory of every variant (written to "
                        "bench/results/architectures-speed.json unless --output)")
    args = common.parse(p, argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    table = variants(args.hidden)
    args.names = list(table)
    if args.quick:
        args.steps, args.eval_chunks = 5, 32
        args.names = [n.replace("{q}", str(args.hidden // 4)) for n in QUICK]
        args.lengths = [x for x in args.lengths if x <= 128]
    if args.only:
        args.names = [n.strip() for n in args.only.split(",")]
    unknown = [n for n in args.names if n not in table]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(table)}")
    return args


def prepare_data(args, tok) -> tuple[list, list, MLMCollate]:
    """(training chunks, fixed-mask held-out batches, the collate): masking "random" 15%, 80/10/10."""
    special = SpecialTokens.from_tokenizer(tok)
    masking = build_masking("random", MaskingConfig(budget=0.15, mask_prob=0.8, random_prob=0.1))
    train_texts, held_texts = load_corpora(args.quick)
    t0 = time.time()
    train_chunks = tokenize_chunks(train_texts, tok, max_length=args.seq_len)
    eval_chunks = tokenize_chunks(held_texts, tok, max_length=args.seq_len)[: args.eval_chunks]
    print(f"data: {len(train_chunks)} training chunks, {len(eval_chunks)} held-out chunks of <= {args.seq_len} "
          f"pieces ({time.time() - t0:.0f}s to tokenize)", flush=True)
    collate = MLMCollate(masking, special)
    eval_batches = [collate(eval_chunks[i: i + 32], np.random.default_rng([12345, i]))
                    for i in range(0, len(eval_chunks), 32)]
    return train_chunks, eval_batches, collate


def sizes(name: str, config: EncoderConfig, args) -> dict:
    """Parameters (at the trained length: Synthesizer's grow with it) and forward FLOPs at every length."""
    info = {L: model_info(config.replace(max_position_embeddings=max(L, config.max_position_embeddings)), seq_len=L)
            for L in args.lengths}
    return {
        "variant": name, "attention": config.attention, "attention_kwargs": config.attention_kwargs,
        "memory": [config.num_memory_tokens, config.memory_mode] if config.num_memory_tokens else None,
        "params": model_info(config).total_params,
        "attention_params_per_layer": model_info(config).by_block()["attention"]["params"] // args.layers,
        "flops": {L: info[L].total_flops for L in args.lengths},
    }


def train_variant(name: str, config: EncoderConfig, data: tuple, folder: str, args) -> dict:
    """Pre-train one variant with the shared budget; its loss, size and FLOPs (no speed yet)."""
    train_chunks, eval_batches, collate = data
    torch.manual_seed(args.seed)
    model = MLMModel.build(Encoder(config), tie=True)
    start = time.time()
    state = train(model, train_chunks, collate, mlm_loss, TrainConfig(
        output_dir=folder, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1,
        schedule="linear", seed=args.seed, device=args.device, log_every=5, keep_checkpoints=1))
    train_seconds = time.time() - start
    curve = [json.loads(x) for x in Path(folder, "metrics.jsonl").read_text().splitlines()]
    loss = held_out_loss(model, eval_batches, torch.device(args.device))
    return {**sizes(name, config, args), "held_out_mlm_loss": round(loss, 4),
            "train_loss_last": round(state.last_loss, 4), "train_seconds": round(train_seconds, 1),
            "curve": [(r["elapsed"], r["loss"], r["step"]) for r in curve]}


def speed_and_memory(config: EncoderConfig, args) -> dict:
    """Training tokens/s (fastest and median of ``--repeats`` passes; every pass's seconds in ``step_seconds``)
    and activation memory at every length, on a fresh encoder of the same architecture with enough positions."""
    device = torch.device(args.device)
    out = {"tokens_per_s": {}, "tokens_per_s_median": {}, "tokens_per_batch": {}, "step_seconds": {},
           "activation_MiB": {}}
    for L in args.lengths:
        torch.manual_seed(args.seed)
        enc = Encoder(config.replace(max_position_embeddings=max(L, config.max_position_embeddings),
                                     hidden_dropout=0.0, attention_dropout=0.0)).to(device)
        t = throughput(enc, L, device, repeats=args.repeats)
        out["tokens_per_s"][L] = round(tokens_per_batch(L) / t["min"], 1)
        out["tokens_per_s_median"][L] = round(tokens_per_batch(L) / t["median"], 1)
        out["tokens_per_batch"][L] = tokens_per_batch(L)
        out["step_seconds"][L] = t.rounded()
        out["activation_MiB"][L] = round(activation_bytes(enc, L, device) / 2**20, 2)
    return out


def speed_only(args, base: dict, argv=None) -> None:
    """``--speed-only``: every variant's sizes, FLOPs, throughput and activation memory, no training."""
    table = variants(args.hidden)
    results = []
    for name in args.names:
        config = EncoderConfig(**base, **table[name])
        results.append({**sizes(name, config, args), **speed_and_memory(config, args)})
        print(f"{name}: tok/s median {results[-1]['tokens_per_s_median']}", flush=True)
    if not args.output:
        args.output = common.result_path("architectures-speed", args)
    out = common.write_result("architectures-speed", {
        "benchmark": "architectures --speed-only", "torch_threads": torch.get_num_threads(),
        "setup": {**base, "repeats": args.repeats, "quick": args.quick}, "results": results}, args, argv)
    print(speed_markdown(out))


def speed_markdown(out: dict) -> str:
    """Median training tokens/s (spread of the passes) and activation memory per variant and length."""
    lengths = list(out["results"][0]["flops"])
    lines = ["| variant | " + " | ".join(f"tok/s @{L} (spread)" for L in lengths) + " | "
             + " | ".join(f"act. MiB @{L}" for L in lengths) + " |", "|---|" + "---|" * (2 * len(lengths))]
    for r in out["results"]:
        cells = [f"{r['tokens_per_s_median'][L]:,.0f} ({r['step_seconds'][L]['spread']:.0%})" for L in lengths]
        cells += [f"{r['activation_MiB'][L]:.1f}" for L in lengths]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    tok = Tokenizer.from_pretrained("minilm")
    table = variants(args.hidden)
    base = dict(vocab_size=tok.vocab_size, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                intermediate_size=4 * args.hidden, max_position_embeddings=args.seq_len)
    if args.speed_only:
        speed_only(args, base, argv)
        return
    data = prepare_data(args, tok)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            config = EncoderConfig(**base, **table[name])
            row = train_variant(name, config, data, f"{tmp}/{len(results)}", args)
            row.update(speed_and_memory(config, args))
            results.append(row)
            print(f"{name}: held-out loss {row['held_out_mlm_loss']:.3f}, {row['train_seconds']:.0f}s, "
                  f"tok/s {row['tokens_per_s']}, act MiB {row['activation_MiB']}", flush=True)
    out = common.write_result("architectures", {
        "benchmark": "architectures", "torch_threads": torch.get_num_threads(),
        "setup": {**base, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                  "masking": "random 15% 80/10/10", "train_chunks": len(data[0]),
                  "eval_chunks": sum(len(b["input_ids"]) for b in data[1]), "quick": args.quick},
        "results": results}, args, argv)
    print(markdown(out))
    plot(out, common.result_path("architectures", args).with_suffix(".png"))
    if args.append:
        common.append_benchmarks(common.section("Encoder building blocks from scratch (`bench/architectures.py`)",
                                                out, markdown(out)))


def markdown(out: dict) -> str:
    lengths = list(out["results"][0]["flops"])
    head = ("| variant | held-out MLM loss | encoder params | attn params / layer | "
            + " | ".join(f"GFLOPs @{L}" for L in lengths) + " | "
            + " | ".join(f"tok/s @{L}" for L in lengths) + " | "
            + " | ".join(f"act. MiB @{L}" for L in lengths) + " |")
    lines = [head, "|" + "---|" * (4 + 3 * len(lengths))]
    for r in out["results"]:
        cells = [r["variant"], f"{r['held_out_mlm_loss']:.3f}", f"{r['params'] / 1e6:.2f}M",
                 f"{r['attention_params_per_layer'] / 1e3:.0f}k"]
        cells += [f"{r['flops'][L] / 1e9:.2f}" for L in lengths]
        cells += [f"{r['tokens_per_s'][L]:,.0f}" for L in lengths]
        cells += [f"{r['activation_MiB'][L]:.1f}" for L in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'reprlab[plot]')", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in out["results"]:
        curve = np.array(r["curve"], dtype=float)
        if len(curve) == 0:
            continue
        style = "-" if r["attention"] == "softmax" and not r["memory"] else ("--" if "synth" in r["attention"] else ":")
        ax.plot(curve[:, 0], curve[:, 1], style, label=f"{r['variant']} ({r['held_out_mlm_loss']:.2f})")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("training MLM loss (nats)")
    ax.set_title(f"MLM from scratch, {out['setup']['num_layers']}x{out['setup']['hidden_size']}, "
                 f"{out['setup']['steps']} steps of {out['setup']['batch_size']} (held-out loss in legend)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
