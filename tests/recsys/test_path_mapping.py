"""The item -> path mapping: codes, the inverse index, streaming scores and the M-step with the size penalty."""

from __future__ import annotations

import math

import pytest
import torch

from reprlab.recsys.path_mapping import (
    PathIndex,
    PathScores,
    assign_paths,
    code_paths,
    path_codes,
    path_sizes,
    path_statistics,
    penalty,
    penalty_gain,
    random_paths,
)


def test_codes_round_trip_and_random_paths_are_distinct_per_item():
    paths = random_paths(500, 3, depth=3, width=4, seed=1)  # (N, J, D)
    assert paths.shape == (500, 3, 3) and paths.min() >= 0 and paths.max() < 4
    codes = path_codes(paths, 4)
    assert torch.equal(code_paths(codes, 3, 4), paths)
    assert path_codes(torch.tensor([2, 0, 3]), 4).item() == 2 * 16 + 0 * 4 + 3
    assert all(len(set(row)) == 3 for row in codes.tolist())
    assert torch.equal(random_paths(50, 2, 2, 3, seed=5), random_paths(50, 2, 2, 3, seed=5))


def test_path_index_lists_the_items_of_each_path():
    codes = torch.tensor([[3, 1], [1, 0], [3, 2], [0, 1]])  # item -> 2 paths of 4
    index = PathIndex(codes, num_paths=5)
    assert index.ptr.tolist() == [0, 2, 5, 6, 8, 8]
    row, slot, items = index.gather(torch.tensor([[1, 4], [3, 0]]))
    got = {(r, s, i) for r, s, i in zip(row.tolist(), slot.tolist(), items.tolist())}
    assert got == {(0, 0, 0), (0, 0, 1), (0, 0, 3), (1, 0, 0), (1, 0, 2), (1, 1, 1), (1, 1, 3)}
    assert path_sizes(codes, 5).tolist() == [2, 3, 1, 2, 0]
    assert path_statistics(codes, 5) == {"path_max": 3, "path_mean": 2.0, "paths_empty": 1, "paths_used": 0.8}


def test_streaming_scores_add_up_decay_and_keep_the_best_candidates():
    s = PathScores(num_items=3, num_paths=10, candidates=2, decay=0.5)
    s.add(torch.tensor([1]), torch.tensor([[5, 7]]), torch.tensor([[0.5, 0.2]]), step=0)
    # step 2: old scores decay by 0.5^2; item 1 is in the batch twice, the same path adds up
    s.add(torch.tensor([1, 1, 2]), torch.tensor([[7, 9], [9, 3], [4, 4]]),
          torch.tensor([[0.1, 0.2], [0.1, 0.05], [0.3, 0.1]]), step=2)
    assert s.codes[1].tolist() == [9, 7]  # 9: 0.3; 7: 0.2 / 4 + 0.1 = 0.15; 5: 0.5 / 4 = 0.125 is dropped
    assert s.scores[1].tolist() == pytest.approx([0.3, 0.15])
    assert s.codes[2].tolist() == [4, -1] and s.scores[2].tolist() == pytest.approx([0.4, 0.0])
    assert s.codes[0].tolist() == [-1, -1]
    codes, scores = s.current(step=3)  # everything decayed to step 3
    assert scores[1].tolist() == pytest.approx([0.15, 0.075]) and scores[2].tolist() == pytest.approx([0.2, 0.0])
    again = PathScores(3, 10, 2, 0.5)
    again.load_state_dict(s.state_dict())
    assert torch.equal(again.codes, s.codes) and torch.equal(again.scores, s.scores)


def test_the_penalty_is_a_quarter_of_the_fourth_power_and_its_gain_the_difference():
    assert penalty(3) == 81 / 4
    for size in range(6):
        assert penalty_gain(size) == penalty(size + 1) - penalty(size)
    assert penalty_gain(3) == 43.75


# ----------------------------------------------------------------------------- the M-step


def test_without_penalty_each_item_gets_its_highest_scoring_paths():
    codes = torch.tensor([[4, 2, 7, 1], [3, 5, -1, -1], [0, 6, 2, 5]])
    scores = torch.tensor([[0.1, 0.6, 0.2, 0.05], [0.3, 0.4, 0.0, 0.0], [0.2, 0.2, 0.9, 0.1]], dtype=torch.float64)
    current = torch.tensor([[0, 1], [0, 1], [0, 1]])
    new = assign_paths(codes, scores, current, num_paths=8, alpha=0.0, iterations=2)
    assert new.tolist() == [[2, 7], [5, 3], [2, 0]]  # best first; a tie goes to the earlier candidate
    j1 = assign_paths(codes, scores, current[:, :1], num_paths=8, alpha=0.0)
    assert j1.tolist() == [[2], [5], [2]]


def test_a_large_penalty_evens_the_path_sizes_out():
    """Four items that all prefer path 0, then 1, 2, 3: without the penalty they share path 0; with a large one
    the greedy sweep puts one item on each path, in order."""
    codes = torch.tensor([[0, 1, 2, 3]] * 4)
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4, dtype=torch.float64)
    current = torch.zeros(4, 1, dtype=torch.long)
    assert assign_paths(codes, scores, current, 4, alpha=0.0).reshape(-1).tolist() == [0, 0, 0, 0]
    new = assign_paths(codes, scores, current, 4, alpha=10.0, iterations=3)
    assert new.reshape(-1).tolist() == [0, 1, 2, 3]
    assert path_sizes(new, 4).tolist() == [1, 1, 1, 1]
    # a moderate penalty allows two per path: log(0.5 / 0.3) = 0.51 > alpha * (f(2) - f(1)) = 0.1 * 3.75
    mid = assign_paths(codes, scores, current, 4, alpha=0.1, iterations=3)
    assert path_sizes(mid, 4).tolist() == [2, 2, 0, 0]


def test_the_choice_flips_where_the_penalty_gain_of_the_full_path_outweighs_the_score_gap():
    """Item 3 scores path 0 at a, path 1 at b < a; path 0 already holds 3 items (pinned: they have no candidates),
    path 1 none. It moves to path 1 exactly when alpha * (f(4) - f(3)) - alpha * (f(1) - f(0)) > log(a / b)."""
    a, b = 0.6, 0.2
    codes = torch.tensor([[-1, -1]] * 3 + [[0, 1]])
    scores = torch.tensor([[0.0, 0.0]] * 3 + [[a, b]], dtype=torch.float64)
    current = torch.tensor([[0], [0], [0], [2]])
    threshold = math.log(a / b) / (penalty_gain(3) - penalty_gain(0))
    below = assign_paths(codes, scores, current, 3, alpha=threshold * 0.999)
    above = assign_paths(codes, scores, current, 3, alpha=threshold * 1.001)
    assert below.reshape(-1).tolist() == [0, 0, 0, 0]  # the pinned items keep their paths
    assert above.reshape(-1).tolist() == [0, 0, 0, 1]


def test_items_without_enough_candidates_fill_up_with_the_least_used_paths():
    codes = torch.tensor([[1, -1], [-1, -1], [1, 2]])
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.0], [0.5, 0.4]], dtype=torch.float64)
    current = torch.tensor([[0, 1], [0, 3], [3, 0]])  # item 1 (never seen) keeps paths 0 and 3
    # one sweep: item 0 takes its candidate 1, then the least-used path (2 and 4 are empty: the lower code);
    # item 2 takes its two candidates
    one = assign_paths(codes, scores, current, num_paths=5, alpha=0.0, iterations=1)
    assert one.tolist() == [[1, 2], [0, 3], [1, 2]]
    # a second sweep takes item 0 off its paths first: path 2 now holds item 2, so the empty path 4 is the least used
    two = assign_paths(codes, scores, current, num_paths=5, alpha=0.0, iterations=2)
    assert two.tolist() == [[1, 4], [0, 3], [1, 2]]


def test_explore_offers_the_least_used_path_and_the_penalty_moves_items_off_a_crowded_one():
    """Five items whose only candidate is path 0 (score 1). Without ``explore`` no penalty can move them: path 0
    ends with all five. With ``explore = e`` each item may take the least-used other path at score e, and leaves
    path 0 exactly when alpha * (f(|c| + 1) - f(|c|)) > -log(e) + alpha * (f(1) - f(0)). With alpha 1 and e 0.01
    (-log e = 4.61): the second item pays f(2) - f(1) = 3.75 < 4.86 and stays, the third would pay 16.25 and goes
    to an empty path, as do the rest: sizes [2, 1, 1, 1] over paths 0..3 and the spare path 4 empty."""
    codes = torch.tensor([[0, -1]] * 5)
    scores = torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64)
    current = torch.zeros(5, 1, dtype=torch.long)
    crowded = assign_paths(codes, scores, current, 5, alpha=1.0, iterations=2)
    assert path_sizes(crowded, 5).tolist() == [5, 0, 0, 0, 0]  # the paper's M-step: candidates only
    spread = assign_paths(codes, scores, current, 5, alpha=1.0, iterations=2, explore=0.01)
    assert spread.reshape(-1).tolist() == [0, 0, 1, 2, 3]  # the empty paths in code order
    assert path_sizes(spread, 5).tolist() == [2, 1, 1, 1, 0]
    # the same boundary from the other side: e large enough that the second item leaves too (4.61 -> 3.0 < 3.75)
    wide = assign_paths(codes, scores, current, 5, alpha=1.0, iterations=2, explore=math.exp(-3.0))
    assert path_sizes(wide, 5).tolist() == [1, 1, 1, 1, 1]
    # without a penalty exploring changes nothing: a candidate scores above the free path
    assert assign_paths(codes, scores, current, 5, alpha=0.0, explore=0.5).reshape(-1).tolist() == [0] * 5


def test_explore_never_offers_a_path_that_is_already_a_candidate_or_chosen():
    """Item 1's candidates are paths 0 and 1; the only path outside them (2) holds the pinned item 0 and is offered
    at the explore score, losing to the candidates. Item 2 has every path as a candidate: nothing extra is offered
    (and no error is raised for want of a free path)."""
    codes = torch.tensor([[-1, -1, -1], [0, 1, -1], [0, 1, 2]])
    scores = torch.tensor([[0, 0, 0], [1.0, 0.9, 0], [1.0, 0.9, 0.8]], dtype=torch.float64)
    current = torch.tensor([[2], [0], [0]])
    new = assign_paths(codes, scores, current, 3, alpha=0.0, explore=0.5)
    assert new.reshape(-1).tolist() == [2, 0, 0]
    pinned = assign_paths(codes, scores, current, 3, alpha=100.0, explore=0.5)
    # item 1: path 0 and 1 are empty when it comes (item 0 pinned to 2): gain log(1) - 25 vs the free path 2
    # (size 1): log(0.5) - 100 * 3.75; it takes 0. Item 2: 0 is full (size 1), 1 and 2 cost the same: 1 (0.9 > 0.8)
    assert pinned.reshape(-1).tolist() == [2, 0, 1]


def test_explore_keeps_an_item_on_its_current_path_before_a_fresh_empty_one():
    """Item 2's only candidate, path 0, is crowded by two pinned items; its current path 3 is no candidate (no beam
    has reached it yet). Both path 3 and the least-used path 1 are empty and offered at the explore score: the tie
    keeps path 3, where the structure model has been trained to put the item. Once path 3 is crowded too, it goes
    to the least-used path."""
    codes = torch.tensor([[-1], [-1], [0]])
    scores = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    new = assign_paths(codes, scores, torch.tensor([[0], [0], [3]]), 4, alpha=1.0, iterations=2, explore=0.01)
    assert new.reshape(-1).tolist() == [0, 0, 3]
    codes = torch.tensor([[-1], [-1], [-1], [-1], [0]])
    scores = torch.tensor([[0.0]] * 4 + [[1.0]], dtype=torch.float64)
    crowded = assign_paths(codes, scores, torch.tensor([[0], [0], [3], [3], [3]]), 4, alpha=1.0, explore=0.01)
    assert crowded.reshape(-1).tolist() == [0, 0, 3, 3, 1]


def test_explore_with_a_width_spills_to_the_siblings_of_the_best_candidate_first():
    """D=2, K=3 (9 paths; the siblings of path 0 are 0, 1, 2). Five items whose only candidate is path 0, alpha 1,
    explore 0.01: the first two share path 0 (f(2) - f(1) = 3.75 < 4.61), then the empty siblings 1 and 2 are
    offered at 0.01 (gain -4.86) and the far least-used path at 0.01^2 (-9.46): items 2 and 3 go to 1 and 2. The
    fifth item pays -4.61 - 3.75 = -8.36 on a sibling holding one item, still above a far empty path: sibling 1.
    Without the width every spill goes to the least-used path of all, in code order."""
    codes = torch.tensor([[0, -1]] * 5)
    scores = torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64)
    current = torch.zeros(5, 1, dtype=torch.long)
    near = assign_paths(codes, scores, current, 9, alpha=1.0, iterations=2, explore=0.01, width=3)
    assert near.reshape(-1).tolist() == [0, 0, 1, 2, 1]
    far = assign_paths(codes, scores, current, 9, alpha=1.0, iterations=2, explore=0.01)
    assert far.reshape(-1).tolist() == [0, 0, 1, 2, 3]
    # a 20-item pile on path 0: every path is used, none past 3 items, and the near paths are at least as full as
    # every far one (a far path only wins once the siblings are crowded)
    pile = assign_paths(torch.tensor([[0, -1]] * 20), torch.tensor([[1.0, 0.0]] * 20, dtype=torch.float64),
                        torch.zeros(20, 1, dtype=torch.long), 9, alpha=1.0, iterations=2, explore=0.01, width=3)
    sizes = path_sizes(pile, 9).tolist()
    assert sum(sizes) == 20 and min(sizes) >= 1 and max(sizes) <= 3 and min(sizes[:3]) >= max(sizes[3:])
