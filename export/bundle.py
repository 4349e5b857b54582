"""Writing a bundle (docs/bundle.md). The reader, and the names and version it checks, live in
`service/bundle.py`; this module only produces what that one accepts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import (
    FORMAT_VERSION,
    ITEM_IDS_FILE,
    ITEM_SIDS_FILE,
    ITEM_VECTORS_FILE,
    MANIFEST,
    TOKENIZER_FILE,
    file_digest,
    load_bundle,
    model_version_of,
)


def write_item_table(
    directory: Path, item_ids: Sequence[str], sids: np.ndarray, vectors: np.ndarray | None = None
) -> None:
    """items.ids.txt and items.sids.npy, and with `vectors` (N, D) items.vectors.npy (float16:
    half the size, and a cosine within about 1e-3 of the float32 one)."""
    bad = [i for i in item_ids if not i or "\n" in i or "\r" in i or i != i.strip()]
    if bad:
        raise ValueError(f"item ids must be non-empty single-line strings, e.g. {bad[0]!r}")
    if len(item_ids) != len(sids):
        raise ValueError(f"{len(item_ids)} item ids for {len(sids)} SIDs")
    (directory / ITEM_IDS_FILE).write_text("".join(f"{i}\n" for i in item_ids), encoding="utf-8")
    np.save(directory / ITEM_SIDS_FILE, np.ascontiguousarray(sids, dtype=np.int32))
    if vectors is not None:
        if len(vectors) != len(sids):
            raise ValueError(f"{len(vectors)} item vectors for {len(sids)} SIDs")
        np.save(directory / ITEM_VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float16))


def finish_bundle(
    staging: Path,
    out: Path,
    *,
    levels: int,
    codebook_sizes: Sequence[int],
    hidden_size: int,
    cache_entries: int,
    heads: int,
    tokenizer: dict[str, Any],
    graphs: dict[str, str],
    item_count: int,
    source: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Checksum every file in `staging`, write the manifest, validate the result with the
    gateway's own loader, then move it to `out` (so `out` is never a half-written bundle)."""
    files = {
        p.name: file_digest(p)
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    if TOKENIZER_FILE not in files:
        raise FileNotFoundError(f"{staging}: no {TOKENIZER_FILE}")
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version_of(files),
        "levels": levels,
        "codebook_sizes": list(codebook_sizes),
        "hidden_size": hidden_size,
        "decoder": {"cache_entries": cache_entries, "heads": heads},
        "tokenizer": {"file": TOKENIZER_FILE, **tokenizer},
        "graphs": graphs,
        "items": {
            "ids": ITEM_IDS_FILE,
            "sids": ITEM_SIDS_FILE,
            **({"vectors": ITEM_VECTORS_FILE} if ITEM_VECTORS_FILE in files else {}),
            "count": item_count,
        },
        "files": files,
        "source": source,
        **(extra or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
