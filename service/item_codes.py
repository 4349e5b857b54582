"""Item texts -> greedy codes and dense vectors with a bundle's graphs in ONNX Runtime, offline:
`sidserve export`'s item table and `sidserve load-items`' replay of upserted items. The same
calls as the gateway's `/v1/items/encode`, so both give exactly what it would for the texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.onnx_model import OnnxIndexer, codes_and_vectors
from service.tokenizer import BundleTokenizer, length_batches


def assign_items(
    model: OnnxIndexer,
    tokenizer: BundleTokenizer,
    texts: Sequence[str],
    levels: int,
    batch_size: int = 128,
    progress: bool = True,
    desc: str = "item SIDs (ONNX Runtime)",
) -> tuple[np.ndarray, np.ndarray]:
    """((N, levels) greedy codes, (N, D) float32 dense vectors) from one encoder pass per
    batch. Texts are batched by token length (less padding); the result is in input order."""
    from tqdm.auto import tqdm

    ids, mask = tokenizer.items(list(texts))  # one pass; batches are slices of it
    out = np.zeros((len(texts), levels), dtype=np.int64)
    vectors = np.zeros((len(texts), model.hidden), dtype=np.float32)
    bar = tqdm(total=len(texts), desc=desc, unit="item", disable=not progress)
    with bar:
        for idx, batch_ids, batch_mask in length_batches(ids, mask, batch_size):
            out[idx], vectors[idx] = codes_and_vectors(model, batch_ids, batch_mask, levels)
            bar.update(len(idx))
    return out, vectors
