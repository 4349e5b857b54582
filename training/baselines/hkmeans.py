"""Hierarchical k-means semantic IDs (DSI-style) over fixed embeddings.

Level 1 clusters all items into `codebook_size` groups; each group is clustered again at the
next level, and so on. A group with no more items than codes gives every item its own code
(k-means with k = n is the identity). Queries get the top-K paths of the tree by summed squared
distance to the centroids along the path.
"""

from __future__ import annotations

import logging

import numpy as np

from training.sids import Trie, trie_beam_search

log = logging.getLogger(__name__)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k', d), labels) with empty clusters removed and labels renumbered."""
    if len(x) <= k:
        return x.copy(), np.arange(len(x), dtype=np.int64)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(x)
    used, labels = np.unique(km.labels_, return_inverse=True)
    return km.cluster_centers_[used].astype(np.float32), labels.astype(np.int64)


class HierarchicalKMeans:
    def __init__(self, levels: int = 3, codebook_size: int = 256, seed: int = 0):
        self.levels = levels
        self.codebook_size = codebook_size
        self.seed = seed
        self.centroids: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.codebook_size] * self.levels

    def fit(self, x: np.ndarray) -> np.ndarray:
        """Cluster the items; returns their (N, L) semantic codes."""
        from tqdm.auto import tqdm

        x = np.asarray(x, dtype=np.float32)
        codes = np.zeros((len(x), self.levels), dtype=np.int64)
        groups: list[tuple[tuple[int, ...], np.ndarray]] = [((), np.arange(len(x)))]
        for level in range(self.levels):
            nxt: list[tuple[tuple[int, ...], np.ndarray]] = []
            for prefix, members in tqdm(groups, desc=f"hkmeans level {level + 1}", leave=False):
                cents, labels = _kmeans(x[members], self.codebook_size, self.seed + level)
                self.centroids[prefix] = cents
                codes[members, level] = labels
                for c in range(len(cents)):
                    nxt.append((prefix + (c,), members[labels == c]))
            groups = nxt
        self.trie = Trie(codes)
        return codes

    def query_paths(self, q: np.ndarray, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`beam` (paths, scores) for one query vector; score = -sum of squared distances."""
        q = np.asarray(q, dtype=np.float32)

        def expand(level: int, prefix: tuple[int, ...], state: object, kids: np.ndarray):
            diff = self.centroids[prefix][kids] - q
            return -np.einsum("ij,ij->i", diff, diff), [None] * len(kids)

        return trie_beam_search(self.trie, beam, expand)
