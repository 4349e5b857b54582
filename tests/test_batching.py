"""Which queued queries form the next batch (`QueryBatcher._take`)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

from service.batching import QueryBatcher, _Job
from service.metrics import Metrics


def batcher(max_batch: int = 32, length_window: int = 0, queue_limit: int = 1024) -> QueryBatcher:
    return QueryBatcher(
        backend=None,  # type: ignore[arg-type]  # _take never touches the model
        trie=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        pad_id=0,
        max_batch=max_batch,
        queue_limit=queue_limit,
        length_window=length_window,
    )


def queue(b: QueryBatcher, lengths: list[int], beams: list[int] | None = None) -> list[_Job]:
    loop = asyncio.new_event_loop()
    beams = beams or [10] * len(lengths)
    jobs = [
        _Job(np.arange(n), beam, loop.create_future())
        for n, beam in zip(lengths, beams, strict=True)
    ]
    b._queue.extend(jobs)
    return jobs


def test_batches_group_similar_lengths_and_always_serve_the_oldest():
    b = batcher(max_batch=3, length_window=32)
    jobs = queue(b, [4, 12, 5, 11, 4, 13, 6, 12])
    first = b._take()
    assert first == [jobs[0], jobs[2], jobs[4]]  # the oldest (4) and the two other 4-5s
    second = b._take()
    assert second == [jobs[1], jobs[3], jobs[7]]  # the oldest left (12), then 11 and 12
    assert b._take() == [jobs[5], jobs[6]]  # what is left, oldest first
    assert b._take() == []
    padded = sum(len(batch) * max(len(j.ids) for j in batch) for batch in (first, second))
    fifo = 3 * 12 + 3 * 12  # first come: [4, 12, 5] and [11, 4, 13] would pad to 12 and 13
    assert padded < fifo


def test_ties_prefer_the_shorter_then_the_older():
    b = batcher(max_batch=3, length_window=32)
    jobs = queue(b, [6, 7, 5, 7, 5])
    assert b._take() == [jobs[0], jobs[2], jobs[4]]  # 5s before 7s: they widen nothing


def test_window_zero_or_no_larger_than_the_batch_is_first_come_first_served():
    for window in (0, 3):
        b = batcher(max_batch=3, length_window=window)
        jobs = queue(b, [4, 12, 5, 11, 4, 13])
        assert b._take() == jobs[:3]
        assert b._take() == jobs[3:]


def test_only_the_window_is_searched():
    b = batcher(max_batch=2, length_window=3)
    jobs = queue(b, [4, 12, 11, 4])
    assert b._take() == [jobs[0], jobs[2]]  # the 4 at position 3 is beyond the window
    assert b._take() == [jobs[1], jobs[3]]


@pytest.mark.parametrize("window", [0, 32])
def test_other_beam_widths_and_cancelled_jobs_wait_or_go(window):
    b = batcher(max_batch=2, length_window=window)
    jobs = queue(b, [4, 4, 4, 4, 4], beams=[10, 5, 10, 10, 5])
    jobs[2].future.cancel()  # a timed-out request
    assert b._take() == [jobs[0], jobs[3]]
    assert list(b._queue) == [jobs[1], jobs[4]]  # queue order kept, the cancelled one gone
    assert b._take() == [jobs[1], jobs[4]]


@pytest.mark.parametrize("with_lone", [True, False])
def test_a_batch_that_runs_alone_goes_to_the_lone_model_and_side_by_side_batches_do_not(
    with_lone,
):
    import threading

    from service.batching import Beams

    main, lone = object(), object()
    used: list[object] = []
    release = threading.Event()
    b = QueryBatcher(
        backend=main,  # type: ignore[arg-type]  # _compute is replaced below
        trie=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        pad_id=0,
        max_batch=1,
        workers=2,
        lone=lone if with_lone else None,  # type: ignore[arg-type]
    )

    def compute(rows, beam, model):
        used.append(model)
        if len(used) == 1:  # the first batch holds its worker until the second has started
            assert release.wait(5)
        return [Beams(np.zeros((1, 2)), np.zeros(1), np.zeros(3)) for _ in rows]

    b._compute = compute  # type: ignore[method-assign]

    async def run():
        b.start()
        try:
            first = asyncio.ensure_future(b.search([np.arange(3)], 10))
            while not used:  # the first batch is running, alone
                await asyncio.sleep(0.001)
            second = asyncio.ensure_future(b.search([np.arange(4)], 10))
            while len(used) < 2:  # it runs beside the first on the other worker
                await asyncio.sleep(0.001)
            release.set()
            await asyncio.gather(first, second)
            await b.search([np.arange(2)], 10)  # alone again
            await b.search([np.arange(2), np.arange(5)], 10)  # two batches of one: queued
        finally:
            await b.stop()

    asyncio.run(run())
    alone = lone if with_lone else main
    assert used[:3] == [alone, main, alone]
    # the fourth call's first batch left a job queued, so it did not run alone (its second
    # may or may not find the first finished)
    assert used[3] is main
    lone_batches = b.metrics.registry.get_sample_value("sidserve_lone_batches_total")
    assert lone_batches == sum(m is lone for m in used) >= (2 if with_lone else 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_worker_threads_run_below_the_event_loops_priority():
    import os
    import threading

    from service.batching import Beams

    seen: list[tuple[int, int]] = []
    b = QueryBatcher(
        backend=object(),  # type: ignore[arg-type]  # _compute is replaced below
        trie=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        pad_id=0,
        worker_nice=3,
    )

    def compute(rows, beam, model):
        seen.append((threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)))
        return [Beams(np.zeros((1, 2)), np.zeros(1), np.zeros(3)) for _ in rows]

    b._compute = compute  # type: ignore[method-assign]

    async def run() -> int:
        b.start()
        try:
            await b.search([np.arange(3)], 10)
            return os.getpriority(os.PRIO_PROCESS, 0)  # the event loop's thread
        finally:
            await b.stop()

    base = os.getpriority(os.PRIO_PROCESS, 0)
    loop_nice = asyncio.run(run())
    [(worker, nice)] = seen
    assert worker != threading.get_native_id()
    assert loop_nice == base and nice == min(19, base + 3)


def test_lower_thread_priority_does_nothing_for_zero():
    from service.batching import lower_thread_priority

    assert lower_thread_priority(0) is None


def test_a_batch_that_would_overflow_the_queue_is_refused_whole():
    """queue_limit counts the queries a request adds, not only those already waiting."""
    from service.batching import Overloaded

    async def main() -> None:
        b = batcher(queue_limit=4)  # refused before the model would be touched
        queue(b, [3, 3])  # two queries waiting
        rows = [np.arange(3)] * 3  # 2 + 3 > 4
        with pytest.raises(Overloaded, match="limit 4"):  # at once: no batcher runs here
            await asyncio.wait_for(b.search(rows, beam=10), timeout=5)
        assert b.depth == 2  # nothing of the refused request was queued

    asyncio.run(main())
