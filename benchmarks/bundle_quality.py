"""Retrieval quality of exported bundles, through the gateway's own engine: the dev-split
queries of Home Depot go through each bundle's tokenizer, graphs and trie-constrained beam
search (`service.query_beams.search_beams`, beam 10), and the items under the top-10 SIDs are
ranked by matched depth then beam rank (the same `SidIndex` rule as `sidserve evaluate`).

For a bundle with item vectors two more rows ask the gateway itself (`POST /v1/query/sids`, in
process, default settings, 100 candidates): with `"order": "similarity"` (its default: the
first SIDSERVE_RERANK_POOL candidates in beam order, by the query-item cosine alone), which is
what its clients get, and with `"order": "depth"` (matched depth first, then the cosine).

Use it to compare a bundle with its quantised variants: int8 changes some answers, and this
says whether it changes their quality. Writes benchmarks/results/bundle-quality.md.

    python benchmarks/bundle_quality.py --bundle runs/bundle --bundle runs/bundle-int8-all
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, md_table, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bundle-quality.md"
METRICS = ["recall@1", "recall@10", "recall@100", "mrr@100", "ndcg@10"]


def run_bundle(path: Path, texts: list[str], beam: int, threads: int) -> dict:
    from service.bundle import GRAPH_ROLES, load_bundle
    from service.onnx_model import OnnxIndexer
    from service.query_beams import search_beams
    from service.tokenizer import BundleTokenizer
    from service.trie import CompactTrie

    b = load_bundle(path)
    model = OnnxIndexer(b.graph_paths, threads)
    tok = BundleTokenizer(b.file(b.tokenizer.file), b.tokenizer)
    sids = b.semantic_sids
    trie = CompactTrie.from_codes(sids, b.codebook_sizes)  # duplicates allowed
    t = time.perf_counter()
    beams = search_beams(model, tok, texts, trie, beam)
    seconds = time.perf_counter() - t
    graphs = b.manifest["graphs"]
    return {
        "bundle": path,
        "graphs": ", ".join(graphs[role] for role in GRAPH_ROLES),
        "model_version": b.model_version,
        "item_ids": b.item_ids,
        "sids": sids,
        "paths": [p for p, _ in beams],
        "seconds": seconds,
        "has_vectors": b.item_vectors is not None,
    }


def gateway_candidates(path: Path, texts: list[str], order: str) -> list[list[str]]:
    """The item ids `POST /v1/query/sids` returns for each text (in process, 100 candidates)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    out: list[list[str]] = []
    with TestClient(create_app(Settings(bundle=path, verify_checksums=False))) as client:
        for start in range(0, len(texts), 64):
            body = {"queries": texts[start : start + 64], "candidates": 100, "order": order}
            r = client.post("/v1/query/sids", json=body)
            r.raise_for_status()
            out += [[c["item_id"] for c in res["candidates"]] for res in r.json()["results"]]
    return out


def main() -> int:
    from training.data import load_catalog, load_judgments
    from training.data.judgments import group_by_query, split_by_query
    from training.metrics.retrieval import retrieval_metrics
    from training.metrics.sid_retrieval import SidIndex

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    catalog = load_catalog(args.data / "homedepot" / "products.csv.gz")
    judgments = load_judgments(args.data / "homedepot" / "judgments.csv.gz", catalog)
    queries = group_by_query(split_by_query(judgments)[1])
    index_of = {item: i for i, item in enumerate(catalog.ids)}
    rows, runs = [], []
    for path in args.bundle:
        print(f"{path}: {len(queries)} dev queries", flush=True)
        run = run_bundle(path, queries.texts, args.beam, args.threads)
        # bundle rows -> catalog indices, so the judgments' item indices apply
        order = np.array([index_of[i] for i in run["item_ids"]])
        sids = np.empty_like(run["sids"])
        sids[order] = run["sids"]
        index = SidIndex(sids)
        ranked = [index.rank(paths, limit=100)[0] for paths in run["paths"]]
        metrics = retrieval_metrics(ranked, queries.judged)
        by_gateway = {}
        for order in ("similarity", "depth") if run["has_vectors"] else ():
            got = gateway_candidates(path, queries.texts, order)
            by_gateway[order] = retrieval_metrics(
                [np.array([index_of[i] for i in ids], dtype=np.int64) for ids in got],
                queries.judged,
            )
        first = runs[0] if runs else run
        same_top = np.mean(
            [
                a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(first["paths"], run["paths"], strict=True)
            ]
        )
        same_items = np.cumprod(first["sids"] == run["sids"], axis=1).mean(axis=0)
        runs.append(run)
        rows.append(
            [
                f"`{path}`",
                run["graphs"],
                "beam (`SidIndex`)",
                *(f"{metrics[m]:.4f}" for m in METRICS),
                f"{same_top:.2f}",
                " / ".join(f"{s:.3f}" for s in same_items),
                f"{len(queries) / run['seconds']:.0f}",
            ]
        )
        print(rows[-1], flush=True)
        for order, found in by_gateway.items():
            rows.append(
                [
                    f"`{path}`",
                    run["graphs"],
                    f"{order} (gateway)",
                    *(f"{found[m]:.4f}" for m in METRICS),
                    "",
                    "",
                    "",
                ]
            )
            print(rows[-1], flush=True)
    from service.settings import Settings

    pool = Settings(bundle=args.bundle[0]).rerank_pool  # SIDSERVE_RERANK_POOL or the default
    lines = [
        "# Bundle retrieval quality (through the gateway's engine)",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        "- command: `"
        + (
            "SIDSERVE_RERANK_POOL=" + os.environ["SIDSERVE_RERANK_POOL"] + " "
            if "SIDSERVE_RERANK_POOL" in os.environ
            else ""
        )
        + "python benchmarks/bundle_quality.py "
        + " ".join(f"--bundle {b}" for b in args.bundle)
        + ("" if args.out == DEFAULT_OUT else f" --out {os.path.relpath(args.out, ROOT)}")
        + "`",
        f"- queries: the {len(queries)} distinct dev-split queries of Home Depot (judged items "
        f"graded >= 2.5 are relevant; {metrics['n_queries']} queries have one); beam "
        f"{args.beam}, candidates ranked by matched depth then beam rank, as `sidserve "
        "evaluate --method indexer` (rows *beam*), or by the gateway with "
        '`"order": "similarity"` (rows *similarity*: as `--sid-order pool`, the first '
        f"{pool:,} candidates in beam order by the cosine with the bundle's float16 item "
        'vectors alone) or `"order": "depth"` (rows *depth*: matched depth first, then the '
        "cosine, among the same pool; `--sid-order dense` orders every candidate so); "
        "ONNX Runtime with "
        f"{args.threads} thread(s), batches of 64 queries",
        "- *same top-10*: share of queries whose top-10 SIDs equal the first bundle's; *same "
        "item SIDs*: share of catalog items whose first 1 / 2 / 3 codes equal the first "
        "bundle's",
        "",
        *md_table(
            [
                "bundle",
                "graphs",
                "candidate order",
                *METRICS,
                "same top-10",
                "same item SIDs (l1 / l1-2 / l1-3)",
                "queries/s",
            ],
            rows,
        ),
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
