"""The catalog trie in flat numpy arrays: which codes may follow each prefix of semantic codes.

Nodes at depth d are the distinct length-d prefixes of the catalog's paths, numbered in
lexicographic order (depth 0 is the root, node 0). Because of that order the children of a
node at depth d are a contiguous, code-sorted run of the depth-(d+1) nodes, so per level the
trie is CSR: ``offsets[d]`` (n_d + 1) delimits each node's run in ``codes[d]`` (n_{d+1}), and the
child's node id is simply its position in that run. ``keys[d] = parent * K_d + code`` is sorted
too, which makes (node, code) -> child a single ``searchsorted``. Bushy levels also get a
packed bit table (node, code), so that the masks of the beam search are a row gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROOT = 0


def _index_dtype(upper: int) -> type[np.signedinteger]:
    """int32 where every value fits (half the memory), int64 otherwise."""
    return np.int32 if upper < np.iinfo(np.int32).max else np.int64


def _code_dtype(codebook: int) -> type[np.unsignedinteger]:
    return np.uint8 if codebook <= 256 else np.uint16 if codebook <= 65536 else np.uint32


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner of each element, start + i) for the runs [start, start + length), concatenated."""
    owner = np.repeat(np.arange(len(starts)), lengths)
    ends = np.cumsum(lengths)
    pos = np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
    return owner, pos


@dataclass(frozen=True, eq=False)
class CompactTrie:
    """Prefix trie over (N, L) semantic codes; build it with `from_codes`."""

    codebook_sizes: tuple[int, ...]
    offsets: tuple[np.ndarray, ...]  # per depth d < L: (n_d + 1,) child runs of each node
    codes: tuple[np.ndarray, ...]  # per depth d < L: (n_{d+1},) child codes, sorted per node
    keys: tuple[np.ndarray, ...]  # per depth d < L: (n_{d+1},) parent * K_d + code, ascending
    # per depth d < L: (n_d, ceil(K_d / 8)) packed allowed-code bits, or None (see from_codes)
    bitmaps: tuple[np.ndarray | None, ...]
    n_items: int

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, codebook_sizes: Sequence[int], *, bitmaps: bool | None = None
    ) -> CompactTrie:
        """Build from (N, L) integer codes (duplicates allowed); codes[:, l] must be in [0, K_l).

        `bitmaps` adds a packed (node, code) bit table per level, which makes `allowed_mask` a
        row gather instead of a scatter of every child. None (default): only for the levels
        where the table is no larger than that level's CSR arrays (the top, bushy levels);
        True / False: every level / none (tests).
        """
        arr = np.asarray(codes)
        sizes = tuple(int(k) for k in codebook_sizes)
        _validate(arr, sizes)
        arr = arr.astype(np.int64, copy=False)
        n, levels = arr.shape
        rows = arr[np.lexsort(arr.T[::-1])]  # lexicographic order: column 0 is the primary key
        # new_prefix[i, d]: row i starts a new length-(d+1) prefix (differs in some column <= d)
        new_prefix = np.ones((n, levels), dtype=bool)
        new_prefix[1:] = np.logical_or.accumulate(rows[1:] != rows[:-1], axis=1)
        node = np.zeros(n, dtype=np.int64)  # each row's node at the current depth (root: 0)
        n_nodes = 1
        offsets, child_codes, keys, tables = [], [], [], []
        for d, k in enumerate(sizes):
            first = np.flatnonzero(new_prefix[:, d])  # first row of every depth-(d+1) node
            parent, code = node[first], rows[first, d]
            offsets.append(
                np.searchsorted(parent, np.arange(n_nodes + 1)).astype(_index_dtype(len(first)))
            )
            child_codes.append(code.astype(_code_dtype(k)))
            keys.append((parent * k + code).astype(_index_dtype(n_nodes * k)))
            csr_bytes = offsets[-1].nbytes + child_codes[-1].nbytes + keys[-1].nbytes
            dense = n_nodes * -(-k // 8) <= csr_bytes if bitmaps is None else bitmaps
            tables.append(_bitmap(parent, code, n_nodes, k) if dense else None)
            node = np.cumsum(new_prefix[:, d]) - 1
            n_nodes = len(first)
        return cls(sizes, tuple(offsets), tuple(child_codes), tuple(keys), tuple(tables), n)

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def root(self) -> int:
        return ROOT

    def n_nodes(self, depth: int) -> int:
        """Distinct prefixes of length `depth` (1 for the root, the distinct paths at L)."""
        return 1 if depth == 0 else len(self.codes[depth - 1])

    def children(self, level: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) of each depth-`level` node's children: their node ids at depth level+1
        are start..stop-1 and their codes ``codes[level][start:stop]``."""
        off = self.offsets[level]
        nodes = np.asarray(nodes, dtype=np.int64)
        return off[nodes].astype(np.int64), off[nodes + 1].astype(np.int64)

    def all_children(self, level: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every child of the depth-`level` nodes, as (index into `nodes`, child node id), in
        order of `nodes` then code; their codes are ``codes[level][child]``."""
        start, stop = self.children(level, nodes)
        return _concat_ranges(start, stop - start)

    def allowed_mask(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """(len(nodes), K_level) bool: True where the code follows the node in the catalog."""
        k, table = self.codebook_sizes[level], self.bitmaps[level]
        if table is not None:
            return np.unpackbits(table[nodes], axis=1, count=k).view(bool)
        owner, child = self.all_children(level, nodes)
        mask = np.zeros((len(nodes), k), dtype=bool)
        mask[owner, self.codes[level][child]] = True
        return mask

    def child(self, level: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Node id at depth level+1 of each (node, code), or -1 where it is not in the catalog
        (including node -1 and codes outside the codebook)."""
        k, keys = self.codebook_sizes[level], self.keys[level]
        nodes, codes = np.asarray(nodes, dtype=np.int64), np.asarray(codes, dtype=np.int64)
        # a node out of range gives a key below 0 or past the last key, so only codes need a
        # check; clipping keeps the key within the keys' dtype, so that searchsorted does not
        # upcast (copy) the whole key array (minimum/maximum: np.clip's own overhead is several
        # times theirs on a lone query's ten rows)
        query = np.minimum(np.maximum(nodes * k + codes, -1), self.n_nodes(level) * k)
        query = np.where((codes >= 0) & (codes < k), query, -1).astype(keys.dtype)
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[pos] == query, pos, -1)

    def node_of_path(self, paths: np.ndarray) -> np.ndarray:
        """(M, d) prefixes -> their depth-d node ids, -1 where the prefix is not in the catalog."""
        paths = np.asarray(paths, dtype=np.int64)
        if paths.ndim != 2 or paths.shape[1] > self.levels:
            raise ValueError(f"paths must be (M, d) with d <= {self.levels}, got {paths.shape}")
        node = np.full(len(paths), ROOT, dtype=np.int64)
        for d in range(paths.shape[1]):
            node = self.child(d, node, paths[:, d])
        return node

    def __contains__(self, path: Sequence[int]) -> bool:
        return bool(self.node_of_path(np.asarray([path], dtype=np.int64).reshape(1, -1))[0] >= 0)

    @property
    def nbytes(self) -> int:
        arrays = (*self.offsets, *self.codes, *self.keys, *self.bitmaps)
        return sum(a.nbytes for a in arrays if a is not None)

    def bytes_per_item(self) -> float:
        """Memory of the arrays divided by the number of catalog rows it was built from."""
        return self.nbytes / self.n_items


def _bitmap(parent: np.ndarray, code: np.ndarray, n_nodes: int, k: int) -> np.ndarray:
    bits = np.zeros((n_nodes, k), dtype=bool)
    bits[parent, code] = True
    return np.packbits(bits, axis=1)


def _validate(codes: np.ndarray, sizes: tuple[int, ...]) -> None:
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"a trie needs a non-empty (N, L) array of codes, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if len(sizes) != codes.shape[1]:
        raise ValueError(f"{codes.shape[1]} code columns but {len(sizes)} codebook sizes")
    for level, k in enumerate(sizes):
        if k < 1:
            raise ValueError(f"codebook size of level {level} must be >= 1, got {k}")
        col = codes[:, level]
        low, high = int(col.min()), int(col.max())
        if low < 0 or high >= k:
            raise ValueError(
                f"level {level} codes must be in [0, {k}), found values in [{low}, {high}]"
            )
