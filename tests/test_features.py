"""The gateway's prefix-match features of candidates against a query's top SIDs
(`service.features.prefix_features`), which `/v1/query/sids` and `/v1/relevance` return."""

from __future__ import annotations

import numpy as np

from service.features import prefix_features

QUERY = np.array([[1, 2, 3], [1, 5, 0], [4, 4, 4]])  # top-3 SIDs, best first
LOGP = np.array([-0.5, -1.0, -2.0])


def test_depth_score_and_first_beam_reaching_the_deepest_match():
    items = np.array([[1, 2, 3, 7], [1, 5, 9, 0], [4, 4, 1, 2]])  # full SIDs: + disambiguation
    f = prefix_features(QUERY, LOGP, items)
    np.testing.assert_array_equal(f.depth, [[3, 1, 0], [1, 2, 0], [0, 0, 2]])
    np.testing.assert_array_equal(f.max_depth, [3, 2, 2])
    np.testing.assert_array_equal(f.score, [1.0, 0.5, 0.5])
    np.testing.assert_array_equal(f.best_rank, [0, 1, 2])
    np.testing.assert_array_equal(f.best_log_prob, [-0.5, -1.0, -2.0])


def test_an_item_sharing_no_prefix_has_no_best_beam():
    f = prefix_features(QUERY, LOGP, np.array([[9, 2, 3, 0], [1, 2, 3, 1]]))
    assert f.max_depth[0] == 0 and f.score[0] == 0.0
    assert f.best_rank[0] == -1  # not beam 0, which argmax of all-zero depths would give
    assert np.isnan(f.best_log_prob[0])
    assert f.best_rank[1] == 0 and f.best_log_prob[1] == -0.5


def test_rows_pick_the_features_of_some_items_in_order():
    items = np.array([[1, 2, 3, 7], [1, 5, 9, 0], [4, 4, 1, 2]])
    f = prefix_features(QUERY, LOGP, items).rows(np.array([2, 0]))
    np.testing.assert_array_equal(f.max_depth, [2, 3])
    np.testing.assert_array_equal(f.best_rank, [2, 0])
