"""`sidserve evaluate`: run one method on a catalog (+ judgments) and report every metric."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.cli_args import add_data_arguments, load_inputs
from training.data import (
    DataError,
    QuerySet,
    category_levels,
    group_by_query,
    split_by_query,
)
from training.methods import METHODS, EvalContext, MethodResult
from training.metrics import (
    RELEVANCE_MODELS,
    RERANK_POOL,
    SID_ORDERS,
    candidate_recall,
    category_ami,
    code_accuracy,
    code_accuracy_ceiling,
    codebook_stats,
    collision_stats,
    prefix_features,
    relevance_auc,
    retrieval_metrics,
)
from training.sids import disambiguate

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    add_data_arguments(parser, judgments_required=False)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="trained model directory; trained and written there if empty",
    )
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--split",
        choices=["dev", "train", "all"],
        default="dev",
        help="which by-query side of --judgments to evaluate (default: dev)",
    )
    s = parser.add_argument_group("semantic IDs")
    s.add_argument("--levels", type=int, default=3)
    s.add_argument("--codebook-size", type=int, default=256)
    s.add_argument("--beam", type=int, default=10, help="top-K query SIDs (default: 10)")
    s.add_argument(
        "--min-depth",
        type=int,
        default=1,
        help="shallowest prefix match that makes an item a candidate",
    )
    s.add_argument(
        "--sid-order",
        choices=SID_ORDERS,
        default="beam",
        help="order of the candidates: matched depth, then the rank of the first beam "
        "reaching it, then catalog order (beam, default); matched depth, then the cosine "
        "similarity of the method's own query and item vectors (dense: the indexer's dense "
        "representation, the off-the-shelf embeddings for the two-stage baselines); or the "
        "first --rerank-pool candidates in beam order by that similarity alone (pool: the "
        "gateway's default order)",
    )
    s.add_argument(
        "--rerank-pool",
        type=int,
        default=RERANK_POOL,
        help=f"candidates --sid-order pool re-orders (default: {RERANK_POOL}, as the gateway)",
    )
    parser.add_argument("--depth", type=int, default=100, help="ranked items kept per query")
    parser.add_argument("--folds", type=int, default=5, help="relevance-model CV folds")
    parser.add_argument(
        "--relevance-model",
        choices=RELEVANCE_MODELS,
        default="logistic",
        help="pair classifier of the relevance AUCs: logistic regression (default) or "
        "DSIRM's small MLP",
    )
    parser.add_argument("--seed", type=int, default=0)


def _check(args: argparse.Namespace) -> None:
    for name in ("levels", "codebook_size", "beam", "depth", "min_depth", "rerank_pool"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.min_depth > args.levels:
        raise ValueError("--min-depth cannot exceed --levels")
    if not 0.0 < args.dev_fraction < 1.0 and args.split != "all":
        raise ValueError("--dev-fraction must be within (0, 1)")


def sid_metrics(
    result: MethodResult, queries: QuerySet | None, threshold: float, min_depth: int = 1
) -> dict:
    sids = result.item_sids
    assert sids is not None and result.codebook_sizes is not None
    metrics: dict[str, float] = {}
    metrics.update(codebook_stats(sids, result.codebook_sizes))
    metrics.update(collision_stats(sids))
    full = disambiguate(sids)
    metrics["unique_after_disambiguation"] = float(len(np.unique(full, axis=0)) == len(full))
    metrics["max_disambiguation_code"] = int(full[:, -1].max())
    if queries is not None and result.query_sids is not None:
        q_idx, i_idx = queries.relevant_pairs(threshold)
        top1 = np.stack([b[0] for b in result.query_sids])
        if len(q_idx):
            metrics.update(code_accuracy(top1, sids, q_idx, i_idx))
            metrics.update(code_accuracy_ceiling(sids, q_idx, i_idx))
            metrics["candidate_recall"] = candidate_recall(
                result.query_sids, sids, q_idx, i_idx, min_depth
            )
        assert result.candidates is not None
        metrics["candidates_mean"] = float(result.candidates.mean())
        metrics["candidates_median"] = float(np.median(result.candidates))
        metrics["candidates_empty"] = float((result.candidates == 0).mean())
    return metrics


def relevance_metrics(
    ctx: EvalContext,
    result: MethodResult,
    threshold: float,
    folds: int,
    seed: int,
    model: str,
) -> dict[str, float]:
    """DSIRM-style: a classifier (`model`) on judged pairs, dense cosine alone vs + SID prefix."""
    queries = ctx.queries
    assert queries is not None and ctx.query_emb is not None
    rows = [(q, i, g) for q, d in enumerate(queries.judged) for i, g in d.items()]
    q_idx = np.array([r[0] for r in rows])
    i_idx = np.array([r[1] for r in rows])
    labels = (np.array([r[2] for r in rows]) >= threshold).astype(int)
    cosine = np.einsum("ij,ij->i", ctx.query_emb[q_idx], ctx.item_emb[i_idx])[:, None]
    out: dict[str, float] = {"relevance_pairs": len(rows)}
    try:
        out["auc_dense"] = relevance_auc(cosine, labels, q_idx, folds, seed, model)
        if result.query_sids is not None and result.item_sids is not None:
            # rows are grouped by query: one prefix_features call per query
            feats = np.concatenate(
                [
                    prefix_features(result.query_sids[q], result.item_sids[list(d)])
                    for q, d in enumerate(queries.judged)
                    if d
                ]
            )
            both = np.concatenate([cosine, feats], axis=1)
            out["auc_dense_sid"] = relevance_auc(both, labels, q_idx, folds, seed, model)
            out["auc_gain_points"] = 100 * (out["auc_dense_sid"] - out["auc_dense"])
    except ValueError as exc:  # e.g. one class only in a small judgment file
        log.warning("relevance AUC not computed: %s", exc)
    return out


def evaluate(args: argparse.Namespace) -> dict:
    from training.encoder import TextEncoder

    _check(args)
    started = time.perf_counter()
    catalog, judgments = load_inputs(args)
    queries: QuerySet | None = None
    train_pairs: list[tuple[str, int]] = []
    data: dict[str, object] = {
        "catalog": str(args.catalog),
        "items": len(catalog),
        "catalog_report": catalog.report,
    }
    if judgments is not None:
        train, dev = split_by_query(judgments, args.dev_fraction)
        chosen = {"dev": dev, "train": train, "all": judgments}[args.split]
        if len(chosen) == 0:
            raise DataError(f"{args.judgments}: the {args.split} split is empty")
        queries = group_by_query(chosen)
        train_pairs = train.relevant_pairs(args.threshold)
        data.update(
            judgments=str(args.judgments),
            judgments_report=judgments.report,
            split=args.split,
            queries=len(queries),
            train_pairs=len(train_pairs),
        )
    elif args.method in ("bm25", "dense", "dense-ft"):
        raise ValueError(f"--method {args.method} needs --judgments (it ranks for queries)")

    encoder = TextEncoder()
    item_emb = encoder.encode_cached(catalog.texts, "items")
    query_emb = encoder.encode_cached(queries.texts, "queries") if queries else None
    ctx = EvalContext(
        catalog=catalog,
        queries=queries,
        train_pairs=train_pairs,
        encoder=encoder,
        item_emb=item_emb,
        query_emb=query_emb,
        checkpoint=args.checkpoint,
        levels=args.levels,
        codebook_size=args.codebook_size,
        beam=args.beam,
        depth=args.depth,
        min_depth=args.min_depth,
        sid_order=args.sid_order,
        rerank_pool=args.rerank_pool,
        seed=args.seed,
    )
    result = METHODS[args.method](ctx)

    metrics: dict[str, float] = {}
    if queries is not None and result.ranked is not None:
        metrics.update(retrieval_metrics(result.ranked, queries.judged, threshold=args.threshold))
    if result.item_sids is not None:
        metrics.update(sid_metrics(result, queries, args.threshold, args.min_depth))
        metrics.update(result.metrics)
        if catalog.categories is not None:
            metrics.update(category_ami(result.item_sids, category_levels(catalog.categories)))
    if queries is not None:
        metrics.update(
            relevance_metrics(
                ctx, result, args.threshold, args.folds, args.seed, args.relevance_model
            )
        )
    return {
        "method": args.method,
        "metrics": metrics,
        "data": data,
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
        },
        "timings": {**result.timings, "total_s": time.perf_counter() - started},
        "info": result.info,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
    }


def format_table(report: dict) -> str:
    rows = [("metric", "value")] + [
        (k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in report["metrics"].items()
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"method: {report['method']}"] + [f"{a:<{width}}  {b}" for a, b in rows]
    lines.append(f"{'total time (s)':<{width}}  {report['timings']['total_s']:.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = evaluate(args)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"report written to {args.out}")
    return 0
