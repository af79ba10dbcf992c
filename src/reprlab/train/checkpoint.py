"""Checkpoints of the training loop: model, optimizer, scheduler, RNG states and data position, without pickles.

A checkpoint is a folder ``checkpoints/checkpoint-NNNNNNNN/`` written atomically (it appears complete
or not at all):

* ``model.safetensors``: the model's state dict (parameters and persistent buffers);
* ``trainer_state.safetensors``: every tensor of the trainer's state (the optimizer's moments, the
  torch and CUDA RNG states, numpy's key);
* ``trainer_state.json``: everything else (step, epoch, data position, scheduler, the optimizer's
  hyper-parameters, Python's RNG state, the callbacks' states, the run's whole config), with each
  tensor replaced by ``{"__tensor__": KEY}`` and each tuple by ``{"__tuple__": [...]}``.

Nothing is unpickled on resume. A damaged checkpoint is a :class:`CheckpointError` naming the file.
On resume, :func:`config_changes` lists what differs between the stored config and the new one;
the loop refuses the run unless the change is allowed (``allow_config_change``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.io import atomic_dir, atomic_open, atomic_write_json

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_JSON, STATE_TENSORS, MODEL_FILE = "trainer_state.json", "trainer_state.safetensors", "model.safetensors"
# settings that may change between a run and its resumption without changing what is computed
BENIGN = {"resume", "device", "log_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
          "allow_config_change", "output_dir", "metrics_file"}


class CheckpointError(ReprlabError):
    """A checkpoint that cannot be read, or a resumption that would not continue the same run."""


# ----------------------------------------------------------------------------- tensors <-> JSON


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-ready copy of ``obj`` with every tensor moved into ``tensors`` (keyed by its path)."""
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return flatten(torch.from_numpy(np.ascontiguousarray(obj)), tensors, path)
    if isinstance(obj, dict):
        return {str(k): flatten(v, tensors, f"{path}.{k}" if path else str(k)) for k, v in obj.items()} | (
            {"__int_keys__": True} if obj and all(isinstance(k, int) for k in obj) else {})
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path or 'the top'})")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        int_keys = obj.get("__int_keys__", False)
        return {(int(k) if int_keys else k): unflatten(v, tensors) for k, v in obj.items() if k != "__int_keys__"}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ----------------------------------------------------------------------------- folders


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / STATE_JSON).is_file():
            found.append((int(m.group(1)), p))
        elif m and (p / "trainer_state.pt").is_file():
            raise CheckpointError(f"{p} was written by an older reprlab (a pickled trainer_state.pt), which this "
                                  "version does not read; start the run anew in another folder")
    return sorted(found)


def save_checkpoint(state, model: nn.Module, optimizer, scheduler, callbacks: Sequence, config) -> Path:
    folder = state.output_dir / "checkpoints" / f"checkpoint-{state.step:08d}"
    tensors: dict[str, torch.Tensor] = {}
    trainer = flatten({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in callbacks],
    }, tensors)
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_file(tensors, str(tmp / STATE_TENSORS))
        atomic_write_json(tmp / STATE_JSON, {
            "format": "reprlab-checkpoint", "version": 2,
            "step": state.step, "epoch": state.epoch, "position": state.position, "total_steps": state.total_steps,
            "config": dataclasses.asdict(config), "trainer": trainer,
        })
    for cb in callbacks:
        if hasattr(cb, "on_checkpoint"):
            cb.on_checkpoint(state, folder)
    old = list_checkpoints(state.output_dir)[: -config.keep_checkpoints] if config.keep_checkpoints > 0 else []
    for _, path in old:
        shutil.rmtree(path, ignore_errors=True)
    return folder


def read_state(folder: Path) -> dict:
    """``trainer_state.json`` of a checkpoint, checked."""
    path = folder / STATE_JSON
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); delete {folder} to resume from the checkpoint before "
                              "it, or start anew") from exc
    if not isinstance(saved, dict) or saved.get("format") != "reprlab-checkpoint" or "trainer" not in saved:
        raise CheckpointError(f"{path} is not a reprlab checkpoint state")
    return saved


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, callbacks: Sequence, state) -> None:
    saved = read_state(folder)
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        load_model(model, str(folder / MODEL_FILE), device=str(next(model.parameters()).device))
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"{folder} is damaged or does not fit this model ({str(exc).splitlines()[0]}); "
                              "delete it to resume from the checkpoint before it, or start anew") from exc
    trainer = unflatten(saved["trainer"], tensors)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    state.step, state.epoch, state.position = saved["step"], saved["epoch"], saved["position"]
    for cb, cb_state in zip(callbacks, trainer["callbacks"]):
        if cb_state is not None and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(cb_state)


# ----------------------------------------------------------------------------- resuming the same run


def leaves(d: Any, path: str = "") -> dict[str, Any]:
    """A nested dict as ``{dotted path: value}`` (tuples as lists, for comparison with JSON)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: list(d) if isinstance(d, tuple) else d}


def comparable(config: dict) -> dict[str, Any]:
    """A run's config as ``{dotted path: value}`` without the settings that may change on resume (the
    recipe's config is under ``extra.config``; its copy of the loop's settings is left out)."""
    flat = leaves(config)
    keep = {}
    for path, value in flat.items():
        leaf = path.rsplit(".", 1)[-1]
        if path.startswith(("extra.config.train.", "extra.config_defaults.")) or leaf in BENIGN:
            continue
        keep[path] = value
    return keep


def field_defaults(cls: type) -> dict[str, Any]:
    """``{dotted path: default}`` of a config dataclass's fields that have a default, as its JSON record writes
    them (a nested config's fields under its name; tuples as lists, paths as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out.update(leaves(json.loads(json.dumps(value, default=str)), f.name))
    return out


def config_changes(stored: dict, current: dict, allowed: Sequence[str] = (),
                   defaults: dict[str, Any] | None = None) -> list[str]:
    """The fields (dotted paths) whose value differs between a checkpoint's config and this run's, less
    those ``allowed`` names (by path or by field name). A field the stored config lacks (one added to the
    code after the run started) is no change when this run keeps it at its value in ``defaults``: a new
    field's default is the behaviour the code had before it."""
    a, b = comparable(stored), comparable(current)
    defaults = defaults or {}
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                     and not (k not in a and k in defaults and b[k] == defaults[k]))
    return [k for k in changed if k not in allowed and k.rsplit(".", 1)[-1] not in allowed]


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a kill: it is logged again
            continue
    with atomic_open(path) as f:
        f.write("".join(line + "\n" for line in kept))
