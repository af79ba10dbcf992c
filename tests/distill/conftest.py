import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.text.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer.from_pretrained("minilm")


def tiny_sentence_encoder(tokenizer, seed=0, **overrides) -> SentenceEncoder:
    """A random-init encoder (2 layers, 32 wide unless overridden) with MiniLM's tokenizer."""
    torch.manual_seed(seed)
    config = EncoderConfig.tiny(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **overrides)
    return SentenceEncoder(Encoder(config), tokenizer, pooling="mean", normalize=True, max_length=32)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """A 4-layer, 32-wide teacher saved as a sentence-encoder folder."""
    folder = tmp_path_factory.mktemp("teacher") / "model"
    tiny_sentence_encoder(tokenizer, num_layers=4).save_pretrained(folder)
    return folder


SENTENCES = [
    "Electroencephalography recordings of the dentate gyrus were compared with imaging.",
    "The peroxisome proliferator activated receptor regulates lipid metabolism.",
    "Patients in the intensive care unit received endotracheal intubation.",
    "Antimicrobial resistance spreads through hospital wastewater.",
    "Vitamin D supplementation did not reduce fractures in older adults.",
    "Dense retrieval encodes queries and documents into one vector space.",
    "The working group met in New York and Kuala Lumpur.",
    "Myocardial infarction risk rises with systolic blood pressure.",
]


@pytest.fixture(scope="session")
def texts():
    import random

    rng = random.Random(0)
    return [" ".join(rng.sample(SENTENCES, k=rng.randint(1, 3))) for _ in range(48)]
