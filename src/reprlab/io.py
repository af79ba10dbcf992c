"""Atomic file and folder writes: a reader never sees a half-written file.

Everything reprlab writes (indexes, checkpoints, runs, training files) goes through these helpers:
the content is written to a temporary sibling and renamed into place, which is atomic on POSIX.
Temporary names carry the writer's process id (``.NAME.PID.XXXX.tmp``), so that
:func:`remove_stale` can delete what a killed process left behind without touching the files of a
live one. Files are created 0644 and folders 0755, as the umask allows (not the 0600/0700 of
``tempfile``), so a run's outputs are readable by the other users of a machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

_STALE = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$|^\..+\.old-(\d+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new folder is complete (the old one is renamed
    away first and deleted afterwards), so a crash leaves either the old or the new folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in ``folder``; returns them.

    Only entries named by :func:`atomic_open` / :func:`atomic_dir` whose process no longer runs are
    removed, so a concurrent writer's work in progress survives.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _STALE.match(entry.name)
        if m and not _alive(int(m.group(1) or m.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_output(path: str | os.PathLike, kind: str = "folder") -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("folder" or "file"): it is not
    the other kind, and its nearest existing parent is a writable folder. Raises a ReprlabError naming it."""
    from reprlab.errors import ReprlabError

    path = Path(path)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise ReprlabError(f"output {path} is a file; give a folder (new or existing)")
        if kind == "file" and path.is_dir():
            raise ReprlabError(f"output {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ReprlabError(f"output {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReprlabError(f"output {path} cannot be created: {parent} is not writable")
    if path.parent.is_dir():  # what a killed writer of this output left next to it
        remove_stale(path.parent)
    return path


def read_utf8(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, or a DataFormatError naming the file and the line of the first bad byte."""
    from reprlab.errors import DataFormatError

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8",
                              str(path), line) from None
