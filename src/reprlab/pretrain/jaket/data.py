"""JAKET's batches: linked texts tokenized with offsets, mentions mapped to tokens, tokens and entities masked,
triples and entities sampled for the knowledge module's two losses.

A mention is given in characters; its tokens are those of the text's own sequence whose character span
overlaps it (the tokenizer's offsets). Each mention is masked with probability ``entity_mask_prob``:
all its tokens become [MASK], it gets no KM vector, and its entity is the target of the masked-entity
loss. Other mentions' tokens get their entity's KM vector (``mention_entity``). Of the remaining
(non-special, non-mention) tokens a share ``mlm_budget`` is chosen for the masked-token loss, BERT's
80/10/10 way. All random choices come from the loop's ``rng``, so a resumed run draws the same.
"""

from __future__ import annotations

import numpy as np
import torch

from reprlab.pretrain.jaket.model import IGNORE
from reprlab.pretrain.masking import SpecialTokens, random_tokens
from reprlab.text.kg import LinkedText
from reprlab.text.tokenizer import Tokenizer


def mention_tokens(offsets: np.ndarray, sequence_ids: np.ndarray, start: int, end: int) -> np.ndarray:
    """Token positions of the text whose character span overlaps [start, end) (specials excluded)."""
    return np.flatnonzero((sequence_ids == 0) & (offsets[:, 0] < end) & (offsets[:, 1] > start)
                          & (offsets[:, 1] > offsets[:, 0]))


class JaketCollate:
    """``collate(items, rng)`` for the training loop over :class:`~reprlab.text.kg.LinkedText` items.

    Besides the text tensors, each batch carries ``rel_triples`` (``relation_batch`` training triples
    for the relation-type loss) with their edge ids in ``drop_edges`` (removed from the graph for the
    step, both directions), and ``cat_entities``/``cat_labels`` (``category_batch`` entities with a
    known category for the category loss).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, edges: np.ndarray, categories: dict[int, int],
                 mlm_budget: float = 0.15, entity_mask_prob: float = 0.3, relation_batch: int = 64,
                 category_batch: int = 64):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.edges = np.asarray(edges).reshape(-1, 3)
        self.cat_entities = np.array(sorted(categories), dtype=np.int64)
        self.cat_labels = np.array([categories[e] for e in self.cat_entities], dtype=np.int64)
        self.mlm_budget, self.entity_mask_prob = mlm_budget, entity_mask_prob
        self.relation_batch, self.category_batch = relation_batch, category_batch
        self.special = SpecialTokens.from_tokenizer(tokenizer)

    def __call__(self, items: list[LinkedText], rng: np.random.Generator) -> dict:
        b = self.tokenizer([it.text for it in items], max_length=self.max_length, return_offsets=True)
        ids = b.input_ids.numpy().copy()
        offsets, seqs = b.offsets.numpy(), b.sequence_ids.numpy()
        B, T = ids.shape
        mention = np.full((B, T), -1, dtype=np.int64)
        labels = np.full((B, T), IGNORE, dtype=np.int64)
        spans = []
        for row, it in enumerate(items):
            taken = np.zeros(T, dtype=bool)
            for start, end, entity in it.mentions:
                tok = mention_tokens(offsets[row], seqs[row], start, end)
                if len(tok) == 0 or taken[tok].any():  # cut off by truncation, or sharing a token
                    continue
                taken[tok] = True
                if rng.random() < self.entity_mask_prob:
                    ids[row, tok] = self.tokenizer.mask_id
                    spans.append((row, int(tok[0]), int(tok[-1]) + 1, int(entity)))
                else:
                    mention[row, tok] = entity
            free = np.flatnonzero(~taken & (seqs[row] == 0) & np.isin(ids[row], self.special.special_ids, invert=True))
            self._mask_tokens(ids, labels, row, free, rng)
        k = min(self.relation_batch, len(self.edges))
        drop = rng.choice(len(self.edges), size=k, replace=False) if k else np.zeros(0, dtype=np.int64)
        c = min(self.category_batch, len(self.cat_entities))
        cats = rng.choice(len(self.cat_entities), size=c, replace=False) if c else np.zeros(0, dtype=np.int64)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": b.attention_mask,
                "mention_entity": torch.from_numpy(mention), "mlm_labels": torch.from_numpy(labels),
                "masked_spans": torch.tensor(spans, dtype=torch.long).reshape(-1, 4),
                "drop_edges": torch.from_numpy(np.sort(drop).astype(np.int64)),
                "rel_triples": torch.from_numpy(self.edges[np.sort(drop)].astype(np.int64)).reshape(-1, 3),
                "cat_entities": torch.from_numpy(self.cat_entities[cats]),
                "cat_labels": torch.from_numpy(self.cat_labels[cats])}

    def _mask_tokens(self, ids: np.ndarray, labels: np.ndarray, row: int, free: np.ndarray,
                     rng: np.random.Generator) -> None:
        n = int(round(self.mlm_budget * len(free)))
        if n == 0 and len(free):
            n = 1
        chosen = rng.choice(free, size=n, replace=False) if n else free[:0]
        labels[row, chosen] = ids[row, chosen]
        how = rng.random(len(chosen))
        ids[row, chosen[how < 0.8]] = self.tokenizer.mask_id
        swap = chosen[(how >= 0.8) & (how < 0.9)]
        ids[row, swap] = random_tokens(len(swap), self.special, rng)
