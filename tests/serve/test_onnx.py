"""ONNX export and the ONNX Runtime backend against the torch model they come from."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder  # noqa: E402
from reprlab.errors import ConfigError, ModelLoadError  # noqa: E402
from reprlab.onnx import FusableForward, OnnxSentenceEncoder, export_onnx, fusable  # noqa: E402

TEXTS = ["protein folding", "the heart pumps blood through the body",
         "a considerably longer document about dense retrieval, approximate nearest neighbour search and the "
         "way a sentence encoder maps questions and passages into one vector space",
         "gene", "viral infection of lung cells", "x " * 300]  # the last one is truncated at max_length


def padded_batch(model, texts):
    batch = model.tokenizer(texts, max_length=model.max_length)
    assert (batch.attention_mask == 0).any()  # the batch really is padded
    return batch.input_ids, batch.attention_mask


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_fusable_forward_computes_the_models_forward(name, tiny_model_dir):
    model = SentenceEncoder.from_pretrained(tiny_model_dir if name == "tiny" else "minilm").eval()
    assert fusable(model)
    ids, mask = padded_batch(model, TEXTS)
    with torch.inference_mode():
        torch.testing.assert_close(FusableForward(model)(ids, mask), model(ids, mask), atol=1e-5, rtol=0)


def test_fp32_graph_equals_torch_on_a_padded_batch(minilm_onnx):
    torch_model = SentenceEncoder.from_pretrained("minilm").eval()
    onnx_model = OnnxSentenceEncoder.from_pretrained(minilm_onnx)
    ids, mask = padded_batch(torch_model, TEXTS)
    got = onnx_model.session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.inference_mode():
        ref = torch_model(ids, mask).numpy()
    assert np.abs(got - ref).max() < 1e-4
    # encode(): sorted, batched, padded per batch, returned in the order given
    np.testing.assert_allclose(onnx_model.encode(TEXTS, batch_size=4), torch_model.encode(TEXTS, batch_size=4),
                               atol=1e-4, rtol=0)
    meta = json.loads((minilm_onnx / "onnx.json").read_text())
    assert meta["fusions"].get("Attention") == 6 and meta["check"]["fp32_max_abs_diff"] < 1e-4


def test_int8_vectors_stay_close_to_fp32(minilm_onnx):
    texts = [f"{a} {b} in patients with {c}" for a in ("effects of", "no link between", "risk of")
             for b in ("statins", "vitamin D", "smoking", "exercise") for c in ("diabetes", "cancer", "asthma")]
    fp32 = OnnxSentenceEncoder.from_pretrained(minilm_onnx).encode(texts)
    int8 = OnnxSentenceEncoder.from_pretrained(minilm_onnx, int8=True).encode(texts)
    cos = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cos.mean() >= 0.99
    assert np.abs(fp32 - int8).max() > 1e-4  # it really is another graph


def test_sentence_encoder_backend_and_dense_retriever(minilm_onnx):
    from reprlab.retrieval.dense import DenseRetriever

    model = SentenceEncoder.from_pretrained(minilm_onnx, backend="onnx")
    assert isinstance(model, OnnxSentenceEncoder) and model.dim == 384 and model.variant == "fp32"
    assert SentenceEncoder.from_pretrained(minilm_onnx, backend="onnx-int8").variant == "int8"
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(TEXTS)}
    found = {}
    for name, m in (("torch", SentenceEncoder.from_pretrained("minilm")), ("onnx", model)):
        retriever = DenseRetriever(m)
        retriever.index_corpus(corpus, show_progress=False)
        found[name] = retriever.search(["blood and the heart", "lung infection"], k=3)[1].tolist()
    assert found["onnx"] == found["torch"]


def unfusable_model():
    from reprlab.text import Tokenizer

    torch.manual_seed(0)
    config = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512, num_memory_tokens=2)
    return SentenceEncoder(Encoder(config), Tokenizer.from_pretrained("minilm"), "mean", True, 64)


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_unfusable_models_and_the_dynamo_exporter_export_their_own_forward(tmp_path, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = unfusable_model()
    assert not fusable(model)
    out = export_onnx(model, tmp_path / exporter, exporter=exporter)
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["fusions"] == {} and meta["check"]["fp32_max_abs_diff"] < 1e-4
    np.testing.assert_allclose(OnnxSentenceEncoder.from_pretrained(out).encode(TEXTS, batch_size=3),
                               model.encode(TEXTS, batch_size=3), atol=1e-4, rtol=0)


def test_errors_name_what_to_do(tmp_path, tiny_model_dir, minilm_onnx):
    with pytest.raises(ModelLoadError, match="reprlab export onnx"):
        SentenceEncoder.from_pretrained(tiny_model_dir, backend="onnx")
    with pytest.raises(ConfigError, match="backend"):
        SentenceEncoder.from_pretrained(tiny_model_dir, backend="tensorrt")
    fp32_only = export_onnx(SentenceEncoder.from_pretrained(tiny_model_dir), tmp_path / "fp32")
    with pytest.raises(ModelLoadError, match="--int8"):
        OnnxSentenceEncoder.from_pretrained(fp32_only, int8=True)
    with pytest.raises(ConfigError, match="precision"):
        OnnxSentenceEncoder.from_pretrained(minilm_onnx).encode(["x"], precision="fp8")


def test_service_with_the_onnx_backend_exports_at_start_and_searches_alike(index_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from reprlab.serve import ServeConfig, Service, create_app

    results = {}
    for backend in ("torch", "onnx"):
        with TestClient(create_app(Service.from_config(ServeConfig(index=str(index_dir), backend=backend)))) as c:
            body = c.post("/search", json={"query": "virus in the lung", "k": 5}).json()
            assert c.get("/stats").json()["backend"] == backend
        results[backend] = [(h["id"], h["score"]) for h in body["results"]]
    assert [i for i, _ in results["onnx"]] == [i for i, _ in results["torch"]]
    np.testing.assert_allclose([s for _, s in results["onnx"]], [s for _, s in results["torch"]], atol=1e-4)
