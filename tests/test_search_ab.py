"""The bundles' search A/B (benchmarks/search_ab.py): bundle specs, and one real run of two
sides on the tiny bundle, which must find the same paths on both."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.search_ab import compare, parse_bundle


def test_bundle_specs_parse_and_bad_ones_say_what_is_wrong(tmp_path):
    assert parse_bundle(f"new={tmp_path}") == ("new", tmp_path)
    for bad, says in (("no-label", "LABEL=DIR"), (f"={tmp_path}", "LABEL=DIR"), ("x=", "LABEL")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse_bundle(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="not a directory"):
        parse_bundle(f"x={tmp_path / 'missing'}")


def test_two_sides_of_one_bundle_find_the_same_paths(tiny_export):
    bundle = tiny_export["bundle"]
    args = argparse.Namespace(rounds=3, beam=4)
    batches = [["red drill", "oak table"], ["garden hose", "steel hammer"]]
    rows = compare([("a", bundle), ("b", bundle)], batches, 1, args)
    assert [row[:2] for row in rows] == [[2, "a"], [2, "b"]]
    assert [row[-1] for row in rows] == ["4/4", "4/4"]  # every query, the same top paths
    assert rows[0][4] == "1.00" and rows[0][5] == "–"
    assert float(rows[1][3]) > 0 and rows[1][5] in {f"{n}/3" for n in range(4)}
