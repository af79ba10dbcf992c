"""The one training loop every reprlab recipe runs on.

Plain PyTorch in the spirit of nanoGPT's ``train.py``: DDP when started by ``torchrun`` (gloo on
CPU, nccl on GPU), bf16 autocast, gradient accumulation, warmup + linear/cosine decay, gradient
clipping, a checkpoint every N steps (model, optimizer, scheduler, RNG states and data position,
written atomically), ``resume=True`` continuing bit-for-bit from the newest checkpoint, metrics as
JSONL and a progress bar on rank 0.

A recipe supplies a model, a map-style dataset, a ``collate(items, rng)`` that builds a batch (``rng``
is a ``numpy.random.Generator`` seeded from the step, so random choices such as negative sampling are
reproduced on resume), and a ``loss_fn(model, batch)`` that returns a loss or ``(loss, metrics)``::

    state = train(model, dataset, collate, loss_fn, TrainConfig(output_dir="runs/x", max_steps=100))

``TrainConfig.batch_size`` is the global batch of one optimizer step; it is split over
``grad_accum`` micro-steps and then over the ranks, so 2 processes with the same ``batch_size`` see
the same examples per step as 1 process.

Callbacks are objects with any of ``on_train_start(state, model)``, ``on_step_end(state, model,
metrics)``, ``on_checkpoint(state, folder)``, ``on_train_end(state, model)``, and ``state_dict()`` /
``load_state_dict(d)`` for state that must survive a resume (e.g. ANCE's index version).

A ``sampler`` replaces the epoch order when a recipe wants to choose the examples itself (a
curriculum, :mod:`reprlab.train.curriculum`): ``sampler.indices(step, batch_size)`` returns the
dataset indices of optimizer step ``step``'s global batch (split over micro-steps and ranks like an
epoch's slice, so it must give every rank the same answer). The sampler is checkpointed with the
callbacks (first, so that a resume with other callbacks still finds its state) when it has
``state_dict()`` / ``load_state_dict(d)``. Without one the loop is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reprlab.errors import ConfigError
from reprlab.io import atomic_write_json, remove_stale
from reprlab.logs import progress
from reprlab.train.checkpoint import (
    config_changes,
    field_defaults,
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
    trim_metrics,
)

logger = logging.getLogger("reprlab")



def _linear(step, warmup, total):
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _cosine(step, warmup, total):
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def _constant(step, warmup, total):
    return (step + 1) / max(1, warmup) if step < warmup else 1.0


SCHEDULES = {"linear": _linear, "cosine": _cosine, "constant": _constant}


@dataclass
class TrainConfig:
    output_dir: str = field(default="", metadata={"help": "run folder (a recipe fills it in from its own output_dir)",
                                                  "cli": False})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: epochs x steps per epoch)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training data when max_steps is not given"})
    batch_size: int = field(default=32, metadata={"help": "global batch: all ranks and accumulation steps"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    warmup_steps: int | None = field(default=None, metadata={"help": "linear warm-up steps (default: warmup_ratio x "
                                                                      "total steps)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "warm-up share of the steps when warmup_steps is "
                                                               "not given"})
    schedule: str = field(default="linear", metadata={"choices": tuple(SCHEDULES), "help": "learning-rate decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: by time only)"})
    checkpoint_minutes: float = field(default=30.0, metadata={
        "help": "minutes between checkpoints (0: by steps only); a run always checkpoints at its end"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    log_every: int = field(default=10, metadata={"help": "steps between metric records (metrics.jsonl)"})
    seed: int = field(default=0, metadata={"help": "seed of the data order, the sampling and fresh weights"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in the output folder"})
    allow_config_change: tuple[str, ...] = field(default=(), metadata={
        "help": "settings a resumed run may change (e.g. lr max_steps); any other change is refused"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the data each epoch"})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda"), "help": "where to train"})
    find_unused_parameters: bool = field(default=False, metadata={"cli": False})
    metrics_file: str = field(default="metrics.jsonl", metadata={"cli": False})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})  # recorded with the run

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{what}, got {getattr(self, name)!r}", field=name)

        def finite(x) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x)

        need(self.schedule in SCHEDULES, "schedule", f"choose one of: {', '.join(SCHEDULES)}")
        need(self.device in ("auto", "cpu", "cuda"), "device", "choose one of: auto, cpu, cuda")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be at least 1 (or left out)")
        need(finite(self.epochs) and self.epochs > 0, "epochs", "must be a positive number")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.grad_accum >= 1, "grad_accum", "must be at least 1")
        need(self.batch_size % self.grad_accum == 0, "grad_accum", f"must divide batch_size {self.batch_size}")
        need(finite(self.lr) and self.lr > 0, "lr", "must be a positive number")
        need(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(finite(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]")
        need(self.max_grad_norm is None or (finite(self.max_grad_norm) and self.max_grad_norm >= 0),
             "max_grad_norm", "must be >= 0 (0: no clipping)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: by time only)")
        need(finite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0, "checkpoint_minutes",
             "must be >= 0 (0: by steps only)")
        self.allow_config_change = tuple(self.allow_config_change)
        need(self.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0 (0: keep all)")
        need(self.log_every >= 1, "log_every", "must be at least 1")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # examples of this epoch's order already consumed
    total_steps: int = 0
    rank: int = 0
    world_size: int = 1
    output_dir: Path = Path(".")
    last_loss: float = float("nan")
    started: float = field(default_factory=time.time)


# ----------------------------------------------------------------------------- distributed


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group when started by torchrun; returns (rank, world_size, device)."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no GPU is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        rank = dist.get_rank()
    else:
        rank = 0
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- the loop


def default_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _call(callbacks: Sequence[Any], hook: str, *args) -> None:
    for cb in callbacks:
        if hasattr(cb, hook):
            getattr(cb, hook)(*args)


def planned_steps(config: TrainConfig, n: int) -> int:
    """The optimizer steps a run of ``config`` on ``n`` examples takes: ``max_steps``, or ``epochs`` x the
    full batches per epoch (at least one); what a recipe paces a curriculum over."""
    return config.max_steps or max(1, int(config.epochs * (n // config.batch_size)))


def _plan(config: TrainConfig, n: int, world: int) -> tuple[int, int, int]:
    """(examples per rank and micro-step, total optimizer steps, warm-up steps), or a ConfigError."""
    local_batch, rem = divmod(config.batch_size // config.grad_accum, world)
    if rem or local_batch < 1:
        raise ConfigError(f"batch_size {config.batch_size} / grad_accum {config.grad_accum} must split evenly over "
                          f"{world} processes", field="batch_size")
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"the dataset has {n} examples, fewer than one batch of {config.batch_size}",
                          field="batch_size")
    total = planned_steps(config, n)
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total)
    return local_batch, total, warmup


def _start(config: TrainConfig, state: TrainState, model, optimizer, scheduler, callbacks) -> Path:
    """Resume from the newest checkpoint (or refuse to overwrite a run, or to resume a changed one); prepare the
    metrics file; remove what killed writers left behind."""
    output_dir = state.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{output_dir} is a file, not a folder", field="output_dir")
    existing = list_checkpoints(output_dir)
    if existing and not config.resume:
        raise ConfigError(f"{output_dir} already has checkpoints; pass resume=True (--resume) to continue that run "
                          "or choose a new output folder")
    if config.resume and existing:
        folder = existing[-1][1]
        # a field added to the code since the run started, kept at its default, is no change
        defaults = {**field_defaults(TrainConfig), **{f"extra.config.{k}": v for k, v in
                                                      config.extra.get("config_defaults", {}).items()}}
        changed = config_changes(read_state(folder)["config"], dataclasses.asdict(config), config.allow_config_change,
                                 defaults)
        if changed:
            names = [k.removeprefix("extra.config.") for k in changed]  # a recipe's own fields, as typed
            raise ConfigError(f"the run in {output_dir} was started with other settings ({', '.join(names)}); "
                              "resume with the same ones, name the change with allow_config_change "
                              f"(--allow-config-change {' '.join(n.rsplit('.', 1)[-1] for n in names)}), or choose "
                              "a new output folder")
        load_checkpoint(folder, model, optimizer, scheduler, callbacks, state)
        logger.info(f"resumed from {folder} at step {state.step}")
    metrics_path = output_dir / config.metrics_file
    if state.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (output_dir, output_dir / "checkpoints"):
            remove_stale(folder)
        if state.step:
            trim_metrics(metrics_path, state.step)
        else:
            metrics_path.unlink(missing_ok=True)
        atomic_write_json(output_dir / "train_config.json", dataclasses.asdict(config))
    barrier()
    return metrics_path


def _accumulate(ddp, dataset, collate, loss_fn, order, state: TrainState, config: TrainConfig, local_batch: int,
                device) -> tuple[float, dict[str, float]]:
    """Forward and backward over the ``grad_accum`` micro-batches of one step; (mean loss, mean extra metrics)."""
    micro = config.batch_size // config.grad_accum
    world, rank = state.world_size, state.rank
    step_metrics: dict[str, float] = {}
    loss_sum = 0.0
    for k in range(config.grad_accum):
        start = state.position + k * micro + rank * local_batch
        idx = order[start : start + local_batch].tolist()
        rng = np.random.default_rng([config.seed, state.step, k, rank])
        batch = _to_device(collate([dataset[i] for i in idx], rng), device)
        sync = k == config.grad_accum - 1 or world == 1
        ctx = ddp.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                result = loss_fn(ddp, batch)
            loss, extra = result if isinstance(result, tuple) else (result, {})
            (loss / config.grad_accum).backward()
        loss_sum += loss.detach().float().item() / config.grad_accum
        for key, value in extra.items():
            step_metrics[key] = step_metrics.get(key, 0.0) + float(value) / config.grad_accum
    return loss_sum, step_metrics


def _log(metrics_path: Path, state: TrainState, step_metrics: dict[str, float]) -> None:
    record = {"step": state.step, "epoch": state.epoch, "elapsed": round(time.time() - state.started, 3)}
    record.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in step_metrics.items()})
    with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _checkpoint_due(config: TrainConfig, state: TrainState, last: float) -> bool:
    """Every ``checkpoint_every`` steps, and when ``checkpoint_minutes`` have passed (rank 0's clock decides
    for every rank, so that all of them save at the same step)."""
    if config.checkpoint_every and state.step % config.checkpoint_every == 0:
        return True
    if not config.checkpoint_minutes:
        return False
    due = torch.tensor([float(time.time() - last >= 60 * config.checkpoint_minutes)])
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(due, src=0)
    return bool(due.item())


def train(
    model: nn.Module,
    dataset: Sequence,
    collate: Callable[[list, np.random.Generator], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor | tuple[torch.Tensor, dict[str, float]]],
    config: TrainConfig,
    callbacks: Sequence[Any] = (),
    optimizer: torch.optim.Optimizer | None = None,
    stop_after: int | None = None,
    sampler: Any | None = None,
) -> TrainState:
    """Train ``model`` and return the final :class:`TrainState`.

    ``stop_after`` ends the run after that many optimizer steps of this call, as if killed (a
    checkpoint is written only if ``checkpoint_every`` says so): used to test resumption.
    ``sampler`` (see the module docstring) chooses each step's examples instead of the epoch order.
    """
    if not config.output_dir:
        raise ConfigError("the training loop needs an output folder", field="output_dir")
    rank, world, device = init_distributed(config.device)
    n = len(dataset)
    local_batch, total, warmup = _plan(config, n, world)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model.to(device)
    optimizer = optimizer or default_optimizer(model, config)
    schedule = SCHEDULES[config.schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, warmup, total))
    state = TrainState(total_steps=total, rank=rank, world_size=world, output_dir=Path(config.output_dir))
    if sampler is not None:  # its state is saved and restored with the callbacks', first (whatever they are)
        callbacks = (sampler, *callbacks)
    metrics_path = _start(config, state, model, optimizer, scheduler, callbacks)

    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    _call(callbacks, "on_train_start", state, model)
    model.train()
    done_here, last_checkpoint = 0, time.time()
    bar = progress(total=total, initial=state.step, desc="train", unit="step")
    order = _epoch_order(n, config.seed, state.epoch, config.shuffle)
    while state.step < total:
        if sampler is not None:  # the sampler's batch for this step replaces the epoch order
            order = torch.as_tensor(sampler.indices(state.step, config.batch_size), dtype=torch.long)
            state.epoch, state.position = state.step * config.batch_size // n, 0
        elif state.position + config.batch_size > n:  # next epoch; the incomplete tail is dropped
            state.epoch, state.position = state.epoch + 1, 0
            order = _epoch_order(n, config.seed, state.epoch, config.shuffle)
        loss_sum, step_metrics = _accumulate(ddp, dataset, collate, loss_fn, order, state, config, local_batch,
                                             device)
        if config.max_grad_norm:
            step_metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.position += config.batch_size
        state.last_loss = loss_sum
        done_here += 1
        step_metrics.update(loss=loss_sum, lr=scheduler.get_last_lr()[0])
        _call(callbacks, "on_step_end", state, model, step_metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}")
        if rank == 0 and (state.step % config.log_every == 0 or state.step == total):
            _log(metrics_path, state, step_metrics)
        if state.step < total and _checkpoint_due(config, state, last_checkpoint):
            if rank == 0:
                save_checkpoint(state, model, optimizer, scheduler, callbacks, config)
            barrier()
            last_checkpoint = time.time()
        if stop_after is not None and done_here >= stop_after and state.step < total:
            bar.close()
            return state
    bar.close()
    if rank == 0:
        save_checkpoint(state, model, optimizer, scheduler, callbacks, config)
    barrier()
    _call(callbacks, "on_train_end", state, model)
    return state


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(_to_device(v, device) for v in batch)
    if hasattr(batch, "to") and not isinstance(batch, (str, bytes)):
        return batch.to(device)
    return batch
