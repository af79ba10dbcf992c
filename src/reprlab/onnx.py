"""ONNX export of a sentence encoder and an ONNX Runtime backend with :class:`SentenceEncoder`'s ``encode``.

* :func:`export_onnx` writes a folder: ``model.onnx`` (float32), with ``int8=True`` also
  ``model_int8.onnx`` (onnxruntime's dynamic quantisation: int8 weights per output channel,
  activations quantised per batch at run time), the tokenizer files and ``onnx.json`` (sizes,
  pooling, source model, and the differences to the torch model measured at export time).
  The graph is the whole ``SentenceEncoder.forward``: token ids and mask in, pooled (and
  normalised) vectors out, with dynamic batch and sequence axes.
* :class:`OnnxSentenceEncoder` reads such a folder and encodes with ONNX Runtime exactly as
  ``SentenceEncoder.encode`` does (texts tokenised once, sorted by length, batches padded to their
  own longest text, float32 numpy out, in the order given). ``SentenceEncoder.from_pretrained(dir,
  backend="onnx" | "onnx-int8")`` returns one, so ``DenseRetriever``, MDR's beam search and
  ``reprlab serve`` take it wherever they take a torch encoder.

Two exporters of ``torch.onnx`` are offered. ``"torchscript"`` (the default) traces the model; for
a plain encoder (softmax attention in every layer, no memory tokens) the trace goes through
:class:`FusableForward`, which writes attention as BERT's reference code does (scores plus an
additive mask bias, softmax, weighted sum), a form that onnxruntime's transformer optimizer fuses
into its ``Attention``, ``SkipLayerNormalization`` and ``BiasGelu`` kernels. ``"dynamo"``
(``torch.export`` + onnxscript) exports ``SentenceEncoder.forward`` as it is; ORT runs it unfused
(on the SciFact bench it is the slower of the two, see ``bench/results/encode-onnx.md``). Both are
checked against the torch model at export (fp32 within 1e-4 on a padded batch).

This module sits between ``text`` and ``encoder`` in the floors: it imports the tokenizer and the
model-folder helpers below it, takes the torch model to export as an argument, and ``encoder``
imports it (lazily) to offer the backend.

>>> export_onnx(SentenceEncoder.from_pretrained("minilm"), "minilm-onnx", int8=True)  # doctest: +SKIP
>>> OnnxSentenceEncoder.from_pretrained("minilm-onnx", int8=True).encode(["dense retrieval"]).shape  # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError, DataFormatError, ModelLoadError, ReprlabError, require
from reprlab.io import atomic_dir
from reprlab.text.tokenizer import Tokenizer

logger = logging.getLogger("reprlab")

META_FILE = "onnx.json"
FORMAT, FORMAT_VERSION = "reprlab-onnx", 1
FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
EXPORTERS = ("torchscript", "dynamo")
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "sentence_embedding"
PROBE_TEXTS = ("a short text", "a somewhat longer text that pads the first one in its batch",
               "dense retrieval with a sentence encoder, exported to ONNX and run by ONNX Runtime on a CPU")
FP32_TOLERANCE = 1e-4  # max abs difference to torch accepted at export


class FusableForward(nn.Module):
    """``SentenceEncoder.forward`` for export, attention written as BERT's reference code writes it.

    Same computation as the model's own forward (tested against it): embeddings, then per layer
    ``LN(x + out(softmax(q k^T / sqrt(d) + bias) v))`` and ``LN(x + ffn(x))``, where ``bias`` is 0
    on real tokens and the dtype's minimum on padding; then the model's pooling and normalisation.
    Only for plain encoders (:func:`fusable`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        enc = self.model.encoder
        x = enc.embed(input_ids)  # (B, T, H)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        for layer in enc.layers:
            attn = layer.attn
            B, T, _ = x.shape
            nh = attn.num_heads
            hs = attn.query.out_features // nh
            q = attn.query(x).view(B, T, nh, hs).permute(0, 2, 1, 3)  # (B, nh, T, hs)
            k = attn.key(x).view(B, T, nh, hs).permute(0, 2, 3, 1)  # (B, nh, hs, T)
            v = attn.value(x).view(B, T, nh, hs).permute(0, 2, 1, 3)  # (B, nh, T, hs)
            scores = torch.matmul(q, k) / math.sqrt(hs) + bias  # (B, nh, T, T)
            ctx = torch.matmul(scores.softmax(dim=-1), v)  # (B, nh, T, hs)
            ctx = ctx.permute(0, 2, 1, 3).reshape(B, T, nh * hs)  # (B, T, nh*hs)
            x = layer.attn_norm(x + attn.out(ctx))
            x = layer.ffn_norm(x + layer.ffn(x))
        vectors = self.model.pooling(x, attention_mask.bool(), None)  # (B, H)
        return F.normalize(vectors, dim=-1) if self.model.normalize else vectors


def fusable(model: nn.Module) -> bool:
    """Whether :class:`FusableForward` computes ``model``'s forward: softmax attention with every head in
    every layer, an FFN in every layer, no memory tokens, a pooling that reads the last layer only."""
    enc = model.encoder
    if enc.memory is not None or getattr(model.pooling, "needs_hidden_states", False):
        return False
    return all(getattr(layer.attn, "registry_name", None) == "softmax" and layer.ffn is not None
               for layer in enc.layers)


def _probe(model: nn.Module, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of :data:`PROBE_TEXTS` (ids, mask as int64 numpy) in the model's vocabulary."""
    batch = model.tokenizer(list(PROBE_TEXTS), max_length=max_length)
    return batch.input_ids.numpy(), batch.attention_mask.numpy()


def _export_graph(model: nn.Module, path: Path, exporter: str, opset: int | None) -> bool:
    """Write the float32 graph of ``model`` to ``path``; returns whether it went through FusableForward."""
    ids, mask = (torch.from_numpy(a) for a in _probe(model, 64))
    fused = exporter == "torchscript" and fusable(model)
    module = (FusableForward(model) if fused else model).eval()  # export restores this mode on every submodule
    import warnings

    with warnings.catch_warnings():  # the tracer's notes on python control flow, expected here
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            require("onnxscript", "onnx")
            batch, seq = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("seq", min=1, max=512)
            program = torch.onnx.export(module, (ids, mask), dynamo=True, input_names=list(INPUTS),
                                        output_names=[OUTPUT], opset_version=opset or 18,
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                        "attention_mask": {0: batch, 1: seq}})
            program.save(str(path))
        else:
            torch.onnx.export(module, (ids, mask), str(path), dynamo=False, input_names=list(INPUTS),
                              output_names=[OUTPUT], opset_version=opset or 17,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "attention_mask": {0: "batch", 1: "seq"}, OUTPUT: {0: "batch"}})
    return fused


def _fuse(path: Path, model: nn.Module) -> dict[str, int]:
    """Rewrite ``path`` with onnxruntime's transformer fusions (attention, skip-LayerNorm, bias-GELU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model.encoder.config
    heads = {layer.attn.num_heads for layer in model.encoder.layers}
    optimized = optimize_model(str(path), model_type="bert", num_heads=heads.pop() if len(heads) == 1 else 0,
                               hidden_size=cfg.hidden_size)
    optimized.save_model_to_file(str(path))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def _quantize(src: Path, dst: Path) -> None:
    """int8 dynamic quantisation (weights per output channel; activations per batch at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_onnx(model: nn.Module, out: str | Path, int8: bool = False, exporter: str = "torchscript",
                fuse: bool = True, opset: int | None = None, source: str | None = None) -> Path:
    """Export a :class:`~reprlab.encoder.SentenceEncoder` to an ONNX folder (written atomically).

    Args:
        model: the sentence encoder (moved to the CPU in float32 for the export; left as it was).
        out: the folder to write (``model.onnx``, ``model_int8.onnx`` with ``int8``, tokenizer, ``onnx.json``).
        int8: also write the dynamically quantised graph.
        exporter: ``"torchscript"`` (traced; fusable by ORT) or ``"dynamo"`` (``torch.export`` + onnxscript).
        fuse: run onnxruntime's transformer fusions on the float32 graph before quantising (torchscript only).
        source: the model's folder or name, recorded in ``onnx.json``.

    The export is checked: both graphs encode :data:`PROBE_TEXTS` as a padded batch and their
    differences to the torch model are recorded; a float32 graph further than 1e-4 is an error.
    """
    require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}", field="exporter")
    t0 = time.time()
    device, dtype, was_training = model.device, next(model.parameters()).dtype, model.training
    model.cpu().float().eval()
    try:
        with atomic_dir(out) as tmp:
            fp32 = tmp / FILES["fp32"]
            fused_forward = _export_graph(model, fp32, exporter, opset)
            fusions = _fuse(fp32, model) if fuse and fused_forward else {}
            if int8:
                _quantize(fp32, tmp / FILES["int8"])
            checks = _check(model, tmp, int8, ort)
            model.tokenizer.save(tmp)
            meta = {"format": FORMAT, "version": FORMAT_VERSION, "source": source, "dim": model.dim,
                    "max_length": model.max_length, "max_positions": model.encoder.config.max_position_embeddings,
                    "normalize": bool(model.normalize), "exporter": exporter, "fusions": fusions,
                    "files": {k: v for k, v in FILES.items() if k == "fp32" or int8}, "check": checks,
                    "versions": _versions(), "seconds": round(time.time() - t0, 1)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    finally:
        model.to(device=device, dtype=dtype).train(was_training)
    logger.info(f"exported ONNX ({exporter}{', fused' if fusions else ''}{', + int8' if int8 else ''}) "
                f"to {out} in {time.time() - t0:.0f}s; fp32 max abs diff {checks['fp32_max_abs_diff']:.1e}")
    return Path(out)


def _check(model: nn.Module, folder: Path, int8: bool, ort) -> dict[str, float]:
    """Differences of the exported graphs to the torch model on the padded probe batch."""
    ids, mask = _probe(model, model.max_length)
    model.eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()  # (3, H)
    checks = {}
    for variant in ("fp32", "int8") if int8 else ("fp32",):
        session = ort.InferenceSession(str(folder / FILES[variant]), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]
        checks[f"{variant}_max_abs_diff"] = float(np.abs(got - ref).max())
        checks[f"{variant}_min_cosine"] = float(_cosine(got, ref).min())
    if checks["fp32_max_abs_diff"] > FP32_TOLERANCE:
        raise ReprlabError(f"the exported graph differs from the torch model by {checks['fp32_max_abs_diff']:.2e} "
                           f"(more than {FP32_TOLERANCE}); this model does not export correctly")
    return checks


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(1)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# ------------------------------------------------------------------------------------------------ runtime


def onnx_folder(path: str | Path) -> Path | None:
    """The export folder at ``path`` or in its ``onnx/`` subfolder, or None."""
    path = Path(str(path))
    for folder in (path, path / "onnx"):
        if (folder / META_FILE).is_file():
            return folder
    return None


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"not a readable ONNX export description ({exc})", str(folder / META_FILE)) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise DataFormatError(f'expected {{"format": "{FORMAT}", "files": ...}}', str(folder / META_FILE))
    return meta


class OnnxSentenceEncoder:
    """Texts to vectors with ONNX Runtime: the ``encode`` of :class:`~reprlab.encoder.SentenceEncoder`.

    ``precision`` is accepted for a drop-in interface and does not change the graph: the variant
    (``int8`` or float32) is chosen when the folder is opened.
    """

    backend = "onnx"

    def __init__(self, session, tokenizer: Tokenizer, meta: dict[str, Any], variant: str, folder: Path,
                 max_length: int | None = None):
        self.session = session
        self.tokenizer = tokenizer
        self.meta = meta
        self.variant = variant
        self.folder = folder
        self.max_length = int(max_length or meta["max_length"])
        self.max_positions = int(meta.get("max_positions", 512))

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def name(self) -> str:
        return f"onnx-{self.variant}:{self.meta.get('source') or self.folder}"

    @classmethod
    def from_pretrained(cls, path: str | Path, int8: bool = False, max_length: int | None = None,
                        threads: int | None = None) -> "OnnxSentenceEncoder":
        """Open an export folder (or a model folder with an ``onnx/`` export); ``int8`` picks the quantised graph.

        ``threads``: ONNX Runtime's intra-op threads (default: torch's thread count, so both backends
        use the machine alike).
        """
        ort = require("onnxruntime", "onnx")
        folder = onnx_folder(path)
        if folder is None:
            raise ModelLoadError(f"{path} holds no ONNX export ({META_FILE}); write one with "
                                 f"`reprlab export onnx --model MODEL --out {path}`")
        meta = read_meta(folder)
        variant = "int8" if int8 else "fp32"
        if variant not in meta["files"]:
            raise ModelLoadError(f"{folder} has no {variant} graph; export it with `reprlab export onnx --int8`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(folder / meta["files"][variant]), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...): a damaged graph
            raise ModelLoadError(f"{folder / meta['files'][variant]}: ONNX Runtime cannot load it "
                                 f"({str(exc).splitlines()[0][:200]}); export it again") from exc
        return cls(session, Tokenizer.from_pretrained(folder), meta, variant, folder, max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
               show_progress: bool | None = None, precision: str = "fp32", desc: str = "encode") -> np.ndarray:
        """Vectors of ``texts`` as float32 numpy (N, dim), in the order given (see the class docstring)."""
        from reprlab.logs import progress

        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ReprlabError("no texts to encode: the list is empty")
        if precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"unknown precision {precision!r}; choose one of: fp32, bf16, auto", field="precision")
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", field="batch_size")
        max_length = min(max_length or self.max_length, self.max_positions)
        tok = self.tokenizer
        encodings = tok.encode_truncated(texts, max_length)
        order = np.argsort(-np.array([len(e.ids) for e in encodings]), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with progress(total=len(texts), show=show_progress, desc=desc, unit="text") as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start: start + batch_size]
                batch = tok.pad([encodings[i] for i in idx])
                feeds = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
                out[idx] = self.session.run([OUTPUT], feeds)[0]  # (b, dim)
                bar.update(len(idx))
        return out


def load_onnx_encoder(path: str | Path, int8: bool = False, max_length: int | None = None) -> OnnxSentenceEncoder:
    """What ``SentenceEncoder.from_pretrained(path, backend="onnx" | "onnx-int8")`` returns."""
    return OnnxSentenceEncoder.from_pretrained(path, int8=int8, max_length=max_length)
