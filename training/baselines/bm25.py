"""BM25 over product titles (bm25s)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BM25Retriever:
    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self._bm25s = bm25s
        self.n_items = len(texts)
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False))

    def rank(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        """Top-k item indices per query; items with a zero score are not returned."""
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        k = min(k, self.n_items)
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(docs, scores, strict=True):
            # bm25s orders by score; make ties deterministic (lower index first)
            order = np.lexsort((row_docs, -row_scores))
            keep = row_scores[order] > 0
            out.append(np.asarray(row_docs[order][keep], dtype=np.int64))
        return out
