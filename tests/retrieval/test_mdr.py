"""MDR: beam search against brute force, chain metrics, memory bank, the two-hop loss, the recipe."""

import dataclasses
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from reprlab.encoder import SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.text.beir import doc_text
from reprlab.retrieval.index import FaissIndex, ShardedIndex
from reprlab.retrieval.mdr import (
    Chain,
    MDRCollate,
    MDRConfig,
    MDRExample,
    MemoryBank,
    MultiHopEvalConfig,
    PassageTable,
    SparseFusion,
    chain_metrics,
    chains_from_ranking,
    evaluate_mdr,
    evaluate_multihop,
    hop2_query,
    index_corpus,
    mdr_scores,
    multihop_search,
    question_sides,
    rank_chains,
    run_mdr_training,
    search_index_folder,
)
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.hotpotqa import load_hotpotqa
from reprlab.text.splits import RULE, side, split
from reprlab.train import TrainConfig
from reprlab.train.recipe import RECIPES


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class HashEncoder:
    """A stand-in encoder: a fixed random unit vector per distinct text."""

    def __init__(self, dim=8):
        self.dim = dim

    def encode(self, texts, batch_size=32, max_length=None, show_progress=None):
        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def toy_corpus(n=24):
    return {f"p{i}": {"title": f"title {i}", "text": f"passage number {i} about topic {i % 5}"} for i in range(n)}


def brute_force_chains(encoder, question, corpus, hop1_ids=None):
    """Every ordered pair (a, b), a != b, scored s1(q, a) + s2(q [SEP] a, b), best first (plain reference)."""
    ids = list(corpus)
    P = encoder.encode([doc_text(corpus[d]) for d in ids])  # (N, d)
    s1 = P @ encoder.encode([question])[0]  # (N,)
    chains = []
    for i, a in enumerate(ids):
        if hop1_ids is not None and a not in hop1_ids:
            continue
        s2 = P @ encoder.encode([hop2_query(question, corpus[a])])[0]
        chains += [(float(s1[i] + s2[j]), a, b) for j, b in enumerate(ids) if b != a]
    return sorted(chains, key=lambda c: -c[0])


@pytest.mark.parametrize("question", ["which topic links passage 3 to another?", "title 7 and what else?"])
def test_full_beam_equals_brute_force_over_all_pairs(question):
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    brute = brute_force_chains(enc, question, corpus)
    (chains,) = multihop_search(enc, [question], index, corpus, beam_size=len(corpus), top_k=None, dedup=False)
    assert len(chains) == len(brute) == len(corpus) * (len(corpus) - 1)
    assert chains[0].passages == brute[0][1:]
    np.testing.assert_allclose([c.score for c in chains], [b[0] for b in brute], atol=1e-5)
    (best,) = multihop_search(enc, [question], index, corpus, beam_size=len(corpus), top_k=1)
    assert best[0].passages == brute[0][1:]


def test_narrow_beam_returns_the_best_chain_through_its_top_hop1_passages():
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    question = "what connects passage 11 and passage 4?"
    for beam in (1, 3, 6):
        hop1 = set(index.search(enc.encode([question]), beam)[1][0])
        brute = brute_force_chains(enc, question, corpus, hop1_ids=hop1)
        # brute force within the top-B hop-1 passages, hop 2 cut to each query's top B
        per_hop1 = {}
        for score, a, b in brute:
            per_hop1.setdefault(a, []).append((score, a, b))
        allowed = sorted((c for cs in per_hop1.values() for c in cs[:beam]), key=lambda c: -c[0])
        (chains,) = multihop_search(enc, [question], index, corpus, beam_size=beam, top_k=None, dedup=False)
        assert [c.passages for c in chains] == [c[1:] for c in allowed]
        assert chains[0].passages == allowed[0][1:]


def test_approximate_and_sharded_indexes_give_the_same_chains():
    enc, corpus = HashEncoder(), toy_corpus(30)
    questions = ["first question about topic 2", "second one about title 9"]
    exact = multihop_search(enc, questions, index_corpus(enc, corpus), corpus, beam_size=5, top_k=8)
    ids = list(corpus)
    vectors = enc.encode([doc_text(corpus[d]) for d in ids])
    hnsw = FaissIndex(enc.dim, "HNSW8")
    hnsw.add(ids, vectors)
    hnsw.set_search_params(efSearch=64)
    sharded = ShardedIndex(enc.dim, n_shards=3)
    sharded.add(ids, vectors)
    for index in (hnsw, sharded):
        found = multihop_search(enc, questions, index, corpus, beam_size=5, top_k=8)
        assert [[c.passages for c in q] for q in found] == [[c.passages for c in q] for q in exact]


def test_rank_chains_drops_the_hop1_passage_and_keeps_a_pair_once():
    s1, ids1 = np.array([1.0, 0.75]), np.array(["a", "b"], dtype=object)
    s2 = np.array([[0.875, 0.75, 0.25], [0.5, 0.5, -np.inf]], dtype=np.float32)
    ids2 = np.array([["a", "b", "c"], ["a", "c", None]], dtype=object)
    chains = rank_chains(s1, ids1, s2, ids2)
    # (a, a) excluded; (b, a) is (a, b) again; (a, c) and (b, c) tie at 1.25: hop-1 rank decides
    assert [c.passages for c in chains] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert chains[0].scores == (1.0, 0.75) and chains[0].score == 1.75
    both = rank_chains(s1, ids1, s2, ids2, dedup=False, exclude_hop1=False)
    assert [c.passages for c in both] == [("a", "a"), ("a", "b"), ("a", "c"), ("b", "a"), ("b", "c")]


def test_chain_metrics_on_a_hand_made_case():
    chains = [Chain(("a", "x"), (1.0, 1.0)), Chain(("a", "b"), (1.0, 0.5)), Chain(("c", "d"), (0.5, 0.5))]
    m = chain_metrics(chains, ("b", "a"), ks=(1, 2, 3))
    assert m["exact_pair"] == 0.0
    assert (m["pair_recall@1"], m["pair_recall@2"]) == (0.0, 1.0)
    assert (m["chain_recall@1"], m["chain_recall@2"]) == (0.0, 1.0)
    # distinct passages in chain order: a, x, b, c, d
    assert (m["passage_pair_recall@2"], m["passage_pair_recall@3"]) == (0.0, 1.0)
    assert (m["passage_recall@1"], m["passage_recall@2"], m["passage_recall@3"]) == (0.5, 0.5, 1.0)
    assert chain_metrics(chains[1:], ("a", "b"))["exact_pair"] == 1.0
    assert chain_metrics([], ("a", "b"))["pair_recall@10"] == 0.0


def test_single_hop_chains_are_pairs_of_the_ranking():
    chains = chains_from_ranking(np.array([3.0, 2.0, 1.0, -np.inf]), np.array(["a", "b", "c", None], dtype=object))
    assert [(c.passages, c.score) for c in chains] == [(("a", "b"), 5.0), (("a", "c"), 4.0), (("b", "c"), 3.0)]
    m = chain_metrics(chains, ("a", "c"), ks=(1, 2))
    assert m["exact_pair"] == 0.0 and m["passage_pair_recall@2"] == 0.0 and m["pair_recall@2"] == 1.0


def test_memory_bank_is_fifo_and_frozen():
    bank = MemoryBank(4, 2)
    assert list(bank.parameters()) == [] and {"bank", "bank_ids", "ptr", "count"} <= set(bank.state_dict())
    assert bank.vectors().shape == (0, 2)
    w = torch.ones(2, requires_grad=True)
    first = torch.arange(6.0).view(3, 2) * w  # (3, 2) with a gradient path to w
    bank.enqueue(first, torch.tensor([0, 1, 2]))
    bank.enqueue(torch.arange(6.0, 12.0).view(3, 2) * w, torch.tensor([3, 4, 5]))
    # the oldest two (ids 0, 1) were replaced; the rest come back oldest first
    assert bank.ids().tolist() == [2, 3, 4, 5]
    assert torch.equal(bank.vectors(), torch.arange(4.0, 12.0).view(4, 2))
    assert not bank.vectors().requires_grad and not bank.bank.requires_grad
    (first.sum() + (bank.vectors() * 3).sum()).backward()  # only the live tensor reaches w
    assert w.grad.tolist() == [6.0, 9.0]
    bank.enqueue(torch.arange(100.0, 112.0).view(6, 2), torch.arange(10, 16))  # more than fits: the newest 4
    assert bank.ids().tolist() == [12, 13, 14, 15]
    assert torch.equal(bank.vectors()[0], torch.tensor([104.0, 105.0]))


def _reference_loss(q, docs, doc_ids, gold, target, scale, drop_ids):
    """Plain per-row NLL: -s_target + logsumexp over the kept candidates."""
    losses = []
    for i in range(q.size(0)):
        kept = [j for j in range(docs.size(0)) if j == target[i] or int(doc_ids[j]) not in drop_ids(gold[i])]
        s = torch.stack([scale * q[i] @ docs[j] for j in kept])
        losses.append(torch.logsumexp(s, 0) - scale * q[i] @ docs[target[i]])
    return torch.stack(losses).mean()


def test_two_hop_scores_and_masks_match_a_plain_reference():
    g = torch.Generator().manual_seed(0)
    B, H = 3, 4
    q, hop2 = F.normalize(torch.randn(B, H, generator=g), dim=-1), F.normalize(torch.randn(B, H, generator=g), dim=-1)
    docs = F.normalize(torch.randn(3 * B, H, generator=g), dim=-1)  # p1 x3, p2 x3, one negative each
    # question 2's hop-1 gold is question 0's hop-2 gold (id 13), and a negative repeats id 11
    doc_ids = torch.tensor([10, 11, 13, 13, 14, 15, 20, 11, 21])
    gold = torch.stack([doc_ids[:B], doc_ids[B : 2 * B]], 1)
    bank = F.normalize(torch.randn(2, H, generator=g), dim=-1)
    bank_ids = torch.tensor([30, 14])
    s1, s2, t1, t2 = mdr_scores(q, hop2, docs, doc_ids, gold, 2.0, bank, bank_ids)
    assert torch.isinf(s1[0, B]) and torch.isfinite(s2[0, 0])  # own p2 left out of hop 1, own p1 kept in hop 2
    all_docs, all_ids = torch.cat([docs, bank]), torch.cat([doc_ids, bank_ids])
    ref1 = _reference_loss(q, all_docs, all_ids, gold, t1, 2.0, lambda gd: {int(gd[0]), int(gd[1])})
    ref2 = _reference_loss(hop2, all_docs, all_ids, gold, t2, 2.0, lambda gd: {int(gd[1])})
    torch.testing.assert_close(F.cross_entropy(s1, t1), ref1)
    torch.testing.assert_close(F.cross_entropy(s2, t2), ref2)


# ---------------------------------------------------------------------------------------------- recipe

FIRST = ["amber", "basil", "cedar", "delta", "ember", "flint", "grove", "heron", "iris", "juniper", "kestrel",
         "lotus", "maple", "nova", "onyx", "pine"]
LAST = ["stone", "field", "brook", "wood", "hill", "marsh", "ridge", "vale", "ford", "shaw", "lake", "moor",
        "dale", "holt", "combe", "wick"]
TOWNS = ["paris", "lima", "oslo", "cairo", "delhi", "quito", "rome", "kyiv", "perth", "accra", "hanoi", "bern",
         "doha", "riga", "sofia", "tunis"]


def write_toy_hotpot(path, n=12):
    """Bridge questions: the film's paragraph names its star, whose paragraph names the town."""
    records = []
    for i in range(n):
        film, star, town = f"The {FIRST[i].title()} Affair", f"{FIRST[-1 - i].title()} {LAST[i].title()}", TOWNS[i]
        other = (i + 1) % n
        contexts = [
            (film, f"{film} is a drama film starring {star}.", True),
            (f"{FIRST[-1 - other].title()} {LAST[other].title()}", f"{FIRST[-1 - other].title()} {LAST[other].title()} "
             f"was born in {TOWNS[other]}.", False),
            (star, f"{star} was born in {town}.", True),
        ]
        records.append({"question_id": f"toy{i}", "question_text": f"Where was the star of {film} born?",
                        "answers_objects": [{"spans": [town]}],
                        "contexts": [{"id": str(k), "title": t, "paragraph_text": x, "is_supporting": s}
                                     for k, (t, x, s) in enumerate(contexts)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _config(tmp_path, data, model, **kw):
    loop = kw.pop("loop", {})
    return MDRConfig(output_dir=str(tmp_path), data=str(data), model=str(model),
                     eval_fraction=kw.pop("eval_fraction", 0.0),
                     num_negatives=1, negative_sources=("distractors",), max_question_length=32, max_query_length=64,
                     max_passage_length=32, evaluate=kw.pop("evaluate", False), beam_size=4,
                     train=TrainConfig(output_dir="", batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, device="cpu",
                                       **loop), **kw)


def test_collate_orders_hops_and_draws_negatives(tiny_model_dir, tmp_path):
    data = load_hotpotqa(write_toy_hotpot(tmp_path / "toy.jsonl", 4))
    table = PassageTable(data.corpus, list(data.corpus))
    tok = SentenceEncoder.from_pretrained(tiny_model_dir).tokenizer
    items = [MDRExample(q.question, table.index[q.gold[0]], table.index[q.gold[1]], q.ordered,
                        [table.index[p] for p in q.paragraphs]) for q in data.questions]
    batch = MDRCollate(tok, table, 1, 32, 64, 32)(items, np.random.default_rng(0))
    assert batch["gold"].tolist() == [[it.hop1, it.hop2] for it in items]  # bridge questions keep their order
    assert batch["doc_ids"][:8].tolist() == [it.hop1 for it in items] + [it.hop2 for it in items]
    assert all(int(n) not in (it.hop1, it.hop2) for n, it in zip(batch["doc_ids"][8:], items))
    film = tok.decode(batch["hop2_queries"]["input_ids"][0].tolist())
    assert film.startswith("where was the star of the") and "is a drama film starring" in film
    unordered = [MDRExample(it.question, it.hop1, it.hop2, False, it.negatives) for it in items]
    collate = MDRCollate(tok, table, 0, 32, 64, 32)
    orders = {tuple(map(tuple, collate(unordered, np.random.default_rng(s))["gold"].tolist())) for s in range(6)}
    assert len(orders) > 1  # comparison questions draw their hop order


def test_frozen_passage_vectors_equal_encoding_each_batch(tiny_model_dir, tmp_path):
    data = load_hotpotqa(write_toy_hotpot(tmp_path / "toy.jsonl", 6))
    model = SentenceEncoder.from_pretrained(tiny_model_dir).eval()
    table = PassageTable(data.corpus, list(data.corpus))
    table.vectors = torch.from_numpy(model.encode(table.texts, batch_size=4, max_length=32))  # once, sorted batches
    with torch.no_grad():
        for i in (0, 3, len(table) - 1):  # the paper's way: re-encode with the frozen copy
            one = model.tokenize([table.texts[i]], 32)
            torch.testing.assert_close(table.vectors[i], model(one.input_ids, one.attention_mask)[0], atol=1e-5,
                                       rtol=1e-4)


def test_memory_bank_needs_frozen_passages(tmp_path):
    with pytest.raises(ConfigError, match="freeze_passages"):
        MDRConfig(output_dir=str(tmp_path), data="x.jsonl", memory_bank=8)
    with pytest.raises(ConfigError, match="negative source"):
        from reprlab.retrieval.mdr import mine_negatives

        mine_negatives([], {}, [], ("tfidf",), 5)


def test_config_validates_and_names_the_field(tmp_path):
    base = {"output_dir": str(tmp_path), "data": "x.jsonl"}
    with pytest.raises(ConfigError, match="unknown negative source 'tfidf'") as err:
        MDRConfig(**base, negative_sources="distractors,tfidf")
    assert err.value.field == "negative_sources"
    # "a,b", a list, or a list whose items hold commas (a command line's either way)
    for given in ("distractors, bm25-hop2", ["distractors", "bm25-hop2"], ["distractors,bm25-hop2"]):
        assert MDRConfig(**base, negative_sources=given).negative_sources == ("distractors", "bm25-hop2")
    for bad, name in [({"dev_fraction": 0.8}, "dev_fraction"), ({"eval_fraction": 1.5}, "eval_fraction"),
                      ({"memory_bank": 8}, "memory_bank"), ({"num_negatives": -1}, "num_negatives"),
                      ({"negative_sources": ""}, "negative_sources"), ({"scale": 0.0}, "scale"),
                      ({"max_query_length": 1}, "max_query_length"), ({"beam_size": 0}, "beam_size")]:
        with pytest.raises(ConfigError) as err:
            MDRConfig(**base, **bad)
        assert err.value.field == name, bad
    assert MDRConfig(**base, num_negatives=0, negative_sources="").negative_sources == ()
    # on the recipe contract: registered, help on every field, the loop's defaults are the recipe's
    recipe = RECIPES["train mdr"]
    assert recipe.config is MDRConfig and recipe.run is run_mdr_training
    for cls in (MDRConfig, MultiHopEvalConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    config = MDRConfig(**base)
    assert (config.train.epochs, config.train.batch_size, config.train.lr) == (4.0, 16, 3e-5)
    assert MDRConfig.from_dict(config.to_dict()) == config
    assert MDRConfig(**base, max_steps=3).train.max_steps == 3  # the loop's fields flat
    assert MultiHopEvalConfig(data="x", bm25_weights="0.2,0.3").bm25_weights == (0.2, 0.3)
    with pytest.raises(ConfigError) as err:
        MultiHopEvalConfig(data="x", bm25_weights="0.2")
    assert err.value.field == "bm25_weights"


def test_split_is_the_text_splits_rule(tmp_path, tiny_model_dir):
    data = write_toy_hotpot(tmp_path / "toy.jsonl", 16)
    questions = load_hotpotqa(data).questions
    train_q, dev_q, eval_q = question_sides(questions, 0.3, 0.25)
    for name, part in (("train", train_q), ("dev", dev_q), ("eval", eval_q)):
        assert all(side(q.id, 0.3, 0.25) == name for q in part)
    parts = split([q.id for q in questions], eval_fraction=0.3, dev_fraction=0.25)
    assert ([q.id for q in train_q], [q.id for q in dev_q], [q.id for q in eval_q]) == (parts.train, parts.dev,
                                                                                       parts.eval)
    assert min(map(len, (train_q, dev_q, eval_q))) > 0  # the toy file has all three sides
    result = run_mdr_training(_config(tmp_path / "run", data, tiny_model_dir, loop={"max_steps": 1},
                                      eval_fraction=0.3, dev_fraction=0.25))
    assert (result.train_questions, result.dev_questions, result.eval_questions) == tuple(parts.sizes().values())
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved == {"rule": RULE, "eval_fraction": 0.3, "dev_fraction": 0.25, **parts.sizes()}
    assert f"{len(train_q)} train / {len(dev_q)} dev / {len(eval_q)} eval questions" in result.summary()


def test_split_of_the_real_hotpotqa_questions(shared_data):
    """The published sides of IRCoT's 500 HotpotQA questions (BENCHMARKS.md): 344 train / 156 eval, and a
    dev slice of 0.25 leaves 210 to train on."""
    questions = load_hotpotqa(shared_data("hotpotqa_dev500_ircot", "dev_subsampled.jsonl")).questions
    assert tuple(map(len, question_sides(questions, 0.3))) == (344, 0, 156)
    assert tuple(map(len, question_sides(questions, 0.3, 0.25))) == (210, 134, 156)


@pytest.mark.parametrize("stage", ["shared", "memory-bank"])
def test_recipe_resumes_exactly(tmp_path, tiny_model_dir, stage):
    data = write_toy_hotpot(tmp_path / "toy.jsonl")
    extra = {"freeze_passages": True, "memory_bank": 6} if stage == "memory-bank" else {}
    loop = {"max_steps": 6, "checkpoint_every": 3}
    full = run_mdr_training(_config(tmp_path / "full", data, tiny_model_dir, loop=loop, **extra))
    cut = run_mdr_training(_config(tmp_path / "cut", data, tiny_model_dir, loop=loop, **extra), stop_after=4)
    assert cut.model_dir is None and cut.steps == 4
    resumed = run_mdr_training(_config(tmp_path / "cut", data, tiny_model_dir, loop={**loop, "resume": True}, **extra))
    name = "checkpoints/checkpoint-00000006/model.safetensors"
    a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if stage == "memory-bank":
        assert int(a["memory.count"]) == 6 and (a["memory.bank_ids"] >= 0).all()  # the queue is checkpointed too
        assert {p.name for p in (tmp_path / "full" / "model").iterdir()} >= {"query", "passage", "mdr.json"}
    assert full.model_dir and resumed.model_dir


def test_training_learns_the_toy_chains_and_searches_an_index_folder(tmp_path, tiny_model_dir):
    data_path = write_toy_hotpot(tmp_path / "toy.jsonl")
    data = load_hotpotqa(data_path)

    def exact_pair(model_dir):
        model = SentenceEncoder.from_pretrained(model_dir)
        index = index_corpus(model, data.corpus, max_length=32)
        return evaluate_mdr(model, index, data, data.questions, beam_size=4, max_query_length=64)["all"]["exact_pair"]

    before = exact_pair(tiny_model_dir)
    result = run_mdr_training(_config(tmp_path / "run", data_path, tiny_model_dir, loop={"max_steps": 60},
                                      eval_fraction=0.25, evaluate=True))
    assert result.train_questions + result.eval_questions == 12 and result.eval_questions > 0
    assert json.loads((tmp_path / "run" / "split.json").read_text())["eval"] == result.eval_questions
    assert result.eval_metrics["all"]["n"] == result.eval_questions
    after = exact_pair(result.model_dir)
    assert after >= before + 0.3, (before, after)

    from reprlab.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.from_model(result.model_dir)
    retriever.index_corpus(data.corpus)
    retriever.save(tmp_path / "index")
    chains, docs = search_index_folder(tmp_path / "index", [data.questions[0].question], beam_size=4, top_k=3)
    assert len(chains[0]) == 3 and all(p in docs for c in chains[0] for p in c.passages)


def test_evaluate_multihop_single_hop_and_beam(tmp_path, tiny_model_dir):
    data = write_toy_hotpot(tmp_path / "toy.jsonl")
    bm25 = evaluate_multihop(MultiHopEvalConfig(data=str(data), retriever="bm25", split="all", ks=(2, 10)))
    assert bm25["all"]["n"] == 12 and 0 <= bm25["all"]["exact_pair"] <= 1 and "pair_recall@10" in bm25["all"]
    beam = evaluate_multihop(MultiHopEvalConfig(data=str(data), retriever=str(tiny_model_dir), split="all",
                                                beam_size=3, ks=(2,)))
    assert beam["bridge"]["n"] == 12 and "passage_recall@2" in beam["all"]
    with pytest.raises(ConfigError, match="split"):
        evaluate_multihop(MultiHopEvalConfig(data=str(data), retriever="bm25", split="dev"))


def _hop2_corpus():
    from reprlab.text.hotpotqa import HotpotQuestion

    corpus = {
        "g1": {"title": "Kiss and Tell", "text": "Kiss and Tell is a comedy film starring Shirley Temple."},
        "g2": {"title": "Shirley Temple", "text": "Shirley Temple held a government position as ambassador."},
        "near2": {"title": "Shirley Temple Black", "text": "As a child, Shirley Temple was the star of a comedy film."},
        "near1": {"title": "Government", "text": "A government position to hold."},
        "far": {"title": "Volcano", "text": "A volcano erupts lava near an island."},
    }
    q = HotpotQuestion(id="q", question="Which government position did the star of Kiss and Tell hold?",
                       answers=["ambassador"], gold=("g1", "g2"), type="bridge", ordered=True,
                       paragraphs=["g1", "g2"])
    return corpus, q


def test_hop2_negatives_come_from_the_hop2_query_and_exclude_gold(tiny_model_dir):
    from reprlab.retrieval.mdr import mine_negatives

    corpus, q = _hop2_corpus()
    pool = list(corpus)
    hop1 = mine_negatives([q], corpus, pool, ("bm25",), depth=3)[0]
    hop2 = mine_negatives([q], corpus, pool, ("bm25-hop2",), depth=3)[0]
    assert hop1[0] == "near1"  # the question's own words
    assert hop2[0] == "near2"  # what the hop-1 passage points to (Shirley Temple), not the second gold passage
    model = SentenceEncoder.from_pretrained(tiny_model_dir).eval()
    for sources in (("bm25-hop2",), ("dense-hop2",), ("distractors", "bm25", "bm25-hop2", "dense", "dense-hop2")):
        negs = mine_negatives([q], corpus, pool, sources, depth=4, encoder=model)[0]
        assert negs and not {"g1", "g2"} & set(negs) and len(negs) == len(set(negs))
    # precomputed passage vectors give the same dense mining as encoding the pool again
    vectors = model.encode([doc_text(corpus[d]) for d in pool], batch_size=8, max_length=256)
    assert (mine_negatives([q], corpus, pool, ("dense-hop2",), 4, encoder=model, pool_vectors=vectors)
            == mine_negatives([q], corpus, pool, ("dense-hop2",), 4, encoder=model))
    with pytest.raises(ConfigError, match="need an encoder"):
        mine_negatives([q], corpus, pool, ("dense-hop2",), 4)


def _fused(dense: np.ndarray, sparse: np.ndarray, weight: float) -> np.ndarray:
    """Plain reference: dense + weight * sparse / max sparse, over the whole corpus (no candidate lists)."""
    return dense + weight * sparse / sparse.max() if sparse.max() > 0 else dense


@pytest.mark.parametrize("weights", [(0.3, 0.5), (0.0, 2.0), (1.5, 0.0)])
def test_bm25_fused_beam_equals_brute_force_over_all_pairs(weights):
    enc, corpus = HashEncoder(), toy_corpus()
    ids = list(corpus)
    bm25 = bm25_for_corpus(corpus)
    question = "which passage about topic 3 leads to title 7?"
    P = enc.encode([doc_text(corpus[d]) for d in ids])  # (N, d)

    def bm_all(text):  # BM25 score of every passage for one query (0 where no term matches)
        found_s, found_i = bm25.search([text], len(ids))
        by_id = {d: float(x) for x, d in zip(found_s[0], found_i[0]) if d is not None}
        return np.array([by_id.get(d, 0.0) for d in ids])

    s1 = _fused(P @ enc.encode([question])[0], bm_all(question), weights[0])  # (N,)
    brute = []
    for i, a in enumerate(ids):
        s2 = _fused(P @ enc.encode([hop2_query(question, corpus[a])])[0],
                    bm_all(question + " " + doc_text(corpus[a])), weights[1])
        brute += [(float(s1[i] + s2[j]), a, b) for j, b in enumerate(ids) if b != a]
    brute.sort(key=lambda c: -c[0])
    index = index_corpus(enc, corpus)
    sparse = SparseFusion(bm25, *weights, depth=len(ids))  # lists cover the corpus: nothing approximated
    (chains,) = multihop_search(enc, [question], index, corpus, beam_size=len(ids), top_k=None, dedup=False,
                                sparse=sparse)
    assert chains[0].passages == brute[0][1:]
    np.testing.assert_allclose([c.score for c in chains], [b[0] for b in brute], atol=1e-5)


def test_bm25_fusion_with_zero_weights_is_the_dense_search():
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    questions = ["what connects passage 11 and passage 4?", "topic 2 and title 9"]
    dense = multihop_search(enc, questions, index, corpus, beam_size=4, top_k=8)
    fused = multihop_search(enc, questions, index, corpus, beam_size=4, top_k=8,
                            sparse=SparseFusion(bm25_for_corpus(corpus), 0.0, 0.0, depth=6))
    assert [[c.passages for c in q] for q in fused] == [[c.passages for c in q] for q in dense]
    with pytest.raises(ConfigError, match="weights"):
        SparseFusion(None, -1.0, 0.0)


# ----------------------------------------------------------------------------- what the beam search passes on (mutation testing)


class SpyEncoder(HashEncoder):
    """HashEncoder that records each call's texts and settings; ``sep`` gives it a tokenizer with that separator."""

    def __init__(self, dim=8, sep=None):
        super().__init__(dim)
        self.calls = []
        if sep is not None:
            self.tokenizer = SimpleNamespace(sep_id=7, convert_ids_to_tokens=lambda ids: [sep for _ in ids])

    def encode(self, texts, batch_size=32, max_length=None, show_progress=None):
        self.calls.append((list(texts), batch_size, max_length, show_progress))
        return super().encode(texts)


class SpyIndex:
    """An index that records each search's (rows, k, params) and answers from a real one."""

    def __init__(self, index):
        self.index, self.calls = index, []

    def search(self, queries, k, **params):
        self.calls.append((len(queries), k, params))
        return self.index.search(queries, k)


def test_beam_search_defaults_and_what_it_asks_of_the_encoder_and_the_index():
    enc, corpus = SpyEncoder(), toy_corpus()
    index = SpyIndex(index_corpus(enc, corpus))
    enc.calls.clear()
    question = "what connects passage 11 and passage 4?"
    (chains,) = multihop_search(enc, question, index, corpus, search_params={"efSearch": 7})  # one question as a str
    assert len(chains) == 10  # top_k 10
    (q_texts, *q_settings), (h2_texts, *h2_settings) = enc.calls
    assert q_texts == [question] and q_settings == [64, 64, False]  # batch size, question length, no progress bar
    assert len(h2_texts) == 10 and h2_settings == [64, 256, False]  # beam 10; hop-2 query length 256
    # hop 1: the top B; hop 2: B + 1 (the hop-1 passage itself is dropped); the search params reach both
    assert index.calls == [(1, 10, {"efSearch": 7}), (10, 11, {"efSearch": 7})]
    index.calls.clear()
    multihop_search(enc, [question], index, corpus, beam_size=3, exclude_hop1=False)
    assert index.calls == [(1, 3, {}), (3, 3, {})]  # nothing to drop: B is enough
    bm25 = bm25_for_corpus(corpus)
    index.calls.clear()
    multihop_search(enc, [question], index, corpus, beam_size=3, search_params={"nprobe": 2},
                    sparse=SparseFusion(bm25, 0.5, 0.5, depth=6))
    assert index.calls == [(1, 6, {"nprobe": 2}), (3, 6, {"nprobe": 2})]  # fused: depth-long dense lists


def test_beam_search_keeps_an_unordered_pair_once_by_default():
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    (chains,) = multihop_search(enc, ["which topic links passage 3 to another?"], index, corpus,
                                beam_size=len(corpus), top_k=None)
    n = len(corpus)
    assert len(chains) == n * (n - 1) // 2 == len({frozenset(c.passages) for c in chains})


def test_hop2_queries_use_the_encoders_separator_and_the_title_setting():
    corpus = toy_corpus()
    enc = SpyEncoder(sep="</s>")
    index = index_corpus(enc, corpus)
    question = "title 7 and what else?"
    for title in (True, False):
        enc.calls.clear()
        multihop_search(enc, [question], index, corpus, beam_size=2, hop2_title=title)
        hop1 = index.search(enc.encode([question]), 2)[1][0]
        assert enc.calls[1][0] == [hop2_query(question, corpus[p], "</s>", title) for p in hop1]
    assert "title" not in enc.calls[1][0][0].split("</s>")[1]


def test_precomputed_hop1_with_padding_anywhere_equals_the_dense_beam():
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    questions = ["what connects passage 11 and passage 4?", "topic 2 and title 9"]
    dense = multihop_search(enc, questions, index, corpus, beam_size=3, top_k=None)
    s1, ids1 = index.search(enc.encode(questions), 3)  # (Q, 3)
    gap = np.full((2, 1), None, dtype=object)
    ids = np.concatenate([ids1[:, :1], gap, ids1[:, 1:]], axis=1)  # (Q, 4): a None between real passages
    scores = np.concatenate([s1[:, :1], np.full((2, 1), -np.inf, dtype=np.float32), s1[:, 1:]], axis=1)
    given = multihop_search(enc, questions, index, corpus, beam_size=3, top_k=None, hop1=(scores, ids))
    assert [[(c.passages, c.scores) for c in q] for q in given] == [[(c.passages, c.scores) for c in q] for q in dense]


def test_beam_search_and_fusion_refusals_name_the_problem():
    enc, corpus = HashEncoder(), toy_corpus()
    index = index_corpus(enc, corpus)
    with pytest.raises(ConfigError, match="beam_size"):
        multihop_search(enc, ["q"], index, corpus, beam_size=0)
    with pytest.raises(ModelLoadError, match="not in the corpus"):
        multihop_search(enc, ["q"], index, {p: corpus[p] for p in ["p0", "p1"]}, beam_size=len(corpus))
    assert SparseFusion(None, 0.1, 0.1, depth=1).depth == 1
    with pytest.raises(ConfigError, match="depth"):
        SparseFusion(None, 0.1, 0.1, depth=0)


def test_single_hop_chains_top_k():
    scores, ids = np.array([3.0, 2.0, 1.0]), np.array(["a", "b", "c"], dtype=object)
    assert [c.passages for c in chains_from_ranking(scores, ids, top_k=2)] == [("a", "b"), ("a", "c")]
    assert len(chains_from_ranking(scores, ids)) == 3
