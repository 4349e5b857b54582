"""The interleaved A/B tool (benchmarks/serving_ab.py): variant specs, visiting order, the
summary it reports, and one real run of two gateways on the tiny bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serving_ab import Variant, parse_variant, rounds, summarise
from tests.triton_server import variant_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_variant_specs_parse_and_bad_ones_say_what_is_wrong():
    assert parse_variant("new=.") == Variant("new", ".")
    assert parse_variant("old=git:HEAD~2") == Variant("old", "git:HEAD~2")
    got = parse_variant("b16=/src/tree:SIDSERVE_BATCH_MAX_QUERIES=16,SIDSERVE_WORKERS=1")
    assert got == Variant(
        "b16", "/src/tree", {"SIDSERVE_BATCH_MAX_QUERIES": "16", "SIDSERVE_WORKERS": "1"}
    )
    for bad, says in (
        ("=.", "LABEL=SOURCE"),
        ("no source", "LABEL=SOURCE"),
        ("a b=.", "LABEL=SOURCE"),
        ("x=", "no source"),
        ("x=.:SIDSERVE_WORKERS", "SIDSERVE_KEY=VALUE"),
        ("x=.:SIDSERVE_WORKERS=1,PATH=/bin", "SIDSERVE_KEY=VALUE"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_variant(bad)


def test_rounds_alternate_the_order_of_the_variants():
    assert list(rounds(["a", "b", "c"], 3)) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"), (2, "a"), (2, "b"), (2, "c"),
    ]  # fmt: skip


def test_summary_gives_medians_ranges_and_rounds_won_against_the_first():
    def run(qps: float, p50: float, p99: float) -> dict:
        cpu = {"gateway": 1000 / qps, "redis": 0.5, "loadgen": 0.3}
        return {"qps": qps, "p50_ms": p50, "p99_ms": p99, "errors": 0, "cpu": cpu}

    runs = {
        "base": [run(100, 10, 20), run(90, 12, 22), run(110, 11, 30)],
        "new": [run(120, 9, 21), run(80, 13, 19), run(130, 8, 18)],
    }
    base, new = summarise(runs, "base")
    assert base[:6] == ["base", 3, "100.0", "11.00 (10.00–12.00)", "22.00 (20.00–30.00)", 0]
    assert base[6:] == ["10.00", "0.50", "–", "–"]  # CPU: the median of 10, 11.1 and 9.1 ms
    assert new[:5] == ["new", 3, "120.0", "9.00 (8.00–13.00)", "19.00 (18.00–21.00)"]
    assert new[6:] == ["8.33", "0.50", "2/3", "2/3"]  # p50: rounds 1, 3; p99: rounds 2, 3


def test_a_real_ab_of_two_settings_on_the_tiny_bundle(tiny_export, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("cordless drill\nkitchen faucet\nled light bulb\n")
    out = tmp_path / "ab.md"
    # the second variant serves another bundle: another model version, whose items must be
    # loaded into the Redis too, or its store would answer 503 (errors below)
    other = variant_bundle(tiny_export["bundle"], tmp_path / "other-bundle")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serving_ab.py")]
    cmd += ["--bundle", str(tiny_export["bundle"]), "--queries", str(queries), "--out", str(out)]
    cmd += ["--variant", "two=.", "--variant", f"one=.:SIDSERVE_WORKERS=1,SIDSERVE_BUNDLE={other}"]
    cmd += ["--concurrency", "2", "--reps", "2", "--duration", "1", "--warmup", "0"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # e.g. no redis-server: how to install it
    report = out.read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| two |", "| one |"))]
    assert len(rows) == 2, report
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2" and float(cells[2]) > 0 and cells[5] == "0", row  # runs, q/s, errors
        assert float(cells[6]) > 0 and float(cells[7]) >= 0, row  # gateway and Redis CPU
    assert "SIDSERVE_WORKERS=1" in report


def test_bad_variants_and_sources_are_refused_before_anything_starts(tmp_path):
    script = str(ROOT / "benchmarks" / "serving_ab.py")
    for args, says in (
        (["--variant", "a=.", "--variant", "a=."], "labels must differ"),
        (["--variant", "a=.:SIDSERVE_X"], "SIDSERVE_KEY=VALUE"),
        (["--variant", "a=.", "--bundle", str(tmp_path)], "not a bundle"),
        (["--variant", f"a=.:SIDSERVE_BUNDLE={tmp_path}"], "not a bundle"),
        (["--variant", f"a={tmp_path}"], "not a sidserve source tree"),
        (["--variant", "a=git:no-such-revision"], "no such revision"),
    ):
        done = subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
