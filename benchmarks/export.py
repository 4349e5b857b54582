"""Export benchmark: export time and bundle size, items/s assigning the catalog with ONNX
Runtime at batch 1 / 32 / 128, encoder latency fp32 vs int8 (with the int8 SID agreement),
and Triton's round-trip overhead against in-process ONNX Runtime. Writes
benchmarks/results/export.md.

    python benchmarks/export.py --checkpoint runs/indexer [--bundle DIR] [--data ../shared/data]

Without --bundle the export itself is run (and timed) into runs/bench-export/bundle.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine, md_table, write_report  # noqa: E402
from service.bundle import load_bundle  # noqa: E402
from service.item_codes import assign_items  # noqa: E402
from service.onnx_model import OnnxIndexer, make_session  # noqa: E402
from service.tokenizer import BundleTokenizer  # noqa: E402


def timed_ms(fn, runs: int) -> tuple[float, float]:
    """(median, p90) milliseconds over `runs` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return float(np.median(samples)), float(np.percentile(samples, 90))


def run_export(args: argparse.Namespace, out: Path) -> tuple[dict, float, str]:
    data = args.data / "homedepot"
    cmd = [
        "export",
        "--checkpoint",
        str(args.checkpoint),
        "--catalog",
        str(data / "products.csv.gz"),
        "--judgments",
        str(data / "judgments.csv.gz"),
        "--out",
        str(out),
        "--force",
    ]
    shown = "sidserve " + " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {shown}", flush=True)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sidserve.cli", *cmd],
        check=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - t
    return json.loads(done.stdout[done.stdout.index("{") :]), seconds, shown


def catalog_texts(data: Path) -> list[str]:
    from training.data import load_catalog

    return load_catalog(data / "homedepot" / "products.csv.gz").texts


def dev_queries(data: Path) -> list[str]:
    from training.data import load_catalog, load_judgments
    from training.data.judgments import group_by_query, split_by_query

    catalog = load_catalog(data / "homedepot" / "products.csv.gz")
    judgments = load_judgments(data / "homedepot" / "judgments.csv.gz", catalog)
    return group_by_query(split_by_query(judgments)[1]).texts


def sample(n: int, k: int) -> list[int]:
    """k evenly spaced indices out of n (all of them when k >= n)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n))})


def assign_rates(bundle, tokenizer, texts: list[str], batch_1_items: int) -> list[list[object]]:
    model = OnnxIndexer(bundle.graph_paths)
    rows = []
    for batch in (1, 32, 128):
        subset = texts if batch > 1 else [texts[i] for i in sample(len(texts), batch_1_items)]
        t = time.perf_counter()
        codes = assign_items(model, tokenizer, subset, bundle.levels, batch)[0]
        seconds = time.perf_counter() - t
        if len(subset) == len(texts):
            same = (codes == bundle.semantic_sids).all(axis=1).mean()
            check = f"{same:.4f} of the bundle's table"
        else:
            check = "–"
        rows.append(
            [batch, f"{len(subset):,}", f"{seconds:.1f}", f"{len(subset) / seconds:.0f}", check]
        )
        print(rows[-1], flush=True)
    return rows


def encoder_latency(bundle, tokenizer, queries: list[str], int8_path: Path) -> list[list[object]]:
    rows = []
    for name, path in (("fp32", bundle.graph_paths["encoder"]), ("int8 (dynamic)", int8_path)):
        session = make_session(path)
        for batch in (1, 32):
            ids, mask = tokenizer.queries(queries[:batch])
            feeds = {"input_ids": ids, "attention_mask": mask}
            med, p90 = timed_ms(
                lambda s=session, f=feeds: s.run(None, f), 200 if batch == 1 else 30
            )
            rows.append(
                [name, batch, f"{med:.2f}", f"{p90:.2f}", f"{path.stat().st_size / 2**20:.1f}"]
            )
            print(rows[-1], flush=True)
    return rows


def int8_agreement(bundle, tokenizer, texts: list[str], workdir: Path) -> tuple[dict, Path]:
    """Quantise the bundle's encoder in `workdir` and compare item SIDs with fp32."""
    import shutil

    from export.quantize import quantize_graphs

    for path in bundle.graph_paths.values():
        shutil.copyfile(path, workdir / path.name)
    fp32 = OnnxIndexer({role: workdir / p.name for role, p in bundle.graph_paths.items()})
    report = quantize_graphs(workdir, fp32, tokenizer, texts, bundle.semantic_sids)
    return report, workdir / report["files"]["encoder"]


def triton_overhead(bundle, tokenizer, queries: list[str], workdir: Path) -> list[list[object]]:
    """Encoder and decoder-step latency through a real tritonserver (CPU, Python backend
    running the same ONNX graphs) against the same graphs in process."""
    import tritonclient.grpc as grpcclient

    from export.triton_repo import materialise
    from tests.triton_server import run_tritonserver

    repo = materialise(bundle.path, workdir / "repo", "cpu")
    local = OnnxIndexer(bundle.graph_paths)
    rows = []
    with run_tritonserver(repo, workdir / "run") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def remote(model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> None:
            inputs = []
            for name, arr in feeds.items():
                dtype = "FP32" if arr.dtype == np.float32 else "INT64"
                x = grpcclient.InferInput(name, list(arr.shape), dtype)
                x.set_data_from_numpy(arr)
                inputs.append(x)
            client.infer(
                model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs]
            )

        for batch in (1, 32):
            ids, mask = tokenizer.queries(queries[:batch])
            enc = {"input_ids": ids, "attention_mask": mask}
            memory = local.encode(ids, mask)
            first = {"memory": memory, "attention_mask": mask}
            _, past, cross_kv = local.decode_first(memory, mask)
            past = np.ascontiguousarray(np.repeat(past, 10, axis=1))  # 10 beams per text
            dec = {
                "cross_kv": cross_kv,
                "attention_mask": mask,
                "prefix": np.zeros((batch, 10, bundle.levels), np.int64),
                "level": np.ones((batch, 1), np.int64),
                "past": past,
            }
            runs = 100 if batch == 1 else 20
            level = dec["level"][:, 0]
            pairs = {
                "encoder": (
                    partial(local.encode, ids, mask),
                    partial(remote, "sid_encoder", enc, ["memory"]),
                ),
                "decoder first step (level 0)": (
                    partial(local.decode_first, memory, mask),
                    partial(remote, "sid_decoder_first", first, ["logits", "present", "cross_kv"]),
                ),
                "decoder step (10 beams, level 1)": (
                    partial(local.decode_step, cross_kv, mask, dec["prefix"], level, past),
                    partial(remote, "sid_decoder", dec, ["logits", "present"]),
                ),
            }
            for what, (here, there) in pairs.items():
                a, _ = timed_ms(here, runs)
                b, _ = timed_ms(there, runs)
                rows.append([what, batch, f"{a:.2f}", f"{b:.2f}", f"{b - a:+.2f}"])
                print(rows[-1], flush=True)
        client.close()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "indexer")
    p.add_argument(
        "--bundle", type=Path, help="an existing bundle: skip (and do not time) the export"
    )
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--batch-1-items", type=int, default=5000, help="items assigned at batch 1")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.md")
    args = p.parse_args()
    started = time.perf_counter()
    lines = [
        "# Export benchmark",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python benchmarks/export.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    if args.bundle is None:
        bundle_dir = ROOT / "runs" / "bench-export" / "bundle"
        summary, seconds, shown = run_export(args, bundle_dir)
        lines += [
            "## Export",
            "",
            f"`{shown}`",
            "",
            *md_table(
                ["wall time (s)", "items", "bundle (MiB)", "model version", "parity"],
                [
                    [
                        f"{seconds:.0f}",
                        f"{summary['items']:,}",
                        f"{summary['bytes'] / 2**20:.1f}",
                        summary["model_version"],
                        f"logits max diff {summary['parity']['max_abs_logit_diff']:.1e}; items "
                        f"{summary['parity']['items_identical']}; query beams "
                        f"{summary['parity']['query_beams_identical']}",
                    ]
                ],
            ),
            "",
            "The wall time covers loading the checkpoint and catalog, writing the graphs, "
            "assigning every item with ONNX Runtime (batch 128), the parity checks (PyTorch on "
            "1,000 items and 1,000 dev queries) and the checksums.",
            "",
        ]
    else:
        bundle_dir = args.bundle
    bundle = load_bundle(bundle_dir)
    sizes = {name: f["bytes"] for name, f in bundle.manifest["files"].items()}
    lines += [
        "## Bundle",
        "",
        *md_table(["file", "MiB"], [[n, f"{b / 2**20:.2f}"] for n, b in sorted(sizes.items())]),
        f"| **total** | **{sum(sizes.values()) / 2**20:.1f}** |",
        "",
    ]
    tokenizer = BundleTokenizer(bundle.file(bundle.tokenizer.file), bundle.tokenizer)
    texts = catalog_texts(args.data)
    queries = dev_queries(args.data)
    lines += [
        "## Assigning SIDs to the whole catalog (ONNX Runtime, this machine)",
        "",
        "Tokenise, encode, 3 greedy decoder steps; texts sorted by length into batches. Batch 1 "
        f"runs on {min(args.batch_1_items, len(texts)):,} evenly spaced items (the whole "
        "catalog would take over 10 minutes at that rate); batches 32 and 128 on all of it, "
        "checked against the bundle's table. ONNX Runtime uses one thread per core here.",
        "",
        *md_table(
            ["batch", "items", "seconds", "items/s", "same SIDs"],
            assign_rates(bundle, tokenizer, texts, args.batch_1_items),
        ),
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="sidserve-bench-") as tmp:
        work = Path(tmp)
        report, int8_path = int8_agreement(bundle, tokenizer, texts, work)
        agree = report["agreement_with_fp32"]
        lines += [
            "## Encoder latency, fp32 vs int8 (real dev queries, ONNX Runtime, 2 threads)",
            "",
            *md_table(
                ["encoder", "batch", "median ms", "p90 ms", "file MiB"],
                encoder_latency(bundle, tokenizer, queries, int8_path),
            ),
            "",
            f"int8 item-SID agreement with fp32 over {report['items_compared']:,} catalog items: "
            + ", ".join(f"{k} {v:.4f}" for k, v in agree.items())
            + ". Level 1–2 agreement "
            + ("meets" if agree.get("l1-2", 0) >= 0.99 else "is below")
            + " the 99 % needed to make int8 the default, so `--quantize int8` "
            + ("could become the default." if agree.get("l1-2", 0) >= 0.99 else "stays opt-in."),
            "",
        ]
        lines += [
            "## Triton round trip against in-process ONNX Runtime",
            "",
            "The real `tritonserver` 2.51 from the `nvidia-pytriton` wheel (CPU, Python backend "
            "running the same ONNX graphs with ONNX Runtime), gRPC on loopback, one request at "
            "a time; median ms. A lone request also waits out the dynamic batcher's "
            "`max_queue_delay_microseconds` (2 ms in the CPU variant) unless it fills a "
            "preferred batch size (32 does, for the encoder).",
            "",
            *md_table(
                ["call", "batch", "in-process ms", "Triton ms", "overhead ms"],
                triton_overhead(bundle, tokenizer, queries, work),
            ),
            "",
        ]
    lines += [f"Benchmark wall time: {time.perf_counter() - started:.0f} s.", ""]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
