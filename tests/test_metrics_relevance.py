from __future__ import annotations

import numpy as np
import pytest

from training.metrics import relevance_auc


def _synthetic(n_queries: int = 60, per_query: int = 6, seed: int = 0):
    # 360 rows: 60 queries x 6 pairs, half of the pairs of each query relevant.
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"query {i}" for i in range(n_queries)], per_query)
    labels = np.tile([0, 1] * (per_query // 2), n_queries)
    return rng, groups, labels


def test_separating_feature_gives_auc_one() -> None:
    rng, groups, labels = _synthetic()
    # Feature = label + small noise: positives all lie above 0.5, negatives below.
    x = (labels + rng.uniform(-0.3, 0.3, size=labels.size)).reshape(-1, 1)
    assert relevance_auc(x, labels, groups, folds=5, seed=0) == pytest.approx(1.0)


def test_noise_feature_gives_auc_near_half() -> None:
    rng, groups, labels = _synthetic()
    x = rng.normal(size=(labels.size, 2))
    auc = relevance_auc(x, labels, groups, folds=5, seed=0)
    # No signal: pooled out-of-fold AUC close to 0.5 (std about 0.03 for 180 vs 180 rows).
    assert abs(auc - 0.5) < 0.1


def test_groups_are_not_split_across_folds() -> None:
    # The splitter used by relevance_auc keeps every query's rows in one test fold.
    import training.metrics.relevance as relevance

    _, groups, labels = _synthetic()
    x = np.zeros((labels.size, 1))
    tested = []
    for train, test in relevance._group_kfold(5, 0).split(x, labels, groups):
        assert not set(groups[train]) & set(groups[test])
        tested.extend(test.tolist())
    assert sorted(tested) == list(range(labels.size))  # each row tested exactly once


def test_errors() -> None:
    _, groups, labels = _synthetic(n_queries=10)
    x = np.zeros((labels.size, 1))
    with pytest.raises(ValueError, match="one class"):
        relevance_auc(x, np.zeros_like(labels), groups)
    with pytest.raises(ValueError, match="distinct groups"):
        relevance_auc(x, labels, groups, folds=11)
    with pytest.raises(ValueError):
        relevance_auc(x, labels, groups[:-1])
    with pytest.raises(ValueError):
        relevance_auc(x, labels * 2, groups)


def test_auc_is_out_of_fold_so_noise_features_score_chance():
    """Each fold's model is fitted on the other folds only: on 40 features of pure noise an
    in-sample fit would score about 0.71 here, the out-of-fold probabilities about 0.50."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40))
    y = rng.integers(0, 2, 300)
    groups = np.repeat(np.arange(60), 5).astype(str)
    assert abs(relevance_auc(x, y, groups) - 0.5) < 0.08


def test_the_mlp_learns_an_interaction_the_linear_model_cannot() -> None:
    """Relevant when two features share a sign (an XOR of signs): no linear boundary separates
    it, one hidden layer does. Shows `model` really switches the classifier."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(600, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    groups = np.repeat(np.arange(120), 5).astype(str)
    linear = relevance_auc(x, y, groups, model="logistic")
    mlp = relevance_auc(x, y, groups, model="mlp")
    assert abs(linear - 0.5) < 0.1
    assert mlp > 0.9
    assert relevance_auc(x, y, groups, model="mlp") == mlp  # seeded: the same AUC again


def test_an_unknown_model_is_refused() -> None:
    _, groups, labels = _synthetic(n_queries=10)
    with pytest.raises(ValueError, match="relevance model 'tree'"):
        relevance_auc(np.zeros((labels.size, 1)), labels, groups, model="tree")
