"""A tiny randomly initialised indexer checkpoint and its exported bundle, built once per test
session (MiniLM encoder weights, random decoder and codebooks: export must reproduce whatever
the weights are)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_csv
from tests.indexer_toy import tiny_config, toy_rows


def make_tiny_checkpoint(out: Path, levels: int = 2, codebook_size: int = 8) -> Path:
    import torch
    from transformers import AutoTokenizer

    from training.encoder import minilm_path
    from training.indexer.checkpoint import save_checkpoint
    from training.indexer.model import SemanticIndexer

    torch.manual_seed(0)
    cfg = tiny_config(levels=levels, codebook_size=codebook_size, epochs_per_level=[1.0] * levels)
    model = SemanticIndexer(cfg)
    for level in range(levels):
        model.set_codebook(level, torch.randn(codebook_size, model.dim))
    model.eval()
    codes = np.zeros((0, levels), dtype=np.int64)
    return save_checkpoint(out, model, AutoTokenizer.from_pretrained(minilm_path()), codes, {})


def write_toy_data(directory: Path) -> tuple[Path, Path]:
    products, judgments = toy_rows()
    catalog = write_csv(
        directory / "catalog.csv", ["product_uid", "title", "description"], products
    )
    pairs = write_csv(directory / "judgments.csv", ["query", "product_uid", "relevance"], judgments)
    return catalog, pairs


def export_args(checkpoint: Path, catalog: Path, judgments: Path | None, out: Path, **kw):
    from export.command import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    argv = ["--checkpoint", str(checkpoint), "--catalog", str(catalog), "--out", str(out)]
    if judgments is not None:
        argv += ["--judgments", str(judgments)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{'checkpoint', 'catalog', 'judgments', 'bundle', 'summary'} of one tiny export."""
    from export.command import export

    root = tmp_path_factory.mktemp("tiny_export")
    checkpoint = make_tiny_checkpoint(root / "checkpoint")
    catalog, judgments = write_toy_data(root)
    bundle = root / "bundle"
    summary = export(export_args(checkpoint, catalog, judgments, bundle))
    return {
        "checkpoint": checkpoint,
        "catalog": catalog,
        "judgments": judgments,
        "bundle": bundle,
        "summary": summary,
    }
