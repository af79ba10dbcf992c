import json

import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.text.tokenizer import Tokenizer

CONTEXTS = [
    "Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
    "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "Beyonce headlined the halftime show, with Coldplay and Bruno Mars as special guests.",
    "The Panthers defense gave up just 308 points, ranking sixth in the league.",
]
QAS = [
    ("Who won the game?", "Denver Broncos"),
    ("Where was the game played?", "Levi's Stadium"),
    ("Who headlined the halftime show?", "Beyonce"),
    ("How many points did the Panthers give up?", "308"),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, above all on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A random 2-layer, 32-wide encoder with MiniLM's word-piece vocabulary and tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512, hidden_dropout=0.0,
                                     attention_dropout=0.0))
    enc.save_pretrained(folder)
    Tokenizer.from_pretrained("minilm").save(folder)
    return folder


def write_squad(path, qas=QAS, contexts=CONTEXTS, title="T"):
    paragraphs = []
    for i, ((q, a), c) in enumerate(zip(qas, contexts)):
        paragraphs.append({"context": c, "qas": [{"id": f"{title}-{i}", "question": q,
                                                  "answers": [{"text": a, "answer_start": c.index(a)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}))
    return path
