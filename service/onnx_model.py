"""The bundle's graphs in ONNX Runtime, in process (the embedded backend's engine, also
used by `sidserve export` to assign the item table and check parity)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.bundle import GRAPH_ROLES


def make_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session; threads=0 lets ONNX Runtime use one thread per physical core.

    Intra-op threads do not spin-wait for work: the encoder and decoder sessions each own a
    pool, and one pool's threads spinning after its call took the cores from the other's (item
    assignment at batch 64 on 2 cores: 294-317 items/s without spinning, 224-239 with).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxIndexer:
    """The bundle's encoder and two decoder graphs (docs/bundle.md) in ONNX Runtime sessions.

    `graphs` maps each role (`encoder`, `decoder_first`, `decoder_step`) to its file."""

    def __init__(self, graphs: Mapping[str, str | Path], threads: int = 0):
        missing = sorted(set(GRAPH_ROLES) - set(graphs))
        if missing:
            raise ValueError(f"graphs: no file for {', '.join(missing)}")
        self.encoder = make_session(graphs["encoder"], threads)
        self.decoder_first = make_session(graphs["decoder_first"], threads)
        self.decoder = make_session(graphs["decoder_step"], threads)
        past = next(i for i in self.decoder.get_inputs() if i.name == "past")
        self.cache_entries = int(past.shape[2])  # 2 x decoder layers (keys, values)
        self.hidden = int(past.shape[4])  # width of the encoder states

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.encoder.run(["memory"], {"input_ids": ids, "attention_mask": mask})[0]

    def decode_first(
        self, memory: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = {"memory": memory, "attention_mask": mask}
        logits, present, cross_kv = self.decoder_first.run(["logits", "present", "cross_kv"], feeds)
        return logits, present, cross_kv

    def decode_step(
        self,
        cross_kv: np.ndarray,
        mask: np.ndarray,
        prefix: np.ndarray,
        level: np.ndarray,
        past: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {
            "cross_kv": cross_kv,
            "attention_mask": mask,
            "prefix": prefix,
            "level": level,
            "past": past,
        }
        logits, present = self.decoder.run(["logits", "present"], feeds)
        return logits, present


def dense_vectors(memory: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, D) float32: each text's mean encoder state over its own tokens, L2-normalised, the
    indexer's dense representation (`SemanticIndexer.dense`). A row is averaged over its real
    tokens only, so a text gets the same vector alone and in any padded batch."""
    out = np.zeros((len(memory), memory.shape[-1]), dtype=np.float32)
    for i, keep in enumerate(np.asarray(mask, dtype=bool)):
        if keep.any():
            out[i] = memory[i][keep].mean(axis=0, dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def greedy_steps(
    model, ids: np.ndarray, mask: np.ndarray, levels: int, memory: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy decoding: at each level the best code given the text's own prefix (how items get
    their SIDs; no trie, an item may open a new path). Returns (codes (B, levels), the logits
    (B, K) of every level). `memory`: the encoder states of `ids`, when already computed."""
    if memory is None:
        memory = model.encode(ids, mask)
    prefix = np.zeros((len(ids), 1, levels), dtype=np.int64)
    logits, past, cross_kv = model.decode_first(memory, mask)
    steps = [logits[:, 0]]
    prefix[:, 0, 0] = logits[:, 0].argmax(-1)
    for level in range(1, levels):
        at = np.full(len(ids), level, np.int64)
        logits, past = model.decode_step(cross_kv, mask, prefix, at, past)
        steps.append(logits[:, 0])
        prefix[:, 0, level] = logits[:, 0].argmax(-1)
    return prefix[:, 0], steps


def codes_and_vectors(
    model, ids: np.ndarray, mask: np.ndarray, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(greedy codes (B, levels), dense vectors (B, D)) of item texts from one encoder pass."""
    memory = model.encode(ids, mask)
    return greedy_steps(model, ids, mask, levels, memory)[0], dense_vectors(memory, mask)
