"""Pre-training inputs: texts to words and to word-aligned chunks of word pieces.

The texts themselves are read by :mod:`reprlab.text.corpus` (``read_texts`` for MLM,
``read_sentence_groups`` for CMLM's adjacent-sentence pairs).

Words and word pieces. :func:`split_words` splits a text into the words of a model's tokenizer
(its normaliser and pre-tokeniser: lower-cased, accents stripped, punctuation split off for BERT),
and :func:`tokenize_chunks` turns texts into word-aligned chunks of at most ``max_length`` word
pieces with ``[CLS]``/``[SEP]``, keeping each piece's word index and the word strings, which the
whole-word, span and PMI masking units need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from reprlab.errors import ReprlabError

_SIMPLE_WORDS = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------- words and pieces


def split_words(text: str, tokenizer=None) -> list[str]:
    """The words of ``text`` as the tokenizer sees them (normalised, pre-tokenised).

    Without a tokenizer: lower-cased ``\\w+`` runs and single punctuation marks.
    """
    if tokenizer is None:
        return _SIMPLE_WORDS.findall(text.lower())
    hf = tokenizer._tok  # the wrapped `tokenizers.Tokenizer`
    if hf.normalizer is not None:
        text = hf.normalizer.normalize_str(text)
    if hf.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in hf.pre_tokenizer.pre_tokenize_str(text)]


@dataclass
class TokenizedText:
    """One chunk: word pieces with ``[CLS]``/``[SEP]`` and each piece's word (-1 for special tokens)."""

    ids: np.ndarray  # (T,) int64
    word_ids: np.ndarray  # (T,) int64, index into ``words``
    words: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_chunks(
    texts: Sequence[str],
    tokenizer,
    max_length: int = 128,
    min_tokens: int = 4,
    batch_size: int = 512,
    truncate: bool = False,
) -> list[TokenizedText]:
    """Split each text into chunks of at most ``max_length`` pieces (specials included) at word boundaries.

    A word longer than a whole chunk is cut. Chunks with fewer than ``min_tokens`` word pieces are
    dropped. Every chunk is ``[CLS] pieces [SEP]``. With ``truncate=True`` each text gives exactly one
    chunk, its first (``min_tokens`` is ignored), so that outputs line up with inputs.
    """
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ReprlabError("the tokenizer has no [CLS]/[SEP] tokens; MLM pre-training needs a BERT-style tokenizer")
    room = max_length - 2
    if room < 1:
        raise ReprlabError(f"max_length {max_length} leaves no room for text between [CLS] and [SEP]")
    chunks: list[TokenizedText] = []
    for start in range(0, len(texts), batch_size):
        word_lists = [split_words(t, tokenizer) for t in texts[start : start + batch_size]]
        word_lists = [w if w else ["."] for w in word_lists]
        encodings = tokenizer._tok.encode_batch(word_lists, is_pretokenized=True, add_special_tokens=False)
        for words, enc in zip(word_lists, encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            wids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
            pos = 0
            while pos < len(ids):
                end = min(pos + room, len(ids))
                if end < len(ids) and wids[end] == wids[end - 1]:  # do not cut a word in two
                    back = end - 1
                    while back > pos and wids[back - 1] == wids[end]:
                        back -= 1
                    if back > pos:
                        end = back
                piece_ids, piece_words = ids[pos:end], wids[pos:end]
                pos = len(ids) if truncate else end
                if len(piece_ids) < (1 if truncate else min_tokens):
                    continue
                first = int(piece_words.min())
                local = piece_words - first
                chunks.append(TokenizedText(
                    ids=np.concatenate([[tokenizer.cls_id], piece_ids, [tokenizer.sep_id]]).astype(np.int64),
                    word_ids=np.concatenate([[-1], local, [-1]]).astype(np.int64),
                    words=list(words[first : int(piece_words.max()) + 1]),
                ))
    return chunks
