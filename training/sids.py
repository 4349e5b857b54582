"""Semantic-ID utilities shared by every indexer: disambiguation, the catalog trie, beam search.

An item's SID is its L semantic codes plus one disambiguation code. The disambiguation rule:
among items that share the same semantic path, the k-th item in catalog order gets code k
(0, 1, 2, ...), so SIDs are unique and stable for a fixed catalog order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from sidserve.sids import format_sid

__all__ = ["Trie", "disambiguate", "format_sid", "trie_beam_search"]


def disambiguate(semantic: np.ndarray) -> np.ndarray:
    """(N, L) semantic codes -> (N, L + 1): the last column makes every row unique."""
    counters: dict[bytes, int] = defaultdict(int)
    rows = np.ascontiguousarray(semantic, dtype=np.int64)
    extra = np.empty(len(rows), dtype=np.int64)
    for n, row in enumerate(rows):
        key = row.tobytes()
        extra[n] = counters[key]
        counters[key] += 1
    return np.concatenate([rows, extra[:, None]], axis=1)


class Trie:
    """Which next codes exist in the catalog after each prefix of semantic codes."""

    def __init__(self, sids: np.ndarray):
        sids = np.asarray(sids, dtype=np.int64)
        if sids.ndim != 2 or len(sids) == 0:
            raise ValueError("a trie needs a non-empty (N, L) array of codes")
        self.levels = sids.shape[1]
        children: dict[tuple[int, ...], set[int]] = defaultdict(set)
        for row in map(tuple, sids.tolist()):
            for d in range(self.levels):
                children[row[:d]].add(row[d])
        self._children = {p: np.array(sorted(c), dtype=np.int64) for p, c in children.items()}

    def children(self, prefix: tuple[int, ...]) -> np.ndarray:
        return self._children.get(prefix, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._children)


# expand(level, prefix, state, children) -> (score of each child, new state of each child)
Expand = Callable[[int, tuple[int, ...], object, np.ndarray], tuple[np.ndarray, Sequence[object]]]


def trie_beam_search(
    trie: Trie, beam: int, expand: Expand, initial_state: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`beam` complete paths that exist in the trie, by summed per-level score.

    Returns (paths (K, L), scores (K,)) with K <= beam when the trie has fewer paths.
    Ties go to the earlier (beam, code) position, i.e. the better-ranked prefix, then the
    lower code, so results are deterministic.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    beams: list[tuple[tuple[int, ...], float, object]] = [((), 0.0, initial_state)]
    for level in range(trie.levels):
        paths: list[tuple[int, ...]] = []
        totals: list[np.ndarray] = []
        states: list[object] = []
        for prefix, score, state in beams:
            kids = trie.children(prefix)
            if len(kids) == 0:
                continue
            child_scores, child_states = expand(level, prefix, state, kids)
            paths.extend(prefix + (int(c),) for c in kids)
            totals.append(score + np.asarray(child_scores, dtype=np.float64))
            states.extend(child_states)
        if not paths:
            break
        flat = np.concatenate(totals)
        # sort by score desc, then by path asc (paths were appended in ascending prefix order)
        order = np.lexsort((np.arange(len(flat)), -flat))[:beam]
        beams = [(paths[i], float(flat[i]), states[i]) for i in order]
    out_paths = np.array([b[0] for b in beams], dtype=np.int64).reshape(len(beams), trie.levels)
    return out_paths, np.array([b[1] for b in beams], dtype=np.float64)
