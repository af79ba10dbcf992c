"""Masked-language-model pre-training (continued, domain-adaptive) on the shared training loop.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
NAACL 2019; continued pre-training on the target domain as in Gururangan et al., "Don't Stop
Pretraining", ACL 2020. An MLM head (:class:`reprlab.nn.embeddings.MLMHead`: tied to the input
embeddings, or decoupled and resized as in RemBERT) is put on a pretrained encoder (a fresh one when
the checkpoint has none: all-MiniLM-L6-v2 ships without), the corpus is cut into word-aligned chunks,
and each batch is masked by a scheme of :data:`reprlab.pretrain.masking.MASKING` (random, whole-word,
span, PMI or fully-explored). The loss is softmax cross-entropy, or (``--loss quad``) the Quad
objective of Saunshi et al. (ICLR 2021, :mod:`reprlab.nn.quad`), whose optimal logits are the
next-word distribution itself. The result is saved as a sentence-encoder folder (HF BERT layout +
sentence-transformers files, with the pooling of the starting model) that retrieval fine-tuning reads,
and the head beside it in ``mlm_head/``.

>>> result = run_mlm(MLMConfig(corpus=["scifact/beir"], output_dir="runs/mlm", masking="wwm",
...                            max_steps=200))                          # doctest: +SKIP
>>> result.model_dir                                                    # doctest: +SKIP
PosixPath('runs/mlm/model')
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from reprlab.encoder import Encoder, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.hub import read_sentence_config, resolve_model_path
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.nn.embeddings import MLMHead
from reprlab.pretrain.corpus import TokenizedText, tokenize_chunks
from reprlab.pretrain.masking import IGNORE_INDEX, MASKING, MaskingConfig, SpecialTokens, build_masking
from reprlab.nn.quad import LOSSES, quad_loss_from_logits
from reprlab.text.corpus import read_texts
from reprlab.text.tokenizer import Tokenizer
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    check_choice,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

logger = logging.getLogger("reprlab")

HEAD_FOLDER = "mlm_head"
# BertForMaskedLM's names, so that a head can be merged back into an HF checkpoint
_HEAD_NAMES = {
    "dense.weight": "cls.predictions.transform.dense.weight",
    "dense.bias": "cls.predictions.transform.dense.bias",
    "norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "decoder": "cls.predictions.decoder.weight",
    "bias": "cls.predictions.bias",
}


# ----------------------------------------------------------------------------- model


class MLMModel(nn.Module):
    """Encoder + MLM head. ``forward(input_ids, attention_mask, labels)`` -> (loss, accuracy).

    The head runs on the selected positions only (``labels != -100``): the vocabulary projection,
    the costly part, is skipped for the other 85% (:meth:`full_logits` is the plain reference).
    ``loss`` is ``"ce"`` (softmax cross-entropy) or ``"quad"`` (:func:`reprlab.nn.quad.quad_loss_from_logits`).
    """

    def __init__(self, encoder: Encoder, head: MLMHead, loss: str = "ce"):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"unknown MLM loss {loss!r}; choose one of: {', '.join(LOSSES)}", field="loss")
        self.encoder = encoder
        self.head = head
        self.loss = loss

    @classmethod
    def build(cls, encoder: Encoder, tie: bool = True, output_embedding_size: int | None = None) -> "MLMModel":
        c = encoder.config
        head = MLMHead(c.hidden_size, c.vocab_size, output_embedding_size=output_embedding_size,
                       tie_to=encoder.embeddings.word if tie else None, layer_norm_eps=c.layer_norm_eps)
        return cls(encoder, head)

    def full_logits(self, input_ids, attention_mask) -> torch.Tensor:
        """Logits at every position (B, T, V): the reference for the selected-positions path."""
        return self.head(self.encoder(input_ids, attention_mask).last_hidden_state)

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.encoder(input_ids, attention_mask).last_hidden_state  # (B, T, H)
        selected = labels != IGNORE_INDEX  # (B, T)
        if not bool(selected.any()):
            zero = hidden.sum() * 0.0  # keeps the graph (DDP needs every rank to backward)
            return zero, zero.detach()
        logits = self.head(hidden[selected])  # (M, V) for the M selected positions
        targets = labels[selected]
        if self.loss == "quad":
            loss = quad_loss_from_logits(logits, targets)
        else:
            loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(-1) == targets).float().mean().detach()
        return loss, accuracy


def save_mlm_head(head: MLMHead, folder: str | Path) -> None:
    """The head's weights (BertForMaskedLM names) + ``config.json``, written atomically."""
    state = {_HEAD_NAMES[k]: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", {
            "tied": head.tied, "hidden_size": head.dense.in_features, "vocab_size": head.bias.numel(),
            "output_embedding_size": head.dense.out_features, "layer_norm_eps": head.norm.eps,
        })


def load_mlm_head(folder: str | Path, encoder: Encoder) -> MLMHead | None:
    """The MLM head stored with a model: ``<folder>/mlm_head/`` (ours) or ``cls.predictions.*`` weights
    in ``model.safetensors`` (an HF BertForMaskedLM checkpoint); None when there is none."""
    folder = resolve_model_path(folder)
    ours = folder / HEAD_FOLDER
    if (ours / "config.json").is_file():
        try:
            tied = bool(json.loads((ours / "config.json").read_text())["tied"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{ours / 'config.json'}: not an MLM head config ({exc})") from exc
        path = ours / "model.safetensors"
    else:
        path = folder / "model.safetensors"
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if "cls.predictions.transform.dense.weight" not in keys:
                return None
            tied = "cls.predictions.decoder.weight" not in keys  # HF drops the shared copy when tied
            for name in ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"):
                if not tied and name in keys:
                    tied = torch.equal(f.get_tensor("cls.predictions.decoder.weight"), f.get_tensor(name))
    wanted = {v: k for k, v in _HEAD_NAMES.items()}
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key in wanted and not (tied and wanted[key] == "decoder"):
                state[wanted[key]] = f.get_tensor(key).float()
    c = encoder.config
    out_size = state["dense.weight"].shape[0]
    head = MLMHead(c.hidden_size, c.vocab_size, output_embedding_size=None if tied else out_size,
                   tie_to=encoder.embeddings.word if tied else None, layer_norm_eps=c.layer_norm_eps)
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: MLM head weights do not fit (missing {missing}, unexpected {unexpected})")
    return head


# ----------------------------------------------------------------------------- recipe


@recipe_config
class MLMConfig(RecipeConfig):
    corpus: list[str] = option(help="text files, JSONL files or BEIR folders")
    output_dir: str = option(help="output folder (model in OUT/model)", flag="--out")
    model: str = option("minilm", help="model folder (HF BERT layout) or 'minilm'")
    masking: str = option("random", choices=tuple(MASKING), help="masking scheme")
    budget: float = option(0.15, help="share of word pieces chosen for prediction")
    mask_prob: float = option(0.8, help="chosen pieces replaced by [MASK]")
    random_prob: float = option(0.1, help="chosen pieces replaced by a random piece")
    span_p: float = option(0.2, help="span masking: geometric parameter of span lengths")
    span_max: int = option(10, help="span masking: longest span in words")
    fe_copies: int | None = option(None, help="fully-explored: copies per text (default: round(1 / budget))")
    fe_layout: str = option("random", help="fully-explored: how the copies split the positions")
    pmi_vocab: str | None = option(None, help="vocabulary from `reprlab pmi-vocab` for --masking pmi "
                                              "(default: built from the corpus)")
    pmi_min_count: int = option(10, help="PMI vocabulary built here: n-grams seen fewer times are left out")
    pmi_size: int = option(10_000, help="PMI vocabulary built here: number of n-grams")
    max_length: int = option(128, help="word pieces per chunk, [CLS]/[SEP] included")
    max_texts: int | None = option(None, help="read at most this many texts")
    tie_head: bool = option(True, help="tie the MLM head to the input embeddings (--no-tie-head: decoupled)")
    output_embedding_size: int | None = option(None, help="decoupled head only: its width (RemBERT)")
    head_warmup_steps: int = option(0, help="train only the head (encoder frozen) for the first steps")
    loss: str = option("ce", choices=LOSSES, help="ce: softmax cross-entropy; quad: the Quad objective "
                                                  "(Saunshi et al. 2021), whose optimal logits are p(word | context)")
    # batch_size counts texts: fully-explored makes K rows of each
    train: TrainConfig = loop(lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self):
        if isinstance(self.corpus, (str, Path)):
            self.corpus = [str(self.corpus)]
        check(bool(self.corpus), "corpus", "give at least one text file, JSONL file or BEIR folder")
        check_choice(self.masking, tuple(MASKING), "masking")
        check(self.output_embedding_size is None or not self.tie_head, "output_embedding_size",
              "needs a decoupled head (tie_head=False, --no-tie-head)")
        check(self.pmi_vocab is None or self.masking == "pmi", "pmi_vocab",
              f"is read only with --masking pmi (got masking {self.masking!r})")
        check(0.0 < self.budget < 1.0, "budget", f"must be in (0, 1), got {self.budget}")
        check(self.max_length >= 3, "max_length", f"must be at least 3, got {self.max_length}")
        check(self.head_warmup_steps >= 0, "head_warmup_steps", f"must be >= 0, got {self.head_warmup_steps}")
        check(self.train.max_steps is None or self.head_warmup_steps < self.train.max_steps, "head_warmup_steps",
              f"must be fewer than --max-steps {self.train.max_steps} (the encoder would never train), got "
              f"{self.head_warmup_steps}")
        check(self.output_embedding_size is None or 1 <= self.output_embedding_size <= 16384, "output_embedding_size",
              f"must be 1..16384 (a vocabulary x size matrix), got {self.output_embedding_size}")
        for name in ("pmi_min_count", "pmi_size"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        check(self.fe_copies is None or self.fe_copies <= self.max_length - 2, "fe_copies",
              f"must be at most the {self.max_length - 2} positions of a chunk (--max-length minus [CLS]/[SEP]), "
              f"got {self.fe_copies}")
        check_choice(self.loss, LOSSES, "loss")
        self.masking_config()  # its checks name the fields (mask_prob, span_p, ...), before any work

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(budget=self.budget, mask_prob=self.mask_prob, random_prob=self.random_prob,
                             span_p=self.span_p, span_max=self.span_max, fe_copies=self.fe_copies,
                             fe_layout=self.fe_layout)

    def train_config(self) -> TrainConfig:
        run = self.loop_config("mlm")
        run.find_unused_parameters = self.head_warmup_steps > 0
        return run


@dataclass
class MLMResult(RecipeResult):
    """``model_dir``: the sentence-encoder folder (HF layout + sentence-transformers files)."""

    head_dir: Path | None = None
    chunks: int = 0
    pmi_vocab: Path | None = None

    def summary(self) -> str:
        return f"{self.chunks} chunks; " + super().summary()


class HeadWarmup:
    """Freezes the encoder (and so tied output embeddings) while ``state.step < steps``: a fresh head
    first learns to read the pretrained encoder, whose representations its random gradients would
    otherwise disturb. Restored correctly on resume (it only looks at the step)."""

    def __init__(self, steps: int):
        self.steps = steps

    def _apply(self, state, model) -> None:
        model.encoder.requires_grad_(state.step >= self.steps)
        if model.encoder.pooler is not None:  # never trained
            model.encoder.pooler.requires_grad_(False)

    def on_train_start(self, state, model) -> None:
        self._apply(state, model)

    def on_step_end(self, state, model, metrics) -> None:
        self._apply(state, model)


class MLMCollate:
    """``collate(items, rng)`` for the training loop: masks a list of :class:`TokenizedText`."""

    def __init__(self, masking, special: SpecialTokens):
        self.masking = masking
        self.special = special

    def __call__(self, items: list[TokenizedText], rng: np.random.Generator) -> dict:
        batch = self.masking.collate(items, self.special, rng)
        batch.pop("source")
        return batch


def mlm_loss(model, batch):
    loss, accuracy = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    return loss, {"mlm_acc": float(accuracy)}


def load_mlm_model(model: str | Path, tie: bool = True, output_embedding_size: int | None = None) -> MLMModel:
    """Encoder + its stored MLM head, or a fresh head when the checkpoint has none."""
    encoder = Encoder.from_pretrained(model)
    head = load_mlm_head(model, encoder)
    if head is None:
        logger.info(f"{model} has no MLM head: adding a fresh {'tied' if tie else 'decoupled'} one")
        return MLMModel.build(encoder, tie=tie, output_embedding_size=output_embedding_size)
    return MLMModel(encoder, head)


def prepare_pmi_vocab(config: MLMConfig, texts: list[str], tokenizer):
    from reprlab.pretrain.pmi import PMIConfig, PMIVocab, build_pmi_vocab

    if config.pmi_vocab:
        return PMIVocab.load(config.pmi_vocab), Path(config.pmi_vocab)
    path = Path(config.output_dir) / "pmi_vocab.json"
    if path.is_file():
        return PMIVocab.load(path), path
    vocab = build_pmi_vocab(texts, PMIConfig(min_count=config.pmi_min_count, size=config.pmi_size), tokenizer=tokenizer)
    vocab.save(path)
    return vocab, path


@register("pretrain mlm", MLMConfig, help="(continued) MLM pre-training with a masking scheme")
def run_mlm(config: MLMConfig, callbacks: Sequence = (), stop_after: int | None = None) -> MLMResult:
    """Continue MLM pre-training of ``config.model`` on ``config.corpus``; save encoder + head.

    The encoder goes to ``<output_dir>/model`` as a sentence-encoder folder with the starting model's
    pooling, the head to ``<output_dir>/model/mlm_head``. ``stop_after`` ends the run early as if
    killed (for resume tests): then only the checkpoints are written.
    """
    folder = resolve_model_path(config.model)
    tokenizer = Tokenizer.from_pretrained(folder)
    texts = read_texts(config.corpus, max_texts=config.max_texts)
    vocab, vocab_path = (None, None)
    if config.masking == "pmi":
        vocab, vocab_path = prepare_pmi_vocab(config, texts, tokenizer)
    masking = build_masking(config.masking, config.masking_config(), pmi_vocab=vocab)
    chunks = tokenize_chunks(texts, tokenizer, max_length=config.max_length)
    logger.info(f"mlm: {len(texts)} texts -> {len(chunks)} chunks of <= {config.max_length} pieces; "
                f"masking {config.masking!r}")
    torch.manual_seed(config.train.seed)  # a fresh head is initialised the same way in every run of a config
    model = load_mlm_model(folder, tie=config.tie_head, output_embedding_size=config.output_embedding_size)
    model.loss = config.loss
    warmup = [HeadWarmup(config.head_warmup_steps)] if config.head_warmup_steps else []
    state = train(model, chunks, MLMCollate(masking, SpecialTokens.from_tokenizer(tokenizer)), mlm_loss,
                  config.train_config(), callbacks=[*warmup, *callbacks], stop_after=stop_after)
    out = Path(config.output_dir)
    st = read_sentence_config(folder)
    model.to("cpu")
    sentence = SentenceEncoder(model.encoder, tokenizer, pooling=st["pooling"], normalize=st["normalize"],
                               max_length=st["max_length"])
    done = finished(state)
    if state.rank == 0 and done:
        sentence.save_pretrained(out / "model")
        save_mlm_head(model.head, out / "model" / HEAD_FOLDER)
    return MLMResult(out, out / "model" if done else None, state.step, read_metrics(out),
                     head_dir=out / "model" / HEAD_FOLDER if done else None, chunks=len(chunks), pmi_vocab=vocab_path)
