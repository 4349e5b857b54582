from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest

from tests.conftest import write_csv
from training.data import (
    DataError,
    category_levels,
    group_by_query,
    load_catalog,
    load_judgments,
    normalise_query,
    split_by_query,
)
from training.data.judgments import in_dev


def test_catalog_gzip_by_content_and_description_fallback(tiny_catalog):
    cat = load_catalog(tiny_catalog)
    assert len(cat) == 10
    assert cat.ids[0] == "p1" and cat.index["p10"] == 9
    assert cat.texts[9] == "PVC Pipe 2 in. x 10 ft. Schedule 40"  # title empty -> description
    assert cat.report["title_from_description"] == 1


def test_catalog_counts_and_drops_bad_rows(tmp_path, caplog):
    path = write_csv(
        tmp_path / "c.csv",
        ["product_uid", "title"],
        [("a", "Hammer"), ("a", "Second hammer"), ("", "No id"), ("b", "   "), ("c", "Saw")],
    )
    with caplog.at_level(logging.WARNING):
        cat = load_catalog(path, description_column=None)
    assert cat.ids == ["a", "c"] and cat.texts == ["Hammer", "Saw"]
    assert cat.report["dropped_duplicate_id"] == 1
    assert cat.report["dropped_empty_id"] == 1
    assert cat.report["dropped_empty_text"] == 1
    assert "dropped 3 of 5 rows" in caplog.text


def test_catalog_missing_column_names_file_and_columns(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["id", "name"], [("a", "Hammer")])
    with pytest.raises(DataError, match=r"c\.csv: missing column\(s\) 'product_uid', 'title'"):
        load_catalog(path)
    cat = load_catalog(path, id_column="id", title_column="name")
    assert cat.ids == ["a"]


def test_catalog_latin1_file_is_decoded(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("product_uid,title\n1,Caf\xe9 table 36\xbd in.\n".encode("latin-1"))
    cat = load_catalog(path, description_column=None)
    assert cat.texts == ["Café table 36½ in."]
    assert cat.report["encoding"] == "cp1252"


def test_catalog_errors_on_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_catalog(empty)
    trunc = tmp_path / "t.csv.gz"
    trunc.write_bytes(gzip.compress(b"product_uid,title\n1,Saw\n" * 50)[:30])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        load_catalog(trunc)
    with pytest.raises(DataError, match="no such file"):
        load_catalog(tmp_path / "absent.csv")


def test_judgments_drop_unknown_products_and_reject_bad_grades(
    tiny_catalog, tiny_judgments, tmp_path, caplog
):
    cat = load_catalog(tiny_catalog)
    with caplog.at_level(logging.WARNING):
        j = load_judgments(tiny_judgments, cat)
    assert len(j) == 14
    assert j.report["dropped_unknown_item"] == 1 and "p999" in caplog.text
    bad = write_csv(
        tmp_path / "bad.csv",
        ["query", "product_uid", "relevance"],
        [("drill", "p1", "3"), ("saw", "p3", "high")],
    )
    with pytest.raises(DataError, match=r"line 3: relevance 'high' is not a number"):
        load_judgments(bad, cat)


def test_split_is_by_normalised_query_and_deterministic():
    assert normalise_query("  Cordless   DRILL ") == "cordless drill"
    assert in_dev("Cordless Drill") == in_dev("cordless  drill")
    # every spelling of a query goes to its side (one pair agrees by chance 3 times in 4)
    assert all(in_dev(f"query {i}") == in_dev(f"  QUERY   {i} ") for i in range(2000))
    # the fraction is respected on many queries, and the answer never changes
    sides = [in_dev(f"query {i}") for i in range(20000)]
    assert 0.14 < np.mean(sides) < 0.16
    assert sides == [in_dev(f"query {i}") for i in range(20000)]


def test_split_never_puts_a_query_on_both_sides(tiny_catalog, tiny_judgments):
    cat = load_catalog(tiny_catalog)
    j = load_judgments(tiny_judgments, cat)
    train, dev = split_by_query(j, dev_fraction=0.5)
    assert len(train) + len(dev) == len(j)
    assert {normalise_query(q) for q in train.queries}.isdisjoint(
        normalise_query(q) for q in dev.queries
    )


def test_group_by_query_merges_spellings_and_averages_repeats(tiny_catalog, tmp_path):
    cat = load_catalog(tiny_catalog)
    path = write_csv(
        tmp_path / "j.csv",
        ["query", "product_uid", "relevance"],
        [("Drill", "p1", 3), ("drill ", "p1", 2), ("drill", "p2", 1), ("saw", "p3", 3)],
    )
    qs = group_by_query(load_judgments(path, cat))
    assert qs.texts == ["Drill", "saw"]
    assert qs.judged[0] == {0: 2.5, 1: 1.0}
    q, i = qs.relevant_pairs(2.5)
    assert list(zip(q.tolist(), i.tolist(), strict=True)) == [(0, 0), (1, 2)]


def test_category_levels_use_full_prefixes():
    levels = category_levels(["A > B > C", "X > B", None, "A"], depth=3)
    assert levels[0] == ["A", "X", None, "A"]
    assert levels[1] == ["A > B", "X > B", None, None]  # same name, different parents
    assert levels[2] == ["A > B > C", None, None, None]
