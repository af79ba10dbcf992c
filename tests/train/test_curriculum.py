"""Curricula (reprlab.train.curriculum): the six pacing functions against the paper's formulas, orderings,
class balancing, scoring functions, and a sampler that plugs into the loop and resumes exactly."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from reprlab.errors import ConfigError, DataFormatError
from reprlab.train import TrainConfig, train
from reprlab.train.curriculum import (
    PACINGS,
    CurriculumConfig,
    CurriculumSampler,
    Ordering,
    build_sampler,
    class_balanced,
    learned_epoch,
    loss_cscore,
    order_examples,
    pacing_function,
    parse_ordering,
    read_scores,
)

N, T = 1000, 200


def paper_formula(name, t, a, b):
    """Table 1 of Wu et al. (2021), written out independently of the module."""
    at = a * T
    return {
        "linear": N * b + N * (1 - b) / at * t,
        "quad": N * b + N * (1 - b) / at ** 2 * t ** 2,
        "root": N * b + N * (1 - b) / at ** 0.5 * t ** 0.5,
        "step": N * b + N * np.floor(t / at),
        "exp": N * b + N * (1 - b) / (np.exp(10) - 1) * (np.exp(10 * t / at) - 1),
        "log": N * b + N * (1 - b) * (1 + 0.1 * np.log(t / at + np.exp(-10))),
    }[name]


@pytest.mark.parametrize("name", PACINGS)
@pytest.mark.parametrize("a,b", [(0.2, 0.1), (0.5, 0.0025), (0.8, 0.4), (1.6, 0.2)])
def test_pacing_endpoints_monotone_clipped_and_the_formula(name, a, b):
    g = pacing_function(name, a, b, T, N, min_size=16)
    values = [g(t) for t in range(T + 1)]
    assert values[0] == max(16, int(N * b + 1e-9))  # g(0) = bN (log: 1 + log(e^-10) / 10 = 0)
    if a * T <= T:
        assert g(round(a * T)) == N or (a * T) % 1  # the pool is full at step aT
        assert values[-1] == N
    assert all(x <= y for x, y in zip(values, values[1:]))  # monotone
    assert min(values) >= 16 and max(values) <= N  # clipped
    for t in range(0, T + 1, 7):  # the formula, rounded down, clipped
        expected = min(N, max(16, math.floor(paper_formula(name, t, a, b) + 1e-9)))
        assert g(t) == expected, (name, t)


def test_pacing_log_starts_at_bn_up_to_its_exp_minus_10_term_and_bad_settings():
    g = pacing_function("log", 0.5, 0.25, T, N, min_size=1)
    assert g(0) == 250  # N(1 - b)(1 + log(e^-10) / 10) = 0
    for bad in (dict(name="cubic"), dict(a=0.0), dict(b=1.5)):
        kwargs = {"name": "linear", "a": 0.5, "b": 0.1, **bad}
        with pytest.raises(ConfigError):
            pacing_function(kwargs.pop("name"), kwargs["a"], kwargs["b"], T, N)


def test_orderings_parse_every_spelling_and_refuse_unknown_ones():
    assert parse_ordering("anti-curr") is Ordering.ANTI  # the official README's spelling
    assert parse_ordering("anti_curr") is Ordering.ANTI  # the official code's
    assert parse_ordering("curr") is Ordering.CURRICULUM and parse_ordering("Standard") is Ordering.STANDARD
    with pytest.raises(ConfigError, match="unknown ordering"):
        parse_ordering("anticurr")  # never silently a curriculum
    assert build_sampler(CurriculumConfig(), None, T, 8) is None  # standard: the loop's epochs
    with pytest.raises(ConfigError, match="standard"):
        order_examples(np.zeros(4), "standard")


def test_anti_is_the_reverse_of_curriculum_and_random_is_not_an_order():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=300)
    labels = rng.integers(0, 3, size=300)
    for lab in (None, labels):
        curr = order_examples(difficulty, "curriculum", labels=lab)
        anti = order_examples(difficulty, "anti-curriculum", labels=lab)
        assert anti.tolist() == curr[::-1].tolist()
        assert sorted(curr.tolist()) == list(range(300))
    curr = order_examples(difficulty, "curriculum")
    assert np.all(np.diff(difficulty[curr]) >= 0)  # easiest first
    rand = order_examples(difficulty, "random", seed=1)
    assert sorted(rand.tolist()) == list(range(300))
    assert abs(np.corrcoef(np.arange(300), difficulty[rand])[0, 1]) < 0.2  # no trend in difficulty
    assert order_examples(difficulty, "random", seed=1).tolist() == rand.tolist()
    assert order_examples(difficulty, "random", seed=2).tolist() != rand.tolist()


def test_class_balanced_interleaves_the_kth_of_every_class():
    labels = [0, 0, 0, 1, 1, 2]
    order = [0, 1, 2, 3, 4, 5]  # class 0's three examples are the easiest
    assert class_balanced(order, labels) == [0, 3, 5, 1, 4, 2]
    order = [5, 4, 0, 3, 1, 2]
    assert class_balanced(order, labels) == [5, 4, 0, 3, 1, 2]  # each group keeps its order


def test_random_keeps_the_pacing_but_not_the_order():
    difficulty = np.arange(N, dtype=float)
    config = dict(pacing="quad", pacing_a=0.5, pacing_b=0.1, balance=False, sampling="step")
    curr = build_sampler(CurriculumConfig(ordering="curriculum", **config), difficulty, T, 32)
    rand = build_sampler(CurriculumConfig(ordering="random", **config), None, T, 32, n=N)
    for t in (0, 20, 60, 100, 199):
        assert curr.pool_size(t, 32) == rand.pool_size(t, 32)
    early = [i for t in range(10) for i in rand.indices(t, 32)]
    assert max(early) > 0.5 * N  # hard examples (high index) come early, at random
    assert max(i for t in range(10) for i in curr.indices(t, 32)) < curr.pool_size(10, 32)


@pytest.mark.parametrize("sampling", ["step", "pass"])
def test_the_pool_at_step_t_has_g_t_examples(sampling):
    g = pacing_function("linear", 0.5, 0.1, T, N, min_size=32)
    order = np.random.default_rng(0).permutation(N)
    sampler = CurriculumSampler(order, g, seed=3, sampling=sampling)
    position = {int(i): p for p, i in enumerate(order)}
    seen = set()
    for t in range(T):
        batch = sampler.indices(t, 32)
        assert len(batch) == 32 and len(set(batch)) == 32
        pool = g(t) if sampling == "step" else sampler.pool
        assert max(position[i] for i in batch) < pool
        assert sampling == "step" or pool <= g(t)  # a pass's pool was measured at its first step
        seen.update(batch)
    assert sampler.pool_size(0, 32) == 100 and sampler.pool_size(T // 2, 32) == N
    assert len(seen) > 0.9 * N
    if sampling == "step":  # over many draws at one step, exactly the first g(t) examples appear
        drawn = {i for k in range(200) for i in CurriculumSampler(order, g, seed=k, sampling="step").indices(40, 32)}
        assert drawn == set(order[:g(40)].tolist())


@pytest.mark.parametrize("sampling", ["step", "pass"])
def test_sampler_resumes_mid_curriculum_with_identical_batches(sampling):
    g = pacing_function("root", 0.6, 0.05, T, 500, min_size=16)
    order = np.random.default_rng(1).permutation(500)
    full = CurriculumSampler(order, g, seed=5, sampling=sampling)
    batches = [full.indices(t, 16) for t in range(T)]
    first = CurriculumSampler(order, g, seed=5, sampling=sampling)
    for t in range(77):
        first.indices(t, 16)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = CurriculumSampler(order, g, seed=5, sampling=sampling)
    resumed.load_state_dict(state)
    assert [resumed.indices(t, 16) for t in range(77, T)] == batches[77:]
    other = CurriculumSampler(order[::-1], g, seed=5, sampling=sampling)
    with pytest.raises(ConfigError, match="another curriculum"):
        other.load_state_dict(state)


class Recording:
    """A collate that records the example ids of each batch (the dataset items are their own ids)."""

    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, items, rng):
        self.seen.append([int(i) for i, _, _ in items])
        return {"x": torch.stack([x for _, x, _ in items]), "y": torch.stack([y for _, _, y in items])}


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, generator=g)
    return [(i, x[i], y[i]) for i in range(n)]


def _loss(model, batch):
    return nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])


class Stateful:
    """A callback with state of its own, present in one start of a run and not in the other."""

    def state_dict(self):
        return {"calls": 1}

    def load_state_dict(self, state):
        raise AssertionError("the sampler's state was handed to another callback")


def _run(tmp, data, sampler, stop_after=None, resume=False, grad_accum=1, callbacks=()):
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    collate = Recording()
    config = TrainConfig(output_dir=str(tmp), max_steps=30, batch_size=8, grad_accum=grad_accum, lr=1e-2,
                         device="cpu", checkpoint_every=10, log_every=5, resume=resume)
    train(model, data, collate, _loss, config, callbacks, sampler=sampler, stop_after=stop_after)
    return model, collate.seen


@pytest.mark.parametrize("sampling", ["pass", "step"])
def test_the_loop_trains_on_the_sampler_batches_and_resumes_exactly(tmp_path, sampling):
    data = _data()
    difficulty = np.array([abs(float(y)) for _, _, y in data])
    config = CurriculumConfig(ordering="curriculum", pacing="linear", pacing_a=0.5, pacing_b=0.25, sampling=sampling)

    def sampler():
        return build_sampler(config, difficulty, total_steps=30, batch_size=8, seed=0)

    reference = sampler()
    expected = [sorted(reference.indices(t, 8)) for t in range(30)]
    model, seen = _run(tmp_path / "full", data, sampler(), grad_accum=2)
    assert [sorted(a + b) for a, b in zip(seen[::2], seen[1::2])] == expected  # micro-batches of each step
    _, seen_first = _run(tmp_path / "cut", data, sampler(), stop_after=17, callbacks=[Stateful()])  # killed at 17
    resumed, seen_rest = _run(tmp_path / "cut", data, sampler(), resume=True)  # resumes from step 10
    assert [sorted(b) for b in seen_rest] == expected[10:]
    straight, _ = _run(tmp_path / "straight", data, sampler())
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)
    # the first steps only see the easiest quarter
    easiest = set(np.argsort(difficulty, kind="stable")[:24].tolist())
    assert set(seen_first[0]) <= easiest


def test_loss_cscore_holds_each_example_out_once_per_repeat():
    calls = []

    def train_and_score(train_idx, held, run):
        assert not set(train_idx) & set(held) and len(train_idx) + len(held) == 10
        calls.append(held)
        return held * 1.0 + run  # the "loss" is the index, plus the run number

    scores = loss_cscore(10, train_and_score, folds=5, repeats=2, seed=0)
    assert len(calls) == 10
    assert sorted(np.concatenate(calls[:5]).tolist()) == list(range(10))
    runs_of = {int(i): [r for r, held in enumerate(calls) if i in held] for i in range(10)}
    assert np.allclose(scores, [i + np.mean(runs_of[i]) for i in range(10)])


def test_learned_epoch_is_where_an_example_is_learned_for_good():
    correct = np.array([[0, 1, 1, 0],
                        [1, 1, 0, 0],
                        [1, 1, 1, 0],
                        [1, 1, 1, 0]], dtype=bool)
    assert learned_epoch(correct).tolist() == [1, 0, 2, 4]


def test_read_scores(tmp_path):
    (tmp_path / "s.txt").write_text("0.5\n1.5\n-2\n")
    assert read_scores(tmp_path / "s.txt", 3).tolist() == [0.5, 1.5, -2.0]
    (tmp_path / "s.json").write_text(json.dumps({"scores": [1, 2, 3], "higher": "easier"}))
    assert read_scores(tmp_path / "s.json").tolist() == [-1.0, -2.0, -3.0]
    with pytest.raises(DataFormatError, match="3 scores for 4"):
        read_scores(tmp_path / "s.txt", 4)
    (tmp_path / "bad.txt").write_text("1\nnan\n")
    with pytest.raises(DataFormatError, match="finite"):
        read_scores(tmp_path / "bad.txt")
