"""Features of a masked LM at a prediction position: f(s), p_f(s) on a word subset, Phi p_f(s).

Saunshi et al. (ICLR 2021) read three things off a language model for a context s: the feature
f(s) that multiplies the output word embeddings Phi (logits = Phi^T f(s) + b), the predicted
next-word distribution p_f(s) = softmax(Phi^T f(s) + b) (restricted to a few words, e.g. sentiment
adjectives), and the *conditional mean* Phi p_f(s) = sum_w p_f(s)_w phi_w, the expected output
embedding. For our masked LMs the prediction position is a ``[MASK]`` placed by a
:class:`PromptTemplate` ("s . it was [MASK] ."); "no prompt" is "s [MASK]", the masked analogue of
the next word.

The model is passed in, already built: anything with ``.encoder`` (an :class:`~reprlab.encoder.Encoder`)
and ``.head`` (an :class:`~reprlab.nn.embeddings.MLMHead`), e.g. the ``MLMModel`` that
``reprlab.pretrain.mlm.load_mlm_model`` returns (this module sits beside ``pretrain`` and does not
import it). A Quad-trained model (:mod:`reprlab.nn.quad`) predicts with its logits themselves, not
their softmax: ``distribution="quad"`` reads p_f that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError, ReprlabError
from reprlab.logs import progress
from reprlab.nn.quad import quad_distribution

SENTENCE, MASK = "{sentence}", "{mask}"
DISTRIBUTIONS = ("softmax", "quad")
FEATURES = ("h", "f", "p_subset", "phi_p", "phi_p_subset")


@dataclass(frozen=True)
class PromptTemplate:
    """Where the sentence and the ``[MASK]`` go: ``"{sentence} . it was {mask} ."``.

    Each placeholder appears exactly once. Literal text is tokenised on its own (the tokeniser
    splits at spaces, so this equals tokenising the filled-in string); when the whole does not fit
    ``max_length``, the *sentence* is cut, never the prompt.
    """

    text: str = "{sentence} {mask}"

    def __post_init__(self):
        for name in (SENTENCE, MASK):
            if self.text.count(name) != 1:
                raise ConfigError(f"a prompt template holds {name} exactly once, got {self.text!r}", field="template")

    def segments(self) -> list[str]:
        """The template cut at its placeholders: literal strings and the two placeholders, in order."""
        out, rest = [], self.text
        while rest:
            cuts = [(rest.find(p), p) for p in (SENTENCE, MASK) if p in rest]
            if not cuts:
                out.append(rest)
                break
            at, name = min(cuts)
            if rest[:at].strip():
                out.append(rest[:at])
            out.append(name)
            rest = rest[at + len(name):]
        return [s if s in (SENTENCE, MASK) else s.strip() for s in out if s.strip()]

    def fill(self, sentence: str, mask_token: str = "[MASK]") -> str:
        return self.text.replace(SENTENCE, sentence).replace(MASK, mask_token)


NO_PROMPT = PromptTemplate("{sentence} {mask}")


def _pieces(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids of each text without the [CLS]/[SEP] the tokenizer adds."""
    out = []
    for e in tokenizer.encode_raw(list(texts)):
        ids = list(e.ids)
        if ids and ids[0] == tokenizer.cls_id:
            ids = ids[1:]
        if ids and ids[-1] == tokenizer.sep_id:
            ids = ids[:-1]
        out.append(ids)
    return out


def prediction_inputs(tokenizer, texts: Sequence[str], template: PromptTemplate = NO_PROMPT,
                      max_length: int = 128) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask`` (B, T) of ``[CLS] template(s) [SEP]`` and ``mask_position`` (B,)."""
    if tokenizer.mask_id is None or tokenizer.cls_id is None:
        raise ReprlabError("the tokenizer has no [MASK]/[CLS]: a masked-LM prediction position needs them")
    segments = template.segments()
    literal = [s for s in segments if s not in (SENTENCE, MASK)]
    literal_ids = dict(zip(literal, _pieces(tokenizer, literal))) if literal else {}
    fixed = sum(len(v) for v in literal_ids.values()) + 3  # [CLS], [MASK], [SEP]
    room = max_length - fixed
    if room < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for the sentence beside the prompt "
                          f"{template.text!r}", field="max_length")
    rows, positions = [], []
    for sentence in _pieces(tokenizer, texts):
        ids = [tokenizer.cls_id]
        for s in segments:
            if s == SENTENCE:
                ids += sentence[:room]
            elif s == MASK:
                positions.append(len(ids))
                ids.append(tokenizer.mask_id)
            else:
                ids += literal_ids[s]
        rows.append(ids + [tokenizer.sep_id])
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), tokenizer.pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "mask_position": torch.tensor(positions)}


def head_features(head, hidden: torch.Tensor) -> torch.Tensor:
    """f(s): the MLM head's transform LN(gelu(W h)), the vector that multiplies Phi. (..., E)

    ``F.linear(head_features(head, h), head.output_embeddings, head.bias)`` equals ``head(h)``
    (tested, so the two cannot drift apart).
    """
    return head.norm(F.gelu(head.dense(hidden)))


def next_word_distribution(logits: torch.Tensor, distribution: str = "softmax") -> torch.Tensor:
    """p_f(s) over the vocabulary from logits (B, V): their softmax, or a Quad model's clamped logits."""
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution {distribution!r}; choose one of: {', '.join(DISTRIBUTIONS)}",
                          field="distribution")
    return torch.softmax(logits.float(), -1) if distribution == "softmax" else quad_distribution(logits)


def conditional_mean(features: torch.Tensor, embeddings: torch.Tensor, bias: torch.Tensor | None = None,
                     subset: Sequence[int] | torch.Tensor | None = None, distribution: str = "softmax") -> torch.Tensor:
    """Phi p_f(s) (B, E): the expected output embedding under the model's next-word distribution.

    ``embeddings`` are the output word embeddings as rows (V, E); with ``subset``, the distribution
    is taken over those words only (renormalised) and the mean is over their embeddings.
    """
    E = embeddings.float()
    b = None if bias is None else bias.float()
    if subset is not None:
        idx = torch.as_tensor(subset, dtype=torch.long, device=E.device)
        E, b = E[idx], (None if b is None else b[idx])
    logits = features.float() @ E.T  # (B, V or |S|)
    if b is not None:
        logits = logits + b
    return next_word_distribution(logits, distribution) @ E  # (B, E)


@torch.no_grad()
def extract_features(model, tokenizer, texts: Sequence[str], template: PromptTemplate = NO_PROMPT,
                     subset: Sequence[int] = (), distribution: str = "softmax", batch_size: int = 64,
                     max_length: int = 128, show_progress: bool | None = None) -> dict[str, np.ndarray]:
    """Every feature of :data:`FEATURES` at the ``[MASK]`` of ``template`` for each text, as float32 arrays.

    ``h``: the encoder's last hidden state (B, H); ``f``: :func:`head_features` (B, E);
    ``p_subset``: p_f(s) at the ``subset`` words (B, |S|), from the full-vocabulary distribution;
    ``phi_p``: Phi p_f(s) over the whole vocabulary (B, E); ``phi_p_subset``: the same over ``subset`` only.
    """
    model.eval()
    device = next(model.parameters()).device
    subset_t = torch.as_tensor(list(subset), dtype=torch.long, device=device)
    E = model.head.output_embeddings
    out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURES}
    starts = range(0, len(texts), batch_size)
    for start in progress(starts, show=show_progress, desc="features", total=len(starts)):
        batch = prediction_inputs(tokenizer, texts[start:start + batch_size], template, max_length)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = model.encoder(ids, mask).last_hidden_state  # (B, T, H)
        h = hidden[torch.arange(len(ids), device=device), batch["mask_position"].to(device)]  # (B, H)
        f = head_features(model.head, h).float()  # (B, E)
        p = next_word_distribution(F.linear(f, E.float(), model.head.bias.float()), distribution)  # (B, V)
        out["h"].append(h.float().cpu().numpy())
        out["f"].append(f.cpu().numpy())
        out["p_subset"].append(p[:, subset_t].cpu().numpy())
        out["phi_p"].append((p @ E.float()).cpu().numpy())
        cm = conditional_mean(f, E, model.head.bias, subset_t, distribution) if len(subset_t) else f[:, :0]
        out["phi_p_subset"].append(cm.cpu().numpy())
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


@torch.no_grad()
def masked_lm_cross_entropy(model, tokenizer, texts: Sequence[str], budget: float = 0.15, max_length: int = 128,
                            distribution: str = "softmax", batch_size: int = 32, seed: int = 0,
                            show_progress: bool | None = None) -> dict[str, float]:
    """Held-out masked-LM cross-entropy (nats per masked piece) and accuracy.

    A seeded ``budget`` share of each text's word pieces (specials excluded, at least one) is replaced
    by ``[MASK]`` and predicted; with ``distribution="quad"`` the prediction is the Quad model's
    clamped, renormalised logits, so the number compares with a softmax model's.
    """
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    total, correct, count = 0.0, 0, 0
    starts = range(0, len(texts), batch_size)
    for start in progress(starts, show=show_progress, desc="held-out MLM", total=len(starts)):
        batch = tokenizer(list(texts[start:start + batch_size]), max_length=max_length)
        ids, mask = batch.input_ids.clone(), batch.attention_mask
        special = torch.isin(ids, torch.tensor(tokenizer.special_ids)) | (mask == 0)
        chosen = torch.zeros_like(special)
        for i in range(len(ids)):
            cand = np.flatnonzero(~special[i].numpy())
            if len(cand):
                k = max(1, int(round(budget * len(cand))))
                chosen[i, rng.choice(cand, size=k, replace=False)] = True
        targets = ids[chosen]
        ids[chosen] = tokenizer.mask_id
        hidden = model.encoder(ids.to(device), mask.to(device)).last_hidden_state  # (B, T, H)
        logits = model.head(hidden[chosen.to(device)])  # (M, V)
        p = next_word_distribution(logits, distribution)
        t = targets.to(device)
        total += float(-torch.log(p.gather(1, t[:, None]).clamp_min(1e-12)).sum())
        correct += int((p.argmax(-1) == t).sum())
        count += len(t)
    if count == 0:
        raise ReprlabError("no word pieces to predict in the held-out texts")
    return {"cross_entropy": total / count, "perplexity": float(np.exp(total / count)),
            "accuracy": correct / count, "predicted": count}


def word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The vocabulary ids of single-piece words; a word that is not one piece is an error."""
    ids = []
    for w in words:
        i = tokenizer.token_to_id(w)
        if i is None:
            raise ConfigError(f"{w!r} is not a single word piece of the tokenizer", field="words")
        ids.append(i)
    return ids


def zero_shot(p_subset: np.ndarray, class_columns: Sequence[Sequence[int]]) -> np.ndarray:
    """Predicted class per row: the class whose words (columns of ``p_subset``) hold the most probability.

    For SST-2 with classes ``[["terrible"], ["great"]]`` this is the sign of p(great) - p(terrible).
    """
    scores = np.stack([p_subset[:, list(cols)].sum(1) for cols in class_columns], 1)  # (B, C)
    return scores.argmax(1)
