"""Prefix matching between query beams and item semantic IDs, and the features derived from it."""

from __future__ import annotations

import numpy as np

from sidserve.prefix import _as_sids, matched_depth, prefix_score

__all__ = ["matched_depth", "prefix_features", "prefix_score"]


def prefix_features(query_sids: np.ndarray, item_sids: np.ndarray) -> np.ndarray:
    """Prefix-match features of every item against a query's top-K beams.

    ``query_sids`` is ``(K, L)`` in beam rank order (rank 0 = best), ``item_sids`` is ``(N, L)``.
    Returns ``(N, K + 2)`` float64 with columns:

    - ``0 .. K-1``: ``prefix_score`` of the item against beam k, in beam order;
    - ``K``: the maximum of those scores;
    - ``K + 1``: best beam rank normalised, ``r / K`` where r is the rank (0-based) of the first
      beam achieving the item's maximum matched depth, or 1.0 when that depth is 0.

    Raises ValueError when there are no beams.
    """
    q = _as_sids(query_sids, "query_sids")
    n_beams, levels = q.shape
    if n_beams == 0:
        raise ValueError("prefix_features needs at least one beam (query_sids has K = 0)")
    depth = matched_depth(q, item_sids)
    scores = prefix_score(depth, levels)
    max_depth = depth.max(axis=1)
    best_rank = depth.argmax(axis=1) / n_beams  # argmax returns the first maximum
    best_rank = np.where(max_depth > 0, best_rank, 1.0)
    return np.column_stack([scores, scores.max(axis=1), best_rank]).astype(np.float64)
