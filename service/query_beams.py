"""Queries -> top-K catalog SIDs: the beam search's row-wise steps mapped onto the decoder
graphs' (text, beam) layout with their key/value caches, so each level is one decoder call
for the whole batch and runs only the new position of each beam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from service.beam_search import BeamResult, beam_search
from service.trie import CompactTrie


class Decoder(Protocol):
    """The bundle's two decoder graphs (docs/bundle.md), however they are run."""

    def decode_first(
        self, memory: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, S, D) encoder states -> (logits (B, 1, K), present, cross_kv) of level 0."""
        ...

    def decode_step(
        self,
        cross_kv: np.ndarray,
        mask: np.ndarray,
        prefix: np.ndarray,
        level: np.ndarray,
        past: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A later level: (logits (B, W, K), present)."""
        ...


def _rows(array: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """array[queries], without the copy when every query is still there (the usual case)."""
    return array if len(queries) == len(array) else array[queries]


class CachedSteps:
    """The beam search's `step` over the decoder graphs.

    Level 0 runs the first-step graph on every query's encoder states; it also gives each
    query's cross-attention keys and values, which every later level reads instead. Later
    levels' rows (R,) of query q with prefixes (R, L) become a (queries, W, L) grid, W = most
    live beams of any query (padded slots are computed and dropped). Each row's cache is its
    parent beam's `present` from the previous level (the search names each row's parent).
    """

    def __init__(self, decoder: Decoder, memory: np.ndarray, mask: np.ndarray):
        self.decoder, self.memory, self.mask = decoder, memory, mask
        self._cross_kv: np.ndarray | None = None  # (queries, 2N, H, S, D / H) from level 0
        self._where: np.ndarray | None = None  # previous rows' flat (text * W + slot) place in
        self._present: np.ndarray | None = None  # the previous call's `present` grid

    def __call__(
        self, level: int, rows: np.ndarray, prefix: np.ndarray, parents: np.ndarray | None
    ) -> np.ndarray:
        if level == 0:
            if not np.array_equal(rows, np.arange(len(self.memory))):
                raise ValueError("level 0 takes one beam of every query, in order")
            logits, present, self._cross_kv = self.decoder.decode_first(self.memory, self.mask)
            place = np.arange(len(rows))
        else:
            assert self._where is not None and parents is not None
            assert self._present is not None and self._cross_kv is not None
            # rows come query-major (ascending): each query's rows are one run
            steps = np.diff(rows)
            if (steps < 0).any():
                raise ValueError("rows must come query-major (ascending query)")
            starts = np.concatenate([[0], np.flatnonzero(steps) + 1])
            queries = rows[starts]
            counts = np.concatenate([starts[1:], [len(rows)]]) - starts
            inverse = np.repeat(np.arange(len(queries)), counts)
            slot = np.arange(len(rows)) - starts[inverse]
            width = int(counts.max())
            place = inverse * width + slot  # the row's flat place in this call's grid
            # each row's cache straight from its parent's place in the last grid
            cache = self._present.reshape(-1, *self._present.shape[2:])
            source = self._where[parents]
            cells = len(queries) * width
            if len(rows) == cells and (place == np.arange(cells)).all():
                # every query has `width` live rows, in order (the usual case): no scatter
                grid = prefix.reshape(len(queries), width, -1)
                past = cache.take(source, axis=0)
            else:
                grid = np.zeros((cells, prefix.shape[1]), dtype=np.int64)
                grid[place] = prefix
                past = np.zeros((cells, *cache.shape[1:]), dtype=np.float32)
                past[place] = cache.take(source, axis=0)
            levels = np.full(len(queries), level, dtype=np.int64)
            logits, present = self.decoder.decode_step(
                _rows(self._cross_kv, queries),
                _rows(self.mask, queries),
                grid.reshape(len(queries), width, -1),
                levels,
                past.reshape(len(queries), width, *cache.shape[1:]),
            )
        self._where, self._present = place, present
        return logits.reshape(-1, logits.shape[-1])[place]


def beams_for_memory(
    decoder: Decoder, memory: np.ndarray, mask: np.ndarray, trie: CompactTrie, beam: int
) -> BeamResult:
    step = CachedSteps(decoder, memory, mask)
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
        out.extend(beams_for_memory(model, memory, mask, trie, beam))
    return out
