"""CMLM: sentence representations learned by masked language modelling conditioned on a neighbour.

Yang, Yang, Cer, Law and Darve, "Universal Sentence Representation Learning with Conditional Masked
Language Model", EMNLP 2021 (ICLR 2021 submission; models released on TF-Hub as
universal-sentence-encoder-cmlm). A sentence s1 is encoded to its sentence vector v (the pooled,
possibly normalised output that retrieval uses), v is projected to N vectors
P(v) = [ReLU(W_1 v + b_1), ..., ReLU(W_N v + b_N)] (N = 15 in the paper), and these are
concatenated with the token embeddings of the *adjacent* sentence s2, as N extra input positions of
the same (shared-weight) encoder, which must predict s2's masked tokens. The only route from s1 to
the masked tokens is the sentence vector, so MLM trains it to carry s1's content.

Here the N conditioning vectors enter the layer stack beside s2's embedded tokens (which keep their
own positions 0..T-1); they have no position embedding (they are a set) and are attended to like
tokens but never predicted. Pairs come from the corpus: consecutive sentences of a paragraph or
abstract (:func:`reprlab.pretrain.corpus.read_sentence_groups`).

>>> result = run_cmlm(CMLMConfig(corpus=["scifact/corpus_sentences.jsonl"], output_dir="runs/cmlm",
...                              max_steps=300))                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError
from reprlab.io import atomic_open
from reprlab.nn.embeddings import MLMHead
from reprlab.pretrain.corpus import TokenizedText, tokenize_chunks
from reprlab.pretrain.masking import IGNORE_INDEX, MASKING, MaskingConfig, SpecialTokens, build_masking
from reprlab.pretrain.mlm import HEAD_FOLDER, load_mlm_head, save_mlm_head
from reprlab.text.corpus import read_sentence_groups
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

logger = logging.getLogger("reprlab")


class CMLMModel(nn.Module):
    """Sentence encoder + N-vector projection + MLM head, the encoder shared by both sentences.

    ``forward(cond_ids, cond_mask, input_ids, attention_mask, labels, source=None)`` -> (loss, accuracy):
    row b of the masked batch is conditioned on sentence ``source[b]`` of the conditioning batch
    (``source=None``: row b on sentence b).
    """

    def __init__(self, sentence: SentenceEncoder, head: MLMHead, num_vectors: int = 15, init_std: float = 1.0):
        super().__init__()
        if num_vectors < 1:
            raise ConfigError("CMLM needs at least one conditioning vector (num_vectors >= 1)")
        self.sentence = sentence
        self.head = head
        self.num_vectors = num_vectors
        H = sentence.encoder.config.hidden_size
        self.projection = nn.Linear(sentence.dim, num_vectors * H)
        # a unit-norm sentence vector then gives conditioning vectors of about unit scale per
        # coordinate, the scale of the LayerNorm-ed token embeddings they sit beside
        nn.init.normal_(self.projection.weight, std=init_std)
        nn.init.zeros_(self.projection.bias)

    @property
    def encoder(self):
        return self.sentence.encoder

    def condition(self, cond_ids: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, H) conditioning vectors of the sentences ``cond_ids``."""
        v = self.sentence(cond_ids, cond_mask)  # (B, D) the sentence vector
        B = v.shape[0]
        return F.relu(self.projection(v)).view(B, self.num_vectors, -1)  # (B, N, H)

    def hidden(self, cond: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final states (B, T, H) of the masked sentence encoded beside the conditioning vectors."""
        x = self.encoder.embed(input_ids)  # (B, T, H)
        x = torch.cat([cond.to(x.dtype), x], dim=1)  # (B, N + T, H)
        mask = torch.cat([torch.ones(cond.shape[:2], dtype=torch.bool, device=x.device), attention_mask.bool()], 1)
        for layer in self.encoder.layers:
            x, _ = layer(x, mask)
        return x[:, self.num_vectors :]  # (B, T, H)

    def forward(self, cond_ids, cond_mask, input_ids, attention_mask, labels, source=None):
        cond = self.condition(cond_ids, cond_mask)
        if source is not None:
            cond = cond[source]
        hidden = self.hidden(cond, input_ids, attention_mask)
        selected = labels != IGNORE_INDEX
        if not bool(selected.any()):
            zero = hidden.sum() * 0.0
            return zero, zero.detach()
        logits = self.head(hidden[selected])  # (M, V)
        targets = labels[selected]
        loss = F.cross_entropy(logits.float(), targets)
        return loss, (logits.argmax(-1) == targets).float().mean().detach()


def pad_rows(rows: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class CMLMCollate:
    """Items are (conditioning sentence, target sentence) :class:`TokenizedText` pairs."""

    def __init__(self, masking, special: SpecialTokens):
        self.masking = masking
        self.special = special

    def __call__(self, items: list[tuple[TokenizedText, TokenizedText]], rng: np.random.Generator) -> dict:
        cond_ids, cond_mask = pad_rows([a.ids for a, _ in items], self.special.pad_id)
        batch = self.masking.collate([b for _, b in items], self.special, rng)
        batch.update(cond_ids=cond_ids, cond_mask=cond_mask)
        return batch


def cmlm_loss(model, batch):
    loss, accuracy = model(batch["cond_ids"], batch["cond_mask"], batch["input_ids"], batch["attention_mask"],
                           batch["labels"], batch["source"])
    return loss, {"mlm_acc": float(accuracy)}


@torch.no_grad()
def evaluate_conditioning(model: CMLMModel, batches: list[dict], shuffle_seed: int | None = None) -> float:
    """Mean CMLM loss over ``batches``; with ``shuffle_seed`` each row is conditioned on another row's
    neighbour (a random derangement within the batch): the loss a model gets from a wrong sentence."""
    was = model.training
    model.eval()
    losses = []
    try:
        for batch in batches:
            source = batch["source"]
            if shuffle_seed is not None:
                n = batch["cond_ids"].shape[0]
                g = torch.Generator().manual_seed(shuffle_seed)
                perm = torch.randperm(n, generator=g)
                while n > 1 and bool((perm == torch.arange(n)).any()):
                    perm = torch.randperm(n, generator=g)
                source = perm[source]
            loss, _ = model(batch["cond_ids"], batch["cond_mask"], batch["input_ids"], batch["attention_mask"],
                            batch["labels"], source)
            losses.append(float(loss))
    finally:
        model.train(was)
    return float(np.mean(losses))


# ----------------------------------------------------------------------------- recipe


CMLM_MASKING = tuple(m for m in MASKING if m != "pmi")  # target sentences are masked without a PMI vocabulary


@recipe_config
class CMLMConfig(RecipeConfig):
    corpus: list[str] = option(help="JSONL with sentence lists (corpus_sentences.jsonl), BEIR folders or text files "
                                    "(paragraphs of 2+ sentences)")
    output_dir: str = option(help="output folder (model in OUT/model)", flag="--out")
    model: str = option("minilm", help="model folder (HF BERT layout) or 'minilm'")
    num_vectors: int = option(15, help="N conditioning vectors the sentence vector is projected to")
    masking: str = option("random", choices=CMLM_MASKING, help="masking of the target sentence")
    budget: float = option(0.15, help="share of the target's word pieces masked")
    max_length: int = option(64, help="word pieces per sentence, [CLS]/[SEP] included")
    both_directions: bool = option(False, help="also predict the first sentence from the second")
    max_groups: int | None = option(None, help="paragraphs/abstracts to read")
    tie_head: bool = option(True, help="tie the MLM head to the input embeddings")
    init_std: float = option(1.0, help="projection init (for unit-norm sentence vectors)")
    train: TrainConfig = loop(lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self):
        if isinstance(self.corpus, (str, Path)):
            self.corpus = [str(self.corpus)]
        check(bool(self.corpus), "corpus", "give at least one corpus file or folder")
        if self.masking not in CMLM_MASKING:
            raise ConfigError(f"CMLM masking must be one of: {', '.join(CMLM_MASKING)} (got {self.masking!r})",
                              field="masking")
        check(self.num_vectors >= 1, "num_vectors", f"must be at least 1, got {self.num_vectors}")
        check(0.0 < self.budget < 1.0, "budget", f"must be in (0, 1), got {self.budget}")
        check(self.max_length >= 3, "max_length", f"must be at least 3, got {self.max_length}")


@dataclass
class CMLMResult(RecipeResult):
    pairs: int = 0

    def summary(self) -> str:
        return f"{self.pairs} sentence pairs; " + super().summary()


def sentence_pairs(groups: list[list[str]], tokenizer, max_length: int, both_directions: bool = False):
    """Tokenized sentences and the (conditioning, target) index pairs of adjacent sentences."""
    flat = [s for g in groups for s in g]
    sentences = tokenize_chunks(flat, tokenizer, max_length=max_length, truncate=True)
    pairs, start = [], 0
    for g in groups:
        for i in range(len(g) - 1):
            pairs.append((start + i, start + i + 1))
            if both_directions:
                pairs.append((start + i + 1, start + i))
        start += len(g)
    return sentences, pairs


class PairDataset:
    def __init__(self, sentences: list[TokenizedText], pairs: list[tuple[int, int]]):
        self.sentences, self.pairs = sentences, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        a, b = self.pairs[i]
        return self.sentences[a], self.sentences[b]


def build_cmlm_model(model: str | Path, num_vectors: int = 15, tie: bool = True, init_std: float = 1.0) -> CMLMModel:
    sentence = SentenceEncoder.from_pretrained(model)
    head = load_mlm_head(model, sentence.encoder)
    if head is None:
        c = sentence.encoder.config
        head = MLMHead(c.hidden_size, c.vocab_size, tie_to=sentence.encoder.embeddings.word if tie else None,
                       layer_norm_eps=c.layer_norm_eps)
    return CMLMModel(sentence, head, num_vectors=num_vectors, init_std=init_std)


@register("pretrain cmlm", CMLMConfig, help="conditional MLM: sentence vectors that predict the next sentence's tokens")
def run_cmlm(config: CMLMConfig, callbacks: Sequence = (), stop_after: int | None = None) -> CMLMResult:
    """CMLM pre-training of ``config.model`` on adjacent sentences of ``config.corpus``.

    Saves the sentence encoder (HF + sentence-transformers layout) to ``<output_dir>/model`` with the
    MLM head in ``model/mlm_head`` and the projection in ``model/cmlm_projection.safetensors``.
    ``stop_after`` ends the run early as if killed (for resume tests); nothing is saved then but checkpoints.
    """
    torch.manual_seed(config.train.seed)  # the fresh projection (and head) start the same in every run of a config
    model = build_cmlm_model(config.model, config.num_vectors, config.tie_head, config.init_std)
    tokenizer = model.sentence.tokenizer
    groups = read_sentence_groups(config.corpus, max_groups=config.max_groups)
    sentences, pairs = sentence_pairs(groups, tokenizer, config.max_length, config.both_directions)
    logger.info(f"cmlm: {len(groups)} paragraphs, {len(sentences)} sentences, {len(pairs)} adjacent pairs")
    masking = build_masking(config.masking, MaskingConfig(budget=config.budget))
    collate = CMLMCollate(masking, SpecialTokens.from_tokenizer(tokenizer))
    state = train(model, PairDataset(sentences, pairs), collate, cmlm_loss, config.loop_config("cmlm"),
                  callbacks=callbacks, stop_after=stop_after)
    out = Path(config.output_dir)
    done = finished(state)
    if done and state.rank == 0:
        model.to("cpu")
        model.sentence.save_pretrained(out / "model")
        save_mlm_head(model.head, out / "model" / HEAD_FOLDER)
        with atomic_open(out / "model" / "cmlm_projection.safetensors", "wb") as f:
            f.write(save({k: v.contiguous() for k, v in model.projection.state_dict().items()}))
    return CMLMResult(out, out / "model" if done else None, state.step, read_metrics(out), pairs=len(pairs))
