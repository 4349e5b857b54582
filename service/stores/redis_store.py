"""SidStore on Redis: several gateways share one table, and upserts reach all of them.

Key layout of model version V (the braces are a Redis Cluster hash tag: every key of a
version lives in one slot, so the pipelines and the scripts would stay cluster-safe; the
client itself is single-node, docs/deployment.md):

    sidserve:{V}:meta           hash   levels, items, loaded ("1" once complete), table_sha256,
                                       path_changes (paths emptied or refilled since the load)
    sidserve:{V}:sid            hash   item id -> SID string "12-5-201-0"
    sidserve:{V}:p:12-5         list   "{sid}|{item id}" of the items under prefix 12-5, one
                                       list per prefix of depth 1..L, in insertion order
    sidserve:{V}:next           hash   full path "12-5-201" -> next free disambiguation code
    sidserve:{V}:vec            hash   item id -> base64 of its upserted float16 dense vector
    sidserve:active             string the model version the gateways serve
    sidserve:upserts            hash   item id -> the text of its last upsert, any version: the
                                       journal `load-items` re-encodes into the next version
    sidserve:deleted            set    ids deleted since (any version): loads leave them out

Versions never share a key, so a new model is loaded beside the serving one and switched to
with one SET of `sidserve:active` (`sidserve load-items --activate`). Each list entry carries
the SID as well as the id, so `candidates_many` is one call of a ranking script for a whole
batch (PICK_LUA, which also reads the picked items' upserted vectors): one round trip, read
from one consistent snapshot (a script runs atomically). `upsert` and `delete` are one Lua
script each (atomic; they also write the upserts journal and the deleted set in the same
step, the keys outside the version's slot, which a cluster would refuse: clusters are not
supported), `get_sids`, `lookup`, `preview` and `ping` one pipeline of reads each (not
transactions: see `_reads`). Every call runs under a deadline of `timeout_s` (socket timeouts
too), and connection failures, timeouts and refusals (`REFUSED_ERRORS`: a full or read-only
Redis refuses upserts, reads go on) become StoreUnavailable (a 503).

Every read and write also checks, in the same round trip, that the version is marked
`loaded`: a Redis that restarted without its data, a flushed database or a `load-items` under
way then gives StoreUnavailable (a 503 naming `sidserve load-items`), not answers with missing
candidates, and an upsert never writes into a namespace that a load is rebuilding (its
disambiguation codes would collide with the table's).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.stores.base import (
    NO_VECTORS,
    Candidates,
    Lookup,
    StoreUnavailable,
    Vectors,
    assign_sids,
    check_ids,
    check_items,
    check_texts,
    check_vectors,
    fetch_size,
    format_sid,
    parse_sids,
    plan_probes,
)

ACTIVE_KEY = "sidserve:active"
UPSERTS_KEY = "sidserve:upserts"  # the upserts journal (module docstring), shared by versions
DELETED_KEY = "sidserve:deleted"  # ids deleted since, shared by versions
CLIENT_NAME = "sidserve-gateway"  # in Redis's CLIENT LIST, so operators see which are ours
# Replies of a Redis that answers but will not do it now: full under `noeviction`, a replica
# after a failover, a cluster without a master for the slot, an ACL without the command.
# Like an unreachable Redis they are StoreUnavailable (503), not internal errors.
REFUSED_ERRORS = (
    OutOfMemoryError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    NoPermissionError,
)
UNAVAILABLE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
    OSError,
    *REFUSED_ERRORS,
)
_VERSION = re.compile(r"[0-9A-Za-z._-]{1,64}")

# KEYS: the prefix lists of every query of a batch, query after query, each query's in
# `plan_probes` order, then the vector hash and the meta hash. ARGV: limit, then each query's
# number of lists. Returns false (None in Python) when the version is not marked loaded.
# The ranking of `pick_ranked` run inside Redis, for the whole batch in one atomic call: only
# the (at most `limit`) picked entries travel back, not `limit` entries of every list (3,000
# strings for 10 beams x 3 levels x 100), whose parsing in the gateway's event loop was the
# largest cost under load. A query's reply is {its picked "sid|id" entries joined by newlines
# (which no id holds: the bundle keeps one id per line and upserts reject them,
# `check_items`), their upserted vectors (false = none; empty while no item has one)}; the
# gateway splits them (`split_entries`). Splitting each entry here instead made the script
# cost Redis 680 rather than 400 us per query (500 candidates, 2026-12-06), for about 110 us
# less Python: Lua creates (and interns) two new strings per entry.
PICK_LUA = """
if redis.call('HGET', KEYS[#KEYS], 'loaded') ~= '1' then return false end
local limit, vec = tonumber(ARGV[1]), KEYS[#KEYS - 1]
local with_vectors = redis.call('HLEN', vec) > 0
local replies, first = {}, 1
for q = 2, #ARGV do
  local last = first + tonumber(ARGV[q]) - 1
  local picked, seen = {}, {}
  for i = first, last do
    for _, entry in ipairs(redis.call('LRANGE', KEYS[i], 0, limit - 1)) do
      if not seen[entry] then
        seen[entry] = true
        picked[#picked + 1] = entry
        if #picked == limit then break end
      end
    end
    if #picked == limit then break end
  end
  first = last + 1
  local vectors = {}
  if with_vectors and #picked > 0 then
    local ids = {}
    for k, entry in ipairs(picked) do
      ids[k] = string.sub(entry, string.find(entry, '|', 1, true) + 1)
    end
    for s = 1, #ids, 256 do
      local got = redis.call('HMGET', vec, unpack(ids, s, math.min(s + 255, #ids)))
      for k, v in ipairs(got) do vectors[s + k - 1] = v end
    end
  end
  replies[#replies + 1] = {table.concat(picked, '\\n'), vectors}
end
return replies
"""

# Shared by the upsert and delete scripts: `prefixes` turns a path "12-5-201" into the names
# of its prefix lists ("12", "12-5", "12-5-201"); `unlist` takes entry "{sid}|{id}" out of
# every one of them (stem: the version's prefix-list key stem) and, when that empties the
# path's own list, counts a path change in the meta hash (`path_changes`, see `path_version`).
UNLIST_LUA = """
local function prefixes(path)
  local out, prefix = {}, nil
  for code in string.gmatch(path, '%d+') do
    prefix = prefix and (prefix .. '-' .. code) or code
    out[#out + 1] = prefix
  end
  return out
end
local function unlist(stem, sid, id, meta)
  local entry = sid .. '|' .. id
  local names = prefixes(string.match(sid, '^(.*)%-%d+$'))
  for _, prefix in ipairs(names) do
    redis.call('LREM', stem .. prefix, 0, entry)
  end
  if redis.call('LLEN', stem .. names[#names]) == 0 then
    redis.call('HINCRBY', meta, 'path_changes', 1)
  end
end
"""

# KEYS: sid hash, next hash, meta hash, vector hash, upserts journal, deleted set. ARGV:
# prefix-list key stem, mode, then (item id, path, vector, text) quadruples, vector "" for
# none (which drops the item's earlier one). Mode "client" (a gateway's upsert): a text is
# journalled and its id is no longer deleted (text "": the journal is left as it is). Modes
# "replay" and "restore" (`load-items` applying the journal): an item is written only if the
# journal still holds the text its codes were computed from, else left alone (its SID is ""
# in the reply), so a gateway's newer upsert or delete since the journal was read is never
# undone; "restore" also only if the version does not hold the id (a catalog item that was
# left out as deleted and has come back since). Redis runs a
# script atomically, so concurrent upserts never share a disambiguation code, and a moved item
# is out of its old lists before anyone can read the new ones. Returns false (None in Python),
# writing nothing, when the version is not marked loaded.
UPSERT_LUA = (
    UNLIST_LUA
    + """
if redis.call('HGET', KEYS[3], 'loaded') ~= '1' then return false end
local stem, mode, out, added = ARGV[1], ARGV[2], {}, 0
local replay = mode ~= 'client'
local function write(id, path, vector, text)
  if text ~= '' and not replay then
    redis.call('HSET', KEYS[5], id, text)
    redis.call('SREM', KEYS[6], id)
  end
  if vector == '' then
    redis.call('HDEL', KEYS[4], id)
  else
    redis.call('HSET', KEYS[4], id, vector)
  end
  local old = redis.call('HGET', KEYS[1], id)
  if old then
    if string.match(old, '^(.*)%-%d+$') == path then return old end
    unlist(stem, old, id, KEYS[3])
  else
    added = added + 1
  end
  local sid = path .. '-' .. (redis.call('HINCRBY', KEYS[2], path, 1) - 1)
  redis.call('HSET', KEYS[1], id, sid)
  local entry = sid .. '|' .. id
  local length = 0
  for _, prefix in ipairs(prefixes(path)) do
    length = redis.call('RPUSH', stem .. prefix, entry)
  end
  if length == 1 then redis.call('HINCRBY', KEYS[3], 'path_changes', 1) end
  return sid
end
for i = 3, #ARGV, 4 do
  local id, path, vector, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if replay and (redis.call('HGET', KEYS[5], id) ~= text
      or (mode == 'restore' and redis.call('HEXISTS', KEYS[1], id) == 1)) then
    out[#out + 1] = ''
  else
    out[#out + 1] = write(id, path, vector, text)
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'items', added) end
return out
"""
)

# KEYS: sid hash, meta hash, vector hash, upserts journal, deleted set. ARGV: prefix-list key
# stem, mode, then item ids. Per id 1 if it was stored, else 0; false (None), writing nothing,
# when the version is not marked loaded. Mode "client": the id leaves the journal and joins
# the deleted set either way (it may be stored in another version). Mode "replay": an id is
# removed only if it is still in the deleted set (an upsert since may have brought it back),
# and the journal is left as it is.
DELETE_LUA = (
    UNLIST_LUA
    + """
if redis.call('HGET', KEYS[2], 'loaded') ~= '1' then return false end
local stem, replay, out, removed = ARGV[1], ARGV[2] == 'replay', {}, 0
for i = 3, #ARGV do
  local id, old = ARGV[i], false
  if not replay or redis.call('SISMEMBER', KEYS[5], id) == 1 then
    old = redis.call('HGET', KEYS[1], id)
    if old then
      unlist(stem, old, id, KEYS[2])
      redis.call('HDEL', KEYS[1], id)
      removed = removed + 1
    end
    redis.call('HDEL', KEYS[3], id)
    if not replay then
      redis.call('HDEL', KEYS[4], id)
      redis.call('SADD', KEYS[5], id)
    end
  end
  out[#out + 1] = old and 1 or 0
end
if removed > 0 then redis.call('HINCRBY', KEYS[2], 'items', -removed) end
return out
"""
)


# KEYS: next hash, meta hash. ARGV: prefix-list key stem. Returns false (None) when the version
# is not marked loaded, else {`path_version`'s text, the paths whose own list holds an item}.
LIVE_PATHS_LUA = """
if redis.call('HGET', KEYS[2], 'loaded') ~= '1' then return false end
local live = {}
for _, path in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('LLEN', ARGV[1] .. path) > 0 then live[#live + 1] = path end
end
local changes = redis.call('HGET', KEYS[2], 'path_changes') or '0'
return {redis.call('HLEN', KEYS[1]) .. ':' .. changes, live}
"""


class Keys:
    """The key names of one model version (see the module docstring)."""

    def __init__(self, model_version: str) -> None:
        if not _VERSION.fullmatch(model_version):
            raise ValueError(f"model version {model_version!r}: expected [0-9A-Za-z._-]{{1,64}}")
        self.namespace = f"sidserve:{{{model_version}}}:"
        self.meta = self.namespace + "meta"
        self.sids = self.namespace + "sid"
        self.next = self.namespace + "next"
        self.vectors = self.namespace + "vec"
        self.list_stem = self.namespace + "p:"
        self.pattern = self.namespace + "*"  # SCAN MATCH: no glob characters in a version

    def prefix_list(self, prefix: Sequence[int] | str) -> str:
        return self.list_stem + (prefix if isinstance(prefix, str) else format_sid(prefix))


def encode_vector(vector: np.ndarray) -> str:
    """(D,) float16 -> the ASCII text kept in the vector hash (the client decodes replies)."""
    return base64.b64encode(vector.astype("<f2").tobytes()).decode("ascii")


def split_entries(text: str) -> tuple[list[str], list[str]]:
    """Prefix-list entries "sid|id" joined by newlines (PICK_LUA's reply) -> (item ids, their
    SIDs). An id may hold '|' (a SID never does).

    Entries are only ever written as "sid|id" (`load-items`, the upsert script), so a reply of
    n entries with n bars in all has one per entry: then one C-level split of the whole reply
    gives every SID and id, 3x faster than a `partition` per entry, which is what the rest
    get (ids holding a bar)."""
    if not text:
        return [], []
    parts = text.replace("\n", "|").split("|")
    if len(parts) == 2 * (text.count("\n") + 1):
        return parts[1::2], parts[0::2]
    pairs = [entry.partition("|") for entry in text.split("\n")]
    if not all(bar for _, bar, _ in pairs):
        raise ValueError(f"not 'sid|id' entries: {text[:40]!r}")
    return [item for _, _, item in pairs], [sid for sid, _, _ in pairs]


def decode_vectors(texts: Sequence[str | None]) -> Vectors:
    """Replies of the vector hash -> {position: (D,) float32} of the ones present."""
    if not any(texts):
        return NO_VECTORS
    return {
        k: np.frombuffer(base64.b64decode(t), dtype="<f2").astype(np.float32)
        for k, t in enumerate(texts)
        if t
    }


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def make_client(url: str, timeout_s: float, retries: int = 1) -> aioredis.Redis:
    """An asyncio client whose every socket operation is bounded by `timeout_s`."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries),
        decode_responses=True,
        client_name=CLIENT_NAME,
    )


@contextlib.asynccontextmanager
async def guarded(url: str, what: str, timeout_s: float) -> AsyncIterator[None]:
    """Deadline + error mapping around one round trip: any failure to get an answer in time
    is StoreUnavailable, naming the server and the operation."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except UNAVAILABLE_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        raise StoreUnavailable(f"Redis at {safe_url(url)}: {what} failed ({detail})") from exc


class RedisStore:
    """SidStore of one model version in Redis (loaded by `sidserve load-items`)."""

    shared = True

    def __init__(
        self,
        url: str,
        model_version: str,
        levels: int,
        *,
        timeout_s: float = 1.0,
        retries: int = 1,
    ) -> None:
        if levels < 1 or timeout_s <= 0:
            raise ValueError(f"levels must be >= 1 and timeout_s > 0, got {levels}, {timeout_s}")
        self.model_version = model_version
        self.levels = levels
        self.url = safe_url(url)
        self.timeout_s = timeout_s
        self.keys = Keys(model_version)
        self._client = make_client(url, timeout_s, retries)
        self._upsert = self._client.register_script(UPSERT_LUA)
        self._pick = self._client.register_script(PICK_LUA)
        self._delete = self._client.register_script(DELETE_LUA)
        self._live = self._client.register_script(LIVE_PATHS_LUA)
        self._items: int | None = None

    @classmethod
    async def open(
        cls, url: str, model_version: str | None = None, *, timeout_s: float = 1.0
    ) -> RedisStore:
        """A store of `model_version` (default: `sidserve:active`), levels read from its meta;
        StoreUnavailable when Redis is down or the version is not (completely) loaded."""
        client = make_client(url, timeout_s)
        try:
            if model_version is None:
                async with guarded(url, "reading the active version", timeout_s):
                    model_version = await client.get(ACTIVE_KEY)
                if not model_version:
                    raise StoreUnavailable(f"no {ACTIVE_KEY} in Redis at {safe_url(url)}")
            async with guarded(url, "reading the version's meta", timeout_s):
                levels = await client.hget(Keys(model_version).meta, "levels")
        finally:
            await client.aclose()
        if levels is None:
            raise StoreUnavailable(f"model version {model_version} not in Redis at {safe_url(url)}")
        store = cls(url, model_version, int(levels), timeout_s=timeout_s)
        await store.ping()
        return store

    @contextlib.asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """`guarded`, and after a READONLY reply a fresh set of connections: a failover made
        the node they reach a replica, and a managed Redis moves its primary's DNS name to the
        new primary, which only a new connection resolves. Without this every upsert would
        fail until the connections happened to close."""
        try:
            async with guarded(self.url, what, self.timeout_s):
                yield
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, ReadOnlyError):
                await self._client.connection_pool.disconnect()
            raise

    def _reads(self) -> Any:
        """A pipeline of reads, one round trip. Not MULTI/EXEC: a Redis over `maxmemory`
        refuses every command queued in a transaction, reads included, and a full store must
        go on answering queries and /v1/relevance. Redis runs the commands of one pipeline
        back to back as it reads them, so the loaded flag read first still speaks for the
        data read after it, short of a whole reload between two of them."""
        return self._client.pipeline(transaction=False)

    async def candidates(self, paths: np.ndarray, limit: int, min_depth: int = 0) -> Candidates:
        return (await self.candidates_many([paths], limit, min_depth))[0]

    async def candidates_many(
        self, paths: Sequence[np.ndarray], limit: int, min_depth: int = 0
    ) -> list[Candidates]:
        plans = [plan_probes(p, self.levels, min_depth) if limit > 0 else [] for p in paths]
        if not any(plans):
            return [Candidates.empty(self.levels) for _ in plans]
        keys = [self.keys.prefix_list(probe.prefix) for probes in plans for probe in probes]
        args = [fetch_size(limit), *(len(probes) for probes in plans)]
        async with self._guard("candidates"):
            picks = await self._pick(keys=[*keys, self.keys.vectors, self.keys.meta], args=args)
        if picks is None:
            raise self._not_loaded()
        out = []
        for entries, vectors in picks:
            ids, texts = split_entries(entries)
            sids = parse_sids(texts, self.levels + 1)
            out.append(Candidates(ids, sids, decode_vectors(vectors), texts))
        return out

    async def get_sids(self, item_ids: Sequence[str]) -> list[np.ndarray | None]:
        if not item_ids:
            return []
        async with self._guard("get_sids"), self._reads() as pipe:
            pipe.hget(self.keys.meta, "loaded")
            pipe.hmget(self.keys.sids, [str(i) for i in item_ids])
            loaded, found = await pipe.execute()
        self._check_loaded(loaded)
        return self._parse_stored(found)

    def _parse_stored(self, found: Sequence[str | None]) -> list[np.ndarray | None]:
        """Stored SID strings (None = no such item) -> SIDs, the present ones parsed at once
        (`/v1/relevance` reads up to 1,000)."""
        rows = iter(parse_sids([s for s in found if s is not None], self.levels + 1))
        return [None if s is None else next(rows) for s in found]

    async def lookup(self, item_ids: Sequence[str]) -> Lookup:
        if not item_ids:
            return Lookup([])
        ids = [str(i) for i in item_ids]
        async with self._guard("lookup"), self._reads() as pipe:
            pipe.hget(self.keys.meta, "loaded")
            pipe.hmget(self.keys.sids, ids)
            pipe.hmget(self.keys.vectors, ids)
            loaded, found, vectors = await pipe.execute()
        self._check_loaded(loaded)
        return Lookup(self._parse_stored(found), decode_vectors(vectors))

    async def upsert(
        self,
        items: Sequence[tuple[str, np.ndarray]],
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
    ) -> np.ndarray:
        sids = await self._write(items, vectors, texts, "client")
        return parse_sids(sids, self.levels + 1)

    async def replay_upserts(
        self,
        items: Sequence[tuple[str, np.ndarray]],
        vectors: np.ndarray | None,
        texts: Sequence[str],
        *,
        restore: bool = False,
    ) -> int:
        """`load-items` applying the journal: upsert items whose codes were computed from the
        journal's `texts`, each only if the journal still holds that text (and, `restore`,
        only if the version lacks the id): UPSERT_LUA's "replay" and "restore" modes. How
        many were written."""
        if check_texts(texts, len(items)) is None:
            raise ValueError("replayed upserts need the journal's texts")
        mode = "restore" if restore else "replay"
        return sum(1 for sid in await self._write(items, vectors, texts, mode) if sid)

    async def _write(
        self,
        items: Sequence[tuple[str, np.ndarray]],
        vectors: np.ndarray | None,
        texts: Sequence[str] | None,
        mode: str,
    ) -> list[str]:
        ids, paths = check_items(items, self.levels)
        if not ids:
            return []
        stored = check_vectors(vectors, len(ids))
        journal = check_texts(texts, len(ids))
        args = [self.keys.list_stem, mode]
        for k, (item_id, path) in enumerate(zip(ids, paths, strict=True)):
            vector = "" if stored is None else encode_vector(stored[k])
            args += [item_id, format_sid(path), vector, "" if journal is None else journal[k]]
        keys = [self.keys.sids, self.keys.next, self.keys.meta, self.keys.vectors]
        keys += [UPSERTS_KEY, DELETED_KEY]
        # safe to retry: a repeated upsert finds the path it wrote and keeps the SID
        async with self._guard("upsert"):
            sids = await self._upsert(keys=keys, args=args)
        if sids is None:
            raise self._not_loaded()
        return list(sids)

    async def delete(self, item_ids: Sequence[str]) -> list[bool]:
        return await self._remove(item_ids, "client")

    async def replay_deletes(self, item_ids: Sequence[str]) -> int:
        """`load-items --journal-only`: delete the ids still in the deleted set (DELETE_LUA's
        "replay" mode); how many were stored."""
        return sum(await self._remove(item_ids, "replay"))

    async def _remove(self, item_ids: Sequence[str], mode: str) -> list[bool]:
        ids = check_ids(item_ids)
        if not ids:
            return []
        keys = [self.keys.sids, self.keys.meta, self.keys.vectors, UPSERTS_KEY, DELETED_KEY]
        # safe to retry: a repeated delete finds nothing left to remove
        async with self._guard("delete"):
            stored = await self._delete(keys=keys, args=[self.keys.list_stem, mode, *ids])
        if stored is None:
            raise self._not_loaded()
        return [bool(x) for x in stored]

    async def preview(self, items: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        ids, paths = check_items(items, self.levels)
        if not ids:
            return np.zeros((0, self.levels + 1), dtype=np.int32)
        names = sorted({format_sid(p) for p in paths})
        async with self._guard("preview"), self._reads() as pipe:
            pipe.hget(self.keys.meta, "loaded")
            pipe.hmget(self.keys.sids, ids)
            pipe.hmget(self.keys.next, names)
            loaded, stored_text, next_text = await pipe.execute()
        self._check_loaded(loaded)
        stored = self._parse_stored(stored_text)
        counters = {n: int(c or 0) for n, c in zip(names, next_text, strict=True)}
        sids, _ = assign_sids(ids, paths, stored, lambda p: counters[format_sid(p)], self.levels)
        return sids

    async def path_version(self) -> str:
        """Changes whenever the set of live paths may have: the `next` hash's length (one field
        per path ever used: a new path) and the meta hash's `path_changes` (the upsert and
        delete scripts count a path whose list they empty or refill). The length also covers
        gateways of releases before the count existed."""
        async with self._guard("path_version"), self._reads() as pipe:
            pipe.hlen(self.keys.next)
            pipe.hget(self.keys.meta, "path_changes")
            length, changes = await pipe.execute()
        return f"{length}:{changes or 0}"

    async def live_paths(self) -> tuple[str, np.ndarray]:
        """(`path_version`, (P, levels) int64 paths holding at least one item), read in one
        atomic step; ValueError if the `next` hash holds anything but paths."""
        async with self._guard("live_paths"):
            got = await self._live(
                keys=[self.keys.next, self.keys.meta], args=[self.keys.list_stem]
            )
        if got is None:
            raise self._not_loaded()
        version, names = got
        return version, parse_sids(names, self.levels).astype(np.int64)

    async def ping(self) -> None:
        """Redis answers and this version is completely loaded with the expected levels."""
        async with self._guard("ping"), self._reads() as pipe:
            pipe.ping()
            pipe.hmget(self.keys.meta, ["loaded", "levels", "items"])
            _, (loaded, levels, items) = await pipe.execute()
        self._check_loaded(loaded)
        if int(levels) != self.levels:
            raise StoreUnavailable(
                f"model version {self.model_version} has {levels} levels in Redis at {self.url}, "
                f"this gateway expects {self.levels}"
            )
        self._items = int(items)

    def _not_loaded(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"model version {self.model_version} is not (completely) loaded in Redis at "
            f"{self.url}: run `sidserve load-items`"
        )

    def _check_loaded(self, loaded: str | None) -> None:
        """The meta hash's `loaded` flag, read in the same round trip as the data."""
        if loaded != "1":
            raise self._not_loaded()

    async def close(self) -> None:
        await self._client.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "url": self.url,
            "model_version": self.model_version,
            "levels": self.levels,
            "timeout_s": self.timeout_s,
            "items": self._items,  # as of the last ping
        }
