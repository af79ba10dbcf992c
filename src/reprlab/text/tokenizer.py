"""Tokenizer: the HF ``tokenizers`` library behind a small batch-encoding API.

Reads a model folder's ``tokenizer.json`` and gives the same ids as ``transformers``'
fast tokenizer for that model. Batches come back padded as torch tensors, with the word ids
(for whole-word and span masking), character offsets (for answer spans) and sequence ids
(question vs context) when asked for.

>>> tok = Tokenizer.from_pretrained("minilm")                          # doctest: +SKIP
>>> batch = tok(["a short text", "another one"], max_length=16)       # doctest: +SKIP
>>> batch["input_ids"].shape                                           # doctest: +SKIP
torch.Size([2, 5])
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import Encoding
from tokenizers import Tokenizer as _HFTokenizer

from reprlab.errors import ModelLoadError, ReprlabError
from reprlab.hub import resolve_model_path

_TRUNCATION_LOCK = threading.Lock()  # encode_truncated: one truncation setting at a time

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@dataclass
class Batch:
    """A padded batch. Tensors are (B, T); ``word_ids``/``sequence_ids`` use -1 where None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    offsets: torch.Tensor | None = None  # (B, T, 2) character spans; (0, 0) for special tokens
    word_ids: torch.Tensor | None = None
    sequence_ids: torch.Tensor | None = None
    overflow_to_sample: torch.Tensor | None = None  # (B,) source text index of each window
    encodings: list[Encoding] | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


class Tokenizer:
    """Batch encoding over a ``tokenizers.Tokenizer``.

    ``__call__(texts, pairs=None, max_length=None, truncation="longest_first", stride=0,
    return_overflowing=False, return_offsets=False, return_word_ids=False)`` returns a
    :class:`Batch` padded to the longest sequence of the batch.
    """

    def __init__(self, tokenizer: _HFTokenizer, model_max_length: int = 512, source: Path | None = None):
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self.model_max_length = model_max_length
        self._warned_clamp = False
        self.source = source
        vocab = tokenizer.get_vocab()

        def token_id(*names):
            for n in names:
                if n in vocab:
                    return vocab[n]
            return None

        self.pad_id = token_id("[PAD]", "<pad>")
        self.cls_id = token_id("[CLS]", "<s>")
        self.sep_id = token_id("[SEP]", "</s>")
        self.mask_id = token_id("[MASK]", "<mask>")
        self.unk_id = token_id("[UNK]", "<unk>")
        if self.pad_id is None:
            self.pad_id = 0
        self.special_ids = sorted(
            {i for i in (self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id) if i is not None}
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "Tokenizer":
        folder = resolve_model_path(name_or_path)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(
                f"{folder} has no tokenizer.json; save the tokenizer with the model "
                "(transformers: tokenizer.save_pretrained(dir) with a fast tokenizer)"
            )
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot be read as a HF tokenizers file: {exc}") from exc
        max_len = 512
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text())
                if isinstance(cfg.get("model_max_length"), int) and cfg["model_max_length"] < 1_000_000:
                    max_len = cfg["model_max_length"]
            except json.JSONDecodeError as exc:
                raise ModelLoadError(f"{cfg_path}: not valid JSON ({exc})") from exc
        return cls(tok, model_max_length=max_len, source=folder)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def save(self, folder: str | Path) -> None:
        """Copy the tokenizer files into ``folder`` (the caller makes the folder write atomic)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.source is not None:
            for name in TOKENIZER_FILES:
                if (self.source / name).is_file():
                    shutil.copyfile(self.source / name, folder / name)
        else:
            self._tok.save(str(folder / "tokenizer.json"))

    def encode_truncated(self, texts: Sequence[str], max_length: int) -> list[Encoding]:
        """Unpadded encodings (with special tokens) of at most ``max_length`` tokens. Safe to call from
        several threads at once: the truncation is a setting of the shared tokenizer, set and reset under a lock."""
        with _TRUNCATION_LOCK:
            self._tok.enable_truncation(max_length)
            try:
                return self._tok.encode_batch(list(texts))
            finally:
                self._tok.no_truncation()

    def encode_raw(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Encoding]:
        """Untruncated, unpadded encodings (with special tokens)."""
        if pairs is None:
            return self._tok.encode_batch(list(texts))
        return self._tok.encode_batch(list(zip(texts, pairs)))

    def __call__(
        self,
        texts: Sequence[str] | str,
        pairs: Sequence[str] | None = None,
        max_length: int | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
        return_overflowing: bool = False,
        return_offsets: bool = False,
        return_word_ids: bool = False,
        return_encodings: bool = False,
    ) -> Batch:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ReprlabError("no texts to tokenize: the list is empty")
        if pairs is not None and len(pairs) != len(texts):
            raise ReprlabError(f"{len(texts)} texts but {len(pairs)} pair texts")
        if max_length is not None and max_length > self.model_max_length and not getattr(self, "_warned_clamp", False):
            self._warned_clamp = True  # once per tokenizer: a loop over batches would repeat it
            logging.getLogger("reprlab").warning(
                "max_length %d is longer than the model's %d positions: inputs are cut at %d tokens",
                max_length, self.model_max_length, self.model_max_length)
        max_length = min(max_length or self.model_max_length, self.model_max_length)
        with _TRUNCATION_LOCK:  # the truncation is a setting of the shared tokenizer (see encode_truncated)
            self._tok.enable_truncation(max_length, stride=stride, strategy=truncation)
            try:
                encodings = self.encode_raw(texts, pairs)
            finally:
                self._tok.no_truncation()
        sample = list(range(len(encodings)))
        if return_overflowing:
            flat, sample = [], []
            for i, enc in enumerate(encodings):
                for e in [enc, *enc.overflowing]:
                    flat.append(e)
                    sample.append(i)
            encodings = flat
        batch = self.pad(encodings, return_offsets=return_offsets, return_word_ids=return_word_ids)
        if return_overflowing:
            batch.overflow_to_sample = torch.tensor(sample)
        if return_encodings:
            batch.encodings = encodings
        return batch

    def pad(self, encodings: Sequence[Encoding], return_offsets: bool = False, return_word_ids: bool = False) -> Batch:
        B = len(encodings)
        T = max(len(e.ids) for e in encodings)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        types = np.zeros((B, T), dtype=np.int64)
        offsets = np.zeros((B, T, 2), dtype=np.int64) if return_offsets else None
        words = np.full((B, T), -1, dtype=np.int64) if return_word_ids else None
        seqs = np.full((B, T), -1, dtype=np.int64) if return_offsets else None
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = e.attention_mask
            types[i, :n] = e.type_ids
            if return_offsets:
                offsets[i, :n] = e.offsets
                seqs[i, :n] = [-1 if s is None else s for s in e.sequence_ids]
            if return_word_ids:
                words[i, :n] = [-1 if w is None else w for w in e.word_ids]
        as_t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        return Batch(as_t(ids), as_t(mask), as_t(types), as_t(offsets), as_t(words), as_t(seqs))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()
