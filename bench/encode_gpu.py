"""GPU encoding without padding: packed (variable-length) attention over length-bucketed large batches.

On an H200, reprlab's padded bf16 encoder reaches 3.8x sentence-transformers on SciFact (6,956
docs/s), about 5% of the chip's bf16 matrix rate: MiniLM's matrices are small, and a padded batch
spends work on padding. This script measures the known levers against the same peer in one run:

* ``packed``: the batch's tokens are concatenated (N, H) with no padding; every linear layer,
  LayerNorm and GELU runs on real tokens only, attention runs per sequence through
  ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention over cumulative sequence offsets) on
  CUDA, or a per-sequence loop of ``scaled_dot_product_attention`` elsewhere (the reference), and
  mean pooling is a segment sum. Batches are formed from length-sorted texts by a token budget
  (``--token-budget``), so they are large and of even length.
* ``--compile``: ``torch.compile`` of the packed layer stack (dynamic shapes).

The packed path is checked against the padded one on every run (largest difference of the
vectors; fp32 within 1e-4 in ``--quick`` on the CPU, which is what the test runs), and every
setting is scored on SciFact (nDCG@10) by bench/encode.py's evaluation.

    python bench/encode_gpu.py --device cuda                   # on a GPU machine
    python bench/encode_gpu.py --device cuda --compile
    python bench/encode_gpu.py --quick                         # CPU, fp32: correctness of the packed path

Only plain encoders are packed (softmax attention in every layer, no memory tokens; see
``reprlab.onnx.fusable``); anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common

SETTINGS = ("sentence-transformers", "reprlab-padded", "reprlab-packed")
QUICK_DOCS = 96


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common.bench_options()])
    parser.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="reprlab settings' precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=128, help="padded settings' batch size")
    parser.add_argument("--token-budget", type=int, default=65536, help="packed: tokens per batch")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="packed: torch.compile the layer stack")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-eval", action="store_true", help="time only (nDCG needs faiss and pytrec_eval); "
                        "score the --keep folder later with bench/encode.py --evaluate KEEP")
    parser.add_argument("--keep", type=Path, default=None, help="folder for measure.json and the vectors")
    parser.add_argument("--keep-fp16", action="store_true",
                        help="store the kept vectors in float16 (half the bytes to bring back from a GPU machine; "
                             "they are scored in float32 after the round trip)")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="KEEP",
                        help="score a --no-eval run's KEEP folder here (needs faiss and pytrec_eval) and record it")
    args = common.parse(parser, argv)
    common.require(args.data, "--data")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.quick:
        args.token_budget = min(args.token_budget, 2048)
    return args


# ----------------------------------------------------------------------------- the packed encoder


def loop_attention(q, k, v, cu: torch.Tensor, max_len: int) -> torch.Tensor:
    """Reference: each sequence's own softmax attention. q/k/v (N, nh, hs), cu (B+1,) -> (N, nh, hs)."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        seq = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]  # (1, nh, L, hs)
        out[a:b] = F.scaled_dot_product_attention(*seq)[0].transpose(0, 1)  # (L, nh, hs)
    return out


def varlen_attention(q, k, v, cu: torch.Tensor, max_len: int) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, cu, cu, max_len, max_len)  # (N, nh, hs)


def packed_layers(model, x: torch.Tensor, cu: torch.Tensor, max_len: int, attention) -> torch.Tensor:
    """The encoder's layers on packed tokens x (N, H)."""
    N = x.shape[0]
    for layer in model.encoder.layers:
        attn = layer.attn
        nh = attn.num_heads
        hs = attn.query.out_features // nh
        q = attn.query(x).view(N, nh, hs)  # (N, nh, hs)
        k = attn.key(x).view(N, nh, hs)
        v = attn.value(x).view(N, nh, hs)
        ctx = attention(q, k, v, cu, max_len).reshape(N, nh * hs)  # (N, nh*hs)
        x = layer.attn_norm(x + attn.out(ctx))
        x = layer.ffn_norm(x + layer.ffn(x))
    return x


class PackedEncoder:
    """``encode(texts)`` of a SentenceEncoder without padding (see the module docstring)."""

    def __init__(self, model, token_budget: int, precision: str, compile: bool = False):
        from reprlab.onnx import fusable

        if not fusable(model) or model.encoder.config.embedding_size:
            raise SystemExit("the packed encoder takes plain encoders only (softmax attention, no memory tokens)")
        self.model, self.budget, self.precision = model.eval(), token_budget, precision
        cuda = model.device.type == "cuda"
        self.attention = varlen_attention if cuda else loop_attention
        self.layers = packed_layers
        if compile:
            self.layers = torch.compile(packed_layers, dynamic=True)

    def batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices of length-sorted texts cut into batches of at most ``token_budget`` tokens."""
        order = np.argsort(-lengths, kind="stable")
        out, current, tokens = [], [], 0
        for i in order:
            if current and tokens + lengths[i] > self.budget:
                out.append(np.array(current))
                current, tokens = [], 0
            current.append(i)
            tokens += int(lengths[i])
        return out + ([np.array(current)] if current else [])

    @torch.inference_mode()
    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        model, device = self.model, self.model.device
        tok = model.tokenizer
        tok._tok.enable_truncation(max_length)
        try:
            encodings = tok.encode_raw(texts)
        finally:
            tok._tok.no_truncation()
        lengths = np.array([len(e.ids) for e in encodings])
        out = torch.empty((len(texts), model.dim), dtype=torch.float32, device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        emb = model.encoder.embeddings
        with autocast:
            for idx in self.batches(lengths):
                n = torch.from_numpy(lengths[idx])
                ids = torch.from_numpy(np.concatenate([encodings[i].ids for i in idx])).to(device)  # (N,)
                cu = F.pad(n.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)  # (B+1,)
                seg = torch.repeat_interleave(torch.arange(len(idx)), n).to(device)  # (N,) sequence of each token
                pos = torch.arange(ids.shape[0], device=device) - cu[:-1].long()[seg]  # (N,) position in its sequence
                x = emb.norm(emb.word(ids) + emb.position(pos) + emb.token_type.weight[0])  # (N, H)
                x = self.layers(model, x, cu, int(n.max()), self.attention)
                sums = torch.zeros((len(idx), x.shape[1]), device=device).index_add_(0, seg, x.float())  # (B, H)
                vectors = sums / n.to(device)[:, None]
                out[torch.from_numpy(idx).to(device)] = F.normalize(vectors, dim=-1) if model.normalize else vectors
        return out.cpu().numpy()


# ----------------------------------------------------------------------------- the run


def encoders(args) -> dict:
    from reprlab.encoder import SentenceEncoder

    made = {}
    model = SentenceEncoder.from_pretrained(args.model, max_length=args.max_length).to(args.device).eval()
    if "sentence-transformers" in args.settings:
        from sentence_transformers import SentenceTransformer

        from reprlab.hub import resolve_model_path

        st = SentenceTransformer(str(resolve_model_path(args.model)), device=args.device)
        st.max_seq_length = args.max_length
        made["sentence-transformers"] = lambda t: st.encode(t, batch_size=args.batch_size, convert_to_numpy=True)
    if "reprlab-padded" in args.settings:
        made["reprlab-padded"] = lambda t: model.encode(t, batch_size=args.batch_size, precision=args.precision,
                                                        show_progress=False)
    if "reprlab-packed" in args.settings:
        packed = PackedEncoder(model, args.token_budget, args.precision, args.compile)
        made["reprlab-packed"] = lambda t: packed.encode(t, args.max_length)
    return made


def main(argv=None) -> dict:
    from reprlab.text.beir import doc_text, load_beir

    args = parse_args(argv)
    data = load_beir(args.data, split="test")
    if args.evaluate:
        return evaluate_kept(args, data, argv)
    ids = list(data.corpus)[: QUICK_DOCS if args.quick else None]
    texts = [doc_text(data.corpus[i]) for i in ids]
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    made = encoders(args)
    timings = common.timed_interleaved({name: (lambda f=f: f(texts)) for name, f in made.items()}, args.repeat,
                                       warmup=1, sync=sync)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="reprlab-encode-gpu-"))
    keep.mkdir(parents=True, exist_ok=True)
    results = []
    for name, timing in timings.items():
        np.save(keep / f"vectors-{name}.npy", timing.result.astype(np.float16 if args.keep_fp16 else np.float32))
        results.append({"setting": name, "seconds": timing["median"], "passes": timing["passes"],
                        "spread": timing["spread"], "docs_per_s": len(texts) / timing["median"],
                        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else float("nan"),
                        "vectors": f"vectors-{name}.npy"})
    record = {**common.stamp(argv), "docs": len(texts), "vectors_dtype": "float16" if args.keep_fp16 else "float32", "device": args.device, "precision": args.precision,
              "batch_size": args.batch_size, "token_budget": args.token_budget, "compile": args.compile,
              "max_length": args.max_length, "repeat": args.repeat, "quick": args.quick, "results": results}
    if {"reprlab-padded", "reprlab-packed"} <= set(timings):
        diff = np.abs(timings["reprlab-packed"].result - timings["reprlab-padded"].result).max()
        record["packed_vs_padded_max_abs_diff"] = float(diff)
        print(f"packed vs padded: max abs diff {diff:.2e}", file=sys.stderr)
    (keep / "measure.json").write_text(json.dumps(record, indent=2))
    if not args.no_eval:
        import encode

        record["results"] = encode.evaluate_measured(record, keep, data, ids, texts, args.model)
        print(encode.markdown(record, record["results"]))
    return common.write_result(f"encode-gpu-{args.device}", record, args, argv)


def evaluate_kept(args, data, argv) -> dict:
    """Score the vectors a ``--no-eval`` run kept (on another machine) and write its result JSON here."""
    import encode
    from reprlab.text.beir import doc_text

    record = json.loads((args.evaluate / "measure.json").read_text())
    ids = list(data.corpus)[: record["docs"]]
    texts = [doc_text(data.corpus[i]) for i in ids]
    folder = Path(tempfile.mkdtemp(prefix="reprlab-encode-gpu-eval-"))
    for r in record["results"]:  # float32 copies: a float16 round trip is scored as float32 vectors
        np.save(folder / r["vectors"], np.load(args.evaluate / r["vectors"]).astype(np.float32))
    record["results"] = encode.evaluate_measured(record, folder, data, ids, texts, args.model)
    record["evaluated"] = common.stamp(argv)
    print(encode.markdown(record, record["results"]))
    args.quick = record["quick"]
    return common.write_result(f"encode-gpu-{record['device']}", record, args, argv)


if __name__ == "__main__":
    main()
