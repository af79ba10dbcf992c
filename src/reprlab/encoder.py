"""EncoderConfig and Encoder: the one transformer stack every reprlab method runs on.

A BERT-style post-LayerNorm encoder (Devlin et al., 2019) that reads pretrained BERT-family
checkpoints (all-MiniLM-L6-v2 by default) and whose attention comes from the registry in
``reprlab.nn.attention``. The forward pass is split into ``embed`` and a plain loop over
``layers`` so that methods which act between layers (memory tokens, Block Skim, distillation
taps) drive the same modules instead of forking them.

>>> enc = Encoder(EncoderConfig.tiny())
>>> out = enc(torch.tensor([[2, 5, 7, 3]]), torch.tensor([[1, 1, 1, 1]]), output_hidden_states=True)
>>> out.last_hidden_state.shape, len(out.hidden_states)
(torch.Size([1, 4, 32]), 3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError, config_from_dict
from reprlab.hub import (
    load_config,
    load_encoder,
    read_sentence_config,
    resolve_model_path,
    save_encoder,
    save_sentence_encoder,
)
from reprlab.nn.attention import ATTENTION
from reprlab.nn.memory import MEMORY_MODES, MemoryTokens
from reprlab.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from reprlab.text.tokenizer import Batch

PRECISIONS = ("fp32", "bf16", "auto")
BACKENDS = ("torch", "onnx", "onnx-int8")  # SentenceEncoder.from_pretrained(backend=...); onnx: reprlab.onnx
ENCODE_PENDING_ROWS = 4096  # SentenceEncoder.encode: vectors kept on the device between copies to the host

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class EncoderConfig:
    """Sizes and choices of an :class:`Encoder`. Field names are ours; ``hub`` maps HF's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    attention: str = "softmax"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    # Per-layer attention names (length num_layers) overriding ``attention``, e.g. Cluster-Former
    # layers in the middle and sliding-window layers elsewhere; None = ``attention`` everywhere.
    layer_attention: list[str] | None = None
    # Per-layer sizes after structured pruning (``reprlab.distill.approx``); None = the uniform sizes.
    # layer_heads[i] heads of hidden_size // num_heads each (0 = layer i has no attention block);
    # layer_intermediate[i] FFN width (0 = layer i has no FFN block). LayerNorms are always kept.
    layer_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None
    add_pooler: bool = False
    # Memory Transformer (``reprlab.nn.memory``): learned slots prepended to the tokens; mode
    # "tokens" (MemTransformer), "bottleneck" (MemBottleneck) or "ctrl" (MemCtrl). 0 = no memory.
    num_memory_tokens: int = 0
    memory_mode: str = "tokens"
    # Decoupled input embeddings (RemBERT, ``reprlab.nn.embeddings``): word/position/type tables of
    # this width, projected to hidden_size after the LayerNorm; None = hidden_size (no projection).
    embedding_size: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unknown hidden_act {self.hidden_act!r}; choose one of: {', '.join(ACTIVATIONS)}")
        for name in self.layer_attention or [self.attention]:
            ATTENTION[name]  # raises ConfigError listing the choices
        if self.layer_attention is not None and len(self.layer_attention) != self.num_layers:
            raise ConfigError(
                f"layer_attention has {len(self.layer_attention)} entries but num_layers is {self.num_layers}"
            )
        for name in ("layer_heads", "layer_intermediate"):
            sizes = getattr(self, name)
            if sizes is not None and (len(sizes) != self.num_layers or any(int(n) < 0 for n in sizes)):
                raise ConfigError(f"{name} must hold {self.num_layers} non-negative sizes (one per layer), got {sizes}")
        if self.num_memory_tokens < 0 or self.memory_mode not in MEMORY_MODES:
            raise ConfigError(f"num_memory_tokens must be >= 0 and memory_mode one of {', '.join(MEMORY_MODES)}; "
                              f"got {self.num_memory_tokens}, {self.memory_mode!r}")
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ConfigError(f"embedding_size must be a positive width or None, got {self.embedding_size}")
        for i, n in enumerate(self.layer_heads or []):
            if n not in (0, self.num_heads) and self.attention_for(i) != "softmax":
                raise ConfigError(f"layer_heads[{i}] = {n}: a partial head count needs attention 'softmax', "
                                  f"not {self.attention_for(i)!r}")

    @classmethod
    def tiny(cls, **overrides) -> "EncoderConfig":
        """A 2-layer, 32-wide encoder for tests (random init, seconds to train)."""
        sizes = dict(vocab_size=1000, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                     max_position_embeddings=128)
        return cls(**{**sizes, **overrides})

    @classmethod
    def minilm_l6(cls, **overrides) -> "EncoderConfig":
        """The all-MiniLM-L6-v2 sizes: 6 layers, 384 wide, 12 heads, 1536 FFN, 30,522 word pieces."""
        return cls(**overrides)

    def attention_for(self, layer: int) -> str:
        return self.layer_attention[layer] if self.layer_attention else self.attention

    def heads_for(self, layer: int) -> int:
        return self.num_heads if self.layer_heads is None else int(self.layer_heads[layer])

    def intermediate_for(self, layer: int) -> int:
        return self.intermediate_size if self.layer_intermediate is None else int(self.layer_intermediate[layer])

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "EncoderConfig":
        """The config of a model folder (HF ``config.json``) or of ``minilm``."""
        return load_config(cls, name_or_path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        return config_from_dict(cls, d)


class EncoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, T, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # num_layers + 1 entries, embeddings first
    attentions: tuple[torch.Tensor, ...] | None = None  # num_layers entries of (B, nh, T, T)
    # With memory tokens: the final memory slots (B, m, H). last_hidden_state and hidden_states
    # then hold the text tokens only; attentions cover [mem; seq], (B, nh, m+T, m+T).
    memory_states: torch.Tensor | None = None


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (+ a projection to the hidden
    size when ``config.embedding_size`` decouples the input embedding width, as in RemBERT)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        H = config.hidden_size
        E = config.embedding_size or H
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, E)
        self.token_type = nn.Embedding(config.type_vocab_size, E)
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.project = nn.Linear(E, H) if E != H else None
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.max_positions:
            raise ConfigError(
                f"input has {T} tokens but the encoder has {self.max_positions} positions; truncate to max_length"
            )
        positions = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None]
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        x = self.dropout(self.norm(x))  # (B, T, E)
        return x if self.project is None else self.project(x)  # (B, T, H)


class FeedForward(nn.Module):
    def __init__(self, config: EncoderConfig, width: int | None = None):
        super().__init__()
        width = config.intermediate_size if width is None else width
        self.up = nn.Linear(config.hidden_size, width)
        self.down = nn.Linear(width, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + ffn(x)).

    A pruned layer (``config.layer_heads`` / ``layer_intermediate``) may have fewer heads, a narrower
    FFN, or no attention / FFN block at all (``attn`` / ``ffn`` is None): an absent block adds
    nothing, so x = LN(x), as in AxFormer's pruned BERT layers.
    """

    def __init__(self, config: EncoderConfig, index: int):
        super().__init__()
        heads = config.heads_for(index)
        self.attn = None
        if heads:
            attention_cls = ATTENTION[config.attention_for(index)]
            kwargs = dict(config.attention_kwargs)
            if heads != config.num_heads:  # fewer heads of the full head size
                kwargs["head_size"] = config.hidden_size // config.num_heads
            self.attn = attention_cls(
                hidden_size=config.hidden_size,
                num_heads=heads,
                dropout=config.attention_dropout,
                max_positions=config.max_position_embeddings + config.num_memory_tokens,
                **kwargs,
            )
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        width = config.intermediate_for(index)
        self.ffn = FeedForward(config, width) if width else None
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False):
        weights = None
        if self.attn is None:
            x = self.attn_norm(x)
        else:
            a, weights = self.attn(x, mask, output_attentions=output_attentions)
            x = self.attn_norm(x + self.dropout(a))
        if self.ffn is None:
            x = self.ffn_norm(x)
        else:
            x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, weights


class Pooler(nn.Module):
    """BERT's pooler (dense + tanh over [CLS]); kept so checkpoints that have one round-trip."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Encoder(nn.Module):
    """The transformer stack: ``embed``, then ``layers`` in order.

    ``forward(input_ids, attention_mask, output_hidden_states=False, output_attentions=False)``
    returns an :class:`EncoderOutput`. ``attention_mask`` is (B, T) with 1 for real tokens.
    """

    config_class = EncoderConfig  # what hub.load_encoder builds from a folder's config.json

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_layers))
        self.memory = None
        if config.num_memory_tokens:
            self.memory = MemoryTokens(
                config.num_memory_tokens, config.memory_mode, config.hidden_size, config.num_heads,
                config.intermediate_size, config.num_layers, ACTIVATIONS[config.hidden_act], config.layer_norm_eps,
                config.hidden_dropout, config.attention_dropout,
            )
        self.pooler = Pooler(config.hidden_size) if config.add_pooler else None
        self.apply(self._init_weights)
        if self.pooler is not None:  # kept for exact round trips; no reprlab method trains it
            self.pooler.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.embeddings(input_ids, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        x = self.embed(input_ids, token_type_ids)  # (B, T, H)
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        m = 0
        if self.memory is not None:
            x, mask = self.memory.prepend(x, mask)  # (B, m+T, H): memory slots first
            m = self.memory.num_tokens
        for i, layer in enumerate(self.layers):
            if self.memory is None:
                x, weights = layer(x, mask, output_attentions=output_attentions)
            else:
                x, weights = self.memory.run_layer(i, layer, x, mask, output_attentions=output_attentions)
            if output_hidden_states:
                hidden_states.append(x[:, m:])
            if output_attentions:
                attentions.append(weights)
        return EncoderOutput(
            last_hidden_state=x[:, m:],
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            memory_states=x[:, :m] if self.memory is not None else None,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, dtype: torch.dtype | None = None, **overrides) -> "Encoder":
        """Load an HF BERT-family folder (``config.json`` + ``model.safetensors``) or the name ``minilm``.

        Half-precision checkpoints load as float32 unless ``dtype`` is given. ``overrides`` change
        config fields (e.g. ``attention="synthesizer-dense"``); weights the new layout lacks are
        initialised fresh and listed in a warning.
        """
        return load_encoder(cls, name_or_path, dtype=dtype, **overrides)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` in the HF BERT layout (atomically)."""
        save_encoder(self, path)


class SentenceEncoder(nn.Module):
    """Texts to vectors: tokenizer + :class:`Encoder` + pooling (+ L2 normalisation).

    The sentence-transformers recipe (Reimers & Gurevych, 2019) on our encoder: ``forward`` is the
    differentiable path used in training, ``encode`` the inference path that sorts texts by length,
    shows a progress bar, runs under ``torch.inference_mode`` and returns float32 numpy.

    >>> model = SentenceEncoder.from_pretrained("minilm")        # doctest: +SKIP
    >>> model.encode(["dense retrieval", "sparse retrieval"]).shape  # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: "Tokenizer",
        pooling: str | nn.Module = "mean",
        normalize: bool = True,
        max_length: int = 256,
    ):
        super().__init__()
        from reprlab.nn.pooling import build_pooling

        self.encoder = encoder
        self.tokenizer = tokenizer
        if isinstance(pooling, str):
            pooling = build_pooling(pooling, encoder.config.hidden_size, encoder.config.num_layers)
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.unpadded = True  # encode() skips the padding where it can (inference_vectors); False: padded forward

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def tokenize(self, texts: list[str], max_length: int | None = None) -> "Batch":
        return self.tokenizer(texts, max_length=max_length or self.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        wants_all = getattr(self.pooling, "needs_hidden_states", False)
        out = self.encoder(input_ids, attention_mask, output_hidden_states=wants_all, token_type_ids=token_type_ids)
        vectors = self.pooling(out.last_hidden_state, attention_mask.bool(), out.hidden_states)  # (B, H)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def inference_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``forward``'s vectors for inference (what ``encode`` runs): padding-free (``reprlab.nn.unpadded``:
        the per-token matrix products skip the padding) when ``self.unpadded`` is on, the batch has padding and
        the stack is a plain :class:`Encoder` that the path supports; else the padded ``forward``."""
        from reprlab.nn.unpadded import supports_unpadded, unpadded_forward

        if (self.unpadded and not self.training and type(self.encoder) is Encoder
                and not getattr(self.pooling, "needs_hidden_states", False)
                and not bool(attention_mask.all()) and supports_unpadded(self.encoder)):
            last = unpadded_forward(self.encoder, input_ids, attention_mask)  # (B, T, H), padding rows 0
            vectors = self.pooling(last, attention_mask.bool(), None)  # (B, H)
            return F.normalize(vectors, dim=-1) if self.normalize else vectors
        return self(input_ids, attention_mask)

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """Differentiable vectors of ``texts`` (training path)."""
        batch = self.tokenize(texts, max_length).to(self.device)
        return self(batch.input_ids, batch.attention_mask)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool | None = None,
        precision: str = "fp32",
        desc: str = "encode",
    ):
        """Vectors of ``texts`` as float32 numpy (N, dim), in the order given.

        Texts are tokenized once, sorted by token length and batched, so each batch is padded only
        to its own longest text. ``precision="bf16"`` runs the matrix products in bfloat16
        (autocast; LayerNorm and softmax stay in float32); ``"auto"`` chooses bf16 where it is native
        (a GPU that supports it, a CPU with AVX512-BF16 or AMX) and fp32 elsewhere, and logs the choice.
        """
        import numpy as np

        from reprlab.errors import ReprlabError
        from reprlab.logs import progress, resolve_precision

        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ReprlabError("no texts to encode: the list is empty")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}",
                              field="precision")
        max_length = min(max_length or self.max_length, self.encoder.config.max_position_embeddings)
        tok = self.tokenizer
        encodings = tok.encode_truncated(texts, max_length)
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        device = self.device
        precision = resolve_precision(precision, device.type)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        # Vectors stay on the device until ENCODE_PENDING_ROWS are pending: copying each batch back to the
        # host would make the host wait for the GPU after every batch instead of queueing the next one.
        pending: list[tuple[np.ndarray, torch.Tensor]] = []

        def flush():
            if pending:
                rows = np.concatenate([i for i, _ in pending])
                out[rows] = torch.cat([v for _, v in pending]).cpu().numpy()
                pending.clear()

        try:
            with progress(total=len(texts), show=show_progress, desc=desc, unit="text") as bar, autocast:
                for start in range(0, len(texts), batch_size):
                    idx = order[start : start + batch_size]
                    batch = tok.pad([encodings[i] for i in idx]).to(device)
                    pending.append((idx, self.inference_vectors(batch.input_ids, batch.attention_mask).float()))
                    if sum(len(i) for i, _ in pending) >= ENCODE_PENDING_ROWS:  # a few hundred batches at most
                        flush()
                    bar.update(len(idx))
                flush()
        finally:
            self.train(was_training)
        return out

    def quantized(self) -> "SentenceEncoder":
        """A copy for CPU inference whose Linear layers run int8 dynamic quantization.

        Weights are quantized per output channel once, activations per batch at run time
        (``torch.ao.quantization.quantize_dynamic``); embeddings, LayerNorm and softmax stay float32.
        """
        import copy

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        model = copy.deepcopy(self).cpu().eval()
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "torch",
        **overrides,
    ) -> "SentenceEncoder":
        """A model folder (HF layout, with or without sentence-transformers files) or ``minilm``.

        Pooling, normalisation and max length come from the sentence-transformers files when the
        folder has them (mean, normalised, 256 for all-MiniLM-L6-v2); arguments override them.
        ``backend="onnx"`` / ``"onnx-int8"`` opens an ONNX export of the model instead (a folder written by
        ``reprlab export onnx``, or a model folder with one in ``onnx/``): a
        :class:`reprlab.onnx.OnnxSentenceEncoder`, whose ``encode`` is this class's.
        """
        if backend != "torch":
            if backend not in BACKENDS:
                raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}", field="backend")
            from reprlab.onnx import load_onnx_encoder

            return load_onnx_encoder(name_or_path, int8=backend == "onnx-int8", max_length=max_length)
        folder = resolve_model_path(name_or_path)
        st = read_sentence_config(folder)
        encoder = load_encoder(Encoder, folder, dtype=dtype, **overrides)
        model = cls(
            encoder,
            Tokenizer.from_pretrained(folder),
            pooling=pooling or st["pooling"],
            normalize=st["normalize"] if normalize is None else normalize,
            max_length=max_length or st["max_length"],
        )
        if hasattr(model.pooling, "load_extra"):
            model.pooling.load_extra(folder)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """HF BERT layout + tokenizer + sentence-transformers files, written atomically."""
        save_sentence_encoder(self, path)
