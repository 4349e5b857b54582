"""In-process ONNX Runtime: the embedded default (the bundle's graphs, `OnnxIndexer`, plus the
readiness and lifecycle calls of the backend protocol)."""

from __future__ import annotations

import os

from service.bundle import Bundle
from service.onnx_model import OnnxIndexer


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers' cpusets set;
    where the OS has no affinity call, e.g. macOS, every CPU)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class EmbeddedBackend(OnnxIndexer):
    """`threads` intra-op threads per call; `lone` holds a second set of sessions with
    `lone_threads` (capped at the usable CPUs) for a query batch that runs alone, built only
    when that is more threads than `threads` gives.

    Why two sets: with batches running side by side one thread each uses the cores best, but a
    lone query (one client, a quiet minute) then leaves the other cores idle, and ONNX Runtime
    fixes a session's threads when it is created (docs/gateway.md § Inside)."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0, lone_threads: int = 1):
        super().__init__(bundle.graph_paths, threads)
        wide = min(lone_threads, usable_cpus())
        self.lone = OnnxIndexer(bundle.graph_paths, wide) if 0 < threads < wide else None

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
