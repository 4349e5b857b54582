"""Here: a whole checkpoint from what `split.py` sent back and this machine's MiniLM, whose frozen
layers are the ones the GPU run used. The base fingerprint becomes this machine's (the token
state cache is keyed by it).

    python benchmarks/device/join.py FILES_DIR [PREFIX] --out CHECKPOINT
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> int:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from training.encoder import file_digest, minilm_path
    from training.indexer.checkpoint import save_checkpoint
    from training.indexer.config import IndexerConfig
    from training.indexer.model import SemanticIndexer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", type=Path)
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    doc = json.loads((args.files / f"{args.prefix}indexer.json").read_text())
    model = SemanticIndexer(IndexerConfig(**doc["indexer"]))
    state = model.state_dict()
    got = {}
    for f in sorted(args.files.glob(f"{args.prefix}trained*.safetensors")):
        got.update(load_file(str(f)))
    codes = got.pop("item_codes").numpy()
    frozen = SemanticIndexer.FROZEN_PREFIXES
    missing = [k for k in state if not k.startswith(frozen) and k not in got]
    if missing:
        raise SystemExit(f"{args.files}: no {', '.join(missing)}")
    state.update(got)
    model.load_state_dict(state)
    meta = {k: v for k, v in doc.items() if k not in ("format_version", "indexer")}
    meta["base_fingerprint"] = file_digest(minilm_path() / "model.safetensors")[:16]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    save_checkpoint(args.out, model, tokenizer, codes, meta)
    shutil.copy(args.files / f"{args.prefix}train_log.jsonl", args.out / "train_log.jsonl")
    print(f"checkpoint written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
