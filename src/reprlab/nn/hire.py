"""HIRE: a hidden-representation extractor over all layers, fused with the last layer.

Yang and Zhao, "Deepening Hidden Representations from Pre-trained Language Models"
(arXiv:1911.01940; an ICLR 2021 submission). No official code was released.

Fine-tuning usually reads only the last layer. HIRE adds (1) an *extractor* that scores every
layer's hidden states with a bidirectional GRU and takes their importance-weighted sum
``M = sum_j alpha_j H_j`` (``alpha = softmax_j`` of a score of the GRU summary of ``H_j``, per
example), the representation complementary to the last layer; and (2) a *fusion* of ``M`` with
the last layer ``H_L``: ``[H_L; M; H_L - M; H_L * M]`` -> linear -> bidirectional GRU.

Here HIRE is a pooling (``POOLING["hire"]``, ``needs_hidden_states = True``): :meth:`token_states`
gives the fused (B, T, H) token states (what a reader's span head reads) and ``forward`` pools
them (mean over the real tokens, or the first token) into one vector per text (what a retriever
reads). One addition of ours: with ``residual=True`` (the default) the fusion output is added to
``H_L`` through a zero-initialised projection, so a pretrained retriever starts exactly where it
was (``residual=False`` is the paper's plain fusion).

>>> hire = HIRE(hidden_size=32, num_layers=2)
>>> states = tuple(torch.randn(3, 6, 32) for _ in range(3))     # embeddings + 2 layers
>>> hire(states[-1], torch.ones(3, 6, dtype=torch.bool), states).shape
torch.Size([3, 32])
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from reprlab.errors import ConfigError, ModelLoadError
from reprlab.nn.pooling import POOLING

HIRE_FOLDER = "hire"


def masked_bigru(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A bidirectional GRU over the first ``lengths[b]`` steps of each row; padding outputs are 0."""
    T = x.size(1)
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    return out  # (N, T, 2 * gru.hidden_size)


class HIRE(nn.Module):
    """HIRE extractor + fusion, pooled into one vector per text.

    Args:
        hidden_size: the encoder width ``H`` (must be even: the fusion BiGRU has H/2 per direction).
        num_layers: the encoder's layer count; the extractor reads layers 1..L (plus the embedding
            output with ``include_embeddings=True``).
        gru_size: hidden size per direction of the extractor's scoring GRU (default H // 4).
        pool: ``mean`` over real tokens or ``cls`` (first token) of the fused states.
        residual: fused = H_L + proj(fusion), proj zero-initialised (ours; see the module docstring).
        dropout: on the fusion features.
    """

    registry_name = "hire"
    needs_hidden_states = True

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        gru_size: int | None = None,
        pool: str = "mean",
        residual: bool = True,
        include_embeddings: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        self._build(hidden_size, num_layers, gru_size, pool, residual, include_embeddings, dropout)

    def _build(self, hidden_size, num_layers, gru_size, pool, residual, include_embeddings, dropout):
        if hidden_size % 2:
            raise ConfigError(f"HIRE needs an even hidden_size (BiGRU halves), got {hidden_size}")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"unknown HIRE pool {pool!r}; choose mean or cls")
        H = hidden_size
        self.config = dict(hidden_size=H, num_layers=num_layers, gru_size=gru_size or max(1, H // 4), pool=pool,
                           residual=residual, include_embeddings=include_embeddings, dropout=dropout)
        g = self.config["gru_size"]
        self.extractor = nn.GRU(H, g, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * g, 1)
        self.fuse_in = nn.Linear(4 * H, H)
        self.fuse_gru = nn.GRU(H, H // 2, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.fuse_out = nn.Linear(H, H) if residual else None
        if residual:
            nn.init.zeros_(self.fuse_out.weight)
            nn.init.zeros_(self.fuse_out.bias)

    def _layers(self, hidden_states) -> tuple[torch.Tensor, ...]:
        if hidden_states is None:
            raise ConfigError("HIRE needs all hidden states: call the encoder with output_hidden_states=True")
        return tuple(hidden_states if self.config["include_embeddings"] else hidden_states[1:])

    @staticmethod
    def _lengths(mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)
        positions = torch.arange(mask.size(1), device=mask.device)[None]
        if not torch.equal(mask.bool(), positions < lengths[:, None]):
            raise ConfigError("HIRE reads text left to right: the attention mask must be right-padded (1s then 0s)")
        return lengths.clamp_min(1)

    def extract(self, hidden_states, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The complementary representation M (B, T, H) and the layer weights alpha (B, L)."""
        layers = self._layers(hidden_states)
        L = len(layers)
        B, T, H = layers[-1].shape
        stacked = torch.stack(layers, dim=0)  # (L, B, T, H)
        lengths = self._lengths(mask)
        summary = masked_bigru(self.extractor, stacked.reshape(L * B, T, H), lengths.repeat(L))  # (L*B, T, 2g)
        m = mask[None, :, :, None].to(summary.dtype).expand(L, B, T, 1).reshape(L * B, T, 1)
        pooled = (summary * m).sum(1) / m.sum(1).clamp_min(1.0)  # (L*B, 2g)
        alpha = self.score(pooled).view(L, B).softmax(dim=0)  # (L, B): importance of each layer
        M = (alpha[:, :, None, None] * stacked).sum(0)  # (B, T, H)
        return M, alpha.T

    def token_states(self, last_hidden_state: torch.Tensor, mask: torch.Tensor, hidden_states) -> torch.Tensor:
        """Fused token states (B, T, H): the extractor's M fused with the last layer."""
        M, _ = self.extract(hidden_states, mask)
        last = last_hidden_state
        features = torch.cat([last, M, last - M, last * M], dim=-1)  # (B, T, 4H)
        fused = masked_bigru(self.fuse_gru, torch.relu(self.fuse_in(self.dropout(features))), self._lengths(mask))
        return last + self.fuse_out(fused) if self.fuse_out is not None else fused  # (B, T, H)

    def forward(self, last_hidden_state: torch.Tensor, mask: torch.Tensor, hidden_states=None) -> torch.Tensor:
        states = self.token_states(last_hidden_state, mask, hidden_states)
        if self.config["pool"] == "cls":
            return states[:, 0]
        m = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)

    # -- persistence (SentenceEncoder.save_pretrained / from_pretrained) --------------------------

    def save_extra(self, folder: str | Path) -> None:
        """Write ``hire/config.json`` + ``hire/model.safetensors`` into a model folder."""
        from safetensors.torch import save_file

        sub = Path(folder) / HIRE_FOLDER
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(sub / "model.safetensors"), metadata={"format": "pt"})

    def load_extra(self, folder: str | Path) -> None:
        """Read what :meth:`save_extra` wrote (rebuilding the modules if the saved sizes differ)."""
        from safetensors.torch import load_file

        sub = Path(folder) / HIRE_FOLDER
        if not (sub / "config.json").is_file() or not (sub / "model.safetensors").is_file():
            marker = Path(folder) / "reprlab_sentence.json"
            if not (marker.is_file() and "hire" in marker.read_text()):  # HIRE asked for on a plain model
                warnings.warn(f"{folder} has no HIRE weights: the HIRE pooling starts freshly initialised",
                              stacklevel=3)
                return
            raise ModelLoadError(f"{folder} says its pooling is 'hire' but has no {HIRE_FOLDER}/config.json "
                                 f"and {HIRE_FOLDER}/model.safetensors")
        try:
            config = json.loads((sub / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{sub / 'config.json'}: not valid JSON ({exc.msg})") from exc
        if config != self.config:
            device = next(self.parameters()).device
            self._build(**config)
            self.to(device)
        try:
            self.load_state_dict(load_file(str(sub / "model.safetensors"), device=str(next(self.parameters()).device)))
        except RuntimeError as exc:
            raise ModelLoadError(f"{sub / 'model.safetensors'} does not match {sub / 'config.json'}: {exc}") from exc

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


POOLING["hire"] = HIRE
