"""The embedded SidStore: the bundle's item table in numpy arrays, in the gateway process.

Loaded table ("base"), per depth d = 1..L: the rows sorted by (depth-d prefix, catalog
position), `order[d]`, with `offsets[d]` delimiting each prefix's run; prefixes are numbered
by the catalog trie (`CompactTrie.node_of_path`), so finding a beam's list is a searchsorted
per level. Item id -> row is a searchsorted over the sorted ids. About 8 L + 25 bytes per
item besides the id strings themselves (49 for L = 3); `stats()` reports the measured total.

Upserts ("delta") are rare and small, so they live in dicts beside the arrays: an item that
moves leaves the base lists for good (marked in `moved`, filtered at read time) and, like new
items, is appended to per-prefix Python lists read after the base run. That is the order of
Redis's lists (moved items go to the end), so both stores rank identically. Upserted
vectors are a dict by item id, float16 like Redis's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.bundle import Bundle
from service.stores.base import (
    NO_VECTORS,
    Candidates,
    Lookup,
    Path,
    Vectors,
    assign_sids,
    check_ids,
    check_items,
    check_texts,
    check_vectors,
    fetch_size,
    pick_ranked,
    plan_probes,
)
from service.trie import CompactTrie


class MemoryStore:
    """SidStore over in-process arrays; build it with `from_bundle` or `from_arrays`."""

    shared = False

    def __init__(self, item_ids: Sequence[str], sids: np.ndarray, model_version: str) -> None:
        table = np.asarray(sids)
        if table.ndim != 2 or table.shape[1] < 2 or len(table) != len(item_ids):
            raise ValueError(f"{len(item_ids)} ids for a SID table of shape {table.shape}")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("repeated item ids")
        if table.size and table.min() < 0:
            raise ValueError("SID codes must be non-negative")
        self.model_version = model_version
        self.levels = table.shape[1] - 1
        self._lock = asyncio.Lock()
        self._n_base = n = len(table)
        self._ids = np.array(list(item_ids), dtype=object)  # row -> id (grows with upserts)
        self._id_order = np.argsort(self._ids, kind="stable").astype(
            np.int32 if n < 2**31 else np.int64
        )
        self._sorted_ids = self._ids[self._id_order]
        self._sids = np.array(table, dtype=np.int32)  # row -> SID (grows with upserts)
        self._count = n  # rows in use
        self._moved = np.zeros(n, dtype=bool)  # base rows that left their base lists
        self._n_moved = 0
        self._deleted = np.zeros(n, dtype=bool)  # base rows whose item was deleted
        self._n_items = n  # stored items (rows less deleted ones)
        self._new_ids: dict[str, int] = {}  # upserted ids not in the base -> row
        self._delta: list[dict[Path, list[int]]] = [{} for _ in range(self.levels)]
        self._next: dict[Path, int] = {}  # path -> next free code, once a path was upserted
        self._vectors: dict[str, np.ndarray] = {}  # upserted id -> (D,) float16
        self._trie: CompactTrie | None = None
        self._order: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._base_next = np.zeros(0, dtype=np.int32)  # per full path: highest base code + 1
        self._base_left = np.zeros(0, dtype=np.int64)  # per full path: base rows still on it
        self._base_paths = np.zeros((0, self.levels), dtype=np.int64)  # the full paths
        self._path_changes = 0  # paths emptied or (re)filled since the load (`path_version`)
        if n:
            self._build_base()

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> MemoryStore:
        return cls(bundle.item_ids, bundle.item_sids, bundle.model_version)

    @classmethod
    def from_arrays(
        cls, item_ids: Sequence[str], sids: np.ndarray, model_version: str
    ) -> MemoryStore:
        return cls(item_ids, sids, model_version)

    def _build_base(self) -> None:
        paths = self._sids[:, : self.levels]
        sizes = [int(k) + 1 for k in paths.max(axis=0)]
        self._trie = CompactTrie.from_codes(paths, sizes, bitmaps=False)
        index = np.int32 if self._n_base < np.iinfo(np.int32).max else np.int64
        for depth in range(1, self.levels + 1):
            node = self._trie.node_of_path(paths[:, :depth])
            self._order.append(np.argsort(node, kind="stable").astype(index))
            counts = np.bincount(node, minlength=self._trie.n_nodes(depth))
            self._offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(index))
        codes = self._sids[self._order[-1], self.levels]
        self._base_next = np.maximum.reduceat(codes, self._offsets[-1][:-1]) + 1
        self._base_left = np.diff(self._offsets[-1]).astype(np.int64)
        first = self._order[-1][self._offsets[-1][:-1]]  # one base row per full path
        self._base_paths = paths[first].astype(np.int64)  # before any upsert moves a row

    # ---------------------------------------------------------------- reads

    def _row_of(self, item_id: str) -> int | None:
        row = self._new_ids.get(item_id)
        if row is not None or not self._n_base:
            return row
        pos = int(np.searchsorted(self._sorted_ids, item_id))
        if pos < self._n_base and self._sorted_ids[pos] == item_id:
            row = int(self._id_order[pos])
            return None if self._deleted[row] else row
        return None

    def _base_runs(self, depth: int, prefixes: np.ndarray) -> list[np.ndarray]:
        """The base run of each (M, depth) prefix (empty where it is not in the base)."""
        if self._trie is None:
            return [np.zeros(0, dtype=np.int64)] * len(prefixes)
        nodes = self._trie.node_of_path(prefixes)
        order, offsets = self._order[depth - 1], self._offsets[depth - 1]
        return [order[offsets[v] : offsets[v + 1]] if v >= 0 else order[:0] for v in nodes]

    def _head(self, run: np.ndarray, extra: list[int], size: int) -> list[int]:
        """First `size` rows of a prefix list: its base run less moved rows, then the delta."""
        head = run[: size + self._n_moved]  # at most n_moved of them are gone
        if self._n_moved:
            head = head[~self._moved[head]]
        rows = head[:size].tolist()
        return rows + extra[: size - len(rows)]

    def _one(self, paths: np.ndarray, limit: int, min_depth: int) -> Candidates:
        probes = plan_probes(paths, self.levels, min_depth)
        if limit <= 0 or not probes:
            return Candidates.empty(self.levels)
        size = fetch_size(limit)
        lists: list[list[int]] = [[] for _ in probes]
        by_depth: dict[int, list[int]] = {}
        for i, probe in enumerate(probes):
            by_depth.setdefault(probe.depth, []).append(i)
        for depth, members in by_depth.items():
            prefixes = np.array([probes[i].prefix for i in members], dtype=np.int64)
            runs = self._base_runs(depth, prefixes.reshape(len(members), depth))
            for i, run in zip(members, runs, strict=True):
                extra = self._delta[depth - 1].get(probes[i].prefix, [])
                lists[i] = self._head(run, extra, size)
        rows = np.array(pick_ranked(lists, limit), dtype=np.int64)
        ids = [str(i) for i in self._ids[rows]]
        return Candidates(ids, self._sids[rows], self._stored_vectors(ids))

    def _stored_vectors(self, ids: Sequence[str]) -> Vectors:
        if not self._vectors:
            return NO_VECTORS
        found = ((k, self._vectors.get(i)) for k, i in enumerate(ids))
        return {k: v.astype(np.float32) for k, v in found if v is not None}

    async def candidates(self, paths: np.ndarray, limit: int, min_depth: int = 0) -> Candidates:
        return self._one(paths, limit, min_depth)

    async def candidates_many(
        self, paths: Sequence[np.ndarray], limit: int, min_depth: int = 0
    ) -> list[Candidates]:
        return [self._one(p, limit, min_depth) for p in paths]

    async def get_sids(self, item_ids: Sequence[str]) -> list[np.ndarray | None]:
        rows = [self._row_of(i) for i in item_ids]
        return [None if r is None else self._sids[r].copy() for r in rows]

    async def lookup(self, item_ids: Sequence[str]) -> Lookup:
        return Lookup(await self.get_sids(item_ids), self._stored_vectors(item_ids))

    # ---------------------------------------------------------------- writes

    def _next_code(self, path: Path) -> int:
        code = self._next.get(path)
        if code is not None:
            return code
        leaf = self._leaf_of(path)
        return int(self._base_next[leaf]) if leaf >= 0 else 0

    def _assign(
        self, items: Sequence[tuple[str, np.ndarray]]
    ) -> tuple[list[str], np.ndarray, dict[Path, int]]:
        ids, paths = check_items(items, self.levels)
        stored = [None if r is None else self._sids[r] for r in map(self._row_of, ids)]
        sids, counters = assign_sids(ids, paths, stored, self._next_code, self.levels)
        return ids, sids, counters

    async def preview(self, items: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        return self._assign(items)[1]

    async def upsert(
        self,
        items: Sequence[tuple[str, np.ndarray]],
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
    ) -> np.ndarray:
        check_texts(texts, len(items))  # validated like Redis's, then not kept (one version)
        async with self._lock:  # no await inside: one call is applied as a whole
            ids, sids, counters = self._assign(items)
            stored = check_vectors(vectors, len(ids))
            for k, (item_id, sid) in enumerate(zip(ids, sids, strict=True)):
                if stored is None:
                    self._vectors.pop(item_id, None)
                else:
                    self._vectors[item_id] = stored[k]
                row = self._row_of(item_id)
                if row is None:
                    row = self._append_row(item_id)
                    self._n_items += 1
                elif (self._sids[row] == sid).all():
                    continue
                else:
                    self._unlist(row)
                self._sids[row] = sid
                path = tuple(sid[: self.levels].tolist())
                if not self._on_path(path):
                    self._path_changes += 1
                for depth in range(1, self.levels + 1):
                    self._delta[depth - 1].setdefault(path[:depth], []).append(row)
            self._next.update(counters)
        return sids

    async def delete(self, item_ids: Sequence[str]) -> list[bool]:
        ids = check_ids(item_ids)
        async with self._lock:  # no await inside: one call is applied as a whole
            out = []
            for item_id in ids:
                self._vectors.pop(item_id, None)
                row = self._row_of(item_id)
                out.append(row is not None)
                if row is None:
                    continue
                self._unlist(row)
                if self._new_ids.pop(item_id, None) is None:
                    self._deleted[row] = True  # a base row: its id stays in the sorted ids
                self._n_items -= 1
        return out

    def _unlist(self, row: int) -> None:
        """Take a row out of every prefix list it is in (its base runs, or delta lists)."""
        path = tuple(self._sids[row, : self.levels].tolist())
        if row < self._n_base and not self._moved[row]:
            self._moved[row] = True
            self._n_moved += 1
            self._base_left[self._leaf_of(path)] -= 1
        else:
            for depth in range(1, self.levels + 1):
                self._delta[depth - 1][path[:depth]].remove(row)
        if not self._on_path(path):
            self._path_changes += 1

    def _leaf_of(self, path: Path) -> int:
        """The base trie's node of a full path; -1 when no base item was on it."""
        if self._trie is None:
            return -1
        return int(self._trie.node_of_path(np.array([path], dtype=np.int64))[0])

    def _on_path(self, path: Path) -> int:
        """How many items the full path holds now."""
        leaf = self._leaf_of(path)
        base = int(self._base_left[leaf]) if leaf >= 0 else 0
        return base + len(self._delta[-1].get(path, ()))

    async def path_version(self) -> str:
        return str(self._path_changes)

    async def live_paths(self) -> tuple[str, np.ndarray]:
        base = self._base_paths[self._base_left > 0]
        added = [path for path, rows in self._delta[-1].items() if rows]
        paths = np.concatenate([base, np.array(added, dtype=np.int64).reshape(-1, self.levels)])
        return str(self._path_changes), np.unique(paths, axis=0)

    def _append_row(self, item_id: str) -> int:
        if self._count == len(self._sids):
            size = max(16, 2 * len(self._sids))
            self._sids = np.concatenate(
                [self._sids, np.zeros_like(self._sids, shape=(size - self._count, self.levels + 1))]
            )
            self._ids = np.concatenate([self._ids, np.empty(size - self._count, dtype=object)])
        row = self._count
        self._count += 1
        self._ids[row] = item_id
        self._new_ids[item_id] = row
        return row

    # ---------------------------------------------------------------- admin

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def nbytes(self) -> int:
        """Bytes held for the table: arrays, trie, id strings, upserted vectors, plus ~100 per
        upsert entry."""
        arrays = [self._sids, self._moved, self._deleted, self._id_order, self._base_next]
        arrays += [self._base_left, self._base_paths]
        total = sum(a.nbytes for a in [*arrays, *self._order, *self._offsets])
        total += self._ids.nbytes + self._sorted_ids.nbytes
        total += self._trie.nbytes if self._trie is not None else 0
        total += sum(sys.getsizeof(i) for i in self._ids[: self._count])
        delta = sum(len(v) for d in self._delta for v in d.values())
        total += sum(v.nbytes for v in self._vectors.values())
        return total + 100 * (len(self._new_ids) + len(self._next) + delta + len(self._vectors))

    def stats(self) -> dict[str, Any]:
        nbytes = self.nbytes()
        return {
            "backend": "memory",
            "model_version": self.model_version,
            "levels": self.levels,
            "items": self._n_items,
            "upserted": len(self._new_ids) + self._n_moved,
            "bytes": nbytes,
            "bytes_per_item": nbytes / self._n_items if self._n_items else 0.0,
        }
