"""The HTTP API in-process (FastAPI's TestClient): answers, errors naming their fields, limits."""

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from reprlab.serve.highlight import query_terms, snippet  # noqa: E402


def test_search_modes_agree_with_the_library(client, index_dir):
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.pipeline import bm25_for_corpus

    library = DenseRetriever.load(index_dir)
    query = "virus in the lung"
    scores, ids = library.search([query], k=5)
    r = client.post("/search", json={"query": query, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in body["results"]] == list(ids[0])
    np.testing.assert_allclose([h["score"] for h in body["results"]], scores[0], atol=1e-5)
    assert body["index_version"] == index_dir.name and body["took_ms"] > 0
    _, bm25_ids = bm25_for_corpus(library.docs).search([query], k=5)
    r = client.post("/search", json={"query": query, "k": 5, "mode": "bm25"}).json()
    assert [h["id"] for h in r["results"]] == [d for d in bm25_ids[0] if d is not None]
    hybrid = client.post("/search", json={"query": query, "k": 5, "mode": "hybrid"}).json()["results"]
    assert len(hybrid) == 5 and set(h["id"] for h in hybrid) <= set(library.docs)


def test_hits_highlight_the_query_terms(client):
    hit = client.post("/search", json={"query": "protein virus", "k": 3}).json()["results"][0]
    marked = {hit["snippet"][s["start"]:s["end"]].lower() for s in hit["highlights"]}
    assert marked and all(m.startswith(("protein", "virus")) for m in marked)


def test_highlight_false_skips_the_terms_but_not_the_results(client):
    from reprlab.serve.highlight import leading_snippet

    query = {"query": "protein virus in the lung", "k": 5}
    marked = client.post("/search", json=query).json()["results"]
    plain = client.post("/search", json={**query, "highlight": False}).json()["results"]
    assert [(h["id"], h["score"], h["title"]) for h in plain] == [(h["id"], h["score"], h["title"]) for h in marked]
    assert any(h["highlights"] for h in marked)
    assert all(h["highlights"] == [] and h["title_highlights"] == [] for h in plain)
    texts = {h["id"]: h for h in client.post("/search", json={**query, "k": 30}).json()["results"]}
    assert all(h["snippet"] == leading_snippet(texts[h["id"]]["snippet"]) for h in plain)  # short texts: whole


def test_term_spans_equal_the_plain_reference():
    from reprlab.serve.highlight import leading_snippet, term_spans, term_spans_plain

    texts = ["Proteins and protein-coding genes: the PROTEOME of 2 cells (type 2 diabetes, T2D).",
             "Ärzte prüfen Proteine; naïve T-cells in the lung's Lungen, ΣΑΣ and σας, İstanbul 5mg/d.",
             "an an an anatomy ana analysis analyses", ""]
    queries = [["protein", "prot", "genes", "2", "type"], ["prot", "protein"], ["an", "ana", "anal"],
               ["ärzte", "naïve", "lung", "σας", "i̇stanbul", "5mg"], ["cells", "t2d", "d"], []]
    for text in texts:
        for terms in queries:
            assert term_spans(text, terms) == term_spans_plain(text, terms), (text, terms)
    assert term_spans(texts[2], ["ana", "an"]) == [(0, 2, "an"), (3, 5, "an"), (6, 8, "an"), (9, 16, "ana"),
                                                 (17, 20, "ana"), (21, 29, "ana"), (30, 38, "ana")]
    for long in ("word " * 100, "a " + "x" * 300, "y" * 100 + " " + "z" * 300):  # cut at a space, or not
        assert leading_snippet(long) == snippet(long, [])[0] and len(leading_snippet(long)) <= 282
    assert leading_snippet("short text") == "short text"


def test_filters_keep_only_matching_documents(client):
    r = client.post("/search", json={"query": "study", "k": 10, "mode": "bm25",
                                     "filters": [{"field": "title", "op": "prefix", "value": "heart"}]})
    titles = [h["title"] for h in r.json()["results"]]
    assert titles and all(t.startswith("Heart") for t in titles) and len(titles) == 3


def test_multihop_returns_two_hop_chains(client, index_dir):
    from reprlab.retrieval.mdr import search_index_folder

    expected, _ = search_index_folder(index_dir, ["virus in the lung"], beam_size=4, top_k=3)
    for weights in (None, [0.2, 0.3]):
        r = client.post("/multihop", json={"question": "virus in the lung", "k": 3, "beam": 4,
                                           "bm25_weights": weights})
        assert r.status_code == 200, r.text
        chains = r.json()["chains"]
        assert len(chains) == 3 and all(len(c["hops"]) == 2 for c in chains)
        if weights is None:
            assert [tuple(h["id"] for h in c["hops"]) for c in chains] == [c.passages for c in expected[0]]


def test_answer_over_given_or_retrieved_passages(client):
    passages = ["The heart pumps blood.", "Proteins fold in the cell."]
    r = client.post("/answer", json={"question": "What pumps blood?", "passages": passages, "top": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["block_skim"] is True and body["index_version"] is None
    for a in body["answers"]:
        assert a["passage"] == passages[a["passage_index"]] and a["passage"][a["start"]:a["end"]] == a["text"]
    plain = client.post("/answer", json={"question": "What pumps blood?", "passages": passages,
                                         "block_skim": False}).json()
    assert plain["block_skim"] is False
    retrieved = client.post("/answer", json={"question": "virus in the lung", "k": 3}).json()
    assert retrieved["index_version"] and all(a["passage_id"] for a in retrieved["answers"])


def test_block_skim_on_and_off_answer_as_the_library_does(client, reader_dir):
    from reprlab.qa.reader import load_reader

    question = "Which organ pumps blood?"
    passage = " ".join(f"Sentence {i} says the heart pumps blood and the liver filters it." for i in range(12))
    reader = load_reader(reader_dir)
    skimmed = [(a.start, a.end) for a in reader.answer(question, passage, top_k=3)]
    reader.skim_config.threshold = 0.0
    plain = [(a.start, a.end) for a in reader.answer(question, passage, top_k=3)]
    assert skimmed != plain  # skimming changes what this reader reads
    for flag, want in ((False, plain), (None, skimmed), (True, skimmed)):  # off first: the threshold comes back
        body = client.post("/answer", json={"question": question, "passages": [passage], "top": 3,
                                            "block_skim": flag}).json()
        assert [(a["start"], a["end"]) for a in body["answers"]] == want and body["block_skim"] == (flag is not False)


def test_encode_equals_the_library_encoder(client, tiny_model_dir):
    from reprlab.encoder import SentenceEncoder

    texts = ["protein folding", "a longer text about the liver and the blood"]
    r = client.post("/encode", json={"texts": texts})
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json()["vectors"]), SentenceEncoder.from_pretrained(tiny_model_dir)
                               .encode(texts), atol=1e-5)


def test_health_stats_and_page(client):
    client.post("/search", json={"query": "gene"})
    client.post("/search", json={"query": ""})
    assert client.get("/health").json()["status"] == "ok"
    stats = client.get("/stats").json()
    assert stats["requests"]["/search"] == 2 and stats["errors"]["/search"] == 1
    assert stats["latency"]["/search"]["count"] == 2 and stats["latency"]["/search"]["p50_ms"] > 0
    assert stats["documents"] == 30 and stats["endpoints"] == ["/answer", "/encode", "/health", "/multihop",
                                                               "/search", "/stats"]
    from reprlab.serve.service import default_workers  # the config leaves the workers automatic

    assert stats["encode_workers"] == default_workers("torch") and stats["encode_threads"] >= 1
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<script>")[1]


@pytest.mark.parametrize("body, field", [
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "x" * 1001}, "query"),
    ({"query": "gene", "k": 0}, "k"),
    ({"query": "gene", "k": 101}, "k"),
    ({"query": "gene", "k": "ten"}, "k"),
    ({"query": "gene", "mode": "sparse"}, "mode"),
    ({"query": "gene", "colour": "red"}, "colour"),
    ({"query": "gene", "filters": [{"field": "colour", "value": "x"}]}, "filters.0.field"),
    ({"query": "gene\ud800"}, "query"),
    ({"query": "gene", "filters": [{"field": "title", "value": "x\ud800"}]}, "filters.0.value"),
    ({"k": 3}, "query"),
])
def test_bad_search_requests_get_a_422_naming_the_field(client, body, field):
    r = client.post("/search", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_bad_bodies_are_4xx_with_json(client):
    for content in (b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100000):
        r = client.post("/search", content=content, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), (content[:10], r.status_code)
    r = client.post("/search", content=b'{"query": "' + b"a" * 1_000_001 + b'"}')
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"
    chunks = (b'{"query": "' + b"a" * 100_000 + (b'"}' if i == 10 else b"") for i in range(11))  # no length given
    r = client.post("/search", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/multihop", content=b'{"question": "q", "bm25_weights": [NaN, 1]}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    r = client.post("/answer", json={"question": "q", "passages": ["p"] * 21})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "passages"
    r = client.post("/encode", json={"texts": ["t"] * 65})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "texts"
    assert client.get("/nowhere").status_code == 404 and client.get("/search").status_code == 405


def test_snippet_windows_and_spans():
    text = "Filler words here. " * 30 + "The virus infects lung cells quickly. " + "More filler text. " * 30
    body, spans = snippet(text, query_terms("Which virus infects the lungs?"), width=120)
    assert len(body) <= 120 + 4 and {body[a:b].lower() for a, b in spans} == {"virus", "infects"}
    assert query_terms("Is vitamin D linked to type 2 diabetes?") == ["vitamin", "linked", "type", "2", "diabetes"]
    short, spans = snippet("Proteins of the cell.", ["protein"])
    assert short == "Proteins of the cell." and spans == [(0, 8)]
