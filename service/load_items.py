"""`sidserve load-items`: bulk-load a bundle's item SIDs into Redis (layout in
service/stores/redis_store.py).

Idempotent by rebuilding: the version's namespace is cleared first (its meta first, so a
half-loaded version is never reported `loaded`, then SCAN + UNLINK), then written in
pipelined batches in catalog order, counters and meta last. Versions are separate namespaces,
so load a new model beside the serving one and `--activate` it (one SET) once it is complete;
reloading the version being served makes it unavailable (503) until the load finishes.

Upserted items are not lost with the namespace: every upsert also records the item's text in
the journal `sidserve:upserts`, shared by all versions, and the load re-encodes the journal's
items with the bundle's own graphs (before clearing anything) and adds them after the
catalog's, in item-id order, each on its path's next free disambiguation code. An id the
bundle's table holds keeps the table's SID (the bundle's catalog is the newer word on it).
Deleted items stay deleted the same way: a delete records the id in `sidserve:deleted` (and
drops it from the journal), and the load leaves those ids out of the table; an upsert of the
id takes it off that set. So loading the same bundle twice leaves exactly the same keys and
values, upserts and deletions included. Once the table is rebuilt, the journal is read again
and what gateways journalled meanwhile is applied. `--journal-only` applies the journal to a
version already loaded, through the gateway's own upsert and delete scripts in their replay
modes (a change is written only if the journal still says so, so nothing a gateway did since
the journal was read is undone), for the changes that other versions' gateways took during a
rollout; `--no-journal` loads the bundle's table alone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.bundle import Bundle, load_bundle
from service.stores.base import StoreUnavailable, assign_sids
from service.stores.redis_store import (
    ACTIVE_KEY,
    DELETED_KEY,
    REFUSED_ERRORS,
    UPSERTS_KEY,
    Keys,
    RedisStore,
    encode_vector,
    safe_url,
)
from sidserve.sids import format_sid

log = logging.getLogger(__name__)


class RedisUnreachable(ValueError):
    """Redis refused or timed out: one line naming the URL (exit 2 from the CLI)."""


@dataclass(frozen=True)
class Journal:
    """What the gateways changed since the bundles: upserted texts and deleted ids."""

    upserts: dict[str, str] = field(default_factory=dict)  # item id -> its last text
    deleted: set[str] = field(default_factory=set)


def changes_since(before: Journal, after: Journal) -> Journal:
    """What gateways journalled between two readings: upserts new or with another text, and
    ids deleted since."""
    upserts = {i: t for i, t in after.upserts.items() if before.upserts.get(i) != t}
    return Journal(upserts, after.deleted - before.deleted)


@dataclass(frozen=True)
class Replay:
    """The journal made ready for one bundle: its upserted items re-encoded with the bundle's
    graphs, less the ids the bundle's table holds (`skipped`) unless the version lacks them
    (`restore`: left out as deleted, come back since), and its deleted ids."""

    item_ids: list[str]
    texts: list[str]  # the journal's, which the codes were computed from
    codes: np.ndarray  # (n, levels) semantic paths
    vectors: np.ndarray | None  # (n, D) float32; None when the bundle keeps no item vectors
    deleted: list[str] = field(default_factory=list)  # sorted
    skipped: int = 0
    seconds: float = 0.0
    restore: frozenset[str] = frozenset()  # those of item_ids that the bundle's table holds

    @property
    def changes(self) -> int:
        return len(self.item_ids) + len(self.deleted)


@dataclass(frozen=True)
class LoadReport:
    model_version: str
    items: int
    removed_keys: int
    seconds: float
    table_sha256: str
    replayed: int = 0
    left_out: int = 0  # rows of the bundle's table deleted since

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    parser.add_argument("--redis-url", required=True, help="e.g. redis://localhost:6379/0")
    parser.add_argument("--batch", type=int, default=5000, help="items per pipeline")
    parser.add_argument(
        "--activate", action="store_true", help=f"then point {ACTIVE_KEY} at this version"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    journal = parser.add_mutually_exclusive_group()
    journal.add_argument(
        "--no-journal",
        action="store_true",
        help=f"load the bundle's table alone: no re-encoded upserts ({UPSERTS_KEY}), no "
        f"deletions ({DELETED_KEY})",
    )
    journal.add_argument(
        "--journal-only",
        action="store_true",
        help="apply the journal (upserts re-encoded, deletions) to the version, already "
        "loaded, without rebuilding it (after a rollout: what the old version's gateways took)",
    )


def table_digest(item_ids: Sequence[str], sids: np.ndarray) -> str:
    """sha256 of the item table (ids and SIDs), recorded in the meta hash."""
    h = hashlib.sha256("\n".join(item_ids).encode())
    h.update(b"\0" + np.ascontiguousarray(sids, dtype=np.int32).tobytes())
    return h.hexdigest()


def clear_version(client: redis.Redis, keys: Keys) -> int:
    """Delete every key of a version (meta first, so it stops counting as loaded)."""
    removed = int(client.delete(keys.meta))
    batch: list[str] = []
    for key in client.scan_iter(match=keys.pattern, count=1000):
        batch.append(key)
        if len(batch) == 1000:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def _batch_commands(pipe: Any, keys: Keys, ids: Sequence[str], sids: list[str]) -> None:
    pipe.hset(keys.sids, mapping=dict(zip(ids, sids, strict=True)))
    lists: dict[str, list[str]] = {}  # insertion-ordered: catalog order within each list
    for item_id, sid in zip(ids, sids, strict=True):
        entry, codes = f"{sid}|{item_id}", sid.split("-")[:-1]
        for depth in range(1, len(codes) + 1):
            lists.setdefault(keys.prefix_list("-".join(codes[:depth])), []).append(entry)
    for key, entries in lists.items():
        pipe.rpush(key, *entries)


def next_codes(table: np.ndarray) -> dict[str, int]:
    """Full semantic path "12-5-201" -> its next free disambiguation code in a SID table."""
    out: dict[str, int] = {}
    for row in table.tolist():
        path = format_sid(row[:-1])
        out[path] = max(out.get(path, 0), int(row[-1]) + 1)
    return out


def load_table(
    client: redis.Redis,
    model_version: str,
    item_ids: Sequence[str],
    sids: np.ndarray,
    *,
    replay: Replay | None = None,
    batch: int = 5000,
    progress: bool = False,
) -> LoadReport:
    """(Re)build one version's namespace from an item table less the replay's deleted ids,
    then the replayed upserts on their paths' next free codes (the upsert rule,
    `assign_sids`; a deleted row's code is not handed out again); see the module docstring."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if replay is not None and replay.restore:
        raise ValueError("a full load restores nothing: the table holds those ids")
    table = np.asarray(sids)
    if table.ndim != 2 or table.shape[1] < 2 or len(table) != len(item_ids):
        raise ValueError(f"{len(item_ids)} ids for a SID table of shape {table.shape}")
    keys, levels = Keys(model_version), table.shape[1] - 1
    started = time.perf_counter()
    next_code = next_codes(table)
    ids, vectors, left_out = list(item_ids), {}, 0
    if replay is not None and replay.deleted:
        gone = set(replay.deleted)
        keep = np.array([i not in gone for i in ids], dtype=bool)
        left_out = int((~keep).sum())
        table, ids = table[keep], [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
    if replay is not None and replay.item_ids:
        paths = [tuple(int(c) for c in row) for row in replay.codes.tolist()]
        extra, counters = assign_sids(
            replay.item_ids,
            paths,
            [None] * len(paths),
            lambda path: next_code.get(format_sid(path), 0),
            levels,
        )
        next_code.update((format_sid(path), code) for path, code in counters.items())
        table, ids = np.concatenate([table, extra]), ids + replay.item_ids
        if replay.vectors is not None:
            vectors = dict(zip(replay.item_ids, map(encode_vector, replay.vectors), strict=True))
    removed = clear_version(client, keys)
    texts = [format_sid(row) for row in table.tolist()]
    with _progress(len(texts), model_version, progress) as bar:
        for start in range(0, len(texts), batch):
            pipe = client.pipeline(transaction=False)
            _batch_commands(pipe, keys, ids[start : start + batch], texts[start : start + batch])
            pipe.execute()
            bar.update(min(batch, len(texts) - start))
    for name, mapping in ((keys.next, next_code), (keys.vectors, vectors)):
        pairs = list(mapping.items())
        for start in range(0, len(pairs), batch):
            client.hset(name, mapping=dict(pairs[start : start + batch]))
    digest = table_digest(item_ids, np.asarray(sids))
    replayed = len(ids) - len(item_ids) + left_out
    client.hset(
        keys.meta,
        mapping={
            "levels": levels,
            "items": len(texts),
            "table_sha256": digest,
            "upserts_replayed": replayed,
            "deleted_left_out": left_out,
            "loaded": 1,
        },
    )
    seconds = time.perf_counter() - started
    return LoadReport(model_version, len(texts), removed, seconds, digest, replayed, left_out)


def read_journal(client: redis.Redis) -> Journal:
    """The journal of every version's gateways: upserted texts and deleted ids."""
    upserts = dict(client.hscan_iter(UPSERTS_KEY, count=1000))
    return Journal(upserts, set(client.sscan_iter(DELETED_KEY, count=1000)))


def absent_ids(client: redis.Redis, keys: Keys, item_ids: Sequence[str]) -> set[str]:
    """Those of `item_ids` that the version does not hold."""
    ids, out = list(item_ids), set()
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        out.update(i for i, sid in zip(part, client.hmget(keys.sids, part), strict=True) if not sid)
    return out


def reencode(
    bundle: Bundle,
    journal: Journal,
    *,
    absent: Callable[[list[str]], set[str]] | None = None,
    progress: bool = True,
) -> Replay:
    """The journal's upserted items that the bundle's table does not hold (and those it
    holds that `absent` says the loaded version lacks), encoded with the bundle's graphs as
    its gateway would (`/v1/items/encode`), in item-id order (a reproducible load), and its
    deleted ids. The graphs are loaded only when there is something to encode."""
    known = set(bundle.item_ids)
    held = [i for i in journal.upserts if i in known]
    restore = frozenset(absent(held) if absent is not None and held else ())
    ids = sorted(i for i in journal.upserts if i not in known or i in restore)
    skipped, deleted = len(journal.upserts) - len(ids), sorted(journal.deleted)
    if not ids:
        empty = np.zeros((0, bundle.levels), dtype=np.int64)
        return Replay([], [], empty, None, deleted, skipped)
    from service.item_codes import assign_items
    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer

    started = time.perf_counter()
    model = OnnxIndexer(bundle.graph_paths)
    tokenizer = BundleTokenizer(bundle.file(bundle.tokenizer.file), bundle.tokenizer)
    texts = [journal.upserts[i] for i in ids]
    codes, vectors = assign_items(
        model, tokenizer, texts, bundle.levels, 64, progress, desc="re-encode upserts"
    )
    kept = vectors if bundle.item_vectors is not None else None  # as the gateway's upserts
    seconds = time.perf_counter() - started
    return Replay(ids, texts, codes, kept, deleted, skipped, seconds, restore)


async def apply_replay(
    url: str, bundle: Bundle, replay: Replay, timeout_s: float, batch: int
) -> tuple[int, int]:
    """Write re-encoded items into a loaded version with the gateway's own upsert (same path:
    the SID is kept; another path: the item moves), then delete the deleted ids: (items
    written, items removed). Each only if the journal still says so when it is written (the
    scripts' "replay" mode), so a gateway's upsert or delete since the journal was read is
    never undone. StoreUnavailable if the version is not loaded."""
    store = RedisStore(url, bundle.model_version, bundle.levels, timeout_s=timeout_s)
    try:
        await store.ping()  # not loaded: say so, even with nothing to write
        written = removed = 0
        for restore in (False, True):
            rows = [k for k, i in enumerate(replay.item_ids) if (i in replay.restore) == restore]
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                pairs = [(replay.item_ids[k], replay.codes[k]) for k in part]
                vectors = None if replay.vectors is None else replay.vectors[part]
                texts = [replay.texts[k] for k in part]
                written += await store.replay_upserts(pairs, vectors, texts, restore=restore)
        for start in range(0, len(replay.deleted), batch):
            removed += await store.replay_deletes(replay.deleted[start : start + batch])
        return written, removed
    finally:
        await store.close()


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(total: int, version: str, enabled: bool) -> Any:
    """A tqdm bar (tqdm is optional on the serving side: no bar without it)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="item", desc=f"load {version}")


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A sync client that answered PING, or RedisUnreachable naming the URL."""
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 5.0),
        decode_responses=True,
    )
    try:
        client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        client.close()
        raise RedisUnreachable(
            f"cannot reach Redis at {safe_url(url)}: {_first_line(exc)}"
        ) from exc
    return client


def _refusal(exc: BaseException) -> str:
    """Redis's own words: a pipeline's error quotes the whole failed command first (up to
    `--batch` items of it)."""
    return _first_line(exc).rpartition(" of pipeline caused error: ")[2].rstrip(".")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)  # BundleError is a ValueError: one line, exit 2
    client = connect(args.redis_url, args.timeout)
    url = safe_url(args.redis_url)
    keys = Keys(bundle.model_version)

    def absent(ids: list[str]) -> set[str]:
        return absent_ids(client, keys, ids)

    def apply(replay: Replay) -> tuple[int, int]:
        return asyncio.run(apply_replay(args.redis_url, bundle, replay, args.timeout, args.batch))

    late = 0
    try:
        journal = Journal() if args.no_journal else read_journal(client)
        if args.journal_only:
            replay = reencode(bundle, journal, absent=absent)
            written, removed = apply(replay)
        else:
            replay = reencode(bundle, journal)
            if client.get(ACTIVE_KEY) == bundle.model_version:
                log.warning(
                    "reloading the active version %s: 503s until done", bundle.model_version
                )
            report = load_table(
                client,
                bundle.model_version,
                bundle.item_ids,
                bundle.item_sids,
                replay=replay,
                batch=args.batch,
                progress=True,
            )
            removed = report.left_out
            if not args.no_journal:  # what gateways journalled while this load encoded
                since = changes_since(journal, read_journal(client))
                caught_up = reencode(bundle, since, absent=absent, progress=False)
                if caught_up.changes:
                    apply(caught_up)
                late = caught_up.changes
            if args.activate:
                client.set(ACTIVE_KEY, bundle.model_version)
    except StoreUnavailable as exc:
        raise RedisUnreachable(str(exc)) from exc
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise RedisUnreachable(f"lost Redis at {url}: {_first_line(exc)}") from exc
    except REFUSED_ERRORS as exc:
        raise RedisUnreachable(
            f"Redis at {url} refused the load: {_refusal(exc)}; model version "
            f"{bundle.model_version} stays unloaded there (its gateways answer 503) until a "
            "load completes"
        ) from exc
    finally:
        client.close()
    journal = (
        f"{len(replay.item_ids)} upserted items from {UPSERTS_KEY} re-encoded in "
        f"{replay.seconds:.1f} s"
    )
    if replay.skipped:
        journal += f" ({replay.skipped} more are in the bundle's table and keep its SIDs)"
    journal += f"; {removed} deleted items ({DELETED_KEY}) " + (
        "removed" if args.journal_only else "left out"
    )
    if args.journal_only:
        print(
            f"{journal}: applied to model version {bundle.model_version} at {url} ("
            f"{len(replay.item_ids) - written} upserts left alone: newer ones since)"
        )
        return 0
    active = f"; {ACTIVE_KEY} = {report.model_version}" if args.activate else ""
    print(
        f"loaded {report.items} items of model version {report.model_version} into {url} "
        f"in {report.seconds:.1f} s ({report.items_per_s:.0f} items/s){active}; "
        + ("journal not applied (--no-journal)" if args.no_journal else journal)
        + (f"; then {late} changes journalled during the load" if late else "")
    )
    return 0
