"""In-process ONNX Runtime: the embedded default."""

from __future__ import annotations

import numpy as np

from service.bundle import Bundle
from service.onnx_model import OnnxIndexer


class EmbeddedBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0):
        self.model = OnnxIndexer(bundle.encoder_path, bundle.decoder_path, threads)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.model.encode(ids, mask)

    def decode_step(
        self, memory: np.ndarray, mask: np.ndarray, prefix: np.ndarray, level: np.ndarray
    ) -> np.ndarray:
        return self.model.decode_step(memory, mask, prefix, level)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
