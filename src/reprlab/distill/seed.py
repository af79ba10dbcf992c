"""SEED: self-supervised distillation through similarity distributions over a queue of teacher embeddings.

Fang, Wang, Wang, Zhang, Yang & Liu, "SEED: Self-supervised Distillation For Visual Representation",
ICLR 2021; official code https://github.com/jacobswan1/SEED.
A frozen teacher embeds each example; its embeddings go into a FIFO queue (as MoCo's keys). The
student is trained so that its similarity distribution over the queue (plus the example's own
teacher embedding, prepended as in the paper) matches the teacher's: soft cross-entropy between
softmax(t . [t, Q] / tau_T) and softmax(s . [t, Q] / tau_S). No labels are needed, and the encoders are
arbitrary modules: text encoders (:class:`~reprlab.encoder.SentenceEncoder`) or image encoders
(``reprlab.distill.image``).

Relation to the siblings: with an empty queue and tau_S = tau_T this is the in-batch score
distillation of ``kd.py`` restricted to the diagonal; the queue gives thousands of candidates
without a large batch. The value returned is the KL divergence, which is the paper's soft
cross-entropy minus the teacher's entropy (a constant for the student): the gradients are the
paper's, and the loss is 0 when the student equals the teacher at equal temperatures.
Differences from the official code: queue slots not yet filled are left out of the softmax (the
official code scores random vectors there), and the queue length need not divide by the batch.

>>> seed = SEED(student, teacher, SEEDConfig(queue_size=4096))        # doctest: +SKIP
>>> loss, metrics = seed(images)                                        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError


@dataclass
class SEEDConfig:
    """Queue length and temperatures (the paper's tau_S = 0.2, tau_T = 0.01 for ImageNet).

    ``head``: the student's projection into the teacher's embedding space: "auto" (a linear layer
    only when the widths differ), "linear", "mlp" (Linear-ReLU-Linear, as the paper's students) or
    "none".
    """

    queue_size: int = 4096
    student_temperature: float = 0.2
    teacher_temperature: float = 0.01
    head: str = "auto"

    def __post_init__(self):
        if self.queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.student_temperature <= 0 or self.teacher_temperature <= 0:
            raise ConfigError("SEED temperatures must be positive")
        if self.head not in ("auto", "linear", "mlp", "none"):
            raise ConfigError(f"unknown SEED head {self.head!r}; choose auto, linear, mlp or none")


def _call(module: nn.Module, batch):
    return module(**batch) if isinstance(batch, dict) else module(batch)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order (no gradient: the keys are the frozen teacher's)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def seed_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    queue: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL, soft cross-entropy) of SEED for L2-normalised (B, D) student/teacher vectors and a (K, D) queue.

    The candidates of example b are its own teacher vector followed by the K queue entries.
    """
    teacher = teacher.detach()
    s_logits = torch.cat([(student * teacher).sum(-1, keepdim=True), student @ queue.T], dim=1)  # (B, 1 + K)
    t_logits = torch.cat([(teacher * teacher).sum(-1, keepdim=True), teacher @ queue.T], dim=1)
    log_p_s = F.log_softmax(s_logits.float() / student_temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits.float() / teacher_temperature, dim=-1)
    p_t = log_p_t.exp()
    cross_entropy = -(p_t * log_p_s).sum(-1).mean()
    kl = (p_t * (log_p_t - log_p_s)).sum(-1).mean()
    return kl, cross_entropy


class SEED(nn.Module):
    """Student + frozen teacher + FIFO queue of teacher embeddings.

    ``student`` and ``teacher`` are modules called with the batch (``module(**batch)`` for a dict,
    ``module(batch)`` otherwise) that return (B, D) vectors; give ``student_dim`` / ``teacher_dim``
    when they cannot be read from the modules (a ``dim`` attribute). ``forward(batch)`` returns
    ``(loss, metrics)`` and then pushes the batch's teacher vectors (of all ranks) into the queue, so it
    plugs into :func:`reprlab.train.train` as ``loss_fn = lambda model, batch: model(batch)``.
    The teacher stays in eval mode and gets no gradient; the queue is a buffer, so it is saved in
    checkpoints and a resumed run continues with the same queue.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: SEEDConfig | None = None,
                 student_dim: int | None = None, teacher_dim: int | None = None):
        super().__init__()
        self.config = config or SEEDConfig()
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        Ds = student_dim or getattr(student, "dim", None)
        Dt = teacher_dim or getattr(teacher, "dim", None)
        if Ds is None or Dt is None:
            raise ConfigError("SEED needs the embedding widths: pass student_dim and teacher_dim")
        head = self.config.head
        if head == "auto":
            head = "none" if Ds == Dt else "linear"
        if head == "none" and Ds != Dt:
            raise ConfigError(f"student width {Ds} differs from the teacher's {Dt}: use head 'linear' or 'mlp'")
        self.head = {"none": None, "linear": nn.Linear(Ds, Dt),
                     "mlp": nn.Sequential(nn.Linear(Ds, Ds), nn.ReLU(), nn.Linear(Ds, Dt))}[head]
        K = self.config.queue_size
        self.register_buffer("queue", F.normalize(torch.randn(K, Dt), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to overwrite
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # slots holding real keys

    def train(self, mode: bool = True) -> "SEED":
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen: no dropout, no batch-norm statistics updates
        return self

    def embed_student(self, batch) -> torch.Tensor:
        s = _call(self.student, batch)
        if self.head is not None:
            s = self.head(s)
        return F.normalize(s.float(), dim=-1)

    @torch.no_grad()
    def embed_teacher(self, batch) -> torch.Tensor:
        return F.normalize(_call(self.teacher, batch).float(), dim=-1)

    def queue_contents(self) -> torch.Tensor:
        """The real keys in the queue, oldest first: (filled, D)."""
        K, filled, ptr = self.queue.size(0), int(self.queue_filled), int(self.queue_ptr)
        if filled < K:
            return self.queue[:filled].clone()
        return torch.cat([self.queue[ptr:], self.queue[:ptr]]).clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Push ``keys`` (N, D): the oldest entries are overwritten first (FIFO)."""
        K = self.queue.size(0)
        keys = keys[-K:].to(self.queue.dtype)  # more keys than slots: only the newest K survive
        n = keys.size(0)
        slots = (int(self.queue_ptr) + torch.arange(n, device=self.queue.device)) % K
        self.queue[slots] = keys
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % K)
        self.queue_filled.fill_(min(K, int(self.queue_filled) + n))

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        t = self.embed_teacher(batch)
        s = self.embed_student(batch)
        queue = self.queue_contents()  # a copy: the in-place enqueue below must not touch the graph
        kl, ce = seed_loss(s, t, queue, c.student_temperature, c.teacher_temperature)
        if self.training:
            self.enqueue(_gather(t))
        return kl, {"seed_ce": ce.detach()}
