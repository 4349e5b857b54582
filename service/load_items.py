"""`sidserve load-items`: bulk-load a bundle's item SIDs into Redis (layout in
service/stores/redis_store.py).

Idempotent by rebuilding: the version's namespace is cleared first (its meta first, so a
half-loaded version is never reported `loaded`, then SCAN + UNLINK), then written in
pipelined batches in catalog order, counters and meta last. Loading the same bundle twice
leaves exactly the same keys and values, and upserts made since the previous load are
dropped: the namespace is the bundle's table again. Versions are separate namespaces, so load
a new model beside the serving one and `--activate` it (one SET) once it is complete;
reloading the version being served makes it unavailable (503) until the load finishes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.bundle import load_bundle
from service.stores.redis_store import ACTIVE_KEY, REFUSED_ERRORS, Keys, safe_url
from sidserve.sids import format_sid

log = logging.getLogger(__name__)


class RedisUnreachable(ValueError):
    """Redis refused or timed out: one line naming the URL (exit 2 from the CLI)."""


@dataclass(frozen=True)
class LoadReport:
    model_version: str
    items: int
    removed_keys: int
    seconds: float
    table_sha256: str

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


def load_table(
    client: redis.Redis,
    model_version: str,
    item_ids: Sequence[str],
    sids: np.ndarray,
    *,
    batch: int = 5000,
    progress: bool = False,
) -> LoadReport:
    """(Re)build one version's namespace from an item table; see the module docstring."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    table = np.asarray(sids)
    if table.ndim != 2 or table.shape[1] < 2 or len(table) != len(item_ids):
        raise ValueError(f"{len(item_ids)} ids for a SID table of shape {table.shape}")
    keys, levels = Keys(model_version), table.shape[1] - 1
    started = time.perf_counter()
    removed = clear_version(client, keys)
    texts = [format_sid(row) for row in table.tolist()]
    next_code: dict[str, int] = {}
    for row, text in zip(table.tolist(), texts, strict=True):
        path = text.rsplit("-", 1)[0]
        next_code[path] = max(next_code.get(path, 0), int(row[-1]) + 1)
    with _progress(len(texts), model_version, progress) as bar:
        for start in range(0, len(texts), batch):
            pipe = client.pipeline(transaction=False)
            _batch_commands(
                pipe, keys, item_ids[start : start + batch], texts[start : start + batch]
            )
            pipe.execute()
            bar.update(min(batch, len(texts) - start))
    paths = list(next_code.items())
    for start in range(0, len(paths), batch):
        client.hset(keys.next, mapping=dict(paths[start : start + batch]))
    digest = table_digest(item_ids, table)
    client.hset(
        keys.meta,
        mapping={"levels": levels, "items": len(texts), "table_sha256": digest, "loaded": 1},
    )
    seconds = time.perf_counter() - started
    return LoadReport(model_version, len(texts), removed, seconds, digest)


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
    try:
        if client.get(ACTIVE_KEY) == bundle.model_version:
            log.warning("reloading the active version %s: 503s until done", bundle.model_version)
        report = load_table(
            client,
            bundle.model_version,
            bundle.item_ids,
            bundle.item_sids,
            batch=args.batch,
            progress=True,
        )
        if args.activate:
            client.set(ACTIVE_KEY, bundle.model_version)
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
    active = f"; {ACTIVE_KEY} = {report.model_version}" if args.activate else ""
    print(
        f"loaded {report.items} items of model version {report.model_version} into {url} "
        f"in {report.seconds:.1f} s ({report.items_per_s:.0f} items/s){active}"
    )
    return 0
