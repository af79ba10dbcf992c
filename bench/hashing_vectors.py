"""The vectors file of ``bench/hashing.py``: train and encode on one machine (``--save-vectors``), build
the codes, hash tables and timed searches on another (``--vectors``).

One ``.npz`` (no pickles: ids are unicode arrays, the record a JSON string) holds ``doc_ids`` (N,),
``qids`` (Q,), ``record`` (the making run's command, machine, date, settings, training and encoding
seconds, the model names in order and the dtype) and, for the i-th model, ``docs_i`` (N, dim) and
``queries_i`` (Q, dim) in float32 or float16. The file's bytes are written in consecutive parts of at
most ``part_bytes`` each, named ``hashing-vectors.npz.<k>-of-<n>``, so that each part fits a transfer
limit; :func:`load` joins all n parts in order (a missing part is named; a damaged one fails the zip's
CRC-32 checks) and returns float32 vectors.

float32 is the default: rounding MiniLM's SciFact vectors to float16 (largest change 1.1e-4) leaves the
float index's nDCG@10 as it is (0.64508) but flips 206 of 2.65M document code bits at 512 bits (201
of 5,183 documents, 12 of the 300 test queries' bits), which moves exact-Hamming nDCG@10 by -0.0007,
+0.0005 and -0.0035 at 128, 256 and 512 bits (ties in Hamming distance reorder): small, but of the
size of the differences the table is read for. float16 halves the file (14 MiB for three models).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

NAME = "hashing-vectors.npz"
PART = re.compile(re.escape(NAME) + r"\.(\d+)-of-(\d+)$")
DTYPES = ("float32", "float16")


def save(folder: str | Path, models: Mapping[str, Mapping], doc_ids: Sequence[str], qids: Sequence[str],
         record: Mapping, dtype: str = "float32", part_bytes: int = 15 * 2**20) -> list[Path]:
    """Write every model's ``{"docs": (N, dim), "queries": (Q, dim)}`` with the shared ids and ``record``
    into ``folder`` (parts of an earlier save there are removed first); returns the parts' paths."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, got {part_bytes}")
    arrays = {"doc_ids": np.array(list(doc_ids), dtype=str), "qids": np.array(list(qids), dtype=str),
              "record": np.array(json.dumps({**record, "models": list(models), "dtype": dtype}))}
    for i, (name, vec) in enumerate(models.items()):
        docs, queries = np.asarray(vec["docs"]), np.asarray(vec["queries"])
        if docs.shape[0] != len(doc_ids) or queries.shape[0] != len(qids) or docs.shape[1:] != queries.shape[1:]:
            raise ValueError(f"{name}: docs {docs.shape} and queries {queries.shape} do not match "
                             f"{len(doc_ids)} document ids and {len(qids)} query ids")
        arrays[f"docs_{i}"], arrays[f"queries_{i}"] = docs.astype(dtype), queries.astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if PART.match(old.name):
            old.unlink()
    n = max(1, -(-len(data) // part_bytes))
    paths = []
    for k in range(n):
        path = folder / f"{NAME}.{k + 1}-of-{n}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data[k * part_bytes: (k + 1) * part_bytes])
        tmp.replace(path)
        paths.append(path)
    return paths


def load(folder: str | Path) -> tuple[dict[str, dict], dict]:
    """``({model name: {"doc_ids", "docs", "qids", "queries"}}, record)`` from the parts in ``folder``;
    vectors as float32. Raises FileNotFoundError (no parts, or one missing) or ValueError (damaged file)."""
    folder = Path(folder)
    parts = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        m = PART.match(path.name)
        if m:
            parts.setdefault(int(m.group(2)), {})[int(m.group(1))] = path
    if not parts:
        raise FileNotFoundError(f"no {NAME}.<k>-of-<n> parts in {folder} (written by bench/hashing.py --save-vectors)")
    if len(parts) > 1:
        raise ValueError(f"{folder} holds parts of different saves (of {sorted(parts)} parts): keep one")
    (n, found), = parts.items()
    missing = [k for k in range(1, n + 1) if k not in found]
    if missing:
        raise FileNotFoundError(f"{folder}: part(s) {missing} of {n} of {NAME} are missing")
    data = b"".join(found[k].read_bytes() for k in range(1, n + 1))
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except Exception as exc:  # a truncated or corrupted part: BadZipFile, CRC error, ...
        raise ValueError(f"{folder}: {NAME} ({n} part(s)) cannot be read: {exc}") from exc
    record = json.loads(str(arrays["record"]))
    doc_ids, qids = [str(x) for x in arrays["doc_ids"]], [str(x) for x in arrays["qids"]]
    models = {name: {"doc_ids": doc_ids, "docs": arrays[f"docs_{i}"].astype(np.float32), "qids": qids,
                     "queries": arrays[f"queries_{i}"].astype(np.float32)}
              for i, name in enumerate(record["models"])}
    return models, record
