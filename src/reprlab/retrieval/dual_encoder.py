"""The dual encoder (bi-encoder) that dense-retrieval recipes train.

One :class:`~reprlab.encoder.SentenceEncoder` for queries and passages (shared towers, as in
sentence-transformers and ANCE) or two (separate towers, as in DPR, Karpukhin et al. 2020).
Shared towers save in the sentence-transformers layout, so the result loads in
sentence-transformers and MTEB and evaluates with ``reprlab evaluate --retriever DIR``; separate
towers save ``query/`` and ``passage/`` sub-folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from reprlab.encoder import SentenceEncoder
from reprlab.io import atomic_dir


class DualEncoder(nn.Module):
    def __init__(self, query_encoder: SentenceEncoder, passage_encoder: SentenceEncoder | None = None):
        super().__init__()
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder  # None = shared towers

    @property
    def shared(self) -> bool:
        return self.passage_encoder is None

    @property
    def passages(self) -> SentenceEncoder:
        return self.query_encoder if self.passage_encoder is None else self.passage_encoder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, shared: bool = True, **kwargs) -> "DualEncoder":
        path = Path(str(name_or_path))
        if (path / "query").is_dir() and (path / "passage").is_dir():
            return cls(SentenceEncoder.from_pretrained(path / "query", **kwargs),
                       SentenceEncoder.from_pretrained(path / "passage", **kwargs))
        query = SentenceEncoder.from_pretrained(name_or_path, **kwargs)
        return cls(query, None if shared else SentenceEncoder.from_pretrained(name_or_path, **kwargs))

    def forward(self, queries: dict[str, torch.Tensor], passages: dict[str, torch.Tensor]):
        """(B, H) query vectors and (N, H) passage vectors from tokenized batches."""
        q = self.query_encoder(queries["input_ids"], queries["attention_mask"])
        p = self.passages(passages["input_ids"], passages["attention_mask"])
        return q, p

    def save_pretrained(self, path: str | Path) -> None:
        if self.shared:
            self.query_encoder.save_pretrained(path)
            return
        with atomic_dir(path) as tmp:
            self.query_encoder.save_pretrained(tmp / "query")
            self.passage_encoder.save_pretrained(tmp / "passage")
            (tmp / "dual_encoder.json").write_text(json.dumps({"towers": "separate"}))

    def retriever_parts(self) -> tuple[SentenceEncoder, SentenceEncoder | None]:
        """(query model, passage model or None) for :class:`~reprlab.retrieval.dense.DenseRetriever`."""
        return self.query_encoder, self.passage_encoder

