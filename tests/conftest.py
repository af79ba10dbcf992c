import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests run tiny models, for which a second thread buys little; on a loaded machine OpenMP threads
# that spin-wait for each other make them many times slower. REPRLAB_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("REPRLAB_TEST_THREADS", "1")))
SHARED_DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (set REPRLAB_SHARED_DATA)")
    return path


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(scope="session")
def minilm_path():
    from reprlab.hub import resolve_model_path

    return resolve_model_path("minilm")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny encoder with MiniLM's tokenizer, saved as a sentence-transformers folder."""
    import torch

    from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
    from reprlab.text import Tokenizer

    torch.manual_seed(0)
    config = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512)
    model = SentenceEncoder(Encoder(config), Tokenizer.from_pretrained("minilm"), "mean", True, 128)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    return folder
