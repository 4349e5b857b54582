"""Command-line arguments shared by the subcommands that read a catalog and judgments."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.data import Catalog, Judgments, load_catalog, load_judgments
from training.data.judgments import DEFAULT_DEV_FRACTION, RELEVANT_THRESHOLD


def add_data_arguments(parser: argparse.ArgumentParser, judgments_required: bool) -> None:
    parser.add_argument("--catalog", required=True, type=Path, help="products CSV (gzip or plain)")
    parser.add_argument(
        "--judgments", type=Path, required=judgments_required, help="query,product,relevance CSV"
    )
    parser.add_argument(
        "--dev-fraction",
        type=float,
        default=DEFAULT_DEV_FRACTION,
        help="share of queries in the by-query dev split (default: 0.15)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=RELEVANT_THRESHOLD,
        help="relevance >= this counts as relevant (default: 2.5)",
    )
    g = parser.add_argument_group("columns")
    g.add_argument("--id-column", default="product_uid")
    g.add_argument("--title-column", default="title")
    g.add_argument(
        "--description-column",
        default="description",
        help="used when a title is empty; '' for none",
    )
    g.add_argument("--category-column", help="category path ('A > B > C') for AMI metrics")
    g.add_argument("--query-column", default="query")
    g.add_argument(
        "--judgment-id-column", help="product id column of --judgments (default: --id-column)"
    )
    g.add_argument("--relevance-column", default="relevance")


def load_inputs(args: argparse.Namespace) -> tuple[Catalog, Judgments | None]:
    catalog = load_catalog(
        args.catalog,
        id_column=args.id_column,
        title_column=args.title_column,
        description_column=args.description_column or None,
        category_column=args.category_column,
    )
    if not args.judgments:
        return catalog, None
    judgments = load_judgments(
        args.judgments,
        catalog,
        query_column=args.query_column,
        id_column=args.judgment_id_column or args.id_column,
        relevance_column=args.relevance_column,
    )
    return catalog, judgments
