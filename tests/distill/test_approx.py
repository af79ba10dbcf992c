"""Approximate computing: physical removal equals masking, parameters drop, the search finds what helps."""

import copy

import pytest
import torch

from reprlab.distill.approx import (ApproxConfig, ApproxPlan, ApproxRecipeConfig, apply_plan, contrastive_objective,
                                    count_parameters, neuron_groups, search_plan)
from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError

from .conftest import tiny_sentence_encoder


def masked_reference(enc: Encoder, plan: ApproxPlan) -> Encoder:
    """The plan by zeroing weights in a full copy (what the authors' code does): a removed head's
    value rows and output columns, a removed neuron group's down-projection columns, a removed
    block's output projection and bias."""
    ref = copy.deepcopy(enc)
    hs = enc.config.hidden_size // enc.config.num_heads
    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            if i in plan.attention_removed:
                layer.attn.out.weight.zero_()
                layer.attn.out.bias.zero_()
            for h in plan.heads_removed.get(i, []):
                layer.attn.value.weight[h * hs:(h + 1) * hs] = 0
                layer.attn.value.bias[h * hs:(h + 1) * hs] = 0
                layer.attn.out.weight[:, h * hs:(h + 1) * hs] = 0
            if i in plan.ffn_removed:
                layer.ffn.down.weight.zero_()
                layer.ffn.down.bias.zero_()
            groups = neuron_groups(enc.config.intermediate_size, plan.neuron_groups)
            for g in plan.groups_removed.get(i, []):
                layer.ffn.down.weight[:, groups[g]] = 0
    return ref


def plan_for(num_layers=3):
    return ApproxPlan(num_layers=num_layers, neuron_groups=4, ffn_removed=[2], attention_removed=[0],
                      heads_removed={1: [0, 3], 2: [1]}, groups_removed={0: [1, 3]})


def test_physical_removal_equals_masking_and_shrinks_the_model(tokenizer, tmp_path):
    model = tiny_sentence_encoder(tokenizer, num_layers=3).eval()
    plan = plan_for()
    small = apply_plan(model, plan).eval()
    c = small.encoder.config
    assert c.layer_heads == [0, 2, 3] and c.layer_intermediate == [32, 64, 0]
    assert small.encoder.layers[0].attn is None and small.encoder.layers[2].ffn is None
    assert small.encoder.layers[1].attn.query.weight.shape == (16, 32)  # 2 heads of 8
    before, after = count_parameters(model.encoder), count_parameters(small.encoder)
    removed = (4 * 32 * 32 + 4 * 32) + 2 * (3 * (8 * 32 + 8) + 8 * 32) + (3 * (8 * 32 + 8) + 8 * 32) \
        + (64 * 32 + 64 + 64 * 32 + 32) + 2 * (16 * 32 + 16 + 32 * 16)
    assert before - after == removed
    batch = tokenizer(["a short text about cells", "dense retrieval of scientific claims in biology"], max_length=24)
    ids, mask = batch.input_ids, batch.attention_mask
    ref = masked_reference(model.encoder, plan)
    torch.testing.assert_close(small.encoder(ids, mask).last_hidden_state, ref(ids, mask).last_hidden_state,
                               atol=1e-5, rtol=1e-5)
    # the model round-trips through save/load with its per-layer sizes
    small.save_pretrained(tmp_path / "small")
    again = SentenceEncoder.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(again(ids, mask), small(ids, mask))
    assert count_parameters(again.encoder) == after


def test_unpruned_parts_are_unchanged(tokenizer):
    model = tiny_sentence_encoder(tokenizer, num_layers=3).eval()
    plan = ApproxPlan(num_layers=3, ffn_removed=[2], heads_removed={2: [1]})
    small = apply_plan(model, plan).eval()
    batch = tokenizer(["unchanged below the pruned layer"], max_length=16)
    a = model.encoder(batch.input_ids, batch.attention_mask, output_hidden_states=True).hidden_states
    b = small.encoder(batch.input_ids, batch.attention_mask, output_hidden_states=True).hidden_states
    for i in range(3):  # embeddings and the outputs of layers 0 and 1 are bit-identical
        assert torch.equal(a[i], b[i])
    assert not torch.allclose(a[3], b[3])
    for name, value in model.encoder.layers[0].state_dict().items():
        assert torch.equal(small.encoder.layers[0].state_dict()[name], value)
    assert model.encoder.layers[2].ffn is not None, "the original model is not modified"


def test_search_finds_the_removal_that_helps(tokenizer, texts):
    """The held-out target is what the model computes without layer 1's FFN: the search removes exactly it."""
    model = tiny_sentence_encoder(tokenizer, num_layers=2).eval()
    target_plan = ApproxPlan(num_layers=2, ffn_removed=[1])
    with torch.no_grad():
        target = apply_plan(model, target_plan).eval().encode(texts, max_length=32)
    target = torch.from_numpy(target)

    def objective(vectors):
        return ((vectors - target) ** 2).sum(-1)

    plan = search_plan(model, texts, objective, ApproxConfig(), max_lengths=32)
    assert plan.ffn_removed == [1] and plan.final_loss < 1e-8 < plan.base_loss
    assert not plan.attention_removed and not plan.heads_removed and 0 not in plan.ffn_removed
    assert plan.history[0] == {"layer": 1, "element": "ffn", "loss": pytest.approx(0.0, abs=1e-6), "accepted": True}


def test_search_with_tolerance_removes_and_keeps_loss_in_budget(tokenizer, texts):
    model = tiny_sentence_encoder(tokenizer, num_layers=2).eval()
    reference = torch.from_numpy(model.encode(texts, max_length=32))

    def objective(vectors):
        return 1.0 - (vectors * reference).sum(-1)  # cosine distance to the unpruned model

    strict = search_plan(model, texts, objective, ApproxConfig(), max_lengths=32)
    assert strict.summary().startswith("FFN blocks removed []") and strict.final_loss == strict.base_loss
    loose = search_plan(model, texts, objective, ApproxConfig(tolerance=1e6, neuron_groups=2), max_lengths=32)
    assert sorted(loose.ffn_removed) == [0, 1] and sorted(loose.attention_removed) == [0, 1]
    small = apply_plan(model, loose)
    assert count_parameters(small.encoder) < count_parameters(model.encoder) - 2 * (4 * 32 * 32 + 2 * 32 * 64)
    # a moderate budget: everything accepted stays within it
    budget = search_plan(model, texts, objective, ApproxConfig(tolerance=0.5), max_lengths=32)
    assert budget.final_loss <= 0.5 * (1 + 1e-6) + budget.base_loss
    measured = float(objective(torch.from_numpy(apply_plan(model, budget).encode(texts, max_length=32))).mean())
    assert measured == pytest.approx(budget.final_loss, abs=1e-5)


def test_plan_json_round_trip(tmp_path):
    plan = plan_for()
    plan.save(tmp_path / "plan.json")
    assert ApproxPlan.load(tmp_path / "plan.json") == plan


def test_contrastive_objective_is_the_nll_of_the_relevant_documents():
    q = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    losses = contrastive_objective(2, [[0], [1, 2]], scale=5.0)(torch.cat([q, d]))
    p = (5.0 * q @ d.T).softmax(-1)
    torch.testing.assert_close(losses, -torch.log(torch.stack([p[0, 0], p[1, 1] + p[1, 2]])))


def test_bad_settings(tokenizer):
    with pytest.raises(ConfigError, match="test split"):
        ApproxRecipeConfig(model="m", data="d", output_dir="o", split="test")
    with pytest.raises(ConfigError, match="tolerance"):
        ApproxConfig(tolerance=-1)
    with pytest.raises(ConfigError, match="layers"):
        apply_plan(tiny_sentence_encoder(tokenizer), ApproxPlan(num_layers=5))
    with pytest.raises(ConfigError, match="partial head count"):
        EncoderConfig.tiny(attention="synthesizer-dense", layer_heads=[2, 4])
