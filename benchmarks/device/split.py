"""Device side: a checkpoint's trained tensors (all but the frozen MiniLM embeddings and lower
layers, which are the base model's own) in files under 15 MB, since at most 16 MiB per file
come back from the GPU machine; `join.py` makes the checkpoint whole again here.

    python3 benchmarks/device/split.py CHECKPOINT OUT_DIR [PREFIX]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

from training.indexer.model import SemanticIndexer

PART_BYTES = 15e6


def main(ck: Path, out: Path, prefix: str = "") -> None:
    tensors = load_file(str(ck / "indexer.safetensors"))
    parts: list[dict] = [{}]
    size = 0
    for name, value in tensors.items():
        if name.startswith(SemanticIndexer.FROZEN_PREFIXES):
            continue
        if size + value.nbytes > PART_BYTES and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][name] = value
        size += value.nbytes
    for i, part in enumerate(parts):
        save_file(part, str(out / f"{prefix}trained{i}.safetensors"))
    for name in ("indexer.json", "train_log.jsonl"):
        shutil.copy(ck / name, out / f"{prefix}{name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
