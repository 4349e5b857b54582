"""How long a full `sidserve train` takes on this machine, on the CPU or a GPU (issue 3: within
60 minutes on the 2-core CPU machine; the time on a GPU where one is lent).

    python benchmarks/train_time.py [--device cuda] [--config FILE] [--catalog CSV --judgments CSV]

Runs the default training (or `--config FILE`'s) from a cold start: the frozen encoder layers'
token states are computed into an empty cache directory, so their time is part of the figure. Prints
and writes benchmarks/results/train-time-<device type>[-<config name>].md: the wall time, the
trainer's own clock (`train_seconds`, from after the catalog's token states), seconds per
level, and what the dev split's code agreement was at the end of each level.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, md_table, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "homedepot"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="`sidserve train --device` (default cpu)")
    p.add_argument("--catalog", type=Path, default=DATA / "products.csv.gz")
    p.add_argument("--judgments", type=Path, default=DATA / "judgments.csv.gz")
    p.add_argument("--out", type=Path, help="checkpoint directory (default: runs/train-<device>)")
    p.add_argument("--config", type=Path, help="`sidserve train --config` (default: none)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    kind = args.device.split(":")[0]
    out = args.out or ROOT / "runs" / f"train-{kind}"
    cmd = [sys.executable, "-m", "sidserve.cli", "train", "--device", args.device]
    cmd += ["--catalog", str(args.catalog), "--judgments", str(args.judgments), "--out", str(out)]
    if args.config:
        cmd += ["--config", str(args.config)]
    with tempfile.TemporaryDirectory(prefix="sidserve-cache-") as cache:
        env = {**os.environ, "SIDSERVE_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
    doc = json.loads((out / "indexer.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rows = []
    for e in log:
        at = f"l{e['level']}"
        agreement = sorted((k, v) for k, v in e.get("dev", {}).items() if k.endswith("code_acc"))
        rows.append(
            [
                e["level"],
                f"{e['seconds']:.0f}",
                f"{e[at + '_utilisation']:.3f}",
                e[at + "_paths"],
                " / ".join(f"{v:.3f}" for _, v in agreement),
            ]
        )
    device = doc.get("device", args.device)  # 'cuda:0 (NVIDIA H200)', as training recorded it
    shown = ["sidserve", *cmd[3:]]
    lines = [
        f"# Training time ({kind})",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {machine(device if kind == 'cuda' else None)}",
        f"- device: {device}",
        f"- command: `python benchmarks/train_time.py --device {args.device}"
        f"{f' --config {args.config}' if args.config else ''}`, which runs "
        f"`{shlex.join(shown)}` with an empty `SIDSERVE_CACHE_DIR`",
        "",
        "| wall s (whole command) | train_seconds (after the catalog's token states) |",
        "|---|---|",
        f"| {wall:.0f} | {doc['train_seconds']:.0f} |",
        "",
        "Per level (`train_log.jsonl`): seconds, the level's code utilisation over the catalog, "
        "distinct paths so far, and the dev split's greedy code agreement up to that level.",
        "",
        *md_table(["level", "seconds", "utilisation", "paths", "dev code acc (l1 / l2 / …)"], rows),
    ]
    suffix = f"-{args.config.stem}" if args.config else ""  # the default's file stays its own
    write_report(args.results / f"train-time-{kind}{suffix}.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
