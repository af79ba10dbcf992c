"""The encoder against transformers / sentence-transformers, round trips, fast vs eager paths."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError, ReprlabError
from reprlab.text import Tokenizer

TEXTS = [
    "Dense retrieval encodes queries and passages into one vector space.",
    "BM25",
    "Vitamin D deficiency is associated with an increased risk of tuberculosis in some populations, "
    "but the causal direction remains unclear.",
    "Les modèles multilingues gèrent-ils les accents ? Ünïcödé and CJK: 東京",
]


@pytest.fixture(scope="module")
def ours():
    return SentenceEncoder.from_pretrained("minilm").eval()


def test_matches_transformers_hidden_states_and_attentions(ours, minilm_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModel.from_pretrained(str(minilm_path), attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    ref = hf_tok(TEXTS, padding=True, return_tensors="pt")
    batch = ours.tokenize(TEXTS)
    assert torch.equal(ref["input_ids"], batch.input_ids)
    assert torch.equal(ref["attention_mask"], batch.attention_mask)
    assert batch.attention_mask.sum(1).min() < batch.attention_mask.shape[1], "the batch must contain padding"
    with torch.no_grad():
        want = hf(**ref, output_hidden_states=True, output_attentions=True)
        got = ours.encoder(batch.input_ids, batch.attention_mask, output_hidden_states=True, output_attentions=True)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(got.last_hidden_state[mask], want.last_hidden_state[mask], atol=1e-5, rtol=0)
    assert len(got.hidden_states) == len(want.hidden_states) == 7
    for a, b in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=0)
    for a, b in zip(got.attentions, want.attentions):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_matches_sentence_transformers(ours, minilm_path):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    got = ours.encode(TEXTS, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (4, 384)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_tokenizer_matches_transformers_pairs_offsets_and_word_ids(minilm_path):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    tok = Tokenizer.from_pretrained("minilm")
    questions, contexts = TEXTS[:2], TEXTS[2:]
    ref = hf_tok(questions, contexts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    got = tok(questions, contexts, max_length=24, return_offsets=True, return_word_ids=True)
    assert torch.equal(ref["input_ids"], got.input_ids)
    assert torch.equal(ref["token_type_ids"], got.token_type_ids)
    enc = hf_tok(TEXTS[2], return_offsets_mapping=True)
    single = tok([TEXTS[2]], return_offsets=True, return_word_ids=True)
    assert single.offsets[0].tolist() == [list(o) for o in enc["offset_mapping"]]
    assert single.word_ids[0].tolist() == [-1 if w is None else w for w in enc.word_ids()]
    # offsets point at the text the token came from
    s, e = single.offsets[0, 1].tolist()
    assert TEXTS[2][s:e].lower() == tok.convert_ids_to_tokens([single.input_ids[0, 1]])[0]


def test_sdpa_path_equals_eager_path(ours):
    batch = ours.tokenize(TEXTS)
    with torch.no_grad():
        fast = ours.encoder(batch.input_ids, batch.attention_mask).last_hidden_state
        eager = ours.encoder(batch.input_ids, batch.attention_mask, output_attentions=True).last_hidden_state
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(fast[mask], eager[mask], atol=1e-5, rtol=0)


def test_padded_batch_equals_one_by_one(ours):
    together = ours.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([ours.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_encode_keeps_input_order_when_sorting_by_length(ours):
    shuffled = [TEXTS[i] for i in (2, 0, 3, 1)]
    a = ours.encode(TEXTS, batch_size=2)
    b = ours.encode(shuffled, batch_size=2)
    np.testing.assert_allclose(a[[2, 0, 3, 1]], b, atol=1e-5, rtol=0)


def test_encode_copies_pending_vectors_back_in_the_right_rows(ours, monkeypatch):
    """Vectors wait on the device and are copied back every ENCODE_PENDING_ROWS rows; rows must not mix."""
    import reprlab.encoder

    texts = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(7)]
    whole = ours.encode(texts, batch_size=7)
    monkeypatch.setattr(reprlab.encoder, "ENCODE_PENDING_ROWS", 3)  # copies mid-way and at the end
    np.testing.assert_allclose(ours.encode(texts, batch_size=1), whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.encode(texts, batch_size=2), whole, atol=1e-5, rtol=0)


def test_save_pretrained_round_trip_and_loads_in_transformers(ours, tmp_path):
    out = tmp_path / "model"
    ours.save_pretrained(out)
    back = SentenceEncoder.from_pretrained(out).eval()
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (back.pooling.mode, back.normalize, back.max_length) == ("mean", True, 256)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModel.from_pretrained(str(out)).eval()
    batch = ours.tokenize(TEXTS)
    with torch.no_grad():
        want = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        got = back.encoder(batch.input_ids, batch.attention_mask).last_hidden_state
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=0)
    st = pytest.importorskip("sentence_transformers")
    np.testing.assert_allclose(
        st.SentenceTransformer(str(out), device="cpu").encode(TEXTS), ours.encode(TEXTS), atol=1e-5, rtol=0
    )


def test_tiny_encoder_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny(hidden_dropout=0.0, attention_dropout=0.0))
    enc.save_pretrained(tmp_path / "tiny")
    back = Encoder.from_pretrained(tmp_path / "tiny")
    assert back.config == enc.config
    ids = torch.randint(5, 1000, (2, 9))
    torch.testing.assert_close(back(ids).last_hidden_state, enc(ids).last_hidden_state, atol=0, rtol=0)


def test_half_precision_checkpoint_loads_as_float32(minilm_path, tmp_path):
    folder = tmp_path / "fp16"
    shutil.copytree(minilm_path, folder)
    state = load_file(str(folder / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_file(half, str(folder / "model.safetensors"))
    model = Encoder.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    asked = Encoder.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in asked.parameters())


def test_bad_inputs_raise_clear_errors(tmp_path, ours):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        Encoder.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config.json: not valid JSON \(line 1"):
        Encoder.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                                                 "num_hidden_layers": 1, "num_attention_heads": 2}))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        Encoder.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="not supported"):
        Encoder.from_pretrained(bad)
    with pytest.raises(ConfigError, match="unknown attention 'nope'; choose one of: .*softmax"):
        EncoderConfig.tiny(attention="nope")
    with pytest.raises(ReprlabError, match="empty"):
        ours.encode([])
    with pytest.raises(ConfigError, match="positions"):
        Encoder(EncoderConfig.tiny())(torch.ones(1, 200, dtype=torch.long))


def test_loads_a_folder_saved_by_sentence_transformers(ours, minilm_path, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 128
    model.save(str(tmp_path / "st"))
    back = SentenceEncoder.from_pretrained(tmp_path / "st")
    assert (back.pooling.mode, back.normalize, back.max_length) == ("mean", True, 128)
    np.testing.assert_allclose(back.encode(TEXTS), model.encode(TEXTS), atol=1e-5, rtol=0)


def test_tokenizer_says_once_when_max_length_is_cut_to_the_model_limit(caplog):
    tok = Tokenizer.from_pretrained("minilm")
    long = "word " * 700
    with caplog.at_level("WARNING", logger="reprlab"):
        assert tok([long], max_length=400).input_ids.shape[1] == 400  # inside the limit: no word
        assert not caplog.records
        assert tok([long], max_length=2048).input_ids.shape[1] == tok.model_max_length
        tok([long], max_length=2048)
    assert len(caplog.records) == 1 and "2048" in caplog.text and str(tok.model_max_length) in caplog.text
