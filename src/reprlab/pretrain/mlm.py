"""Masked-language-model pre-training (continued, domain-adaptive) on the shared training loop.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
NAACL 2019; continued pre-training on the target domain as in Gururangan et al., "Don't Stop
Pretraining", ACL 2020. An MLM head (:class:`reprlab.nn.embeddings.MLMHead`: tied to the input
embeddings, or decoupled and resized as in RemBERT) is put on a pretrained encoder (a fresh one when
the checkpoint has none: all-MiniLM-L6-v2 ships without), the corpus is cut into word-aligned chunks,
and each batch is masked by a scheme of :data:`reprlab.pretrain.masking.MASKING` (random, whole-word,
span, PMI or fully-explored). The result is saved as a sentence-encoder folder (HF BERT layout +
sentence-transformers files, with the pooling of the starting model) that retrieval fine-tuning reads,
and the head beside it in ``mlm_head/``.

>>> result = run_mlm(MLMConfig(corpus=["scifact/beir"], output_dir="runs/mlm", masking="wwm",
...                            max_steps=200))                          # doctest: +SKIP
>>> result.model_dir                                                    # doctest: +SKIP
PosixPath('runs/mlm/model')
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from reprlab.encoder import Encoder, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.nn.embeddings import MLMHead
from reprlab.pretrain.corpus import TokenizedText, read_texts, tokenize_chunks
from reprlab.pretrain.masking import IGNORE_INDEX, MASKING, MaskingConfig, SpecialTokens, build_masking
from reprlab.train import TrainConfig, train

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
    """

    def __init__(self, encoder: Encoder, head: MLMHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

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
    from reprlab.hub import resolve_model_path

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


@dataclass
class MLMConfig:
    corpus: list[str]  # text files, JSONL files or BEIR folders
    output_dir: str
    model: str = "minilm"  # a model folder (HF BERT layout) or "minilm"
    masking: str = "random"  # a key of MASKING
    budget: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    span_p: float = 0.2
    span_max: int = 10
    fe_copies: int | None = None  # fully-explored: copies per text (None = round(1 / budget))
    fe_layout: str = "random"
    pmi_vocab: str | None = None  # a saved PMI vocabulary; None with masking="pmi" builds one from the corpus
    pmi_min_count: int = 10
    pmi_size: int = 10_000
    max_length: int = 128  # word pieces per chunk, [CLS]/[SEP] included
    max_texts: int | None = None
    tie_head: bool = True  # tied to the input embeddings, or decoupled
    output_embedding_size: int | None = None  # decoupled head only: its width (RemBERT)
    head_warmup_steps: int = 0  # train only the head (encoder and tied embeddings frozen) for the first steps
    # training (the shared loop's TrainConfig); batch_size counts texts: fully-explored makes K rows each
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    bf16: bool = False
    checkpoint_every: int = 0
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 10

    def __post_init__(self):
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]
        if self.masking not in MASKING:
            raise ConfigError(f"unknown masking {self.masking!r}; choose one of: {', '.join(MASKING)}")
        if self.output_embedding_size is not None and self.tie_head:
            raise ConfigError("output_embedding_size needs a decoupled head (tie_head=False)")

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(budget=self.budget, mask_prob=self.mask_prob, random_prob=self.random_prob,
                             span_p=self.span_p, span_max=self.span_max, fe_copies=self.fe_copies,
                             fe_layout=self.fe_layout)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            output_dir=self.output_dir, max_steps=self.max_steps, epochs=self.epochs, batch_size=self.batch_size,
            grad_accum=self.grad_accum, lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
            schedule=self.schedule, bf16=self.bf16, checkpoint_every=self.checkpoint_every, resume=self.resume,
            seed=self.seed, device=self.device, log_every=self.log_every,
            find_unused_parameters=self.head_warmup_steps > 0, extra={"recipe": "mlm", **dataclasses.asdict(self)},
        )


@dataclass
class MLMResult:
    model_dir: Path  # sentence-encoder folder (HF layout + sentence-transformers files)
    head_dir: Path
    steps: int
    final_loss: float
    chunks: int
    pmi_vocab: Path | None = None
    metrics: list[dict] = field(default_factory=list)


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


def read_metrics(path: Path) -> list[dict]:
    """The training loop's metric records (one JSON object per logged step)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def run_mlm(config: MLMConfig, stop_after: int | None = None) -> MLMResult:
    """Continue MLM pre-training of ``config.model`` on ``config.corpus``; save encoder + head.

    The encoder goes to ``<output_dir>/model`` as a sentence-encoder folder with the starting model's
    pooling, the head to ``<output_dir>/model/mlm_head``. ``stop_after`` ends the run early as if
    killed (for resume tests): then only the checkpoints are written.
    """
    from reprlab.hub import read_sentence_config, resolve_model_path
    from reprlab.text.tokenizer import Tokenizer

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
    torch.manual_seed(config.seed)  # a fresh head is initialised the same way in every run of a config
    model = load_mlm_model(folder, tie=config.tie_head, output_embedding_size=config.output_embedding_size)
    callbacks = [HeadWarmup(config.head_warmup_steps)] if config.head_warmup_steps else []
    state = train(model, chunks, MLMCollate(masking, SpecialTokens.from_tokenizer(tokenizer)), mlm_loss,
                  config.train_config(), callbacks=callbacks, stop_after=stop_after)
    out = Path(config.output_dir)
    st = read_sentence_config(folder)
    model.to("cpu")
    sentence = SentenceEncoder(model.encoder, tokenizer, pooling=st["pooling"], normalize=st["normalize"],
                               max_length=st["max_length"])
    if state.rank == 0 and state.step >= state.total_steps:
        sentence.save_pretrained(out / "model")
        save_mlm_head(model.head, out / "model" / HEAD_FOLDER)
    return MLMResult(model_dir=out / "model", head_dir=out / "model" / HEAD_FOLDER, steps=state.step,
                     final_loss=state.last_loss, chunks=len(chunks), pmi_vocab=vocab_path,
                     metrics=read_metrics(out / "metrics.jsonl"))
