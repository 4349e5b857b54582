"""Training pairs and batches: multi-query sampling, progressive and judged hard negatives.

A batch is a set of distinct catalog items, each with up to `queries_per_item` of its positive
queries; no two queries in a batch are near-duplicates (same words in any order). From level 2
on, items are laid out in groups that share the prefix of codes already fixed, so in-batch
negatives are the items the model must now tell apart (GSID's progressive hard negatives).
Optionally each query brings items the raters judged not relevant to it (judged negatives):
they join the batch as extra items that are nobody's sampled item.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from training.data import Judgments, normalise_query


def near_duplicate_key(query: str) -> str:
    """Queries with the same words in any order count as one."""
    return " ".join(sorted(set(normalise_query(query).split())))


@dataclass
class PairData:
    query_texts: list[str]  # distinct normalised queries (first spelling kept)
    item_queries: dict[int, list[int]]  # catalog index -> positive query ids
    positives: set[tuple[int, int]]  # (query id, catalog index)
    # query id -> catalog indices judged below the negative threshold for it
    negatives: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def from_judgments(
        cls, judgments: Judgments, threshold: float, negative_below: float | None = None
    ) -> PairData:
        """Positives: pairs graded >= `threshold`. Negatives (with `negative_below`): pairs
        graded below it whose query has a positive (the others never enter a batch)."""
        rows = [
            (query, normalise_query(query), int(item), grade)
            for query, item, grade in zip(
                judgments.queries,
                judgments.items.tolist(),
                judgments.relevance.tolist(),
                strict=True,
            )
        ]
        ids: dict[str, int] = {}
        texts: list[str] = []
        item_queries: dict[int, list[int]] = defaultdict(list)
        positives: set[tuple[int, int]] = set()
        for query, key, item, grade in rows:
            if grade < threshold:
                continue
            if key not in ids:
                ids[key] = len(texts)
                texts.append(query)
            pair = (ids[key], item)
            if pair not in positives:
                positives.add(pair)
                item_queries[item].append(ids[key])
        if not positives:
            raise ValueError(f"no training pair is graded >= {threshold}")
        negatives: dict[int, list[int]] = defaultdict(list)
        for _, key, item, grade in rows:
            q = ids.get(key)
            if negative_below is None or grade >= negative_below or q is None:
                continue
            if (q, item) not in positives and item not in negatives[q]:
                negatives[q].append(item)
        return cls(texts, dict(item_queries), positives, dict(negatives))

    @property
    def negative_pairs(self) -> int:
        return sum(len(items) for items in self.negatives.values())


@dataclass
class Batch:
    items: list[int]  # catalog indices, distinct; judged negatives (if any) come last
    queries: list[int]  # query ids
    query_item: list[int]  # position in `items` of the item each query was sampled for
    positive: np.ndarray  # (len(queries), len(items)) bool: every known positive in the batch
    judged: int = 0  # how many of the items, the last ones, are judged negatives


def item_order(
    items: list[int], rng: random.Random, prefix_codes: np.ndarray | None, group_size: int
) -> list[int]:
    """Shuffled items; with prefix codes, runs of `group_size` items sharing a prefix."""
    items = items[:]
    rng.shuffle(items)
    if prefix_codes is None or prefix_codes.shape[1] == 0:
        return items
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i in items:
        groups[prefix_codes[i].tobytes()].append(i)
    chunks = [g[s : s + group_size] for g in groups.values() for s in range(0, len(g), group_size)]
    rng.shuffle(chunks)
    return [i for chunk in chunks for i in chunk]


def make_batches(
    data: PairData,
    batch_items: int,
    queries_per_item: int,
    rng: random.Random,
    prefix_codes: np.ndarray | None = None,
    group_size: int = 8,
    negatives_per_query: int = 0,
) -> list[Batch]:
    keys = [near_duplicate_key(q) for q in data.query_texts]
    order = item_order(list(data.item_queries), rng, prefix_codes, group_size)
    batches: list[Batch] = []
    for start in range(0, len(order), batch_items):
        items = order[start : start + batch_items]
        seen: set[str] = set()
        queries: list[int] = []
        query_item: list[int] = []
        for pos, item in enumerate(items):
            candidates = data.item_queries[item][:]
            rng.shuffle(candidates)
            taken = 0
            for q in candidates:
                if taken == queries_per_item:
                    break
                if keys[q] in seen:
                    continue
                seen.add(keys[q])
                queries.append(q)
                query_item.append(pos)
                taken += 1
        if not queries:
            continue
        judged = judged_negatives(data, queries, items, negatives_per_query, rng)
        items = items + judged
        positive = np.array(
            [[(q, i) in data.positives for i in items] for q in queries], dtype=bool
        )
        batches.append(Batch(items, queries, query_item, positive, len(judged)))
    return batches


def judged_negatives(
    data: PairData, queries: list[int], items: list[int], per_query: int, rng: random.Random
) -> list[int]:
    """Up to `per_query` items judged not relevant to each query, drawn at random, none already
    among `items` or drawn for an earlier query (a batch's items stay distinct)."""
    if not per_query:
        return []
    taken = set(items)
    out: list[int] = []
    for q in queries:
        pool = [i for i in data.negatives.get(q, ()) if i not in taken]
        for item in rng.sample(pool, min(per_query, len(pool))):
            taken.add(item)
            out.append(item)
    return out
