"""The JAKET model: the encoder split into LM1 and LM2, the knowledge module between them, four losses.

::

    descriptions --LM1, mean pool--> entity context memory (N, H)   (refreshed every N steps, a buffer)
    relation names --LM1, mean pool--> relation memory (R, H)
    memory + triples --KM (relational GAT)--> Z (N, D) entity states, G (R, D) relation states
    text --LM1--> (B, T, H) --(+ W_f Z[e] at the tokens of each mention of e)--> LM2 --> (B, T, H)

Losses (each a mean over its items; the total is their weighted sum):

* masked tokens: the MLM head (tied to the input embeddings) on LM2's output at masked tokens;
* masked entities: a mention whose tokens are all [MASK] (and which gets no KM vector) is predicted
  from LM2's mean output over its tokens, ``q = W_q mean(h)``, by softmax over ``q . Z[n]`` for
  every entity n of the graph;
* entity categories: ``W_c Z[e]`` against the entity's category;
* relation types: for a triple (h, r, t) whose edges are removed from the graph for that step,
  ``score(r') = MLP([Z_h, Z_t, Z_h * Z_t]) . G[r']`` over every relation r': relations are scored
  through their names' states, so the same head scores the relations of a graph never seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.logs import progress
from reprlab.nn.embeddings import MLMHead
from reprlab.nn.kg import KnowledgeModule
from reprlab.text.tokenizer import Tokenizer

IGNORE = -100
MODEL_FILE, CONFIG_FILE = "model.safetensors", "jaket.json"


@dataclass
class JaketSpec:
    """The sizes of a :class:`JaketModel` (``jaket.json`` in a model folder, with the encoder's config)."""

    lm1_layers: int = 3
    km_dim: int = 128
    km_layers: int = 2
    km_heads: int = 2
    composition: str = "sub"
    num_entities: int = 0
    num_relations: int = 0
    categories: list[str] = field(default_factory=list)
    desc_max_length: int = 32
    kg_sha256: str = ""  # the KG whose descriptions the stored memory encodes (KnowledgeGraph.digest)
    encoder: dict = field(default_factory=dict)

    def check(self, num_layers: int) -> None:
        if not 1 <= self.lm1_layers < num_layers:
            raise ConfigError(f"must be between 1 and {num_layers - 1} (the encoder has {num_layers} layers; "
                              "LM2 needs at least one)", field="lm1_layers")


class JaketModel(nn.Module):
    """Encoder (LM1 = ``layers[:k]``, LM2 = the rest) + knowledge module + heads + the context memory.

    The memory (``entity_memory`` (N, H), ``relation_memory`` (R, H), ``memory_version``,
    ``memory_step``) is made of persistent buffers, so it is saved with the weights and a resumed
    run continues with the memory it had. The graph (``edge_index``, ``edge_type``) is not saved:
    it comes from the KG (:meth:`set_graph`).
    """

    def __init__(self, encoder: Encoder, spec: JaketSpec):
        super().__init__()
        spec.check(encoder.config.num_layers)
        if encoder.memory is not None:
            raise ConfigError("JAKET splits the encoder between layers; an encoder with memory tokens is not supported")
        c = encoder.config
        self.spec, self.encoder = spec, encoder
        self.km = KnowledgeModule(c.hidden_size, spec.km_dim, spec.km_layers, spec.km_heads, spec.composition)
        self.km_to_lm = nn.Linear(spec.km_dim, c.hidden_size)  # fusion: KM state -> LM width
        self.mention_query = nn.Linear(c.hidden_size, spec.km_dim)  # masked entity: LM2 -> entity space
        self.mlm_head = MLMHead(c.hidden_size, c.vocab_size, tie_to=encoder.embeddings.word,
                                layer_norm_eps=c.layer_norm_eps)
        self.category_head = nn.Linear(spec.km_dim, len(spec.categories)) if spec.categories else None
        self.pair = nn.Sequential(nn.Linear(3 * spec.km_dim, spec.km_dim), nn.Tanh(), nn.Linear(spec.km_dim, spec.km_dim))
        self.register_buffer("entity_memory", torch.zeros(spec.num_entities, c.hidden_size))
        self.register_buffer("relation_memory", torch.zeros(spec.num_relations, c.hidden_size))
        self.register_buffer("memory_version", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self.register_buffer("edge_type", torch.zeros(0, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ the two halves of the LM

    def lm1(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        x = self.encoder.embed(input_ids)  # (B, T, H)
        for layer in self.encoder.layers[: self.spec.lm1_layers]:
            x, _ = layer(x, mask)
        return x

    def lm2(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        for layer in self.encoder.layers[self.spec.lm1_layers:]:
            x, _ = layer(x, mask)
        return x  # (B, T, H)

    def describe(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """LM1's mean-pooled encodings of descriptions (B, H): the entity and relation initial vectors."""
        h = self.lm1(input_ids, attention_mask)  # (B, T, H)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    # ------------------------------------------------------------------ graph and knowledge module

    def set_graph(self, triples: np.ndarray | torch.Tensor) -> None:
        """The triples (E, 3) of (head, relation, tail) the KM passes messages over."""
        t = torch.as_tensor(np.asarray(triples), dtype=torch.long).reshape(-1, 3).to(self.entity_memory.device)
        if len(t) and (int(t[:, [0, 2]].max()) >= self.spec.num_entities or int(t[:, 1].max()) >= self.spec.num_relations):
            raise ConfigError(f"a triple names an entity or relation outside the model's "
                              f"{self.spec.num_entities} entities / {self.spec.num_relations} relations")
        self.edge_index = t[:, [0, 2]].T.contiguous()  # (2, E)
        self.edge_type = t[:, 1].contiguous()  # (E,)

    def knowledge(self, drop_edges: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Z (N, D), G (R, D)): the KM over the memory and the graph, without the edges in ``drop_edges``."""
        edge_index, edge_type = self.edge_index, self.edge_type
        if drop_edges is not None and drop_edges.numel():
            keep = torch.ones(edge_type.shape[0], dtype=torch.bool, device=edge_type.device)
            keep[drop_edges] = False
            edge_index, edge_type = edge_index[:, keep], edge_type[keep]
        return self.km(self.entity_memory, self.relation_memory, edge_index, edge_type)

    def fuse(self, hidden: torch.Tensor, mention_entity: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """LM1 output + ``km_to_lm(Z[e])`` at every token of a mention of e (``mention_entity`` (B, T): the
        entity index at mention tokens, -1 elsewhere); other tokens are returned unchanged."""
        at = mention_entity >= 0  # (B, T)
        delta = torch.zeros_like(hidden)
        delta[at] = self.km_to_lm(z[mention_entity[at]]).to(hidden.dtype)  # (M, H) at the M mention tokens
        return hidden + delta

    def relation_scores(self, z_head: torch.Tensor, z_tail: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(K, R) scores of every relation for K (head, tail) pairs: MLP([h, t, h*t]) . G[r]."""
        return self.pair(torch.cat([z_head, z_tail, z_head * z_tail], dim=-1)) @ g.T

    # ------------------------------------------------------------------ the four losses

    def forward(self, batch: dict, weights: dict[str, float] | None = None):
        """(total loss, {name: loss}) of a batch made by :class:`~reprlab.pretrain.jaket.data.JaketCollate`."""
        weights = weights or {}
        z, g = self.knowledge(batch.get("drop_edges"))
        hidden = self.lm2(self.fuse(self.lm1(batch["input_ids"], batch["attention_mask"]), batch["mention_entity"], z),
                          batch["attention_mask"])  # (B, T, H)
        losses = {"mlm": masked_token_loss(self.mlm_head, hidden, batch["mlm_labels"]),
                  "entity": masked_entity_loss(self.mention_query, hidden, z, batch["masked_spans"])}
        if self.category_head is not None and batch["cat_entities"].numel():
            losses["category"] = F.cross_entropy(self.category_head(z[batch["cat_entities"]]).float(), batch["cat_labels"])
        if batch["rel_triples"].numel():
            t = batch["rel_triples"]  # (K, 3)
            losses["relation"] = F.cross_entropy(self.relation_scores(z[t[:, 0]], z[t[:, 2]], g).float(), t[:, 1])
        total = sum(weights.get(k, 1.0) * v for k, v in losses.items())
        return total, losses


def masked_token_loss(head: MLMHead, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the MLM head at the positions with a label (-100 elsewhere); 0 when there are none."""
    at = labels != IGNORE  # (B, T)
    if not bool(at.any()):
        return hidden.sum() * 0.0
    return F.cross_entropy(head(hidden[at]).float(), labels[at])


def masked_entity_loss(query: nn.Linear, hidden: torch.Tensor, z: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over all N entities of ``query(mean of LM2 output over the span) . Z``.

    ``spans`` (M, 4): batch row, first token, end token (exclusive), target entity."""
    if spans.numel() == 0:
        return hidden.sum() * 0.0
    T = hidden.shape[1]
    pos = torch.arange(T, device=hidden.device)
    w = ((pos >= spans[:, 1:2]) & (pos < spans[:, 2:3])).to(hidden.dtype)  # (M, T): the span's tokens
    pooled = (w.unsqueeze(-1) * hidden[spans[:, 0]]).sum(1) / w.sum(1, keepdim=True)  # (M, H)
    return F.cross_entropy((query(pooled) @ z.T).float(), spans[:, 3])  # (M, N) logits


# ------------------------------------------------------------------ the entity context memory


@torch.no_grad()
def encode_texts(model: JaketModel, tokenizer: Tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                 desc: str = "memory") -> torch.Tensor:
    """LM1's mean-pooled vectors of ``texts`` (N, H), in eval mode (no dropout), sorted by length for speed."""
    was = model.training
    model.eval()
    device = model.entity_memory.device
    out = torch.zeros(len(texts), model.encoder.config.hidden_size)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    try:
        with progress(total=len(texts), desc=desc, unit="text") as bar:
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                b = tokenizer([texts[i] for i in idx], max_length=max_length)
                out[torch.as_tensor(idx)] = model.describe(b.input_ids.to(device), b.attention_mask.to(device)).float().cpu()
                bar.update(len(idx))
    finally:
        model.train(was)
    return out


def refresh_memory(model: JaketModel, tokenizer: Tokenizer, entity_text: list[str], relation_text: list[str],
                   step: int, batch_size: int = 64, vectors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Re-encode every description and relation name with the current LM1 into the memory (version + 1).
    ``vectors`` (entities, relations) skips the encoding (a cache of the same LM1's vectors)."""
    if vectors is None:
        ml = model.spec.desc_max_length
        vectors = (encode_texts(model, tokenizer, entity_text, ml, batch_size, "memory: entities"),
                   encode_texts(model, tokenizer, relation_text, ml, batch_size, "memory: relations"))
    ents, rels = vectors
    if tuple(ents.shape) != tuple(model.entity_memory.shape) or tuple(rels.shape) != tuple(model.relation_memory.shape):
        raise ConfigError(f"memory vectors of shape {tuple(ents.shape)}, {tuple(rels.shape)} do not fit the model's "
                          f"{tuple(model.entity_memory.shape)}, {tuple(model.relation_memory.shape)}")
    model.entity_memory.copy_(ents)
    model.relation_memory.copy_(rels)
    model.memory_version += 1
    model.memory_step.fill_(step)


# ------------------------------------------------------------------ model folders


def save_jaket(model: JaketModel, tokenizer: Tokenizer, folder: str | Path) -> None:
    """``model.safetensors`` (encoder, KM, heads, memory), ``jaket.json`` (sizes + encoder config), tokenizer."""
    spec = JaketSpec(**{**asdict(model.spec), "encoder": model.encoder.config.to_dict()})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state.pop("mlm_head.decoder", None)
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        atomic_write_json(tmp / CONFIG_FILE, asdict(spec))
        tokenizer.save(tmp)


def load_jaket(folder: str | Path, device: str | torch.device = "cpu") -> tuple[JaketModel, Tokenizer]:
    """A model folder written by :func:`save_jaket` (the graph is set by the caller)."""
    import json

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise ModelLoadError(f"{folder}: not a JAKET model folder ({CONFIG_FILE} and {MODEL_FILE} expected; "
                             "`reprlab pretrain jaket` writes one in OUT/model)")
    try:
        spec = JaketSpec(**json.loads((folder / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelLoadError(f"{folder / CONFIG_FILE}: not a JAKET config ({exc})") from exc
    model = JaketModel(Encoder(EncoderConfig.from_dict(spec.encoder)), spec)
    missing, unexpected = model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=False)
    if [k for k in missing if k != "mlm_head.decoder"] or unexpected:
        raise ModelLoadError(f"{folder / MODEL_FILE}: weights do not fit (missing {missing}, unexpected {unexpected})")
    return model.to(device), Tokenizer.from_pretrained(folder)
