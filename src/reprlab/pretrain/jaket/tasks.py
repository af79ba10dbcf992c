"""Fine-tuning and evaluation of a knowledge module on three KG tasks (``reprlab kg-eval``).

The inputs are description vectors (:func:`description_vectors`): a JAKET model folder gives LM1's
vectors (its stored memory when the KG is the one it was pre-trained on, else LM1 re-encodes the new
KG's descriptions) and its pre-trained knowledge module and relation head; any other encoder folder
(``minilm``) gives its sentence vectors (mean-pooled) and a freshly initialised module of the same
shape: the same language model without JAKET pre-training. With ``graph=False`` the module sees no
edges, so an entity's state is a projection of its own description: the text-only path.

* ``link``: DistMult decoding of the module's entity states, ``score(h, r, t) = <z_h * w_r, z_t> + b_t``,
  trained with softmax over all entities (both directions, inverse relations have their own w) on
  the training triples, whose edges are removed from the graph in the step that predicts them;
  filtered MRR and Hits@1/3/10 on the test split.
* ``category``: a linear classifier (logistic regression) on frozen entity states (the module over
  all splits' triples: structure, never labels) trained on the entities with training triples,
  accuracy on the held-out entities (triples only in dev/test).
* ``relation``: few-shot relation types: ``shots`` training triples per relation are the only
  labelled data and the only edges; the module and the pair head (scoring relations through their
  names' states) are fine-tuned on them, and each test triple's (head, tail) is classified over all
  relations; a prediction counts when the pair holds that relation in any split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError
from reprlab.logs import progress
from reprlab.nn.kg import KnowledgeModule
from reprlab.text.kg import KnowledgeGraph

logger = logging.getLogger("reprlab")
TASKS = ("link", "category", "relation")


@dataclass
class KGVectors:
    """Description vectors of a KG's entities (N, H) and relations (R, H), and what made them."""

    entities: torch.Tensor
    relations: torch.Tensor
    km: KnowledgeModule | None = None  # pre-trained (JAKET) or None (a fresh one is made)
    pair: nn.Module | None = None
    km_shape: tuple = (128, 2, 2, "sub")  # dim, layers, heads, composition of a fresh module
    source: str = ""


def description_vectors(model: str | Path, kg: KnowledgeGraph, batch_size: int = 128) -> KGVectors:
    """Vectors of ``kg``'s descriptions by ``model`` (a JAKET folder, or any sentence-encoder folder / minilm)."""
    from reprlab.pretrain.jaket.model import CONFIG_FILE, encode_texts, load_jaket

    if (Path(model) / CONFIG_FILE).is_file():
        jaket, tok = load_jaket(model)
        s = jaket.spec
        if s.kg_sha256 == kg.digest() and int(jaket.memory_version) > 0:
            ents, rels = jaket.entity_memory.clone(), jaket.relation_memory.clone()
        else:
            ents = encode_texts(jaket, tok, kg.entity_text, s.desc_max_length, batch_size, "LM1: entities")
            rels = encode_texts(jaket, tok, kg.relation_text, s.desc_max_length, batch_size, "LM1: relations")
        return KGVectors(ents, rels, jaket.km, jaket.pair, (s.km_dim, s.km_layers, s.km_heads, s.composition),
                         f"jaket:{model}")
    from reprlab.encoder import SentenceEncoder

    enc = SentenceEncoder.from_pretrained(model, max_length=32)
    ents = torch.from_numpy(enc.encode(kg.entity_text, batch_size=batch_size, desc="LM: entities"))
    rels = torch.from_numpy(enc.encode(kg.relation_text, batch_size=batch_size, desc="LM: relations"))
    return KGVectors(ents, rels, source=f"lm:{model}")


def knowledge_module(vectors: KGVectors, seed: int) -> tuple[KnowledgeModule, nn.Module]:
    """The module and pair head to fine-tune: copies of the pre-trained ones, or fresh ones (seeded)."""
    import copy

    torch.manual_seed(seed)
    if vectors.km is not None:
        return copy.deepcopy(vectors.km), copy.deepcopy(vectors.pair)
    dim, layers, heads, comp = vectors.km_shape
    km = KnowledgeModule(vectors.entities.shape[1], dim, layers, heads, comp)
    pair = nn.Sequential(nn.Linear(3 * dim, dim), nn.Tanh(), nn.Linear(dim, dim))
    return km, pair


def _edges(triples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(np.asarray(triples), dtype=torch.long).reshape(-1, 3)
    return t[:, [0, 2]].T.contiguous(), t[:, 1].contiguous()  # (2, E), (E,)


def _run_km(km, vectors: KGVectors, triples: np.ndarray, drop: np.ndarray | None = None):
    if drop is not None and len(drop):
        keep = np.ones(len(triples), dtype=bool)
        keep[drop] = False
        triples = triples[keep]
    edge_index, edge_type = _edges(triples)
    return km(vectors.entities, vectors.relations, edge_index, edge_type)


# ----------------------------------------------------------------------------- link prediction


def filtered_ranks(scores: torch.Tensor, targets: torch.Tensor, known: list[set[int]]) -> torch.Tensor:
    """1-based ranks of ``targets`` among ``scores`` (Q, N), other known true answers removed (filtered setting);
    ties count half (the mean of optimistic and pessimistic ranks)."""
    scores = scores.clone()
    target_scores = scores.gather(1, targets[:, None])  # (Q, 1)
    for q, answers in enumerate(known):
        others = [a for a in answers if a != int(targets[q])]
        if others:
            scores[q, others] = float("-inf")
    higher = (scores > target_scores).sum(1)
    ties = (scores == target_scores).sum(1) - 1
    return 1.0 + higher.float() + ties.float() / 2


def link_prediction(vectors: KGVectors, kg: KnowledgeGraph, graph: bool = True, steps: int = 500,
                    batch_size: int = 512, lr: float = 1e-3, seed: int = 0, split: str = "test",
                    max_queries: int | None = None) -> dict:
    """Train a DistMult decoder (and the module) on ``kg``'s training triples; filtered ranking metrics on ``split``."""
    km, _ = knowledge_module(vectors, seed)
    train_t = kg.split("train", nonempty=True)
    kg.split(split, nonempty=True)  # the reported split is checked before training
    R, dim = kg.num_relations, vectors.km_shape[0]
    torch.manual_seed(seed)
    relation_w = nn.Parameter(torch.ones(2 * R, dim) + 0.1 * torch.randn(2 * R, dim))
    bias = nn.Parameter(torch.zeros(kg.num_entities))
    opt = torch.optim.Adam([*km.parameters(), relation_w, bias], lr=lr)
    rng = np.random.default_rng(seed)
    edges = train_t if graph else train_t[:0]
    km.train()
    for _ in progress(range(steps), desc="link: train", unit="step"):
        pick = rng.choice(len(train_t), size=min(batch_size, len(train_t)), replace=False)
        z, _ = _run_km(km, vectors, edges, pick if graph else None)
        h, r, t = (torch.as_tensor(train_t[pick, i]) for i in range(3))
        q = torch.cat([z[h] * relation_w[r], z[t] * relation_w[r + R]])  # (2B, D): (h, r, ?) and (t, r^-1, ?)
        loss = F.cross_entropy(q @ z.T + bias, torch.cat([t, h]))  # (2B, N) over all entities
        opt.zero_grad()
        loss.backward()
        opt.step()
    return evaluate_links(km, relation_w, bias, vectors, kg, edges, split, max_queries)


@torch.no_grad()
def evaluate_links(km, relation_w, bias, vectors, kg, edges, split="test", max_queries=None) -> dict:
    km.eval()
    z, _ = _run_km(km, vectors, edges)
    R = kg.num_relations
    known_tails, known_heads = {}, {}
    for h, r, t in kg.edges(tuple(kg.triples)):
        known_tails.setdefault((int(h), int(r)), set()).add(int(t))
        known_heads.setdefault((int(t), int(r)), set()).add(int(h))
    test = kg.split(split, nonempty=True)[:max_queries]
    ranks = []
    for s in range(0, len(test), 256):
        b = test[s:s + 256]
        h, r, t = (torch.as_tensor(b[:, i]) for i in range(3))
        ranks.append(filtered_ranks(z[h] * relation_w[r] @ z.T + bias, t,
                                    [known_tails[(int(x), int(y))] for x, y in zip(h, r)]))
        ranks.append(filtered_ranks(z[t] * relation_w[r + R] @ z.T + bias, h,
                                    [known_heads[(int(x), int(y))] for x, y in zip(t, r)]))
    ranks = torch.cat(ranks)
    return {"mrr": float((1.0 / ranks).mean()), **{f"hits@{k}": float((ranks <= k).float().mean()) for k in (1, 3, 10)},
            "queries": int(len(ranks))}


# ----------------------------------------------------------------------------- entity categories


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300, lr: float = 0.05,
               weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Logistic regression (full-batch Adam on standardised features); the standardisation is folded in."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    clf = nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    xs = (x - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(clf(xs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # clf((x - mean) / std) as one linear map of x
        clf.weight.div_(std)
        clf.bias.sub_(clf.weight @ mean)
    return clf


@torch.no_grad()
def category_prediction(vectors: KGVectors, kg: KnowledgeGraph, categories: dict[str, str], use_km: bool = True,
                        seed: int = 0, train_entities: list[int] | None = None,
                        test_entities: list[int] | None = None) -> dict:
    """Accuracy of a linear classifier of entity categories on frozen features: the module's states over
    every split's triples (``use_km``) or the description vectors themselves."""
    from reprlab.text.kg import held_out_entities

    if use_km:
        km, _ = knowledge_module(vectors, seed)
        km.eval()
        feats, _ = _run_km(km, vectors, kg.edges(tuple(kg.triples)))
    else:
        feats = vectors.entities
    names = sorted(set(categories.values()))
    label = {kg.entity_index[e]: names.index(c) for e, c in categories.items() if e in kg.entity_index}
    if train_entities is None:
        seen = set(kg.split("train")[:, [0, 2]].ravel().tolist())
        train_entities = [e for e in sorted(seen) if e in label]
    test_entities = [e for e in (held_out_entities(kg) if test_entities is None else test_entities) if e in label]
    if not train_entities or not test_entities:
        raise ConfigError("no labelled entities to train or test on: give categories for the KG's entities",
                          field="categories")
    with torch.enable_grad():
        clf = fit_linear(feats[train_entities].detach(), torch.tensor([label[e] for e in train_entities]), len(names),
                         seed=seed)
    pred = clf(feats[test_entities]).argmax(1)
    gold = torch.tensor([label[e] for e in test_entities])
    return {"accuracy": float((pred == gold).float().mean()), "train_entities": len(train_entities),
            "test_entities": len(test_entities), "classes": len(names)}


# ----------------------------------------------------------------------------- relation types (few-shot)


def few_shot_triples(kg: KnowledgeGraph, shots: int, seed: int) -> np.ndarray:
    """``shots`` training triples of each relation (all of a relation's when it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    train_t = kg.split("train", nonempty=True)
    picked = []
    for r in range(kg.num_relations):
        rows = np.flatnonzero(train_t[:, 1] == r)
        picked += rng.choice(rows, size=min(shots, len(rows)), replace=False).tolist()
    return train_t[np.sort(np.asarray(picked, dtype=np.int64))]


def relation_prediction(vectors: KGVectors, kg: KnowledgeGraph, shots: int = 5, steps: int = 100, lr: float = 1e-3,
                        seed: int = 0, split: str = "test", labelled: np.ndarray | None = None) -> dict:
    """Fine-tune the module and pair head on few labelled triples; accuracy of relation types on ``split``."""
    km, pair = knowledge_module(vectors, seed)
    kg.split(split, nonempty=True)  # the reported split is checked before training
    few = few_shot_triples(kg, shots, seed) if labelled is None else np.asarray(labelled).reshape(-1, 3)
    if len(few) == 0:
        raise ConfigError("no labelled triples to fine-tune on", field="shots")
    if int(few[:, 1].max()) >= kg.num_relations:
        raise ConfigError(f"a labelled triple names relation {int(few[:, 1].max())}, but the KG has "
                          f"{kg.num_relations}", field="labelled")
    opt = torch.optim.Adam([*km.parameters(), *pair.parameters()], lr=lr)
    rng = np.random.default_rng(seed)
    km.train()
    for _ in range(steps):
        pick = rng.choice(len(few), size=max(1, len(few) // 2), replace=False)  # predicted, and off the graph
        z, g = _run_km(km, vectors, few, pick)
        h, r, t = (torch.as_tensor(few[pick, i]) for i in range(3))
        scores = pair(torch.cat([z[h], z[t], z[h] * z[t]], -1)) @ g.T  # (K, R)
        loss = F.cross_entropy(scores, r)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return evaluate_relations(km, pair, vectors, kg, few, split)


@torch.no_grad()
def evaluate_relations(km, pair, vectors, kg, graph_triples, split="test") -> dict:
    km.eval()
    z, g = _run_km(km, vectors, graph_triples)
    test = kg.split(split, nonempty=True)
    h, r, t = (torch.as_tensor(test[:, i]) for i in range(3))
    pred = (pair(torch.cat([z[h], z[t], z[h] * z[t]], -1)) @ g.T).argmax(1)
    holds: dict[tuple[int, int], set[int]] = {}
    for a, b, c in kg.edges(tuple(kg.triples)):
        holds.setdefault((int(a), int(c)), set()).add(int(b))
    any_true = [int(p) in holds[(int(a), int(c))] for p, a, c in zip(pred, h, t)]
    return {"accuracy": float(np.mean(any_true)), "exact_accuracy": float((pred == r).float().mean()),
            "labelled_triples": int(len(graph_triples)), "test_triples": int(len(test))}
