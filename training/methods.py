"""Every evaluable method behind one interface: rank items for queries, and (SID methods) give
items semantic codes and queries their top-K catalog paths.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import Catalog, QuerySet
from training.encoder import (
    TextEncoder,
    cache_dir,
    file_digest,
    parts_digest,
    save_cache_entry,
    texts_digest,
)
from training.metrics import RERANK_POOL, SidIndex, assignment_agreement

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What a method may use: the catalog, train pairs, off-the-shelf embeddings, options."""

    catalog: Catalog
    queries: QuerySet | None
    train_pairs: list[tuple[str, int]]
    encoder: TextEncoder
    item_emb: np.ndarray
    query_emb: np.ndarray | None
    checkpoint: Path | None = None
    levels: int = 3
    codebook_size: int = 256
    beam: int = 10
    depth: int = 100
    min_depth: int = 1
    sid_order: str = "beam"  # see training.metrics.sid_retrieval.SID_ORDERS
    rerank_pool: int = RERANK_POOL  # candidates that sid_order "pool" re-orders
    seed: int = 0


@dataclass
class MethodResult:
    ranked: list[np.ndarray] | None = None  # per evaluated query: item indices, best first
    item_sids: np.ndarray | None = None  # (N, L) semantic codes
    query_sids: list[np.ndarray] | None = None  # per query: (K, L) beams, best first
    codebook_sizes: list[int] | None = None
    candidates: np.ndarray | None = None  # per query: candidate-set size before truncation
    metrics: dict[str, float] = field(default_factory=dict)  # method-specific extras
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)


def _need_queries(ctx: EvalContext, method: str) -> QuerySet:
    if ctx.queries is None or ctx.query_emb is None:
        raise ValueError(f"method {method!r} ranks products for queries: pass --judgments")
    return ctx.queries


def _bm25(ctx: EvalContext) -> MethodResult:
    from training.baselines.bm25 import BM25Retriever

    queries = _need_queries(ctx, "bm25")
    t = time.perf_counter()
    bm25 = BM25Retriever(ctx.catalog.texts)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    ranked = bm25.rank(queries.texts, ctx.depth)
    return MethodResult(
        ranked=ranked, timings={"index_s": t_fit, "queries_s": time.perf_counter() - t}
    )


def _dense(ctx: EvalContext) -> MethodResult:
    from training.baselines.dense import dense_rank

    _need_queries(ctx, "dense")
    t = time.perf_counter()
    ranked = dense_rank(ctx.query_emb, ctx.item_emb, ctx.depth)  # type: ignore[arg-type]
    return MethodResult(ranked=ranked, timings={"queries_s": time.perf_counter() - t})


def _dense_ft(ctx: EvalContext) -> MethodResult:
    from training.baselines.dense import dense_rank
    from training.baselines.dense_ft import FinetuneConfig, finetune, finetuned

    queries = _need_queries(ctx, "dense-ft")
    cfg = FinetuneConfig(seed=ctx.seed)
    timings: dict[str, float] = {}
    if ctx.checkpoint is None:  # trained on this train split, cached by its inputs
        model_dir, train_s = finetuned(
            ctx.train_pairs, ctx.catalog.texts, cfg, ctx.encoder.fingerprint
        )
    else:
        model_dir, train_s = ctx.checkpoint, None
        if not (model_dir / "model.safetensors").is_file():
            t = time.perf_counter()
            finetune(ctx.train_pairs, ctx.catalog.texts, model_dir, cfg)
            train_s = time.perf_counter() - t
    if train_s is not None:
        timings["train_s"] = train_s
    enc = TextEncoder(model_dir, max_length=ctx.encoder.max_length)
    t = time.perf_counter()
    items = enc.encode_cached(ctx.catalog.texts, "items")
    timings["encode_items_s"] = time.perf_counter() - t
    q = enc.encode_cached(queries.texts, "queries")
    t = time.perf_counter()
    ranked = dense_rank(q, items, ctx.depth)
    timings["queries_s"] = time.perf_counter() - t
    return MethodResult(ranked=ranked, timings=timings, info={"model_dir": str(model_dir)})


def _per_query(ctx: EvalContext, paths: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Top-K paths of every evaluated query from its off-the-shelf embedding."""
    from tqdm.auto import tqdm

    assert ctx.query_emb is not None
    return [paths(q) for q in tqdm(ctx.query_emb, desc="query SIDs", unit="query")]


def _sid_method(
    ctx: EvalContext,
    item_sids: np.ndarray,
    query_paths: Callable[[], list[np.ndarray]],
    codebook_sizes: list[int],
    timings: dict[str, float],
    vectors: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> MethodResult:
    """Shared tail of every SID method: query beams, then prefix-match retrieval.

    `vectors` gives the method's own unit (query, item) vectors for `--sid-order dense|pool`; by
    default the off-the-shelf embeddings the two-stage baselines quantise.
    """
    result = MethodResult(item_sids=item_sids, codebook_sizes=codebook_sizes, timings=timings)
    if ctx.queries is None:
        return result
    t = time.perf_counter()
    result.query_sids = query_paths()
    timings["query_sids_s"] = time.perf_counter() - t
    t = time.perf_counter()
    query_vecs = item_vecs = None
    if ctx.sid_order in ("dense", "pool"):
        query_vecs, item_vecs = vectors() if vectors else (ctx.query_emb, ctx.item_emb)
    pool = ctx.rerank_pool if ctx.sid_order == "pool" else None
    index = SidIndex(item_sids)
    ranked, sizes = [], []
    for q, beams in enumerate(result.query_sids):
        similarity = None
        if query_vecs is not None and item_vecs is not None:
            similarity = functools.partial(_similarity, item_vecs, query_vecs[q])
        order, count = index.rank(
            beams, min_depth=ctx.min_depth, limit=ctx.depth, similarity=similarity, pool=pool
        )
        ranked.append(order)
        sizes.append(count)
    timings["sid_retrieval_s"] = time.perf_counter() - t
    result.ranked, result.candidates = ranked, np.asarray(sizes)
    return result


def _similarity(items: np.ndarray, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return items[candidates] @ query


def _hkmeans(ctx: EvalContext) -> MethodResult:
    from training.baselines.hkmeans import HierarchicalKMeans

    hk = HierarchicalKMeans(ctx.levels, ctx.codebook_size, ctx.seed)
    t = time.perf_counter()
    codes = hk.fit(ctx.item_emb)
    timings = {"fit_s": time.perf_counter() - t}
    return _sid_method(
        ctx,
        codes,
        lambda: _per_query(ctx, lambda q: hk.query_paths(q, ctx.beam)[0]),
        hk.codebook_sizes,
        timings,
    )


def _quantiser(ctx: EvalContext, contrastive: bool) -> MethodResult:
    """RQ-VAE (`rqvae`) or DSIRM's contrastive RQ-VAE trained on the train pairs (`dsirm`)."""
    from training.baselines.rqvae import CONFIG_FILE, RQVAE, RQVAEConfig, dsirm_config
    from training.sids import Trie

    shape = dict(
        in_dim=ctx.item_emb.shape[1],
        levels=ctx.levels,
        codebook_size=ctx.codebook_size,
        seed=ctx.seed,
    )
    cfg = dsirm_config(**shape) if contrastive else RQVAEConfig(**shape)
    name = "dsirm" if contrastive else "rqvae"
    key = [cfg.__dict__, ctx.encoder.fingerprint, texts_digest(ctx.catalog.texts)]
    if contrastive:
        if not ctx.train_pairs:
            raise ValueError(
                "method 'dsirm' learns from queries: pass --judgments with a "
                "train side that has relevant pairs"
            )
        key.append(ctx.train_pairs)
    model_dir = ctx.checkpoint or cache_dir() / name / parts_digest(*key)
    timings: dict[str, float] = {}
    if (model_dir / CONFIG_FILE).is_file():
        model = RQVAE.load(model_dir)
    else:
        model = RQVAE(cfg)
        queries = pairs = None
        if contrastive:
            texts = sorted({q for q, _ in ctx.train_pairs})
            row = {q: n for n, q in enumerate(texts)}
            queries = ctx.encoder.encode_cached(texts, "queries")
            pairs = np.array([(row[q], i) for q, i in ctx.train_pairs], dtype=np.int64)
        t = time.perf_counter()
        info = model.fit(ctx.item_emb, queries, pairs)
        timings["fit_s"] = time.perf_counter() - t
        model.save(model_dir)
        log.info("%s: %s, saved to %s", name, info, model_dir)
    codes = model.codes(ctx.item_emb)
    model.trie = Trie(codes)
    result = _sid_method(
        ctx,
        codes,
        lambda: _per_query(ctx, lambda q: model.query_paths(q, ctx.beam)[0]),
        model.codebook_sizes,
        timings,
    )
    result.info["model_dir"] = str(model_dir)
    return result


def _rqvae(ctx: EvalContext) -> MethodResult:
    return _quantiser(ctx, contrastive=False)


def _dsirm(ctx: EvalContext) -> MethodResult:
    return _quantiser(ctx, contrastive=True)


def _load_indexer(ctx: EvalContext, method: str):
    """(model, item token states, a callable giving query token states, the item codes training
    assigned, or None when the checkpoint was trained on another catalog) of --checkpoint."""
    from training.indexer.checkpoint import load_checkpoint
    from training.indexer.states import cached_states

    if ctx.checkpoint is None:
        raise ValueError(f"method {method!r} needs --checkpoint (a `sidserve train` output)")
    model, tokenizer, assigned, doc = load_checkpoint(ctx.checkpoint)
    if doc.get("levels_trained", model.cfg.levels) < model.cfg.levels:
        raise ValueError(
            f"{ctx.checkpoint}: only {doc['levels_trained']} of "
            f"{model.cfg.levels} levels are trained"
        )
    fp = doc["base_fingerprint"]
    items = cached_states(
        model, tokenizer, ctx.catalog.texts, model.cfg.max_item_tokens, fp, "items"
    )

    def queries():
        assert ctx.queries is not None
        return cached_states(
            model, tokenizer, ctx.queries.texts, model.cfg.max_query_tokens, fp, "queries"
        )

    # the codes training fixed level by level, when they are codes of this very catalog
    same = doc.get("catalog_checksum") == ctx.catalog.checksum() and len(assigned) == len(items)
    return model, items, queries, (assigned if same else None)


def _catalog_pass(ctx: EvalContext, model, items) -> tuple[np.ndarray, np.ndarray]:
    """The catalog's greedy codes and dense vectors (`codes_and_dense`), memoised on disk.

    Evaluating one checkpoint in several orders, or as `indexer` and `indexer-dense`, needs
    the same pass over every catalog item (minutes on a CPU); the cache key is the
    checkpoint's files and the catalog's texts, so a retrained checkpoint never hits.
    """
    from training.indexer.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from training.indexer.inference import codes_and_dense

    assert ctx.checkpoint is not None
    digest = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        digest.update(file_digest(ctx.checkpoint / name).encode())
    key = f"{digest.hexdigest()[:24]}-{texts_digest(ctx.catalog.texts)[:24]}"
    path = cache_dir() / "indexer-catalog" / f"{key}.npz"
    shape = (len(items), model.cfg.levels), (len(items), model.dim)
    if path.is_file():
        with np.load(path) as cached:
            codes, dense = cached["codes"], cached["dense"]
        if (codes.shape, dense.shape) == shape:
            log.info("indexer catalog pass: cache hit %s", path)
            return codes, dense
        log.warning(
            "indexer catalog pass: ignoring %s with shapes %s", path, (codes.shape, dense.shape)
        )
    codes, dense = codes_and_dense(model, items)
    save_cache_entry(path, codes=codes, dense=dense)
    return codes, dense


def _indexer(ctx: EvalContext) -> MethodResult:
    """SID retrieval with the semantic indexer: greedy item codes, trie-constrained beams."""
    from training.indexer.inference import dense_representations, query_beams
    from training.sids import Trie

    model, items, queries, assigned = _load_indexer(ctx, "indexer")
    t = time.perf_counter()
    codes, item_vecs = _catalog_pass(ctx, model, items)
    timings = {"assign_s": time.perf_counter() - t}
    sizes = [model.cfg.codebook_size] * model.cfg.levels

    def paths() -> list[np.ndarray]:
        return [p for p, _ in query_beams(model, queries(), Trie(codes), ctx.beam)]

    def vectors() -> tuple[np.ndarray, np.ndarray]:
        return dense_representations(model, queries()), item_vecs

    result = _sid_method(ctx, codes, paths, sizes, timings, vectors)
    if assigned is not None:
        result.metrics.update(assignment_agreement(codes, assigned))
    return result


def _indexer_dense(ctx: EvalContext) -> MethodResult:
    """Dense retrieval with the indexer's own representation (its pooled encoder output)."""
    from training.baselines.dense import dense_rank
    from training.indexer.inference import dense_representations

    _need_queries(ctx, "indexer-dense")
    model, items, queries, _ = _load_indexer(ctx, "indexer-dense")
    t = time.perf_counter()
    _, item_vecs = _catalog_pass(ctx, model, items)
    ranked = dense_rank(dense_representations(model, queries()), item_vecs, ctx.depth)
    return MethodResult(ranked=ranked, timings={"encode_and_rank_s": time.perf_counter() - t})


METHODS: dict[str, Callable[[EvalContext], MethodResult]] = {
    "bm25": _bm25,
    "dense": _dense,
    "dense-ft": _dense_ft,
    "hkmeans": _hkmeans,
    "rqvae": _rqvae,
    "dsirm": _dsirm,
    "indexer": _indexer,
    "indexer-dense": _indexer_dense,
}
