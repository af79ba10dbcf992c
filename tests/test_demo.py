"""``reprlab demo``'s multi-hop step: its data file and its printing (the whole demo runs in tests/test_cli.py)."""

import hashlib

import numpy as np

from reprlab.demo import demo_data_path, load_multihop_demo, multihop_demo
from reprlab.retrieval.mdr import index_corpus
from reprlab.text.beir import load_beir


class HashEncoder:
    """A stand-in encoder: a fixed random unit vector per distinct text."""

    def encode(self, texts, batch_size=32, max_length=None, show_progress=None):
        out = []
        for t in texts:
            v = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=8)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)  # (N, 8)


def test_multihop_demo_data_completes_chains_of_the_embedded_corpus():
    passages, questions = load_multihop_demo()
    corpus = load_beir(demo_data_path(), split="test").corpus
    assert len(questions) == 2 and not set(passages) & set(corpus)
    for question, (hop1, hop2) in questions.items():
        assert question.endswith("?") and hop1 in corpus and hop2 in passages  # hop 1 leads to an added passage
    assert all(set(p) == {"title", "text"} and p["text"] for p in passages.values())


def test_demo_prints_chains_with_gold_marks():
    enc = HashEncoder()
    corpus = {f"p{i}": {"title": f"title {i}", "text": f"passage number {i} about topic {i % 5}"} for i in range(10)}
    lines = []
    chains = multihop_demo(enc, index_corpus(enc, corpus), corpus, {"which two?": ("p1", "p2")}, beam_size=3,
                           top_k=2, out=lines.append)
    text = "\n".join(lines).splitlines()
    assert len(chains[0]) == 2 and text[0] == "Q: which two?" and text[-1].startswith("  single-hop top 2: ")
    assert text[1].startswith("  1. [") and text[2].startswith("  2. [")
