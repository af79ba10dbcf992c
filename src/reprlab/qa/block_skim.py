"""Block Skim: drop context blocks that cannot hold the answer, from the hidden states of later layers.

Guan, Li, Lin, Zhu, Leng, Guo, "Block-Skim: Efficient Question Answering for Transformer"
(ICLR 2021 submission "Block Skim Transformer for Efficient Question Answering"; AAAI 2022),
https://github.com/ChandlerGuan/blockskim. The context is cut into blocks of ``block_size`` tokens.
After a chosen layer, a small CNN reads that layer's attention map restricted to each block's
diagonal sub-matrix (heads as channels) and predicts keep/skip; blocks predicted "skip" are removed
from the sequence, so the following layers run on fewer tokens. The predictor is trained jointly
with the span loss: a class-weighted cross-entropy in which blocks overlapping the answer are "keep".

This module drives the :class:`~reprlab.encoder.Encoder`'s own modules (``embed``, then each of
``layers``), asking a layer for its attention weights only where a predictor sits. At inference
(no labels, eval mode) the skipped context tokens are physically gathered out of the hidden states
(question and special tokens are always kept); the start/end logits are scattered back to the full
window, with ``-inf`` at removed positions, so decoding never picks them. Training runs the full
sequence (as in the paper): the skim loss is an auxiliary objective.

>>> reader = BlockSkimReader.from_pretrained("runs/blockskim/model")          # doctest: +SKIP
>>> reader.skim_config.threshold = 0.3   # skip a block when P(keep) < 0.3; 0 keeps everything
>>> reader.answer("Who wrote it?", long_context)[0].text                       # doctest: +SKIP

Training is the reader recipe with Block Skim on (``reprlab train reader --block-skim``,
:func:`reprlab.qa.recipe.run_block_skim_training`); :func:`reprlab.qa.reader.load_reader` opens a
saved folder as a :class:`BlockSkimReader` (this module registers its ``block_skim.json``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reprlab.encoder import Encoder
from reprlab.errors import ConfigError, ModelLoadError, config_from_dict
from reprlab.qa.reader import READER_KINDS, Reader, ReaderConfig, ReaderOutput, span_loss
from reprlab.text.tokenizer import Tokenizer
from reprlab.train.recipe import check, check_choice, option

FEATURES = ("diagonal", "diagonal+question")
SKIM_CONFIG_FILE = "block_skim.json"
SKIM_WEIGHTS_FILE = "block_skim.safetensors"


@dataclass
class BlockSkimConfig:
    """Where and how Block Skim decides.

    ``skim_layers``: 0-based layers whose attention map feeds a predictor; the decision removes
    blocks from that layer's output, before the next layer. ``threshold``: a block is skipped when
    its predicted P(keep) is below it (0 keeps everything). ``keep_weight``: class weight of the
    "keep" (answer) blocks in the skim loss; ``skim_weight``: the skim loss's weight next to the
    span loss; ``predictor_lr_scale``: the predictors' learning rate over the reader's (they start
    from random weights while the encoder is pretrained).

    ``features``: ``"diagonal"`` is the paper's predictor input (each block's diagonal attention
    sub-matrix). ``"diagonal+question"`` (our extension) adds, per block token and head, the
    attention it receives from the question side and the attention mass it sends there: with little
    training data the diagonal blocks alone separate answer blocks poorly (BENCHMARKS.md).

    ``freeze_reader`` (our extension): train only the predictors, on a reader that is already
    trained (``model`` = a reader folder) and stays fixed: the encoder and span head get no gradient
    and run in eval mode, the loss is the skim loss alone, and layers after the last skim layer are
    not run. The paper trains predictors jointly with the span loss over SQuAD's 88k questions; with
    ~1,200 questions a joint run ends with predictors near the class prior, while the same predictors
    trained longer on a fixed reader separate answer blocks far better (BENCHMARKS.md). A fixed
    reader also means a threshold of 0 answers exactly as the plain reader does.
    """

    block_size: int = option(32, help="context tokens per block (a multiple of 4)")
    skim_layers: list[int] = option(default_factory=lambda: [1],
                                    help="0-based layers whose attention feeds a predictor")
    threshold: float = option(0.5, help="skip a block when its predicted P(keep) is below this (0 keeps all)")
    skim_weight: float = option(1.0, help="weight of the skim loss next to the span loss")
    keep_weight: float = option(5.0, help="class weight of the answer ('keep') blocks in the skim loss")
    channels: int | None = option(None, help="predictor CNN width (default: the number of heads)")
    features: str = option("diagonal", choices=FEATURES, help="predictor input")
    predictor_lr_scale: float = option(10.0, help="the predictors' learning rate over the reader's")
    freeze_reader: bool = option(False, help="train only the predictors, on a fixed trained reader (--model)")

    def __post_init__(self):
        check_choice(self.features, FEATURES, "features")
        check(self.predictor_lr_scale > 0, "predictor_lr_scale", f"must be > 0, got {self.predictor_lr_scale}")
        check(self.block_size >= 4 and self.block_size % 4 == 0, "block_size",
              f"must be a positive multiple of 4 (two 2x2 poolings), got {self.block_size}")
        check(len(self.skim_layers) > 0, "skim_layers", "is empty: give at least one layer index")
        self.skim_layers = sorted(set(int(i) for i in self.skim_layers))
        check(0.0 <= self.threshold <= 1.0, "threshold", f"must be in [0, 1], got {self.threshold}")
        check(self.keep_weight > 0, "keep_weight", f"must be > 0, got {self.keep_weight}")
        check(self.skim_weight >= 0, "skim_weight", f"must be >= 0, got {self.skim_weight}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BlockSkimConfig":
        return config_from_dict(cls, d)


class SkimPredictor(nn.Module):
    """CNN over one diagonal attention block: (N, heads, bs, bs) -> (N, 2) logits [skip, keep].

    Two 3x3 convolutions (heads in, ``channels`` wide), each followed by GELU and 2x2 average
    pooling, then a linear layer. Inputs are ``log1p`` of attention scaled by the number of keys
    (uniform attention reads log 2 whatever the sequence length). With ``question_features`` a 1-D
    convolution over the block's (N, heads, 2, bs) question-attention features adds its mean and max
    over the block to the linear layer's input.
    """

    def __init__(self, num_heads: int, block_size: int, channels: int | None = None, question_features: bool = False):
        super().__init__()
        c = channels or num_heads
        self.conv1 = nn.Conv2d(num_heads, c, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.question = nn.Conv1d(2 * num_heads, c, kernel_size=3, padding=1) if question_features else None
        self.out = nn.Linear(c * (block_size // 4) ** 2 + (2 * c if question_features else 0), 2)

    def forward(self, blocks: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pool(F.gelu(self.conv1(torch.log1p(blocks))))  # (N, c, bs/2, bs/2)
        x = self.pool(F.gelu(self.conv2(x)))  # (N, c, bs/4, bs/4)
        x = x.flatten(1)
        if self.question is not None:
            q = F.gelu(self.question(torch.log1p(question).flatten(1, 2)))  # (N, c, bs)
            x = torch.cat([x, q.mean(-1), q.amax(-1)], dim=1)
        return self.out(x)  # (N, 2)


def question_attention(weights: torch.Tensor, question: torch.Tensor, n_keys: torch.Tensor) -> torch.Tensor:
    """Per token and head: attention received from the question rows (mean, x n_keys) and attention
    mass sent to the question columns. (B, nh, T, T) -> (B, nh, 2, T)."""
    q = question.to(weights.dtype)
    # two matrix-vector products per head, not two (B, nh, T, T) temporaries
    n_question = q.sum(1).clamp(min=1)[:, None, None]
    received = torch.matmul(q[:, None, None, :], weights).squeeze(2) / n_question  # (B, nh, T)
    sent = torch.matmul(weights, q[:, None, :, None]).squeeze(3)  # (B, nh, T)
    return torch.stack([received * n_keys[:, None, None], sent], dim=2)


def context_blocks(context_mask: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each window's context into blocks counted from its first context token.

    Returns ``block_of`` (B, T): the block of each context token, -1 elsewhere; and ``block_pos``
    (B, nb, bs): the positions of each block's tokens, -1 past the context's end.
    """
    B, T = context_mask.shape
    device = context_mask.device
    has = context_mask.any(1)
    first = torch.where(has, context_mask.int().argmax(1), torch.zeros_like(has, dtype=torch.long))  # (B,)
    rel = torch.arange(T, device=device)[None] - first[:, None]
    block_of = torch.where(context_mask, torch.div(rel, block_size, rounding_mode="floor"), -1)  # (B, T)
    nb = int(block_of.max()) + 1 if bool(has.any()) else 0
    cand = (first[:, None, None] + torch.arange(nb, device=device)[None, :, None] * block_size
            + torch.arange(block_size, device=device)[None, None, :])  # (B, nb, bs)
    inside = cand < T
    is_ctx = context_mask.gather(1, cand.clamp(max=T - 1).view(B, -1)).view(B, nb, block_size)
    block_pos = torch.where(inside & is_ctx, cand, -1)
    return block_of, block_pos


def diagonal_blocks(weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The diagonal sub-matrices of attention maps: (B, nh, Tc, Tc) -> (B, nb, nh, bs, bs).

    ``index`` (B, nb, bs) gives each block's token columns in the current sequence (-1 = absent;
    those rows and columns are zero).
    """
    B = weights.shape[0]
    idx = index.clamp(min=0)  # (B, nb, bs)
    batch = torch.arange(B, device=weights.device)[:, None, None, None]
    # only the B * nb * bs * bs * nh block entries are read, never whole rows
    blocks = weights.permute(0, 2, 3, 1)[batch, idx[:, :, :, None], idx[:, :, None, :]]  # (B, nb, bs, bs, nh)
    ok = index >= 0
    blocks = blocks.masked_fill(~(ok[:, :, :, None] & ok[:, :, None, :])[..., None], 0.0)
    return blocks.permute(0, 1, 4, 2, 3)  # (B, nb, nh, bs, bs)


def block_labels(block_pos: torch.Tensor, start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
    """Skim targets (B, nb): 1 = keep (the block overlaps the answer), 0 = skip, -100 = no such block.

    A window whose target is [CLS] (the answer is not in it) has only "skip" blocks.
    """
    exists = (block_pos >= 0).any(-1)  # (B, nb)
    lo = torch.where(block_pos >= 0, block_pos, torch.iinfo(torch.long).max).amin(-1)  # first position of each block
    hi = block_pos.amax(-1)
    s, e = start_positions[:, None], end_positions[:, None]
    overlap = (lo <= e) & (hi >= s) & (s > 0)
    labels = overlap.long()
    return labels.masked_fill(~exists, -100)


def _compact(x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor):
    """Gather the kept columns of each row to the front (in order); pad rows to the longest."""
    n = keep.sum(1)
    Tn = max(int(n.max()), 1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :Tn]  # (B, Tn): kept columns first
    x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))  # (B, Tn, H)
    pos = pos.gather(1, order)
    mask = torch.arange(Tn, device=x.device)[None] < n[:, None]
    return x, pos, mask


class BlockSkimReader(Reader):
    """A :class:`Reader` with skim predictors after ``skim_config.skim_layers``.

    ``forward`` with span positions (training): the full sequence, span loss + ``skim_weight`` x
    the class-weighted skim loss (averaged over skim layers); with ``freeze_reader``, the skim loss
    alone (empty span logits). Without positions in eval mode: the skimming inference path
    (:meth:`skim_forward`) at ``skim_config.threshold``.
    """

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: Tokenizer,
        config: ReaderConfig | None = None,
        skim: BlockSkimConfig | None = None,
    ):
        super().__init__(encoder, tokenizer, config)
        self.skim_config = skim or BlockSkimConfig()
        n = encoder.config.num_layers
        bad = [i for i in self.skim_config.skim_layers if not 0 <= i < n]
        if bad:
            raise ConfigError(f"skim_layers {bad} out of range: the encoder has layers 0..{n - 1}")
        with_question = self.skim_config.features == "diagonal+question"
        self.predictors = nn.ModuleDict({
            str(i): SkimPredictor(encoder.config.num_heads, self.skim_config.block_size, self.skim_config.channels,
                                  question_features=with_question)
            for i in self.skim_config.skim_layers
        })
        if self.skim_config.freeze_reader:
            self.train(self.training)

    def lr_scale(self, name: str) -> float:
        return self.skim_config.predictor_lr_scale if name.startswith("predictors.") else 1.0

    def train(self, mode: bool = True) -> "BlockSkimReader":
        """With ``freeze_reader`` the encoder and span head stay in eval mode (no dropout) and get no gradient."""
        super().train(mode)
        if self.skim_config.freeze_reader:
            for part in (self.encoder, self.qa_outputs):
                part.eval()
                part.requires_grad_(False)
        return self

    def _block_logits(self, layer: int, weights, pos, mask, block_of, block_pos, T) -> torch.Tensor:
        """Skim logits (B, nb, 2) from one layer's attention over the current columns."""
        B, Tc = pos.shape
        where_now = torch.full((B, T + 1), -1, dtype=torch.long, device=pos.device)
        cols = torch.arange(Tc, device=pos.device).expand(B, Tc)
        where_now.scatter_(1, torch.where(mask, pos, T), cols)  # original position -> current column
        where_now = where_now[:, :T]
        nb, bs = block_pos.shape[1:]
        index = torch.where(block_pos >= 0, where_now.gather(1, block_pos.clamp(min=0).view(B, -1)).view(B, nb, bs), -1)
        n_keys = mask.sum(1).to(weights.dtype)
        blocks = diagonal_blocks(weights, index) * n_keys[:, None, None, None, None]  # (B, nb, nh, bs, bs)
        question = None
        if self.skim_config.features == "diagonal+question":
            is_question = mask & (block_of.gather(1, pos) < 0)  # real tokens outside the context
            feats = question_attention(weights, is_question, n_keys)  # (B, nh, 2, Tc)
            nh = feats.shape[1]
            idx = index.clamp(min=0).view(B, 1, 1, nb * bs).expand(B, nh, 2, nb * bs)
            question = feats.gather(3, idx).view(B, nh, 2, nb, bs) * (index >= 0)[:, None, None].to(feats.dtype)
            question = question.permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B*nb, nh, 2, bs)
        return self.predictors[str(layer)](blocks.flatten(0, 1), question).view(B, nb, 2)

    def skim_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        context_mask: torch.Tensor,
        threshold: float | None = None,
        physical: bool = True,
    ) -> ReaderOutput:
        """The skimming pass. ``physical=False`` is the reference: skipped tokens stay in the tensors but
        are masked out as keys (and their logits set to -inf), which must give the same logits."""
        threshold = self.skim_config.threshold if threshold is None else threshold
        B, T = input_ids.shape
        mask = attention_mask.bool()
        ctx = context_mask.bool() & mask
        block_of, block_pos = context_blocks(ctx, self.skim_config.block_size)
        nb = block_pos.shape[1]
        pos = torch.arange(T, device=input_ids.device).expand(B, T)  # original position of each column
        x = self.encoder.embed(input_ids, token_type_ids)  # (B, T, H)
        lengths, probs = [], []
        for i, layer in enumerate(self.encoder.layers):
            lengths.append(x.shape[1])
            skim_here = str(i) in self.predictors and nb > 0
            x, weights = layer(x, mask, output_attentions=skim_here)
            if not skim_here:
                continue
            keep_prob = self._block_logits(i, weights, pos, mask, block_of, block_pos, T).softmax(-1)[..., 1]  # (B, nb)
            probs.append(keep_prob)
            keep_block = keep_prob >= threshold
            col_block = block_of.gather(1, pos)  # (B, Tc) block of each current column, -1 = not context
            drop = mask & (col_block >= 0) & ~keep_block.gather(1, col_block.clamp(min=0))
            if physical:
                x, pos, mask = _compact(x, pos, mask & ~drop)
            else:
                mask = mask & ~drop
        start, end = self.span_logits(x)  # (B, Tc) each
        target = torch.where(mask, pos, T)  # removed / padding columns go to a spare column
        full = []
        for logits in (start, end):
            out = logits.new_full((B, T + 1), float("-inf"))
            out.scatter_(1, target, logits.masked_fill(~mask, float("-inf")))
            full.append(out[:, :T])
        return ReaderOutput(full[0], full[1], layer_lengths=lengths, keep_probs=probs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> ReaderOutput:
        if context_mask is None:
            raise ConfigError("Block Skim needs context_mask (the tokenizer's sequence ids == 1)")
        if start_positions is None:
            if self.training:
                raise ConfigError("Block Skim in training mode needs start/end positions (call .eval() to infer)")
            return self.skim_forward(input_ids, attention_mask, token_type_ids, context_mask)
        mask = attention_mask.bool()
        block_of, block_pos = context_blocks(context_mask.bool() & mask, self.skim_config.block_size)
        labels = block_labels(block_pos, start_positions, end_positions)  # (B, nb)
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.encoder.embed(input_ids, token_type_ids)
        weight = torch.tensor([1.0, self.skim_config.keep_weight], device=x.device)
        frozen = self.skim_config.freeze_reader
        last = max(int(k) for k in self.predictors)
        skim_losses, hits, answers = [], 0, 0
        for i, layer in enumerate(self.encoder.layers):
            if frozen and i > last:
                break  # nothing after the last predictor is trained
            skim_here = str(i) in self.predictors and block_pos.shape[1] > 0
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                x, weights = layer(x, mask, output_attentions=skim_here)
            if skim_here:
                logits = self._block_logits(i, weights, pos, mask, block_of, block_pos, T).float()  # (B, nb, 2)
                if (labels >= 0).any():
                    skim_losses.append(F.cross_entropy(logits.view(-1, 2), labels.view(-1), weight=weight,
                                                       ignore_index=-100))
                keep = labels == 1
                hits += int((logits.argmax(-1)[keep] == 1).sum())
                answers += int(keep.sum())
        if frozen:  # the skim loss alone; no span logits (the reader is not run to the end)
            start = end = x.new_zeros((B, 0))
            skim = torch.stack(skim_losses).mean() if skim_losses else x.new_zeros((), requires_grad=True)
            loss, metrics = skim, {"skim_loss": skim.item()}
        else:
            start, end = self.span_logits(x)
            qa = span_loss(start, end, attention_mask, start_positions, end_positions)
            skim = torch.stack(skim_losses).mean() if skim_losses else qa.new_zeros(())
            loss = qa + self.skim_config.skim_weight * skim
            metrics = {"qa_loss": qa.item(), "skim_loss": skim.item()}
        if answers:
            metrics["keep_recall"] = hits / answers
        return ReaderOutput(start, end, loss, metrics)

    # -------------------------------------------------------------------------------- persistence

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, config: ReaderConfig | None = None, skim: BlockSkimConfig | None = None,
        dtype: torch.dtype | None = None, **encoder_overrides,
    ) -> "BlockSkimReader":
        """A Block Skim folder, a plain reader folder or an encoder folder / ``minilm`` (predictors fresh).

        ``skim`` overrides the saved Block Skim config (e.g. another threshold); predictors saved for
        the requested layers are loaded, others start fresh.
        """
        from reprlab.hub import resolve_model_path

        folder = resolve_model_path(name_or_path)
        base = Reader.from_pretrained(folder, config, dtype=dtype, **encoder_overrides)
        saved_cfg = folder / SKIM_CONFIG_FILE
        if skim is None and saved_cfg.is_file():
            try:
                skim = BlockSkimConfig.from_dict(json.loads(saved_cfg.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ModelLoadError(f"{saved_cfg}: not a Block Skim config ({exc})") from exc
        model = cls(base.encoder, base.tokenizer, base.config, skim)
        model.qa_outputs.load_state_dict(base.qa_outputs.state_dict())
        weights = folder / SKIM_WEIGHTS_FILE
        if weights.is_file():
            state = load_file(str(weights))
            for name, predictor in model.predictors.items():
                part = {k[len(name) + 1:]: v for k, v in state.items() if k.split(".", 1)[0] == name}
                if part:
                    try:
                        predictor.load_state_dict(part)
                    except RuntimeError as exc:
                        raise ModelLoadError(f"{weights}: predictor {name} does not fit ({exc}); keep the saved "
                                             "block_size and channels") from exc
        if dtype is not None:
            model.to(dtype)
        return model

    def _write_files(self, folder: Path) -> None:
        super()._write_files(folder)
        state = {f"{k}": v.detach().contiguous() for k, v in self.predictors.state_dict().items()}
        save_file(state, str(folder / SKIM_WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / SKIM_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.skim_config), indent=2) + "\n")


READER_KINDS[SKIM_CONFIG_FILE] = BlockSkimReader  # load_reader opens a folder with block_skim.json as Block Skim
