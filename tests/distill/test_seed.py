"""SEED: FIFO queue, frozen teacher, zero at equality, text and image encoders, exact resume."""

import copy

import pytest
import torch
import torch.nn.functional as F

from reprlab.distill.image import ConvEncoder, augment
from reprlab.distill.seed import SEED, SEEDConfig, seed_loss
from reprlab.errors import ConfigError
from reprlab.train import TrainConfig, train



class Linear(torch.nn.Module):
    def __init__(self, d_in, d_out, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(d_in, d_out)
        self.dim = d_out

    def forward(self, x):
        return self.net(x)


def test_queue_is_fifo_and_keeps_only_real_keys():
    seed = SEED(Linear(4, 3), Linear(4, 3, seed=1), SEEDConfig(queue_size=5))
    assert seed.queue_contents().shape == (0, 3)
    keys = [torch.full((2, 3), float(i)) for i in range(4)]  # batches of 2, pushed in order
    seed.enqueue(keys[0])
    seed.enqueue(keys[1])
    assert seed.queue_contents()[:, 0].tolist() == [0, 0, 1, 1]
    seed.enqueue(keys[2])  # 6 keys into 5 slots: the oldest goes first
    assert seed.queue_contents()[:, 0].tolist() == [0, 1, 1, 2, 2]
    seed.enqueue(keys[3])
    assert seed.queue_contents()[:, 0].tolist() == [1, 2, 2, 3, 3]
    seed.enqueue(torch.arange(7.0)[:, None].repeat(1, 3))  # more keys than slots: the newest 5 survive
    assert seed.queue_contents()[:, 0].tolist() == [2, 3, 4, 5, 6]


def test_forward_enqueues_the_teachers_normalised_vectors():
    seed = SEED(Linear(4, 3), Linear(4, 3, seed=1), SEEDConfig(queue_size=16)).train()
    x = torch.randn(6, 4)
    seed(x)
    torch.testing.assert_close(seed.queue_contents(), F.normalize(seed.teacher(x), dim=-1))
    seed.eval()
    seed(torch.randn(6, 4))
    assert seed.queue_contents().shape[0] == 6, "evaluation does not push keys"


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    teacher = ConvEncoder(channels=(4, 8), dim=8)
    student = ConvEncoder(channels=(2, 4), dim=6)
    seed = SEED(student, teacher, SEEDConfig(queue_size=32))
    seed.train()
    assert not teacher.training and student.training
    before = copy.deepcopy(teacher.state_dict())
    for _ in range(3):
        loss, _ = seed(torch.rand(4, 1, 28, 28))
        loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert seed.head is not None and seed.head.weight.grad is not None  # 6 -> 8 projection
    for name, value in teacher.state_dict().items():  # batch-norm running stats untouched too
        assert torch.equal(value, before[name]), name
    # frozen, not only unused: an optimizer or DDP built from the trainable parameters gets the student and head only
    # (DDP would otherwise wait for teacher gradients that never come)
    trainable = {id(p) for p in seed.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in [*student.parameters(), *seed.head.parameters()]}


def test_seed_loss_zero_at_equality_positive_otherwise():
    torch.manual_seed(0)
    t = F.normalize(torch.randn(4, 8), dim=-1)
    queue = F.normalize(torch.randn(10, 8), dim=-1)
    kl, ce = seed_loss(t, t, queue, 0.1, 0.1)
    assert abs(float(kl)) < 1e-6 and float(ce) > 0  # the soft cross-entropy is the teacher's entropy
    s = F.normalize(t + 0.5 * torch.randn(4, 8), dim=-1)
    kl2, ce2 = seed_loss(s, t, queue, 0.1, 0.1)
    assert float(kl2) > 1e-4
    torch.testing.assert_close(ce2 - kl2, ce - kl)  # they differ by the teacher's entropy only
    # the paper's form written out: -sum softmax(t.[t,Q]/tT) log softmax(s.[t,Q]/tS)
    cand = torch.cat([t[:, None, :], queue[None].expand(4, -1, -1)], 1)  # (B, 1 + K, D)
    p_t = (torch.einsum("bd,bkd->bk", t, cand) / 0.01).softmax(-1)
    log_p_s = (torch.einsum("bd,bkd->bk", s, cand) / 0.2).log_softmax(-1)
    _, ce3 = seed_loss(s, t, queue, 0.2, 0.01)
    torch.testing.assert_close(ce3, -(p_t * log_p_s).sum(-1).mean())


def test_equal_models_have_zero_loss_through_the_module():
    teacher = Linear(4, 3)
    seed = SEED(copy.deepcopy(teacher), teacher, SEEDConfig(queue_size=8, student_temperature=0.1,
                                                            teacher_temperature=0.1))
    seed.enqueue(torch.randn(8, 3))
    loss, _ = seed(torch.randn(5, 4))
    assert abs(float(loss.detach())) < 1e-6


def test_bad_config():
    with pytest.raises(ConfigError):
        SEEDConfig(queue_size=0)
    with pytest.raises(ConfigError, match="head"):
        SEED(Linear(4, 3), Linear(4, 5), SEEDConfig(head="none"))


def collate(items, rng):
    return torch.stack(items)


def test_killed_and_resumed_seed_run_equals_uninterrupted(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4, generator=g) for _ in range(24)]

    def make():
        return SEED(Linear(4, 3, seed=0), Linear(4, 3, seed=1), SEEDConfig(queue_size=10))

    def loss_fn(model, batch):
        loss, metrics = model(batch)
        return loss, {k: float(v) for k, v in metrics.items()}

    common = dict(max_steps=7, batch_size=4, lr=1e-2, checkpoint_every=3, log_every=1, device="cpu")
    full = make()
    train(full, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "full"), **common))
    cut = make()
    train(cut, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "cut"), **common), stop_after=5)
    resumed = make()
    train(resumed, data, collate, loss_fn, TrainConfig(output_dir=str(tmp_path / "cut"), resume=True, **common))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # student, head, and the queue with its pointer


def test_image_encoder_and_augment():
    enc = ConvEncoder(channels=(4, 8, 16), dim=12)
    x = torch.rand(3, 1, 28, 28)
    assert enc(x).shape == (3, 12) and enc.features(x).shape == (3, 16)
    g = torch.Generator().manual_seed(0)
    y = augment(x, g, pad=2)
    assert y.shape == x.shape
    same = augment(x, torch.Generator().manual_seed(0), pad=0)  # no shift: identity or a flip
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(3))


# ----------------------------------------------------------------------------- settings, heads, DDP (mutation testing)


def test_config_bounds_and_messages():
    assert SEEDConfig(queue_size=1).queue_size == 1
    for head in ("auto", "linear", "mlp", "none"):
        assert SEEDConfig(head=head).head == head
    with pytest.raises(ConfigError, match="^queue_size must be at least 1, got 0$"):
        SEEDConfig(queue_size=0)
    for temperatures in ({"student_temperature": 0.0}, {"teacher_temperature": 0.0}):
        with pytest.raises(ConfigError, match="^SEED temperatures must be positive$"):
            SEEDConfig(**temperatures)
    with pytest.raises(ConfigError, match="^unknown SEED head 'deep'"):
        SEEDConfig(head="deep")


def test_heads_and_widths():
    mlp = SEED(Linear(4, 3), Linear(4, 5), SEEDConfig(head="mlp")).head
    assert [type(m) for m in mlp] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].in_features, mlp[2].out_features) == (3, 3, 3, 5)
    linear = SEED(Linear(4, 3), Linear(4, 3), SEEDConfig(head="linear")).head  # even at equal widths
    assert (linear.in_features, linear.out_features) == (3, 3)
    # modules without a ``dim`` attribute: the widths are given, or it is an error naming them
    plain = SEED(torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), student_dim=3, teacher_dim=3)
    assert plain.head is None and plain.queue.shape == (4096, 3)
    assert plain.queue_ptr.dtype == plain.queue_filled.dtype == torch.long
    for dims in ({}, {"student_dim": 3}, {"teacher_dim": 3}):
        with pytest.raises(ConfigError, match="^SEED needs the embedding widths"):
            SEED(torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), **dims)


class Keyword(torch.nn.Module):
    dim = 3

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(4, 3)

    def forward(self, features):
        return self.net(features)


def test_forward_is_seed_loss_of_the_normalised_embeddings_and_takes_keyword_batches():
    cfg = SEEDConfig(queue_size=8, student_temperature=0.3, teacher_temperature=0.05)
    seed = SEED(Keyword(0), Keyword(1), cfg).eval()
    seed.enqueue(F.normalize(torch.randn(8, 3), dim=-1))
    x = torch.randn(5, 4)
    loss, metrics = seed({"features": x})  # a dict batch is passed as keyword arguments
    s, t = F.normalize(seed.student(x), dim=-1), F.normalize(seed.teacher(x), dim=-1)
    kl, ce = seed_loss(s, t, seed.queue_contents(), 0.3, 0.05)
    torch.testing.assert_close(loss, kl)
    assert set(metrics) == {"seed_ce"}
    torch.testing.assert_close(metrics["seed_ce"], ce)


def _seed_rank(rank, world, port, out):
    import os

    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    seed = SEED(Linear(4, 3), Linear(4, 3, seed=1), SEEDConfig(queue_size=16)).train()
    seed(torch.arange(12.0).view(3, 4) + 100 * rank)  # each rank its own batch
    if rank == 0:
        save_file({"queue": seed.queue_contents()}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_losses: skip an interpreter teardown that gloo sometimes aborts


def test_every_rank_enqueues_all_ranks_teacher_keys_in_rank_order(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_seed_rank, args=(2, port, str(tmp_path / "q.safetensors")), nprocs=2, join=True)
    both = torch.cat([torch.arange(12.0).view(3, 4), torch.arange(12.0).view(3, 4) + 100])
    torch.testing.assert_close(load_file(tmp_path / "q.safetensors")["queue"],
                               F.normalize(Linear(4, 3, seed=1)(both), dim=-1))


def test_the_gather_of_a_two_rank_world_in_process(monkeypatch):
    """``_gather`` itself, in this process (where mutation testing sees it called: the gloo test above runs it only
    in spawned ranks): torch.distributed's all_gather is replaced by a stand-in 2-rank world in which this process
    is rank 1 and rank 0 pushed known keys; the queue must get rank 0's keys, then this rank's."""
    import reprlab.distill.seed as seed_module

    other = F.normalize(torch.randn(3, 3), dim=-1)

    def all_gather(tensor_list, tensor, group=None, async_op=False):  # in place into the list, in rank order
        tensor_list[0].copy_(other)
        tensor_list[1].copy_(tensor)

    monkeypatch.setattr(seed_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(seed_module.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(seed_module.dist, "all_gather", all_gather)
    seed = SEED(Linear(4, 3), Linear(4, 3, seed=1), SEEDConfig(queue_size=16)).train()
    x = torch.randn(3, 4)
    seed(x)
    mine = F.normalize(seed.teacher(x), dim=-1)
    torch.testing.assert_close(seed.queue_contents(), torch.cat([other, mine]))
