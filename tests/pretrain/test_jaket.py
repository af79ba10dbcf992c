"""JAKET (reprlab.pretrain.jaket, reprlab.nn.kg): the relational GAT against a loop, mention fusion at the
tokenizer's offsets, each loss against a direct computation, the memory schedule, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

pytest.importorskip("torch_geometric", reason="the knowledge module needs the kg extra (torch-geometric)")

from reprlab.encoder import Encoder, EncoderConfig  # noqa: E402
from reprlab.errors import DataFormatError, ReprlabError  # noqa: E402
from reprlab.nn.kg import KnowledgeModule, RelationalGATLayer, relational_gat_reference  # noqa: E402
from reprlab.pretrain.jaket.data import JaketCollate, mention_tokens  # noqa: E402
from reprlab.pretrain.jaket.model import JaketModel, JaketSpec, encode_texts, load_jaket  # noqa: E402
from reprlab.pretrain.jaket.recipe import JaketConfig, category_labels, run_jaket  # noqa: E402
from reprlab.pretrain.jaket import tasks  # noqa: E402
from reprlab.text.kg import LinkedText, link_mentions, read_categories, read_kg  # noqa: E402

TINY_KG = Path(__file__).resolve().parents[1] / "data" / "tiny_kg"

# a hand-sized graph: node 0 gets three edges of two relations, node 4 none, node 3 one
X_EDGES = torch.tensor([[1, 2, 3, 0, 2], [0, 0, 0, 3, 1]])
X_TYPES = torch.tensor([0, 1, 0, 1, 1])


@pytest.fixture(scope="module")
def kg():
    return read_kg(TINY_KG)


@pytest.fixture(scope="module")
def model(kg, tokenizer):
    torch.manual_seed(0)
    names, _ = category_labels(kg, read_categories(TINY_KG / "categories.tsv", kg))
    enc = Encoder(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, hidden_dropout=0.0,
                                     attention_dropout=0.0))
    m = JaketModel(enc, JaketSpec(1, 16, 2, 2, "sub", kg.num_entities, kg.num_relations, names, 16)).eval()
    m.set_graph(kg.split("train"))
    m.entity_memory.normal_()
    m.relation_memory.normal_()
    return m


# ----------------------------------------------------------------------------- the relational GAT layer


@pytest.mark.parametrize("composition", ["sub", "mult"])
@pytest.mark.parametrize("heads", [1, 2])
def test_message_passing_equals_a_plain_loop_over_edges(composition, heads):
    torch.manual_seed(1)
    layer = RelationalGATLayer(8, heads=heads, composition=composition)
    x, rel = torch.randn(5, 8), torch.randn(2, 8)
    fast = layer(x, X_EDGES, X_TYPES, rel)
    slow = relational_gat_reference(layer, x, X_EDGES, X_TYPES, rel)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_attention_over_each_nodes_neighbours_sums_to_one_and_a_lonely_node_keeps_its_state():
    torch.manual_seed(2)
    layer = RelationalGATLayer(8, heads=2)
    x, rel = torch.randn(5, 8), torch.randn(2, 8)
    out, _, alpha = layer(x, X_EDGES, X_TYPES, rel)
    for node in range(5):
        incoming = X_EDGES[1] == node
        if incoming.any():
            torch.testing.assert_close(alpha[incoming].sum(0), torch.ones(2))
    assert not torch.allclose(alpha[X_EDGES[1] == 0], torch.full((3, 2), 1 / 3))  # not uniform: it attends
    assert torch.equal(out[4], x[4]) and torch.equal(out[2], x[2])  # no incoming edges: unchanged
    assert not torch.allclose(out[0], x[0])


def test_the_module_passes_messages_both_ways_and_its_relation_states_come_from_the_names():
    torch.manual_seed(3)
    km = KnowledgeModule(8, 8, num_layers=1)
    ents, rels = torch.randn(4, 8), torch.randn(2, 8)
    edge = torch.tensor([[0], [1]])
    z, g = km(ents, rels, edge, torch.tensor([0]))
    alone, _ = km(ents, rels, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert not torch.allclose(z[0], alone[0]) and not torch.allclose(z[1], alone[1])  # head and tail both hear
    torch.testing.assert_close(z[2:], alone[2:])
    rels2 = rels.clone()
    rels2[1] += 1.0
    assert not torch.allclose(km(ents, rels2, edge, torch.tensor([0]))[1][1], g[1])


# ----------------------------------------------------------------------------- mentions and fusion


def test_mentions_map_to_the_tokens_the_tokenizer_gives_them(tokenizer):
    text = "dog, a domesticated animal that barks"
    start = text.index("domesticated animal")
    b = tokenizer([text], return_offsets=True)
    tok = mention_tokens(b.offsets[0].numpy(), b.sequence_ids[0].numpy(), start, start + len("domesticated animal"))
    assert tokenizer.decode(b.input_ids[0, tok].tolist()) == "domesticated animal"


def test_fusion_adds_the_km_vector_at_exactly_the_mention_tokens(model, tokenizer, kg):
    text = kg.entity_text[1]  # dog, a domesticated animal that barks and is kept as a pet
    a = text.index("animal")
    item = LinkedText(1, text, [(a, a + len("animal"), 0)])
    batch = JaketCollate(tokenizer, 32, kg.split("train"), {}, mlm_budget=0.0, entity_mask_prob=0.0)(
        [item], np.random.default_rng(0))
    where = torch.nonzero(batch["mention_entity"][0] >= 0).ravel().tolist()
    assert tokenizer.decode(batch["input_ids"][0, where].tolist()) == "animal"
    z, _ = model.knowledge()
    hidden = model.lm1(batch["input_ids"], batch["attention_mask"])
    fused = model.fuse(hidden, batch["mention_entity"], z)
    delta = fused - hidden
    expected = torch.zeros_like(hidden)
    expected[0, where] = model.km_to_lm(z[0])
    torch.testing.assert_close(delta, expected)


def test_lm2_output_ignores_km_changes_of_entities_not_mentioned(model, tokenizer, kg):
    items = [t for t in link_mentions(kg) if t.entity in (1, 7)]
    batch = JaketCollate(tokenizer, 32, kg.split("train"), {}, mlm_budget=0.0, entity_mask_prob=0.0)(
        items, np.random.default_rng(0))
    mentioned = set(batch["mention_entity"][batch["mention_entity"] >= 0].tolist())
    z, _ = model.knowledge()
    others = torch.tensor([e for e in range(kg.num_entities) if e not in mentioned])
    z2 = z.clone()
    z2[others] += torch.randn(len(others), z.shape[1])
    h1 = model.lm1(batch["input_ids"], batch["attention_mask"])
    run = lambda zz: model.lm2(model.fuse(h1, batch["mention_entity"], zz), batch["attention_mask"])  # noqa: E731
    torch.testing.assert_close(run(z), run(z2), rtol=0, atol=0)
    z3 = z.clone()
    z3[sorted(mentioned)[0]] += 1.0
    assert not torch.allclose(run(z), run(z3))  # the mentioned ones do count


# ----------------------------------------------------------------------------- the four losses


@pytest.fixture(scope="module")
def batch(model, tokenizer, kg):
    _, labels = category_labels(kg, read_categories(TINY_KG / "categories.tsv", kg))
    collate = JaketCollate(tokenizer, 32, kg.split("train"), labels, mlm_budget=0.3, entity_mask_prob=0.5,
                           relation_batch=4, category_batch=5)
    b = collate(link_mentions(kg)[:6], np.random.default_rng(3))
    assert len(b["masked_spans"]) >= 2 and int((b["mlm_labels"] != -100).sum()) >= 3
    return b


def test_each_loss_equals_a_direct_computation(model, batch, kg):
    total, parts = model(batch, {"mlm": 1.0, "entity": 2.0, "category": 0.5, "relation": 3.0})
    z, g = model.knowledge(batch["drop_edges"])
    out = model.lm2(model.fuse(model.lm1(batch["input_ids"], batch["attention_mask"]), batch["mention_entity"], z),
                    batch["attention_mask"])
    terms = []
    for row, pos in torch.nonzero(batch["mlm_labels"] != -100).tolist():
        logp = F.log_softmax(model.mlm_head(out[row, pos]), -1)
        terms.append(-logp[batch["mlm_labels"][row, pos]])
    mlm = torch.stack(terms).mean()
    terms = []
    for row, a, b, e in batch["masked_spans"].tolist():
        q = model.mention_query(out[row, a:b].mean(0))
        terms.append(-F.log_softmax(z @ q, 0)[e])  # over every entity of the graph
    entity = torch.stack(terms).mean()
    category = torch.stack([-F.log_softmax(model.category_head(z[e]), 0)[y]
                            for e, y in zip(batch["cat_entities"].tolist(), batch["cat_labels"].tolist())]).mean()
    terms = []
    for h, r, t in batch["rel_triples"].tolist():
        pair = model.pair(torch.cat([z[h], z[t], z[h] * z[t]]))
        terms.append(-F.log_softmax(torch.stack([pair @ g[k] for k in range(kg.num_relations)]), 0)[r])
    relation = torch.stack(terms).mean()
    for name, value in (("mlm", mlm), ("entity", entity), ("category", category), ("relation", relation)):
        torch.testing.assert_close(parts[name], value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, mlm + 2 * entity + 0.5 * category + 3 * relation, rtol=1e-5, atol=1e-5)


def test_the_triples_whose_relation_is_predicted_are_off_the_graph(model, batch):
    dropped = batch["drop_edges"]
    assert len(dropped) == 4 and torch.equal(model.edge_type[dropped], batch["rel_triples"][:, 1])
    z_all, _ = model.knowledge()
    z_drop, _ = model.knowledge(dropped)
    heads = batch["rel_triples"][:, 0]
    assert not torch.allclose(z_all[heads], z_drop[heads])


def test_masked_mentions_are_all_mask_tokens_and_get_no_km_vector(batch, tokenizer):
    for row, a, b, _ in batch["masked_spans"].tolist():
        assert (batch["input_ids"][row, a:b] == tokenizer.mask_id).all()
        assert (batch["mention_entity"][row, a:b] == -1).all()
        assert (batch["mlm_labels"][row, a:b] == -100).all()


# ----------------------------------------------------------------------------- the memory and resumption


def _config(tmp: Path, model_dir: Path, out: str, **kw) -> JaketConfig:
    loop = dict(batch_size=4, lr=1e-3, log_every=1, device="cpu", warmup_steps=1, max_steps=5)
    return JaketConfig(kg=str(TINY_KG), categories=str(TINY_KG / "categories.tsv"), model=str(model_dir),
                       output_dir=str(tmp / out), lm1_layers=1, km_dim=16, max_length=32, desc_max_length=16,
                       memory_refresh_every=2, **{**loop, **kw})


def test_the_memory_is_filled_then_refreshed_every_n_steps(tmp_path, tiny_model_dir, kg):
    result = run_jaket(_config(tmp_path, tiny_model_dir, "run", max_steps=4))
    assert [m["memory_version"] for m in result.metrics] == [1, 2, 2, 3]  # filled before step 1; steps 2 and 4
    model, tok = load_jaket(result.model_dir)
    assert int(model.memory_version) == 3 and int(model.memory_step) == 4
    torch.testing.assert_close(model.entity_memory, encode_texts(model, tok, kg.entity_text, 16))  # the last LM1's
    assert (result.model_dir / "encoder" / "model.safetensors").is_file()


def test_a_stopped_run_resumes_exactly_lm_km_and_memory(tmp_path, tiny_model_dir):
    full = run_jaket(_config(tmp_path, tiny_model_dir, "full", checkpoint_every=1))
    cut = run_jaket(_config(tmp_path, tiny_model_dir, "cut", checkpoint_every=1), stop_after=3)
    assert cut.model_dir is None
    ckpt = load_file(str(tmp_path / "cut" / "checkpoints" / "checkpoint-00000003" / "model.safetensors"))
    assert int(ckpt["memory_version"]) == 2
    resumed = run_jaket(_config(tmp_path, tiny_model_dir, "cut", checkpoint_every=1, resume=True))
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys() and {"memory_version", "entity_memory", "km.layers.0.message.weight",
                                     "encoder.layers.0.ffn.up.weight"} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(b["memory_version"]) == 3


# ----------------------------------------------------------------------------- tasks


def test_filtered_ranks_equal_a_direct_count():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1], [0.2, 0.2, 0.9, 0.2]])
    ranks = tasks.filtered_ranks(scores, torch.tensor([1, 1]), [{0, 1}, {1}])
    # row 0: 0 is another answer (filtered), 2 is above: rank 2. row 1: 2 above, two ties count half each: 3
    assert ranks.tolist() == [2.0, 3.0]


def test_the_three_tasks_run_on_the_tiny_kg_from_a_pretrained_and_a_plain_model(tmp_path, tiny_model_dir, kg):
    result = run_jaket(_config(tmp_path, tiny_model_dir, "run", max_steps=2))
    cats = read_categories(TINY_KG / "categories.tsv", kg)
    for source in (result.model_dir, tiny_model_dir):
        v = tasks.description_vectors(source, kg)
        assert v.entities.shape[0] == kg.num_entities and (v.km is not None) == (source == result.model_dir)
        link = tasks.link_prediction(v, kg, steps=3, batch_size=8)
        assert 0 < link["mrr"] <= 1 and link["queries"] == 2 * len(kg.split("test"))
        assert tasks.category_prediction(v, kg, cats)["test_entities"] == 1
        rel = tasks.relation_prediction(v, kg, shots=1, steps=3)
        assert rel["labelled_triples"] == kg.num_relations


def test_few_shot_triples_take_n_per_relation(kg):
    few = tasks.few_shot_triples(kg, 2, seed=0)
    counts = np.bincount(few[:, 1], minlength=kg.num_relations)
    assert counts.tolist() == [2, 2, 2]
    assert not np.array_equal(few, tasks.few_shot_triples(kg, 2, seed=1)) or len(few) == len(kg.split("train"))


# ----------------------------------------------------------------------------- bad input


def _copy_kg(tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(TINY_KG, tmp / "kg"))


def test_a_triple_naming_an_unknown_entity_is_an_error_at_its_line(tmp_path):
    folder = _copy_kg(tmp_path)
    with open(folder / "dev.tsv", "a") as f:
        f.write("e01\t_hypernym\tunicorn\n")
    with pytest.raises(DataFormatError, match=r"dev.tsv:3: unknown entity 'unicorn'"):
        read_kg(folder)


def test_an_entity_without_a_description_is_an_error_at_its_line(tmp_path):
    folder = _copy_kg(tmp_path)
    lines = (folder / "entity2text.txt").read_text().splitlines()
    (folder / "entity2text.txt").write_text("\n".join(lines[:-1]) + "\n")  # e14 loses its text
    with pytest.raises(DataFormatError, match=r"entities.txt:15: entity 'e14' has no description in entity2text"):
        read_kg(folder)
    (folder / "entity2text.txt").write_text("\n".join(lines[:-1] + ["e14\t "]) + "\n")
    with pytest.raises(DataFormatError, match=r"entity2text.txt:15"):
        read_kg(folder)


def test_an_unknown_relation_at_fine_tune_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    from reprlab.cli import main

    labelled = tmp_path / "few.tsv"
    labelled.write_text("e01\t_hypernym\te00\ne02\t_member_of\te00\n")
    code = main(["-q", "kg-eval", "--task", "relation", "--kg", str(TINY_KG), "--model", str(tiny_model_dir),
                 "--labelled", str(labelled), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "few.tsv:2: unknown relation '_member_of'" in err and len(err.strip().splitlines()) == 1


def test_kg_eval_prints_json_and_refuses_a_category_task_without_categories(tiny_model_dir, capsys):
    from reprlab.cli import main

    args = ["-q", "kg-eval", "--kg", str(TINY_KG), "--model", str(tiny_model_dir), "--steps", "2"]
    assert main([*args, "--task", "link", "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["mrr"] <= 1
    assert main([*args, "--task", "category"]) == 2
    assert "--categories" in capsys.readouterr().err


def test_a_linked_text_naming_an_unknown_entity_is_refused(tmp_path, tiny_model_dir):
    text = tmp_path / "linked.jsonl"
    text.write_text(json.dumps({"entity": "e01", "text": "dog, a pet", "mentions": [[7, 10, "e99"]]}) + "\n")
    with pytest.raises(ReprlabError, match=r"linked.jsonl:1: unknown entity 'e99'"):
        run_jaket(_config(tmp_path, tiny_model_dir, "run", text=str(text)))
