"""Parameters and FLOPs of an encoder, per layer and per block.

``model_info(config_or_model, seq_len=128)`` builds the encoder on PyTorch's ``meta`` device (no
memory, no weights), counts its parameters module by module and runs one forward pass under
``torch.utils.flop_counter.FlopCounterMode``, which records every matrix product (linear layers,
batched products, scaled-dot-product attention) against the module that issued it. FLOPs are
those of matrix products, 2 per multiply-add, for one forward pass of ``batch_size`` texts of
``seq_len`` tokens; element-wise work (softmax, LayerNorm, activations, gates) is not counted, and
a training step costs about three forward passes. Works for every attention in the registry,
memory tokens, decoupled embeddings, pruned layers, and an optional MLM head (tied or decoupled,
RemBERT-style, whose output embeddings are usually dropped after pre-training).

>>> info = model_info(EncoderConfig.tiny(), seq_len=16)
>>> info.total_params == sum(p.numel() for p in Encoder(EncoderConfig.tiny()).parameters())
True
>>> print(info.to_markdown())                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError

MLM_HEADS = ("tied", "decoupled")


@dataclass
class BlockInfo:
    """One row: a block of one layer (``layer`` None for embeddings, memory slots, heads)."""

    name: str  # module path, e.g. "layers.3.attn"
    # embeddings | attention | attn_norm | ffn | ffn_norm | memory | memory_update | pooler | pooling | mlm_head
    block: str
    layer: int | None
    params: int
    flops: int


@dataclass
class ModelInfo:
    rows: list[BlockInfo]
    seq_len: int
    batch_size: int
    total_params: int
    total_flops: int
    buffers: int = 0  # numbers in non-trainable buffers (e.g. a fixed random synthesizer's R)
    config: dict[str, Any] = field(default_factory=dict)

    def by_block(self) -> dict[str, dict[str, int]]:
        """Params and FLOPs summed over layers for each kind of block."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            d = out.setdefault(r.block, {"params": 0, "flops": 0})
            d["params"] += r.params
            d["flops"] += r.flops
        return out

    def layer(self, index: int) -> dict[str, int]:
        """Params and FLOPs of encoder layer ``index`` (all its blocks, incl. its memory update)."""
        rows = [r for r in self.rows if r.layer == index]
        return {"params": sum(r.params for r in rows), "flops": sum(r.flops for r in rows)}

    def to_dict(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "batch_size": self.batch_size, "total_params": self.total_params,
                "total_flops": self.total_flops, "buffers": self.buffers, "by_block": self.by_block(),
                "rows": [asdict(r) for r in self.rows], "config": self.config}

    def to_markdown(self, per_layer: bool = True) -> str:
        lines = [f"| block | layer | params | MFLOPs (T={self.seq_len}, B={self.batch_size}) |", "|---|---|---:|---:|"]
        if per_layer:
            for r in self.rows:
                layer = "" if r.layer is None else str(r.layer)
                lines.append(f"| {r.name} | {layer} | {r.params:,} | {r.flops / 1e6:,.2f} |")
        for block, d in self.by_block().items():
            lines.append(f"| **{block}** (all) | | {d['params']:,} | {d['flops'] / 1e6:,.2f} |")
        lines.append(f"| **total** | | {self.total_params:,} | {self.total_flops / 1e6:,.2f} |")
        if self.buffers:
            lines.append(f"\n(plus {self.buffers:,} numbers in non-trainable buffers)")
        return "\n".join(lines)


def _resolve(config_or_model) -> tuple[EncoderConfig, nn.Module | None, nn.Module | None]:
    """-> (config, an existing encoder or None, an extra pooling module or None)."""
    if isinstance(config_or_model, EncoderConfig):
        return config_or_model, None, None
    if isinstance(config_or_model, dict):
        return EncoderConfig.from_dict(config_or_model), None, None
    if isinstance(config_or_model, Encoder):
        return config_or_model.config, config_or_model, None
    if isinstance(config_or_model, nn.Module) and isinstance(getattr(config_or_model, "encoder", None), Encoder):
        pooling = getattr(config_or_model, "pooling", None)
        has_params = pooling is not None and any(True for _ in pooling.parameters())
        return config_or_model.encoder.config, config_or_model.encoder, pooling if has_params else None
    if isinstance(config_or_model, (str, Path)):
        return config_from_name(config_or_model), None, None
    raise ConfigError(f"model_info takes an EncoderConfig, an Encoder, a SentenceEncoder or a path, "
                      f"not {type(config_or_model).__name__}")


def config_from_name(name: str | Path) -> EncoderConfig:
    """``tiny`` / ``minilm-l6``, a JSON file of EncoderConfig fields (or an HF ``config.json``), or a model folder."""
    key = str(name).lower().replace("-", "_")
    if key == "tiny":
        return EncoderConfig.tiny()
    if key in ("minilm_l6", "minilm_l6_config"):
        return EncoderConfig.minilm_l6()
    path = Path(name)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of EncoderConfig fields")
        if "model_type" in data or "num_hidden_layers" in data:  # an HF config.json
            return EncoderConfig.from_pretrained(path.parent)
        try:
            return EncoderConfig.from_dict(data)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return EncoderConfig.from_pretrained(name)  # a model folder or 'minilm'; raises ModelLoadError with advice


def _block_of(name: str) -> tuple[str, int | None, str]:
    """Module path of a parameter -> (row name, layer, block kind)."""
    parts = name.split(".")
    if parts[0] == "layers":
        i = int(parts[1])
        sub = parts[2]
        kind = {"attn": "attention"}.get(sub, sub)
        return f"layers.{i}.{sub}", i, kind
    if parts[0] == "memory" and len(parts) > 2 and parts[1] == "update":
        i = int(parts[2])
        return f"memory.update.{i}", i, "memory_update"
    return parts[0], None, parts[0]


def model_info(
    config_or_model,
    seq_len: int = 128,
    batch_size: int = 1,
    mlm_head: str | None = None,
    output_embedding_size: int | None = None,
) -> ModelInfo:
    """Parameters and forward FLOPs of an encoder, per layer and per block.

    Args:
        config_or_model: an ``EncoderConfig`` (or its dict), an ``Encoder``, a ``SentenceEncoder``
            (its learned pooling, e.g. HIRE, is counted as ``pooling`` params), or a name/path for
            :func:`config_from_name`.
        seq_len, batch_size: the input the FLOPs are counted for.
        mlm_head: add an MLM head: ``tied`` (scores with the input embeddings) or ``decoupled``
            (its own output embeddings of width ``output_embedding_size``, default hidden size).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from reprlab.nn.embeddings import MLMHead

    config, existing, pooling = _resolve(config_or_model)
    if seq_len < 1 or batch_size < 1:
        raise ConfigError("seq_len and batch_size must be at least 1")
    if seq_len > config.max_position_embeddings:
        raise ConfigError(f"seq_len {seq_len} exceeds the config's max_position_embeddings "
                          f"{config.max_position_embeddings}")
    if mlm_head not in (None, *MLM_HEADS):
        raise ConfigError(f"unknown mlm_head {mlm_head!r}; choose one of: {', '.join(MLM_HEADS)}")
    if existing is not None:
        model = copy.deepcopy(existing).to("meta")
    else:
        with torch.device("meta"):
            model = Encoder(config)
    head = None
    if mlm_head is not None:
        with torch.device("meta"):
            head = MLMHead(config.hidden_size, config.vocab_size, output_embedding_size=output_embedding_size,
                           tie_to=model.embeddings.word if mlm_head == "tied" else None,
                           layer_norm_eps=config.layer_norm_eps)

    rows: dict[str, BlockInfo] = {}
    for name, p in model.named_parameters():
        row, layer, kind = _block_of(name)
        r = rows.setdefault(row, BlockInfo(row, kind, layer, 0, 0))
        r.params += p.numel()
    if pooling is not None:
        rows["pooling"] = BlockInfo("pooling", "pooling", None, sum(p.numel() for p in pooling.parameters()), 0)
    if head is not None:
        rows["mlm_head"] = BlockInfo("mlm_head", "mlm_head", None, sum(p.numel() for p in head.parameters()), 0)
    # a block holding only buffers (or nothing) still gets a row, for its FLOPs
    for name, _ in model.named_modules():
        if re.fullmatch(r"layers\.\d+\.\w+|memory\.update\.\d+", name):
            row, layer, kind = _block_of(name + ".weight")
            rows.setdefault(row, BlockInfo(row, kind, layer, 0, 0))

    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        out = model(ids, torch.ones(batch_size, seq_len, dtype=torch.long, device="meta"))
        if head is not None:
            head(out.last_hidden_state)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__ + "."
    for module_name, ops in counts.items():
        if not module_name.startswith(prefix):
            if module_name == type(head).__name__:
                rows["mlm_head"].flops = sum(ops.values())
            continue
        row = module_name[len(prefix):]
        if row in rows:
            rows[row].flops = sum(ops.values())
    total_flops = sum(counts.get("Global", {}).values())
    kept = [r for r in rows.values() if r.params or r.flops or r.block in ("attention", "ffn")]
    order = sorted(kept, key=lambda r: (_order(r), r.layer if r.layer is not None else -1, r.name))
    buffers = sum(b.numel() for n, b in model.named_buffers())
    return ModelInfo(
        rows=order, seq_len=seq_len, batch_size=batch_size,
        total_params=sum(r.params for r in order), total_flops=total_flops, buffers=buffers,
        config=config.to_dict(),
    )


def _order(r: BlockInfo) -> int:
    if r.block == "embeddings":
        return 0
    if r.block == "memory":
        return 1
    if r.layer is not None:
        return 2
    return 3


__all__ = ["BlockInfo", "ModelInfo", "config_from_name", "model_info"]


def named_sizes() -> list[str]:
    """The named-size builders of EncoderConfig (classmethods that take only ``**overrides``)."""
    import inspect

    names = []
    for name, value in vars(EncoderConfig).items():
        if isinstance(value, classmethod):
            params = list(inspect.signature(getattr(EncoderConfig, name)).parameters.values())
            if params and all(p.kind is p.VAR_KEYWORD for p in params):
                names.append(name)
    return names


def load_named_config(name: str) -> EncoderConfig:
    """An EncoderConfig from a named size (``tiny``, ``minilm_l6``), a config JSON file, a model folder or
    'minilm'."""
    from reprlab.hub import MODEL_ALIASES

    key = name.lower().replace("-", "_")
    sizes = named_sizes()
    if key in sizes:
        return getattr(EncoderConfig, key)()
    if Path(name).exists() or name.lower() in MODEL_ALIASES:
        return config_from_name(name)
    raise ConfigError(f"unknown config {name!r}: give a named size ({', '.join(sizes)}), an existing config JSON "
                      f"file or model folder, or 'minilm'")
