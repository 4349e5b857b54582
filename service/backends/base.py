"""The InferenceBackend protocol.

Calls are blocking and made from the batcher's worker thread: the beam search drives the
decoder level by level, and keeping that loop off the event loop keeps request handling
responsive. The Triton backend still talks async gRPC, on the event loop, and the worker
waits for the result.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.query_beams import Decoder


class BackendUnavailable(Exception):
    """The model server cannot be reached or did not answer in time (the gateway answers 503)."""


class Model(Decoder, Protocol):
    """The encoder and the two decoder graphs of docs/bundle.md (`Decoder`)."""

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, S) int64 ids and mask -> (B, S, D) float32 encoder states."""
        ...


class InferenceBackend(Model, Protocol):
    """The graphs, plus readiness and, where the backend has them, the sessions for a query
    batch that runs alone (`lone`: the same graphs on more intra-op threads)."""

    name: str
    lone: Model | None

    async def check(self) -> None:
        """Raise BackendUnavailable unless the backend can serve now (readiness)."""
        ...

    async def close(self) -> None: ...
