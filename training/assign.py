"""`sidserve assign`: the item -> SID table of a whole catalog from an indexer checkpoint.

Writes CSV (gzip when the name ends in .gz): item_id, sid (semantic codes + disambiguation,
'-'-joined), then one column per level.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import time
from pathlib import Path

from training.data import load_catalog
from training.sids import disambiguate, format_sid

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--catalog", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="CSV table to write (.gz ok)")
    parser.add_argument("--id-column", default="product_uid")
    parser.add_argument("--title-column", default="title")
    parser.add_argument("--description-column", default="description")


def assign(args: argparse.Namespace) -> int:
    from training.indexer.checkpoint import load_checkpoint
    from training.indexer.inference import greedy_codes
    from training.indexer.states import compute_states

    catalog = load_catalog(
        args.catalog,
        id_column=args.id_column,
        title_column=args.title_column,
        description_column=args.description_column or None,
    )
    model, tokenizer, _, _ = load_checkpoint(args.checkpoint)
    started = time.perf_counter()
    states = compute_states(model, tokenizer, catalog.texts, model.cfg.max_item_tokens)
    sids = disambiguate(greedy_codes(model, states))
    seconds = time.perf_counter() - started
    log.info(
        "assigned %d items in %.1f s (%.0f items/s)", len(catalog), seconds, len(catalog) / seconds
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(tmp, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "sid", *[f"l{d + 1}" for d in range(sids.shape[1])]])
        for item_id, row in zip(catalog.ids, sids.tolist(), strict=True):
            w.writerow([item_id, format_sid(row), *row])
    tmp.replace(args.out)
    return len(catalog)


def run(args: argparse.Namespace) -> int:
    n = assign(args)
    print(f"{n} item SIDs written to {args.out}")
    return 0
