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


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags of native bfloat16 matrix products


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def native_bf16_cpu() -> list[str]:
    """The flags by which this CPU computes bfloat16 matrix products natively (AVX512-BF16, AMX); [] when it
    would emulate them (slower than float32)."""
    flags = cpu_flags()
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_precision(precision: str, device_type: str) -> str:
    """``"auto"`` -> ``"bf16"`` where bfloat16 is native (a GPU that supports it, a CPU with AVX512-BF16 or
    AMX), else ``"fp32"``; the choice is logged. Other values are returned as they are."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        chosen, why = ("bf16", "the GPU supports it") if torch.cuda.is_bf16_supported() else ("fp32", "no GPU bf16")
    else:
        native = native_bf16_cpu()
        chosen, why = ("bf16", "native on this CPU (" + ", ".join(native) + ")") if native else \
            ("fp32", "bf16 would be emulated on this CPU (no AVX512-BF16 or AMX)")
    logger.info(f"precision auto -> {chosen}: {why}")
    return chosen


def machine_summary() -> str:
    """One line naming the hardware and software a measurement ran on, for benchmark records:
    CPU model, core count and whether bf16 is native on it, the GPU (or "no GPU"), and the torch
    version with its thread count."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    native = native_bf16_cpu()
    bf16 = f"bf16 native ({', '.join(native)})" if native else "bf16 emulated"
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {bf16}, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")
