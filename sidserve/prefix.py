"""Prefix matching between query SIDs and item SIDs: pure numpy, shared by the offline
metrics and the gateway (which must not import `training`)."""

from __future__ import annotations

import numpy as np

__all__ = ["matched_depth", "prefix_score"]


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
