"""The shared training loop: learning, exact resume, DDP equivalence, bad settings."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.train import TrainConfig, train


class ToyModel(nn.Module):
    """Tiny encoder + linear head regressing a fixed target from token sequences."""

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.encoder = Encoder(EncoderConfig.tiny(hidden_dropout=dropout, attention_dropout=dropout))
        self.head = nn.Linear(32, 1)

    def forward(self, ids, mask):
        h = self.encoder(ids, mask).last_hidden_state
        return self.head((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).squeeze(-1)


def toy_dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, 12), generator=g)
    lengths = torch.randint(4, 13, (n,), generator=g)
    target = (ids[:, 0] % 2).float()  # learnable from the first token
    return [(ids[i, : lengths[i]], target[i]) for i in range(n)]


def collate(items, rng, noise=0.01):
    T = max(len(x) for x, _ in items)
    ids = torch.zeros(len(items), T, dtype=torch.long)
    mask = torch.zeros(len(items), T, dtype=torch.long)
    for i, (x, _) in enumerate(items):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    # a random choice made through rng, so that resume must reproduce it
    jitter = torch.from_numpy(rng.normal(size=len(items)).astype(np.float32)) * noise
    return {"ids": ids, "mask": mask, "y": torch.stack([y for _, y in items]) + jitter}


def exact_collate(items, rng):
    """No random choices: a rank's collate then sees exactly what one process would."""
    return collate(items, rng, noise=0.0)


def loss_fn(model, batch):
    pred = model(batch["ids"], batch["mask"])
    return nn.functional.mse_loss(pred, batch["y"]), {"pred_mean": pred.mean().item()}


def make(dropout=0.1, seed=0):
    torch.manual_seed(seed)
    return ToyModel(dropout)


def test_loss_goes_down_and_metrics_are_logged(tmp_path):
    model = make()
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5)
    train(model, toy_dataset(), collate, loss_fn, cfg)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(5, 61, 5))
    first, last = np.mean([r["loss"] for r in lines[:2]]), np.mean([r["loss"] for r in lines[-2:]])
    assert last < 0.5 * first
    assert {"lr", "grad_norm", "pred_mean", "epoch"} <= set(lines[0])
    assert (tmp_path / "checkpoints" / "checkpoint-00000060" / "model.safetensors").is_file()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, grad_accum):
    data = toy_dataset(40)  # 40 examples, batch 8: 5 steps per epoch, so the run crosses epochs
    common = dict(max_steps=13, batch_size=8, grad_accum=grad_accum, lr=1e-3, checkpoint_every=4, log_every=1)
    full = make()
    train(full, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "full"), **common))

    first = make()
    train(first, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "cut"), **common), stop_after=10)
    # the process "dies" after step 10; a new process builds a fresh model and resumes from step 8
    resumed = make(seed=123)
    train(resumed, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "cut"), resume=True, **common))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 14)), "metrics after the checkpoint are logged once, not twice"


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=8)
    train(make(), toy_dataset(16), collate, loss_fn, cfg)
    with pytest.raises(ConfigError, match="--resume"):
        train(make(), toy_dataset(16), collate, loss_fn, cfg)


def test_bad_settings():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(output_dir="x", schedule="nope")
    with pytest.raises(ConfigError, match="must divide batch_size"):
        TrainConfig(output_dir="x", batch_size=10, grad_accum=3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A collate that also writes which examples (by index) it was given, one JSON line per call."""

    def __init__(self, path):
        self.path = path

    def __call__(self, items, rng):
        with open(self.path, "a") as f:
            f.write(json.dumps([int(i) for i, _ in items]) + "\n")
        return exact_collate([x for _, x in items], rng)


def indexed(data):
    return [(i, x) for i, x in enumerate(data)]


def _ddp_worker(rank, world, port, out_dir, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = make(dropout=0.0)
    cfg = TrainConfig(output_dir=out_dir, max_steps=6, batch_size=8, grad_accum=2, lr=1e-3, device="cpu")
    train(model, indexed(toy_dataset(32)), Recorder(os.path.join(result_dir, f"seen-{rank}.jsonl")), loss_fn, cfg)
    if rank == 0:
        from safetensors.torch import save_file

        save_file(model.state_dict(), os.path.join(result_dir, "ddp.safetensors"))
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    from safetensors.torch import load_file

    single = make(dropout=0.0)
    cfg = TrainConfig(output_dir=str(tmp_path / "one"), max_steps=6, batch_size=8, grad_accum=2, lr=1e-3)
    train(single, indexed(toy_dataset(32)), Recorder(tmp_path / "seen-single.jsonl"), loss_fn, cfg)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), str(tmp_path)), nprocs=2, join=True)
    ddp = load_file(tmp_path / "ddp.safetensors")
    for name, a in single.state_dict().items():
        torch.testing.assert_close(ddp[name], a, atol=1e-5, rtol=1e-4, msg=name)
    # the ranks shard each micro-batch: disjoint halves whose union is the single process's micro-batch
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    single_seen, r0, r1 = read("seen-single.jsonl"), read("seen-0.jsonl"), read("seen-1.jsonl")
    assert len(single_seen) == len(r0) == len(r1) == 12  # 6 steps x 2 micro-batches
    for whole, a, b in zip(single_seen, r0, r1):
        assert len(a) == len(b) == len(whole) // 2 == 2
        assert not set(a) & set(b) and set(a) | set(b) == set(whole)
