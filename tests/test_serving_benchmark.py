"""The serving benchmark's accounting: per-stage shares and CPU per request, which SREs read
to plan capacity, must add up to what was measured."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.serving import STAGES, cpu_per_request, process_cpu_s, stage_table


def test_stage_table_divides_by_requests_and_puts_the_unaccounted_time_last():
    # 4 requests spent 0.2 s in the gateway; the stages account for 0.15 s of it
    run = {"/v1/query/sids": (0.2, 4.0), "encode": (0.05, 1.0), "beam_search": (0.1, 1.0)}
    idle = {"/v1/query/sids": (0.0, 0.0)}
    rows = stage_table(run, idle)
    assert [r[0] for r in rows] == [*STAGES, "HTTP, validation, serialisation (rest)"]
    by_stage = {r[0]: r[1:] for r in rows}
    assert by_stage["encode"][:2] == ["12.50", "25%"]
    assert by_stage["beam_search"][:2] == ["25.00", "50%"]
    assert by_stage["store"][:2] == ["0.00", "0%"]
    assert by_stage["HTTP, validation, serialisation (rest)"][:2] == ["12.50", "25%"]
    assert by_stage["encode"][2:] == ["0.00", "0%"]  # a run without requests divides by 1


def test_cpu_per_request_counts_the_warm_up_like_the_load_generator():
    run = {"count": 90, "warmup": {"count": 10}, "loadgen_cpu_ms_per_request": 1.5}
    assert cpu_per_request(run, gateway_s=2.0, redis_s=0.1) == pytest.approx(
        {"gateway": 20.0, "redis": 1.0, "loadgen": 1.5}
    )


def test_process_cpu_seconds_grow_with_work():
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.15
