"""Relational graph attention over a knowledge graph: the knowledge module (KM) of JAKET.

Yu, Zhu, Yang and Zeng, "JAKET: Joint Pre-training of Knowledge Graph and Language Understanding",
AAAI 2022 (arXiv 2010.00796); no official code. The composition of a neighbour's state with the
relation's state follows CompGCN (Vashishth et al., "Composition-based Multi-Relational Graph
Convolutional Networks", ICLR 2020), the attention GAT (Velickovic et al., ICLR 2018).

One :class:`RelationalGATLayer` computes, for every edge ``j --r--> i`` and head ``k``::

    m_e     = W phi(h_j, g_r)                               # phi: h - g ("sub") or h * g ("mult")
    s_e     = LeakyReLU(a_src[k] . m_e[k] + a_dst[k] . (Q h_i)[k])
    alpha_e = softmax of s over the edges that end at i    # sums to 1 over i's incoming edges
    h_i'    = h_i + tanh(sum_e alpha_e m_e)                 # a node with no neighbours keeps h_i
    g_r'    = W_rel g_r

The message passing runs on torch-geometric's ``MessagePassing`` (the ``kg`` extra, imported when a
layer first runs); :func:`relational_gat_reference` is the same layer written as a plain loop over
nodes and edges, the reference the tests hold the efficient path to. :class:`KnowledgeModule` stacks
layers over a graph whose relations also run backwards (an inverse relation's state is a learned map
of the forward one), after projecting the input entity and relation vectors to its width.

>>> km = KnowledgeModule(in_dim=8, dim=4, num_layers=2)                        # doctest: +SKIP
>>> z, g = km(torch.randn(5, 8), torch.randn(2, 8), torch.tensor([[0, 1], [1, 2]]), torch.tensor([0, 1]))
>>> z.shape, g.shape                                                           # doctest: +SKIP
(torch.Size([5, 4]), torch.Size([2, 4]))
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.errors import ConfigError, require

COMPOSITIONS = {
    "sub": lambda h, g: h - g,  # TransE-like: the neighbour seen through the relation
    "mult": lambda h, g: h * g,  # DistMult-like
}


@functools.lru_cache(maxsize=1)
def _propagation_class():
    """The ``MessagePassing`` subclass, built on first use so that torch-geometric stays optional."""
    pyg_nn = require("torch_geometric.nn", extra="kg", package="torch-geometric")
    pyg_utils = require("torch_geometric.utils", extra="kg", package="torch-geometric")

    class RelationalAttentionPropagation(pyg_nn.MessagePassing):
        """Sums attention-weighted messages at each edge's target (no parameters of its own)."""

        def __init__(self):
            super().__init__(aggr="add", node_dim=0)
            self.alpha: torch.Tensor | None = None

        def forward(self, x, q, edge_index, rel, weight, att_src, att_dst, composition, heads):
            return self.propagate(edge_index, x=x, q=q, rel=rel, weight=weight, att_src=att_src,
                                  att_dst=att_dst, composition=composition, heads=heads, size=(x.size(0), x.size(0)))

        def message(self, x_j, q_i, rel, weight, att_src, att_dst, composition, heads, index, ptr, size_i):
            E, D = x_j.shape
            if weight is None:  # x and rel arrive multiplied by W already ("sub" is linear: W(h - g) = Wh - Wg)
                m = COMPOSITIONS[composition](x_j, rel).view(E, heads, D // heads)  # (E, k, D/k)
            else:
                m = F.linear(COMPOSITIONS[composition](x_j, rel), weight).view(E, heads, D // heads)
            q = q_i.view(E, heads, D // heads)
            scores = F.leaky_relu((m * att_src).sum(-1) + (q * att_dst).sum(-1), 0.2)  # (E, k)
            alpha = pyg_utils.softmax(scores, index, ptr, size_i)  # (E, k): sums to 1 over each target's edges
            self.alpha = alpha
            return (m * alpha.unsqueeze(-1)).reshape(E, D)  # (E, D)

    return RelationalAttentionPropagation


class RelationalGATLayer(nn.Module):
    """One relational graph-attention layer (see the module docstring for the equations).

    ``forward(x, edge_index, edge_type, relations)``: ``x`` (N, D) node states, ``edge_index`` (2, E)
    with sources in row 0 and targets in row 1, ``edge_type`` (E,) indices into ``relations``
    (R, D). Returns the new node states (N, D), the new relation states (R, D) and the attention
    weights (E, heads).
    """

    def __init__(self, dim: int, heads: int = 1, composition: str = "sub", dropout: float = 0.0):
        super().__init__()
        if composition not in COMPOSITIONS:
            raise ConfigError(f"unknown composition {composition!r}; choose one of: {', '.join(COMPOSITIONS)}")
        if dim % heads:
            raise ConfigError(f"the knowledge module's width {dim} is not divisible by its {heads} heads")
        self.dim, self.heads, self.composition = dim, heads, composition
        self.message = nn.Linear(dim, dim, bias=False)  # W
        self.query = nn.Linear(dim, dim, bias=False)  # Q
        self.relation = nn.Linear(dim, dim, bias=False)  # W_rel
        self.att_src = nn.Parameter(torch.empty(heads, dim // heads).normal_(std=(heads / dim) ** 0.5))
        self.att_dst = nn.Parameter(torch.empty(heads, dim // heads).normal_(std=(heads / dim) ** 0.5))
        self.dropout = nn.Dropout(dropout)
        self._propagate = None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor, relations: torch.Tensor):
        if self._propagate is None:
            self._propagate = _propagation_class()()
        if self.composition == "sub":  # W applied to N nodes and R relations instead of E edges
            agg = self._propagate(self.message(x), self.query(x), edge_index, self.message(relations)[edge_type], None,
                                  self.att_src, self.att_dst, self.composition, self.heads)  # (N, D); 0 without edges
        else:
            agg = self._propagate(x, self.query(x), edge_index, relations[edge_type], self.message.weight,
                                  self.att_src, self.att_dst, self.composition, self.heads)
        alpha = self._propagate.alpha
        self._propagate.alpha = None
        return x + self.dropout(torch.tanh(agg)), self.relation(relations), alpha


def relational_gat_reference(layer: RelationalGATLayer, x: torch.Tensor, edge_index: torch.Tensor,
                             edge_type: torch.Tensor, relations: torch.Tensor):
    """:class:`RelationalGATLayer` as a plain loop over nodes and their incoming edges (no dropout):
    the reference of the message-passing path. Returns (node states, relation states, attention)."""
    N, D = x.shape
    k, dh = layer.heads, D // layer.heads
    phi = COMPOSITIONS[layer.composition]
    W, Q = layer.message.weight, layer.query.weight
    out = x.clone()
    alpha = torch.zeros(edge_index.shape[1], k, dtype=x.dtype)
    for i in range(N):
        incoming = [e for e in range(edge_index.shape[1]) if int(edge_index[1, e]) == i]
        if not incoming:
            continue  # no neighbours: the node keeps its own state
        q = (Q @ x[i]).view(k, dh)
        messages, scores = [], []
        for e in incoming:
            j, r = int(edge_index[0, e]), int(edge_type[e])
            m = (W @ phi(x[j], relations[r])).view(k, dh)
            messages.append(m)
            scores.append(F.leaky_relu((m * layer.att_src).sum(-1) + (q * layer.att_dst).sum(-1), 0.2))
        s = torch.stack(scores)  # (n_i, k)
        a = torch.exp(s - s.max(0).values) / torch.exp(s - s.max(0).values).sum(0)
        alpha[incoming] = a
        out[i] = x[i] + torch.tanh((a.unsqueeze(-1) * torch.stack(messages)).sum(0).reshape(D))
    return out, relations @ layer.relation.weight.T, alpha


def with_inverse_edges(edge_index: torch.Tensor, edge_type: torch.Tensor, num_relations: int):
    """Every edge ``h --r--> t`` also as ``t --(r + R)--> h``: messages flow both ways."""
    return (torch.cat([edge_index, edge_index.flip(0)], dim=1),  # (2, 2E)
            torch.cat([edge_type, edge_type + num_relations]))  # (2E,)


class KnowledgeModule(nn.Module):
    """Input projections, then ``num_layers`` :class:`RelationalGATLayer` over the graph with inverse edges.

    ``forward(entities, relations, edge_index, edge_type)``: entity vectors (N, in_dim) and relation
    vectors (R, in_dim) (in JAKET: the language module's encodings of descriptions and relation names),
    triples as ``edge_index`` (2, E) head -> tail and ``edge_type`` (E,) in [0, R). Returns the entity
    states (N, dim) and the forward relations' states (R, dim).
    """

    def __init__(self, in_dim: int, dim: int, num_layers: int = 2, heads: int = 1, composition: str = "sub",
                 dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"the knowledge module needs at least one layer, got {num_layers}")
        self.entity_in = nn.Linear(in_dim, dim)
        self.relation_in = nn.Linear(in_dim, dim)
        self.inverse = nn.Linear(dim, dim)  # g_{r^-1} = V g_r + b
        self.layers = nn.ModuleList(RelationalGATLayer(dim, heads, composition, dropout) for _ in range(num_layers))

    def forward(self, entities: torch.Tensor, relations: torch.Tensor, edge_index: torch.Tensor,
                edge_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = relations.shape[0]
        x = self.entity_in(entities)  # (N, D)
        g = self.relation_in(relations)  # (R, D)
        edges, types = with_inverse_edges(edge_index, edge_type, R)
        for layer in self.layers:
            both = torch.cat([g, self.inverse(g)])  # (2R, D): forward relations, then their inverses
            x, both, _ = layer(x, edges, types, both)
            g = both[:R]
        return x, g
