"""Top-k selection over dense score matrices."""

from __future__ import annotations

import numpy as np

__all__ = ["top_k"]

# Upper bound on the number of score cells handled at once (about 32 MB of float64 per copy).
_CHUNK_CELLS = 4_000_000


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of every row, best first.

    ``scores`` is ``(n_queries, n_items)``; the result is ``(n_queries, min(k, n_items))`` int64
    item indices ordered by descending score, ties broken by lower item index first. Rows are
    processed in chunks: a partition finds each row's k-th largest score, every item at or above
    it is a candidate (so ties at the cut are never dropped arbitrarily), and the candidates are
    sorted on (-score, index). NaN scores are rejected.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_queries, n_items), got shape {scores.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    n_queries, n_items = scores.shape
    kk = min(int(k), n_items)
    out = np.empty((n_queries, kk), dtype=np.int64)
    if kk == 0 or n_queries == 0:
        return out
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")

    chunk = max(1, _CHUNK_CELLS // n_items)
    offsets = np.arange(kk)
    for start in range(0, n_queries, chunk):
        block = scores[start : start + chunk]
        n_rows = block.shape[0]
        if kk == n_items:
            mask = np.ones(block.shape, dtype=bool)
        else:
            part = np.argpartition(block, n_items - kk, axis=1)[:, n_items - kk]
            kth = block[np.arange(n_rows), part]
            mask = block >= kth[:, None]
        rows, cols = np.nonzero(mask)  # row-major: rows ascending, cols ascending per row
        vals = block[rows, cols]
        order = np.lexsort((cols, -vals, rows))
        counts = np.bincount(rows, minlength=n_rows)
        row_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out[start : start + n_rows] = cols[order][row_starts[:, None] + offsets]
    return out
