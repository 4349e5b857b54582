from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.sids import Trie, disambiguate, format_sid, trie_beam_search


def test_disambiguation_counts_within_each_path_in_catalog_order():
    sem = np.array([[1, 2], [1, 2], [0, 5], [1, 2], [0, 5]])
    full = disambiguate(sem)
    assert full[:, -1].tolist() == [0, 1, 0, 2, 1]
    assert len(np.unique(full, axis=0)) == len(full)
    assert format_sid(full[3]) == "1-2-2"


def _exhaustive(sids: np.ndarray, q: np.ndarray, tables: list[np.ndarray], k: int):
    """Score every existing path outright and sort by (score desc, path asc)."""
    paths = sorted({tuple(r) for r in sids.tolist()})
    scored = [(sum(float(tables[d][p[d]] @ q) for d in range(len(p))), p) for p in paths]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [p for _, p in scored[:k]]


@pytest.mark.parametrize("seed", range(5))
def test_beam_equals_exhaustive_when_beam_covers_all_prefixes(seed):
    rng = np.random.default_rng(seed)
    levels, codes = 3, 4
    sids = rng.integers(0, codes, size=(40, levels))
    tables = [rng.normal(size=(codes, 8)) for _ in range(levels)]
    q = rng.normal(size=8)
    trie = Trie(sids)

    def expand(level, prefix, state, kids):
        return tables[level][kids] @ q, [None] * len(kids)

    # with a beam as wide as the number of paths, beam search is exact
    n_paths = len({tuple(r) for r in sids.tolist()})
    paths, scores = trie_beam_search(trie, n_paths, expand)
    assert [tuple(p) for p in paths.tolist()] == _exhaustive(sids, q, tables, n_paths)
    assert np.all(np.diff(scores) <= 1e-12)
    existing = {tuple(r) for r in sids.tolist()}
    small, _ = trie_beam_search(trie, 3, expand)
    assert all(tuple(p) in existing for p in small.tolist())


def test_beam_returns_fewer_paths_than_beam_when_trie_is_small():
    trie = Trie(np.array([[0, 1], [0, 1], [2, 0]]))

    def expand(level, prefix, state, kids):
        return np.zeros(len(kids)), [None] * len(kids)

    paths, scores = trie_beam_search(trie, 10, expand)
    # ties (all zero) broken by the smaller path
    assert paths.tolist() == [[0, 1], [2, 0]]
    assert scores.tolist() == [0.0, 0.0]


def test_trie_children_and_errors():
    trie = Trie(np.array(list(itertools.product([0, 3], [1, 2]))))
    assert trie.children(()).tolist() == [0, 3]
    assert trie.children((3,)).tolist() == [1, 2]
    assert trie.children((9,)).tolist() == []
    with pytest.raises(ValueError):
        Trie(np.empty((0, 2), dtype=int))
    with pytest.raises(ValueError):
        trie_beam_search(trie, 0, lambda *a: (np.zeros(0), []))


def test_sid_text_round_trips_for_every_kind_of_code():
    from sidserve.sids import format_sid as fmt
    from sidserve.sids import parse_sid

    rows = [[12, 5, 201, 0], [0, 0, 0, 4095], [255, 3, 7, 4096], [1, 2, 3, 10**9]]
    for row in rows:
        text = "-".join(str(c) for c in row)
        assert fmt(row) == fmt(np.array(row, dtype=np.int32)) == fmt(tuple(row)) == text
        assert parse_sid(text) == row
    assert fmt(np.array([7], dtype=np.int64)) == "7" and fmt([]) == ""
    assert fmt([-1, 3]) == "-1-3"  # never a table entry from the far end
    with pytest.raises(ValueError):
        parse_sid("-1-3")
