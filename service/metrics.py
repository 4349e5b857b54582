"""Prometheus metrics of one gateway, in its own registry (tests build several apps)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("queue", "tokenise", "encode", "beam_search", "store", "scoring")
# every `kind` of an error reply (service/errors.py; docs/gateway.md § Errors)
ERROR_KINDS = (
    "invalid_request",
    "payload_too_large",
    "not_found",
    "method_not_allowed",
    "http_error",
    "store_unavailable",
    "backend_unavailable",
    "overloaded",
    "internal",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "sidserve_request_seconds",
            "End-to-end handling time per endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "sidserve_requests",
            "Requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "sidserve_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sidserve_batch_size", "Queries per decoder batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "sidserve_queue_depth", "Queries waiting for the batcher", registry=r
        )
        self.lone_batches = Counter(
            "sidserve_lone_batches",
            "Query batches that ran alone, on the sessions with more intra-op threads",
            registry=r,
        )
        self.errors = Counter("sidserve_errors", "Errors by kind", ["kind"], registry=r)
        self.model = Info("sidserve_model", "The served model", registry=r)
        # Every stage and error kind is exported from the start, at 0: a series that first
        # appears at 1 is invisible to rate() and increase(), so an alert on the first
        # internal error (k8s/monitoring/) would otherwise never fire.
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for stage in STAGES:
            self.stage_seconds.labels(stage)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)
