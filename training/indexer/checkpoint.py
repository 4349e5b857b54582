"""Indexer checkpoints: safetensors weights + JSON config, never pickle.

A checkpoint directory holds `indexer.json` (the IndexerConfig, format version, base model
fingerprint, levels trained), `indexer.safetensors` (every weight and codebook, and the codes
assigned to the training catalog), and the encoder's HF `config.json` + tokenizer files, so it
loads without the base model package.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from training.indexer.config import IndexerConfig
from training.indexer.model import SemanticIndexer

FORMAT_VERSION = 1
CONFIG_FILE = "indexer.json"
WEIGHTS_FILE = "indexer.safetensors"


def save_checkpoint(
    out: str | Path, model: SemanticIndexer, tokenizer, codes: np.ndarray, meta: dict
) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from training.encoder import minilm_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["item_codes"] = torch.from_numpy(np.ascontiguousarray(codes))
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS_FILE)  # a crash mid-write never leaves a half checkpoint
    AutoConfig.from_pretrained(minilm_path()).save_pretrained(out)
    tokenizer.save_pretrained(out)
    doc = {"format_version": FORMAT_VERSION, "indexer": asdict(model.cfg), **meta}
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out / CONFIG_FILE)  # the config (levels trained) is never half written either
    return out


# What a checkpoint written before a config key existed was trained with, where that differs
# from the key's default (so that it loads, and `--resume` goes on, as it was trained)
BEFORE_THE_KEY = {"bos_input": "learned", "judged_negatives": 0, "encoder_init": "minilm"}


def load_checkpoint(path: str | Path) -> tuple[SemanticIndexer, object, np.ndarray, dict]:
    """(model in eval mode, tokenizer, training-catalog codes, metadata)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name}; not an indexer checkpoint")
    doc = json.loads((path / CONFIG_FILE).read_text())
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {doc.get('format_version')}, "
            f"this code reads {FORMAT_VERSION}"
        )
    cfg = IndexerConfig(**{**BEFORE_THE_KEY, **doc["indexer"]})
    model = SemanticIndexer(cfg, encoder_dir=path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    codes = tensors.pop("item_codes").numpy()
    model.load_state_dict(tensors)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path), codes, doc
