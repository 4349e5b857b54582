"""Agreement between semantic-ID prefixes and the product category tree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score

__all__ = ["category_ami"]


def category_ami(item_sids: np.ndarray, labels: Sequence[Sequence[str | None]]) -> dict[str, float]:
    """Adjusted mutual information between SID prefixes and categories, level by level.

    ``item_sids`` is ``(N, L)``; ``labels[d-1][n]`` is item n's level-d category (full path
    prefix) or None. For each d in 1..min(L, len(labels)): ``ami_l{d}`` = sklearn
    ``adjusted_mutual_info_score`` between the level-1..d code path (one label per distinct
    path) and the level-d category, over the items with a level-d label, and ``ami_l{d}_items``
    = that item count. Levels with fewer than 2 labelled items are left out.
    """
    sids = np.asarray(item_sids)
    if sids.ndim != 2:
        raise ValueError(f"item_sids must be 2-D (N, L), got shape {sids.shape}")
    n_items, levels = sids.shape
    out: dict[str, float] = {}
    for d in range(1, min(levels, len(labels)) + 1):
        level_labels = labels[d - 1]
        if len(level_labels) != n_items:
            raise ValueError(f"labels[{d - 1}] has {len(level_labels)} entries for {n_items} items")
        keep = np.array([lab is not None for lab in level_labels], dtype=bool)
        n_kept = int(keep.sum())
        if n_kept < 2:
            continue
        _, path_ids = np.unique(sids[keep, :d], axis=0, return_inverse=True)
        categories = [str(lab) for lab in level_labels if lab is not None]
        out[f"ami_l{d}"] = float(adjusted_mutual_info_score(categories, path_ids.ravel()))
        out[f"ami_l{d}_items"] = n_kept
    return out
