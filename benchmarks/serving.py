"""Serving benchmark: the gateway over HTTP on the full Home Depot bundle (embedded ONNX Runtime,
Redis store, beam 10, top-10 SIDs, 100 candidates, real dev-split queries, load from a separate
process: loadtests/loadgen.py; closed loop at 1 and 32 clients, and an open-loop run at
`--open-rate` queries/s), `/v1/items/encode` at batch 64, where the time goes per stage,
and the beam search against Hugging Face `generate(num_beams=10, prefix_allowed_tokens_fn=...)`
on the same weights, without and with HF's key/value cache (benchmarks/hf_generate.py; the
10x target is judged against the cached form). Writes benchmarks/results/serving.md.

    python benchmarks/serving.py --bundle runs/bundle --checkpoint runs/indexer [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine, md_table, write_report  # noqa: E402
from service.launcher import running_gateway  # noqa: E402

SEARCH = {"beam_width": 10, "top_k": 10, "candidates": 100}
TARGETS = {"c1_p50": 10.0, "c1_p99": 20.0, "c32_qps": 150.0, "c32_p99": 150.0, "hf_ratio": 10.0}


def stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """{stage: (seconds sum, count)} and the query endpoint's, from /metrics."""
    out: dict[str, list[float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        for kind in ("sum", "count"):
            for metric, label in (("stage", "stage"), ("request", "endpoint")):
                prefix = f'sidserve_{metric}_seconds_{kind}{{{label}="'
                if line.startswith(prefix):
                    name = line[len(prefix) : line.index('"', len(prefix))]
                    out.setdefault(name, [0.0, 0.0])[kind == "count"] = float(line.split()[-1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(url: str) -> float:
    import redis

    with redis.Redis.from_url(url) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_per_request(run: dict, gateway_s: float, redis_s: float) -> dict[str, float]:
    """ms of CPU per request (warm-up included, as the load generator counts its own) for the
    gateway process, redis-server and the load generator."""
    n = max(run["count"] + run["warmup"]["count"], 1)
    return {
        "gateway": 1e3 * gateway_s / n,
        "redis": 1e3 * redis_s / n,
        "loadgen": float(run["loadgen_cpu_ms_per_request"]),
    }


def measured_run(gw, redis_url: str, name: str, results: dict, *args) -> None:
    """One load run with the gateway's stage sums and the CPU of every process around it."""
    before = stage_sums(gw.url)
    cpu0 = process_cpu_s(gw.process.pid), redis_cpu_s(redis_url)
    results[name] = run = loadgen(*args)
    cpu1 = process_cpu_s(gw.process.pid), redis_cpu_s(redis_url)
    after = stage_sums(gw.url)
    results[f"{name}_stages"] = {
        k: (after[k][0] - before.get(k, (0, 0))[0], after[k][1] - before.get(k, (0, 0))[1])
        for k in after
    }
    results[f"{name}_cpu"] = cpu_per_request(run, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])


def loadgen(url: str, lines: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(ROOT / "loadtests" / "loadgen.py"), "--url", url]
    cmd += ["--queries", str(lines), "--out", str(out), *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def load_items(bundle: Path, redis_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "sidserve.cli", "load-items", "--bundle", str(bundle)]
        + ["--redis-url", redis_url],
        check=True,
        cwd=ROOT,
    )


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: apt-get install -y redis-server")
    return binary


def http_runs(args, bundle: Path, queries: Path, titles: Path, work: Path) -> dict:
    from tests.redis_server import running_redis

    binary = redis_binary()
    results: dict = {}
    body = json.dumps(SEARCH)
    with running_redis(binary) as redis_url:
        load_items(bundle, redis_url)
        env = {"SIDSERVE_REDIS_URL": redis_url}
        if args.threads is not None:  # else the gateway's default (docs/gateway.md)
            env["SIDSERVE_ONNX_THREADS"] = str(args.threads)
        with running_gateway(bundle, env) as gw:
            measured_run(
                gw, redis_url, "c1", results, gw.url, queries, work / "c1.json",
                "--concurrency", "1", "--duration", str(args.duration), "--warmup", "3",
                "--body-extra", body,
            )  # fmt: skip
            measured_run(
                gw, redis_url, "c32", results, gw.url, queries, work / "c32.json",
                "--concurrency", "32", "--duration", str(args.duration), "--warmup", "5",
                "--body-extra", body,
            )  # fmt: skip
            if args.open_rate > 0:  # what a client arriving at that rate sees (no closed loop)
                results["open"] = loadgen(
                    gw.url, queries, work / "open.json", "--rate", f"{args.open_rate:g}",
                    "--concurrency", "64", "--duration", str(args.duration), "--warmup", "3",
                    "--body-extra", body,
                )  # fmt: skip
            results["encode"] = loadgen(
                gw.url, titles, work / "encode.json", "--endpoint", "encode", "--batch", "64",
                "--concurrency", "1", "--duration", str(args.duration), "--warmup", "3",
            )  # fmt: skip
    return results


HF_FORMS = {"hf": False, "hf_cache": True}  # timing key -> generate(use_cache=...)


def hf_comparison(args, bundle_dir: Path, queries: list[str]) -> list[dict[str, float]]:
    """Top-10 beams of the gateway's search and of HF generate on the same weights, HF both
    without and with its key/value cache: identical paths checked on every query; mean ms
    per batch, search alone and with the encoder. One dict per batch size."""
    import torch

    from benchmarks import hf_generate as hf
    from service.bundle import load_bundle
    from service.onnx_model import OnnxIndexer
    from service.query_beams import beams_for_memory
    from service.tokenizer import BundleTokenizer
    from service.trie import CompactTrie

    bundle = load_bundle(bundle_dir)
    paths = bundle.semantic_sids
    trie = CompactTrie.from_codes(paths, bundle.codebook_sizes)
    tok = BundleTokenizer(bundle.file(bundle.tokenizer.file), bundle.tokenizer)
    model, hf_tok = hf.load_for_generation(args.checkpoint)
    allowed = hf.AllowedTokens.from_paths(
        paths, model.config.codebook_size, model.config.eos_token_id
    )

    def every_side(onnx: OnnxIndexer, texts: list[str]) -> tuple[dict[str, float], dict]:
        """One batch through ours, then each HF form: (seconds per timing key, beams per side)."""
        t0 = time.perf_counter()
        ids, mask = tok.queries(texts)
        memory = onnx.encode(ids, mask)
        t1 = time.perf_counter()
        beams = {"ours": list(beams_for_memory(onnx, memory, mask, trie, 10))}
        t2 = time.perf_counter()
        s = {"ours_search": t2 - t1, "ours_total": t2 - t0}
        for key, use_cache in HF_FORMS.items():
            t0 = time.perf_counter()
            h_memory, h_mask = hf.encode(model, hf_tok, texts)
            t1 = time.perf_counter()
            beams[key] = hf.beams_for_memory(model, h_memory, h_mask, allowed, 10, use_cache)
            t2 = time.perf_counter()
            s[f"{key}_search"], s[f"{key}_total"] = t2 - t1, t2 - t0
        return s, beams

    rows = []
    for batch, n_batches in ((1, args.hf_queries_b1), (32, args.hf_batches_b32)):
        # every side gets the same threads: 1 at batch 1 (the gateway's per-worker setting),
        # every core at batch 32
        threads = 1 if batch == 1 else (os.cpu_count() or 1)
        torch.set_num_threads(threads)
        onnx = OnnxIndexer(bundle.graph_paths, threads)
        # one untimed batch on each side first: the first calls pay for lazy set-up (the
        # sessions' and torch's allocations), which over 4 timed batches of 32 swung HF's
        # mean from 187 to 437 ms per batch
        every_side(onnx, queries[:batch])
        timing: dict[str, float] = {}
        same = dict.fromkeys(HF_FORMS, 0)
        total = 0
        for i in range(n_batches):
            s, beams = every_side(onnx, queries[i * batch : (i + 1) * batch])
            for k, v in s.items():
                timing[k] = timing.get(k, 0.0) + v
            for key in HF_FORMS:
                for (a, _), (b, _) in zip(beams["ours"], beams[key], strict=True):
                    same[key] += int(np.array_equal(a, b))
            total += batch
        row = {k: v / n_batches * 1000 for k, v in timing.items()}
        row |= {"batch": batch, "queries": total} | {f"{k}_same": n for k, n in same.items()}
        rows.append(row)
        print(row, flush=True)
    return rows


def hf_table_rows(rows: list[dict[str, float]]) -> list[list[object]]:
    """The comparison's table: per batch size, each HF form against ours."""

    def pair(row: dict[str, float], what: str) -> str:
        return " / ".join(f"{row[f'{key}_{what}']:.1f}" for key in HF_FORMS)

    def ratios(row: dict[str, float], what: str) -> str:
        return " / ".join(f"{row[f'{key}_{what}'] / row[f'ours_{what}']:.1f}×" for key in HF_FORMS)

    return [
        [
            int(r["batch"]),
            int(r["queries"]),
            " / ".join(f"{int(r[f'{key}_same'])}/{int(r['queries'])}" for key in HF_FORMS),
            f"{r['ours_search']:.1f}",
            pair(r, "search"),
            ratios(r, "search"),
            f"{r['ours_total']:.1f}",
            pair(r, "total"),
            ratios(r, "total"),
        ]
        for r in rows
    ]


def dev_queries(data: Path) -> tuple[list[str], list[str]]:
    from training.data import load_catalog, load_judgments
    from training.data.judgments import group_by_query, split_by_query

    catalog = load_catalog(data / "homedepot" / "products.csv.gz")
    judgments = load_judgments(data / "homedepot" / "judgments.csv.gz", catalog)
    return group_by_query(split_by_query(judgments)[1]).texts, catalog.texts


def write_lines(path: Path, texts: Sequence[str]) -> Path:
    """The load generator's input: one text per line (newlines inside a text become spaces)."""
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


STAGES = ("queue", "tokenise", "encode", "beam_search", "store", "scoring")


def stage_table(*runs: dict[str, tuple[float, float]]) -> list[list[str]]:
    """Rows (stage, then ms per query request and share of the handling time for each run),
    with the time no stage accounts for (HTTP, validation, serialisation) last."""
    rows: list[list[str]] = [[s] for s in STAGES] + [["HTTP, validation, serialisation (rest)"]]
    for stages in runs:
        total, requests = stages.get("/v1/query/sids", (0.0, 0.0))
        spent = [stages.get(s, (0.0, 0.0))[0] for s in STAGES]
        for row, sec in zip(rows, [*spent, total - sum(spent)], strict=True):
            row += [f"{sec / max(requests, 1) * 1000:.2f}", f"{sec / max(total, 1e-9):.0%}"]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bundle")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "indexer")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per load run")
    p.add_argument(
        "--threads", type=int, help="SIDSERVE_ONNX_THREADS of the gateway (default: its own)"
    )
    p.add_argument(
        "--order",
        choices=["similarity", "depth", "beam"],
        help="candidate order sent with every query (default: the gateway's own)",
    )
    p.add_argument(
        "--open-rate",
        type=float,
        default=150.0,
        help="queries/s of the open-loop run (0: none)",
    )
    p.add_argument("--hf-queries-b1", type=int, default=100)
    p.add_argument("--hf-batches-b32", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.md")
    args = p.parse_args()
    if args.order:
        SEARCH["order"] = args.order
    started = time.perf_counter()
    queries, titles = dev_queries(args.data)
    with tempfile.TemporaryDirectory(prefix="sidserve-serving-") as tmp:
        work = Path(tmp)
        write_lines(work / "queries.txt", queries)
        write_lines(work / "titles.txt", titles[:5000])
        http = http_runs(args, args.bundle, work / "queries.txt", work / "titles.txt", work)
    from service.bundle import load_bundle

    bundle = load_bundle(args.bundle, checksums=False)
    # an int8 bundle's graphs are not the checkpoint's weights: no like-for-like HF comparison
    quantized = "quantization" in bundle.manifest
    hf_rows = [] if quantized else hf_comparison(args, args.bundle, queries)
    c1, c32, enc = http["c1"], http["c32"], http["encode"]
    open_row = (
        [(f"query, open loop at {args.open_rate:g}/s", http["open"])] if "open" in http else []
    )
    open_note = (
        [
            f"The open-loop run sends a query every 1/{args.open_rate:g} s whatever the "
            "answers (`loadgen.py --rate`, at most 64 in flight), and counts each latency from "
            "when the query was due, so queueing shows; the closed-loop runs wait for each "
            "answer before the next query.",
            "",
        ]
        if open_row
        else []
    )
    stage_rows = stage_table(http["c1_stages"], http["c32_stages"])
    q_sum, q_count = http["c1_stages"].get("/v1/query/sids", (0.0, 1.0))
    cores = os.cpu_count() or 1
    cpu_rows = [
        [name, *(f"{cpu[k]:.2f}" for k in ("gateway", "redis", "loadgen")),
         f"{sum(cpu.values()):.2f}", f"{1000 * cores / sum(cpu.values()):.0f}"]
        for name, cpu in (("concurrency 1", http["c1_cpu"]), ("concurrency 32", http["c32_cpu"]))
    ]  # fmt: skip
    # the target is judged against the stronger baseline: HF with its key/value cache
    hf_ratios = [r["hf_cache_search"] / r["ours_search"] for r in hf_rows]
    if quantized:
        hf_section = [
            "Not run: this bundle serves int8 graphs (`sidserve export --quantize`), so HF "
            "`generate` on the checkpoint's fp32 weights would not compute the same thing. The "
            "fp32 bundle's comparison is in benchmarks/results/serving.md.",
        ]
    else:
        hf_section = [
            "Ours: the bundle's ONNX decoder step with its key/value cache in ONNX Runtime, numpy "
            "trie-constrained beam search, one decoder call per level. HF: the same PyTorch "
            "weights wrapped as a `transformers` generation model, `generate(num_beams=10, "
            "num_return_sequences=10, prefix_allowed_tokens_fn=…, length_penalty=0)` "
            "(benchmarks/hf_generate.py), in two forms, each cell *no cache / cache*: without a "
            "key/value cache (every step re-runs the decoder over the whole prefix), and with "
            "HF's own `EncoderDecoderCache` around the PyTorch modules the bundle's decoder "
            "graphs are exported from (the stronger baseline, which the target is judged "
            "against). *Search* times take the encoder states as given; *total* adds each "
            "side's encoder. Mean ms per batch, after one untimed batch on each side. Every "
            f"side runs with the same number of threads: 1 at batch 1, {os.cpu_count() or 1} "
            "at batch 32.",
            "",
            *md_table(
                [
                    "batch",
                    "queries",
                    "identical top-10",
                    "ours search",
                    "HF search",
                    "speed-up",
                    "ours total",
                    "HF total",
                    "speed-up",
                ],
                hf_table_rows(hf_rows),
            ),
        ]
    threads_note = "default settings" if args.threads is None else f"{args.threads} threads"
    lines = [
        "# Serving benchmark",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()} (the load generator runs on the same 2 cores)",
        f"- command: `python benchmarks/serving.py {' '.join(sys.argv[1:])}`",
        f"- bundle: `{args.bundle}` (model {bundle.model_version}, {len(bundle.item_ids):,} items, "
        f"encoder {bundle.manifest['graphs']['encoder']}), embedded ONNX Runtime "
        f"({threads_note}), Redis store (real `redis-server`, loaded with "
        "`sidserve load-items`)",
        f"- requests: `POST /v1/query/sids` with {json.dumps(SEARCH)}, cycling through the "
        f"{len(queries):,} distinct dev-split queries; {args.duration:.0f} s per run after a "
        "warm-up; closed loop from `loadtests/loadgen.py` in its own process",
        "",
        "## Targets",
        "",
        *md_table(
            ["target", "measured", ""],
            [
                [
                    "concurrency 1: p50 ≤ 10 ms",
                    f"{c1['p50_ms']:.1f} ms",
                    verdict(c1["p50_ms"] <= 10),
                ],
                [
                    "concurrency 1: p99 ≤ 20 ms",
                    f"{c1['p99_ms']:.1f} ms",
                    verdict(c1["p99_ms"] <= 20),
                ],
                [
                    "concurrency 32: ≥ 150 queries/s",
                    f"{c32['ok_qps']:.0f} q/s",
                    verdict(c32["ok_qps"] >= 150),
                ],
                [
                    "concurrency 32: p99 ≤ 150 ms",
                    f"{c32['p99_ms']:.0f} ms",
                    verdict(c32["p99_ms"] <= 150),
                ],
                [
                    "concurrency 32: no errors",
                    f"{c32['errors']} errors",
                    verdict(c32["errors"] == 0),
                ],
                [
                    "beam search ≥ 10× HF generate (with its cache) at batch 1 and 32",
                    ", ".join(f"{r:.1f}×" for r in hf_ratios) or "not compared (int8 graphs)",
                    verdict(min(hf_ratios) >= 10) if hf_ratios else "–",
                ],
            ],
        ),
        "",
        "## Load runs (end to end over HTTP)",
        "",
        *md_table(
            ["run", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                [
                    name,
                    r["count"],
                    r["errors"],
                    f"{r['ok_qps']:.1f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p90_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['max_ms']:.1f}",
                ]
                for name, r in (
                    ("query, concurrency 1", c1),
                    ("query, concurrency 32", c32),
                    *open_row,
                    ("encode, batch 64, concurrency 1", enc),
                )
            ],
        ),
        "",
        *open_note,
        "`/v1/items/encode` at batch 64 (catalog titles, no upsert): "
        f"**{enc.get('items_per_s', 0):.0f} items/s**.",
        "",
        "## Where the time goes (mean ms per query request, from /metrics)",
        "",
        "Stage seconds summed over the run, divided by its requests. At concurrency 32 a "
        "batch's encoder and beam search are shared by its queries and two batches run side "
        "by side, so that column is time per query on one worker, not latency.",
        "",
        *md_table(["stage", "concurrency 1", "share", "concurrency 32", "share"], stage_rows),
        "",
        "Mean handling time inside the gateway at concurrency 1: "
        f"{q_sum / max(q_count, 1) * 1000:.2f} ms per request; "
        f"the client saw p50 {c1['p50_ms']:.1f} ms (the rest is the loopback HTTP round trip and "
        "the client).",
        "",
        "## CPU per request (ms, warm-up included)",
        "",
        "User + system CPU of each process over a load run, divided by its requests: the "
        "gateway (`/proc`), redis-server (`INFO cpu`) and the load generator (its own "
        "`process_time`). The last column is the rate at which the three together would use "
        f"all {cores} cores fully: the CPU-bound ceiling of this setup.",
        "",
        *md_table(["run", "gateway", "redis", "load generator", "total", "ceiling q/s"], cpu_rows),
        "",
        "## Beam search vs Hugging Face `generate` (same weights, same queries)",
        "",
        *hf_section,
        "",
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s.",
        "",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
