"""Logging and progress bars: shown at INFO level and on rank 0 only.

The ``reprlab`` logger is silent in library use until configured; the CLI sets it to INFO. Progress
bars follow the same switch, so a script that wants bars calls ``logging.getLogger("reprlab")
.setLevel("INFO")`` (or passes ``show_progress=True``).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
logger = logging.getLogger("reprlab")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def progress_enabled(show: bool | None = None) -> bool:
    if not is_main_process():
        return False
    if show is not None:
        return show
    return logger.getEffectiveLevel() <= logging.INFO


def progress(iterable: Iterable[T] | None = None, show: bool | None = None, **kwargs) -> tqdm:
    """tqdm over ``iterable``, enabled at INFO level on rank 0 (or by ``show``)."""
    return tqdm(iterable, disable=not progress_enabled(show), dynamic_ncols=True, **kwargs)


def setup_cli_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level if is_main_process() else logging.WARNING)
    logger.propagate = False
