"""Fully-explored MLM's claim, measured: gradient variance over random masks vs fully-explored masks.

Zheng et al. (arXiv:2010.06040, ICLR 2021 submission) argue that K masked copies of a sequence
whose masks partition it (each token masked in exactly one copy) give a lower-variance gradient
than K copies with independently drawn random masks of the same size. Here, on the same batch of
SciFact chunks and the same model (all-MiniLM-L6-v2 + a tied MLM head, the head first warmed up on
SciFact so that gradients are meaningful; dropout off, so the masks are the only randomness), the
gradient of the K-copy MLM loss is computed for R independent draws of each scheme, and its variance
(the trace of the covariance over all parameters, sum_i Var[g_i]) is reported with the ratio
random / fully-explored. The 80/10/10 replacement is drawn in both, as in training.

    python bench/fe_variance.py                 # MiniLM, 4 chunks x 7 copies, 12 draws per scheme
    python bench/fe_variance.py --quick         # smoke run: 2 chunks of 64 tokens, 3 draws, 2 warm-up steps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import common


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 parents=[common.bench_options()])
    ap.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False),
                    help="BEIR folder whose corpus gives the chunks")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch", type=int, default=4, help="chunks in the batch")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--budget", type=float, default=0.15, help="K = round(1 / budget) copies")
    ap.add_argument("--reps", type=int, default=12, help="independent mask draws per scheme")
    ap.add_argument("--head-warmup", type=int, default=30, help="head-only MLM steps before measuring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    args = common.parse(ap, argv)
    common.require(args.data, "--data")
    if args.quick:
        args.batch, args.reps, args.head_warmup, args.max_length = 2, 3, 2, 64
    return args


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


def gradient(model, batch, device) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss, _ = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device))
    loss.backward()
    return flat_grad(model).cpu()


def random_copies(chunks, masking, special, rng, K):
    """K copies of each chunk, each with its own independent random mask (rows ordered like FE's)."""
    parts = [masking.collate(chunks, special, rng) for _ in range(K)]
    T = max(p["input_ids"].shape[1] for p in parts)
    out = {}
    for key, fill in (("input_ids", special.pad_id), ("attention_mask", 0), ("labels", -100)):
        rows = [torch.nn.functional.pad(p[key], (0, T - p[key].shape[1]), value=fill) for p in parts]
        out[key] = torch.stack(rows, 1).reshape(-1, T)  # (B*K, T): chunk-major, like fully-explored
    return out


def load_chunks(args, tok, rng) -> tuple[list, list]:
    """(the measured batch, chunks for the head warm-up): full-length chunks of 600 random corpus texts."""
    from reprlab.pretrain.corpus import read_texts, tokenize_chunks

    texts = read_texts(str(args.data))
    picked = [texts[i] for i in rng.choice(len(texts), size=600, replace=False)]
    chunks = tokenize_chunks(picked, tok, max_length=args.max_length)
    full = [c for c in chunks if len(c) == args.max_length]  # equal lengths: no padding effects
    return full[: args.batch], full[args.batch:]


def warm_head(model, warm_chunks, special, args, device, rng) -> list[float]:
    """Train the fresh MLM head alone (encoder frozen, random masking) on chunks other than the measured
    batch, then unfreeze the encoder (not its pooler) and switch dropout off; returns the losses."""
    from reprlab.pretrain.masking import MaskingConfig, build_masking
    from reprlab.pretrain.mlm import MLMCollate, mlm_loss

    model.encoder.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.head.parameters() if p.requires_grad], lr=1e-3)
    collate = MLMCollate(build_masking("random", MaskingConfig(budget=args.budget)), special)
    model.train()
    losses = []
    for _ in range(args.head_warmup):
        items = [warm_chunks[i] for i in rng.choice(len(warm_chunks), size=16, replace=False)]
        batch = {k: v.to(device) for k, v in collate(items, rng).items()}
        loss, _ = mlm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.encoder.requires_grad_(True)
    if model.encoder.pooler is not None:
        model.encoder.pooler.requires_grad_(False)
    model.eval()  # dropout off: the mask is the only randomness
    return losses


def measure(model, batch_chunks, special, args, device) -> dict[str, dict]:
    """Trace of the gradient covariance over ``args.reps`` mask draws, per masking scheme."""
    from reprlab.pretrain.masking import MaskingConfig, build_masking

    K = int(round(1 / args.budget))
    random_masks = build_masking("random", MaskingConfig(budget=1.0 / K))  # each copy: n / K tokens
    fe_random = build_masking("fully-explored", MaskingConfig(budget=args.budget, fe_layout="random"))
    fe_contiguous = build_masking("fully-explored", MaskingConfig(budget=args.budget, fe_layout="contiguous"))
    schemes = {
        "random (K independent masks)": lambda r: random_copies(batch_chunks, random_masks, special, r, K),
        "fully-explored, random partition": lambda r: fe_random.collate(batch_chunks, special, r),
        "fully-explored, contiguous segments": lambda r: fe_contiguous.collate(batch_chunks, special, r),
    }
    results = {}
    for name, make in schemes.items():
        t1 = time.time()
        total = total_sq = None
        masked = []
        for rep in range(args.reps):
            batch = make(np.random.default_rng([args.seed, rep, len(results)]))
            masked.append(int((batch["labels"] != -100).sum()))
            g = gradient(model, batch, device)
            total = g.clone() if total is None else total + g
            total_sq = g * g if total_sq is None else total_sq + g * g
        mean = total / args.reps
        var = (total_sq - args.reps * mean * mean) / (args.reps - 1)  # unbiased, per coordinate
        results[name] = {
            "grad_variance_trace": float(var.clamp(min=0).sum()),
            "mean_grad_norm_sq": float((mean * mean).sum()),
            "masked_tokens_per_batch": float(np.mean(masked)),
            "seconds": round(time.time() - t1, 1),
        }
        print(f"{name}: trace Var[g] = {results[name]['grad_variance_trace']:.4g} "
              f"({results[name]['seconds']} s)", flush=True)
    base = results["random (K independent masks)"]["grad_variance_trace"]
    for r in results.values():
        r["variance_ratio_random_over_this"] = base / r["grad_variance_trace"]
    return results


def markdown(results: dict, args, K: int) -> str:
    lines = [f"### Fully-explored MLM: gradient variance (MiniLM + MLM head, {args.batch} SciFact chunks of "
             f"{args.max_length} tokens, K = {K} copies, {args.reps} draws)", "",
             "| masks of the K copies | masked tokens / batch | trace Var[grad] | ratio random / this |",
             "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['masked_tokens_per_batch']:.0f} | {r['grad_variance_trace']:.4g} | "
                     f"{r['variance_ratio_random_over_this']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from reprlab.encoder import Encoder
    from reprlab.pretrain.masking import SpecialTokens
    from reprlab.pretrain.mlm import MLMModel
    from reprlab.text.tokenizer import Tokenizer

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tok = Tokenizer.from_pretrained(args.model)
    special = SpecialTokens.from_tokenizer(tok)
    rng = np.random.default_rng(args.seed)  # picks the texts, then the warm-up batches and masks
    batch_chunks, warm_chunks = load_chunks(args, tok, rng)
    model = MLMModel.build(Encoder.from_pretrained(args.model)).to(device)
    t0 = time.time()
    warm_losses = warm_head(model, warm_chunks, special, args, device, rng)
    warm_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = measure(model, batch_chunks, special, args, device)
    K = int(round(1 / args.budget))
    table = markdown(results, args, K)
    print("\n" + table)
    record = common.write_result("fe_variance", {
        "benchmark": "fe_variance", "device": args.device, "args": common.settings(args), "copies": K,
        "trainable_parameters": n_params, "head_warmup_seconds": round(warm_s, 1),
        "head_warmup_loss_first_last": [warm_losses[:1], warm_losses[-1:]], "results": results}, args, argv)
    if args.append:
        common.append_benchmarks(common.section("Fully-explored MLM: gradient variance (`bench/fe_variance.py`)",
                                                record, table))


if __name__ == "__main__":
    main()
