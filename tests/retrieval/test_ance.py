"""ANCE: negatives from the current index version's top-k, versions published and switched to, a deterministic
refresh mode that resumes bit-for-bit, no process left behind when the trainer is killed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reprlab.demo import demo_data_path
from reprlab.errors import ConfigError
from reprlab.retrieval import ance
from reprlab.retrieval.ance import AnceCollate, AnceConfig, AnceNegatives, run_ance
from reprlab.retrieval.pairs import DocKeys, PairCollate
from reprlab.text import Tokenizer
from reprlab.text.beir import load_beir
from reprlab.train import TrainConfig


def _config(out, model, steps, mode="async", **loop):
    return AnceConfig(output_dir=str(out), data=str(demo_data_path()), split="test", model=str(model),
                      refresh_every=2, top_k=10, num_negatives=1, query_max_length=32, passage_max_length=64,
                      dev_queries=["q17", "q18"], refresh_mode=mode,
                      train=TrainConfig(output_dir="", max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=1,
                                        log_every=1, device="cpu", **loop))


def _log(path):
    return [json.loads(line) for line in open(path)]


# ----------------------------------------------------------------------------- the negatives themselves


def _collate(ranked, skip_top=1, top_k=4, relevant=None):
    corpus = {f"d{i}": {"title": "", "text": f"document number {i}"} for i in range(10)}
    negatives = AnceNegatives()
    negatives.version, negatives.ranked = 0, ranked
    base = PairCollate(Tokenizer.from_pretrained("minilm"), 1, 16, 16)
    relevant = relevant or {"q": {"d0"}}
    return AnceCollate(base, negatives, DocKeys(), corpus, relevant, top_k, skip_top), negatives


def test_negatives_are_the_current_versions_top_k_without_positives_and_skipped_ranks():
    ranked = {"q": ["d5", "d0", "d3", "d7", "d9", "d1"]}  # d0 is the positive; skip_top=1 drops d5
    collate, negatives = _collate(ranked, skip_top=1, top_k=4)
    keys = collate.keys
    drawn = set()
    for step in range(100):
        batch = collate([("q", "a query", "d0")], np.random.default_rng(step))
        drawn.add(int(batch["candidate_ids"][1]))
    expected = {keys(d) for d in ("d3", "d7")}  # ranks 2..4 of the ranking, minus the positive d0
    assert drawn == expected
    negatives.ranked = {"q": ["d2", "d8", "d4", "d0", "d6"]}  # a new version: the pool follows it
    negatives.version = 1
    drawn = {int(collate([("q", "a query", "d0")], np.random.default_rng(s))["candidate_ids"][1]) for s in range(100)}
    assert drawn == {keys(d) for d in ("d8", "d4")}


def test_a_query_missing_from_the_version_is_an_error():
    collate, _ = _collate({"other": ["d1"]})
    with pytest.raises(Exception, match="missing from ANCE index v0"):
        collate([("q", "a query", "d0")], np.random.default_rng(0))


def test_first_negatives_come_from_the_warm_start_models_ranking(tmp_path, tiny_model_dir, monkeypatch):
    """Steps before the first refresh draw from the top-k of the starting model itself (computed here
    independently), not from any other documents."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval import ance
    from reprlab.retrieval.dense import DenseRetriever

    drawn = []
    original = ance.recipe.AnceCollate.__call__

    def spy(self, items, rng):
        batch = original(self, items, rng)
        reverse = {v: k for k, v in self.keys.keys.items()}
        B = len(items)
        drawn.append((self.negatives.version, [(qid, reverse[int(k)]) for (qid, _, _), k in
                                               zip(items, batch["candidate_ids"][B:])]))
        return batch

    monkeypatch.setattr(ance.recipe.AnceCollate, "__call__", spy)
    run_ance(_config(tmp_path, tiny_model_dir, steps=2, mode="sync"))
    data = load_beir(demo_data_path(), split="test")
    model = SentenceEncoder.from_pretrained(tiny_model_dir, max_length=64)  # as the refresher encodes
    retriever = DenseRetriever(model, batch_size=64)
    retriever.index_corpus(data.corpus, show_progress=False)
    model.max_length = 32
    qids = [q for q in data.judged_queries() if q not in ("q17", "q18")]
    _, ids = retriever.search([data.queries[q] for q in qids], k=10)
    top = {q: set(row) - {d for d, r in data.qrels[q].items() if r > 0} for q, row in zip(qids, ids.tolist())}
    assert drawn and all(version == 0 for version, _ in drawn)
    for _, pairs in drawn:
        for qid, doc in pairs:
            assert doc in top[qid], (qid, doc)


# ----------------------------------------------------------------------------- versions and resumption


def test_refresher_publishes_versions_and_trainer_uses_the_newest(tmp_path, tiny_model_dir):
    result = run_ance(_config(tmp_path, tiny_model_dir, steps=10))
    log = _log(result.refresh_log)
    versions = [r["version"] for r in log]
    assert versions[0] == 0 and len(versions) >= 2, log
    assert versions == sorted(set(versions)), "versions are switched to in increasing order"
    for r in log:  # an index is used only after the step whose weights built it
        assert r["switched_at_step"] >= r["checkpoint_step"] and r["staleness_steps"] >= 0
        assert "dev_ndcg_cut_10" in r and r["encode_seconds"] > 0
    steps = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    used = [s["ance_version"] for s in steps]
    assert used == sorted(used) and used[-1] == versions[-1]
    published = sorted(int(p.name[len("index-v"):]) for p in (tmp_path / "ance").glob("index-v*"))
    assert versions[-1] in published  # (a refresh still running at the end may publish one more)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_sync_mode_switches_at_each_refresh_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_model_dir):
    full = run_ance(_config(tmp_path / "full", tiny_model_dir, steps=6, mode="sync", checkpoint_every=2))
    used = [m["ance_version"] for m in full.metrics]
    assert used == [0, 1, 1, 2, 2, 2], "version v is built at step 2v and used from step 2v + 1"
    run_ance(_config(tmp_path / "cut", tiny_model_dir, steps=6, mode="sync", checkpoint_every=2), stop_after=3)
    resumed = run_ance(_config(tmp_path / "cut", tiny_model_dir, steps=6, mode="sync", checkpoint_every=2,
                               resume=True))
    assert [m["ance_version"] for m in resumed.metrics] == used
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in full.metrics]
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_setting(tmp_path, tiny_model_dir):
    run_ance(_config(tmp_path, tiny_model_dir, steps=4, mode="sync", checkpoint_every=2), stop_after=2)
    with pytest.raises(ConfigError, match="top_k"):
        run_ance(AnceConfig(**{**_config(tmp_path, tiny_model_dir, steps=4, mode="sync", checkpoint_every=2,
                                         resume=True).__dict__, "top_k": 12}))


# ----------------------------------------------------------------------------- no process left behind


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_trainer_leaves_no_process_behind(tmp_path, tiny_model_dir):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ance import _config
        from reprlab.retrieval.ance import run_ance
        run_ance(_config({str(tmp_path)!r}, {str(tiny_model_dir)!r}, steps=100000))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").is_file():
            time.sleep(0.5)
        assert (tmp_path / "metrics.jsonl").is_file(), "the run did not start"
        children = _children(proc.pid)
        assert children, "the refresher (and the resource tracker) run as children of the trainer"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.5)
    assert not [c for c in children if _alive(c)], "processes outlived their killed trainer"


def test_bad_settings():
    with pytest.raises(ConfigError, match="loss"):
        AnceConfig(output_dir="x", data="y", loss="hinge")
    with pytest.raises(ConfigError, match="skip_top"):
        AnceConfig(output_dir="x", data="y", top_k=5, skip_top=5)
    with pytest.raises(ConfigError, match="refresh_mode"):
        AnceConfig(output_dir="x", data="y", refresh_mode="eventually")


# ----------------------------------------------------------------------------- the parts, by hand (mutation testing)


def test_collate_passes_every_relevant_document_for_the_false_negative_mask():
    collate, _ = _collate({"q": ["d5", "d0", "d3", "d7", "d9", "d1"]}, relevant={"q": {"d0", "d3"}})
    keys = collate.keys
    batch = collate([("q", "a query", "d0")], np.random.default_rng(0))
    assert sorted(batch["relevant"][0].tolist()) == sorted([keys("d0"), keys("d3")])
    assert int(batch["candidate_ids"][1]) == keys("d7")  # ranks 2..4 minus both relevant documents


class _FixedModel:
    """Returns fixed query and passage vectors (the passages: B positives, then the negatives)."""

    def __init__(self, q, p):
        self.q, self.p, self.seen = q, p, None

    def __call__(self, queries, passages):
        self.seen = (queries, passages)
        return self.q, self.p


def test_ance_loss_is_the_chosen_loss_of_the_models_vectors():
    from reprlab.retrieval.losses import contrastive_loss, pairwise_loss

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 5, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)  # 2 positives, then 2 negatives
    batch = {"queries": "Q", "passages": "P", "candidate_ids": torch.tensor([1, 2, 3, 4]),
             "relevant": torch.tensor([[1, 3], [2, -1]])}
    model = _FixedModel(q, p)
    softmax = ance.ance_loss("softmax", 3.0)(model, batch)
    assert model.seen == ("Q", "P")
    masked = contrastive_loss(q, p[:2], p[2:], scale=3.0, candidate_ids=batch["candidate_ids"],
                              query_positive_ids=batch["relevant"])
    torch.testing.assert_close(softmax, masked)
    assert abs(float(softmax) - float(contrastive_loss(q, p[:2], p[2:], scale=3.0))) > 1e-3  # the mask matters here
    torch.testing.assert_close(ance.ance_loss("pairwise", 3.0)(model, batch), pairwise_loss(q, p[:2], p[2:], scale=3.0))
    assert abs(float(pairwise_loss(q, p[:2], p[2:], scale=3.0)) - float(masked)) > 1e-3


def _refresher(tmp_path, mode="async", refresh_every=2):
    job = ance.RefreshJob(data="d", split="s", query_ids=[], dev_ids=[], publish_dir=str(tmp_path / "ance"), top_k=10,
                          batch_size=1, query_max_length=8, passage_max_length=8, threads=1)
    return ance.IndexRefresher(job, AnceNegatives(), None, refresh_every, mode)


def test_negatives_load_and_the_checkpointed_state(tmp_path):
    (tmp_path / "negatives.json").write_text(json.dumps({"q": ["d1", "d2"]}))
    negatives = AnceNegatives()
    negatives.load(3, tmp_path)
    assert (negatives.version, negatives.ranked) == (3, {"q": ["d1", "d2"]})
    r = _refresher(tmp_path)
    r.negatives, r.next_version = negatives, 5
    state = r.state_dict()
    assert state == {"version": 3, "next_version": 5, "ranked": {"q": ["d1", "d2"]}}
    other = _refresher(tmp_path)
    other.load_state_dict(state)
    assert (other.negatives.version, other.next_version, other.negatives.ranked) == (3, 5, {"q": ["d1", "d2"]})
    other.load_state_dict({"version": 4, "ranked": {}})  # a checkpoint without next_version: the one after
    assert (other.negatives.version, other.next_version) == (4, 5)


class _Results:
    """A result queue that records how it was read."""

    def __init__(self, *messages):
        self.messages, self.calls = list(messages), []

    def get(self, timeout=None):
        self.calls.append(("get", timeout))
        return self._next()

    def get_nowait(self):
        self.calls.append(("get_nowait",))
        return self._next()

    def _next(self):
        import queue

        if not self.messages:
            raise queue.Empty
        return self.messages.pop(0)


def _published(tmp_path, version, ranked):
    folder = tmp_path / "ance" / f"index-v{version:04d}"
    folder.mkdir(parents=True)
    (folder / "negatives.json").write_text(json.dumps(ranked))
    (tmp_path / "ance" / "weights" / f"v{version:04d}").mkdir(parents=True)
    return {"version": version, "path": str(folder), "checkpoint_step": 2 * version, "encode_seconds": 1.0,
            "total_seconds": 2.0, "dev": {"ndcg_cut_10": 0.5}}


def test_receive_switches_to_the_newest_finished_version(tmp_path):
    r = _refresher(tmp_path)
    r.results, r.busy = _Results(), True
    r._receive(block=False, step=1)  # nothing finished: nothing changes
    assert (r.negatives.version, r.busy, r.results.calls) == (-1, True, [("get_nowait",)])
    r.results = _Results(_published(tmp_path, 0, {"q": ["a"]}), _published(tmp_path, 1, {"q": ["b"]}))
    r._receive(block=True, step=3)  # waits for the first message only, then takes what else is there
    assert r.results.calls == [("get", 3600), ("get_nowait",), ("get_nowait",)]
    assert (r.negatives.version, r.negatives.ranked, r.busy) == (1, {"q": ["b"]}, False)
    assert [rec["version"] for rec in r.switch_log] == [1] and r.switch_log[0]["staleness_steps"] == 1
    assert json.loads(r.log_path.read_text())["switched_at_step"] == 3
    assert not list((tmp_path / "ance" / "weights").iterdir()), "the weights of consumed versions are deleted"
    r.results = _Results()
    with pytest.raises(Exception, match="^the ANCE index refresher sent nothing for an hour$"):
        r._receive(block=True, step=4)
    r.results = _Results({"error": "ValueError: boom"})
    with pytest.raises(Exception, match="^the ANCE index refresher failed: ValueError: boom$"):
        r._receive(block=False, step=4)


def _recording(r):
    calls = []
    r._start_process = lambda: calls.append("start")
    r._request = lambda step: calls.append(("request", step))
    r._receive = lambda block, step: calls.append(("receive", block, step))
    return calls


def test_when_the_trainer_asks_for_and_waits_for_an_index(tmp_path):
    from types import SimpleNamespace

    fresh = _refresher(tmp_path, mode="sync")
    calls = _recording(fresh)
    fresh.on_train_start(SimpleNamespace(step=0), None)
    assert calls == ["start", ("request", 0), ("receive", True, 0)]  # the first index comes from the warm start
    for mode, expected in (("sync", ["start"]), ("async", ["start", ("request", 4)])):
        resumed = _refresher(tmp_path, mode=mode)
        resumed.negatives.version = 0  # restored from a checkpoint: train on it (async also asks for a new one)
        calls = _recording(resumed)
        resumed.on_train_start(SimpleNamespace(step=4), None)
        assert calls == expected, mode

    sync = _refresher(tmp_path, mode="sync", refresh_every=2)
    calls = _recording(sync)
    metrics = {}
    for step in (1, 2, 3, 4):
        sync.on_step_end(SimpleNamespace(step=step, total_steps=4), None, metrics)
    assert calls == [("request", 2), ("receive", True, 2)]  # none at the last step: that index would go unused
    assert metrics == {"ance_version": -1}

    asy = _refresher(tmp_path, mode="async", refresh_every=2)
    calls = _recording(asy)
    asy.busy = True
    asy.on_step_end(SimpleNamespace(step=2, total_steps=6), None, {})  # due, but the refresher is busy: pending
    assert calls == [("receive", False, 2)] and asy.pending
    asy.busy = False
    asy.on_step_end(SimpleNamespace(step=3, total_steps=6), None, {})  # sent as soon as it is free
    asy.on_step_end(SimpleNamespace(step=6, total_steps=6), None, {})  # never at the end
    assert calls == [("receive", False, 2), ("receive", False, 3), ("request", 3), ("receive", False, 6)]
