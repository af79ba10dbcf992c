"""Batching of concurrent encode requests: a short queue that forms batches for the query encoder.

Every request that needs vectors (``/search``, ``/multihop``, ``/answer`` with retrieval,
``/encode``) calls :meth:`EncodeBatcher.encode`. The texts wait in a queue; one worker takes what is
queued, waits up to ``wait_ms`` for more while the batch is below ``max_batch`` texts, then encodes
the whole batch in one call of the encoder (in a worker thread, so the event loop keeps accepting
requests) and hands each request its rows. Under load a batch forms while the previous one is
being encoded, so the encoder runs full batches, as the in-process batch encoder does; alone, a
request waits at most ``wait_ms``.

A request may also ask for a search (:meth:`EncodeBatcher.encode_search`: ``/search``, ``/answer``):
its vector is then searched in the index it names, in the same worker-thread call, with one index
search per (index, depth) of the batch rather than one per request (a batch of queries is one matrix
product). Each request gets the rows of its own query, the same results as a search of that query alone.

With ``workers`` > 1 several batches are encoded at once, each by its own worker thread with
``threads`` torch threads (torch releases the GIL inside each operation). A batch formed while
other workers are free too is shared among them (:func:`split_batch`, parts of at least
``min_split`` texts): under a closed loop of users every request arrives right after the previous
answers, so without the split one worker would take them all while the other waits. Once the
workers drift apart, one encodes while the other's requests go out and come back. On 2 cores
(BENCHMARKS.md, Serving) 2 single-thread workers answer more queries/s at 8 and 32 users than one
worker of 2 threads; the service's default (``ServeConfig.encode_workers`` = 0) picks 2 for torch.

Requests for different encoders or maximum lengths never share a batch (an index swap may change
the encoder mid-queue). A failure of the encoder fails the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class _Pending:
    encoder: Any
    texts: list[str]
    max_length: int | None
    precision: str
    future: asyncio.Future
    index: Any = None  # search the vectors in this index (encode_search) ...
    depth: int = 0  # ... to this depth
    key: tuple = field(init=False)

    def __post_init__(self):
        self.key = (id(self.encoder), self.max_length, self.precision)


class EncodeBatcher:
    """See the module docstring. Start it inside the event loop (:meth:`start`), :meth:`close` at shutdown."""

    def __init__(self, max_batch: int = 64, wait_ms: float = 2.0, workers: int = 1, threads: int | None = None,
                 min_split: int = 4):
        self.max_batch = max_batch
        self.min_split = min_split
        self.wait = wait_ms / 1000
        self.workers = workers
        self.threads = threads
        self.batches = 0
        self.texts = 0
        self.seconds = 0.0  # wall time spent in batches (encoding and searching), summed over the workers
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reprlab-encode",
                                        initializer=_set_threads, initargs=(threads,))
        self._lock = threading.Lock()  # the counters (workers, and blocking callers, update them)

    def worker_threads(self) -> int:
        """Torch threads of each worker: the set number, else torch's own."""
        if self.threads is not None:
            return self.threads
        import torch

        return torch.get_num_threads()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.workers)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._pool.shutdown(wait=True)

    async def encode(self, encoder, texts: Sequence[str], max_length: int | None = None,
                     precision: str = "fp32") -> np.ndarray:
        """Vectors of ``texts`` (N, d) float32, encoded in a batch with whatever else is queued."""
        if self._queue is None:  # no running worker (e.g. called outside the app's lifespan): encode alone
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._encode_all, encoder, list(texts), max_length, precision)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(encoder, list(texts), max_length, precision, future))
        return await future

    async def encode_search(self, encoder, text: str, index, depth: int, max_length: int | None = None,
                            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector (d,), scores (1, depth), ids (1, depth)) of ``text``: encoded in a batch with whatever else is
        queued, and searched in ``index`` with the other queries of the batch for the same index and depth."""
        if self._queue is None:  # no running worker: encode and search alone
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._encode_search_alone, encoder, text, index, depth, max_length, precision)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(encoder, [text], max_length, precision, future, index, depth))
        return await future

    def _encode_search_alone(self, encoder, text, index, depth, max_length, precision):
        vectors = self._encode_all(encoder, [text], max_length, precision)  # (1, d)
        scores, ids = index.search(vectors, depth)  # (1, depth), (1, depth)
        return vectors[0], scores, ids

    def _encode_all(self, encoder, texts: list[str], max_length: int | None, precision: str) -> np.ndarray:
        with self._lock:
            self.batches += 1
            self.texts += len(texts)
        return encoder.encode(texts, batch_size=self.max_batch, max_length=max_length, show_progress=False,
                              precision=precision)

    async def _collect(self) -> list[_Pending]:
        first = await self._queue.get()
        batch, size = [first], len(first.texts)
        deadline = asyncio.get_running_loop().time() + self.wait
        while size < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _run(self) -> None:
        """Form a batch whenever a worker is free (what queued while all were busy, and up to ``wait`` more);
        when other workers are free too, the batch is shared among them (parts of >= ``min_split`` texts)."""
        while True:
            await self._free.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._free.release()
                raise
            parts = [batch]
            while not self._free.locked() and len(parts) < self.workers:
                split = split_batch(batch, len(parts) + 1, self.min_split)
                if len(split) == len(parts):
                    break
                await self._free.acquire()  # free, so this does not wait
                parts = split
            for part in parts:
                task = asyncio.get_running_loop().create_task(self._answer(part))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _answer(self, batch: list[_Pending]) -> None:
        """Encode (and search) ``batch`` on one worker, then hand each request its result."""
        loop = asyncio.get_running_loop()
        try:
            groups: dict[tuple, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for items in groups.values():
                try:
                    results = await loop.run_in_executor(self._pool, self._process, items)
                except Exception as exc:  # noqa: BLE001 - handed to the requests of this batch
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(items, results):
                    if not item.future.done():  # a cancelled request (client gone) takes nothing
                        item.future.set_result(result)
        finally:
            self._free.release()

    def _process(self, items: list[_Pending]) -> list:
        """Each item's result: its vectors' rows, or (vector, scores, ids) for a search (runs in the worker thread)."""
        start = time.perf_counter()
        try:
            return self._process_batch(items)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - start

    def _process_batch(self, items: list[_Pending]) -> list:
        vectors = self._encode_all(items[0].encoder, [t for item in items for t in item.texts], items[0].max_length,
                                   items[0].precision)  # (texts of the batch, d)
        starts = np.cumsum([0] + [len(item.texts) for item in items])
        results = [vectors[a:b] for a, b in zip(starts[:-1], starts[1:])]
        searches: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            if item.index is not None:
                searches.setdefault((id(item.index), item.depth), []).append(i)
        for positions in searches.values():
            first = items[positions[0]]
            rows = starts[positions]  # a search request has one text: its row
            scores, ids = first.index.search(vectors[rows], first.depth)  # (n, depth), (n, depth)
            for j, i in enumerate(positions):
                results[i] = (vectors[rows[j]], scores[j:j + 1], ids[j:j + 1])
        return results


def _set_threads(threads: int | None) -> None:
    """A worker's torch intra-op threads (``None``: torch's default): set once in each worker thread."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class BatchedEncoder:
    """An encoder for library code that runs in a worker thread (MDR's beam search): its ``encode``
    goes through the batcher on the event loop ``loop`` and blocks the calling thread until done."""

    def __init__(self, batcher: EncodeBatcher, encoder, loop: asyncio.AbstractEventLoop):
        self.batcher, self.encoder, self.loop = batcher, encoder, loop
        self.tokenizer = getattr(encoder, "tokenizer", None)

    def encode(self, texts, batch_size: int = 64, max_length: int | None = None, show_progress=None, **_) -> np.ndarray:
        future = asyncio.run_coroutine_threadsafe(self.batcher.encode(self.encoder, texts, max_length), self.loop)
        return future.result()


def split_batch(batch: list[_Pending], parts: int, min_texts: int) -> list[list[_Pending]]:
    """``batch`` cut at request boundaries into at most ``parts`` runs of about equal text counts, each of at
    least ``min_texts`` texts (fewer parts when there are too few texts); the requests keep their order."""
    total = sum(len(item.texts) for item in batch)
    parts = max(1, min(parts, len(batch), total // max(1, min_texts)))
    out: list[list[_Pending]] = []
    current: list[_Pending] = []
    done = 0  # texts in the finished parts and in current
    for i, item in enumerate(batch):
        current.append(item)
        done += len(item.texts)
        left = len(batch) - i - 1
        # close the part once it reaches its share of the texts, keeping a request for every later part
        if len(out) < parts - 1 and done >= total * (len(out) + 1) / parts and left >= parts - len(out) - 1:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out
