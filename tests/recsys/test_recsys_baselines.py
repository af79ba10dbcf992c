"""The baselines (popularity, two-tower brute force, FAISS IVF, implicit's ALS) and the synthetic catalogue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprlab.recsys.baselines import IVFTwoTower, popularity_topk
from reprlab.recsys.data import ExampleCollate
from reprlab.recsys.metrics import evaluate
from reprlab.recsys.synthetic import SyntheticCatalogue
from reprlab.recsys.two_tower import TwoTower, TwoTowerConfig, brute_force_topk
from test_recsys_data import tiny


def test_popularity_leaves_out_what_the_user_has_seen():
    counts = np.array([5, 9, 1, 7, 3])
    batch = {"targets": torch.tensor([0, 0]), "seen": torch.tensor([[2, 0], [4, 5]])}  # {1} and {3, 4}
    top, scored = popularity_topk(counts, batch, k=3)
    assert top.tolist() == [[3, 0, 4], [1, 0, 2]] and scored.tolist() == [5, 5]


def two_tower(num_items=30, user_input="user"):
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(num_items=num_items, user_input=user_input, num_users=6, dim=8, hidden=8))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


def test_brute_force_scores_every_item_and_excludes_the_seen_ones():
    model = two_tower()
    batch = {"users": torch.arange(6), "seen": torch.tensor([[1, 2, 0]] * 6)}
    top, scored = brute_force_topk(model, batch, k=5)
    scores = model.query_matrix(batch) @ model.item_matrix().T
    scores[:, :2] = float("-inf")
    assert torch.equal(top, scores.topk(5, dim=1).indices) and (scored == 30).all()
    # the augmented vectors give the model's own score: <u, w_v> + b_v
    u = model.encode(batch)
    direct = u @ model.item_vectors.weight.T + model.item_bias
    assert torch.allclose(model.query_matrix(batch) @ model.item_matrix().T, direct, atol=1e-5)


def test_ivf_scanning_every_list_is_brute_force_and_fewer_lists_score_fewer_items():
    model = two_tower(num_items=200)
    batch = {"users": torch.arange(6), "seen": torch.tensor([[1, 2, 0]] * 6)}
    ivf = IVFTwoTower(model, nlist=8)
    top, scored = ivf.topk(batch, k=10, nprobe=8)
    exact, _ = brute_force_topk(model, batch, k=10)
    assert torch.equal(top, exact) and (scored == 8 + 200).all()
    _, fewer = ivf.topk(batch, k=10, nprobe=1)
    assert (fewer < 200).all()


def test_implicit_als_recommends_unseen_items():
    pytest.importorskip("implicit")
    from reprlab.recsys.baselines import ImplicitPeer

    data = tiny()
    peer = ImplicitPeer("als", factors=4, iterations=3).fit(data)
    batch = data.batch(data.examples("test"), [0], length=5)
    top, scored = peer.topk(batch, k=2)
    seen = {i - 1 for i in batch["seen"][0].tolist() if i > 0}
    assert top.shape == (1, 2) and not seen & set(top[0].tolist()) and scored.tolist() == [5]


def test_the_synthetic_catalogue_samples_from_its_latent_model():
    cat = SyntheticCatalogue(num_items=60, train_examples=20000, eval_examples=50, items_per_topic=10, seed=3)
    train = cat.examples("train")
    observed = np.bincount(train.targets, minlength=60) / len(train)
    expected = np.mean([cat.true_probabilities(u) for u in train.users[:4000]], axis=0)
    assert np.abs(observed - expected).max() < 0.01
    for user in range(20):
        p = cat.true_probabilities(user)
        assert p.sum() == pytest.approx(1.0)
        assert set(np.flatnonzero(p)) <= set(np.flatnonzero(np.isin(cat.item_topic, cat.favourite[user])))
    oracle = cat.oracle_topk("test", k=5)
    first = cat.examples("test").users[0]
    assert set(oracle[0]) == set(np.argsort(-cat.true_probabilities(first), kind="stable")[:5])
    assert len(cat.examples("val")) == len(cat.examples("test")) == 50


def test_a_two_tower_learns_the_synthetic_catalogue_on_features(tmp_path):
    from reprlab.train.loop import TrainConfig, train

    cat = SyntheticCatalogue(num_items=200, train_examples=4000, eval_examples=300, items_per_topic=20, seed=0)
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(num_items=200, user_input="features", feature_dim=cat.feature_dim, dim=16,
                                    hidden=32))
    collate = ExampleCollate(cat, "train", 0)
    train(model, collate, collate, lambda m, b: m(b), TrainConfig(output_dir=str(tmp_path / "run"), lr=1e-2, epochs=3,
                                                                  batch_size=128, device="cpu", warmup_ratio=0.0))
    model.eval()
    got = evaluate(lambda b: brute_force_topk(model, b, 50), cat, "test")
    oracle = cat.oracle_topk("test", 20)
    ceiling = float((oracle == cat.examples("test").targets[:, None]).any(1).mean())
    assert got["recall@20"] > 0.5 * ceiling and got["recall@20"] > 0.3  # random: 20 / 200
