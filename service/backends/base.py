"""The InferenceBackend protocol.

Calls are blocking and made from the batcher's worker thread: the beam search drives the
decoder level by level, and keeping that loop off the event loop keeps request handling
responsive. The Triton backend still talks async gRPC, on the event loop, and the worker
waits for the result.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendUnavailable(Exception):
    """The model server cannot be reached or did not answer in time (the gateway answers 503)."""


class InferenceBackend(Protocol):
    name: str
    cache_entries: int  # decoder key/value cache entries per position (2 x layers)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, S) int64 ids and mask -> (B, S, D) float32 encoder states."""
        ...

    def decode_step(
        self,
        memory: np.ndarray,
        mask: np.ndarray,
        prefix: np.ndarray,
        level: np.ndarray,
        past: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """docs/bundle.md's decoder step -> (logits (B, W, K), present cache)."""
        ...

    async def check(self) -> None:
        """Raise BackendUnavailable unless the backend can serve now (readiness)."""
        ...

    async def close(self) -> None: ...
