from __future__ import annotations

import numpy as np
import pytest

from training.metrics import top_k


def test_top_k_orders_by_score_then_index() -> None:
    scores = np.array(
        [
            # Ties at 0.9 (items 1 and 3) and at 0.5 (items 0, 2, 4): lower index first.
            [0.5, 0.9, 0.5, 0.9, 0.5],
            # Distinct scores: 0.8 (item 3), 0.7 (item 0), 0.3 (item 4), 0.2 (item 1), ...
            [0.7, 0.2, 0.1, 0.8, 0.3],
        ]
    )
    # Row 0, k=3: [1, 3] for 0.9, then the lowest-index 0.5 item, 0 (not 2 or 4).
    # Row 1, k=3: 3, 0, 4.
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 3, 0], [3, 0, 4]])
    assert top_k(scores, 3).dtype == np.int64


def test_top_k_ties_at_cut_keep_lowest_indices() -> None:
    # All equal: top-4 of 10 is items 0..3 whatever the partition happened to pick.
    scores = np.zeros((3, 10))
    np.testing.assert_array_equal(top_k(scores, 4), np.tile(np.arange(4), (3, 1)))
    # Tie straddling the cut: 5.0 at item 7, then 1.0 at items 2, 5, 8; k=3 -> 7, 2, 5.
    row = np.zeros((1, 10))
    row[0, [2, 5, 8]] = 1.0
    row[0, 7] = 5.0
    np.testing.assert_array_equal(top_k(row, 3), [[7, 2, 5]])


def test_top_k_k_larger_than_items_and_zero() -> None:
    scores = np.array([[1.0, 3.0, 2.0]])
    # k > n_items: full ranking 1 (3.0), 2 (2.0), 0 (1.0).
    np.testing.assert_array_equal(top_k(scores, 10), [[1, 2, 0]])
    assert top_k(scores, 0).shape == (1, 0)


def test_top_k_matches_full_stable_sort_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.metrics.ranking as ranking

    # Force several row chunks (2 rows of 50 cells per chunk) and many ties (scores in 0..4).
    monkeypatch.setattr(ranking, "_CHUNK_CELLS", 100)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(13, 50)).astype(np.float64)
    got = top_k(scores, 7)
    # Reference: stable argsort on -score keeps index order among equal scores.
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got, expected)


def test_top_k_errors() -> None:
    with pytest.raises(ValueError):
        top_k(np.zeros(5), 2)
    with pytest.raises(ValueError):
        top_k(np.zeros((2, 5)), -1)
    with pytest.raises(ValueError):
        top_k(np.array([[1.0, np.nan]]), 1)
