"""Full SIDs -> rows of the bundle's item table, for a whole candidate list at once.

The gateway needs the row of each candidate to find its dense vector. A SID names one item for
good: disambiguation counters only grow (`stores.base.assign_sids`), so a SID is never handed
out twice, and a candidate that holds a bundle item's SID is that item, not moved since the
bundle was built. Looking rows up by SID is one vectorised search, where a dict lookup per
item id was the largest single cost of a query on the event loop (500 candidates each).
"""

from __future__ import annotations

import numpy as np

# A table's SIDs become one int64 each when every column's largest code fits in this many
# bits in all (3 levels of 256 codes and disambiguation codes below 2^39 do); sorting and
# searching int64 keys took half the time of byte-string keys for 500 candidates.
PACKED_BITS = 62


def _byte_keys(sids: np.ndarray) -> np.ndarray:
    """(n, width) codes -> (n,) opaque byte keys: equal exactly when the rows are equal."""
    arr = np.ascontiguousarray(sids, dtype=np.int32)
    return arr.view(np.dtype((np.void, arr.itemsize * arr.shape[1]))).ravel()


class SidRows:
    """Row of each full SID ((N, L+1) codes, unique) in the table it was built from."""

    def __init__(self, sids: np.ndarray):
        table = np.asarray(sids)
        if table.ndim != 2:
            raise ValueError(f"SIDs must be (n, width), got shape {table.shape}")
        self.width = int(table.shape[1])
        self._max: np.ndarray | None = None  # per column: the largest code (packed keys)
        self._shifts = np.zeros(self.width, dtype=np.int64)
        if len(table) and table.min() >= 0:
            top = table.max(axis=0).astype(np.int64)
            bits = np.array([max(1, int(v).bit_length()) for v in top], dtype=np.int64)
            if bits.sum() <= PACKED_BITS:  # column j sits above the bits of the columns after it
                self._max = top
                self._shifts = np.array([bits[j + 1 :].sum() for j in range(self.width)])
        keys = self._keys(table)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def _keys(self, sids: np.ndarray) -> np.ndarray:
        if self._max is None:
            return _byte_keys(sids)
        return (np.asarray(sids, dtype=np.int64) << self._shifts).sum(axis=1)

    def find(self, sids: np.ndarray) -> np.ndarray:
        """(n,) int64 row of each SID, -1 where the table has no such SID."""
        sids = np.asarray(sids)
        if sids.size == 0 or len(self._sorted) == 0:
            return np.full(len(sids), -1, dtype=np.int64)
        if sids.ndim != 2 or sids.shape[1] != self.width:
            raise ValueError(f"SIDs must be (n, {self.width}), got shape {sids.shape}")
        # packed keys: a code outside its column's range is in no row, and its key (spilled
        # into the neighbouring column's bits) may equal another row's, so it is masked
        inside = None if self._max is None else ((sids >= 0) & (sids <= self._max)).all(axis=1)
        query = self._keys(sids)
        pos = np.minimum(np.searchsorted(self._sorted, query), len(self._sorted) - 1)
        found = self._sorted[pos] == query
        if inside is not None:
            found &= inside
        return np.where(found, self._order[pos], -1).astype(np.int64)
