"""The bundle's two graphs in ONNX Runtime, in process (the embedded backend's engine, also
used by `sidserve export` to assign the item table and check parity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def make_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session; threads=0 lets ONNX Runtime use one thread per physical core."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxIndexer:
    """Encoder and decoder-step sessions with the I/O of docs/bundle.md."""

    def __init__(self, encoder: str | Path, decoder: str | Path, threads: int = 0):
        self.encoder = make_session(encoder, threads)
        self.decoder = make_session(decoder, threads)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.encoder.run(["memory"], {"input_ids": ids, "attention_mask": mask})[0]

    def decode_step(
        self, memory: np.ndarray, mask: np.ndarray, prefix: np.ndarray, level: np.ndarray
    ) -> np.ndarray:
        feeds = {"memory": memory, "attention_mask": mask, "prefix": prefix, "level": level}
        return self.decoder.run(["logits"], feeds)[0]


def greedy_codes(model: OnnxIndexer, ids: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """(B, levels) codes: at each level the best code given the text's own prefix (how items
    get their SIDs; no trie, an item may open a new path)."""
    memory = model.encode(ids, mask)
    prefix = np.zeros((len(ids), 1, levels), dtype=np.int64)
    for level in range(levels):
        logits = model.decode_step(memory, mask, prefix, np.full(len(ids), level, np.int64))
        prefix[:, 0, level] = logits[:, 0].argmax(-1)
    return prefix[:, 0]
