"""Cross-validated separability of relevance labels from pair features."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["relevance_auc"]


def _group_kfold(folds: int, seed: int) -> GroupKFold:
    if "shuffle" in inspect.signature(GroupKFold).parameters:  # scikit-learn >= 1.6
        return GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return GroupKFold(n_splits=folds)


def relevance_auc(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """ROC AUC of pooled out-of-fold logistic-regression probabilities.

    ``features`` is ``(n, f)``, ``labels`` binary (0/1), ``groups`` the query of each row. A
    Pipeline(StandardScaler, LogisticRegression(max_iter=1000)) is cross-validated with
    GroupKFold over ``groups`` (shuffled with ``seed`` where scikit-learn supports it), so a
    query's pairs never straddle train and test; the AUC is computed once over all out-of-fold
    probabilities. Raises ValueError on a single class, fewer distinct groups than folds, or a
    training fold holding only one class.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    g = np.asarray(groups)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, f), got shape {x.shape}")
    if y.ndim != 1 or g.ndim != 1 or not x.shape[0] == y.size == g.size:
        raise ValueError(
            f"features ({x.shape[0]} rows), labels ({y.size}) and groups ({g.size}) must align"
        )
    classes = np.unique(y)
    if not np.isin(classes, [0, 1]).all():
        raise ValueError(f"labels must be binary 0/1, got values {classes.tolist()}")
    y = y.astype(np.int64)
    if classes.size < 2:
        raise ValueError("labels hold only one class; AUC is undefined")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    n_groups = np.unique(g).size
    if n_groups < folds:
        raise ValueError(f"only {n_groups} distinct groups for {folds} folds; need >= {folds}")

    oof = np.empty(y.size, dtype=np.float64)
    for fold, (train, test) in enumerate(_group_kfold(folds, seed).split(x, y, g)):
        if np.unique(y[train]).size < 2:
            raise ValueError(f"training part of fold {fold} holds only one class")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(x[train], y[train])
        oof[test] = model.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, oof))
