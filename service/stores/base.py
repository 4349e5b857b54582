"""The SidStore protocol, and the ranking and SID assignment both stores share.

A store holds one model version's item table (item id -> SID, SID = L semantic codes + one
disambiguation code) and, per prefix of the semantic path (depth 1..L), the items under it in
insertion order. `candidates` turns the beam search's paths into items:

    rank = (deepest prefix shared with any beam: desc,
            first beam that shares that deepest prefix: asc,
            position in that prefix's list (catalog, then upsert order): asc)

This is the beam order; with `order: similarity` the gateway reads a larger pool in it and
re-orders that pool itself (`serving.py`), so the stores know one rule only.

`plan_probes` lists the prefix lists to read in that order and `pick_ranked` walks what was
read; `assign_sids` is the upsert rule. An upsert may carry the items' dense vectors (the
gateway's `similarity`): the store keeps the latest one per item id, replaced or dropped by
the item's next upsert, and hands it back with the item's SID wherever it reads that SID.
The stores differ only in how they fetch and write (one Redis round trip, or numpy arrays),
so neither rule can drift between them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

from sidserve.sids import format_sid

__all__ = [
    "NO_VECTORS",
    "Candidates",
    "Lookup",
    "Probe",
    "SidStore",
    "StoreUnavailable",
    "Vectors",
    "assign_sids",
    "check_items",
    "check_paths",
    "check_vectors",
    "fetch_size",
    "format_sid",
    "parse_sid_text",
    "parse_sids",
    "pick_ranked",
    "plan_probes",
]

H = TypeVar("H", bound=Hashable)
Path = tuple[int, ...]


class StoreUnavailable(Exception):
    """The store cannot answer now (unreachable, timed out, version not loaded): a 503."""


# position in a result -> the (D,) float32 vector its item was upserted with
Vectors = Mapping[int, np.ndarray]
NO_VECTORS: Vectors = MappingProxyType({})


class Candidates(NamedTuple):
    """Ranked items of one query: ids and their full SIDs (n, L+1) int32, best first, the
    upserted vectors among them by position (items of the bundle's table have none), and
    the SIDs' string form (`format_sid`) where the store read them as strings (Redis), so
    that the gateway need not format them again; None where it did not (in process)."""

    item_ids: list[str]
    sids: np.ndarray
    vectors: Vectors = NO_VECTORS
    sid_texts: list[str] | None = None

    @classmethod
    def empty(cls, levels: int) -> Candidates:
        return cls([], np.zeros((0, levels + 1), dtype=np.int32))


class Lookup(NamedTuple):
    """Stored items by id: the full SID ((L+1,) int32) of each asked id, None for ids not in
    the table, and the upserted vectors among them by position."""

    sids: list[np.ndarray | None]
    vectors: Vectors = NO_VECTORS


@dataclass(frozen=True)
class Probe:
    """One prefix list to read: the depth-`depth` prefix of beam `beam`."""

    depth: int
    beam: int
    prefix: Path


@runtime_checkable
class SidStore(Protocol):
    """One model version's item SIDs. Every method may raise StoreUnavailable."""

    model_version: str
    levels: int
    # other gateways write to it too (Redis), so a gateway's trie must poll its paths
    shared: bool

    async def candidates(self, paths: np.ndarray, limit: int, min_depth: int = 0) -> Candidates:
        """Items sharing a prefix of depth >= max(1, min_depth) with a beam of `paths`
        ((K, L) int, best beam first), ranked as in the module docstring, at most `limit`."""
        ...

    async def candidates_many(
        self, paths: Sequence[np.ndarray], limit: int, min_depth: int = 0
    ) -> list[Candidates]:
        """`candidates` of several queries at once (one Redis round trip for all)."""
        ...

    async def get_sids(self, item_ids: Sequence[str]) -> list[np.ndarray | None]:
        """The full SID ((L+1,) int32) of each id, None for ids not in the table."""
        ...

    async def lookup(self, item_ids: Sequence[str]) -> Lookup:
        """`get_sids` with the items' upserted vectors, in one read."""
        ...

    async def upsert(
        self,
        items: Sequence[tuple[str, np.ndarray]],
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Store (item id, (L,) semantic codes) pairs; their SIDs (n, L+1) int32, see
        `assign_sids`. `vectors` (n, D): each item's dense vector, kept (as float16) until its
        next upsert; without them an item's earlier vector is dropped. `texts`: the items'
        texts, which a store shared by model versions keeps in its upserts journal so that
        loading the next version re-encodes them (Redis; the in-process store lives and dies
        with one version and ignores them). Atomic per call."""
        ...

    async def preview(self, items: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        """The SIDs `upsert` would give now, without storing anything."""
        ...

    async def delete(self, item_ids: Sequence[str]) -> list[bool]:
        """Remove items: their SIDs, prefix-list entries and vectors; per id, whether it was
        stored. A removed SID is never handed out again (the path's counter stays), and an
        upsert of the id later stores it anew. A store shared by model versions also drops
        the id from its upserts journal and records it as deleted, so that loads of this or
        the next version leave it out (Redis). Atomic per call."""
        ...

    async def path_version(self) -> str:
        """A cheap token that changes whenever the set of live paths (`live_paths`) may have
        changed: an item on a new path, or the last item of a path deleted or moved away."""
        ...

    async def live_paths(self) -> tuple[str, np.ndarray]:
        """(`path_version`, (P, L) int64 semantic paths holding at least one item), from one
        consistent state: what each gateway's trie should hold, so beams never end on a path
        whose items were all deleted or moved."""
        ...

    async def ping(self) -> None:
        """Return when the store can serve this version, else raise StoreUnavailable."""
        ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


_DIGITS_AND_DASHES = str.maketrans("", "", "0123456789-")


def parse_sids(texts: Sequence[str], width: int) -> np.ndarray:
    """'-'-joined SID strings -> (n, width) int32; ValueError for other characters, empty
    codes, or a total other than n * width codes."""
    return _parse_joined_codes("-".join(texts), len(texts), width)


def parse_sid_text(text: str, n: int, width: int) -> np.ndarray:
    """n SIDs joined by ',' in one string -> (n, width) int32; ValueError as `parse_sids`."""
    return _parse_joined_codes(text.replace(",", "-"), n, width)


def _parse_joined_codes(joined: str, n: int, width: int) -> np.ndarray:
    """The codes of n SIDs, all joined by '-' in one string -> (n, width) int32.

    It runs on the event loop for every candidate of a query (500 by default): one C-level
    parse of the whole text, about 4x faster than numpy converting a list of strings. Only
    ASCII digits and single inner separators pass the check, so the parse reads every code."""
    if n == 0:
        if joined:
            raise ValueError(f"not 0 SIDs: {joined[:40]!r}")
        return np.zeros((0, width), dtype=np.int32)
    dashes_ok = "--" not in joined and not joined.startswith("-") and not joined.endswith("-")
    if not joined or joined.translate(_DIGITS_AND_DASHES) or not dashes_ok:
        raise ValueError(f"not SIDs (digits joined by '-'): {joined[:40]!r}")
    flat = np.fromstring(joined, dtype=np.int64, sep="-")
    if flat.size != n * width:
        raise ValueError(f"not {n} SIDs of {width} codes: {joined[:40]!r}")
    return flat.reshape(n, width).astype(np.int32)


def check_paths(paths: np.ndarray, levels: int) -> np.ndarray:
    """(K, L) non-negative integer paths as int64, or ValueError."""
    arr = np.asarray(paths)
    if arr.ndim != 2 or arr.shape[1] != levels:
        raise ValueError(f"paths must be (K, {levels}), got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
        raise ValueError("paths must hold non-negative integer codes")
    return arr.astype(np.int64, copy=False)


def check_items(
    items: Sequence[tuple[str, np.ndarray]], levels: int
) -> tuple[list[str], list[Path]]:
    """Upsert input -> (ids, paths), or ValueError naming what is wrong."""
    ids = check_ids([item_id for item_id, _ in items])
    if not items:
        return ids, []
    try:
        codes = check_paths(np.stack([np.asarray(c).reshape(-1) for _, c in items]), levels)
    except ValueError as exc:
        raise ValueError(f"semantic codes of the items: {exc}") from exc
    return ids, [tuple(row) for row in codes.tolist()]


def check_ids(item_ids: Sequence[str]) -> list[str]:
    """Item ids -> a list, or ValueError: non-empty single-line strings without surrounding
    whitespace (a newline would break the Redis lists' entries)."""
    ids = list(item_ids)
    bad = [i for i in ids if not isinstance(i, str) or not i or i != i.strip() or "\n" in i]
    if bad:
        raise ValueError(f"item ids must be non-empty single-line strings, e.g. {bad[0]!r}")
    return ids


def check_vectors(vectors: np.ndarray | None, n: int) -> np.ndarray | None:
    """Upsert vectors -> (n, D) float16 (how both stores keep them), or ValueError."""
    if vectors is None:
        return None
    arr = np.asarray(vectors)
    if arr.ndim != 2 or len(arr) != n or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"vectors must be a float array (n={n}, D), got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors must be finite")
    return arr.astype(np.float16)


def check_texts(texts: Sequence[str] | None, n: int) -> list[str] | None:
    """Upsert texts -> a list of n non-blank strings, or ValueError."""
    if texts is None:
        return None
    out = list(texts)
    if len(out) != n or not all(isinstance(t, str) and t.strip() for t in out):
        raise ValueError(f"texts must be {n} non-blank strings, one per item")
    return out


def plan_probes(paths: np.ndarray, levels: int, min_depth: int) -> list[Probe]:
    """The prefix lists to read, in rank order: depth L down to max(1, min_depth), beams in
    order; a prefix already listed by an earlier beam is skipped (it holds nothing new)."""
    probes: list[Probe] = []
    rows = [tuple(row) for row in check_paths(paths, levels).tolist()]
    for depth in range(levels, max(1, min_depth) - 1, -1):
        seen: set[Path] = set()
        for beam, row in enumerate(rows):
            prefix = row[:depth]
            if prefix not in seen:
                seen.add(prefix)
                probes.append(Probe(depth, beam, prefix))
    return probes


def fetch_size(limit: int) -> int:
    """Entries to read from the head of each list for an exact top-`limit`.

    A list is only read while fewer than `limit` items are picked, and an item occurs once
    per list, so among its first `limit` entries at most `picked` are already taken: the
    rest are enough to fill up to `limit`."""
    return max(0, limit)


def pick_ranked(lists: Sequence[Sequence[H]], limit: int) -> list[H]:
    """Walk the fetched lists (in `plan_probes` order) and keep the first `limit` distinct
    entries. An entry must name its item the same way in every list (a row index, or
    Redis's 'sid|id', which a consistent snapshot gives one spelling)."""
    picked: list[H] = []
    seen: set[H] = set()
    if limit <= 0:
        return picked
    for entries in lists:
        for entry in entries:
            if entry not in seen:
                seen.add(entry)
                picked.append(entry)
                if len(picked) == limit:
                    return picked
    return picked


def assign_sids(
    ids: Sequence[str],
    paths: Sequence[Path],
    stored: Sequence[np.ndarray | None],
    next_code: Callable[[Path], int],
    levels: int,
) -> tuple[np.ndarray, dict[Path, int]]:
    """The upsert rule, applied in order: an item whose stored SID has the same path keeps it;
    any other (new, or moved to another path) takes its path's next disambiguation code.
    Counters only grow, so a SID is never handed out twice, even after its item moved away.

    `stored`: the SIDs at the start of the call; `next_code(path)`: the stored counter.
    Returns the SIDs (n, L+1) int32 and the counters to store afterwards."""
    out = np.zeros((len(ids), levels + 1), dtype=np.int32)
    current: dict[str, tuple[int, ...]] = {}
    counters: dict[Path, int] = {}
    for k, (item_id, path) in enumerate(zip(ids, paths, strict=True)):
        sid = current.get(item_id)
        if sid is None and stored[k] is not None:
            sid = tuple(int(c) for c in stored[k])  # type: ignore[union-attr]
        if sid is None or sid[:levels] != path:
            code = counters[path] if path in counters else next_code(path)
            counters[path] = code + 1
            sid = (*path, code)
        current[item_id] = sid
        out[k] = sid
    return out, counters
