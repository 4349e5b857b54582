"""Retrieval of items by semantic-ID prefix match against a query's beams."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["RERANK_POOL", "SID_ORDERS", "SidIndex"]

# How candidates are ordered (`sidserve evaluate --sid-order`): "beam": matched depth, then the
# rank of the first beam reaching it; "dense": matched depth, then the similarity of the
# method's own query and item vectors; "pool": the first `pool` candidates in beam order (the
# gateway's rerank pool), by similarity alone.
SID_ORDERS = ("beam", "dense", "pool")
RERANK_POOL = 500  # default `pool`, as the gateway's SIDSERVE_RERANK_POOL


class SidIndex:
    """Prefix index over item SIDs for beam-based retrieval.

    Built once from ``item_sids`` ``(N, L)``: for every depth d in 1..L it maps each prefix (the
    tuple of the first d codes) to the sorted int64 array of the items carrying that prefix.
    """

    def __init__(self, item_sids: np.ndarray) -> None:
        sids = np.asarray(item_sids)
        if sids.ndim != 2 or sids.shape[1] < 1:
            raise ValueError(f"item_sids must be 2-D (N, L) with L >= 1, got shape {sids.shape}")
        if sids.size and not np.issubdtype(sids.dtype, np.integer):
            raise ValueError(f"item_sids must hold integer codes, got dtype {sids.dtype}")
        self.n_items, self.levels = sids.shape
        self.prefixes: list[dict[tuple[int, ...], np.ndarray]] = []
        for d in range(1, self.levels + 1):
            self.prefixes.append(self._group(sids[:, :d]))

    @staticmethod
    def _group(prefix: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        n = prefix.shape[0]
        if n == 0:
            return {}
        # lexsort is stable, so items of one prefix stay in ascending index order.
        order = np.lexsort(prefix.T[::-1]).astype(np.int64)
        ordered = prefix[order]
        change = np.any(ordered[1:] != ordered[:-1], axis=1)
        starts = np.concatenate(([0], np.flatnonzero(change) + 1))
        stops = np.concatenate((starts[1:], [n]))
        keys = ordered[starts].tolist()
        return {
            tuple(key): order[a:b]
            for key, a, b in zip(keys, starts.tolist(), stops.tolist(), strict=True)
        }

    def items_with_prefix(self, prefix: tuple[int, ...]) -> np.ndarray:
        """Sorted item indices whose SID starts with ``prefix`` (1 <= len(prefix) <= L)."""
        if not 1 <= len(prefix) <= self.levels:
            raise ValueError(f"prefix length must lie in 1..{self.levels}, got {len(prefix)}")
        found = self.prefixes[len(prefix) - 1].get(tuple(int(c) for c in prefix))
        return found if found is not None else np.empty(0, dtype=np.int64)

    def rank(
        self,
        query_sids: np.ndarray,
        min_depth: int = 1,
        limit: int | None = None,
        similarity: Callable[[np.ndarray], np.ndarray] | None = None,
        pool: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Rank the items matching a query's beams by prefix depth.

        ``query_sids`` is ``(K, L)`` in beam rank order. Candidates are the items whose matched
        depth with at least one beam is >= ``min_depth``, ordered by (maximum matched depth over
        beams, deeper first; rank of the first beam reaching that depth, lower first; item
        index, lower first). With ``similarity`` (candidate item indices -> the query's score
        for each, higher is better) the second key is that score instead of the beam rank: the
        items of one leaf share a beam rank, so without it they stay in catalog order. With
        ``pool`` as well, the first ``pool`` candidates in beam order are ordered by
        ``similarity`` alone (ties in beam order) and the rest are dropped: the SIDs choose the
        candidates, the vectors rank them (the gateway's ``order: similarity``). Returns (the
        ordered int64 item indices, truncated to ``limit`` when given; the number of
        candidates before truncation). Only the K * L prefixes of the beams are looked up.
        """
        q = np.asarray(query_sids)
        if q.ndim != 2 or q.shape[1] != self.levels:
            raise ValueError(f"query_sids must be (K, {self.levels}), got shape {q.shape}")
        if not 1 <= min_depth <= self.levels:
            raise ValueError(f"min_depth must lie in 1..{self.levels}, got {min_depth}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if pool is not None:
            if similarity is None or pool < 1:
                raise ValueError(f"pool ({pool}) needs a similarity and must be >= 1")
            ranked, total = self.rank(query_sids, min_depth, pool)
            ranked = ranked[np.argsort(-_scores(similarity, ranked), kind="stable")]
            return (ranked if limit is None else ranked[:limit]), total

        beams = q.tolist()
        parts: list[np.ndarray] = []
        depths: list[np.ndarray] = []
        ranks: list[np.ndarray] = []
        # Deepest level first, beams in rank order: the first time an item is seen gives its key.
        for d in range(self.levels, min_depth - 1, -1):
            table = self.prefixes[d - 1]
            seen: set[tuple[int, ...]] = set()
            for r, beam in enumerate(beams):
                key = tuple(beam[:d])
                if key in seen:
                    continue
                seen.add(key)
                found = table.get(key)
                if found is None:
                    continue
                parts.append(found)
                depths.append(np.full(found.size, d, dtype=np.int64))
                ranks.append(np.full(found.size, r, dtype=np.int64))
        if not parts:
            return np.empty(0, dtype=np.int64), 0

        items = np.concatenate(parts)
        item_depth = np.concatenate(depths)
        item_rank = np.concatenate(ranks)
        # np.unique's index is the first occurrence, i.e. the item's best (depth, rank) pair.
        unique_items, first = np.unique(items, return_index=True)
        second = item_rank[first] if similarity is None else -_scores(similarity, unique_items)
        order = np.lexsort((unique_items, second, -item_depth[first]))
        ranked = unique_items[order].astype(np.int64)
        total = int(ranked.size)
        if limit is not None:
            ranked = ranked[:limit]
        return ranked, total


def _scores(similarity: Callable[[np.ndarray], np.ndarray], items: np.ndarray) -> np.ndarray:
    """The query's similarity to each of ``items`` as float64, checked for shape."""
    out = np.asarray(similarity(items), dtype=np.float64)
    if out.shape != items.shape:
        raise ValueError(f"similarity returned shape {out.shape} for {items.size} items")
    return out
