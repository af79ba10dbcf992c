"""ANCE: dense-retrieval training with negatives from an asynchronously refreshed ANN index.

Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", ICLR 2021 (microsoft/ANCE). Negatives are sampled from the top ``top_k`` (200 in the
paper) of an ANN index of the *whole corpus* encoded by a recent checkpoint of the model being
trained, so they stay hard as the model improves. The index is rebuilt asynchronously: while the
trainer keeps stepping, a refresher encodes the corpus with the newest checkpoint and publishes a
new index version; the trainer switches to it at its next step.

How reprlab runs it (no second job started by hand, no folder polled with sleep):

* The trainer starts the refresher itself: a child process (rank 0 under DDP) that waits on a
  request queue. Every ``refresh_every`` steps the trainer saves its weights and sends a request;
  if a refresh is still running, the request is sent as soon as it finishes, with the newest weights.
* The refresher encodes the corpus, builds a FAISS index, retrieves ``top_k`` documents for every
  training query, evaluates the dev queries, and publishes ``ance/index-vNNNN/`` atomically (the
  folder appears complete or not at all), then reports on a result queue.
* The trainer takes finished versions from the result queue without blocking and switches to the
  newest; under DDP rank 0 broadcasts the version so every rank switches at the same step.
* Each refresh is logged to ``ance_refresh.jsonl``: version, the step of the weights it used, the
  step at which the trainer switched (staleness = the difference), encode time, dev metrics.
* The current version is part of the checkpoint, so ``resume`` restores step, optimizer and index.

Losses: ``softmax`` (NLL over in-batch positives + ANCE negatives, as DPR) or ``pairwise``
(the paper's NLL of the positive against each negative).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from reprlab.errors import ConfigError, ReprlabError
from reprlab.io import atomic_dir, atomic_write_json
from reprlab.retrieval.dual_encoder import DualEncoder
from reprlab.retrieval.losses import contrastive_loss, pairwise_loss
from reprlab.retrieval.pairs import DocKeys, PairCollate, PairExample, dev_queries, model_dir
from reprlab.text.beir import doc_text, load_beir
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (
    RecipeConfig,
    RecipeResult,
    check,
    check_choice,
    finished,
    loop,
    option,
    read_metrics,
    recipe_config,
    register,
)

logger = logging.getLogger("reprlab")

LOSSES = ("softmax", "pairwise")


@recipe_config
class AnceConfig(RecipeConfig):
    output_dir: str = option(help="run folder (checkpoints, index versions; the model in OUT/model)", flag="--out")
    data: str = option(help="BEIR folder: the corpus that is indexed, and the queries + qrels/<split>.tsv trained on")
    split: str = option("train", help="qrels split trained on")
    model: str = option("minilm", help="warm start: a model folder (e.g. a DPR run's model) or 'minilm'")
    refresh_every: int = option(50, help="optimizer steps between refresh requests")
    top_k: int = option(200, help="ANN depth negatives are sampled from")
    skip_top: int = option(0, help="top ranks never used as negatives (unjudged positives hide there)")
    num_negatives: int = option(1, help="ANCE negatives per query per step")
    loss: str = option("softmax", choices=LOSSES, help="softmax: in-batch + ANCE negatives; pairwise: the paper's")
    scale: float = option(20.0, help="1 / temperature over cosine similarities")
    query_max_length: int = option(64, help="query tokens")
    passage_max_length: int = option(256, help="passage tokens")
    encode_batch_size: int = option(64, help="texts per batch when the refresher encodes the corpus")
    refresher_threads: int = option(1, help="torch threads of the refresher process")
    dev_fraction: float = option(0.1, help="share of the training queries held out and scored at each refresh")
    dev_queries: Sequence[str] | None = option(None, cli=False, help="explicit dev query ids (instead of the slice)")
    train: TrainConfig = loop(epochs=3.0, batch_size=32, lr=2e-5)

    def __post_init__(self):
        check_choice(self.loss, LOSSES, "loss")
        check(self.num_negatives >= 1, "num_negatives", f"ANCE needs at least 1, got {self.num_negatives}")
        check(self.skip_top >= 0, "skip_top", f"must be >= 0, got {self.skip_top}")
        check(self.skip_top + self.num_negatives <= self.top_k, "top_k",
              f"{self.top_k} leaves too few candidates after skip_top {self.skip_top}")
        check(self.refresh_every >= 1, "refresh_every", f"must be at least 1, got {self.refresh_every}")
        check(self.scale > 0, "scale", f"must be positive, got {self.scale}")
        check(0.0 <= self.dev_fraction < 1.0, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")
        check(self.encode_batch_size >= 1, "encode_batch_size", f"must be at least 1, got {self.encode_batch_size}")
        check(self.refresher_threads >= 1, "refresher_threads", f"must be at least 1, got {self.refresher_threads}")


@dataclass
class AnceResult(RecipeResult):
    versions: int = 0
    refresh_log: str = ""

    def summary(self) -> str:
        return f"{self.versions} index versions ({self.refresh_log}); " + super().summary()


# ----------------------------------------------------------------------------- the refresher process


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


def _refresher_main(job: RefreshJob, requests: mp.Queue, results: mp.Queue) -> None:
    """Child process: wait for a checkpoint, encode the corpus, publish an index version, repeat."""
    torch.set_num_threads(job.threads)
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.metrics import evaluate, to_run

    try:
        data = load_beir(job.data, split=job.split)
        queries = [data.queries[q] for q in job.query_ids]
        dev = [data.queries[q] for q in job.dev_ids]
        while True:
            request = requests.get()  # blocks until the trainer asks; None = stop
            if request is None:
                return
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
            folder = Path(job.publish_dir) / f"index-v{request['version']:04d}"
            with atomic_dir(folder) as tmp:
                retriever.index.save(tmp / "index")
                with open(tmp / "negatives.json", "w") as f:
                    top = {q: [d for d in row if d is not None] for q, row in zip(job.query_ids, ranked.tolist())}
                    json.dump(top, f)
                atomic_write_json(tmp / "meta.json", {
                    "version": request["version"], "checkpoint_step": request["step"],
                    "encode_seconds": round(encode_seconds, 2), "total_seconds": round(time.time() - t0, 2),
                    "dev": dev_metrics,
                })
            results.put({"version": request["version"], "path": str(folder), "checkpoint_step": request["step"],
                         "encode_seconds": encode_seconds, "total_seconds": time.time() - t0, "dev": dev_metrics})
    except BaseException as exc:  # report instead of dying silently; the trainer raises it
        results.put({"error": f"{type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------------- trainer side


class AnceNegatives:
    """The ANN ranking of the current index version, read by the collate function."""

    def __init__(self):
        self.version = -1
        self.path: str | None = None
        self.ranked: dict[str, list[str]] = {}

    def load(self, version: int, path: str) -> None:
        with open(Path(path) / "negatives.json") as f:
            self.ranked = json.load(f)
        self.version, self.path = version, path


class IndexRefresher:
    """Training callback that owns the refresher process and switches index versions.

    Rank 0 starts the child process; every rank follows the version rank 0 broadcasts.
    """

    def __init__(self, job: RefreshJob, negatives: AnceNegatives, model: DualEncoder, refresh_every: int):
        self.job, self.negatives, self.model, self.refresh_every = job, negatives, model, refresh_every
        self.process = None
        self.requests = self.results = None
        self.busy = False
        self.pending = False
        self.next_version = 0
        self.log_path = Path(job.publish_dir).parent / "ance_refresh.jsonl"
        self.switch_log: list[dict] = []

    # -- checkpointed state
    def state_dict(self) -> dict:
        return {"version": self.negatives.version, "path": self.negatives.path, "next_version": self.next_version}

    def load_state_dict(self, state: dict) -> None:
        if state.get("path"):
            self.negatives.load(state["version"], state["path"])
        self.next_version = state.get("next_version", self.negatives.version + 1)

    # -- process management
    def _rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

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
                break
            if "error" in msg:
                raise ReprlabError(f"the ANCE index refresher failed: {msg['error']}")
            self.busy = False
            newest = msg
        if newest is None:
            return
        self.negatives.load(newest["version"], newest["path"])
        self._clean_up(newest["version"])
        record = {"version": newest["version"], "checkpoint_step": newest["checkpoint_step"], "switched_at_step": step,
                  "staleness_steps": step - newest["checkpoint_step"],
                  "encode_seconds": round(newest["encode_seconds"], 2),
                  "refresh_seconds": round(newest["total_seconds"], 2), **{f"dev_{k}": round(v, 4)
                                                                           for k, v in newest["dev"].items()}}
        self.switch_log.append(record)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info("ANCE index v{version}: weights of step {checkpoint_step}, in use from step {switched_at_step} "
                    "(staleness {staleness_steps}), encode {encode_seconds}s".format(**record)
                    + (f", dev nDCG@10 {record['dev_ndcg_cut_10']:.4f}" if "dev_ndcg_cut_10" in record else ""))

    def _clean_up(self, current: int, keep: int = 2) -> None:
        """Delete consumed weights and all but the newest ``keep`` published index versions."""
        import shutil

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
            ctx = mp.get_context("spawn")
            self.requests, self.results = ctx.Queue(), ctx.Queue()
            self.process = ctx.Process(target=_refresher_main, args=(self.job, self.requests, self.results),
                                       daemon=True, name="ance-refresher")
            self.process.start()
            if self.negatives.version < 0:  # a fresh run: the first index comes from the warm-start model
                self._request(state.step)
                self._receive(block=True, step=state.step)
            else:  # resumed: refresh with the restored weights right away, train on the restored index
                self._request(state.step)
        self._broadcast_version()

    def on_step_end(self, state, model, metrics) -> None:
        if self._rank() == 0:
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


class AnceCollate:
    """Builds DPR batches whose negatives are sampled from the current ANN ranking of each query."""

    def __init__(self, base: PairCollate, negatives: AnceNegatives, keys: DocKeys, corpus, relevant_ids,
                 top_k: int, skip_top: int):
        self.base, self.negatives, self.keys, self.corpus = base, negatives, keys, corpus
        self.relevant_ids, self.top_k, self.skip_top = relevant_ids, top_k, skip_top

    def __call__(self, items: list[tuple[str, str, str]], rng: np.random.Generator) -> dict:
        pairs = []
        for qid, query, positive in items:
            ranked = self.negatives.ranked.get(qid)
            if ranked is None:
                raise ReprlabError(f"query {qid} is missing from ANCE index v{self.negatives.version}")
            relevant = self.relevant_ids[qid]
            pool = [d for d in ranked[self.skip_top: self.top_k] if d not in relevant]
            negatives = [(self.keys(d), doc_text(self.corpus[d])) for d in pool]
            pairs.append(PairExample(query, (self.keys(positive), doc_text(self.corpus[positive])), negatives,
                                     [self.keys(d) for d in relevant]))
        return self.base(pairs, rng)


def ance_loss(kind: str, scale: float):
    def loss_fn(model, batch):
        q, p = model(batch["queries"], batch["passages"])
        B = q.size(0)
        if kind == "pairwise":
            return pairwise_loss(q, p[:B], p[B:], scale=scale)
        return contrastive_loss(q, p[:B], p[B:], scale=scale, candidate_ids=batch["candidate_ids"],
                                query_positive_ids=batch["relevant"])

    return loss_fn


@register("train ance", AnceConfig, help="ANCE: negatives from an asynchronously refreshed ANN index")
def run_ance(config: AnceConfig, callbacks: Sequence = (), stop_after: int | None = None) -> AnceResult:
    """Train with ANCE negatives; the final model is saved to ``<output_dir>/model``."""
    data = load_beir(config.data, split=config.split)
    dev = set(config.dev_queries if config.dev_queries is not None else dev_queries(data, config.dev_fraction))
    train_queries = {q: t for q, t in data.judged_queries().items() if q not in dev}
    relevant = {q: {d for d, r in data.qrels[q].items() if r > 0 and d in data.corpus} for q in train_queries}
    items = [(q, train_queries[q], d) for q in train_queries for d in sorted(relevant[q])]
    if not items:
        raise ConfigError(f"{config.data}: split {config.split!r} has no judged training queries")
    model = DualEncoder.from_pretrained(config.model, shared=True)
    out = Path(config.output_dir)
    job = RefreshJob(
        data=str(config.data), split=config.split, query_ids=list(train_queries), dev_ids=sorted(dev),
        publish_dir=str(out / "ance"), top_k=config.top_k, batch_size=config.encode_batch_size,
        query_max_length=config.query_max_length, passage_max_length=config.passage_max_length,
        threads=config.refresher_threads,
    )
    negatives = AnceNegatives()
    refresher = IndexRefresher(job, negatives, model, config.refresh_every)
    base = PairCollate(model.query_encoder.tokenizer, config.num_negatives, config.query_max_length,
                       config.passage_max_length)
    collate = AnceCollate(base, negatives, DocKeys(), data.corpus, relevant, config.top_k, config.skip_top)
    logger.info(f"ANCE: {len(items)} (query, positive) pairs, {len(data.corpus)} documents indexed, "
                f"refresh every {config.refresh_every} steps, negatives from the top {config.top_k}")
    try:
        state = train(model, items, collate, ance_loss(config.loss, config.scale), config.loop_config("ance"),
                      callbacks=[refresher, *callbacks], stop_after=stop_after)
    finally:
        refresher.close()
    saved = model_dir(out) if finished(state) else None
    if saved is not None and state.rank == 0:
        model.save_pretrained(saved)
    return AnceResult(out, saved, state.step, read_metrics(out), negatives.version + 1, str(refresher.log_path))
