"""Ablation benchmark of the semantic indexer (issue 3's table): the default training and one
run without each of the KL term, hard negatives, multi-query sampling and commitment, each
trained on the Home Depot train split and evaluated on its dev split by `sidserve evaluate`.

    python benchmarks/ablation.py [--variants full no-kl ...] [--reuse full=runs/indexer]

Each training takes 20 to 60 minutes on a 2-core CPU host (docs/indexer.md § Training time),
so the script is resumable: a variant whose checkpoint under --runs has all its levels trained
is not trained again, and its evaluation reports are reused when they are newer than the
checkpoint. Variants not run yet are listed as such in the table. Writes --out (default
benchmarks/results/ablation.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, cell, run_evaluate, shown_path  # noqa: E402
from report import machine, md_table, write_report  # noqa: E402

# variant -> the `sidserve train` switch that makes it (the full model has none)
VARIANTS = {
    "full": [],
    "no-kl": ["--no-kl"],
    "no-hard-negatives": ["--no-hard-negatives"],
    "no-multi-query": ["--no-multi-query"],
    "no-commitment": ["--no-commitment"],
}
SID_KEYS = [
    "recall@10",
    "recall@100",
    "mrr@100",
    "l1_code_acc",
    "l2_code_acc",
    "l1_utilisation",
    "n_leaves",
    "max_items_per_leaf",
    "l1_assignment_agreement",
    "l2_assignment_agreement",
]
DENSE_KEYS = ["recall@10", "mrr@100"]
# the SID columns again in the gateway's orders (`--sid-order dense` = its `order: depth`,
# `pool` = its default `order: similarity`)
ORDERS = ["dense", "pool"]
ORDER_KEYS = ["recall@10", "recall@100", "mrr@100"]


def trained(ck: Path) -> dict | None:
    """The checkpoint's metadata when every level is trained, else None."""
    meta = ck / "indexer.json"
    if not meta.is_file():
        return None
    doc = json.loads(meta.read_text())
    return doc if doc.get("levels_trained") == doc["indexer"]["levels"] else None


def evaluate(
    ck: Path, method: str, data: list[str], commands: list[str], order: str = "beam"
) -> dict:
    """`sidserve evaluate` of one checkpoint, reusing a report newer than the checkpoint."""
    extra = [] if order == "beam" else ["--sid-order", order]
    out = ck / (f"eval-{method}.json" if order == "beam" else f"eval-{method}-{order}-order.json")
    if out.is_file() and out.stat().st_mtime > (ck / "indexer.safetensors").stat().st_mtime:
        report = json.loads(out.read_text())
        commands.append(f"(reused {shown_path(str(out.resolve()))})")
    else:
        report, _, shown = run_evaluate(
            ["--method", method, *data, "--checkpoint", str(ck.resolve()), *extra], out
        )
        commands.append(shown)
    return report["metrics"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="VARIANT=DIR",
        help="take an existing checkpoint for a variant instead of training it "
        "(e.g. full=runs/indexer-enc, the default `sidserve train` output)",
    )
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablation")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.md")
    a = p.parse_args()
    reuse: dict[str, Path] = {}
    for spec in a.reuse:
        name, sep, path = spec.partition("=")
        if not sep or name not in VARIANTS:
            p.error(f"--reuse {spec!r}: expected VARIANT=DIR with VARIANT in {list(VARIANTS)}")
        if trained(Path(path)) is None:
            p.error(f"--reuse {spec!r}: {path} is not a fully trained `sidserve train` checkpoint")
        reuse[name] = Path(path)

    hd = a.data / "homedepot"
    data = ["--catalog", str(hd / "products.csv.gz"), "--judgments", str(hd / "judgments.csv.gz")]
    commands: list[str] = []
    rows = []
    for name in a.variants:
        ck = reuse.get(name, a.runs / name)
        if trained(ck) is None:
            cmd = ["sidserve", "train", *data, "--out", str(ck), *VARIANTS[name]]
            print("$ " + " ".join(cmd), flush=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sidserve.cli", *cmd[1:]], check=True, cwd=ROOT)
            print(f"{name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
        doc = trained(ck)
        assert doc is not None, f"{ck}: training finished without all levels"
        sid = evaluate(ck, "indexer", data, commands)
        dense = evaluate(ck, "indexer-dense", data, commands)
        ordered = [evaluate(ck, "indexer", data, commands, order=o) for o in ORDERS]
        rows.append(
            [
                name,
                " ".join(VARIANTS[name]) or "(defaults)",
                f"{doc['train_seconds']:.0f}",
                *(cell(sid, k) for k in SID_KEYS),
                *(cell(dense, k) for k in DENSE_KEYS),
                *(cell(m, k) for m in ordered for k in ORDER_KEYS),
            ]
        )
    missing = [v for v in VARIANTS if v not in a.variants]
    lines = [
        "# Indexer ablations (Home Depot dev split)",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        "- command: `python benchmarks/ablation.py " + " ".join(sys.argv[1:]) + "`, which ran:",
        *[f"  - `{c}`" for c in commands],
        "- each variant: `sidserve train` with the default configuration and the one switch "
        "shown, same seed; SID columns from `--method indexer`, dense columns from "
        "`--method indexer-dense`, SID dense-order and pool-order columns from `--method "
        "indexer --sid-order dense|pool` (the gateway's `order: depth` and its default "
        "`order: similarity`). Train seconds as the checkpoint records them (other jobs "
        "sharing the cores inflate them). `n_leaves`: distinct full semantic paths over the "
        "catalog; `l{d}_assignment_agreement`: share of catalog items the finished model still "
        "codes as training fixed them on levels 1..d (– in reports from before that metric).",
        "",
        *md_table(
            [
                "variant",
                "switch",
                "train s",
                *(f"SID {k}" for k in SID_KEYS),
                *(f"dense {k}" for k in DENSE_KEYS),
                *(f"SID {o}-order {k}" for o in ORDERS for k in ORDER_KEYS),
            ],
            rows,
        ),
        "",
    ]
    if missing:
        lines += [f"Not run in this invocation: {', '.join(missing)}.", ""]
    write_report(a.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
