"""In-process ONNX Runtime: the embedded default (the bundle's graphs, `OnnxIndexer`, plus the
readiness and lifecycle calls of the backend protocol)."""

from __future__ import annotations

from service.bundle import Bundle
from service.onnx_model import OnnxIndexer


class EmbeddedBackend(OnnxIndexer):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0):
        super().__init__(bundle.graph_paths, threads)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
