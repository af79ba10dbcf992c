"""Contextual knowledge distillation (CKD): word relations and layer-transforming relations.

Park, Kim & Yang, "Distilling Linguistic Context for Language Model Compression", EMNLP 2021
(ICLR 2021 submission); official code https://github.com/GeondoPark/CKD.
Instead of matching hidden states one to one (which needs equal widths or a projection), CKD matches
*relations* between representations, which are scalars and so need no equal hidden sizes:

* word relation (WR): within one layer, the pairwise relation of tokens i, j (cosine similarity,
  turned into a distribution over j by a softmax and matched by KL) and the triplet relation of
  tokens j, i, k (the cosine of the angle at i between h_j - h_i and h_k - h_i, matched by squared
  error), the triplets restricted to a local window around i;
* layer-transforming relation (LTR): for one token, the same pairwise and triplet relations between
  its representations at different layers, i.e. how the token is transformed through the network.

Student and teacher layers are paired by ``CKDConfig.layer_map`` (student hidden-state index ->
teacher hidden-state index; index 0 is the embedding output); by default student state i is paired
with teacher state round(i * n / m). The loss of the paper adds these terms to the task (or plain KD)
loss: ``L = L_KD + w_wr_pair WR_pair + w_wr_triplet WR_triplet + w_ltr_pair LTR_pair + ...``.

Efficient path: every relation is computed from Gram matrices (<h_a, h_b>), e.g.
<h_j - h_i, h_k - h_i> = G_jk - G_ij - G_ik + G_ii, so the windowed triplets cost O(B T w^2) after one
(B, T, T) Gram product instead of materialising (B, T, w, D) difference vectors;
``tests/distill/test_ckd.py`` checks them against the plain difference-vector definitions.

Inputs::

    states:  (B, T, D) hidden states of one layer (D may differ between student and teacher)
    layers:  (B, T, L, D) one token's states at L layers
    mask:    (B, T) 1 for real tokens
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError

_EPS = 1e-8


# ----------------------------------------------------------------------------- relations from Gram matrices


def _gram(x: torch.Tensor) -> torch.Tensor:
    """(..., N, D) -> (..., N, N) inner products, in float32 even under bf16 autocast (the
    G_jk - G_ij - G_ik + G_ii differences cancel, which bf16 would not survive)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        return x @ x.transpose(-1, -2)


def _diag(g: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(g, dim1=-2, dim2=-1)  # (..., N)


def pair_cosines(x: torch.Tensor) -> torch.Tensor:
    """(..., N, D) -> (..., N, N) cosine similarities of every pair of the N vectors."""
    g = _gram(x)
    norm = _diag(g).clamp_min(_EPS).sqrt()  # (..., N)
    return g / (norm[..., :, None] * norm[..., None, :])


def all_angles(x: torch.Tensor) -> torch.Tensor:
    """(..., N, D) -> (..., N, N, N): [.., i, j, k] = cos of the angle at i between x_j - x_i and x_k - x_i."""
    g = _gram(x)  # (..., N, N)
    d = _diag(g)  # (..., N)
    # <x_j - x_i, x_k - x_i> = G_jk - G_ij - G_ik + G_ii
    dot = g[..., None, :, :] - g[..., :, :, None] - g[..., :, None, :] + d[..., :, None, None]  # (..., i, j, k)
    sq = (d[..., None, :] + d[..., :, None] - 2 * g).clamp_min(_EPS)  # (..., i, j) = |x_j - x_i|^2
    return dot / (sq[..., :, :, None] * sq[..., :, None, :]).sqrt()


def window_angles(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles at each position i between neighbours j, k within ``window`` (odd) positions centred on i.

    Returns (angles (B, T, w, w), inside (T, w) bool: neighbour position inside the sequence), where
    neighbour slot a of position i is position i - w // 2 + a.
    """
    B, T, _ = x.shape
    r = window // 2
    g = _gram(x)  # (B, T, T)
    d = _diag(g)  # (B, T)
    pos = torch.arange(T, device=x.device)
    idx = pos[:, None] + torch.arange(-r, r + 1, device=x.device)[None, :]  # (T, w)
    inside = (idx >= 0) & (idx < T)
    idx = idx.clamp(0, T - 1)
    g_ij = g.gather(2, idx[None].expand(B, T, window))  # (B, T, w): <x_i, x_j>
    g_jk = g[:, idx[:, :, None], idx[:, None, :]]  # (B, T, w, w): <x_j, x_k>
    d_j = d[:, idx]  # (B, T, w)
    d_i = d[:, :, None]  # (B, T, 1)
    dot = g_jk - g_ij[..., :, None] - g_ij[..., None, :] + d_i[..., None]  # (B, T, w, w)
    sq = (d_j + d_i - 2 * g_ij).clamp_min(_EPS)  # (B, T, w)
    return dot / (sq[..., :, None] * sq[..., None, :]).sqrt(), inside


# ----------------------------------------------------------------------------- losses


def _pair_kl(s_cos: torch.Tensor, t_cos: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of row-wise softmaxes over the valid entries; mean over rows with >= 2."""
    lowest = torch.finfo(torch.float32).min
    s = (s_cos / temperature).masked_fill(~valid, lowest)
    t = (t_cos / temperature).masked_fill(~valid, lowest)
    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~valid, 0.0).sum(-1)
    rows = valid.sum(-1) >= 2
    return kl[rows].mean() if bool(rows.any()) else kl.sum() * 0.0


def _masked_mse(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    diff = (a - b).masked_fill(~valid, 0.0)
    n = valid.sum()
    return (diff**2).sum() / n if bool(n) else diff.sum() * 0.0


def word_pair_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """WR pairwise: KL between teacher and student softmaxes of token-token cosines (self excluded)."""
    m = mask.bool()
    T = m.size(1)
    valid = m[:, :, None] & m[:, None, :] & ~torch.eye(T, dtype=torch.bool, device=m.device)  # (B, T, T)
    with torch.no_grad():
        t_cos = pair_cosines(teacher)
    return _pair_kl(pair_cosines(student), t_cos, valid, temperature)


def word_triplet_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                      window: int = 21) -> torch.Tensor:
    """WR triplet: squared error of the angles at each token between two neighbours in its window."""
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"the triplet window must be an odd number >= 3, got {window}")
    m = mask.bool()
    B, T = m.shape
    with torch.no_grad():
        t_ang, inside = window_angles(teacher, window)
    s_ang, _ = window_angles(student, window)
    r = window // 2
    idx = (torch.arange(T, device=m.device)[:, None] + torch.arange(-r, r + 1, device=m.device)).clamp(0, T - 1)
    neighbour = inside[None] & m[:, idx] & m[:, :, None]  # (B, T, w): real token j in the window of a real i
    not_centre = torch.ones(window, dtype=torch.bool, device=m.device)
    not_centre[r] = False
    neighbour = neighbour & not_centre
    distinct = ~torch.eye(window, dtype=torch.bool, device=m.device)
    valid = neighbour[..., :, None] & neighbour[..., None, :] & distinct  # (B, T, w, w)
    return _masked_mse(s_ang, t_ang, valid)


def layer_pair_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """LTR pairwise: per token, KL of the softmaxes of layer-layer cosines. Inputs (B, T, L, D)."""
    m = mask.bool()
    L = student.size(2)
    valid = (m[:, :, None, None] & ~torch.eye(L, dtype=torch.bool, device=m.device))  # (B, T, L, L)
    with torch.no_grad():
        t_cos = pair_cosines(teacher)
    return _pair_kl(pair_cosines(student), t_cos, valid, temperature)


def layer_triplet_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LTR triplet: per token, squared error of the angles between its states at three layers."""
    m = mask.bool()
    L = student.size(2)
    eye = torch.eye(L, dtype=torch.bool, device=m.device)
    # [i, j, k]: j != i, k != i, j != k
    distinct = ~eye[:, :, None] & ~eye[:, None, :] & ~eye[None, :, :]  # (L, L, L)
    valid = m[:, :, None, None, None] & distinct  # (B, T, L, L, L)
    with torch.no_grad():
        t_ang = all_angles(teacher)
    return _masked_mse(all_angles(student), t_ang, valid)


# ----------------------------------------------------------------------------- the CKD objective


@dataclass
class CKDConfig:
    """Weights, window and layer map of CKD.

    ``layer_map``: pairs [student_state, teacher_state] of hidden-state indices (0 = embeddings);
    None pairs every student state i with teacher state round(i * n_teacher / n_student).
    ``pair_temperature``: softmax temperature of the pairwise relations (1.0 in the official code).
    """

    wr_pair: float = 1.0
    wr_triplet: float = 1.0
    ltr_pair: float = 1.0
    ltr_triplet: float = 1.0
    window: int = 21
    pair_temperature: float = 1.0
    layer_map: list[list[int]] | None = field(default=None)

    def __post_init__(self):
        if self.window < 3 or self.window % 2 == 0:
            raise ConfigError(f"CKD window must be an odd number >= 3, got {self.window}")
        if self.pair_temperature <= 0:
            raise ConfigError(f"pair_temperature must be positive, got {self.pair_temperature}")
        if self.layer_map is not None:
            if any(len(p) != 2 for p in self.layer_map) or not self.layer_map:
                raise ConfigError("layer_map must be a list of [student_state, teacher_state] pairs, "
                                  f"got {self.layer_map}")
            self.layer_map = [[int(a), int(b)] for a, b in self.layer_map]

    def pairs(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student state, teacher state) index pairs; states run 0..num_layers (0 = embeddings)."""
        if self.layer_map is None:
            return [(i, round(i * teacher_layers / student_layers)) for i in range(student_layers + 1)]
        bad = [p for p in self.layer_map if not (0 <= p[0] <= student_layers and 0 <= p[1] <= teacher_layers)]
        if bad:
            raise ConfigError(f"layer_map pairs {bad} are out of range: student states 0..{student_layers}, "
                              f"teacher states 0..{teacher_layers}")
        return [(a, b) for a, b in self.layer_map]


def ckd_loss(
    student_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    mask: torch.Tensor,
    config: CKDConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted CKD terms for all hidden states of a student and a teacher (embeddings first).

    Returns (loss, {"wr_pair", "wr_triplet", "ltr_pair", "ltr_triplet"} detached).
    """
    pairs = config.pairs(len(student_states) - 1, len(teacher_states) - 1)
    s_sel = [student_states[a] for a, _ in pairs]
    t_sel = [teacher_states[b].detach() for _, b in pairs]
    c = config
    terms: dict[str, torch.Tensor] = {}
    zero = s_sel[0].float().sum() * 0.0
    if c.wr_pair:
        pair_terms = [word_pair_loss(s, t, mask, c.pair_temperature) for s, t in zip(s_sel, t_sel)]
        terms["wr_pair"] = sum(pair_terms) / len(pairs)
    if c.wr_triplet:
        terms["wr_triplet"] = sum(word_triplet_loss(s, t, mask, c.window) for s, t in zip(s_sel, t_sel)) / len(pairs)
    if len(pairs) >= 2 and (c.ltr_pair or c.ltr_triplet):
        s_layers = torch.stack(s_sel, dim=2)  # (B, T, L, Ds)
        t_layers = torch.stack(t_sel, dim=2)  # (B, T, L, Dt)
        if c.ltr_pair:
            terms["ltr_pair"] = layer_pair_loss(s_layers, t_layers, mask, c.pair_temperature)
        if c.ltr_triplet and len(pairs) >= 3:
            terms["ltr_triplet"] = layer_triplet_loss(s_layers, t_layers, mask)
    weights = {"wr_pair": c.wr_pair, "wr_triplet": c.wr_triplet, "ltr_pair": c.ltr_pair, "ltr_triplet": c.ltr_triplet}
    total = zero + sum(weights[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
