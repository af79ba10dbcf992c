"""Distributed encoding: a corpus encoded into columnar vector shards by a Ray Data actor pool, resumably.

A corpus of N passages (in its file order) is cut into shards of ``shard_size`` consecutive passages.
Each shard becomes one Parquet file ``shard-00000.parquet`` with two columns, ``id`` (string) and
``vector`` (a fixed-size list of float32 or float16 of the model's dimension), written atomically
(a temporary file renamed into place). ``manifest.json`` describes the whole job: the model (its name
and the SHA-256 of its weights), the encoding settings, the vector dtype, the SHA-256 of the ids of the
whole corpus and of each shard, and which shards are written. Each shard's Parquet metadata repeats
its shard number, the ids digest, its row count and the SHA-256 of the model that encoded it (computed
by the worker, from the weights it actually loaded), so a file from another model or another corpus is
recognised and refused rather than mixed in.

Two engines run the same shard writer (:class:`ShardEncoder`):

* ``"local"``: in this process, shard after shard (the reference, and the path with no extra);
* ``"ray"``: the passages of the missing shards become a Ray dataset (one row per shard); ``map_batches``
  runs :class:`ShardEncoder` in an actor pool of ``num_workers`` actors that each load the model once
  (``gpus_per_worker`` GPUs and ``cpus_per_worker`` torch threads each) and write the shard files
  themselves, so the files must be on storage every worker sees (a shared or network filesystem on a
  cluster). The driver marks each shard written in the manifest as its result streams back.

A killed job is resumed by running it again with the same output folder: shards whose file is present
and valid are kept, the others are encoded. :func:`read_vectors` / :func:`iter_shards` read the
vectors back after checking every shard against the manifest, and :func:`index_from_shards` adds them
to any :class:`~reprlab.retrieval.index.Index` shard by shard.

This is the "embed with Ray Data, write Parquet, index afterwards" pattern of Ray's batch inference
guide (https://docs.ray.io/en/latest/data/batch_inference.html); the manifest and resumption are ours.

>>> encode_shards(corpus, "runs/vectors", model="minilm", engine="ray", num_workers=2)  # doctest: +SKIP
>>> ids, vectors = read_vectors("runs/vectors")                                            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from reprlab.errors import ConfigError, DataFormatError, ReprlabError, require
from reprlab.io import atomic_open, atomic_write_json, remove_stale

logger = logging.getLogger("reprlab")

FORMAT = "reprlab-vectors"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
META_KEY = b"reprlab"


# --------------------------------------------------------------------------------------------
# digests and the plan


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of a sequence of string ids (each UTF-8 encoded and NUL-terminated), as hex."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def model_digest(model) -> str:
    """SHA-256 of a :class:`~reprlab.encoder.SentenceEncoder`'s weights and output settings, as hex.

    Every tensor of the state dict, by name, as float32 bytes, then pooling, normalisation and max length:
    two models give the same digest only if they produce the same vectors.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(t.contiguous().numpy().tobytes())
    pooling = [type(model.pooling).__name__, str(getattr(model.pooling, "mode", ""))]
    h.update(json.dumps([pooling, bool(model.normalize), int(model.max_length)]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of the corpus, written to ``file``."""

    number: int
    start: int
    stop: int
    ids_sha256: str

    @property
    def file(self) -> str:
        return f"shard-{self.number:05d}.parquet"

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(ids: Sequence[str], shard_size: int) -> list[Shard]:
    """Consecutive shards of ``shard_size`` ids (the last one shorter), in corpus order."""
    if isinstance(shard_size, bool) or int(shard_size) != shard_size or shard_size < 1:
        raise ConfigError(f"must be a positive integer, got {shard_size!r}", field="shard_size")
    shard_size = int(shard_size)
    return [Shard(n, a, min(a + shard_size, len(ids)), ids_digest(ids[a:a + shard_size]))
            for n, a in enumerate(range(0, len(ids), shard_size))]


@dataclass(frozen=True)
class Encoding:
    """What determines the vectors, besides the model: checked on resume and stored in the manifest."""

    model: str  # name or folder, as given (what a worker loads)
    precision: str = "fp32"
    batch_size: int = 64
    doc_prefix: str = ""
    dtype: str = "float32"
    max_length: int | None = None  # passage tokens; None = the model's own (256 for MiniLM)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown vector dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}", field="dtype")
        if self.max_length is not None and (isinstance(self.max_length, bool) or int(self.max_length) != self.max_length
                                            or self.max_length < 2):
            raise ConfigError(f"must be an integer >= 2 ([CLS] and [SEP]), got {self.max_length!r}", field="max_length")

    def load(self):
        """The model as every writer loads it (the digest covers its max length, so it is part of the job)."""
        from reprlab.encoder import SentenceEncoder

        return SentenceEncoder.from_pretrained(self.model, max_length=self.max_length)


# --------------------------------------------------------------------------------------------
# the manifest


def new_manifest(ids: Sequence[str], shards: list[Shard], encoding: Encoding, model_sha256: str, dim: int,
                 max_length: int | None = None) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "model": encoding.model, "model_sha256": model_sha256, "dim": int(dim), "dtype": encoding.dtype,
        "max_length": max_length,
        "precision": encoding.precision, "doc_prefix": encoding.doc_prefix,
        "count": len(ids), "shard_size": shards[0].rows if shards else 0, "ids_sha256": ids_digest(ids),
        "shards": [{"file": s.file, "start": s.start, "rows": s.rows, "ids_sha256": s.ids_sha256, "written": False}
                   for s in shards],
    }


def read_manifest(folder: str | Path) -> dict:
    """``manifest.json`` of a vector folder, checked for format and shape, or a DataFormatError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataFormatError(f"not a vector folder ({MANIFEST} is missing); write one with encode_shards "
                              "(`reprlab index --engine ray`)", path=str(folder))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"invalid JSON: {exc}", path=str(path)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataFormatError(f"not a {FORMAT} manifest", path=str(path))
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise DataFormatError(f"version {manifest['version']} is newer than this reprlab reads; upgrade reprlab",
                              path=str(path))
    shards = manifest.get("shards")
    if not isinstance(shards, list) or sum(s.get("rows", 0) for s in shards) != manifest.get("count"):
        raise DataFormatError("the shards' rows do not add up to the manifest's count", path=str(path))
    return manifest


def check_resumable(manifest: dict, expected: dict, folder: Path) -> None:
    """A folder may be resumed only by the same job: same model weights, settings and corpus."""
    for key, what in (("max_length", "max length (passage tokens)"), ("model_sha256", "model weights"), ("dim", "dimension"), ("dtype", "vector dtype"),
                      ("precision", "precision"), ("doc_prefix", "document prefix"), ("ids_sha256", "corpus ids"),
                      ("shard_size", "shard size"), ("count", "number of passages")):
        if key == "max_length" and key not in manifest:  # written before max_length was recorded
            continue
        if manifest.get(key) != expected.get(key):
            old, new = manifest.get(key), expected.get(key)
            show = (lambda v: str(v)[:12]) if key.endswith("sha256") else repr
            raise ConfigError(f"{folder} holds vectors of another job: its {what} is {show(old)}, this job's is "
                              f"{show(new)}; resume with the same model and settings, or give a new folder")


# --------------------------------------------------------------------------------------------
# one shard file


def _pa():
    return require("pyarrow", extra="ray")


def write_shard(folder: Path, shard: Shard, ids: Sequence[str], vectors: np.ndarray, dtype: str,
                model_sha256: str) -> None:
    """Write one shard as Parquet atomically: ``id`` strings and ``vector`` fixed-size lists, with metadata."""
    pa = _pa()
    import pyarrow.parquet as pq

    if len(ids) != shard.rows or len(vectors) != shard.rows:
        raise ReprlabError(f"{shard.file}: {len(ids)} ids and {len(vectors)} vectors for a shard of {shard.rows}")
    x = np.ascontiguousarray(vectors, dtype=dtype)  # (rows, dim)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    meta = {"shard": shard.number, "rows": shard.rows, "ids_sha256": shard.ids_sha256, "dim": int(x.shape[1]),
            "dtype": dtype, "model_sha256": model_sha256}
    table = pa.table({"id": pa.array(list(ids), pa.string()), "vector": column})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_open(folder / shard.file, "wb") as f:
        pq.write_table(table, f)


def shard_meta(path: Path) -> dict:
    """The reprlab metadata of a shard file, read from its footer (no data), or a DataFormatError."""
    _pa()
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except (OSError, KeyError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataFormatError(f"not a reprlab vector shard ({exc})", path=str(path)) from exc


def verify_shard(folder: Path, manifest: dict, number: int) -> None:
    """Check that shard ``number``'s file matches the manifest (model, rows, ids, dim, dtype); a
    DataFormatError that names the file and what differs otherwise."""
    entry = manifest["shards"][number]
    path = folder / entry["file"]
    if not path.is_file():
        raise DataFormatError(f"the manifest lists {entry['file']} but the file is missing; run the same "
                              "encoding again to write it", path=str(folder))
    meta = shard_meta(path)
    if meta.get("model_sha256") != manifest["model_sha256"]:
        raise DataFormatError(f"encoded by another model (weights {str(meta.get('model_sha256'))[:12]}, the "
                              f"manifest's model {manifest['model']!r} is {manifest['model_sha256'][:12]}); "
                              "delete the file and resume to encode it again", path=str(path))
    wanted = {"shard": number, "rows": entry["rows"], "ids_sha256": entry["ids_sha256"], "dim": manifest["dim"],
              "dtype": manifest["dtype"]}
    wrong = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    if wrong:
        told = ", ".join(f"{k} {got!r} (manifest: {want!r})" for k, (got, want) in wrong.items())
        raise DataFormatError(f"does not match the manifest: {told}", path=str(path))


def read_shard(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, vectors (rows, dim) float32) of one shard file."""
    _pa()
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    vectors = np.asarray(column.values.to_numpy(zero_copy_only=False)).reshape(-1, dim)  # (rows, dim)
    return ids, vectors.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# the shard writer (a Ray actor, or called in process)


class ShardEncoder:
    """Loads the model once, then encodes and writes whole shards: ``__call__`` takes a batch of shards
    ``{"shard": [n], "start": [a], "ids": [[...]], "texts": [[...]], "ids_sha256": [...]}`` and returns
    ``{"shard": [n], "rows": [r], "model_sha256": [...]}`` once the files are in place.

    This is the class ``map_batches`` instantiates once per actor (so the model loads once per worker).
    """

    def __init__(self, folder: str, encoding: Encoding, threads: int = 0, device: str | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.folder = Path(folder)
        self.encoding = encoding
        self.model = encoding.load()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(device)
        self.model_sha256 = model_digest(self.model)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = [self.encoding.doc_prefix + t for t in texts]
        return self.model.encode(texts, self.encoding.batch_size, show_progress=False,
                                 precision=self.encoding.precision)

    def __call__(self, batch: Mapping) -> dict:
        numbers, rows = [], []
        for n, start, ids, texts, digest in zip(batch["shard"], batch["start"], batch["ids"], batch["texts"],
                                                batch["ids_sha256"]):
            ids, texts = list(ids), list(texts)
            shard = Shard(int(n), int(start), int(start) + len(ids), str(digest))
            write_shard(self.folder, shard, ids, self.encode(texts), self.encoding.dtype, self.model_sha256)
            numbers.append(int(n))
            rows.append(len(ids))
        return {"shard": np.array(numbers), "rows": np.array(rows),
                "model_sha256": np.array([self.model_sha256] * len(numbers))}


def _shard_rows(shards: list[Shard], ids: Sequence[str], texts: Sequence[str]) -> list[dict]:
    return [{"shard": s.number, "start": s.start, "ids": list(ids[s.start:s.stop]),
             "texts": list(texts[s.start:s.stop]), "ids_sha256": s.ids_sha256} for s in shards]


# --------------------------------------------------------------------------------------------
# the job


@dataclass
class EncodeReport:
    """What :func:`encode_shards` did: the folder, the shards it encoded now and those it found written."""

    folder: Path
    encoded: list[int]
    kept: list[int]
    count: int
    dim: int
    seconds: float

    @property
    def complete(self) -> bool:
        return len(self.encoded) + len(self.kept) == len(read_manifest(self.folder)["shards"])


def encode_shards(corpus: Mapping[str, Mapping[str, str]], folder: str | Path, model: str = "minilm",
                  engine: str = "local", shard_size: int = 10_000, dtype: str = "float32", batch_size: int = 64,
                  precision: str = "fp32", doc_prefix: str = "", num_workers: int = 2, gpus_per_worker: float = 0,
                  cpus_per_worker: int = 1, address: str | None = None, stop_after: int | None = None,
                  show_progress: bool | None = None, max_length: int | None = None) -> EncodeReport:
    """Encode ``corpus`` (``{id: {"title", "text"}}``, in its order) into vector shards under ``folder``.

    Args:
        model: the model name or folder every worker loads (``minilm``, or a path all workers can read).
        engine: ``"local"`` (this process) or ``"ray"`` (a Ray Data actor pool, see the module docstring).
        shard_size: passages per shard: the unit of work, of resumption and of a file.
        dtype: ``"float32"`` or ``"float16"`` vectors in the files (read back as float32).
        batch_size, precision, doc_prefix: as :class:`~reprlab.retrieval.dense.DenseRetriever`'s.
        num_workers, gpus_per_worker, cpus_per_worker: the actor pool (ray): actors, GPUs per actor, and
            CPUs per actor (also its torch threads).
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local Ray
            with ``num_workers * cpus_per_worker`` CPUs, stopped at the end.
        stop_after: stop once this many shards were encoded in this call, as if killed (tests).
        max_length: passage tokens kept (None: the model's own); part of the job, like the model.

    Resumes a folder written by the same job (same model weights, settings and corpus); a folder of
    another job is a ConfigError, a shard file that does not match the manifest a DataFormatError.
    """
    import time

    from reprlab.text.beir import doc_text

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}", field="engine")
    for name, value in (("num_workers", num_workers), ("cpus_per_worker", cpus_per_worker)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigError(f"must be a positive integer, got {value!r}", field=name)
    if not (gpus_per_worker >= 0 and np.isfinite(gpus_per_worker)):
        raise ConfigError(f"must be >= 0, got {gpus_per_worker!r}", field="gpus_per_worker")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"{folder} is a file; give a folder for the vector shards", field="vectors")
    if address and engine == "ray":
        _check_reachable(address)
    if not corpus:
        raise ReprlabError("the corpus is empty: nothing to encode")
    encoding = Encoding(str(model), precision, int(batch_size), doc_prefix, dtype, max_length)
    t0 = time.time()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)  # temporary shard files of a killed writer
    ids = list(corpus)
    shards = plan_shards(ids, shard_size)
    reference = encoding.load()  # the driver's copy: digest and dimension
    manifest = new_manifest(ids, shards, encoding, model_digest(reference), reference.dim, int(reference.max_length))
    del reference
    if (folder / MANIFEST).exists():
        old = read_manifest(folder)
        check_resumable(old, manifest, folder)
        manifest = old
    kept = []
    for s in shards:
        if (folder / s.file).exists():
            verify_shard(folder, manifest, s.number)  # a foreign or damaged file is an error, not overwritten
            kept.append(s.number)
        manifest["shards"][s.number]["written"] = s.number in kept
    atomic_write_json(folder / MANIFEST, manifest)
    todo = [s for s in shards if s.number not in kept]
    if stop_after is not None:
        todo = todo[:stop_after]
    texts = [doc_text(corpus[i]) for i in ids] if todo else []
    if todo:
        logger.info(f"encoding {len(todo)} of {len(shards)} shards ({sum(s.rows for s in todo)} passages) with "
                    f"{engine}" + (f"; {len(kept)} already written" if kept else ""))
    run = _encode_ray if engine == "ray" else _encode_local
    encoded = []
    for number in run(folder, todo, ids, texts, encoding, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                      cpus_per_worker=cpus_per_worker, address=address, show_progress=show_progress):
        verify_shard(folder, manifest, number)
        manifest["shards"][number]["written"] = True
        atomic_write_json(folder / MANIFEST, manifest)
        encoded.append(number)
    return EncodeReport(folder, encoded, kept, len(ids), manifest["dim"], time.time() - t0)


def _encode_local(folder: Path, todo: list[Shard], ids, texts, encoding: Encoding, show_progress=None,
                  **_) -> Iterator[int]:
    from reprlab.logs import progress

    if not todo:
        return
    writer = ShardEncoder(str(folder), encoding)
    with progress(total=len(todo), show=show_progress, desc="shards", unit="shard") as bar:
        for row in _shard_rows(todo, ids, texts):
            batch = {key: [value] for key, value in row.items()}
            yield from writer(batch)["shard"].tolist()
            bar.update(1)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A Ray address ``host:port`` (or ``ray://host:port``) that nothing answers on is an error now, not a
    join that retries for minutes; ``auto`` and other forms are left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"nothing answers at {address} ({exc}); start the Ray head there or give --address auto",
                          field="address") from None


def _encode_ray(folder: Path, todo: list[Shard], ids, texts, encoding: Encoding, num_workers: int = 2,
                gpus_per_worker: float = 0, cpus_per_worker: int = 1, address: str | None = None,
                show_progress=None) -> Iterator[int]:
    ray = require("ray", extra="ray", package="ray[data]")
    require("ray.data", extra="ray", package="ray[data]")
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address is None:
            options["num_cpus"] = num_workers * cpus_per_worker
            if gpus_per_worker:
                options["num_gpus"] = int(np.ceil(num_workers * gpus_per_worker))
        else:
            options["address"] = address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ReprlabError(f"cannot start or join Ray (address {address!r}): {exc}") from exc
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = bool(show_progress)
        rows = _shard_rows(todo, ids, texts)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block per shard
        written = dataset.map_batches(
            ShardEncoder, batch_size=1, concurrency=min(num_workers, len(rows)), num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs={"folder": str(folder.resolve()), "encoding": encoding,
                                   "threads": cpus_per_worker, "device": "cuda" if gpus_per_worker else "cpu"})
        for row in written.iter_rows():  # streams: a shard is reported as soon as its file is in place
            yield int(row["shard"])
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# reading the vectors back


def check_folder(folder: str | Path) -> dict:
    """The manifest of a complete vector folder, every shard verified against it; a DataFormatError
    naming the first shard that is missing, unwritten or foreign otherwise."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for number, entry in enumerate(manifest["shards"]):
        if not entry.get("written"):
            raise DataFormatError(f"{entry['file']} is not written yet: the encoding did not finish; run it again "
                                  "with the same folder to resume", path=str(folder))
        verify_shard(folder, manifest, number)
    return manifest


def iter_shards(folder: str | Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, vectors (rows, dim) float32) of each shard in corpus order, after :func:`check_folder`.

    Each shard's ids are checked against the manifest's digest as they are read."""
    folder = Path(folder)
    manifest = check_folder(folder)
    for entry in manifest["shards"]:
        ids, vectors = read_shard(folder / entry["file"])
        if ids_digest(ids) != entry["ids_sha256"] or vectors.shape != (entry["rows"], manifest["dim"]):
            raise DataFormatError("its ids or vectors do not match the manifest", path=str(folder / entry["file"]))
        yield ids, vectors


def read_vectors(folder: str | Path) -> tuple[list[str], np.ndarray]:
    """All (ids, vectors (N, dim) float32) of a vector folder, in corpus order."""
    all_ids, parts = [], []
    for ids, vectors in iter_shards(folder):
        all_ids.extend(ids)
        parts.append(vectors)
    return all_ids, np.concatenate(parts)


def index_from_shards(folder: str | Path, index, train_rows: int = 262_144, payloads=None) -> None:
    """Add every shard of ``folder`` to ``index`` (any :class:`~reprlab.retrieval.index.Index`), in order.

    An index that must be trained first (IVF, PQ) is trained on the first ``train_rows`` vectors, so that
    the memory needed is that of one shard plus the training sample, not of the whole corpus.
    ``payloads(ids) -> list of dicts``, when given, is passed to ``index.add`` (vector databases)."""
    if hasattr(index, "train") and not getattr(getattr(index, "index", None), "is_trained", True):
        sample, have = [], 0
        for _, vectors in iter_shards(folder):
            sample.append(vectors[: train_rows - have])
            have += len(sample[-1])
            if have >= train_rows:
                break
        index.train(np.concatenate(sample))
    for ids, vectors in iter_shards(folder):
        if payloads is None:
            index.add(ids, vectors)
        else:
            index.add(ids, vectors, payloads=payloads(ids))


def index_corpus(retriever, corpus: Mapping[str, Mapping[str, str]], index, vectors: str | Path | None = None,
                 engine: str = "local", payloads=None, show_progress: bool | None = None, **options):
    """Encode ``corpus`` with ``retriever``'s document model into ``index`` and attach both to ``retriever``.

    With ``engine="local"`` and no ``vectors`` folder the corpus is encoded in this process, as
    ``DenseRetriever.index_corpus`` does. Otherwise the vectors go through shards in ``vectors``
    (:func:`encode_shards` with ``engine`` and ``options``: resumable), then into the index shard by shard.
    ``payloads(ids) -> list of dicts`` is given to ``index.add`` when set (vector databases).
    Returns the :class:`EncodeReport` of the shards, or None for the in-process path.
    """
    report = None
    if vectors is None and engine == "local":
        ids, x = retriever.encode_corpus(corpus, show_progress)
        if payloads is None:
            index.add(ids, x)
        else:
            index.add(ids, x, payloads=payloads(ids))
    else:
        if vectors is None:
            raise ConfigError("the ray engine writes vector shards: give the folder for them", field="vectors")
        if retriever.model_name is None:
            raise ConfigError("the retriever needs model_name (what each worker loads)", field="model")
        model = Path(retriever.model_name)
        model = model / "passage" if (model / "passage").is_dir() else retriever.model_name  # two-tower folders
        report = encode_shards(corpus, vectors, model=str(model), engine=engine, batch_size=retriever.batch_size,
                               precision=retriever.precision, doc_prefix=retriever.doc_prefix,
                               show_progress=show_progress, **options)
        index_from_shards(vectors, index, payloads=payloads)
    retriever.index = index
    retriever.docs = {i: {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")} for i in corpus}
    return report
