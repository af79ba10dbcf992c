"""Dense retrieval: a :class:`~reprlab.encoder.SentenceEncoder` over an :class:`~reprlab.retrieval.index.Index`.

The bi-encoder of DPR (Karpukhin et al., EMNLP 2020) and Sentence-BERT: documents are encoded
once into an index, a query is encoded at search time and scored by inner product (cosine for
normalised models). ``DenseRetriever.search(query_texts, k)`` has the same shape as
``BM25Index.search``, so dense, sparse and fused retrievers are interchangeable everywhere.

An index folder written by :meth:`DenseRetriever.save` holds the vectors and ids (``Index.save``),
the titles and texts of the documents (``docs.jsonl``, so ``reprlab search`` can show them) and
``retriever.json``, which names the model that encoded them (a path or ``minilm``)::

    >>> retriever = DenseRetriever.from_model("minilm")                    # doctest: +SKIP
    >>> retriever.index_corpus({"d1": {"title": "", "text": "dense retrieval"}})  # doctest: +SKIP
    >>> retriever.search(["what is dense retrieval?"], k=1)                # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from reprlab.encoder import SentenceEncoder
from reprlab.errors import DataFormatError, ModelLoadError
from reprlab.io import atomic_dir
from reprlab.retrieval.index import FaissIndex, Index
from reprlab.text.corpus import jsonl_records
from reprlab.text.beir import doc_text

Corpus = Mapping[str, Mapping[str, str]]


class DenseRetriever:
    """Encode a corpus into an index and search it with encoded queries.

    Args:
        model: the sentence encoder (queries and documents), or
        doc_model: a separate document tower (asymmetric dual encoders; defaults to ``model``).
        batch_size, precision: passed to ``SentenceEncoder.encode``.
        query_prefix / doc_prefix: strings prepended to queries / documents (E5-style models).
    """

    def __init__(
        self,
        model: SentenceEncoder,
        index: Index | None = None,
        doc_model: SentenceEncoder | None = None,
        batch_size: int = 64,
        precision: str = "fp32",
        model_name: str | None = None,
        query_prefix: str = "",
        doc_prefix: str = "",
    ):
        self.model = model
        self.doc_model = doc_model or model
        self.index = index
        self.batch_size = batch_size
        self.precision = precision
        self.model_name = model_name
        self.query_prefix = query_prefix
        self.doc_prefix = doc_prefix
        self.docs: dict[str, dict[str, str]] = {}

    @classmethod
    def from_model(cls, name_or_path: str | Path, **kwargs) -> "DenseRetriever":
        """A model folder (shared towers), a folder with ``query/`` and ``passage/`` towers, or ``minilm``."""
        path = Path(str(name_or_path))
        if (path / "query").is_dir() and (path / "passage").is_dir():
            return cls(SentenceEncoder.from_pretrained(path / "query"), model_name=str(name_or_path),
                       doc_model=SentenceEncoder.from_pretrained(path / "passage"), **kwargs)
        return cls(SentenceEncoder.from_pretrained(name_or_path), model_name=str(name_or_path), **kwargs)

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = False) -> np.ndarray:
        texts = [self.query_prefix + t for t in texts]
        return self.model.encode(texts, self.batch_size, show_progress=show_progress, precision=self.precision,
                                 desc="queries")

    def encode_corpus(self, corpus: Corpus, show_progress: bool | None = None) -> tuple[list[str], np.ndarray]:
        ids = list(corpus)
        texts = [self.doc_prefix + doc_text(corpus[i]) for i in ids]
        vectors = self.doc_model.encode(texts, self.batch_size, show_progress=show_progress,
                                        precision=self.precision, desc="corpus")
        return ids, vectors

    def index_corpus(self, corpus: Corpus, factory: str = "Flat", index: Index | None = None,
                     show_progress: bool | None = None) -> Index:
        """Encode every document of ``corpus`` and add it to a new (or the given) index."""
        ids, vectors = self.encode_corpus(corpus, show_progress)
        self.index = index or FaissIndex(vectors.shape[1], factory=factory)
        self.index.add(ids, vectors)
        self.docs = {i: {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")} for i in ids}
        return self.index

    def search(self, query_texts: Sequence[str], k: int = 10, **params) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32, ids (Q, k) object), best first."""
        if self.index is None:
            raise ModelLoadError("the retriever has no index yet: call index_corpus(corpus) or load an index folder")
        return self.index.search(self.encode_queries(query_texts), k, **params)

    def save(self, path: str | Path) -> None:
        """Write index + docs + the model's name into one folder, atomically."""
        if self.index is None:
            raise ModelLoadError("nothing to save: the retriever has no index")
        if self.model_name is None:
            raise ModelLoadError("save needs model_name (the folder or name of the encoder) to record in "
                                 "retriever.json")
        with atomic_dir(path) as tmp:
            self.index._write(tmp)
            with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
                for doc_id, doc in self.docs.items():
                    f.write(json.dumps({"_id": doc_id, **doc}, ensure_ascii=False) + "\n")
            (tmp / "retriever.json").write_text(json.dumps({
                "model": self.model_name, "batch_size": self.batch_size, "precision": self.precision,
                "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix,
            }, indent=2))

    @classmethod
    def load(cls, path: str | Path, model: SentenceEncoder | None = None) -> "DenseRetriever":
        path = Path(path)
        cfg_path = path / "retriever.json"
        if path.exists() and not path.is_dir():
            raise DataFormatError("is a file; an index is a folder written by `reprlab index`", path=str(path))
        if not cfg_path.is_file():
            raise DataFormatError("not a reprlab index folder (no retriever.json); build one with `reprlab index`",
                                  path=str(path))
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"not valid JSON ({exc})", path=str(cfg_path)) from exc
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
            raise DataFormatError('expected a JSON object with the "model" the index was built with',
                                  path=str(cfg_path))
        index = Index.load(path)
        options = dict(batch_size=cfg.get("batch_size", 64), precision=cfg.get("precision", "fp32"),
                       query_prefix=cfg.get("query_prefix", ""), doc_prefix=cfg.get("doc_prefix", ""))
        if model is not None:
            retriever = cls(model, model_name=cfg["model"], **options)
        else:
            retriever = cls.from_model(cfg["model"], **options)
        retriever.index = index
        docs_path = path / "docs.jsonl"
        if docs_path.is_file():
            for n, d in jsonl_records(docs_path):
                if not isinstance(d.get("_id"), str):
                    raise DataFormatError('expected an object with a string "_id"', str(docs_path), n)
                retriever.docs[d.pop("_id")] = d
            indexed = set(index.ids.tolist())
            unknown = [i for i in retriever.docs if i not in indexed]
            if len(retriever.docs) != len(index) or unknown:
                raise DataFormatError(f"holds {len(retriever.docs)} documents for an index of {len(index)}; the "
                                      "folder is damaged: build it again with `reprlab index`", str(docs_path))
        return retriever
