"""Tokenisation with the bundle's `tokenizer.json` (HF `tokenizers`: no torch, no transformers).

Gives the same ids as the training side's `AutoTokenizer(..., truncation=True, max_length=n,
padding=True)`: [CLS] … [SEP], cut to n tokens including the special ones, right-padded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.bundle import TokenizerSpec


class BundleTokenizer:
    def __init__(self, path: str | Path, spec: TokenizerSpec):
        self.spec = spec
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, S) int64, mask (B, S) int64), S = the longest text after truncation."""
        if not texts:
            raise ValueError("nothing to tokenise")
        encs = self._tok.encode_batch(list(texts))
        return pad_rows(
            [_truncate(e.ids, max_length, self.spec.sep_id) for e in encs], self.spec.pad_id
        )

    def queries(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode(texts, self.spec.max_query_tokens)

    def items(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode(texts, self.spec.max_item_tokens)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows right-padded to the longest: (ids (B, S) int64, mask (B, S) int64)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def length_batches(
    ids: np.ndarray, mask: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tokenised rows sorted by length and cut into chunks of `size`, each trimmed to its
    longest row (little padding): (row indices, ids, mask) per chunk."""
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), max(1, size)):
        idx = order[start : start + size]
        width = int(lengths[idx].max())
        yield idx, ids[idx, :width], mask[idx, :width]


def _truncate(ids: list[int], max_length: int, sep_id: int) -> list[int]:
    """Keep the first max_length - 1 tokens and end with [SEP], as HF truncation does."""
    if len(ids) <= max_length:
        return ids
    return [*ids[: max_length - 1], sep_id]
