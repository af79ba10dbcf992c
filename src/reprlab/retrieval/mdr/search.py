"""MDR's search side: the two-hop beam search, its chains, BM25 fusion, and index folders.

Xiong et al., "Answering Complex Open-Domain Questions with Multi-Hop Dense Retrieval", ICLR 2021
(https://github.com/facebookresearch/multihop_dense_retrieval).

* **Beam search** (:func:`multihop_search`). Top-B hop-1 passages; each (question, passage) is
  re-encoded (:func:`~reprlab.retrieval.mdr.model.hop2_query`) and searched for its top-B hop-2
  passages (the hop-1 passage itself excluded); the B x B chains are ranked by s1 + s2
  (:func:`rank_chains`), and a pair found in both orders is kept once, in its better order. Any
  :class:`~reprlab.retrieval.index.Index` works (exact or approximate); tested against brute force over
  all ordered pairs.
* **BM25 fusion** (:class:`SparseFusion`, our extension; the paper searches dense only). Each hop's
  dense scores are interpolated with BM25 scores of the same hop's query (hop 1: the question; hop 2:
  the question followed by the hop-1 passage's title and text), ``s + w * bm25 / max bm25`` over the
  union of both top-``depth`` lists (:func:`reprlab.retrieval.fusion.interpolate`). A hop-2 passage
  is usually named in the hop-1 passage, which is what BM25 matches best. On HotpotQA, with weights
  chosen on a dev slice of the train side (0.888 -> 0.948 there), pair recall@10 on the eval side
  went from 0.872 to 0.962 (BENCHMARKS.md). Weights 0 give the dense search.
* **Single-hop chains** (:func:`chains_from_ranking`): pairs of one ranking's passages, so that a
  single-hop retriever is scored with the same chain metrics.
* **Index folders** (:func:`index_corpus`, :func:`search_index_folder`, :func:`format_chains`): what
  ``reprlab index --multihop`` and ``reprlab search --multihop`` run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.text.beir import doc_text
from reprlab.retrieval.fusion import interpolate
from reprlab.retrieval.index import FaissIndex, Index
from reprlab.retrieval.mdr.model import Corpus, hop2_query, mdr_settings, separator_of


@dataclass(frozen=True)
class Chain:
    """A retrieved passage chain: (hop-1 id, hop-2 id), their scores, and the chain score s1 + s2."""

    passages: tuple[str, str]
    scores: tuple[float, float]

    @property
    def score(self) -> float:
        return self.scores[0] + self.scores[1]


def rank_chains(
    s1: np.ndarray, ids1: np.ndarray, s2: np.ndarray, ids2: np.ndarray, top_k: int | None = None,
    exclude_hop1: bool = True, dedup: bool = True, hop2_k: int | None = None,
) -> list[Chain]:
    """The chains of one question, best first.

    Args:
        s1, ids1: (B,) hop-1 scores and ids (``None`` ids are padding).
        s2, ids2: (B, B2) hop-2 scores and ids of each hop-1 passage's query.
        top_k: chains kept (None = all).
        exclude_hop1: drop hop-2 results equal to their hop-1 passage.
        dedup: keep an unordered pair once, in its best-scoring order.
        hop2_k: hop-2 passages kept per hop-1 passage, after the exclusion (None = all given).

    Ties are broken by hop-1 rank, then hop-2 rank, so the order is deterministic.
    """
    cands = []
    for i in range(len(ids1)):
        if ids1[i] is None:
            continue
        kept = 0
        for j in range(ids2.shape[1]):
            p2 = ids2[i, j]
            if p2 is None or (exclude_hop1 and p2 == ids1[i]):
                continue
            if hop2_k is not None and kept >= hop2_k:
                break
            kept += 1
            cands.append((-(float(s1[i]) + float(s2[i, j])), i, j))
    cands.sort()
    chains, seen = [], set()
    for _, i, j in cands:
        pair = (ids1[i], ids2[i, j])
        if dedup:
            key = frozenset(pair)
            if key in seen:
                continue
            seen.add(key)
        chains.append(Chain(pair, (float(s1[i]), float(s2[i, j]))))
        if top_k is not None and len(chains) >= top_k:
            break
    return chains


@dataclass
class SparseFusion:
    """BM25 fusion for :func:`multihop_search`: each hop's dense scores plus ``weight * bm25 / max bm25``.

    ``retriever`` is a sparse search over the same corpus as the dense index (``search(texts, k) ->
    (scores, ids)``, e.g. :func:`reprlab.retrieval.pipeline.bm25_for_corpus`); ``depth`` results of each
    search are fused. Default weights: chosen on a dev slice of HotpotQA's train side (BENCHMARKS.md).
    """

    retriever: Any
    hop1_weight: float = 0.2
    hop2_weight: float = 0.3
    depth: int = 50

    def __post_init__(self):
        if self.hop1_weight < 0 or self.hop2_weight < 0:
            raise ConfigError(f"BM25 fusion weights must be >= 0, got {self.hop1_weight}, {self.hop2_weight}")
        if self.depth < 1:
            raise ConfigError(f"BM25 fusion depth must be at least 1, got {self.depth}")


def multihop_search(
    encoder,
    questions: Sequence[str] | str,
    index: Index,
    corpus: Corpus,
    beam_size: int = 10,
    top_k: int | None = 10,
    hop2_title: bool = True,
    max_question_length: int | None = 64,
    max_query_length: int | None = 256,
    batch_size: int = 64,
    exclude_hop1: bool = True,
    dedup: bool = True,
    show_progress: bool | None = False,
    search_params: Mapping[str, float] | None = None,
    hop1: tuple[np.ndarray, np.ndarray] | None = None,
    sparse: SparseFusion | None = None,
) -> list[list[Chain]]:
    """MDR beam search: the top chains of each question, best first.

    Args:
        encoder: the query encoder: anything with ``encode(texts, batch_size=, max_length=,
            show_progress=) -> (N, d) float32`` (a :class:`~reprlab.encoder.SentenceEncoder`).
        questions: question texts (or one question).
        index: passage vectors with string ids (exact or approximate; any ``Index``).
        corpus: ``{id: {"title", "text"}}`` for the ids of ``index`` (to form hop-2 queries).
        beam_size: B, hop-1 passages kept and hop-2 passages searched for each.
        top_k: chains returned per question (None = all, at most B x B).
        hop1: precomputed hop-1 ``(scores (Q, B), ids (Q, B))`` (e.g. from another retriever).
        sparse: fuse each hop's dense scores with BM25's (:class:`SparseFusion`; None = dense only).
        Other arguments: see :func:`rank_chains` and the module docstring.
    """
    if isinstance(questions, str):
        questions = [questions]
    if beam_size < 1:
        raise ConfigError(f"beam_size must be at least 1, got {beam_size}")
    params = dict(search_params or {})
    fuse1 = sparse is not None and sparse.hop1_weight > 0
    fuse2 = sparse is not None and sparse.hop2_weight > 0
    if hop1 is None:
        qv = encoder.encode(list(questions), batch_size=batch_size, max_length=max_question_length,
                            show_progress=show_progress)  # (Q, d)
        if fuse1:
            dense = index.search(qv, max(beam_size, sparse.depth), **params)  # (Q, depth)
            s1, ids1 = interpolate(*dense, *sparse.retriever.search(list(questions), sparse.depth),
                                   sparse.hop1_weight, beam_size)  # (Q, B)
        else:
            s1, ids1 = index.search(qv, beam_size, **params)  # (Q, B)
    else:
        s1, ids1 = hop1
    sep = separator_of(encoder)
    texts, rows = [], []  # one hop-2 query per (question, hop-1 passage)
    for q, question in enumerate(questions):
        for i, pid in enumerate(ids1[q]):
            if pid is None:
                continue
            if pid not in corpus:
                raise ModelLoadError(f"hop-1 passage {pid!r} is in the index but not in the corpus given")
            texts.append(hop2_query(question, corpus[pid], sep, hop2_title))
            rows.append((q, i))
    B = ids1.shape[1]
    depth = B + 1 if exclude_hop1 else B
    s2 = np.full((len(questions), B, depth), -np.inf, dtype=np.float32)  # (Q, B, B + 1)
    ids2 = np.full((len(questions), B, depth), None, dtype=object)
    if texts:
        v2 = encoder.encode(texts, batch_size=batch_size, max_length=max_query_length,
                            show_progress=show_progress)  # (Q*B, d)
        if fuse2:
            dense = index.search(v2, max(depth, sparse.depth), **params)  # (Q*B, depth')
            sparse_texts = [questions[q] + " " + doc_text(corpus[ids1[q][i]]) for q, i in rows]
            found_s, found_ids = interpolate(*dense, *sparse.retriever.search(sparse_texts, sparse.depth),
                                             sparse.hop2_weight, depth)  # (Q*B, B + 1)
        else:
            found_s, found_ids = index.search(v2, depth, **params)  # (Q*B, B + 1)
        for r, (q, i) in enumerate(rows):
            width = found_s.shape[1]  # k is clamped to the index size
            s2[q, i, :width], ids2[q, i, :width] = found_s[r], found_ids[r]
    return [rank_chains(s1[q], ids1[q], s2[q], ids2[q], top_k, exclude_hop1, dedup, hop2_k=beam_size)
            for q in range(len(questions))]


def chains_from_ranking(scores: np.ndarray, ids: np.ndarray, top_k: int | None = None) -> list[Chain]:
    """Chains of a single-hop ranking: every pair of its passages, ranked by the sum of their scores.

    (Passages enter the chain ranking in the order of the ranking, so the first k distinct
    passages of the chains are the ranking's top k.)
    """
    keep = [(float(s), d) for s, d in zip(scores, ids) if d is not None]
    cands = [(-(keep[i][0] + keep[j][0]), i, j) for i in range(len(keep)) for j in range(i + 1, len(keep))]
    cands.sort()
    if top_k is not None:
        cands = cands[:top_k]
    return [Chain((keep[i][1], keep[j][1]), (keep[i][0], keep[j][0])) for _, i, j in cands]


# ------------------------------------------------------------------------------------------------
# corpora and index folders (library, CLI, bench, demo)


def index_corpus(encoder, corpus: Corpus, batch_size: int = 64, max_length: int | None = 256,
                 factory: str = "Flat", show_progress: bool | None = None) -> Index:
    """Encode ``title text`` of every passage into a new index (ids = corpus ids)."""
    ids = list(corpus)
    vectors = encoder.encode([doc_text(corpus[d]) for d in ids], batch_size=batch_size, max_length=max_length,
                             show_progress=show_progress)  # (N, d)
    index = FaissIndex(vectors.shape[1], factory=factory)
    index.add(ids, vectors)
    return index


def search_index_folder(path: str | Path, questions: Sequence[str], beam_size: int = 10, top_k: int = 5,
                        model: str | None = None, bm25_weights: tuple[float, float] | None = None,
                        ) -> tuple[list[list[Chain]], dict[str, dict[str, str]]]:
    """``reprlab search --multihop --index DIR``: beam search over an index folder written by ``reprlab index``.

    ``model`` overrides the query model recorded in the folder (e.g. the ``query/`` tower of a
    second-stage MDR model whose ``passage/`` tower built the index). ``bm25_weights`` (hop 1, hop 2)
    fuses BM25 over the folder's documents into both hops (:class:`SparseFusion`). Returns (chains, docs).
    """
    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.load(path)
    source = model or retriever.model_name
    settings = mdr_settings(source)
    query_model = SentenceEncoder.from_pretrained(model) if model else retriever.model
    if not retriever.docs:
        raise ModelLoadError(f"{path} has no docs.jsonl: rebuild it with `reprlab index` to search it multi-hop")
    sparse = None
    if bm25_weights is not None:
        from reprlab.retrieval.pipeline import bm25_for_corpus

        sparse = SparseFusion(bm25_for_corpus(retriever.docs), *bm25_weights)
    chains = multihop_search(query_model, list(questions), retriever.index, retriever.docs, beam_size, top_k,
                             settings["hop2_title"], settings["max_question_length"], settings["max_query_length"],
                             sparse=sparse)
    return chains, retriever.docs


def format_chains(question: str, chains: Sequence[Chain], docs: Corpus, gold: Sequence[str] = (),
                  width: int = 70) -> str:
    """Printable top chains: rank, chain score, and each hop's score and title (``*`` = gold)."""

    def name(pid: str) -> str:
        title = (docs.get(pid) or {}).get("title") or pid
        mark = "*" if pid in gold else " "
        return f"{mark}{title[:width]}"

    lines = [f"Q: {question}"]
    for rank, c in enumerate(chains, 1):
        lines.append(f"  {rank}. [{c.score:.3f}] {name(c.passages[0])} ({c.scores[0]:.3f})  ->  "
                     f"{name(c.passages[1])} ({c.scores[1]:.3f})")
    return "\n".join(lines)
