"""Cross-attention scores of the FiD reader: one relevance score per passage (the distillation teacher).

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584, section 3.2; official code facebookresearch/FiD). The decoder attends over the
concatenated encoder outputs of all passages; how much it attends to a passage's tokens says how much
it uses that passage. The paper's score of passage p:

    G(p) = mean over decoder layers, heads and p's non-padding tokens of the cross-attention's
           pre-softmax score alpha[layer, head, first decoded token, token]

(the tokens of p are the tokens of its whole "question: .. title: .. context: .." input, as in the
official code). The alternatives the paper compares are options of :class:`~reprlab.qa.teachers.ScoringConfig`:
post-softmax probabilities (``softmax="post"``, normalised over all passages' tokens jointly), every
token of the greedy answer instead of the first (``tokens="all"``), a subset of the layers
(``layers``), and a sum instead of a mean over the passage's tokens (``reduce="sum"``).

:func:`aggregate_cross_attention` is the vectorised aggregation; the test suite checks it against a
plain loop over heads, layers and tokens. :class:`FidTeacher` runs the reader on questions and their
passages and returns the scores (registered as the teacher kind ``fid``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reprlab.errors import ConfigError, ReprlabError
from reprlab.qa.teachers import Passages, ScoringConfig, autocast


def aggregate_cross_attention(scores: Sequence[torch.Tensor], passage_tokens: torch.Tensor, token_mask: torch.Tensor,
                              softmax: str = "pre", layers: Sequence[int] | None = None, reduce: str = "mean"
                              ) -> torch.Tensor:
    """(B, n) passage scores from each decoder layer's pre-softmax cross-attention scores.

    ``scores``: one (B, nh, T, n*L) tensor per decoder layer; ``passage_tokens``: (B, n, L) bool, True at
    the real tokens of each passage slot (an empty slot is all False and scores -inf); ``token_mask``:
    (B, T) bool, the decoder positions to average over. ``softmax="post"`` turns each layer's scores into
    attention probabilities first (over all real memory tokens).
    """
    layers = list(range(len(scores))) if layers is None else list(layers)
    if not layers or max(layers) >= len(scores):
        raise ConfigError(f"layers {layers}: the decoder has {len(scores)} layers", field="layers")
    B, n, L = passage_tokens.shape
    memory = passage_tokens.reshape(B, 1, 1, 1, n * L)
    S = torch.stack([scores[i].float() for i in layers], dim=1)  # (B, nl, nh, T, n*L)
    if softmax == "post":
        S = S.masked_fill(~memory, torch.finfo(S.dtype).min).softmax(-1)
    nl, nh, T = S.shape[1], S.shape[2], S.shape[3]
    S = S.reshape(B, nl, nh, T, n, L)
    keep = passage_tokens[:, None, None, None] & token_mask[:, None, None, :, None, None]  # (B, 1, 1, T, n, L)
    total = S.masked_fill(~keep, 0.0).sum(dim=(1, 2, 3, 5))  # (B, n)
    tokens = passage_tokens.sum(-1) if reduce == "mean" else passage_tokens.any(-1).long()  # (B, n)
    count = tokens * token_mask.sum(-1, keepdim=True) * nl * nh  # (B, n)
    out = total / count.clamp(min=1)
    return out.masked_fill(tokens == 0, float("-inf"))


class FidTeacher:
    """A :class:`~reprlab.qa.fid.model.FidReader` as a :class:`~reprlab.qa.teachers.PassageTeacher`."""

    signal = "cross-attention"

    def __init__(self, reader, scoring: ScoringConfig):
        self.reader, self.scoring = reader.eval(), scoring
        if scoring.signal not in (None, self.signal):
            raise ConfigError(f"a FiD reader gives cross-attention, not {scoring.signal!r}", field="signal")
        if scoring.layers is not None and max(scoring.layers) >= len(reader.decoder):
            raise ConfigError(f"layers {scoring.layers}: the decoder has {len(reader.decoder)}", field="layers")

    @torch.inference_mode()
    def score_batch(self, questions: Sequence[str], passages: Passages) -> torch.Tensor:
        """(B, n) scores of one batch (-inf in empty slots)."""
        with autocast(self.reader.device, self.scoring.bf16):
            return self._score_batch(questions, passages)

    def _score_batch(self, questions: Sequence[str], passages: Passages) -> torch.Tensor:
        from reprlab.qa.fid.generate import greedy

        reader = self.reader
        batch = reader.featurize(questions, passages).to(reader.device)
        memory, mask = reader.encode(batch)
        kv = reader.memory_kv(memory)
        B = len(questions)
        prefix = torch.full((B, 1), reader.bos_id, dtype=torch.long, device=reader.device)
        lengths = torch.ones(B, dtype=torch.long, device=reader.device)
        if self.scoring.tokens == "all":  # the greedy answer, then every position of it (and of [SEP]) at once
            answers = greedy(reader, kv, mask, reader.config.answer_max_length)
            T = 1 + max(len(a) for a in answers)
            prefix = torch.full((B, T), reader.pad_id, dtype=torch.long, device=reader.device)
            for b, a in enumerate(answers):
                prefix[b, : len(a) + 1] = torch.tensor([reader.bos_id, *a])
            lengths = torch.tensor([1 + len(a) for a in answers], device=reader.device)
        token_mask = torch.arange(prefix.size(1), device=prefix.device)[None] < lengths[:, None]  # (B, T)
        _, scores = reader.decode(prefix, kv, mask, output_scores=True)
        passage_tokens = batch.attention_mask.bool() & batch.passage_mask[:, :, None]  # (B, n, L)
        return aggregate_cross_attention(scores, passage_tokens, token_mask, self.scoring.softmax,
                                         self.scoring.layers, self.scoring.reduce)

    def score_passages(self, questions: Sequence[str], passages: Passages) -> list[np.ndarray]:
        if len(questions) != len(passages):
            raise ReprlabError(f"{len(questions)} questions but {len(passages)} passage lists")
        out: list[np.ndarray] = []
        size = self.scoring.batch_size
        for lo in range(0, len(questions), size):
            qs, ps = list(questions[lo: lo + size]), list(passages[lo: lo + size])
            if not any(ps):
                out.extend(np.zeros(0, dtype=np.float32) for _ in qs)
                continue
            scores = self.score_batch(qs, ps).cpu().numpy()
            out.extend(scores[b, : len(p)].astype(np.float32) for b, p in enumerate(ps))
        return out
