"""Interleaved A/B of bundles' query search: the encoder and the trie-constrained beam search
in process (ONNX Runtime, no HTTP, no store), on the same dev-split queries.

What a change to the exported graphs does to search time, apart from this machine's drift
(docs/gateway.md § Capacity planning): every bundle is loaded side by side and each round
visits them in turn, reversing the order every other round. The report gives each bundle's
median time per batch over the rounds, how often it beat the first bundle within a round, and
how many queries got exactly the first bundle's top-`beam` paths.

    python benchmarks/search_ab.py --bundle old=runs/bundle --bundle new=runs/bundle-new \\
        [--rounds 6] [--queries-b1 100] [--batches-b32 8] [--out FILE]

Threads as in `benchmarks/serving.py`'s comparison with HF: 1 at batch 1 (the gateway's
per-worker setting), every core at batch 32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine, md_table, write_report  # noqa: E402
from benchmarks.serving_ab import rounds  # noqa: E402


@dataclass
class Side:
    """One bundle's sessions and what its rounds measured (seconds per round)."""

    label: str
    path: Path
    threads: int
    encode_s: list[float] = field(default_factory=list)
    search_s: list[float] = field(default_factory=list)
    paths: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        from service.bundle import load_bundle
        from service.onnx_model import OnnxIndexer
        from service.tokenizer import BundleTokenizer
        from service.trie import CompactTrie

        bundle = load_bundle(self.path)
        self.model = OnnxIndexer(bundle.graph_paths, self.threads)
        self.tokenizer = BundleTokenizer(bundle.file(bundle.tokenizer.file), bundle.tokenizer)
        self.trie = CompactTrie.from_codes(bundle.semantic_sids, bundle.codebook_sizes)

    def run(self, batches: list[list[str]], beam: int, keep: bool) -> tuple[float, float]:
        """(encoder seconds, search seconds) over `batches`; `keep` stores the top paths."""
        from service.query_beams import beams_for_memory

        encode = search = 0.0
        for texts in batches:
            t0 = time.perf_counter()
            ids, mask = self.tokenizer.queries(texts)
            memory = self.model.encode(ids, mask)
            t1 = time.perf_counter()
            beams = beams_for_memory(self.model, memory, mask, self.trie, beam)
            t2 = time.perf_counter()
            encode, search = encode + t1 - t0, search + t2 - t1
            if keep:
                self.paths += [paths for paths, _ in beams]
        return encode, search


def parse_bundle(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--bundle wants LABEL=DIR, got {text!r}")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"--bundle {label}: {path} is not a directory")
    return label, Path(path)


def compare(
    bundles: list[tuple[str, Path]], batches: list[list[str]], threads: int, args
) -> list[list[object]]:
    sides = {label: Side(label, path, threads) for label, path in bundles}
    for side in sides.values():  # untimed: the first calls pay for the sessions' allocations
        side.run(batches[:1], args.beam, keep=False)
    for r, label in rounds(list(sides), args.rounds):
        encode, search = sides[label].run(batches, args.beam, keep=r == 0)
        sides[label].encode_s.append(encode / len(batches))
        sides[label].search_s.append(search / len(batches))
    base = sides[bundles[0][0]]
    rows = []
    for side in sides.values():
        same = sum(np.array_equal(a, b) for a, b in zip(side.paths, base.paths, strict=True))
        wins = sum(s < b for s, b in zip(side.search_s, base.search_s, strict=True))
        search = statistics.median(side.search_s)
        rows.append(
            [
                len(batches[0]),
                side.label,
                f"{statistics.median(side.encode_s) * 1000:.2f}",
                f"{search * 1000:.2f}",
                f"{search / statistics.median(base.search_s):.2f}",
                "–" if side is base else f"{wins}/{args.rounds}",
                f"{same}/{len(base.paths)}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=parse_bundle, action="append", required=True)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--queries-b1", type=int, default=100, help="batches of 1 per round")
    p.add_argument("--batches-b32", type=int, default=8, help="batches of 32 per round")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search-ab.md")
    args = p.parse_args()
    if len(args.bundle) < 2:
        p.error("give at least two --bundle LABEL=DIR")
    if len({label for label, _ in args.bundle}) < len(args.bundle):
        p.error("--bundle labels must differ")
    if min(args.rounds, args.queries_b1, args.batches_b32, args.beam) < 1:
        p.error("--rounds, --queries-b1, --batches-b32 and --beam must be >= 1")
    from benchmarks.serving import dev_queries

    queries = dev_queries(args.data)[0]
    if len(queries) < max(args.queries_b1, 32 * args.batches_b32):
        p.error(f"only {len(queries)} dev queries; lower --queries-b1 / --batches-b32")
    started = time.time()
    rows = compare(args.bundle, [[q] for q in queries[: args.queries_b1]], 1, args)
    b32 = [queries[i * 32 : (i + 1) * 32] for i in range(args.batches_b32)]
    rows += compare(args.bundle, b32, os.cpu_count() or 1, args)
    bundles = ", ".join(f"{label} = `{path}`" for label, path in args.bundle)
    lines = [
        "# Search A/B across bundles",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        f"- machine: {machine()}",
        f"- command: `python benchmarks/search_ab.py {' '.join(sys.argv[1:])}`",
        f"- bundles: {bundles}",
        f"- {args.rounds} rounds, bundles in turn (order reversed every other round); per round "
        f"{args.queries_b1} dev queries one at a time (1 thread) and {args.batches_b32} batches "
        "of 32 (every core); beam "
        f"{args.beam}; times are the median over rounds of the mean per batch",
        "",
        *md_table(
            [
                "batch",
                "bundle",
                "encoder ms",
                "search ms",
                "search / first",
                "rounds faster than first",
                "identical top paths",
            ],
            rows,
        ),
        "",
        f"Benchmark wall time: {time.time() - started:.0f} s.",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
