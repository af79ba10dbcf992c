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
