"""SidRows: full SID -> row of the table it was built from, for many SIDs at once."""

from __future__ import annotations

import numpy as np
import pytest

from service.sid_rows import SidRows


def test_finds_every_row_and_nothing_else():
    rng = np.random.default_rng(0)
    paths = rng.integers(0, 4, size=(500, 3))
    disambiguation = np.zeros((500, 1), dtype=np.int64)
    seen: dict[tuple[int, ...], int] = {}
    for n, p in enumerate(map(tuple, paths)):  # the k-th item on a path gets k
        disambiguation[n] = seen.get(p, 0)
        seen[p] = seen.get(p, 0) + 1
    table = np.hstack([paths, disambiguation]).astype(np.int32)
    rows = SidRows(table)
    order = rng.permutation(500)
    np.testing.assert_array_equal(rows.find(table[order]), order)
    # a SID one code away from a real one, or past every one, is not in the table
    absent = table[:50].copy()
    absent[:, -1] += 1000
    assert (rows.find(absent) == -1).all()
    assert rows.find(np.array([[9, 9, 9, 9]])).tolist() == [-1]
    mixed = np.vstack([table[7], absent[0], table[3]])
    assert rows.find(mixed).tolist() == [7, -1, 3]
    assert rows.find(np.zeros((0, 4), dtype=np.int32)).shape == (0,)
    # int64 input is the same codes
    assert rows.find(table[[5]].astype(np.int64)).tolist() == [5]
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        rows.find(table[:, :3])


def test_codes_outside_a_column_never_match_another_row():
    """Packed keys: a code past its column's largest would spill into the next column's
    bits ([0, 0, 0, 2] packs like [0, 0, 1, 0] when the last column holds only 0 and 1)."""
    table = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 2, 3, 0]], dtype=np.int32)
    rows = SidRows(table)
    assert rows.find(table).tolist() == [0, 1, 2]
    assert rows.find(np.array([[0, 0, 0, 2], [0, 0, -1, 0], [-1, 2, 3, 0]])).tolist() == [-1] * 3


def test_codes_too_wide_to_pack_are_found_the_same_way():
    rng = np.random.default_rng(1)
    table = rng.integers(0, 2**20, size=(300, 4))  # 4 x 20 bits: more than one int64 holds
    table = np.unique(table, axis=0)
    rows = SidRows(table)
    order = rng.permutation(len(table))
    np.testing.assert_array_equal(rows.find(table[order]), order)
    absent = table[:20].copy()
    absent[:, 0] += 2**20
    assert (rows.find(absent) == -1).all()
