"""Graded query -> product judgments, the deterministic by-query split, and per-query grouping."""

from __future__ import annotations

import hashlib
import logging
import math
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.catalog import Catalog
from training.data.csvio import DataError, read_csv

log = logging.getLogger(__name__)

SPLIT_SALT = "sidserve-split-v1"
DEFAULT_DEV_FRACTION = 0.15
RELEVANT_THRESHOLD = 2.5


def normalise_query(query: str) -> str:
    """NFKC, lower case, single spaces: the form that decides a query's identity and split."""
    return " ".join(unicodedata.normalize("NFKC", query).lower().split())


@dataclass
class Judgments:
    """Judged (query, item) pairs; `item` indexes into the catalog they were loaded against."""

    queries: list[str]
    items: np.ndarray
    relevance: np.ndarray
    report: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    def relevant_pairs(self, threshold: float) -> list[tuple[str, int]]:
        """(query, item index) of every pair graded >= threshold, in file order: the pairs
        the dense-ft baseline trains on (and its cache key)."""
        keep = np.flatnonzero(self.relevance >= threshold)
        return [(self.queries[k], int(self.items[k])) for k in keep]

    def subset(self, mask: np.ndarray) -> Judgments:
        keep = np.flatnonzero(mask)
        return Judgments(
            queries=[self.queries[i] for i in keep],
            items=self.items[keep],
            relevance=self.relevance[keep],
        )


def load_judgments(
    path: str | Path,
    catalog: Catalog,
    query_column: str = "query",
    id_column: str = "product_uid",
    relevance_column: str = "relevance",
) -> Judgments:
    """Load judgments; pairs whose product is not in the catalog are counted, logged and dropped."""
    table = read_csv(path, required=[query_column, id_column, relevance_column])
    c_q, c_id, c_rel = (table.column(c) for c in (query_column, id_column, relevance_column))
    queries: list[str] = []
    items: list[int] = []
    grades: list[float] = []
    unknown: dict[str, int] = defaultdict(int)
    empty_query = 0
    for line, row in enumerate(table.rows, start=2):
        query = " ".join(row[c_q].split())
        if not query:
            empty_query += 1
            continue
        raw = row[c_rel].strip()
        try:
            grade = float(raw)
        except ValueError:
            raise DataError(
                f"{table.path}: line {line}: relevance {raw!r} is not a number"
            ) from None
        if not math.isfinite(grade):
            raise DataError(f"{table.path}: line {line}: relevance {raw!r} is not finite")
        item = catalog.index.get(row[c_id].strip())
        if item is None:
            unknown[row[c_id].strip()] += 1
            continue
        queries.append(query)
        items.append(item)
        grades.append(grade)
    n_unknown = sum(unknown.values())
    if n_unknown:
        examples = ", ".join(list(unknown)[:5])
        log.warning(
            "%s: dropped %d judgments of %d unknown product ids not in %s (e.g. %s)",
            table.path,
            n_unknown,
            len(unknown),
            catalog.source or "the catalog",
            examples,
        )
    if empty_query:
        log.warning("%s: dropped %d judgments with an empty query", table.path, empty_query)
    if not queries:
        raise DataError(f"{table.path}: no judgment refers to a product of the catalog")
    return Judgments(
        queries=queries,
        items=np.asarray(items, dtype=np.int64),
        relevance=np.asarray(grades, dtype=np.float64),
        report={
            "rows": len(table.rows),
            "pairs": len(queries),
            "dropped_unknown_item": n_unknown,
            "unknown_item_ids": len(unknown),
            "dropped_empty_query": empty_query,
        },
    )


def in_dev(query: str, dev_fraction: float = DEFAULT_DEV_FRACTION, salt: str = SPLIT_SALT) -> bool:
    """A query's side of the split: a hash of its normalised form, the same on every machine."""
    digest = hashlib.sha256(f"{salt}\x00{normalise_query(query)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < dev_fraction


def split_by_query(
    judgments: Judgments, dev_fraction: float = DEFAULT_DEV_FRACTION, salt: str = SPLIT_SALT
) -> tuple[Judgments, Judgments]:
    """(train, dev): a normalised query is never on both sides."""
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError(f"dev_fraction must be within [0, 1], got {dev_fraction}")
    side = {q: in_dev(q, dev_fraction, salt) for q in set(judgments.queries)}
    dev = np.fromiter((side[q] for q in judgments.queries), dtype=bool, count=len(judgments))
    return judgments.subset(~dev), judgments.subset(dev)


@dataclass
class QuerySet:
    """One entry per distinct normalised query: its text and every judged item with its grade."""

    texts: list[str]
    judged: list[dict[int, float]]

    def __len__(self) -> int:
        return len(self.texts)

    def relevant_pairs(
        self, threshold: float = RELEVANT_THRESHOLD
    ) -> tuple[np.ndarray, np.ndarray]:
        """(query index, item index) of every pair graded >= threshold."""
        pairs = [(q, i) for q, d in enumerate(self.judged) for i, g in d.items() if g >= threshold]
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]


def group_by_query(judgments: Judgments) -> QuerySet:
    """Group pairs by normalised query (first spelling kept); repeats get their mean grade."""
    order: dict[str, int] = {}
    texts: list[str] = []
    sums: list[dict[int, list[float]]] = []
    for query, item, grade in zip(
        judgments.queries, judgments.items.tolist(), judgments.relevance.tolist(), strict=True
    ):
        key = normalise_query(query)
        if key not in order:
            order[key] = len(texts)
            texts.append(query)
            sums.append(defaultdict(list))
        sums[order[key]][item].append(grade)
    judged = [{i: float(np.mean(g)) for i, g in d.items()} for d in sums]
    return QuerySet(texts=texts, judged=judged)
