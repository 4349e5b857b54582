"""Quality statistics of semantic IDs: code accuracy, codebook usage, leaf collisions and how
far final codes moved from the ones training assigned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sidserve.prefix import matched_depth

__all__ = [
    "assignment_agreement",
    "candidate_recall",
    "code_accuracy",
    "code_accuracy_ceiling",
    "codebook_stats",
    "collision_stats",
]


def _as_sids(sids: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(sids)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, levels), got shape {arr.shape}")
    return arr


def _relevant_pairs(
    pair_query: np.ndarray, pair_item: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (query, item) index arrays of the relevant pairs, checked: same length, not
    empty (`what` names the metric in the error)."""
    pq = np.asarray(pair_query, dtype=np.int64).ravel()
    pi = np.asarray(pair_item, dtype=np.int64).ravel()
    if pq.shape != pi.shape:
        raise ValueError(f"pair_query ({pq.size}) and pair_item ({pi.size}) differ in length")
    if pq.size == 0:
        raise ValueError(f"{what} needs at least one relevant pair")
    return pq, pi


def code_accuracy(
    query_top1: np.ndarray,
    item_sids: np.ndarray,
    pair_query: np.ndarray,
    pair_item: np.ndarray,
) -> dict[str, float]:
    """Share of relevant (query, item) pairs whose SIDs agree on levels 1..d, for d = 1..L.

    ``query_top1`` is ``(Q, L)`` (each query's top-1 SID), ``item_sids`` is ``(N, L)``, and
    ``pair_query`` / ``pair_item`` are aligned index arrays of the relevant pairs. Returns
    ``l{d}_code_acc`` for every level. Raises ValueError when there are no pairs.
    """
    q = _as_sids(query_top1, "query_top1")
    it = _as_sids(item_sids, "item_sids")
    if q.shape[1] != it.shape[1]:
        raise ValueError(f"query_top1 has {q.shape[1]} levels but item_sids has {it.shape[1]}")
    pq, pi = _relevant_pairs(pair_query, pair_item, "code_accuracy")
    agree = np.cumprod(q[pq] == it[pi], axis=1, dtype=np.int64)  # (P, L): prefix agreement
    acc = agree.mean(axis=0)
    return {f"l{d}_code_acc": float(acc[d - 1]) for d in range(1, q.shape[1] + 1)}


def code_accuracy_ceiling(
    item_sids: np.ndarray, pair_query: np.ndarray, pair_item: np.ndarray
) -> dict[str, float]:
    """The highest ``l{d}_code_acc`` any query SIDs could reach against these item SIDs.

    A query has one top-1 SID, so of its relevant items it can agree with at most those that
    share the most common level-1..d prefix among them. Summed over queries and divided by the
    pairs, that bounds the code accuracy from above: where the bound is low, the item SIDs
    scatter co-relevant products, and no query model can make up for it.
    Returns ``l{d}_code_acc_ceiling`` for every level.
    """
    it = _as_sids(item_sids, "item_sids")
    pq, pi = _relevant_pairs(pair_query, pair_item, "code_accuracy_ceiling")
    out = {}
    for d in range(1, it.shape[1] + 1):
        keys = np.column_stack([pq, it[pi, :d]])  # (P, 1 + d): query, prefix
        uniq, counts = np.unique(keys, axis=0, return_counts=True)
        best = np.zeros(pq.max() + 1, dtype=np.int64)
        np.maximum.at(best, uniq[:, 0], counts)  # per query: its most shared prefix
        out[f"l{d}_code_acc_ceiling"] = float(best.sum() / pq.size)
    return out


def candidate_recall(
    query_beams: Sequence[np.ndarray],
    item_sids: np.ndarray,
    pair_query: np.ndarray,
    pair_item: np.ndarray,
    min_depth: int = 1,
) -> float:
    """Share of a query's relevant items that are SID candidates at all, averaged over the
    queries with a relevant item (as ``recall@k``).

    An item is a candidate of a query when its SID shares at least ``min_depth`` leading levels
    with one of the query's beams (``query_beams[q]``: (k, L) paths). SID retrieval ranks only
    candidates, so in any order and at any cut-off its recall is at most this.
    """
    it = _as_sids(item_sids, "item_sids")
    pq, pi = _relevant_pairs(pair_query, pair_item, "candidate_recall")
    shares = []
    for q in np.unique(pq):
        beams = np.asarray(query_beams[q]).reshape(-1, it.shape[1])
        depth = matched_depth(beams, it[pi[pq == q]])  # (relevant items, beams)
        shares.append((depth.max(axis=1, initial=0) >= min_depth).mean())
    return float(np.mean(shares))


def codebook_stats(item_sids: np.ndarray, codebook_sizes: Sequence[int]) -> dict[str, float]:
    """Per-level codebook usage over items.

    For each level d (1-based): ``l{d}_utilisation`` = distinct codes used / codebook size, and
    ``l{d}_perplexity`` = exp(entropy in nats) of the empirical code distribution. Raises
    ValueError on no items, a size list not matching L, or codes outside 0..size-1.
    """
    sids = _as_sids(item_sids, "item_sids")
    n_items, levels = sids.shape
    if len(codebook_sizes) != levels:
        raise ValueError(f"got {len(codebook_sizes)} codebook sizes for {levels} levels")
    if n_items == 0:
        raise ValueError("codebook_stats needs at least one item")
    out: dict[str, float] = {}
    for d in range(1, levels + 1):
        size = int(codebook_sizes[d - 1])
        codes = sids[:, d - 1]
        if size < 1 or codes.min() < 0 or codes.max() >= size:
            raise ValueError(f"level {d}: codes must lie in 0..{size - 1}")
        _, counts = np.unique(codes, return_counts=True)
        p = counts / n_items
        entropy = float(-(p * np.log(p)).sum())
        out[f"l{d}_utilisation"] = counts.size / size
        out[f"l{d}_perplexity"] = float(np.exp(entropy))
    return out


def collision_stats(item_sids: np.ndarray) -> dict[str, float]:
    """Sharing of full L-level paths between items.

    ``collision_rate`` = share of items whose path is shared with at least one other item;
    ``max_items_per_leaf`` = largest number of items on one path; ``n_leaves`` = distinct paths.
    Raises ValueError when there are no items.
    """
    sids = _as_sids(item_sids, "item_sids")
    n_items = sids.shape[0]
    if n_items == 0:
        raise ValueError("collision_stats needs at least one item")
    _, counts = np.unique(sids, axis=0, return_counts=True)
    return {
        "collision_rate": float(counts[counts > 1].sum() / n_items),
        "max_items_per_leaf": int(counts.max()),
        "n_leaves": int(counts.size),
    }


def assignment_agreement(final_sids: np.ndarray, assigned_sids: np.ndarray) -> dict[str, float]:
    """Share of items whose final SID agrees with the codes training assigned them, per prefix.

    A progressively trained indexer fixes each item's level-T code when level T is done; the
    SIDs the finished model gives (``final_sids``, both ``(N, L)``) can still drift from those
    (``assigned_sids``) on earlier levels. ``l{d}_assignment_agreement`` is the share of items
    whose first d codes are unchanged, for d = 1..L.
    """
    final = _as_sids(final_sids, "final_sids")
    assigned = _as_sids(assigned_sids, "assigned_sids")
    if final.shape != assigned.shape:
        raise ValueError(f"final_sids {final.shape} and assigned_sids {assigned.shape} differ")
    if final.shape[0] == 0:
        raise ValueError("assignment_agreement needs at least one item")
    kept = np.cumprod(final == assigned, axis=1, dtype=np.int64).mean(axis=0)
    return {f"l{d}_assignment_agreement": float(kept[d - 1]) for d in range(1, final.shape[1] + 1)}
