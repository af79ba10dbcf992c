"""bench/blockskim.py's ``--export-to`` / ``--import-from``: carry its trained readers from the machine
that trained them (e.g. a lent GPU machine whose returned files must each stay under 16 MiB) to the one
that times them, as a few small files.

``--export-to DIR`` (on the training machine, after ``--train-only``) writes into DIR:

- ``plain-fp16-NN.safetensors``: the plain reader's ``model.safetensors`` in float16, cut into shards of
  at most ``--shard-mib`` (a tensor larger than the room left is cut by rows; each part is named
  ``<tensor>#<first row>``). Three shards for MiniLM (45 MB).
- ``runs.tar.gz``: every other file of the run folders (``train_config.json``, ``split.json``,
  ``metrics.jsonl``, ``train_time.json``, the model folders' configs and tokenizer files, and the frozen
  variants' ``block_skim.safetensors``, their predictors) and ``manifest.json``: the tensors' names,
  shapes and dtypes, the shards' sha256, the training data files' sha256 and the machine.

The frozen variants (``frozen-*``) train their predictors on the plain reader and leave its weights as
they are: export checks that their ``model.safetensors`` equals the plain reader's, tensor for tensor, so
one copy travels. ``--import-from DIR`` rebuilds the ``--work-dir`` layout ``--reuse`` expects, with
float32 weights cast back from the float16 copy (so both readers share the exact same rounded weights; the comparison
stays fair, and the record says so): each run's ``train_config.json`` gets this machine's paths for its
data files (after their sha256 matched) and for the plain reader it started from, and ``imported.json``
says where, on what and how the run was trained and carried. Nothing else in the recipe changes, so
``--reuse`` accepts the runs by its usual check (``run_differences``).

    python bench/blockskim.py --train-only --device cuda --work-dir runs/blockskim-long ... --export-to $OUT/bs
    python bench/blockskim.py --import-from ~/bs --work-dir runs/blockskim-long      # here; then --reuse as usual
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import common

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
BUNDLE = "runs.tar.gz"
IMPORTED = "imported.json"
HEADER_ROOM = 64 * 1024  # bytes kept free in each shard for the safetensors header
SKIP = ("checkpoints",)  # run sub-folders that never travel (optimizer state, resumable only where they were made)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ----------------------------------------------------------------------------- fp16 shards


def shard_state(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """``state`` with its floating tensors in float16, packed in order into shards of at most ``max_bytes``
    of tensor data; a tensor that does not fit the room left is cut by rows (dim 0), each part named
    ``<name>#<first row>``. Raises ValueError for a non-finite float16 value or a row larger than a shard."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name, tensor in state.items():
        t = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name}: not finite in float16 (values beyond +-65504?)")
        rows = t.reshape(1, *t.shape) if t.dim() == 0 else t  # (R, ...)
        row_bytes = rows[0].numel() * rows.element_size()
        if row_bytes > max_bytes:
            raise ValueError(f"{name}: one row is {row_bytes} bytes, more than a shard ({max_bytes})")
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, (max_bytes - used) // max(row_bytes, 1))
            if take == 0:
                shards.append({})
                used = 0
                continue
            part = rows[start: start + take]
            shards[-1][f"{name}#{start}"] = (part.reshape(t.shape) if t.dim() == 0 else part).contiguous().clone()
            used += take * row_bytes
            start += take
    return [s for s in shards if s]


def unshard_state(shards: list[dict[str, torch.Tensor]], dtypes: dict[str, str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`shard_state`: parts joined by rows in order and cast to ``dtypes``
    ({name: "float32", ...}); the names in the order of ``dtypes``."""
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for shard in shards:
        for key, t in shard.items():
            name, start = key.rsplit("#", 1)
            parts.setdefault(name, []).append((int(start), t))
    missing = set(dtypes) ^ set(parts)
    if missing:
        raise ValueError(f"shards and manifest disagree on tensors: {sorted(missing)[:5]}")
    state = {}
    for name, dtype in dtypes.items():
        pieces = [t for _, t in sorted(parts[name], key=lambda p: p[0])]
        whole = pieces[0] if pieces[0].dim() == 0 else torch.cat(pieces)  # (R, ...)
        state[name] = whole.to(getattr(torch, dtype))
    return state


def write_shards(state: dict[str, torch.Tensor], out: Path, stem: str, shard_mib: float) -> list[Path]:
    paths = []
    for i, shard in enumerate(shard_state(state, int(shard_mib * 2**20) - HEADER_ROOM)):
        path = out / f"{stem}-{i:02d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt", "float16_of": "float32"})
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- export


def start_model_sha256(name: str) -> str | None:
    """sha256 of the weights a run started from when it is a named model (``minilm``), else None: a lent
    machine may hold a stand-in of the shipped MiniLM (e.g. float32 rebuilt from float16), which the run's
    config (``model="minilm"``) does not show."""
    if name != "minilm":
        return None
    from reprlab.hub import resolve_model_path

    return sha256(resolve_model_path(name) / WEIGHTS)


def run_folders(work: Path) -> list[Path]:
    """The run folders of a work dir: ``plain`` first, then every folder holding a trained model."""
    runs = sorted(p.parent.parent for p in work.glob(f"*/model/{WEIGHTS}"))
    if work / "plain" not in runs:
        sys.exit(f"{work}: no trained plain reader (plain/model/{WEIGHTS})")
    return [work / "plain"] + [r for r in runs if r.name != "plain"]


def export_runs(work: Path, out: Path, shard_mib: float = 15.0) -> list[Path]:
    """Write the shards and ``runs.tar.gz`` of ``work``'s runs into ``out`` (see the module docstring)."""
    from reprlab.logs import machine_summary

    runs = run_folders(work)
    plain = read_state(work / "plain" / "model" / WEIGHTS)
    for run in runs[1:]:
        other = read_state(run / "model" / WEIGHTS)
        same = other.keys() == plain.keys() and all(torch.equal(other[k], plain[k]) for k in plain)
        if not same:  # a jointly trained variant: its reader is not the plain one, and would need its own shards
            sys.exit(f"{run}: its reader weights differ from the plain reader's; only frozen-* variants travel")
    out.mkdir(parents=True, exist_ok=True)
    shards = write_shards(plain, out, "plain-fp16", shard_mib)
    root = common.data_root()  # as the runs' data paths were made (bench/blockskim.py: common.data_path)
    data = {}
    for run in runs:
        for path in json.loads((run / "train_config.json").read_text())["extra"]["config"]["data"]:
            data[path] = sha256(Path(path))
    manifest = {
        # the work dir as training wrote it into the runs' configs (a frozen run's start model is under it)
        "work_dir": str(Path(json.loads((work / "plain" / "train_config.json").read_text())["output_dir"]).parent),
        "data_root": str(root), "start_model_sha256": start_model_sha256("minilm"), "data_sha256": data,
        "runs": [r.name for r in runs], "tensors": {k: str(v.dtype).removeprefix("torch.") for k, v in plain.items()},
        "shapes": {k: list(v.shape) for k, v in plain.items()},
        "shards": {p.name: sha256(p) for p in shards}, "weights": "float16 copy of the float32 plain reader",
        "machine": machine_summary(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__,
    }
    bundle = out / BUNDLE
    with tarfile.open(bundle, "w:gz") as tar:
        raw = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        for run in runs:
            for f in sorted(run.rglob("*")):
                rel = f.relative_to(work)
                if f.is_file() and f.name != WEIGHTS and not set(SKIP) & set(rel.parts):
                    tar.add(f, arcname=str(rel))
    files = shards + [bundle]
    for f in files:
        print(f"{f}: {f.stat().st_size / 2**20:.2f} MiB", flush=True)
    return files


# ----------------------------------------------------------------------------- import


def _local_data(path: str, manifest: dict, root: Path) -> str:
    if not Path(path).is_relative_to(manifest["data_root"]):
        sys.exit(f"{path}: not under the exporting machine's data root {manifest['data_root']}")
    local = root / Path(path).relative_to(manifest["data_root"])
    if not local.is_file() or sha256(local) != manifest["data_sha256"][path]:
        sys.exit(f"{local}: missing, or not the file the readers were trained on ({path}: sha256 differs)")
    return str(local)


def _rewrite_config(record: dict, run: Path, manifest: dict, work: Path, root: Path) -> dict:
    """``train_config.json`` of ``run`` with this machine's run folder, data files and start model; the
    values replaced, {field: (there, here)}."""
    config = record["extra"]["config"]
    changed = {}
    here = {"output_dir": str(run), "data": [_local_data(p, manifest, root) for p in config["data"]]}
    old_work = manifest["work_dir"]
    if config["model"].startswith(old_work.rstrip("/") + "/"):  # a frozen variant starts from the plain reader
        here["model"] = str(work) + config["model"][len(old_work.rstrip("/")):]
    for key, value in here.items():
        if config[key] != value:
            changed[key] = (config[key], value)
            config[key] = value
    record["output_dir"] = str(run)
    if "data" in record["extra"]:
        record["extra"]["data"] = list(config["data"])
    return changed


def import_runs(source: Path, work: Path) -> list[Path]:
    """Rebuild ``work``'s run folders from an export in ``source``; refuses to overwrite a run folder."""
    from reprlab.io import atomic_dir, atomic_write_json

    with tarfile.open(source / BUNDLE, "r:gz") as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        members = [m for m in tar.getmembers() if m.name != MANIFEST]
        for m in members:
            if not m.isfile() or m.name.startswith("/") or ".." in Path(m.name).parts:
                sys.exit(f"{source / BUNDLE}: unexpected member {m.name}")
        files = {m.name: tar.extractfile(m).read() for m in members}
    shards = []
    for name, digest in manifest["shards"].items():
        if sha256(source / name) != digest:
            sys.exit(f"{source / name}: sha256 differs from the manifest's (a damaged copy?)")
        shards.append(read_state(source / name))
    state = unshard_state(shards, manifest["tensors"])
    for k, shape in manifest["shapes"].items():
        if list(state[k].shape) != shape:
            sys.exit(f"{k}: shape {list(state[k].shape)} after import, {shape} in the manifest")
    root = common.data_root()
    folders = []
    for name in manifest["runs"]:
        run = work / name
        if run.exists():
            sys.exit(f"{run} exists: import into a fresh --work-dir (or move it away)")
        with atomic_dir(run) as tmp:
            for rel, raw in files.items():
                if Path(rel).parts[0] == name:
                    dest = tmp.joinpath(*Path(rel).parts[1:])
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(raw)
            save_file(state, str(tmp / "model" / WEIGHTS), metadata={"format": "pt"})
            record = json.loads((tmp / "train_config.json").read_text())
            changed = _rewrite_config(record, run, manifest, work, root)
            atomic_write_json(tmp / "train_config.json", record)
            atomic_write_json(tmp / IMPORTED, {
                "trained_on": {"device": record.get("device"), "gpu": manifest["gpu"], "machine": manifest["machine"],
                               "torch": manifest["torch"], "exported": manifest["date"]},
                "weights": "float32 cast back from a float16 copy of the trained plain reader (the same rounded "
                           "weights in every imported run)",
                "paths_replaced": changed, "data_sha256": manifest["data_sha256"], "shards": manifest["shards"],
                "start_model": {"minilm_sha256_there": manifest["start_model_sha256"],
                                "minilm_sha256_here": start_model_sha256("minilm"),
                                "same": manifest["start_model_sha256"] == start_model_sha256("minilm")},
                "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
        folders.append(run)
        print(f"imported {run}", flush=True)
    return folders
