"""ANCE's index refresher: a child process that encodes the corpus with a recent checkpoint and publishes
index versions, and the training callback that owns it.

Two modes (``AnceConfig.refresh_mode``):

* ``"async"`` (the paper's): every ``refresh_every`` steps the trainer saves its weights and asks for a
  new version; it keeps training on the current one and switches to a new version at the first step
  after it is published. Fast, but the step at which a version takes over depends on timing, so two
  runs (or a run and its resumption) are not bit-for-bit equal.
* ``"sync"`` (deterministic): at every ``refresh_every`` steps the trainer waits for the version built
  from its weights at that step and switches to it before the next step. Two runs of one config, and a
  killed run and its resumption, give identical weights. Use it for tests and for exact resumption.

Safety:

* the refresher exits when the trainer dies (``PR_SET_PDEATHSIG`` on Linux, and a check of its parent
  between requests), so a ``kill -9`` of the trainer leaves no process behind;
* every version is written with the run's owner token; a trainer takes over the publish folder by
  writing ``owner.json`` with a fresh token, after which a refresher of an earlier run (one that
  somehow survived) refuses to publish into it;
* the ranking of the version in use is part of the training checkpoint (the callback's state), so a
  resumption does not depend on index folders that may have been cleaned up since.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from reprlab.errors import ReprlabError
from reprlab.io import atomic_dir, atomic_write_json

logger = logging.getLogger("reprlab")
OWNER_FILE = "owner.json"
REFRESH_MODES = ("async", "sync")
POLL_SECONDS = 2.0  # how often an idle refresher checks that its trainer is alive


@dataclass
class RefreshJob:
    """What the refresher needs, sent once when it starts (plain data: it is pickled to the child)."""

    data: str
    split: str
    query_ids: list[str]
    dev_ids: list[str]
    publish_dir: str
    top_k: int
    batch_size: int
    query_max_length: int
    passage_max_length: int
    threads: int
    owner: str = ""
    parent_pid: int = 0


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - no libc: the parent check below still ends the process
            pass


def _owns(job: RefreshJob) -> bool:
    try:
        return json.loads((Path(job.publish_dir) / OWNER_FILE).read_text()).get("owner") == job.owner
    except (OSError, json.JSONDecodeError):
        return False


def _next_request(job: RefreshJob, requests: mp.Queue):
    """The next request, or None when asked to stop or when the trainer is gone."""
    while True:
        if os.getppid() != job.parent_pid:
            return None
        try:
            return requests.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue


def refresher_main(job: RefreshJob, requests: mp.Queue, results: mp.Queue) -> None:
    """Child process: wait for a checkpoint, encode the corpus, publish an index version, repeat."""
    _die_with_parent()
    torch.set_num_threads(job.threads)
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.metrics import evaluate, to_run
    from reprlab.text.beir import load_beir

    try:
        data = load_beir(job.data, split=job.split)
        queries = [data.queries[q] for q in job.query_ids]
        dev = [data.queries[q] for q in job.dev_ids]
        while (request := _next_request(job, requests)) is not None:
            t0 = time.time()
            model = SentenceEncoder.from_pretrained(request["checkpoint"], max_length=job.passage_max_length)
            retriever = DenseRetriever(model, batch_size=job.batch_size)
            retriever.index_corpus(data.corpus, show_progress=False)
            encode_seconds = time.time() - t0
            model.max_length = job.query_max_length
            _, ranked = retriever.search(queries, k=job.top_k)
            dev_metrics = {}
            if dev:
                scores, ids = retriever.search(dev, k=100)
                dev_qrels = {q: data.qrels[q] for q in job.dev_ids}
                dev_metrics = evaluate(dev_qrels, to_run(job.dev_ids, scores, ids),
                                       metrics=("ndcg_cut_10", "recall_100"))
            if not _owns(job):
                results.put({"error": f"{job.publish_dir} is owned by another run now; this refresher stops"})
                return
            folder = Path(job.publish_dir) / f"index-v{request['version']:04d}"
            top = {q: [d for d in row if d is not None] for q, row in zip(job.query_ids, ranked.tolist())}
            meta = {"version": request["version"], "checkpoint_step": request["step"], "owner": job.owner,
                    "encode_seconds": round(encode_seconds, 2), "total_seconds": round(time.time() - t0, 2),
                    "dev": dev_metrics}
            with atomic_dir(folder) as tmp:
                retriever.index.save(tmp / "index")
                atomic_write_json(tmp / "negatives.json", top, indent=None)
                atomic_write_json(tmp / "meta.json", meta)
            results.put({**meta, "path": str(folder), "encode_seconds": encode_seconds,
                         "total_seconds": time.time() - t0})
    except BaseException as exc:  # report instead of dying silently; the trainer raises it
        results.put({"error": f"{type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------------- trainer side


class AnceNegatives:
    """The ANN ranking of the current index version, read by the collate function."""

    def __init__(self):
        self.version = -1
        self.ranked: dict[str, list[str]] = {}

    def load(self, version: int, path: str | Path) -> None:
        with open(Path(path) / "negatives.json") as f:
            self.ranked = json.load(f)
        self.version = version


class IndexRefresher:
    """Training callback that owns the refresher process and switches index versions.

    Rank 0 starts the child process; every rank follows the version rank 0 broadcasts.
    """

    def __init__(self, job: RefreshJob, negatives: AnceNegatives, model, refresh_every: int, mode: str = "async"):
        if mode not in REFRESH_MODES:
            raise ReprlabError(f"unknown refresh mode {mode!r}; choose one of: {', '.join(REFRESH_MODES)}")
        self.job, self.negatives, self.model, self.refresh_every, self.mode = job, negatives, model, refresh_every, mode
        self.process = None
        self.requests = self.results = None
        self.busy = False
        self.pending = False
        self.next_version = 0
        self.log_path = Path(job.publish_dir).parent / "ance_refresh.jsonl"
        self.switch_log: list[dict] = []

    # -- checkpointed state: the ranking itself, so that a resumption needs no published folder
    def state_dict(self) -> dict:
        return {"version": self.negatives.version, "next_version": self.next_version, "ranked": self.negatives.ranked}

    def load_state_dict(self, state: dict) -> None:
        self.negatives.version, self.negatives.ranked = state["version"], state["ranked"]
        self.next_version = state.get("next_version", self.negatives.version + 1)

    # -- process management
    def _rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def _start_process(self) -> None:
        root = Path(self.job.publish_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.job.owner, self.job.parent_pid = uuid.uuid4().hex, os.getpid()
        atomic_write_json(root / OWNER_FILE, {"owner": self.job.owner, "pid": os.getpid()})
        ctx = mp.get_context("spawn")
        self.requests, self.results = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=refresher_main, args=(self.job, self.requests, self.results),
                                   daemon=True, name="ance-refresher")
        self.process.start()

    def _request(self, step: int) -> None:
        version = self.next_version
        self.next_version += 1
        checkpoint = Path(self.job.publish_dir) / "weights" / f"v{version:04d}"
        self.model.passages.save_pretrained(checkpoint)
        self.requests.put({"version": version, "checkpoint": str(checkpoint), "step": step})
        self.busy, self.pending = True, False

    def _receive(self, block: bool, step: int) -> None:
        """Take finished versions off the result queue; switch to the newest."""
        newest = None
        while True:
            try:
                msg = self.results.get(timeout=3600) if block and newest is None else self.results.get_nowait()
            except queue.Empty:
                if block and newest is None:
                    raise ReprlabError("the ANCE index refresher sent nothing for an hour") from None
                break
            if "error" in msg:
                raise ReprlabError(f"the ANCE index refresher failed: {msg['error']}")
            self.busy = False
            newest = msg
        if newest is None:
            return
        self.negatives.load(newest["version"], newest["path"])
        self._clean_up(newest["version"])
        self._log_switch(newest, step)

    def _log_switch(self, newest: dict, step: int) -> None:
        record = {"version": newest["version"], "checkpoint_step": newest["checkpoint_step"], "switched_at_step": step,
                  "staleness_steps": step - newest["checkpoint_step"],
                  "encode_seconds": round(newest["encode_seconds"], 2),
                  "refresh_seconds": round(newest["total_seconds"], 2),
                  **{f"dev_{k}": round(v, 4) for k, v in newest["dev"].items()}}
        self.switch_log.append(record)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info("ANCE index v{version}: weights of step {checkpoint_step}, in use from step {switched_at_step} "
                    "(staleness {staleness_steps}), encode {encode_seconds}s".format(**record)
                    + (f", dev nDCG@10 {record['dev_ndcg_cut_10']:.4f}" if "dev_ndcg_cut_10" in record else ""))

    def _clean_up(self, current: int, keep: int = 2) -> None:
        """Delete consumed weights and all but the newest ``keep`` published index versions."""
        root = Path(self.job.publish_dir)
        for folder in root.glob("weights/v*"):
            if int(folder.name[1:]) <= current:
                shutil.rmtree(folder, ignore_errors=True)
        for folder in root.glob("index-v*"):
            if int(folder.name[len("index-v"):]) <= current - keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _broadcast_version(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        t = torch.tensor([self.negatives.version], dtype=torch.long)
        dist.broadcast(t, src=0)
        version = int(t.item())
        if version != self.negatives.version:
            self.negatives.load(version, str(Path(self.job.publish_dir) / f"index-v{version:04d}"))

    def on_train_start(self, state, model) -> None:
        if self._rank() == 0:
            self._start_process()
            if self.negatives.version < 0:  # a fresh run: the first index comes from the warm-start model
                self._request(state.step)
                self._receive(block=True, step=state.step)
            elif self.mode == "async":  # resumed: refresh with the restored weights, train on the restored ranking
                self._request(state.step)
        self._broadcast_version()

    def on_step_end(self, state, model, metrics) -> None:
        if self._rank() == 0:
            if self.mode == "sync":
                if state.step % self.refresh_every == 0 and state.step < state.total_steps:
                    self._request(state.step)
                    self._receive(block=True, step=state.step)
            else:
                self._receive(block=False, step=state.step)
                if state.step % self.refresh_every == 0:
                    self.pending = True
                if self.pending and not self.busy and state.step < state.total_steps:
                    self._request(state.step)
        self._broadcast_version()
        metrics["ance_version"] = self.negatives.version

    def close(self) -> None:
        if self.process is not None:
            if self.process.is_alive() and not self.busy:  # idle: let it finish cleanly
                self.requests.put(None)
                self.process.join(timeout=60)
            if self.process.is_alive():  # mid-encode: an index published after training would never be used
                self.process.terminate()
                self.process.join()
            for channel in (self.requests, self.results):
                channel.close()
                channel.cancel_join_thread()
            self.requests = self.results = None
        self.process = None

    def on_train_end(self, state, model) -> None:
        self.close()
