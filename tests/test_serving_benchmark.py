"""The serving benchmark's accounting: per-stage shares and CPU per request, which SREs read
to plan capacity, must add up to what was measured."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.serving import (
    STAGES,
    cpu_per_request,
    hf_table_rows,
    process_cpu_s,
    stage_table,
)


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


def test_hf_table_puts_each_hf_form_against_ours():
    row = {"batch": 32, "queries": 64, "hf_same": 64, "hf_cache_same": 63}
    row |= {"ours_search": 20.0, "hf_search": 200.0, "hf_cache_search": 120.0}
    row |= {"ours_total": 50.0, "hf_total": 300.0, "hf_cache_total": 225.0}
    assert hf_table_rows([row]) == [
        [32, 64, "64/64 / 63/64", "20.0", "200.0 / 120.0", "10.0× / 6.0×", "50.0",
         "300.0 / 225.0", "6.0× / 4.5×"]
    ]  # fmt: skip
