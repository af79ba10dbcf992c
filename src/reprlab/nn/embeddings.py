"""Output embeddings for masked-language modelling: tied, or decoupled and resized.

BERT's MLM head (Devlin et al., 2019) transforms the final hidden state (dense + activation +
LayerNorm) and scores the vocabulary with the *input* embedding matrix (tied weights). Chung et
al., "Rethinking Embedding Coupling in Pre-trained Language Models" (ICLR 2021; RemBERT) show
that decoupling the two is better: the output embedding gets its own matrix, whose size
``output_embedding_size`` may differ from the hidden size (larger output embeddings help the
transfer of the layers below; they are dropped after pre-training, so they cost nothing at
fine-tuning time).

>>> head = MLMHead(hidden_size=32, vocab_size=100, output_embedding_size=64)   # decoupled, resized
>>> head(torch.zeros(2, 5, 32)).shape
torch.Size([2, 5, 100])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError


class MLMHead(nn.Module):
    """Masked-LM prediction head.

    Tied (``tie_to=encoder.embeddings.word``): logits = LN(act(W h)) E^T + b, with E the input
    embeddings. Decoupled: logits = LN(act(W h)) O^T + b with its own O of width
    ``output_embedding_size`` (default: the hidden size).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        output_embedding_size: int | None = None,
        tie_to: nn.Embedding | None = None,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        if tie_to is not None:
            if output_embedding_size not in (None, tie_to.embedding_dim):
                raise ConfigError("a tied MLM head uses the input embedding width; drop output_embedding_size")
            output_embedding_size = tie_to.embedding_dim
            if tie_to.num_embeddings != vocab_size:
                raise ConfigError(f"tied embeddings have {tie_to.num_embeddings} rows but vocab_size is {vocab_size}")
        E = output_embedding_size or hidden_size
        self.dense = nn.Linear(hidden_size, E)
        self.norm = nn.LayerNorm(E, eps=layer_norm_eps)
        self.tied = tie_to is not None
        self._tied_embedding = [tie_to]  # a list: not registered as a submodule, no duplicate parameters
        self.decoder = None if self.tied else nn.Parameter(torch.empty(vocab_size, E).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    @property
    def output_embeddings(self) -> torch.Tensor:
        return self._tied_embedding[0].weight if self.tied else self.decoder

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (..., E)
        return F.linear(h, self.output_embeddings, self.bias)  # (..., V)

    def extra_repr(self) -> str:
        return f"tied={self.tied}, output_embedding_size={self.dense.out_features}"


def embedding_parameters(
    vocab_size: int,
    hidden_size: int,
    embedding_size: int | None = None,
    max_positions: int = 512,
    type_vocab_size: int = 2,
    mlm_head: str | None = "tied",
    output_embedding_size: int | None = None,
) -> dict[str, int]:
    """Closed-form parameter counts of the input and output embeddings (RemBERT's accounting).

    Input side (the encoder's ``Embeddings``): word, position and token-type tables of width
    ``embedding_size`` (default ``hidden_size``), their LayerNorm, and the ``embedding_size ->
    hidden_size`` projection when the widths differ. Output side (:class:`MLMHead`): the transform
    (dense + LayerNorm), the vocabulary bias and, when ``decoupled``, the output embedding matrix.
    Chung et al.'s point in numbers: shrinking ``embedding_size`` moves parameters out of the
    input embeddings, and a large decoupled output embedding costs nothing after pre-training
    (``output`` is dropped with the head).

    >>> embedding_parameters(30522, 384)["input"]        # all-MiniLM-L6-v2
    11918592
    """
    if mlm_head not in (None, "tied", "decoupled"):
        raise ConfigError(f"unknown mlm_head {mlm_head!r}; choose tied, decoupled or None")
    E = embedding_size or hidden_size
    tables = (vocab_size + max_positions + type_vocab_size) * E
    projection = (E * hidden_size + hidden_size) if E != hidden_size else 0
    counts = {"input_tables": tables, "input_norm": 2 * E, "projection": projection}
    counts["input"] = tables + 2 * E + projection
    if mlm_head is None:
        counts["output"] = 0
    else:
        O = E if mlm_head == "tied" else (output_embedding_size or hidden_size)
        transform = hidden_size * O + O + 2 * O
        counts["output"] = transform + vocab_size + (vocab_size * O if mlm_head == "decoupled" else 0)
    return counts
