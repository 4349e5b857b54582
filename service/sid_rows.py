"""Full SIDs -> rows of the bundle's item table, for a whole candidate list at once.

The gateway needs the row of each candidate to find its dense vector. A SID names one item for
good: disambiguation counters only grow (`stores.base.assign_sids`), so a SID is never handed
out twice, and a candidate that holds a bundle item's SID is that item, not moved since the
bundle was built. Looking rows up by SID is one vectorised search, where a dict lookup per
item id was the largest single cost of a query on the event loop (500 candidates each).
"""

from __future__ import annotations

import numpy as np


def _keys(sids: np.ndarray) -> np.ndarray:
    """(n, width) codes -> (n,) opaque byte keys: equal exactly when the rows are equal."""
    arr = np.ascontiguousarray(sids, dtype=np.int32)
    if arr.ndim != 2:
        raise ValueError(f"SIDs must be (n, width), got shape {arr.shape}")
    return arr.view(np.dtype((np.void, arr.itemsize * arr.shape[1]))).ravel()


class SidRows:
    """Row of each full SID ((N, L+1) codes, unique) in the table it was built from."""

    def __init__(self, sids: np.ndarray):
        keys = _keys(sids)
        self.width = int(np.asarray(sids).shape[1])
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def find(self, sids: np.ndarray) -> np.ndarray:
        """(n,) int64 row of each SID, -1 where the table has no such SID."""
        sids = np.asarray(sids)
        if sids.size == 0 or len(self._sorted) == 0:
            return np.full(len(sids), -1, dtype=np.int64)
        if sids.ndim != 2 or sids.shape[1] != self.width:
            raise ValueError(f"SIDs must be (n, {self.width}), got shape {sids.shape}")
        query = _keys(sids)
        pos = np.minimum(np.searchsorted(self._sorted, query), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == query, self._order[pos], -1).astype(np.int64)
