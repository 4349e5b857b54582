"""A toy catalog with four clearly different departments and queries for each product."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_csv
from training.data import Catalog, Judgments, load_catalog, load_judgments
from training.indexer.config import IndexerConfig

DEPARTMENTS = {
    "power tools": [
        "cordless drill",
        "impact driver",
        "circular saw",
        "angle grinder",
        "jig saw",
        "orbital sander",
    ],
    "paint": [
        "interior latex paint",
        "exterior wood stain",
        "paint roller cover",
        "spray primer",
        "deck sealer",
        "paint brush set",
    ],
    "plumbing": [
        "kitchen faucet",
        "toilet flapper",
        "shower head",
        "pvc pipe fitting",
        "sink drain trap",
        "water heater valve",
    ],
    "lighting": [
        "led light bulb",
        "ceiling fan light kit",
        "pendant lamp",
        "flood light",
        "under cabinet light",
        "string lights",
    ],
}
BRANDS = ["Ridgeway", "Corvex"]


def toy_rows() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, float]]]:
    products, judgments = [], []
    n = 0
    depts = list(DEPARTMENTS)
    for d, (dept, nouns) in enumerate(DEPARTMENTS.items()):
        other = DEPARTMENTS[depts[(d + 1) % len(depts)]]
        for k, noun in enumerate(nouns):
            for brand in BRANDS:
                n += 1
                pid = f"t{n}"
                products.append((pid, f"{brand} {noun.title()} for {dept.title()}", ""))
                judgments.append((noun, pid, 3.0))
                judgments.append((f"{brand.lower()} {noun}", pid, 3.0))
                judgments.append((f"{dept} {noun.split()[-1]}", pid, 2.67))
                judgments.append((other[k], pid, 1.0))  # another department: irrelevant
    return products, judgments


def tiny_config(**overrides) -> IndexerConfig:
    base = dict(
        levels=2,
        codebook_size=8,
        trainable_layers=1,
        decoder_layers=1,
        decoder_heads=4,
        decoder_ff=256,
        batch_items=16,
        group_size=4,
        warmup_epochs=1.0,
        epochs_per_level=[4.0, 4.0],
        head_lr=1e-3,
        lr=1e-4,
        max_query_tokens=16,
        max_item_tokens=24,
        dead_code_threshold=0.0,
        # the mechanics under test start from MiniLM as shipped; test_indexer_cli covers
        # the default's dense-ft start
        encoder_init="minilm",
    )
    base.update(overrides)
    return IndexerConfig(**base)


def load_toy(tmp: Path) -> tuple[Catalog, Judgments]:
    """The toy catalog and judgments, written as CSV under `tmp` and loaded as a run would."""
    products, judgments = toy_rows()
    cat = load_catalog(write_csv(tmp / "p.csv", ["product_uid", "title", "description"], products))
    j = load_judgments(
        write_csv(tmp / "j.csv", ["query", "product_uid", "relevance"], judgments), cat
    )
    return cat, j
