"""Loaders for catalogs, judgments and category trees, and the by-query train/dev split."""

from training.data.catalog import Catalog, load_catalog
from training.data.categories import category_levels
from training.data.csvio import DataError
from training.data.judgments import (
    Judgments,
    QuerySet,
    group_by_query,
    load_judgments,
    normalise_query,
    split_by_query,
)

__all__ = [
    "Catalog",
    "DataError",
    "Judgments",
    "QuerySet",
    "category_levels",
    "group_by_query",
    "load_catalog",
    "load_judgments",
    "normalise_query",
    "split_by_query",
]
