"""Dense retrieval over an index: exactness, save/load, hybrid fusion."""

import numpy as np
import pytest

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, DataFormatError
from reprlab.retrieval.dense import DenseRetriever
from reprlab.text.beir import doc_text
from reprlab.retrieval.pipeline import HybridRetriever, bm25_for_corpus, build_retriever, retrieve

CORPUS = {
    "bm25": {"title": "BM25", "text": "BM25 ranks documents by term frequency and inverse document frequency."},
    "faiss": {"title": "FAISS", "text": "FAISS searches dense vectors by inner product or L2 distance."},
    "mdr": {"title": "Multi-hop", "text": "Multi-hop retrieval finds a second passage after reading the first one."},
    "cka": {"title": "CKA", "text": "Centered kernel alignment compares the representations of two layers."},
}


@pytest.fixture(scope="module")
def model():
    return SentenceEncoder.from_pretrained("minilm")


def test_dense_search_equals_brute_force(model):
    retriever = DenseRetriever(model, model_name="minilm")
    retriever.index_corpus(CORPUS)
    queries = ["how do I compare two layers?", "vector search library"]
    scores, ids = retriever.search(queries, k=4)
    q = model.encode(queries)
    d = model.encode([doc_text(CORPUS[i]) for i in CORPUS])
    brute = q @ d.T
    order = np.argsort(-brute, axis=1)
    assert ids.tolist() == [[list(CORPUS)[j] for j in row] for row in order]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, 1), atol=1e-5)
    assert ids[0, 0] == "cka" and ids[1, 0] == "faiss"


def test_save_load_round_trip(model, tmp_path):
    retriever = DenseRetriever(model, model_name="minilm")
    retriever.index_corpus(CORPUS)
    retriever.save(tmp_path / "idx")
    back = DenseRetriever.load(tmp_path / "idx", model=model)
    a, b = retriever.search(["second passage"], 3), back.search(["second passage"], 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].tolist() == b[1].tolist()
    assert back.docs["mdr"]["title"] == "Multi-hop"
    with pytest.raises(DataFormatError, match="reprlab index"):
        DenseRetriever.load(tmp_path)


def test_hybrid_fuses_and_run_is_complete(model):
    dense = DenseRetriever(model)
    dense.index_corpus(CORPUS)
    hybrid = HybridRetriever([bm25_for_corpus(CORPUS), dense], depth=4)
    run = retrieve(hybrid, {"q1": "term frequency ranking", "q2": "inner product vectors"}, k=2)
    assert set(run) == {"q1", "q2"} and all(len(v) == 2 for v in run.values())
    assert max(run["q1"], key=run["q1"].get) == "bm25"
    assert max(run["q2"], key=run["q2"].get) == "faiss"


def test_unknown_retriever_is_a_clear_error():
    with pytest.raises(ConfigError, match="bm25, minilm, hybrid"):
        build_retriever("nonsense", CORPUS)
