"""Shared fixtures: a tiny catalog and judgments written at test time, and an isolated cache."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

pytest_plugins = ["tests.export_fixtures", "tests.redis_server", "tests.triton_server"]

# Three clearly different departments; each query has a relevant product and a judged miss.
PRODUCTS = [
    ("p1", "Cordless Drill 20V Lithium-Ion with Battery", ""),
    ("p2", "Impact Driver Kit 18V Brushless", ""),
    ("p3", "Circular Saw 7-1/4 in. Corded", ""),
    ("p4", "Interior Latex Paint Eggshell White 1 gal.", ""),
    ("p5", "Exterior Wood Stain Semi-Transparent Cedar", ""),
    ("p6", "Paint Roller Cover 9 in. Microfiber", ""),
    ("p7", "Single Handle Kitchen Faucet Chrome", ""),
    ("p8", "Toilet Flapper Replacement Kit", ""),
    ("p9", "Shower Head High Pressure Rain", ""),
    ("p10", "", "PVC Pipe 2 in. x 10 ft. Schedule 40"),  # title empty: description is used
]
JUDGMENTS = [
    ("cordless drill", "p1", 3.0),
    ("cordless drill", "p4", 1.0),
    ("impact driver", "p2", 3.0),
    ("impact driver", "p1", 2.33),
    ("circular saw", "p3", 3.0),
    ("white paint", "p4", 3.0),
    ("white paint", "p7", 1.0),
    ("wood stain", "p5", 2.67),
    ("paint roller", "p6", 3.0),
    ("kitchen faucet", "p7", 3.0),
    ("kitchen faucet", "p8", 1.33),
    ("toilet flapper", "p8", 3.0),
    ("rain shower head", "p9", 3.0),
    ("pvc pipe", "p10", 3.0),
    ("cordless drill", "p999", 3.0),  # unknown product: dropped and counted
]


def write_csv(path: Path, header: list[str], rows: list[tuple], gz: bool = False) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tiny_catalog(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "products.csv.gz", ["product_uid", "title", "description"], PRODUCTS, gz=True
    )


@pytest.fixture
def tiny_judgments(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "judgments.csv", ["query", "product_uid", "relevance"], JUDGMENTS)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SIDSERVE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
