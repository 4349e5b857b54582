"""Device side: `.gpu/minilm/packed.safetensors` (see pack.py) -> a full-shape HF model directory.

python3 benchmarks/device/rebuild.py .gpu/minilm /tmp/minilm
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def main(src: Path, dst: Path) -> None:
    w = load_file(str(src / "packed.safetensors"))
    ids, rows, shape = w.pop("word_ids"), w.pop("word_rows"), w.pop("word_shape")
    words = np.zeros(tuple(int(s) for s in shape), dtype=rows.dtype)
    words[ids] = rows
    w["embeddings.word_embeddings.weight"] = words
    pos = w["embeddings.position_embeddings.weight"]
    full = np.zeros((512, pos.shape[1]), dtype=pos.dtype)  # MiniLM's max_position_embeddings
    full[: len(pos)] = pos
    w["embeddings.position_embeddings.weight"] = full
    d = int(shape[1])
    w["pooler.dense.weight"] = np.zeros((d, d), dtype=np.float32)
    w["pooler.dense.bias"] = np.zeros(d, dtype=np.float32)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(w, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.name != "packed.safetensors":
            shutil.copy(f, dst / f.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
