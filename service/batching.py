"""Micro-batching of queries: one owner of the queue (the text-embeddings-inference design).

Requests put one job per query on the queue and await its future. A single owner task waits
for a free worker, takes the oldest queued job and up to `max_batch - 1` others with its beam
width, pads them into one batch and hands it to the worker thread (encoder + beam search).
With a `length_window` above `max_batch` (off by default) it prefers, among the first
`length_window` such jobs, those closest to the oldest one's token length: every row of a batch
is padded to its longest, and in first-come batches of 8 dev queries a third of the tokens are
padding. While workers are busy, new jobs queue up and form the next batch, so batches grow
with load by themselves; `max_wait_s` optionally holds a lone job back for company. With
several workers (each running ONNX Runtime single-threaded by default) batches run side by
side: small graphs use cores better that way than with intra-op threads; on Linux the worker
threads run `worker_nice` steps below the event loop's priority. A batch that runs
alone (no other batch in flight, no job left queued) goes to the `lone` model instead, when
there is one: the same graphs on more intra-op threads, so a lone query does not leave the
other cores idle. Queue depth, batch sizes and lone batches go to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from service.backends.base import InferenceBackend, Model
from service.metrics import Metrics
from service.onnx_model import dense_vectors
from service.query_beams import beams_for_memory
from service.tokenizer import pad_rows
from service.trie import CompactTrie

T = TypeVar("T")
log = logging.getLogger("sidserve.batching")


def lower_thread_priority(increment: int) -> int | None:
    """Raise the calling thread's niceness by `increment` (capped at 19); returns the new
    niceness, or None when nothing changed: `increment` 0, an OS where the niceness belongs to
    the whole process rather than to a thread (Linux alone gives each thread its own), or a
    refusal (logged)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux, 0 = the calling thread
        os.setpriority(os.PRIO_PROCESS, 0, min(19, current + increment))
        return os.getpriority(os.PRIO_PROCESS, 0)
    except OSError as exc:
        log.warning("could not lower an inference worker's priority by %d: %s", increment, exc)
        return None


class Beams(NamedTuple):
    """One query's search result."""

    paths: np.ndarray  # (k, L) best first
    log_probs: np.ndarray  # (k,)
    vector: np.ndarray  # (D,) the query's unit dense vector (from the same encoder states)


class Overloaded(Exception):
    """The queue is full: the gateway answers 503 with Retry-After."""


@dataclass
class _Job:
    ids: np.ndarray  # (S,) without padding
    beam: int
    future: asyncio.Future[Beams]
    enqueued: float = field(default_factory=time.perf_counter)


class QueryBatcher:
    def __init__(
        self,
        backend: InferenceBackend,
        trie: CompactTrie,
        metrics: Metrics,
        pad_id: int,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        queue_limit: int = 1024,
        workers: int = 1,
        length_window: int = 0,
        lone: Model | None = None,
        worker_nice: int = 0,
    ):
        self.backend, self.trie, self.metrics, self.pad_id = backend, trie, metrics, pad_id
        self.lone = lone
        self.max_batch, self.max_wait_s, self.queue_limit = max_batch, max_wait_s, queue_limit
        self.length_window = length_window
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self.workers = workers
        # the worker threads run at a lower priority than the event loop (`worker_nice`), so the
        # loop, which hands them their batches and answers the requests, is not kept waiting
        self._executor = ThreadPoolExecutor(
            workers,
            thread_name_prefix="sidserve-infer",
            initializer=lower_thread_priority,
            initargs=(worker_nice,),
        )
        self._owner: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.workers)
        self._owner = asyncio.get_running_loop().create_task(self._own(), name="batcher")

    async def stop(self) -> None:
        if self._owner is not None:
            self._owner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._owner
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(Overloaded("gateway shutting down"))
        self._queue.clear()
        if self._running:  # batches in flight finish and answer their requests
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def search(self, rows: list[np.ndarray], beam: int) -> list[Beams]:
        """Top-`beam` trie-constrained SIDs of each tokenised query (ids without padding)."""
        if len(self._queue) + len(rows) > self.queue_limit:
            raise Overloaded(f"{len(self._queue)} queries queued (limit {self.queue_limit})")
        loop = asyncio.get_running_loop()
        jobs = [_Job(r, beam, loop.create_future()) for r in rows]
        self._queue.extend(jobs)
        self.metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            for j in jobs:  # a timed-out request leaves no work behind
                j.future.cancel()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other model work (item encoding) on the same worker thread, in turn."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _take(self) -> list[_Job]:
        """The next batch: the oldest live job and, of the live jobs with its beam width, the
        first `max_batch - 1` in queue order, or, with a `length_window` larger than the batch,
        the `max_batch - 1` among the first `length_window` closest to its token length (ties:
        the shorter, then the older). The oldest job always goes, so each batch serves the
        longest-waiting query and none waits for more batches than there are jobs ahead of it."""
        live = [j for j in self._queue if not j.future.done()]  # drops timed-out requests
        if not live:
            self._queue.clear()
            return []
        beam = live[0].beam
        same = [j for j in live if j.beam == beam]
        window = same[: max(self.length_window, self.max_batch)]
        if len(window) <= self.max_batch:
            taken = window
        else:
            width = len(window[0].ids)

            def closeness(k: int) -> tuple[int, bool, int]:
                gap = len(window[k].ids) - width
                return abs(gap), gap > 0, k

            rest = sorted(range(1, len(window)), key=closeness)[: self.max_batch - 1]
            taken = [window[k] for k in sorted([0, *rest])]
        chosen = {id(j) for j in taken}
        self._queue = deque(j for j in live if id(j) not in chosen)
        return taken

    async def _own(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()  # a free worker; meanwhile the queue fills up
            if self.max_wait_s > 0 and self._queue and len(self._queue) < self.max_batch:
                wait = self._queue[0].enqueued + self.max_wait_s - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            jobs = self._take()
            self.metrics.queue_depth.set(len(self._queue))
            if not jobs:
                self._slots.release()
                continue
            now = time.perf_counter()
            for j in jobs:
                self.metrics.stage_seconds.labels("queue").observe(now - j.enqueued)
            self.metrics.batch_size.observe(len(jobs))
            model: Model = self.backend
            if self.lone is not None and not self._running and not self._queue:
                model = self.lone
                self.metrics.lone_batches.inc()
            task = loop.create_task(self._dispatch(jobs, model))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, jobs: list[_Job], model: Model) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._compute, [j.ids for j in jobs], jobs[0].beam, model
            )
        except Exception as exc:  # handed to the waiting requests, mapped there
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        finally:
            self._slots.release()
        for j, r in zip(jobs, results, strict=True):
            if not j.future.done():
                j.future.set_result(r)

    def _compute(self, rows: list[np.ndarray], beam: int, model: Model) -> list[Beams]:
        ids, mask = pad_rows(rows, self.pad_id)
        with self.metrics.stage("encode"):
            memory = model.encode(ids, mask)
        with self.metrics.stage("beam_search"):
            result = beams_for_memory(model, memory, mask, self.trie, beam)
        vectors = dense_vectors(memory, mask)
        return [Beams(paths, logp, v) for (paths, logp), v in zip(result, vectors, strict=True)]
