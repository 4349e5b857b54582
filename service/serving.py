"""The serving logic behind the routes: limits, tokenisation, batched beam search, store reads,
prefix-match features. Routes (`api_router.py`) only translate HTTP to these calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np

from service import protocol as p
from service.backends.base import BackendUnavailable, InferenceBackend
from service.batching import Beams, QueryBatcher
from service.bundle import Bundle, load_bundle
from service.features import prefix_features
from service.metrics import Metrics
from service.onnx_model import codes_and_vectors
from service.settings import Settings
from service.sid_rows import SidRows
from service.stores.base import Candidates, SidStore, StoreUnavailable, Vectors
from service.tokenizer import BundleTokenizer, length_batches
from service.trie import CompactTrie
from sidserve.sids import format_sid

log = logging.getLogger(__name__)
T = TypeVar("T")


class LimitError(ValueError):
    """Input within the schema but beyond this deployment's limits (422 naming the field)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def build_backend(settings: Settings, bundle: Bundle) -> InferenceBackend:
    if settings.triton_url:
        from service.backends.triton import TritonBackend

        return TritonBackend(
            settings.triton_url,
            settings.triton_encoder,
            settings.triton_decoder_first,
            settings.triton_decoder,
            settings.inference_timeout_s,
            settings.triton_reconnect_max_s,
            bundle.model_version,
            settings.triton_check_s,
        )
    from service.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(bundle, settings.onnx_threads, settings.onnx_lone_threads)


def build_store(settings: Settings, bundle: Bundle) -> SidStore:
    if settings.redis_url:
        from service.stores.redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            bundle.model_version,
            bundle.levels,
            timeout_s=settings.store_timeout_s,
        )
    from service.stores.memory import MemoryStore

    return MemoryStore.from_bundle(bundle)


def _text_field(field: str, i: int) -> str:
    """How an error names text i of a request: `query` is one text, `queries` and `items`
    are lists."""
    return field if field == "query" else f"{field}[{i}]"


class SidService:
    def __init__(
        self,
        settings: Settings,
        bundle: Bundle,
        backend: InferenceBackend,
        store: SidStore,
        metrics: Metrics | None = None,
    ):
        self.vectors: np.ndarray | None = None  # (N, D) float32, the items' in SID order
        self._vector_rows: SidRows | None = None  # full SID -> row of `vectors`
        if bundle.item_vectors is not None:
            # A query's candidates come in runs that share a prefix, so in SID order their
            # vectors are read in runs too: 500 of them from an evicted cache took 160 rather
            # than 240 us. The bundle is kept without its copy in item order.
            order = np.lexsort(bundle.item_sids.T[::-1])
            self.vectors = bundle.item_vectors[order]
            self._vector_rows = SidRows(bundle.item_sids[order])
            bundle = dataclasses.replace(bundle, item_vectors=None)
        self.settings, self.bundle, self.backend, self.store = settings, bundle, backend, store
        self.metrics = metrics or Metrics()
        self.levels = bundle.levels
        self.tokenizer = BundleTokenizer(bundle.file(bundle.tokenizer.file), bundle.tokenizer)
        self._paths = np.unique(bundle.semantic_sids, axis=0)
        trie = CompactTrie.from_codes(self._paths, bundle.codebook_sizes)
        self.batcher = QueryBatcher(
            backend,
            trie,
            self.metrics,
            bundle.tokenizer.pad_id,
            max_batch=settings.batch_max_queries,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            queue_limit=settings.queue_limit,
            workers=settings.workers,
            length_window=settings.batch_length_window,
            lone=backend.lone,
            worker_nice=settings.worker_nice,
        )
        self._trie_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._path_version: str | None = None  # the store's, when the trie last followed it
        self.metrics.model.info(
            {
                "model_version": bundle.model_version,
                "backend": backend.name,
                "store": type(store).__name__,
                "levels": str(bundle.levels),
            }
        )
        log.info(
            "bundle %s: %d items, %d paths, trie %.1f bytes/item, item vectors %s",
            bundle.model_version,
            len(bundle.item_ids),
            len(self._paths),
            trie.bytes_per_item(),
            "none" if self.vectors is None else f"{self.vectors.nbytes / 2**20:.1f} MiB",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SidService:
        bundle = load_bundle(settings.bundle, checksums=settings.verify_checksums)
        return cls(settings, bundle, build_backend(settings, bundle), build_store(settings, bundle))

    async def start(self) -> None:
        bind = getattr(self.backend, "bind", None)
        if bind is not None:
            bind(asyncio.get_running_loop())
        self.batcher.start()
        if self.settings.trie_refresh_s > 0 and self.store.shared:
            self._refresher = asyncio.create_task(self._refresh_trie_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.batcher.stop()
        await self.backend.close()
        await self.store.close()

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    # ---- helpers
    async def _bounded(self, aw: Awaitable[T], timeout: float, what: str) -> T:
        try:
            return await asyncio.wait_for(aw, timeout)
        except TimeoutError as exc:
            cls = StoreUnavailable if what == "store" else BackendUnavailable
            raise cls(f"{what} did not answer within {timeout}s") from exc

    @staticmethod
    def _check_count(field: str, given: int, limit: int) -> None:
        if given > limit:
            raise LimitError(field, f"{given} given, at most {limit} per request")

    def _check_texts(self, field: str, texts: list[str], limit: int) -> None:
        self._check_count(field, len(texts), limit)
        for i, t in enumerate(texts):
            if len(t) > self.settings.max_text_chars:
                raise LimitError(
                    _text_field(field, i),
                    f"{len(t)} characters, at most {self.settings.max_text_chars}",
                )

    def _check_search(self, beam_width: int, candidates: int = 0, min_depth: int = 1) -> None:
        s = self.settings
        if beam_width > s.max_beam_width:
            raise LimitError("beam_width", f"{beam_width} > the maximum {s.max_beam_width}")
        if candidates > s.max_candidates:
            raise LimitError("candidates", f"{candidates} > the maximum {s.max_candidates}")
        if min_depth > self.levels:
            raise LimitError("min_depth", f"{min_depth} > the number of levels {self.levels}")

    def _require_tokens(self, field: str, ids: np.ndarray, mask: np.ndarray) -> None:
        """A text the tokenizer reduces to [CLS] [SEP] (only control or zero-width
        characters, which it drops) is as empty as a blank one: a 422 naming it."""
        spec = self.bundle.tokenizer
        real = (mask == 1) & (ids != spec.cls_id) & (ids != spec.sep_id)
        empty = np.flatnonzero(~real.any(axis=1))
        if len(empty):
            raise LimitError(
                _text_field(field, int(empty[0])),
                "has no character the model reads (only control, format or zero-width ones)",
            )

    async def _beams(self, field: str, texts: list[str], beam: int) -> list[Beams]:
        t0 = time.perf_counter()
        ids, mask = self.tokenizer.queries(texts)
        self._require_tokens(field, ids, mask)
        rows = [ids[i, : int(mask[i].sum())] for i in range(len(texts))]
        self.metrics.stage_seconds.labels("tokenise").observe(time.perf_counter() - t0)
        return await self._bounded(
            self.batcher.search(rows, beam), self.settings.inference_timeout_s, "inference"
        )

    @staticmethod
    def _sids(paths: np.ndarray, logp: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        """`protocol.Sid` rows as plain dicts (see `query_sids`)."""
        return [
            {"sid": format_sid(row), "codes": row, "log_prob": lp, "rank": r}
            for r, (row, lp) in enumerate(
                zip(paths[:top_k].tolist(), logp[:top_k].tolist(), strict=True)
            )
        ]

    # ---- endpoints
    async def query_sids(self, req: p.QuerySidsRequest) -> dict[str, Any]:
        """The `protocol.QuerySidsResponse` as plain dicts and lists, serialised as they are:
        for 100 candidates, building pydantic objects cost more than the beam search's
        bookkeeping (tests validate real responses against the model)."""
        texts = req.texts()
        field = "queries" if req.queries is not None else "query"
        self._check_texts(field, texts, self.settings.max_queries)
        self._check_search(req.beam_width, req.candidates, req.min_depth)
        order = self._order(req.order)
        beams = await self._beams(field, texts, req.beam_width)
        tops = [(b.paths[: req.top_k], b.log_probs[: req.top_k]) for b in beams]
        found = [Candidates.empty(self.levels)] * len(texts)
        if req.candidates > 0:
            # ordering by similarity needs a pool to choose from, read in the beam order: the
            # SIDs choose the candidates, the vectors rank them
            pool = req.candidates
            if order != "beam":
                pool = max(pool, self.settings.rerank_pool)
            t0 = time.perf_counter()
            found = await self._bounded(
                self.store.candidates_many([paths for paths, _ in tops], pool, req.min_depth),
                self.settings.store_timeout_s,
                "store",
            )
            self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = [
            {
                "query": text,
                "sids": self._sids(paths, logp, req.top_k),
                "candidates": self._candidates(
                    paths,
                    logp,
                    c.item_ids,
                    c.sids,
                    c.sid_texts,
                    self._similarity(b.vector, c.sids, c.vectors),
                    order,
                    req.candidates,
                ),
            }
            for text, b, (paths, logp), c in zip(texts, beams, tops, found, strict=True)
        ]
        self.metrics.stage_seconds.labels("scoring").observe(time.perf_counter() - t0)
        return {"model_version": self.model_version, "results": results}

    def _order(self, requested: str | None) -> str:
        if requested is None:
            return "beam" if self.vectors is None else "similarity"
        if requested != "beam" and self.vectors is None:
            raise LimitError(
                "order",
                f"{requested!r} needs item vectors, and bundle {self.model_version} has none "
                "(exported before they were added): use 'beam' or re-export",
            )
        return requested

    def _similarity(self, query: np.ndarray, sids: np.ndarray, stored: Vectors) -> np.ndarray:
        """(n,) cosine of the query's vector with each item's; NaN for items without one.

        An item's vector is the one the store holds from its last upsert (`stored`, by
        position), else the bundle's while the item still holds its bundle SID (a SID is
        never reused, `sid_rows`). Both are read through the store, so every replica sees the
        same vector."""
        if self._vector_rows is None or self.vectors is None or not len(sids):
            return np.full(len(sids), np.nan)
        rows = self._vector_rows.find(sids)
        known = rows >= 0
        known[list(stored)] = False
        out = (self.vectors.take(np.maximum(rows, 0), axis=0) @ query).astype(np.float64)
        out[~known] = np.nan
        for k, vector in stored.items():
            out[k] = float(vector @ query)
        return out

    @staticmethod
    def _candidates(
        paths: np.ndarray,
        logp: np.ndarray,
        ids: list[str],
        sids: np.ndarray,
        sid_texts: list[str] | None,
        similarity: np.ndarray,
        order_by: str,
        limit: int,
    ) -> list[dict[str, Any]]:
        """`protocol.Candidate` rows as plain dicts, the first `limit` of the order asked for
        (the store's order is the beam order, which also breaks ties)."""
        if not ids:
            return []
        order = np.arange(len(ids))
        pool = prefix_features(paths, logp, sids) if order_by == "depth" else None
        if order_by != "beam":
            worst_first = np.where(np.isnan(similarity), np.inf, -similarity)  # no vector: last
            keys = (order, worst_first) if pool is None else (order, worst_first, -pool.max_depth)
            order = np.lexsort(keys)
        order = order[:limit]
        # features and Python objects only for the returned rows (the pool may be 5x larger)
        picked = sids[order]
        f = prefix_features(paths, logp, picked) if pool is None else pool.rows(order)
        depth, best, score = f.depth.tolist(), f.max_depth.tolist(), f.score.tolist()
        rank, lp = f.best_rank.tolist(), f.best_log_prob.tolist()
        sim, picks = similarity[order].tolist(), order.tolist()
        if sid_texts is None:
            texts = [format_sid(row) for row in picked.tolist()]
        else:  # the store's strings, written by format_sid
            texts = [sid_texts[n] for n in picks]
        return [
            {
                "item_id": ids[n],
                "sid": texts[k],
                "matched_depth": depth[k],
                "max_depth": best[k],
                "prefix_score": score[k],
                "best_rank": rank[k] if rank[k] >= 0 else None,
                "best_log_prob": lp[k] if rank[k] >= 0 else None,
                "similarity": None if sim[k] != sim[k] else sim[k],  # NaN: no vector
            }
            for k, n in enumerate(picks)
        ]

    async def relevance(self, req: p.RelevanceRequest) -> p.RelevanceResponse:
        self._check_texts("query", [req.query], 1)
        self._check_search(req.beam_width)
        self._check_count("item_ids", len(req.item_ids), self.settings.max_relevance_items)
        (beams,) = await self._beams("query", [req.query], req.beam_width)
        paths, logp = beams.paths[: req.top_k], beams.log_probs[: req.top_k]
        t0 = time.perf_counter()
        stored = await self._bounded(
            self.store.lookup(req.item_ids), self.settings.store_timeout_s, "store"
        )
        self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t0)
        known = [i for i, s in enumerate(stored.sids) if s is not None]
        sids = np.array([stored.sids[i] for i in known]).reshape(len(known), self.levels + 1)
        f = prefix_features(paths, logp, sids)
        position = {i: n for n, i in enumerate(known)}  # request position -> row of `sids`
        vectors = {position[i]: v for i, v in stored.vectors.items() if i in position}
        similarity = self._similarity(beams.vector, sids, vectors)
        items = [p.RelevanceItem(item_id=i, found=False) for i in req.item_ids]
        for n, i in enumerate(known):
            items[i] = p.RelevanceItem(
                item_id=req.item_ids[i],
                found=True,
                sid=format_sid(sids[n]),
                matched_depth=f.depth[n].tolist(),
                max_depth=int(f.max_depth[n]),
                prefix_score=float(f.score[n]),
                best_rank=int(f.best_rank[n]) if f.best_rank[n] >= 0 else None,
                best_log_prob=float(f.best_log_prob[n]) if f.best_rank[n] >= 0 else None,
                similarity=None if np.isnan(similarity[n]) else float(similarity[n]),
            )
        return p.RelevanceResponse(
            model_version=self.model_version,
            query=req.query,
            sids=[p.Sid(**row) for row in self._sids(paths, logp, req.top_k)],
            items=items,
            unknown=[it.item_id for it in items if not it.found],
        )

    async def encode_items(self, req: p.EncodeRequest) -> p.EncodeResponse:
        texts = [it.text for it in req.items]
        self._check_texts("items", texts, self.settings.max_items)
        codes, vectors = await self._bounded(
            self._item_codes(texts), self.settings.inference_timeout_s, "inference"
        )
        pairs = [(it.item_id, codes[n]) for n, it in enumerate(req.items)]
        t0 = time.perf_counter()
        if req.upsert:  # with the vectors, the bundle's similarity order covers them too
            op = self.store.upsert(
                pairs, vectors if self.vectors is not None else None, texts=texts
            )
        else:
            op = self.store.preview(pairs)
        sids = await self._bounded(op, self.settings.store_timeout_s, "store")
        self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t0)
        if req.upsert:  # paths new to the catalog join this gateway's trie at once
            await self._follow_store_paths()
        return p.EncodeResponse(
            model_version=self.model_version,
            items=[
                p.EncodedItem(
                    item_id=it.item_id,
                    sid=format_sid(sids[n]),
                    codes=[int(c) for c in sids[n, : self.levels]],
                    disambiguation=int(sids[n, self.levels]),
                    stored=req.upsert,
                )
                for n, it in enumerate(req.items)
            ],
        )

    async def delete_items(self, req: p.DeleteRequest) -> p.DeleteResponse:
        self._check_count("item_ids", len(req.item_ids), self.settings.max_delete_items)
        t0 = time.perf_counter()
        stored = await self._bounded(
            self.store.delete(req.item_ids), self.settings.store_timeout_s, "store"
        )
        self.metrics.stage_seconds.labels("store").observe(time.perf_counter() - t0)
        await self._follow_store_paths()
        found: dict[bool, list[str]] = {True: [], False: []}
        for item_id, was in zip(req.item_ids, stored, strict=True):
            found[was].append(item_id)
        return p.DeleteResponse(
            model_version=self.model_version, deleted=found[True], unknown=found[False]
        )

    async def _item_codes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Greedy semantic codes (n, L) and dense vectors (n, D) of item texts, from one
        encoder pass. The batch is split across the batch workers (by token length, so each
        part pads little) and the parts run side by side."""
        t0 = time.perf_counter()
        ids, mask = self.tokenizer.items(texts)
        self._require_tokens("items", ids, mask)
        size = -(-len(texts) // self.batcher.workers)
        parts = list(length_batches(ids, mask, size))
        self.metrics.stage_seconds.labels("tokenise").observe(time.perf_counter() - t0)

        def compute(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with self.metrics.stage("encode"):
                return codes_and_vectors(self.backend, ids, mask, self.levels)

        done = await asyncio.gather(*(self.batcher.run(compute, i, m) for _, i, m in parts))
        codes = np.zeros((len(texts), self.levels), dtype=np.int64)
        vectors = np.zeros((len(texts), self.bundle.hidden_size), dtype=np.float32)
        for (idx, _, _), (part_codes, part_vectors) in zip(parts, done, strict=True):
            codes[idx], vectors[idx] = part_codes, part_vectors
        return codes, vectors

    async def _follow_store_paths(self) -> None:
        """After this gateway's upserts and deletes: `follow_store_paths`, best effort (the
        write is done; a store that stops answering now leaves the trie to the next write or,
        with Redis, the next refresh)."""
        try:
            await self.follow_store_paths()
        except StoreUnavailable as exc:
            log.warning("trie not updated after a write: %s", exc)

    async def _refresh_trie_forever(self) -> None:
        """Every `trie_refresh_s`, `follow_store_paths`: without this another replica's beams
        could never reach an item on a path new to the catalog, and would go on ending on
        paths whose items other replicas deleted (until a restart). The first at start: a load
        leaves deleted items out of the bundle's table. One cheap read per period
        (`path_version`); the paths are read only on a change."""
        while True:
            try:
                await self.follow_store_paths()
            except StoreUnavailable as exc:
                log.debug("trie refresh skipped: %s", exc)
            except Exception:
                log.exception("trie refresh failed")
            await asyncio.sleep(self.settings.trie_refresh_s)

    async def follow_store_paths(self) -> None:
        """Make the trie hold exactly the store's live paths (`SidStore.live_paths`) when
        they may have changed since it last did: paths new to the catalog join, paths whose
        items were all deleted or moved away leave, so no beam is spent on an empty one."""
        timeout = self.settings.store_timeout_s
        async with self._trie_lock:  # reads too: two followers never apply out of order
            version = await self._bounded(self.store.path_version(), timeout, "store")
            if version == self._path_version:
                return
            version, paths = await self._bounded(self.store.live_paths(), timeout, "store")
            if len(paths) and not np.array_equal(paths, self._paths):
                self._paths = paths
                self.batcher.trie = CompactTrie.from_codes(paths, self.bundle.codebook_sizes)
            self._path_version = version

    async def readiness(self) -> dict[str, str]:
        await self._bounded(self.backend.check(), self.settings.inference_timeout_s, "inference")
        await self._bounded(self.store.ping(), self.settings.store_timeout_s, "store")
        return {
            "status": "ready",
            "model_version": self.model_version,
            "backend": self.backend.name,
            "store": type(self.store).__name__,
        }
