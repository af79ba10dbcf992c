import pytest


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory):
    """MiniLM exported once (fused fp32 + int8) for the tests of this folder."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from reprlab.encoder import SentenceEncoder
    from reprlab.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "minilm"
    export_onnx(SentenceEncoder.from_pretrained("minilm"), out, int8=True, source="minilm")
    return out


WORDS = ["protein", "cell", "virus", "gene", "drug", "heart", "brain", "lung", "blood", "liver"]


def tiny_corpus(n: int = 30) -> dict:
    return {f"d{i}": {"title": f"{WORDS[i % 10].title()} study {i}",
                      "text": f"A study of {WORDS[i % 10]} and {WORDS[(i * 3) % 10]} in {WORDS[(i * 7) % 10]} "
                              f"tissue, number {i}. Proteins were measured."}
            for i in range(n)}


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, tiny_model_dir):
    """An index folder (`reprlab index` layout) of a 30-document corpus, encoded by the tiny model."""
    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.from_model(tiny_model_dir)
    retriever.index_corpus(tiny_corpus(), show_progress=False)
    folder = tmp_path_factory.mktemp("index") / "tiny-index"
    retriever.save(folder)
    return folder


@pytest.fixture(scope="session")
def reader_dir(tmp_path_factory):
    """A random tiny Block Skim reader (answers are spans of the passage, whatever they are)."""
    import torch

    from reprlab.encoder import Encoder, EncoderConfig
    from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader
    from reprlab.qa.reader import ReaderConfig
    from reprlab.text import Tokenizer

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512))
    reader = BlockSkimReader(encoder, Tokenizer.from_pretrained("minilm"), ReaderConfig(max_length=128, stride=32),
                             BlockSkimConfig(skim_layers=[0], threshold=0.9))
    folder = tmp_path_factory.mktemp("reader") / "reader"
    reader.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def service_config(index_dir, reader_dir):
    from reprlab.serve import ServeConfig

    return ServeConfig(index=str(index_dir), multihop_index=str(index_dir), reader=str(reader_dir), batch_wait_ms=1)


@pytest.fixture
def client(service_config):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from reprlab.serve import Service, create_app

    with TestClient(create_app(Service.from_config(service_config))) as c:
        yield c


@pytest.fixture(scope="session")
def plain_reader_dir(tmp_path_factory):
    """A random tiny plain reader (it reads every block: always an answer span)."""
    import torch

    from reprlab.encoder import Encoder, EncoderConfig
    from reprlab.qa.reader import Reader, ReaderConfig
    from reprlab.text import Tokenizer

    torch.manual_seed(0)
    reader = Reader(Encoder(EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512)),
                    Tokenizer.from_pretrained("minilm"), ReaderConfig(max_length=128, stride=32))
    folder = tmp_path_factory.mktemp("plain-reader") / "reader"
    reader.save_pretrained(folder)
    return folder
