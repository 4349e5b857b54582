"""Interleaved A/B of gateway variants: code from different source trees or git revisions,
other settings and/or other bundles, on one Redis, under the same closed-loop load.

This machine's speed drifts by a quarter within minutes (docs/gateway.md § Capacity
planning), so two `benchmarks/serving.py` runs minutes apart cannot tell a 5 % change from
the drift. Here every variant's gateway runs side by side (idle ones cost no CPU) and the
load generator visits them in turn, `--reps` times, reversing the order on every other
round; the report gives each variant's medians and how often it beat the first variant in
the same round.

    python benchmarks/serving_ab.py --bundle runs/bundle \\
        --variant base=git:HEAD~1 --variant new=. \\
        --variant b16=.:SIDSERVE_BATCH_MAX_QUERIES=16 \\
        [--concurrency 1 --concurrency 32] [--reps 6] [--duration 15] [--out FILE]

A variant is LABEL=SOURCE[:SIDSERVE_KEY=VALUE,...]. SOURCE is a directory holding the
repository's code, or git:REV for a revision of this repository (checked out into a
temporary worktree, removed afterwards). Every gateway runs on this interpreter's packages,
with the variant's own `service`, `sidserve`, `training` and `export` code. A variant's
SIDSERVE_BUNDLE serves another bundle than --bundle (e.g. the same checkpoint exported with
other graphs); every bundle's items are loaded into the Redis, each under its model version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine, md_table, write_report  # noqa: E402
from benchmarks.serving import (  # noqa: E402
    SEARCH,
    dev_queries,
    load_items,
    measured_run,
    redis_binary,
    write_lines,
)
from service.launcher import GatewayProcess, running_gateway  # noqa: E402

_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_SETTING = re.compile(r"SIDSERVE_[A-Z0-9_]+")


@dataclass(frozen=True)
class Variant:
    label: str
    source: str  # a directory, or git:REV
    env: dict[str, str] = field(default_factory=dict)


def parse_variant(spec: str) -> Variant:
    """LABEL=SOURCE[:SIDSERVE_KEY=VALUE,...] -> Variant; ValueError saying what is wrong."""
    label, sep, rest = spec.partition("=")
    if not sep or not _LABEL.fullmatch(label):
        raise ValueError(f"{spec!r}: expected LABEL=SOURCE, LABEL of letters, digits, _ . -")
    source, sep, settings = rest.partition(":SIDSERVE_")
    settings = "SIDSERVE_" + settings if sep else ""
    if not source:
        raise ValueError(f"{spec!r}: no source (a directory, '.' or git:REV)")
    env: dict[str, str] = {}
    for item in filter(None, settings.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not _SETTING.fullmatch(key):
            raise ValueError(f"{spec!r}: {item!r} is not SIDSERVE_KEY=VALUE")
        env[key] = value
    return Variant(label, source, env)


def variant_bundle(variant: Variant, default: Path) -> Path:
    """The bundle a variant's gateway serves: its SIDSERVE_BUNDLE setting, else --bundle."""
    return Path(variant.env.get("SIDSERVE_BUNDLE", default)).resolve()


def check_source(source: str) -> None:
    """ValueError unless `source` is a sidserve tree or a revision of this repository."""
    if source.startswith("git:"):
        rev = source[len("git:") :]
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
        )
        if done.returncode != 0:
            raise ValueError(f"{source}: no such revision in {ROOT}")
    elif not (Path(source) / "service" / "app.py").is_file():
        raise ValueError(f"{source}: not a sidserve source tree (no service/app.py)")


@contextlib.contextmanager
def source_tree(source: str) -> Iterator[Path]:
    """The directory of a variant's code; git:REV is checked out for the duration."""
    if not source.startswith("git:"):
        yield Path(source).resolve()
        return
    rev = source[len("git:") :]
    with tempfile.TemporaryDirectory(prefix="sidserve-ab-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT)]
        done = subprocess.run(
            [*git, "worktree", "add", "--detach", "--quiet", str(tree), rev],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"git worktree add {rev}: {done.stderr.strip()}")
        try:
            yield tree
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)


def describe(v: Variant) -> str:
    settings = ", ".join(f"{k}={val}" for k, val in v.env.items())
    return f"{v.label} = `{v.source}`" + (f" with {settings}" if settings else "")


def summarise(runs: dict[str, list[dict]], first: str) -> list[list[object]]:
    """Per variant: runs, median q/s, p50 and p99 (with their ranges), median CPU ms per
    request of the gateway and of Redis, and in how many rounds it had a lower p50 / p99 than
    the first variant (rounds are paired by index). CPU per request drifts less with the
    machine's speed than rates do, so it shows efficiency changes best."""
    rows: list[list[object]] = []
    for label, results in runs.items():
        p50 = [r["p50_ms"] for r in results]
        p99 = [r["p99_ms"] for r in results]
        row: list[object] = [
            label,
            len(results),
            f"{statistics.median(r['qps'] for r in results):.1f}",
            f"{statistics.median(p50):.2f} ({min(p50):.2f}–{max(p50):.2f})",
            f"{statistics.median(p99):.2f} ({min(p99):.2f}–{max(p99):.2f})",
            sum(r["errors"] for r in results),
            f"{statistics.median(r['cpu']['gateway'] for r in results):.2f}",
            f"{statistics.median(r['cpu']['redis'] for r in results):.2f}",
        ]
        if label == first:
            row += ["–", "–"]
        else:
            pairs = list(zip(results, runs[first], strict=False))
            row += [
                f"{sum(a['p50_ms'] < b['p50_ms'] for a, b in pairs)}/{len(pairs)}",
                f"{sum(a['p99_ms'] < b['p99_ms'] for a, b in pairs)}/{len(pairs)}",
            ]
        rows.append(row)
    return rows


def rounds(labels: Sequence[str], reps: int) -> Iterator[tuple[int, str]]:
    """(round, label) in visiting order: the order reverses every other round, so no variant
    always runs first after a pause or last in a slow stretch."""
    for r in range(reps):
        for label in labels if r % 2 == 0 else list(reversed(labels)):
            yield r, label


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bundle")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument(
        "--queries", type=Path, help="query file, one per line (default: the dev-split queries)"
    )
    p.add_argument("--variant", action="append", required=True, help="LABEL=SOURCE[:SETTINGS]")
    p.add_argument(
        "--concurrency", type=int, action="append", help="closed-loop clients (default: 1 and 32)"
    )
    p.add_argument("--reps", type=int, default=6, help="rounds per concurrency")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving-ab.md")
    args = p.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant]
        for v in variants:
            check_source(v.source)
    except ValueError as exc:
        p.error(str(exc))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        p.error(f"variant labels must differ: {labels}")
    if args.reps < 1 or args.duration <= 0:
        p.error("--reps must be >= 1 and --duration > 0")
    levels = args.concurrency or [1, 32]
    if min(levels) < 1:
        p.error("--concurrency must be >= 1")
    if args.queries and not args.queries.is_file():
        p.error(f"{args.queries}: no such query file")
    bundle = args.bundle.resolve()
    bundles = {v.label: variant_bundle(v, bundle) for v in variants}
    served = list(dict.fromkeys(bundles.values()))
    for b in served:
        if not (b / "manifest.json").is_file():
            p.error(f"{b}: not a bundle directory (no manifest.json)")
    started = time.perf_counter()
    from tests.redis_server import running_redis

    with tempfile.TemporaryDirectory(prefix="sidserve-ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.queries:
            queries = args.queries.resolve()
        else:
            queries = write_lines(work / "queries.txt", dev_queries(args.data)[0])
        redis_url = stack.enter_context(running_redis(redis_binary()))
        for b in served:  # each model version in its own namespace
            load_items(b, redis_url)
        gateways: dict[str, GatewayProcess] = {}
        for v in variants:
            tree = stack.enter_context(source_tree(v.source))
            env = {**v.env, "SIDSERVE_REDIS_URL": redis_url}
            env.pop("SIDSERVE_BUNDLE", None)
            gateways[v.label] = stack.enter_context(
                running_gateway(bundles[v.label], env, cwd=tree)
            )
        tables: list[str] = []
        body = json.dumps(SEARCH)
        for clients in levels:
            runs: dict[str, list[dict]] = {label: [] for label in labels}
            for r, label in rounds(labels, args.reps):
                gw, got = gateways[label], {}
                measured_run(
                    gw, redis_url, "run", got, gw.url, queries,
                    work / f"{label}-{clients}-{r}.json", "--concurrency", str(clients),
                    "--duration", str(args.duration), "--warmup", str(args.warmup),
                    "--body-extra", body, "--quiet",
                )  # fmt: skip
                runs[label].append({**got["run"], "cpu": got["run_cpu"]})
            header = ["variant", "runs", "q/s", "p50 ms (range)", "p99 ms (range)", "errors"]
            header += ["gateway CPU ms/req", "Redis CPU ms/req"]
            header += [f"p50 < {labels[0]}", f"p99 < {labels[0]}"]
            tables += ["", f"## {clients} client{'s' if clients > 1 else ''}", ""]
            tables += md_table(header, summarise(runs, labels[0]))
    lines = [
        "# Serving A/B",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()} (the load generator runs on the same cores)",
        f"- command: `python benchmarks/serving_ab.py {' '.join(sys.argv[1:])}`",
        f"- bundle: `{args.bundle}`, Redis store, requests {json.dumps(SEARCH)}",
        f"- variants: {'; '.join(describe(v) for v in variants)}",
        f"- {args.reps} rounds of {args.duration:g} s per variant and concurrency, medians over "
        "the rounds; the last two columns count the rounds in which a variant beat the first",
        *tables,
        "",
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s.",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
