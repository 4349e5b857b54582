"""Prefix matching between query beams and item semantic IDs, and the features derived from it."""

from __future__ import annotations

import numpy as np

__all__ = ["matched_depth", "prefix_features", "prefix_score"]


def _as_sids(sids: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(sids)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, levels), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer codes, got dtype {arr.dtype}")
    return arr


def matched_depth(query_sids: np.ndarray, item_sids: np.ndarray) -> np.ndarray:
    """Longest common prefix length between every item SID and every query SID.

    ``query_sids`` is ``(K, L)``, ``item_sids`` is ``(N, L)``; returns ``(N, K)`` int64 where
    entry ``[n, k]`` is the number of leading levels on which item n and query SID k agree (0..L).
    """
    q = _as_sids(query_sids, "query_sids")
    it = _as_sids(item_sids, "item_sids")
    if q.shape[1] != it.shape[1]:
        raise ValueError(f"query_sids have {q.shape[1]} levels but item_sids have {it.shape[1]}")
    equal = it[:, None, :] == q[None, :, :]  # (N, K, L)
    return np.cumprod(equal, axis=2, dtype=np.int64).sum(axis=2, dtype=np.int64)


def prefix_score(depth: np.ndarray | int, levels: int) -> np.ndarray:
    """DSIRM prefix score for L levels: 0 at depth 0, else 2 ** (depth - L), as float64.

    With L = 3 the depths 0, 1, 2, 3 map to 0, 0.25, 0.5, 1.0.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    d = np.asarray(depth)
    if d.size and (d.min() < 0 or d.max() > levels):
        raise ValueError(f"depth must lie in 0..{levels}")
    d = d.astype(np.float64)
    return np.where(d > 0, np.exp2(d - levels), 0.0)


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
