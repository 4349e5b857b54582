"""Cross-validated separability of relevance labels from pair features."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["RELEVANCE_MODELS", "relevance_auc"]

# the pair classifier: a linear model, or the small MLP of DSIRM's relevance model
RELEVANCE_MODELS = ("logistic", "mlp")
MLP_HIDDEN = (32,)


def _classifier(model: str, seed: int) -> Pipeline:
    """Standardised features into a logistic regression or a one-hidden-layer MLP (ReLU,
    `MLP_HIDDEN` units, Adam, L2 1e-4; seeded, so the same inputs give the same AUC)."""
    if model == "mlp":
        mlp = MLPClassifier(hidden_layer_sizes=MLP_HIDDEN, max_iter=1000, random_state=seed)
        return make_pipeline(StandardScaler(), mlp)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


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
    model: str = "logistic",
) -> float:
    """ROC AUC of pooled out-of-fold probabilities of the `model` classifier (`_classifier`).

    ``features`` is ``(n, f)``, ``labels`` binary (0/1), ``groups`` the query of each row. The
    classifier (standardised features into a logistic regression or a small MLP) is
    cross-validated with GroupKFold over ``groups`` (shuffled with ``seed`` where scikit-learn
    supports it), so a query's pairs never straddle train and test; the AUC is computed once
    over all out-of-fold probabilities. Raises ValueError on a single class, fewer distinct
    groups than folds, a training fold holding only one class, or an unknown `model`.
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
    if model not in RELEVANCE_MODELS:
        known = ", ".join(RELEVANCE_MODELS)
        raise ValueError(f"relevance model {model!r}: expected one of {known}")
    n_groups = np.unique(g).size
    if n_groups < folds:
        raise ValueError(f"only {n_groups} distinct groups for {folds} folds; need >= {folds}")

    oof = np.empty(y.size, dtype=np.float64)
    for fold, (train, test) in enumerate(_group_kfold(folds, seed).split(x, y, g)):
        if np.unique(y[train]).size < 2:
            raise ValueError(f"training part of fold {fold} holds only one class")
        clf = _classifier(model, seed)
        clf.fit(x[train], y[train])
        oof[test] = clf.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, oof))
