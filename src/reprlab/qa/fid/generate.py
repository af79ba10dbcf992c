"""Decoding for the FiD reader: greedy search, beam search, and answers mapped back to the passages' text.

Both searches drive a ``step(prefixes) -> log-probabilities`` function: ``prefixes`` (N, t) token ids
starting with ``[CLS]``, the result (N, V) the log-probabilities of the next token. The reader's step
runs its decoder over the whole prefix against cross-attention keys and values computed once per
input (answers are a few tokens long, so the prefix is cheap; the passages are not).

* :func:`greedy_search`: the most likely next token at every step, until ``[SEP]`` or ``max_length``.
* :func:`beam_search`: the ``num_beams`` most likely prefixes at every step (Graves, 2012; as in
  fairseq / HF ``generate``); a hypothesis ends when ``[SEP]`` is chosen, is scored by its summed
  log-probability over ``length ** length_penalty`` (its tokens, ``[SEP]`` included), and the search of
  one input stops when it has ``num_beams`` finished hypotheses and none of its live beams can
  still beat the best of them under the same normalisation. With one beam it is greedy search.
* :func:`surface_text`: a generated word-piece sequence found in a passage's title or text is
  returned as that span of the original string (word pieces lower-case, drop accents and split
  "Levi's" into ``levi ' s``: joining them would miss SQuAD's exact match).
"""

from __future__ import annotations

from typing import Callable

import torch

Step = Callable[[torch.Tensor], torch.Tensor]  # (N, t) prefixes -> (N, V) next-token log-probabilities


def reader_step(reader, memory_kv, memory_mask) -> Step:
    """The step function of a :class:`~reprlab.qa.fid.model.FidReader` over one batch's memory."""

    def step(prefixes: torch.Tensor) -> torch.Tensor:
        logits, _ = reader.decode(prefixes, memory_kv, memory_mask)
        return logits[:, -1].float().log_softmax(-1)  # (N, V)

    return step


def greedy_search(step: Step, batch_size: int, bos: int, eos: int, max_length: int,
                  device: torch.device | str = "cpu") -> list[list[int]]:
    """Token ids (without ``bos``/``eos``) of the greedy answer of each of ``batch_size`` inputs."""
    seqs = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_length):
        nxt = step(seqs).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    out = []
    for row in seqs[:, 1:].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def beam_search(step: Step, batch_size: int, num_beams: int, bos: int, eos: int, max_length: int,
                length_penalty: float = 1.0, device: torch.device | str = "cpu") -> list[list[int]]:
    """Token ids (without ``bos``/``eos``) of the best hypothesis of each input; see the module docstring.

    ``step`` receives ``batch_size * num_beams`` prefixes, input-major (rows b*K .. b*K+K-1 belong to
    input b), so a step function built on memory repeated ``num_beams`` times per input fits it.
    """
    B, K = batch_size, num_beams
    neg = float("-inf")
    seqs = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    scores = torch.full((B, K), neg, device=device)
    scores[:, 0] = 0.0  # one live beam per input at the start: the others would repeat it
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B

    def norm(score: float, length: int) -> float:
        return score / (length ** length_penalty)

    for t in range(max_length):
        logp = step(seqs)  # (B*K, V)
        V = logp.size(-1)
        cand = scores[:, :, None] + logp.view(B, K, V)  # (B, K, V)
        top, idx = cand.view(B, K * V).topk(min(2 * K, K * V), dim=1)
        rows, tokens, new_scores = [], [], []
        for b in range(B):
            chosen: list[tuple[float, int, int]] = []
            for s, flat in zip(top[b].tolist(), idx[b].tolist()):
                if done[b] or s == neg or len(chosen) == K:
                    break
                beam, token = divmod(flat, V)
                if token == eos:
                    finished[b].append((norm(s, t + 1), seqs[b * K + beam, 1:].tolist()))
                else:
                    chosen.append((s, beam, token))
            while len(chosen) < K:  # dead beams keep the shape
                chosen.append((neg, 0, eos))
            for s, beam, token in chosen:
                rows.append(b * K + beam)
                tokens.append(token)
                new_scores.append(s)
            best_alive = chosen[0][0]
            if len(finished[b]) >= K and (best_alive == neg or
                                          max(f[0] for f in finished[b]) >= norm(best_alive, t + 1)):
                done[b] = True
        seqs = torch.cat([seqs[torch.tensor(rows, device=device)],
                          torch.tensor(tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device).view(B, K)
        if all(done):
            break
    out = []
    for b in range(B):
        hyps = list(finished[b])
        if not done[b]:  # out of steps: live beams compete as they are
            hyps += [(norm(scores[b, k].item(), seqs.size(1) - 1), seqs[b * K + k, 1:].tolist())
                     for k in range(K) if scores[b, k].item() != neg]
        out.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
    return out


def greedy(reader, memory_kv, memory_mask, max_length: int) -> list[list[int]]:
    """:func:`greedy_search` of a FiD reader over an encoded batch."""
    return greedy_search(reader_step(reader, memory_kv, memory_mask), memory_mask.size(0), reader.bos_id,
                         reader.eos_id, max_length, memory_mask.device)


def beam(reader, memory_kv, memory_mask, num_beams: int, max_length: int, length_penalty: float = 1.0
         ) -> list[list[int]]:
    """:func:`beam_search` of a FiD reader over an encoded batch (its memory repeated per beam)."""
    kv = [(k.repeat_interleave(num_beams, 0), v.repeat_interleave(num_beams, 0)) for k, v in memory_kv]
    mask = memory_mask.repeat_interleave(num_beams, 0)  # (B*K, n*L)
    return beam_search(reader_step(reader, kv, mask), memory_mask.size(0), num_beams, reader.bos_id,
                       reader.eos_id, max_length, length_penalty, memory_mask.device)


def _find(row: list[int], ids: list[int]) -> list[int]:
    """Start positions of ``ids`` as a contiguous run in ``row``."""
    n = len(ids)
    return [p for p in range(len(row) - n + 1) if row[p] == ids[0] and row[p: p + n] == ids]


def surface_text(tokenizer, ids: list[int], batch, b: int) -> str:
    """The answer ``ids`` of question ``b`` of ``batch`` (a FidBatch with offsets) as text; see the module
    docstring. The first occurrence after the question part of a passage's input, in passage order."""
    special = set(tokenizer.special_ids)
    ids = [int(i) for i in ids if int(i) not in special]
    if not ids:
        return ""
    if batch.offsets is not None:
        for j, text in enumerate(batch.texts[b]):
            if not bool(batch.passage_mask[b, j]) or not text:
                continue
            after = text.find(" title: ")
            row = batch.input_ids[b, j].tolist()
            spans = batch.offsets[b, j].tolist()
            for p in _find(row, ids):
                start, end = spans[p][0], spans[p + len(ids) - 1][1]
                if start > after >= 0 and end > start:
                    return text[start:end]
    return tokenizer.decode(ids)
