"""Deep Retrieval's structure model, loss, beam search and retrieval against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from reprlab.recsys.deep_retrieval import (
    DeepRetrieval,
    DRModelConfig,
    beam_search,
    beam_search_reference,
    exhaustive_search,
    retrieve,
    retrieve_reference,
    within_budget,
)
from reprlab.recsys.path_mapping import PathIndex, path_codes


def model_of(depth=3, width=3, items=30, paths=1, seed=0, reranker=True, user_input="user",
             tower="shared") -> DeepRetrieval:
    torch.manual_seed(seed)
    model = DeepRetrieval(DRModelConfig(num_items=items, depth=depth, width=width, paths_per_item=paths,
                                        user_input=user_input, num_users=8, dim=8, hidden=16, node_dim=4,
                                        reranker=reranker, seed=seed, rerank_tower=tower))
    for p in model.parameters():  # sharper distributions than the initialisation's, so beams differ
        torch.nn.init.normal_(p, std=0.8)
    return model.eval()


def users(model, n=6):
    return model.encode({"users": torch.arange(n)})


@pytest.mark.parametrize("depth, width", [(3, 3), (2, 5), (1, 6)])
def test_beam_search_with_a_beam_as_large_as_all_paths_is_exhaustive_search(depth, width):
    model = model_of(depth, width)
    x = users(model)
    every = width ** depth
    for beam in (every, every + 7):
        paths, scores = beam_search(model, x, beam)
        best, best_scores = exhaustive_search(model, x, every)
        assert paths.shape == (6, every, depth)
        assert torch.equal(paths, best)
        assert torch.allclose(scores, best_scores, atol=1e-5)
    # the probabilities of all paths sum to one
    assert torch.allclose(best_scores.exp().sum(1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("beam", [1, 2, 4, 7])
def test_batched_beam_search_equals_the_loop_reference(beam):
    model = model_of(3, 4)
    x = users(model, 8)
    paths, scores = beam_search(model, x, beam)
    ref_paths, ref_scores = beam_search_reference(model, x, beam)
    assert torch.equal(paths, ref_paths)
    assert torch.allclose(scores, ref_scores, atol=1e-5)


def test_a_small_beam_can_miss_the_most_probable_path_but_keeps_the_best_prefixes():
    """With B = 1 the search is greedy: its path is never more probable than the exhaustive best, and for some
    user strictly less probable (otherwise the beam would not matter)."""
    model = model_of(3, 4)
    x = users(model, 8)
    greedy, greedy_scores = beam_search(model, x, 1)
    best, best_scores = exhaustive_search(model, x, 1)
    assert (greedy_scores <= best_scores + 1e-6).all()
    first = model.layer_log_probs(x, torch.zeros(8, 0, dtype=torch.long)).argmax(1)
    assert torch.equal(greedy[:, 0, 0], first)


def direct_log_likelihood(model: DeepRetrieval, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log sum_j prod_d softmax(MLP_d([x; e(c_1) .. e(c_{d-1})]))[c_d], in probabilities, one number at a time."""
    out = []
    for b in range(len(targets)):
        total = 0.0
        for path in model.item_paths[targets[b]].tolist():
            p = 1.0
            for d, node in enumerate(path):
                inp = torch.cat([x[b]] + [model.nodes[i].weight[path[i]] for i in range(d)])
                p *= torch.softmax(model.layers[d](inp), dim=-1)[node].item()
            total += p
        out.append(math.log(total))
    return torch.tensor(out)


@pytest.mark.parametrize("paths", [1, 3])
def test_the_multi_path_loss_is_minus_the_log_of_the_summed_path_probabilities(paths):
    model = model_of(3, 3, paths=paths)
    x = users(model, 6)
    targets = torch.tensor([0, 5, 7, 7, 12, 29])
    loss = model.structure_loss(x, targets)
    assert loss.item() == pytest.approx(-direct_log_likelihood(model, x, targets).mean().item(), rel=1e-5)
    if paths > 1:  # J paths differ from the first path alone
        first = model.path_log_probs(x, model.item_paths[targets][:, :1]).squeeze(1)
        assert loss.item() < -first.mean().item() - 1e-4


def test_the_loss_trains_the_path_probability_of_the_observed_items():
    model = model_of(2, 4, paths=2)
    model.train()
    batch = {"users": torch.arange(4), "targets": torch.tensor([1, 2, 3, 4])}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.structure_loss(model.encode(batch), batch["targets"]).item()
    for _ in range(30):
        loss, metrics, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.structure_loss(model.encode(batch), batch["targets"]).item() < before / 2
    assert set(metrics) == {"structure_loss", "rerank_loss"}


def test_sampled_softmax_masks_a_negative_equal_to_the_target_and_full_softmax_is_cross_entropy():
    model = model_of(2, 4)
    with torch.no_grad():  # moderate logits, so that one term more or less in a softmax shows
        for p in (model.item_vectors.weight, model.rerank_user.weight, model.item_bias):
            p.mul_(0.05)
    x = users(model, 3)
    targets = torch.tensor([1, 2, 3])
    negatives = torch.tensor([1, 5, 9])  # item 1 is row 0's target: it must not count as its negative
    u = model.rerank_user(x)
    logits = u @ model.item_vectors.weight.T + model.item_bias  # (3, N)
    expected = []
    for b, t in enumerate(targets.tolist()):
        others = [n for n in negatives.tolist() if n != t]
        row = torch.cat([logits[b, t:t + 1], logits[b, others]])
        expected.append(-torch.log_softmax(row, 0)[0])
    assert model.rerank_loss(x, targets, negatives).item() == pytest.approx(torch.stack(expected).mean().item(),
                                                                            rel=1e-5)
    full = torch.nn.functional.cross_entropy(logits, targets)
    assert model.rerank_loss(x, targets, None).item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("paths, rerank, tower", [(1, True, "shared"), (1, False, "shared"), (3, True, "shared"),
                                                  (2, False, "shared"), (1, True, "own"), (3, True, "own")])
def test_batched_retrieval_equals_the_loop_reference(paths, rerank, tower):
    model = model_of(2, 4, items=40, paths=paths, tower=tower)
    batch = {"users": torch.arange(8)}
    x, r = model.encode(batch), model.rerank_input(batch)
    codes = path_codes(model.item_paths, 4)
    index = PathIndex(codes, 16)
    seen = torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0], [0, 0, 0, 0], [11, 12, 13, 14]] * 2)
    prior = torch.arange(40).flip(0).float()  # ties without the reranker: lower item ids first
    for beam in (1, 3, 16):
        top, counts = retrieve(model, index, x, beam=beam, k=12, seen=seen, rerank=rerank, prior=prior, rerank_x=r)
        ref_top, ref_counts = retrieve_reference(model, codes, x, beam=beam, k=12, seen=seen, rerank=rerank,
                                                 prior=prior, rerank_x=r)
        assert torch.equal(counts, ref_counts)
        assert torch.equal(top, ref_top), (beam, top, ref_top)
    # every path: every item is a candidate and nothing seen comes back
    top, counts = retrieve(model, index, x, beam=16, k=40, seen=seen, rerank=rerank, prior=prior, rerank_x=r)
    assert (counts == 40).all()
    for row, s in zip(top.tolist(), seen.tolist()):
        assert not {i for i in row if i >= 0} & {v - 1 for v in s if v > 0}
        assert sum(i >= 0 for i in row) == 40 - sum(v > 0 for v in s)


@pytest.mark.parametrize("paths", [1, 2])
@pytest.mark.parametrize("rerank", [True, False])
def test_retrieval_under_an_item_budget_equals_the_loop_reference(paths, rerank):
    model = model_of(2, 4, items=40, paths=paths)
    x = users(model, 8)
    codes = path_codes(model.item_paths, 4)
    index = PathIndex(codes, 16)
    prior = torch.arange(40).flip(0).float()
    for budget in (1, 5, 12, 100):
        top, counts = retrieve(model, index, x, beam=16, k=12, rerank=rerank, prior=prior, budget=budget)
        ref_top, ref_counts = retrieve_reference(model, codes, x, beam=16, k=12, rerank=rerank, prior=prior,
                                                 budget=budget)
        assert torch.equal(counts, ref_counts) and torch.equal(top, ref_top), budget
    # a budget as large as the catalogue serves every path: the same as no budget
    assert torch.equal(retrieve(model, index, x, beam=16, k=40, budget=40 * paths)[0],
                       retrieve(model, index, x, beam=16, k=40)[0])


def test_the_budget_takes_paths_best_first_while_their_items_fit():
    # 4 paths holding 3, 1, 4 and 2 items (item i on path codes[i])
    codes = torch.tensor([[0], [0], [0], [1], [2], [2], [2], [2], [3], [3]])
    index = PathIndex(codes, 4)
    beams = torch.tensor([[2, 1, 3, 0], [1, 3, 0, 2], [0, 2, 1, 3]])  # each user's paths, best first
    keep = within_budget(index, beams, 5)
    # user 0: 4 + 1 = 5 fits, + 2 does not (and nothing after it is taken); user 1: 1 + 2 = 3, + 3 = 6 does not;
    # user 2: 3 fits, + 4 does not; the best path is always served
    assert keep.tolist() == [[True, True, False, False], [True, True, False, False], [True, False, False, False]]
    assert within_budget(index, beams, 2)[0].tolist() == [True, False, False, False]  # 4 > 2: the best path alone
    # served through retrieval: no user gets more items than the budget (J = 1, every path within it)
    model = model_of(2, 4, items=40, paths=1)
    x = users(model, 8)
    big = PathIndex(path_codes(model.item_paths, 4), 16)
    sizes = big.ptr[1:] - big.ptr[:-1]
    budget = int(sizes.max())
    _, counts = retrieve(model, big, x, beam=16, k=10, budget=budget)
    _, unlimited = retrieve(model, big, x, beam=16, k=10)
    assert (counts <= budget).all() and (counts < unlimited).any()


def test_retrieval_returns_only_items_on_the_beams_paths():
    model = model_of(2, 4, items=40, paths=1)
    x = users(model, 5)
    codes = path_codes(model.item_paths, 4)
    top, counts = retrieve(model, PathIndex(codes, 16), x, beam=2, k=40)
    paths, _ = beam_search(model, x, 2)
    for u in range(5):
        allowed = {i for i, c in enumerate(codes[:, 0].tolist()) if c in set(path_codes(paths[u], 4).tolist())}
        got = {i for i in top[u].tolist() if i >= 0}
        assert got == allowed and counts[u] == len(allowed)


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def _moved(grads: list[torch.Tensor]) -> bool:
    return any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("user_input", ["user", "history"])
def test_the_own_rerank_tower_and_the_structure_tower_each_get_only_their_own_loss(user_input):
    """With ``rerank_tower="own"`` the structure loss trains the structure model's tower and not the reranker's,
    the rerank loss the reranker's tower and not the structure model's, and the joint objective is their sum."""
    model = model_of(2, 4, items=12, tower="own", user_input=user_input).train()
    batch = {"users": torch.arange(4), "history": torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6], [7, 0, 0]]),
             "targets": torch.tensor([1, 2, 3, 4]), "negatives": torch.tensor([0, 5, 9, 11])}
    model.structure_loss(model.encode(batch), batch["targets"]).backward()
    assert _moved(_grads(model.user)) and not _moved(_grads(model.rerank_tower))
    model.zero_grad()
    model.rerank_loss(model.rerank_input(batch), batch["targets"], batch["negatives"]).backward()
    rerank_only = _grads(model.rerank_tower)
    assert _moved(rerank_only) and not _moved(_grads(model.user))
    model.zero_grad()
    loss, metrics, _ = model(batch)
    loss.backward()
    assert set(metrics) == {"structure_loss", "rerank_loss"}
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(model.rerank_tower), rerank_only))


def test_the_shared_tower_gets_both_losses():
    """The contrast of the test above: with ``rerank_tower="shared"`` the rerank loss reaches the structure
    model's tower (the coupling that the own tower removes)."""
    model = model_of(2, 4, items=12, tower="shared").train()
    batch = {"users": torch.arange(4)}
    assert not hasattr(model, "rerank_tower")
    model.rerank_loss(model.rerank_input(batch), torch.tensor([1, 2, 3, 4]), None).backward()
    assert _moved(_grads(model.user))


def test_both_towers_the_shared_head_trains_the_structure_tower_and_the_own_tower_reranks():
    """``rerank_tower="both"``: the auxiliary shared head's loss reaches the structure model's tower (not the
    reranker's); the rerank loss the reranker's tower only; the objective is structure + rerank + auxiliary; the
    reranker ranks with its own tower and item table."""
    model = model_of(2, 4, items=12, tower="both").train()
    batch = {"users": torch.arange(4), "targets": torch.tensor([1, 2, 3, 4]), "negatives": torch.tensor([0, 5, 9])}
    x = model.encode(batch)
    model.aux_loss(x, batch["targets"], batch["negatives"]).backward()
    assert _moved(_grads(model.user)) and not _moved(_grads(model.rerank_tower))
    assert model.item_vectors.weight.grad is None  # the auxiliary head has its own item table
    model.zero_grad()
    model.rerank_loss(model.rerank_input(batch), batch["targets"], batch["negatives"]).backward()
    assert _moved(_grads(model.rerank_tower)) and not _moved(_grads(model.user))
    model.zero_grad()
    with torch.no_grad():
        loss, metrics, x = model(batch)
        want = (model.structure_loss(x, batch["targets"])
                + model.rerank_loss(model.rerank_input(batch), batch["targets"], batch["negatives"])
                + model.aux_loss(x, batch["targets"], batch["negatives"]))
    assert set(metrics) == {"structure_loss", "rerank_loss", "aux_loss"} and torch.allclose(loss, want)
    r = model.rerank_input(batch)
    assert torch.allclose(model.rerank_scores(r, torch.tensor([[0, 1]] * 4)),
                          model.rerank_tower(batch) @ model.item_vectors.weight[:2].T + model.item_bias[:2])


def test_retrieval_with_an_own_tower_needs_its_input_and_uses_it():
    model = model_of(2, 4, items=40, tower="own")
    batch = {"users": torch.arange(5)}
    x, r = model.encode(batch), model.rerank_input(batch)
    index = PathIndex(path_codes(model.item_paths, 4), 16)
    with pytest.raises(ValueError, match="rerank_x"):
        retrieve(model, index, x, beam=16, k=10)
    with pytest.raises(ValueError, match="rerank_x"):
        retrieve_reference(model, path_codes(model.item_paths, 4), x, beam=16, k=10)
    top, _ = retrieve(model, index, x, beam=16, k=10, rerank_x=r)  # every path: the reranker's top 10 of all items
    scores = model.rerank_scores(r, torch.arange(40).expand(5, 40))  # (5, 40)
    assert torch.equal(top, scores.topk(10, dim=1).indices)
    assert retrieve(model, index, x, beam=16, k=10, rerank=False)[0].shape == (5, 10)  # no reranker: no tower needed


def test_a_config_without_rerank_tower_is_the_shared_tower():
    config = DRModelConfig.from_dict({"num_items": 5, "depth": 2, "width": 3})
    assert config.rerank_tower == "shared" and not config.own_tower
    with pytest.raises(ValueError, match="rerank_tower"):
        DRModelConfig(num_items=5, rerank_tower="separate")
