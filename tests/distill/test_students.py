"""Students by layer selection equal the teacher's layers; students from configs; spec parsing."""

import pytest
import torch

from reprlab.distill.students import build_student, student_from_config, student_from_layers
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError

from .conftest import tiny_sentence_encoder


def test_layer_selection_copies_the_teachers_layers(tokenizer):
    teacher = tiny_sentence_encoder(tokenizer, num_layers=6).eval()
    student = student_from_layers(teacher, [0, 2, 4]).eval()
    assert student.encoder.config.num_layers == 3
    t_state, s_state = teacher.encoder.state_dict(), student.encoder.state_dict()
    for j, i in enumerate([0, 2, 4]):
        for name, value in teacher.encoder.layers[i].state_dict().items():
            assert torch.equal(s_state[f"layers.{j}.{name}"], value)
    for name in t_state:
        if name.startswith("embeddings."):
            assert torch.equal(s_state[name], t_state[name])
    # the student's forward is the teacher's layers 0, 2, 4 applied in turn
    batch = tokenizer(["a short text", "dense retrieval of scientific claims"], max_length=16)
    ids, mask = batch.input_ids, batch.attention_mask
    x = teacher.encoder.embed(ids)
    for i in [0, 2, 4]:
        x, _ = teacher.encoder.layers[i](x, mask.bool())
    torch.testing.assert_close(student.encoder(ids, mask).last_hidden_state, x)
    # independent copies: training the student leaves the teacher alone
    before = teacher.encoder.layers[0].ffn.up.weight.clone()
    with torch.no_grad():
        student.encoder.layers[0].ffn.up.weight.add_(1.0)
    assert torch.equal(teacher.encoder.layers[0].ffn.up.weight, before)


def test_all_layers_in_order_is_the_teacher(tokenizer):
    teacher = tiny_sentence_encoder(tokenizer).eval()
    student = build_student(teacher, "every:1").eval()
    batch = tokenizer(["the same text"], max_length=16)
    torch.testing.assert_close(student(batch.input_ids, batch.attention_mask),
                               teacher(batch.input_ids, batch.attention_mask))


def test_student_from_a_smaller_config(tokenizer):
    teacher = tiny_sentence_encoder(tokenizer, num_layers=4)
    student = build_student(teacher, "config:num_layers=1,intermediate_size=32")
    assert student.encoder.config.num_layers == 1 and student.encoder.config.intermediate_size == 32
    assert torch.equal(student.encoder.embeddings.word.weight, teacher.encoder.embeddings.word.weight)
    narrow = build_student(teacher, "config:hidden_size=16,num_heads=2,num_layers=2")
    assert narrow.dim == 16 and narrow.tokenizer is teacher.tokenizer
    enc = student_from_config(Encoder(EncoderConfig.tiny()), EncoderConfig.tiny(num_layers=1))
    assert isinstance(enc, Encoder)


def test_narrow_student_keeps_the_teachers_embedding_table(tokenizer, tmp_path):
    teacher = tiny_sentence_encoder(tokenizer, num_layers=2)
    width = teacher.encoder.config.hidden_size
    narrow = build_student(teacher, f"config:hidden_size={width // 2},num_heads=2,num_layers=1,embedding_size={width}")
    src, dst = teacher.encoder.embeddings, narrow.encoder.embeddings
    assert torch.equal(dst.word.weight, src.word.weight) and torch.equal(dst.norm.weight, src.norm.weight)
    assert dst.project.weight.shape == (width // 2, width) and narrow.dim == width // 2
    fresh = build_student(teacher, f"config:hidden_size={width // 2},num_heads=2,num_layers=1")
    assert fresh.encoder.embeddings.word.embedding_dim == width // 2  # no table of that width to copy
    decoupled = tiny_sentence_encoder(tokenizer, embedding_size=16)  # a teacher with its own projection
    shallower = build_student(decoupled, "config:num_layers=1")
    assert torch.equal(shallower.encoder.embeddings.project.weight, decoupled.encoder.embeddings.project.weight)
    narrow.eval().save_pretrained(tmp_path / "narrow")
    loaded = type(narrow).from_pretrained(str(tmp_path / "narrow")).eval()
    batch = tokenizer(["a narrow student"], max_length=16)
    torch.testing.assert_close(loaded(batch.input_ids, batch.attention_mask),
                               narrow(batch.input_ids, batch.attention_mask))


@pytest.mark.parametrize("spec, match", [
    ("layers:0,9", "do not exist"), ("layers:", "at least one"), ("layers:a", "integers"),
    ("every:0", "integers"), ("config:huge", "neither"), ("config:no_such_field=1", "bad student spec"),
    ("pick:1", "bad student spec"),
])
def test_bad_specs(tokenizer, spec, match):
    teacher = tiny_sentence_encoder(tokenizer)
    with pytest.raises(ConfigError, match=match):
        build_student(teacher, spec)


def test_select_layers_ranks_every_subset_by_agreement(tokenizer, texts):
    from reprlab.distill.students import select_layers

    teacher = tiny_sentence_encoder(tokenizer, num_layers=4)
    ranked = select_layers(teacher, texts[:12], 2, max_length=24, batch_size=5)
    assert len(ranked) == 6 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    teacher.eval()
    for layers, score in ranked[:3]:  # the cached prefixes give what a built student gives
        student = student_from_layers(teacher, layers).eval()
        a = torch.from_numpy(student.encode(texts[:12], max_length=24))
        b = torch.from_numpy(teacher.encode(texts[:12], max_length=24))
        assert score == pytest.approx(float((a * b).sum(-1).mean()), abs=1e-5)
    full = select_layers(teacher, texts[:4], 4)
    assert full[0][0] == (0, 1, 2, 3) and full[0][1] == pytest.approx(1.0, abs=1e-5)
