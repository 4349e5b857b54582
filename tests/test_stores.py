"""The SidStore behaviour suite, run against both stores (in-process arrays and real Redis),
plus the Redis-only parts: key layout, `sidserve load-items`, unavailability."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from export.bundle import finish_bundle, write_item_table
from service.launcher import free_port
from service.load_items import load_table
from service.stores.base import SidStore, StoreUnavailable
from service.stores.memory import MemoryStore
from service.stores.redis_store import (
    ACTIVE_KEY,
    CLIENT_NAME,
    DELETED_KEY,
    UPSERTS_KEY,
    Keys,
    RedisStore,
)
from sidserve.cli import main as sidserve_main
from sidserve.sids import format_sid

ODD_IDS = ["a|b", "ü-1", "x y", "-", "p:1", "*"]  # ids the key/entry encodings must survive


# ------------------------------------------------------------------------------ helpers


def disambiguate(paths: np.ndarray, stride: int = 1) -> np.ndarray:
    """(N, L) -> (N, L+1); codes per path are 0, stride, 2*stride, ... (gaps are allowed)."""
    seen: dict[tuple[int, ...], int] = {}
    extra = []
    for row in map(tuple, paths.tolist()):
        extra.append(seen.get(row, 0) * stride)
        seen[row] = seen.get(row, 0) + 1
    return np.concatenate([paths, np.array(extra)[:, None]], axis=1).astype(np.int32)


def random_table(
    rng: np.random.Generator, n: int, levels: int, k: int
) -> tuple[list[str], np.ndarray]:
    paths = rng.integers(0, k, size=(n, levels))
    ids = [f"item-{i}" for i in range(n)]
    for j, odd in enumerate(ODD_IDS[: n // 3]):
        ids[3 * j] = odd
    return ids, disambiguate(paths, stride=int(rng.integers(1, 3)))


def random_beams(rng: np.random.Generator, sids: np.ndarray, levels: int, k: int) -> np.ndarray:
    """Beams that share prefixes with items and with each other, or with nothing."""
    beams: list[np.ndarray] = []
    for _ in range(int(rng.integers(0, 7))):
        kind = rng.integers(0, 3)
        if kind == 0 and len(sids):
            beam = sids[rng.integers(len(sids)), :levels].astype(np.int64)
        elif kind == 1 and beams:
            beam = beams[rng.integers(len(beams))].copy()
            cut = int(rng.integers(0, levels + 1))
            beam[cut:] = rng.integers(0, k + 1, size=levels - cut)
        else:
            beam = rng.integers(0, k + 1, size=levels)
        beams.append(beam)
    return np.array(beams, dtype=np.int64).reshape(len(beams), levels)


@dataclass
class Reference:
    """The store semantics, written the slow obvious way."""

    levels: int
    order: list[str] = field(default_factory=list)  # insertion order; a move goes to the end
    sid: dict[str, tuple[int, ...]] = field(default_factory=dict)
    next: dict[tuple[int, ...], int] = field(default_factory=dict)

    @classmethod
    def of(cls, ids: list[str], sids: np.ndarray) -> Reference:
        ref = cls(sids.shape[1] - 1)
        for item_id, row in zip(ids, sids.tolist(), strict=True):
            ref.order.append(item_id)
            ref.sid[item_id] = tuple(row)
            path = tuple(row[:-1])
            ref.next[path] = max(ref.next.get(path, 0), row[-1] + 1)
        return ref

    def upsert(self, item_id: str, path: tuple[int, ...]) -> tuple[int, ...]:
        old = self.sid.get(item_id)
        if old is not None and old[:-1] == path:
            return old
        code = self.next.get(path, 0)
        self.next[path] = code + 1
        if old is not None:
            self.order.remove(item_id)
        self.order.append(item_id)
        self.sid[item_id] = (*path, code)
        return self.sid[item_id]

    def delete(self, item_id: str) -> bool:
        """Gone from every list; its code is not handed out again (the counter stays)."""
        if self.sid.pop(item_id, None) is None:
            return False
        self.order.remove(item_id)
        return True

    def paths(self) -> set[tuple[int, ...]]:
        """The semantic paths holding at least one item."""
        return {sid[:-1] for sid in self.sid.values()}

    def candidates(self, beams: np.ndarray, limit: int, min_depth: int) -> list[str]:
        ranked = []
        for pos, item_id in enumerate(self.order):
            path = self.sid[item_id][:-1]
            depths = [_common(path, tuple(b)) for b in beams.tolist()]
            if depths and max(depths) >= max(1, min_depth):
                best = max(depths)
                ranked.append((-best, depths.index(best), pos, item_id))
        return [item_id for *_, item_id in sorted(ranked)[: max(0, limit)]]

    def lists(self, keys: Keys) -> dict[str, list[str]]:
        """Every prefix list Redis should hold, exactly."""
        out: dict[str, list[str]] = {}
        for item_id in self.order:
            sid = self.sid[item_id]
            text = "-".join(map(str, sid))
            for depth in range(1, self.levels + 1):
                out.setdefault(keys.prefix_list(sid[:depth]), []).append(f"{text}|{item_id}")
        return out


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < len(a) and a[n] == b[n]:
        n += 1
    return n


def dump(client: redis.Redis, pattern: str = "sidserve:*") -> dict[str, Any]:
    """Every key under `pattern` with its value, for exact comparisons."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=pattern, count=500):
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = client.smembers(key)
        else:
            out[key] = client.get(key)
    return out


def prefix_lists(client: redis.Redis, keys: Keys) -> dict[str, list[str]]:
    """All prefix lists of a version, found by SCAN (so stale lists cannot hide)."""
    return {
        key: client.lrange(key, 0, -1)
        for key in client.scan_iter(match=keys.list_stem + "*", count=500)
    }


@dataclass
class Backend:
    """Builds stores of one kind; `client` (sync, Redis only) is for inspecting keys."""

    kind: str
    url: str | None = None
    client: redis.Redis | None = None

    async def make(self, ids: list[str], sids: np.ndarray, version: str = "v1") -> SidStore:
        if self.client is None:
            return MemoryStore.from_arrays(ids, sids, version)
        assert self.url is not None
        load_table(self.client, version, ids, sids, batch=7)  # small batches: crossing them
        return RedisStore(self.url, version, sids.shape[1] - 1, timeout_s=2.0)

    def run(
        self,
        ids: list[str],
        sids: np.ndarray,
        body: Callable[[SidStore], Awaitable[Any]],
        version: str = "v1",
    ) -> Any:
        async def main() -> Any:
            store = await self.make(ids, sids, version)
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend("memory")
        return
    url = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    try:
        yield Backend("redis", url, client)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


def check_against(store: SidStore, ref: Reference, beams: np.ndarray, limit: int, depth: int):
    """Coroutine: the store's candidates equal the reference's, ids and SIDs."""

    async def check() -> None:
        found = await store.candidates(beams, limit, depth)
        want = ref.candidates(beams, limit, depth)
        assert found.item_ids == want, (beams.tolist(), limit, depth)
        assert found.sids.dtype == np.int32 and found.sids.shape == (len(want), ref.levels + 1)
        assert [tuple(r) for r in found.sids.tolist()] == [ref.sid[i] for i in want]

    return check()


# ------------------------------------------------------------------------------ reads


def test_candidates_match_brute_force(backend: Backend) -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        levels, k = int(rng.integers(1, 4)), int(rng.integers(2, 5))
        ids, sids = random_table(rng, int(rng.integers(0, 50)), levels, k)
        ref = Reference.of(ids, sids)
        beam_sets = [random_beams(rng, sids, levels, k) for _ in range(4)]

        async def body(store: SidStore, ref=ref, beam_sets=beam_sets, levels=levels) -> None:
            for beams in beam_sets:
                for depth in range(levels + 2):
                    for limit in (0, 1, 2, 5, 17, 1000):
                        await check_against(store, ref, beams, limit, depth)

        backend.run(ids, sids, body)


def test_candidates_many_is_candidates_per_query(backend: Backend) -> None:
    rng = np.random.default_rng(7)
    ids, sids = random_table(rng, 60, 3, 3)
    queries = [random_beams(rng, sids, 3, 3) for _ in range(6)]

    async def body(store: SidStore) -> None:
        many = await store.candidates_many(queries, 9, 1)
        assert len(many) == len(queries)
        for beams, found in zip(queries, many, strict=True):
            one = await store.candidates(beams, 9, 1)
            ids_many, sids_many, vectors, texts = found  # (item_ids, sids, vectors, sid_texts)
            assert ids_many == one.item_ids and vectors == one.vectors == {}
            np.testing.assert_array_equal(sids_many, one.sids)
            assert (texts or []) == (one.sid_texts or [])  # None: the store has no strings
            if texts is not None:  # the store read them as strings: format_sid's of the SIDs
                assert texts == [format_sid(row) for row in sids_many.tolist()]
        assert await store.candidates_many([], 5) == []

    backend.run(ids, sids, body)


def test_candidates_rejects_bad_paths(backend: Backend) -> None:
    ids, sids = random_table(np.random.default_rng(0), 10, 2, 3)

    async def body(store: SidStore) -> None:
        for bad in (np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.full((1, 2), -1)):
            with pytest.raises(ValueError, match="paths"):
                await store.candidates(bad, 5)

    backend.run(ids, sids, body)


def test_get_sids_known_and_unknown(backend: Backend) -> None:
    ids, sids = random_table(np.random.default_rng(1), 20, 3, 4)

    async def body(store: SidStore) -> None:
        asked = [ids[3], "nope", ids[0], "", ids[19], "a|b|c"]
        got = await store.get_sids(asked)
        assert [g is None for g in got] == [False, True, False, True, False, True]
        for item_id, sid in zip(asked, got, strict=True):
            if sid is not None:
                assert sid.dtype == np.int32
                np.testing.assert_array_equal(sid, sids[ids.index(item_id)])
        assert await store.get_sids([]) == []

    backend.run(ids, sids, body)


# ------------------------------------------------------------------------------ writes


def test_upsert_new_item_becomes_candidate(backend: Backend) -> None:
    ids = ["a", "b", "c"]
    sids = np.array([[1, 2, 0], [1, 2, 2], [3, 0, 0]], dtype=np.int32)

    async def body(store: SidStore) -> None:
        out = await store.upsert([("n1", np.array([1, 2])), ("n2", np.array([5, 5]))])
        # after the highest code the table used on the path (2), and 0 on a new path
        np.testing.assert_array_equal(out, [[1, 2, 3], [5, 5, 0]])
        assert out.dtype == np.int32
        found = await store.candidates(np.array([[1, 2]]), 10, 2)
        assert found.item_ids == ["a", "b", "n1"]
        found = await store.candidates(np.array([[5, 1]]), 10, 1)
        assert found.item_ids == ["n2"]
        np.testing.assert_array_equal(found.sids, [[5, 5, 0]])
        (sid,) = await store.get_sids(["n2"])
        np.testing.assert_array_equal(sid, [5, 5, 0])

    backend.run(ids, sids, body)


def test_upserted_vectors_come_back_with_their_items(backend: Backend) -> None:
    ids = ["a", "b", "c"]
    sids = np.array([[1, 2, 0], [1, 2, 2], [3, 0, 0]], dtype=np.int32)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3, 6)).astype(np.float32)
    half = vectors.astype(np.float16).astype(np.float32)  # what both stores keep

    async def body(store: SidStore) -> None:
        # before any upsert with a vector: none anywhere
        assert not (await store.candidates(np.array([[1, 2]]), 10, 1)).vectors
        items = [("n|1", np.array([1, 2])), ("a", np.array([1, 2])), ("n2", np.array([3, 0]))]
        await store.upsert(items, vectors)
        found = await store.candidates(np.array([[1, 2], [3, 0]]), 10, 2)
        assert found.item_ids == ["a", "b", "n|1", "c", "n2"]
        assert sorted(found.vectors) == [0, 2, 4]  # "a" kept its SID but has a new vector
        for pos, row in ((0, 1), (2, 0), (4, 2)):
            np.testing.assert_array_equal(found.vectors[pos], half[row])
            assert found.vectors[pos].dtype == np.float32
        looked = await store.lookup(["missing", "n2", "b", "a"])
        assert looked.sids[0] is None and looked.sids[2] is not None
        np.testing.assert_array_equal(looked.sids[1], [3, 0, 1])
        assert sorted(looked.vectors) == [1, 3]
        np.testing.assert_array_equal(looked.vectors[3], half[1])
        # an upsert without vectors drops the item's earlier one (it was of the old text)
        await store.upsert([("a", np.array([1, 2]))])
        assert sorted((await store.lookup(["a", "n2"])).vectors) == [1]
        for bad in (np.zeros((2, 6)), np.zeros(6), np.full((1, 6), np.nan), np.zeros((1, 6), int)):
            with pytest.raises(ValueError, match="vectors"):
                await store.upsert([("a", np.array([1, 2]))], bad)
        assert (await store.lookup([])).sids == []
        # more picked items than Redis reads vectors of in one HMGET (256)
        many = rng.normal(size=(300, 6)).astype(np.float32)
        await store.upsert([(f"m{i}", np.array([3, 0])) for i in range(300)], many)
        found = await store.candidates(np.array([[3, 0]]), 400, 2)
        assert found.item_ids[:2] == ["c", "n2"] and len(found.item_ids) == 302
        assert sorted(found.vectors) == list(range(1, 302))
        np.testing.assert_array_equal(found.vectors[301], many[299].astype(np.float16))

    backend.run(ids, sids, body)


def test_move_leaves_no_stale_entry(backend: Backend) -> None:
    ids = ["a", "b", "c", "d"]
    sids = np.array([[1, 2, 3, 0], [1, 2, 3, 1], [1, 4, 0, 0], [2, 0, 0, 0]], dtype=np.int32)

    async def body(store: SidStore) -> None:
        (moved,) = await store.upsert([("a", np.array([2, 0, 0]))])
        np.testing.assert_array_equal(moved, [2, 0, 0, 1])
        old = await store.candidates(np.array([[1, 2, 3]]), 100, 1)
        assert old.item_ids == ["b", "c"]
        new = await store.candidates(np.array([[2, 0, 0]]), 100, 3)
        assert new.item_ids == ["d", "a"]
        # moved back: a fresh code; its old 0 on this path is never handed out again
        (back,) = await store.upsert([("a", np.array([1, 2, 3]))])
        np.testing.assert_array_equal(back, [1, 2, 3, 2])
        found = await store.candidates(np.array([[1, 2, 3]]), 100, 1)
        assert found.item_ids == ["b", "a", "c"]  # depth 3 first, then depth 2 ("c": 1-4)
        assert (await store.candidates(np.array([[2, 0, 0]]), 100, 1)).item_ids == ["d"]
        if backend.client is not None:
            ref = Reference.of(ids, sids)
            ref.upsert("a", (2, 0, 0))
            ref.upsert("a", (1, 2, 3))
            assert prefix_lists(backend.client, Keys("v1")) == ref.lists(Keys("v1"))

    backend.run(ids, sids, body)


def test_random_upserts_and_deletes_match_reference(backend: Backend) -> None:
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        levels, k = int(rng.integers(1, 4)), 3
        ids, sids = random_table(rng, int(rng.integers(0, 30)), levels, k)
        ref = Reference.of(ids, sids)

        async def live(store: SidStore, ref: Reference) -> str:
            """The store's live paths are the reference's; its path version."""
            version, paths = await store.live_paths()
            assert paths.dtype == np.int64 and paths.shape[1:] == (ref.levels,)
            assert sorted(map(tuple, paths.tolist())) == sorted(ref.paths())
            assert await store.path_version() == version
            return version

        async def body(store: SidStore, rng=rng, ref=ref, levels=levels, k=k, ids=ids) -> None:
            version, paths = await live(store, ref), ref.paths()
            for step in range(25):
                if rng.random() < 0.25:  # a delete: known ids (base, upserted), or unknown
                    known = list(ref.sid)
                    pick = [known[i] for i in rng.integers(len(known), size=2)] if known else []
                    gone = sorted({*pick, f"never-{step}"})
                    want_gone = [ref.delete(i) for i in gone]
                    assert await store.delete(gone) == want_gone
                    assert await store.get_sids(gone) == [None] * len(gone)
                    # a path emptied by the delete leaves, and the version says so
                    was, version = version, await live(store, ref)
                    assert version != was or ref.paths() == paths
                    paths = ref.paths()
                batch = []
                for _ in range(int(rng.integers(1, 4))):
                    known = list(ref.sid)
                    if known and rng.random() < 0.6:
                        item_id = known[rng.integers(len(known))]
                        same = rng.random() < 0.3
                        path = ref.sid[item_id][:-1] if same else tuple(rng.integers(0, k, levels))
                    else:  # new, or back after a delete
                        back = [i for i in ids if i not in ref.sid]
                        item_id = (
                            back[rng.integers(len(back))]
                            if back and rng.random() < 0.5
                            else f"new-{step}-{len(batch)}"
                        )
                        path = tuple(rng.integers(0, k, levels))
                    batch.append((item_id, np.array(path)))
                want = [ref.upsert(i, tuple(int(c) for c in p)) for i, p in batch]
                got = await store.upsert(batch)
                assert [tuple(r) for r in got.tolist()] == want
                was, version = version, await live(store, ref)  # new paths, moves' emptied ones
                assert version != was or ref.paths() == paths
                paths = ref.paths()
                beams = random_beams(rng, np.array(list(ref.sid.values())), levels, k)
                for depth in range(levels + 1):
                    await check_against(store, ref, beams, int(rng.integers(1, 40)), depth)
            everyone = list(ref.sid)
            got_sids = await store.get_sids([*everyone, "missing"])
            assert got_sids[-1] is None
            assert [tuple(s.tolist()) for s in got_sids[:-1]] == [ref.sid[i] for i in everyone]
            if backend.client is not None:
                keys = Keys("v1")
                assert prefix_lists(backend.client, keys) == ref.lists(keys)
                assert backend.client.hgetall(keys.sids) == {
                    i: "-".join(map(str, s)) for i, s in ref.sid.items()
                }
                assert backend.client.hget(keys.meta, "items") == str(len(ref.sid))

        if backend.client is not None:
            backend.client.flushdb()
        backend.run(ids, sids, body)


def test_upsert_is_idempotent(backend: Backend) -> None:
    ids, sids = random_table(np.random.default_rng(2), 30, 2, 3)
    items = [(ids[0], np.array([9, 9])), ("fresh", np.array([0, 1])), (ids[5], sids[5, :2])]

    async def body(store: SidStore) -> None:
        first = await store.upsert(items)
        before = dump(backend.client) if backend.client is not None else None
        again = await store.upsert(items)
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(first[2], sids[5])  # same path: SID kept
        if backend.client is not None:
            assert dump(backend.client) == before
        found = await store.candidates(np.array([[9, 9], [0, 1]]), 100, 2)
        assert found.item_ids.count(ids[0]) == 1 and found.item_ids.count("fresh") == 1

    backend.run(ids, sids, body)


def test_preview_matches_upsert_and_stores_nothing(backend: Backend) -> None:
    ids = ["a", "b"]
    sids = np.array([[1, 1, 0], [1, 1, 4]], dtype=np.int32)
    items = [("a", np.array([1, 1])), ("b", np.array([2, 2])), ("c", np.array([1, 1]))]
    items.append(("c", np.array([2, 2])))  # the same id twice in a call: applied in order

    async def body(store: SidStore) -> None:
        before = dump(backend.client) if backend.client is not None else None
        preview = await store.preview(items)
        assert await store.get_sids(["c"]) == [None]
        if backend.client is not None:
            assert dump(backend.client) == before
        done = await store.upsert(items)
        np.testing.assert_array_equal(preview, done)
        np.testing.assert_array_equal(done, [[1, 1, 0], [2, 2, 0], [1, 1, 5], [2, 2, 1]])

    backend.run(ids, sids, body)


def test_upsert_rejects_bad_items(backend: Backend) -> None:
    ids, sids = random_table(np.random.default_rng(3), 5, 2, 3)

    async def body(store: SidStore) -> None:
        for bad in ([("x", np.array([1, 2, 3]))], [("", np.array([1, 2]))], [("y", [-1, 0])]):
            with pytest.raises(ValueError):
                await store.upsert(bad)
        assert (await store.upsert([])).shape == (0, 3)

    backend.run(ids, sids, body)


def test_concurrent_upserts_get_distinct_sids(backend: Backend) -> None:
    ids = ["a", "b"]
    sids = np.array([[4, 4, 0], [4, 4, 1]], dtype=np.int32)

    async def body(store: SidStore) -> None:
        # for Redis a second store (another connection pool), as another gateway would be
        other = store
        if backend.url is not None:
            other = RedisStore(backend.url, "v1", 2, timeout_s=2.0)
        try:
            calls = [
                (store if n % 2 else other).upsert([(f"n{n}", np.array([4, 4]))]) for n in range(40)
            ]
            results = await asyncio.gather(*calls)
        finally:
            if other is not store:
                await other.close()
        codes = sorted(int(r[0, 2]) for r in results)
        assert codes == list(range(2, 42))  # distinct, after the table's 0 and 1, no gaps
        found = await store.candidates(np.array([[4, 4]]), 100, 2)
        assert len(found.item_ids) == 42 == len(set(map(tuple, found.sids.tolist())))

    backend.run(ids, sids, body)


def test_versions_are_isolated(backend: Backend) -> None:
    ids_a, sids_a = ["a1", "a2"], np.array([[1, 0], [1, 1]], dtype=np.int32)
    ids_b, sids_b = ["b1", "a1"], np.array([[1, 0], [2, 0]], dtype=np.int32)

    async def body() -> None:
        one = await backend.make(ids_a, sids_a, "ver-a")
        two = await backend.make(ids_b, sids_b, "ver-b")
        try:
            assert (await one.candidates(np.array([[1]]), 10)).item_ids == ["a1", "a2"]
            assert (await two.candidates(np.array([[1]]), 10)).item_ids == ["b1"]
            await one.upsert([("a1", np.array([7])), ("new", np.array([1]))])
            assert (await two.candidates(np.array([[7]]), 10)).item_ids == []
            assert (await two.get_sids(["new", "a1"]))[0] is None
            np.testing.assert_array_equal((await two.get_sids(["a1"]))[0], [2, 0])
            if backend.client is not None:  # reloading one version leaves the other alone
                a_keys = dump(backend.client, Keys("ver-a").pattern)
                load_table(backend.client, "ver-b", ids_b, sids_b)
                assert dump(backend.client, Keys("ver-a").pattern) == a_keys
                assert all(
                    k.startswith(("sidserve:{ver-a}:", "sidserve:{ver-b}:"))
                    for k in dump(backend.client)
                )
        finally:
            await one.close()
            await two.close()

    asyncio.run(body())


def test_memory_stats_report_bytes_per_item() -> None:
    ids, sids = random_table(np.random.default_rng(4), 1000, 3, 16)
    stats = MemoryStore.from_arrays(ids, sids, "v").stats()
    assert stats["items"] == 1000 and 20 < stats["bytes_per_item"] < 300, stats
    assert MemoryStore.from_arrays([], np.zeros((0, 4), np.int32), "v").stats()["items"] == 0


# ------------------------------------------------------------------------------ Redis only


def test_ping_and_open(redis_client: redis.Redis, redis_server: str) -> None:
    ids, sids = ["a"], np.array([[1, 2, 0]], dtype=np.int32)

    async def body() -> None:
        absent = RedisStore(redis_server, "not-loaded", 2, timeout_s=1.0)
        with pytest.raises(StoreUnavailable, match="not .*loaded"):
            await absent.ping()
        await absent.close()
        with pytest.raises(StoreUnavailable, match=ACTIVE_KEY):
            await RedisStore.open(redis_server)
        load_table(redis_client, "v9", ids, sids)
        redis_client.set(ACTIVE_KEY, "v9")
        store = await RedisStore.open(redis_server)
        assert (store.model_version, store.levels, store.stats()["items"]) == ("v9", 2, 1)
        wrong = RedisStore(redis_server, "v9", 3, timeout_s=1.0)
        with pytest.raises(StoreUnavailable, match="levels"):
            await wrong.ping()
        for s in (store, wrong):
            await s.close()

    asyncio.run(body())


def on_two_items(
    redis_client: redis.Redis, url: str, body: Callable[[RedisStore], Awaitable[None]]
) -> None:
    """Load version v1 with items a (1-2-0) and b (1-3-0), run `body` on a store of it, and
    always close the store."""

    async def run() -> None:
        store = RedisStore(url, "v1", 2, timeout_s=1.0)
        try:
            await body(store)
        finally:
            await store.close()

    load_table(redis_client, "v1", ["a", "b"], np.array([[1, 2, 0], [1, 3, 0]], dtype=np.int32))
    asyncio.run(run())


def test_a_version_that_lost_its_meta_refuses_every_read_and_write(
    redis_client: redis.Redis, redis_server: str
) -> None:
    """A load under way (it deletes the meta first) or a flushed Redis: 503s, not answers with
    missing candidates, and an upsert writes nothing into the namespace being rebuilt."""
    keys = Keys("v1")

    async def body(store: RedisStore) -> None:
        one = np.array([[1, 2]])
        assert (await store.candidates(one, 5)).item_ids == ["a", "b"]
        redis_client.delete(keys.meta)
        calls = {
            "candidates": store.candidates(one, 5),
            "candidates_many": store.candidates_many([one, one], 5),
            "get_sids": store.get_sids(["a"]),
            "lookup": store.lookup(["a"]),
            "upsert": store.upsert([("c", np.array([1, 2]))], texts=["c text"]),
            "preview": store.preview([("c", np.array([1, 2]))]),
            "delete": store.delete(["a"]),
            "ping": store.ping(),
        }
        for name, call in calls.items():
            with pytest.raises(StoreUnavailable, match="not .*loaded.*load-items"):
                await call
            assert redis_client.hgetall(keys.sids) == {"a": "1-2-0", "b": "1-3-0"}, name
        assert redis_client.lrange(keys.prefix_list("1-2"), 0, -1) == ["1-2-0|a"]
        assert not redis_client.exists(keys.vectors, keys.meta, UPSERTS_KEY, DELETED_KEY)

    on_two_items(redis_client, redis_server, body)


def test_deletes_and_upserts_keep_the_shared_journal(
    redis_client: redis.Redis, redis_server: str
) -> None:
    """A delete drops the id's journalled text and records it as deleted, for every version's
    next load; a client's upsert of it takes it off the deleted set (the product is back)."""

    async def body(store: RedisStore) -> None:
        await store.upsert([("c", np.array([1, 2]))], texts=["c text"])
        assert redis_client.hgetall(UPSERTS_KEY) == {"c": "c text"}
        assert await store.delete(["c", "a", "zz"]) == [True, True, False]
        assert redis_client.hlen(UPSERTS_KEY) == 0
        assert redis_client.smembers(DELETED_KEY) == {"a", "c", "zz"}
        assert redis_client.hget(Keys("v1").meta, "items") == "1"
        await store.upsert([("a", np.array([1, 2]))])  # a replay (no text): still deleted
        assert redis_client.smembers(DELETED_KEY) == {"a", "c", "zz"}
        sid = await store.upsert([("c", np.array([1, 2]))], texts=["c again"])
        assert format_sid(sid[0]) == "1-2-3"  # 0-2 handed out before: never again
        assert redis_client.smembers(DELETED_KEY) == {"a", "zz"}
        assert redis_client.hgetall(UPSERTS_KEY) == {"c": "c again"}

    on_two_items(redis_client, redis_server, body)


def test_a_store_comes_back_after_redis_restarts_and_the_table_is_reloaded(
    redis_client: redis.Redis, redis_server: str
) -> None:
    """What a restart without persistence does to a running gateway's store: the data, the
    cached Lua scripts and every connection are gone; 503 until `load-items` has run again,
    then the same answers on the same store object (scripts reloaded, connections renewed)."""
    ids, sids = ["a", "b"], np.array([[1, 2, 0], [1, 3, 0]], dtype=np.int32)
    one = np.array([[1, 3]])

    async def body() -> None:
        store = RedisStore(redis_server, "v1", 2, timeout_s=1.0)
        try:
            before = await store.candidates(one, 5)
            await store.upsert([("c", np.array([1, 3]))])
            redis_client.flushall()
            redis_client.script_flush()
            redis_client.client_kill_filter(_type="normal", skipme=True)
            for call in (store.candidates(one, 5), store.upsert([("d", np.array([1, 3]))])):
                with pytest.raises(StoreUnavailable, match="load-items"):
                    await call
            load_table(redis_client, "v1", ids, sids)
            after = await store.candidates(one, 5)
            assert after.item_ids == before.item_ids == ["b", "a"]
            assert after.sids.tolist() == before.sids.tolist()
            assert (await store.upsert([("d", np.array([1, 3]))])).tolist() == [[1, 3, 1]]
        finally:
            await store.close()

    load_table(redis_client, "v1", ids, sids)
    asyncio.run(body())


@pytest.mark.parametrize("how", ["oom", "replica"])
def test_a_redis_refusing_writes_makes_upserts_unavailable_not_internal_errors(
    redis_client: redis.Redis,
    redis_server: str,
    redis_refusing_writes: Callable[[str], None],
    how: str,
) -> None:
    ids, sids = ["a", "b"], np.array([[1, 2, 0], [1, 3, 0]], dtype=np.int32)
    load_table(redis_client, "v1", ids, sids)
    keys = Keys("v1")

    async def body() -> None:
        store = RedisStore(redis_server, "v1", 2, timeout_s=1.0)
        try:
            redis_refusing_writes(how)
            refusal = "maxmemory" if how == "oom" else "read only replica"
            with pytest.raises(StoreUnavailable, match=f"Redis at .*upsert failed.*{refusal}"):
                await store.upsert([("c", np.array([1, 2]))], np.ones((1, 4), np.float32))
            # every read goes on, and the refused upsert left nothing behind
            assert (await store.candidates(np.array([[1, 2]]), 5)).item_ids == ["a", "b"]
            assert (await store.get_sids(["b"]))[0].tolist() == [1, 3, 0]
            assert (await store.lookup(["a", "c"])).sids[1] is None
            assert (await store.preview([("c", np.array([1, 2]))])).tolist() == [[1, 2, 1]]
            await store.ping()
            assert redis_client.hgetall(keys.sids) == {"a": "1-2-0", "b": "1-3-0"}
            assert not redis_client.exists(keys.vectors)
        finally:
            await store.close()

    asyncio.run(body())


def test_after_a_readonly_reply_the_store_opens_new_connections(
    redis_client: redis.Redis, redis_server: str, redis_refusing_writes: Callable[[str], None]
) -> None:
    """A failover leaves the gateway's connections on a node that became a replica; a new
    connection is what reaches the new primary behind a managed Redis's DNS name."""
    load_table(redis_client, "v1", ["a"], np.array([[1, 2, 0]], dtype=np.int32))

    def ours() -> list[int]:
        return [int(c["id"]) for c in redis_client.client_list() if c["name"] == CLIENT_NAME]

    async def body() -> None:
        store = RedisStore(redis_server, "v1", 2, timeout_s=1.0)
        try:
            await store.candidates(np.array([[1, 2]]), 5)
            before = ours()
            assert len(before) == 1
            redis_refusing_writes("replica")
            with pytest.raises(StoreUnavailable, match="read only replica"):
                await store.upsert([("c", np.array([1, 2]))])
            await asyncio.sleep(0.1)
            assert ours() == []  # closed, not left pointing at the replica
            assert (await store.candidates(np.array([[1, 2]]), 5)).item_ids == ["a"]
            after = ours()
            assert len(after) == 1 and after != before
        finally:
            await store.close()

    asyncio.run(body())


def test_load_items_refused_by_a_full_redis_is_one_line(
    tmp_path: Path,
    redis_server: str,
    redis_refusing_writes: Callable[[str], None],
    capsys: pytest.CaptureFixture,
) -> None:
    ids, sids = ["a", "b"], np.array([[1, 2, 0], [1, 3, 0]], dtype=np.int32)
    bundle = write_bundle(tmp_path, ids, sids)
    redis_refusing_writes("oom")
    assert sidserve_main(["load-items", "--bundle", str(bundle), "--redis-url", redis_server]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # after the progress bar
    assert last.startswith("sidserve load-items: error: Redis at "), err
    assert "refused the load: command not allowed when used memory > 'maxmemory';" in last
    assert "stays unloaded" in last and "HSET" not in last, last


def _assert_unavailable_fast(url: str, timeout_s: float) -> None:
    async def body() -> None:
        store = RedisStore(url, "v1", 2, timeout_s=timeout_s)
        calls = [
            store.ping(),
            store.candidates(np.array([[1, 2]]), 5),
            store.get_sids(["a"]),
            store.upsert([("a", np.array([1, 2]))]),
        ]
        try:
            for call in calls:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="Redis at"):
                    await call
                assert time.monotonic() - started < 2.0
        finally:
            await store.close()

    asyncio.run(body())


def test_redis_down_is_unavailable_quickly() -> None:
    _assert_unavailable_fast(f"redis://127.0.0.1:{free_port()}/0", 1.0)  # nothing listens


def test_silent_redis_is_unavailable_within_timeout() -> None:
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        _assert_unavailable_fast(f"redis://127.0.0.1:{server.getsockname()[1]}/0", 0.3)


# ------------------------------------------------------------------------------ load-items


def write_bundle(root: Path, ids: list[str], sids: np.ndarray) -> Path:
    """A tiny bundle: real item table, placeholder tokenizer and graphs (only checksummed)."""
    staging = root / "staging"
    staging.mkdir()
    (staging / "tokenizer.json").write_text("{}")
    (staging / "encoder.onnx").write_bytes(b"not a graph")
    (staging / "decoder_first.onnx").write_bytes(b"not a graph either")
    (staging / "decoder_step.onnx").write_bytes(b"nor this")
    write_item_table(staging, ids, sids)
    levels = sids.shape[1] - 1
    return finish_bundle(
        staging,
        root / "bundle",
        levels=levels,
        codebook_sizes=[int(sids[:, :levels].max()) + 1] * levels,
        hidden_size=8,
        cache_entries=2,
        heads=2,
        tokenizer={
            "max_query_tokens": 8,
            "max_item_tokens": 8,
            "pad_id": 0,
            "cls_id": 1,
            "sep_id": 2,
        },
        graphs={
            "encoder": "encoder.onnx",
            "decoder_first": "decoder_first.onnx",
            "decoder_step": "decoder_step.onnx",
        },
        item_count=len(ids),
        source={"test": True},
    )


def test_load_items_twice_gives_identical_keys(
    tmp_path: Path, redis_client: redis.Redis, redis_server: str, capsys: pytest.CaptureFixture
) -> None:
    ids, sids = random_table(np.random.default_rng(5), 200, 3, 4)
    bundle = write_bundle(tmp_path, ids, sids)
    argv = ["load-items", "--bundle", str(bundle), "--redis-url", redis_server, "--batch", "33"]
    assert sidserve_main([*argv, "--activate"]) == 0
    out = capsys.readouterr().out
    assert "loaded 200 items" in out and "items/s" in out
    first = dump(redis_client)
    version = redis_client.get(ACTIVE_KEY)
    keys = Keys(version)
    assert first[keys.meta]["loaded"] == "1" and first[keys.meta]["items"] == "200"
    assert prefix_lists(redis_client, keys) == Reference.of(ids, sids).lists(keys)

    async def touch() -> None:  # an upsert between the loads is undone by the reload
        store = await RedisStore.open(redis_server)
        await store.upsert([(ids[0], np.array([3, 3, 3])), ("extra", np.array([0, 0, 0]))])
        await store.close()

    asyncio.run(touch())
    assert dump(redis_client) != first
    assert sidserve_main(argv) == 0
    assert dump(redis_client) == first


def test_load_items_refuses_a_bad_bundle(
    tmp_path: Path, redis_server: str, capsys: pytest.CaptureFixture
) -> None:
    bundle = write_bundle(tmp_path, ["a", "b"], np.array([[0, 0], [0, 1]], dtype=np.int32))
    (bundle / "encoder.onnx").write_bytes(b"not a graph, changed")
    argv = ["load-items", "--bundle", str(bundle), "--redis-url", redis_server]
    assert sidserve_main(argv) == 2
    err = capsys.readouterr().err
    assert "encoder.onnx" in err and "sha256" in err


def test_load_items_names_an_unreachable_url(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = write_bundle(tmp_path, ["a"], np.array([[0, 0]], dtype=np.int32))
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    assert sidserve_main(["load-items", "--bundle", str(bundle), "--redis-url", url]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "127.0.0.1" in err and "secret" not in err, err


def test_store_modules_do_not_import_training_or_torch() -> None:
    code = (
        "import sys, service.stores.memory, service.stores.redis_store, service.load_items;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_parse_sids_reads_every_code_and_rejects_anything_else() -> None:
    from service.stores.base import parse_sids

    got = parse_sids(["12-5-201-0", "0-0-0-17", "255-255-255-4096"], 4)
    assert got.dtype == np.int32
    assert got.tolist() == [[12, 5, 201, 0], [0, 0, 0, 17], [255, 255, 255, 4096]]
    assert parse_sids([], 4).shape == (0, 4)
    for bad in (
        ["1-2-3"],  # too few codes
        ["1-2-3-4-5"],  # too many
        ["1-2-3-4", "1-2-3"],
        ["1-2-3 4"],  # whitespace, signs and other characters are not SIDs
        ["1-2-+3-4"],
        ["1-2-x-4"],
        ["1-2-²-4"],  # a digit, but not an ASCII one
        ["1--2-3"],  # an empty code
        ["-1-2-3"],
        ["1-2-3-"],
        [""],
    ):
        with pytest.raises(ValueError):
            parse_sids(bad, 4)


def test_split_entries_reads_the_ranking_scripts_reply() -> None:
    from service.stores.redis_store import split_entries

    ids, sids = split_entries("12-5-201-0|A1\n0-0-0-17|B|2\n3-3-3-0|")
    assert ids == ["A1", "B|2", ""] and sids == ["12-5-201-0", "0-0-0-17", "3-3-3-0"]
    # without a bar in any id: the one-split path
    ids, sids = split_entries("12-5-201-0|A1\n0-0-0-17|\n3-3-3-0|C")
    assert ids == ["A1", "", "C"] and sids == ["12-5-201-0", "0-0-0-17", "3-3-3-0"]
    assert split_entries("1-2|x") == (["x"], ["1-2"])
    assert split_entries("") == ([], [])
    with pytest.raises(ValueError, match="sid\\|id"):
        split_entries("12-5-201-0|A1\n0-0-0-17")


def test_parse_sid_text_reads_the_ranking_scripts_reply() -> None:
    from service.stores.base import parse_sid_text

    got = parse_sid_text("12-5-201-0,0-0-0-17", 2, 4)
    assert got.dtype == np.int32 and got.tolist() == [[12, 5, 201, 0], [0, 0, 0, 17]]
    assert parse_sid_text("", 0, 4).shape == (0, 4)
    for text, n in (
        ("12-5-201-0,0-0-0-17", 1),  # more SIDs than ids
        ("12-5-201-0", 2),  # fewer
        ("12-5-201-0,", 1),  # an empty SID
        (",12-5-201-0", 1),
        ("12-5-201-0,,0-0-0-17", 2),
        ("12-5-201-0;0-0-0-17", 2),  # another separator
        ("1-2-3-4", 0),
        ("", 1),
    ):
        with pytest.raises(ValueError):
            parse_sid_text(text, n, 4)


def test_probes_skip_a_prefix_an_earlier_beam_listed():
    """A prefix shared by several beams is read once, for the first of them."""
    from service.stores.base import plan_probes

    paths = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 3]])
    probes = plan_probes(paths, 3, 0)
    assert [(p.depth, p.beam, p.prefix) for p in probes] == [
        (3, 0, (1, 2, 3)), (3, 1, (1, 2, 4)), (3, 2, (1, 5, 3)),
        (2, 0, (1, 2)), (2, 2, (1, 5)),
        (1, 0, (1,)),
    ]  # fmt: skip
    assert [p.depth for p in plan_probes(paths, 3, 2)] == [3, 3, 3, 2, 2]  # min_depth 2
