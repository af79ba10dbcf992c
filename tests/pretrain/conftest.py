import pytest
import torch

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.text.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer.from_pretrained("minilm")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A random-init 2-layer, 32-wide encoder with MiniLM's tokenizer, saved as a sentence-encoder folder."""
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size, max_position_embeddings=64))
    folder = tmp_path_factory.mktemp("tiny") / "model"
    SentenceEncoder(encoder, tokenizer, pooling="mean", normalize=True, max_length=64).save_pretrained(folder)
    return folder


TEXT = (
    "Electroencephalography recordings of the dentate gyrus were compared with magnetic resonance imaging. "
    "The peroxisome proliferator activated receptor regulates lipid metabolism in the liver. "
    "Patients in the intensive care unit received endotracheal intubation within two hours. "
    "New York and Kuala Lumpur hosted the meetings of the working group on antimicrobial resistance."
)


@pytest.fixture(scope="session")
def toy_texts():
    """Forty short documents of real-looking English with multi-piece words."""
    import random

    rng = random.Random(0)
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    return [" ".join(rng.sample(sentences, k=rng.randint(1, 4))) for _ in range(40)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
