"""DPR training: pairs and masks, collate, learning, exact resume, saved retriever evaluates."""

import numpy as np
import torch

from reprlab.demo import demo_data_path
from reprlab.retrieval.dpr import DprConfig, run_dpr
from reprlab.retrieval.pairs import PairCollate, PairExample, pairs_from_examples
from reprlab.retrieval.pipeline import build_retriever, evaluate_retriever
from reprlab.text import Tokenizer
from reprlab.text.beir import load_beir
from reprlab.text.examples import Passage, TrainingExample
from reprlab.train import TrainConfig


def test_pairs_one_per_positive_and_other_positives_masked():
    ex = TrainingExample("q", [Passage("a", "A"), Passage("b", "B")], [Passage("c", "C")])
    pairs = pairs_from_examples([ex])
    assert [p.positive[1] for p in pairs] == ["A", "B"]
    assert pairs[0].relevant == pairs[1].relevant == [0, 1]
    assert pairs[0].negatives == [(2, "C")]


def test_collate_samples_negatives_that_are_never_relevant():
    tok = Tokenizer.from_pretrained("minilm")
    items = [PairExample("q1", (0, "pos one"), [(0, "pos one"), (5, "neg five"), (6, "neg six")], [0]),
             PairExample("q2", (1, "pos two"), [(7, "neg seven"), (8, "neg eight")], [1, 8])]
    batch = PairCollate(tok, 1, 16, 32)(items, np.random.default_rng(0))
    ids = batch["candidate_ids"].tolist()
    assert ids[:2] == [0, 1] and ids[2] in (5, 6) and ids[3] == 7
    assert batch["passages"]["input_ids"].shape[0] == 4
    assert batch["relevant"].tolist() == [[0, -1], [1, 8]]


def _config(tmp_path, model, **loop):
    return DprConfig(output_dir=str(tmp_path), data=str(demo_data_path()), split="test", model=str(model),
                     num_negatives=1, mine_depth=5, query_max_length=32, passage_max_length=64,
                     train=TrainConfig(output_dir="", batch_size=6, lr=1e-3, warmup_steps=2, log_every=1, **loop))


def test_dpr_learns_and_saved_model_evaluates(tmp_path, tiny_model_dir):
    data = load_beir(demo_data_path(), split="test")
    before = evaluate_retriever(build_retriever(str(tiny_model_dir), data.corpus), data)["ndcg_cut_10"]
    result = run_dpr(_config(tmp_path, tiny_model_dir, max_steps=40))
    after = evaluate_retriever(build_retriever(result.model_dir, data.corpus), data)["ndcg_cut_10"]
    # a random tiny encoder trained on these 18 questions must fit them far better than chance
    assert after > before + 0.2, (before, after)


def test_dpr_resume_is_exact(tmp_path, tiny_model_dir):
    full = run_dpr(_config(tmp_path / "full", tiny_model_dir, max_steps=6, checkpoint_every=3))
    run_dpr(_config(tmp_path / "cut", tiny_model_dir, max_steps=6, checkpoint_every=3), stop_after=4)
    cut = run_dpr(_config(tmp_path / "cut", tiny_model_dir, max_steps=6, checkpoint_every=3, resume=True))
    from safetensors.torch import load_file

    a = load_file(f"{full.model_dir}/model.safetensors")
    b = load_file(f"{cut.model_dir}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
