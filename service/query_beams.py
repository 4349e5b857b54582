"""Queries -> top-K catalog SIDs: the beam search's row-wise steps mapped onto the decoder
graph's (text, beam) layout, so each level is one decoder call for the whole batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from service.beam_search import BeamResult, Step, beam_search
from service.trie import CompactTrie

# decode_step(memory, mask, prefix (B, W, L), level (B,)) -> logits (B, W, K)
DecodeStep = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def grid_step(decode_step: DecodeStep, memory: np.ndarray, mask: np.ndarray) -> Step:
    """Adapt the graph to the search: rows (R,) of query q with prefixes (R, L) become a
    (queries, W, L) grid, W = most live beams of any query; padded slots are computed and
    dropped."""

    def step(level: int, rows: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        queries, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.empty(len(rows), dtype=np.int64)
        slot[order] = np.arange(len(rows)) - starts[inverse[order]]
        grid = np.zeros((len(queries), int(counts.max()), prefix.shape[1]), dtype=np.int64)
        grid[inverse, slot] = prefix
        levels = np.full(len(queries), level, dtype=np.int64)
        logits = decode_step(memory[queries], mask[queries], grid, levels)
        return logits[inverse, slot]

    return step


def beams_for_memory(
    decode_step: DecodeStep,
    memory: np.ndarray,
    mask: np.ndarray,
    trie: CompactTrie,
    beam: int,
) -> BeamResult:
    return beam_search(grid_step(decode_step, memory, mask), trie, len(memory), beam, trie.levels)


def search_beams(
    model, tokenizer, texts: Sequence[str], trie: CompactTrie, beam: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synchronous convenience for offline use (export parity, benchmarks): per text
    (paths (k, L), log-probabilities (k,)), best first, k <= beam."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(texts), 64):
        ids, mask = tokenizer.queries(list(texts[start : start + 64]))
        memory = model.encode(ids, mask)
        out.extend(beams_for_memory(model.decode_step, memory, mask, trie, beam))
    return out
