"""Interaction readers and the leave-last-out protocol (reprlab.recsys.data, reprlab.recsys.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from reprlab.errors import DataFormatError
from reprlab.recsys.data import LeaveLastOut, load_leave_last_out, read_interactions, read_split, read_titles
from reprlab.recsys.metrics import exclude_mask, topk_metrics


def write(tmp_path, text: str, name: str = "ratings.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- readers


def test_reads_tab_comma_and_space_separated_files_with_an_optional_header(tmp_path):
    rows = [(1, 10, 5, 100), (1, 11, 3, 101), (2, 10, 4.5, 99)]
    for sep, header in (("\t", ""), (",", "user,item,rating,timestamp\n"), (" ", "")):
        path = write(tmp_path, header + "".join(sep.join(map(str, r)) + "\n" for r in rows), f"r{ord(sep)}.txt")
        got = read_interactions(path)
        assert got.users.tolist() == [1, 1, 2] and got.items.tolist() == [10, 11, 10]
        assert got.ratings.tolist() == [5.0, 3.0, 4.5] and got.times.tolist() == [100, 101, 99]


@pytest.mark.parametrize("text, line, words", [
    ("1\t2\t5\t100\n1\t3\t4\n", 2, "expected 4 columns"),
    ("1\t2\t5\t100\nabc\t3\t4\t7\n", 2, "user id 'abc' is not an integer"),
    ("1\t2.5\t5\t100\n", 1, "item id '2.5' is not an integer"),
    ("1\t2\tgood\t100\n", 1, "rating 'good' is not a number"),
    ("1\t2\t5\tyesterday\n", 1, "timestamp 'yesterday' is not an integer"),
    ("1\t2\tnan\t100\n", 1, "not a finite number"),
])
def test_a_malformed_line_is_named_by_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(DataFormatError) as err:
        read_interactions(path)
    assert f"{path}:{line}:" in str(err.value) and words in str(err.value)


def test_empty_files_missing_files_and_folders_without_u_data_are_clear_errors(tmp_path):
    for text in ("", "\n\n", "user\titem\trating\ttimestamp\n"):
        with pytest.raises(DataFormatError, match="no interactions"):
            read_interactions(write(tmp_path, text))
    with pytest.raises(DataFormatError, match="no such file"):
        read_interactions(tmp_path / "absent.tsv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataFormatError, match="u.data"):
        read_interactions(tmp_path / "folder")
    with pytest.raises(DataFormatError, match="no rating is >= 4"):
        load_leave_last_out(write(tmp_path, "1\t2\t3\t100\n"))


def test_movielens_100k_files(shared_data):
    folder = shared_data("movielens_100k")
    rows = read_interactions(folder)
    assert len(rows) == 100_000 and len(set(rows.users.tolist())) == 943 and len(set(rows.items.tolist())) == 1682
    titles = read_titles(folder)
    assert titles[1] == "Toy Story (1995)" and len(titles) == 1682
    base, test = read_split(folder, "ua")
    assert len(base) + len(test) == 100_000 and len(test) == 9430
    with pytest.raises(DataFormatError, match="unknown MovieLens split"):
        read_split(folder, "u9")
    data = LeaveLastOut.from_interactions(rows, min_rating=4)
    assert data.num_items == 1682 and sum(len(s) for s in data.sequences) == int((rows.ratings >= 4).sum())
    assert len(data.examples("test")) == len(data.examples("val")) == sum(len(s) >= 3 for s in data.sequences)


# ----------------------------------------------------------------------------- the protocol


def tiny():
    # user 7: positives (by time) items 30, 10, 20, 40; user 8: two positives; the 2-rated item is no positive
    text = [(7, 10, 5, 2), (7, 20, 4, 3), (7, 30, 5, 1), (7, 40, 4, 9), (7, 50, 2, 4), (8, 10, 4, 5), (8, 20, 5, 6)]
    from reprlab.recsys.data import Interactions

    cols = list(zip(*text))
    return LeaveLastOut.from_interactions(Interactions(*(np.asarray(c) for c in cols)), min_rating=4)


def test_leave_last_out_takes_the_last_positive_for_test_and_the_one_before_for_validation():
    data = tiny()
    assert data.item_ids.tolist() == [10, 20, 30, 40, 50]  # 50 is in the catalogue without being liked
    assert [s.tolist() for s in data.sequences] == [[2, 0, 1, 3], [0, 1]]  # time order
    test, val, train = data.examples("test"), data.examples("val"), data.examples("train")
    assert test.users.tolist() == [0] and test.targets.tolist() == [3] and test.ends.tolist() == [3]
    assert val.targets.tolist() == [1] and val.ends.tolist() == [2]
    # training: user 0's second positive (history = the first), user 1 (too few for val/test) trains only
    assert list(zip(train.users.tolist(), train.targets.tolist(), train.ends.tolist())) == [(0, 0, 1), (1, 1, 1)]
    batch = data.batch(test, [0], length=2)
    assert batch["history"].tolist() == [[1, 2]]  # the latest 2 positives before the target, item + 1
    assert data.histories(np.array([0]), np.array([3]), 5).tolist() == [[3, 1, 2, 0, 0]]
    assert data.popularity().tolist() == [2, 1, 1, 0, 0]  # user 0's training positives (2, 0) and user 1's


def test_metrics_are_hit_rate_and_ndcg_with_one_target():
    topk = np.array([[5, 1, 2], [3, 4, 9], [7, 8, 6]])
    m = topk_metrics(topk, np.array([1, 9, 0]), ks=(1, 2, 3), ndcg_at=3)
    assert m["recall@1"] == 0 and m["recall@2"] == pytest.approx(1 / 3) and m["recall@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)


def test_exclude_mask_finds_seen_items_per_row():
    cand = np.array([[0, 4, 2], [4, 1, -1]])
    import torch

    mask = exclude_mask(torch.tensor(cand), torch.tensor([[5, 1, 0], [1, 0, 0]]))  # rows see {4, 0} and {0}
    assert mask.tolist() == [[True, True, False], [False, False, False]]
