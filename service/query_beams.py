"""Queries -> top-K catalog SIDs: the beam search's row-wise steps mapped onto the decoder
graph's (text, beam) layout with its key/value cache, so each level is one decoder call for
the whole batch and runs only the new position of each beam."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from service.beam_search import BeamResult, beam_search
from service.onnx_model import empty_past
from service.trie import CompactTrie

# decode_step(memory, mask, prefix (B, W, L), level (B,), past) -> (logits (B, W, K), present)
DecodeStep = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]
]


def _keys(rows: np.ndarray, prefix: np.ndarray, depth: int, radix: int) -> np.ndarray:
    """One int64 per (query, first `depth` codes): finds a row's parent beam."""
    key = rows.astype(np.int64)
    for j in range(depth):
        key = key * radix + prefix[:, j]
    return key


class CachedSteps:
    """The beam search's `step` over the cached decoder graph.

    Rows (R,) of query q with prefixes (R, L) become a (queries, W, L) grid, W = most live
    beams of any query (padded slots are computed and dropped). Each row's cache is its parent
    beam's `present` from the previous level: the row whose query and codes agree with it on
    every level but the last one chosen.
    """

    def __init__(
        self,
        decode_step: DecodeStep,
        memory: np.ndarray,
        mask: np.ndarray,
        entries: int,
        radix: int,
    ):
        self.decode_step, self.memory, self.mask = decode_step, memory, mask
        self.entries, self.radix = entries, radix
        self._keys: np.ndarray | None = None  # previous level's row keys, sorted
        self._where: tuple[np.ndarray, np.ndarray] | None = None  # their (text, slot) in...
        self._present: np.ndarray | None = None  # ...the previous call's `present` grid

    def __call__(self, level: int, rows: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        queries, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.empty(len(rows), dtype=np.int64)
        slot[order] = np.arange(len(rows)) - starts[inverse[order]]
        width = int(counts.max())
        grid = np.zeros((len(queries), width, prefix.shape[1]), dtype=np.int64)
        grid[inverse, slot] = prefix
        hidden = self.memory.shape[-1]
        if level == 0:
            past = empty_past(len(queries), width, self.entries, hidden)
        else:
            assert self._keys is not None and self._where is not None
            assert self._present is not None
            parent = np.searchsorted(self._keys, _keys(rows, prefix, level - 1, self.radix))
            past = np.zeros((len(queries), width, *self._present.shape[2:]), dtype=np.float32)
            # one copy: each row's cache straight from its parent's place in the last grid
            past[inverse, slot] = self._present[self._where[0][parent], self._where[1][parent]]
        levels = np.full(len(queries), level, dtype=np.int64)
        logits, present = self.decode_step(
            self.memory[queries], self.mask[queries], grid, levels, past
        )
        keys = _keys(rows, prefix, level, self.radix)
        sort = np.argsort(keys)
        self._keys, self._where, self._present = keys[sort], (inverse[sort], slot[sort]), present
        return logits[inverse, slot]


def beams_for_memory(
    decode_step: DecodeStep,
    memory: np.ndarray,
    mask: np.ndarray,
    trie: CompactTrie,
    beam: int,
    entries: int,
) -> BeamResult:
    radix = max(trie.codebook_sizes)
    step = CachedSteps(decode_step, memory, mask, entries, radix)
    return beam_search(step, trie, len(memory), beam, trie.levels)


def search_beams(
    model, tokenizer, texts: Sequence[str], trie: CompactTrie, beam: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synchronous convenience for offline use (export parity, benchmarks): per text
    (paths (k, L), log-probabilities (k,)), best first, k <= beam."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(texts), 64):
        ids, mask = tokenizer.queries(list(texts[start : start + 64]))
        memory = model.encode(ids, mask)
        out.extend(
            beams_for_memory(model.decode_step, memory, mask, trie, beam, model.cache_entries)
        )
    return out
