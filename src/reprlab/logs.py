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


def machine_summary() -> str:
    """One line naming the hardware and software a measurement ran on, for benchmark records:
    CPU model and core count, the GPU (or "no GPU"), and the torch version with its thread count."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
