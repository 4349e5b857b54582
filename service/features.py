"""Prefix-match relevance features of items against a query's top-K SIDs (DSIRM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidserve.prefix import matched_depth, prefix_score


@dataclass
class PrefixFeatures:
    depth: np.ndarray  # (N, K) shared prefix length with each query SID
    max_depth: np.ndarray  # (N,)
    score: np.ndarray  # (N,) prefix score of max_depth
    best_rank: np.ndarray  # (N,) first query SID reaching max_depth; -1 when max_depth is 0
    best_log_prob: np.ndarray  # (N,) its log-probability; nan when max_depth is 0

    def rows(self, index: np.ndarray) -> PrefixFeatures:
        """The features of the items at `index` (in that order)."""
        return PrefixFeatures(
            self.depth[index],
            self.max_depth[index],
            self.score[index],
            self.best_rank[index],
            self.best_log_prob[index],
        )


def prefix_features(
    query_paths: np.ndarray, log_probs: np.ndarray, item_sids: np.ndarray
) -> PrefixFeatures:
    """query_paths (K, L) best first, log_probs (K,), item_sids (N, >= L): the semantic
    levels of the items are compared, the disambiguation code is not."""
    levels = query_paths.shape[1]
    items = np.asarray(item_sids)[:, :levels]
    if len(query_paths) == 0 or len(items) == 0:
        n = len(items)
        return PrefixFeatures(
            np.zeros((n, len(query_paths)), np.int64),
            np.zeros(n, np.int64),
            np.zeros(n),
            np.full(n, -1),
            np.full(n, np.nan),
        )
    depth = matched_depth(query_paths, items)
    best = depth.max(axis=1)
    rank = np.where(best > 0, depth.argmax(axis=1), -1)
    lp = np.where(best > 0, np.asarray(log_probs)[np.maximum(rank, 0)], np.nan)
    return PrefixFeatures(depth, best, prefix_score(best, levels), rank, lp)
