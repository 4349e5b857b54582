"""Quality benchmark: every method through `sidserve evaluate` on the Home Depot dev split and on
Amazon UK toys; writes benchmarks/results/quality.md (and the JSON reports under --reports).

    python benchmarks/quality.py [--methods bm25 dense ...] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOME_DEPOT_METHODS = ["bm25", "dense", "dense-ft", "hkmeans", "rqvae", "dsirm"]
TOYS_METHODS = ["hkmeans", "rqvae"]
SID_METHODS = {"hkmeans", "rqvae", "dsirm", "indexer"}
# `--sid-order` runs besides the default beam order -> their rows' label suffix
ORDERS = {"dense": " (dense order)", "pool": " (pool order)"}
RETRIEVAL = ["recall@1", "recall@10", "recall@100", "mrr@100", "ndcg@10"]
SID = [
    "l1_code_acc",
    "l2_code_acc",
    "l1_code_acc_ceiling",
    "l2_code_acc_ceiling",
    "l1_utilisation",
    "l1_perplexity",
    "l2_utilisation",
    "collision_rate",
    "max_items_per_leaf",
    "candidates_mean",
    "candidate_recall",
]
RELEVANCE = ["auc_dense", "auc_dense_sid", "auc_gain_points"]
TOYS = ["ami_l1", "ami_l2", "ami_l3", "l1_utilisation", "collision_rate"]


def run_evaluate(args: list[str], out: Path) -> tuple[dict, float, str]:
    cmd = [sys.executable, "-m", "sidserve.cli", "evaluate", *args, "--out", str(out)]
    shown = "sidserve evaluate " + " ".join(shlex.quote(shown_path(a)) for a in args)
    print(f"$ {shown}", flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text()), time.perf_counter() - t, shown


def shown_path(arg: str) -> str:
    """Paths shown relative to the repository root, as a reader would type them."""
    return os.path.relpath(arg, ROOT) if arg.startswith("/") else arg


def cell(metrics: dict, key: str) -> str:
    v = metrics.get(key)
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) and key != "max_items_per_leaf" else f"{v:g}"


def same_order(row: tuple[str, dict]) -> bool:
    """Not a `--sid-order` repeat (its SID-quality and relevance figures are the same)."""
    return not any(row[0].endswith(suffix) for suffix in ORDERS.values())


def table(rows: list[tuple[str, dict]], keys: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(m, k) for k in keys) + " |" for name, m in rows]
    return lines


def targets(hd: dict[str, dict], toys: dict[str, dict]) -> list[str]:
    """Issue 3's quality targets, checked against the rows measured in this run."""
    idx, dn = hd.get("indexer"), hd.get("indexer-dense")
    if idx is None:
        return []
    rows: list[tuple[str, str, bool]] = []

    def beats(a: dict, others: list[str], keys: list[str]) -> tuple[str, bool]:
        text, ok = [], True
        for k in keys:
            best = max((hd[o][k], o) for o in others if o in hd)
            ok &= a[k] > best[0]
            text.append(f"{k} {a[k]:.4f} vs {best[1]} {best[0]:.4f}")
        return "; ".join(text), ok

    text, ok = beats(idx, ["bm25"], ["recall@10", "recall@100"])
    if "candidate_recall" in idx:  # the bound no candidate order can pass
        text += f" (its beams reach {idx['candidate_recall']:.4f} of the relevant products)"
    rows.append(("SID retrieval beats BM25 on recall@10, recall@100", text, ok))
    rows.append(
        (
            "SID retrieval beats hkmeans and rqvae on every retrieval metric",
            *beats(idx, ["hkmeans", "rqvae"], RETRIEVAL),
        )
    )
    for order, suffix in ORDERS.items():
        ido = hd.get("indexer" + suffix)
        if ido is None:
            continue
        rows.append(
            (
                f"({order} order) SID retrieval beats BM25 on recall@10, recall@100",
                *beats(ido, ["bm25"], ["recall@10", "recall@100"]),
            )
        )
        rows.append(
            (
                f"({order} order) SID retrieval beats hkmeans and rqvae, both in {order} order, "
                "on every retrieval metric",
                *beats(ido, [m + suffix for m in ("hkmeans", "rqvae")], RETRIEVAL),
            )
        )
    if dn is not None:
        rows.append(
            (
                "indexer-dense beats bm25, dense, dense-ft on recall@10 and mrr@100",
                *beats(dn, ["bm25", "dense", "dense-ft"], ["recall@10", "mrr@100"]),
            )
        )
    two_stage = [m for m in ("hkmeans", "rqvae") if m in hd]
    for key, goal in (("l1_code_acc", 0.85), ("l2_code_acc", 0.65)):
        best = max(hd[m][key] for m in two_stage) if two_stage else 0.0
        rows.append(
            (
                f"{key} >= {goal} and above the two-stage baselines",
                f"{idx[key]:.4f} (two-stage best {best:.4f}; at most "
                f"{idx[key + '_ceiling']:.4f} with its item SIDs)",
                idx[key] >= goal and idx[key] > best,
            )
        )
    rows.append(
        (
            "level-1 utilisation >= 90 %",
            f"{idx['l1_utilisation']:.4f}",
            idx["l1_utilisation"] >= 0.9,
        )
    )
    rows.append(
        (
            "unique SIDs after disambiguation (collision rate before it reported)",
            f"collision rate {idx['collision_rate']:.4f}",
            idx["unique_after_disambiguation"] == 1.0,
        )
    )
    if "indexer" in toys:
        best = max(toys[m]["ami_l1"] for m in ("hkmeans", "rqvae") if m in toys)
        rows.append(
            (
                "toys (self-supervised): level-1 AMI above both two-stage baselines",
                f"{toys['indexer']['ami_l1']:.4f} vs best {best:.4f}",
                toys["indexer"]["ami_l1"] > best,
            )
        )
    gain = idx.get("auc_gain_points", float("nan"))
    rows.append(
        (
            "relevance: dense + SID prefix AUC >= dense-only + 1.0 point",
            f"{gain:+.2f} points",
            gain >= 1.0,
        )
    )
    return ["| target | measured | met |", "|---|---|---|"] + [
        f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in rows
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--methods", nargs="+", default=HOME_DEPOT_METHODS)
    p.add_argument("--toys-methods", nargs="*", default=TOYS_METHODS)
    p.add_argument(
        "--toys-indexer",
        type=Path,
        help="a `sidserve train --self-supervised` checkpoint on the toys: adds its AMI row",
    )
    p.add_argument(
        "--indexer",
        type=Path,
        help="a `sidserve train` checkpoint: adds the indexer and indexer-dense rows",
    )
    p.add_argument(
        "--sid-orders",
        nargs="*",
        default=list(ORDERS),
        choices=list(ORDERS),
        help="run the SID methods again with each of these `--sid-order`s besides the default "
        "beam order (default: dense pool; none with an empty list)",
    )
    p.add_argument("--reports", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.md")
    a = p.parse_args()
    hd, toys = a.data / "homedepot", a.data / "amazon_uk_toys" / "products.csv.gz"
    a.reports.mkdir(parents=True, exist_ok=True)

    commands: list[str] = []
    walls: list[tuple[str, float, dict]] = []

    def run_all(name: str, data_args: list[str], runs: list[tuple[str, str, list[str]]]) -> list:
        """`runs`: (row label, method, its other evaluate arguments)."""
        rows = []
        for label, method, extra in runs:
            stem = label
            for order, suffix in ORDERS.items():
                stem = stem.replace(suffix, f"-{order}-order")
            report, wall, shown = run_evaluate(
                ["--method", method, *data_args, *extra], a.reports / f"{name}-{stem}.json"
            )
            rows.append((label, report["metrics"]))
            commands.append(shown)
            walls.append((f"{name} {label}", wall, report["timings"]))
        return rows

    hd_runs = [(m, m, []) for m in a.methods]
    if a.indexer:
        ck = ["--checkpoint", str(a.indexer.resolve())]
        hd_runs += [("indexer", "indexer", ck), ("indexer-dense", "indexer-dense", ck)]
    hd_runs += [
        (m + ORDERS[order], m, [*x, "--sid-order", order])
        for order in a.sid_orders
        for _, m, x in list(hd_runs)
        if m in SID_METHODS
    ]
    hd_rows = run_all(
        "homedepot",
        ["--catalog", str(hd / "products.csv.gz"), "--judgments", str(hd / "judgments.csv.gz")],
        hd_runs,
    )
    toy_runs = [(m, m, []) for m in a.toys_methods]
    if a.toys_indexer:
        toy_runs.append(("indexer", "indexer", ["--checkpoint", str(a.toys_indexer.resolve())]))
    toy_args = ["--catalog", str(toys), "--id-column", "product_id", "--description-column", ""]
    toy_rows = run_all("toys", [*toy_args, "--category-column", "category_path"], toy_runs)

    first = hd_rows[0][1] if hd_rows else {}
    checks = targets(dict(hd_rows), dict(toy_rows))
    lines = [
        "# Quality benchmark",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        "- command: `make bench-quality` (= `python benchmarks/quality.py`), which runs:",
        *[f"  - `{c}`" for c in commands],
        "- Home Depot: dev split = 15 % of queries by hash of the normalised query; "
        f"{first.get('n_queries', '?')} dev queries with a product graded >= 2.5; "
        "catalog of all 54,667 products. SID methods: 3 levels x 256 codes + disambiguation, "
        "top-10 query SIDs (trie-constrained beams), candidates ranked by matched depth then "
        "beam rank (items of one leaf in catalog order); rows marked *(dense order)* rank "
        "candidates of the same matched depth by the cosine similarity of the method's own "
        "query and item vectors instead (`--sid-order dense`: the indexer's dense "
        "representation, the off-the-shelf MiniLM embeddings for hkmeans, rqvae and dsirm); "
        "rows marked *(pool order)* take the first 500 candidates in beam order and rank them "
        "by that similarity alone (`--sid-order pool`, the gateway's default order: the SIDs "
        "choose the candidates, the vectors rank them).",
        "",
        "## Home Depot dev: retrieval (query -> product)",
        "",
        *table(hd_rows, RETRIEVAL),
        "",
        "## Home Depot dev: SID quality",
        "",
        *table([r for r in hd_rows if "l1_utilisation" in r[1] and same_order(r)], SID),
        "",
        "## Home Depot dev: relevance (logistic regression, 5-fold CV grouped by query)",
        "",
        *table([r for r in hd_rows if same_order(r)], RELEVANCE),
        "",
        "## Amazon UK toys: category agreement (AMI of code prefixes vs category levels)",
        "",
        *table(toy_rows, TOYS),
        "",
        *(["## Issue 3 targets (semantic indexer)", "", *checks, ""] if checks else []),
        "## Wall time per run (this machine; embeddings of the catalog from the disk cache "
        "when present)",
        "",
        "| run | wall s | stages (s) |",
        "|---|---|---|",
        *[
            f"| {name} | {wall:.1f} | "
            + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total_s")
            + " |"
            for name, wall, t in walls
        ],
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
