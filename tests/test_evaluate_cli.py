"""`sidserve evaluate` end to end on a tiny catalog written by the test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sidserve.cli import main


def _evaluate(tmp_path, catalog, judgments, method, *extra):
    out = tmp_path / f"{method}.json"
    argv = ["evaluate", "--method", method, "--catalog", str(catalog), "--out", str(out)]
    if judgments is not None:
        argv += ["--judgments", str(judgments), "--split", "all"]
    assert main(argv + list(extra)) == 0
    report = json.loads(out.read_text())
    assert report["method"] == method
    return report["metrics"]


def test_bm25_and_dense_find_the_obvious_products(tmp_path, tiny_catalog, tiny_judgments):
    bm25 = _evaluate(tmp_path, tiny_catalog, tiny_judgments, "bm25")
    # every query names its product's words: BM25 puts it first
    assert bm25["recall@1"] == 1.0 and bm25["mrr@100"] == 1.0
    assert bm25["n_queries"] == 10  # all ten distinct queries have a product graded >= 2.5
    dense = _evaluate(tmp_path, tiny_catalog, tiny_judgments, "dense")
    assert dense["recall@10"] == 1.0
    assert dense["mrr@100"] > 0.8
    assert 0.0 <= dense["ndcg@10"] <= 1.0


@pytest.mark.parametrize("method", ["hkmeans", "rqvae", "dsirm"])
def test_sid_methods_report_sid_quality(tmp_path, tiny_catalog, tiny_judgments, method):
    m = _evaluate(
        tmp_path,
        tiny_catalog,
        tiny_judgments,
        method,
        "--levels",
        "2",
        "--codebook-size",
        "4",
        "--beam",
        "3",
    )
    assert m["unique_after_disambiguation"] == 1.0
    assert 0.0 < m["l1_utilisation"] <= 1.0
    assert 0.0 <= m["l1_code_acc"] <= 1.0 and m["l2_code_acc"] <= m["l1_code_acc"]
    for d in (1, 2):  # no query SIDs can beat the bound the item SIDs set
        assert m[f"l{d}_code_acc"] <= m[f"l{d}_code_acc_ceiling"] <= 1.0
    assert m["recall@100"] <= m["candidate_recall"] <= 1.0  # only candidates are ranked
    assert m["candidates_mean"] > 0
    assert {"recall@10", "mrr@100", "auc_dense", "collision_rate"} <= m.keys()


def test_sid_order_dense_reorders_the_same_candidates(tmp_path, tiny_catalog, tiny_judgments):
    shape = ["--levels", "2", "--codebook-size", "4", "--beam", "3", "--min-depth", "2"]
    beam = _evaluate(tmp_path, tiny_catalog, tiny_judgments, "hkmeans", *shape)
    dense = _evaluate(
        tmp_path, tiny_catalog, tiny_judgments, "hkmeans", *shape, "--sid-order", "dense"
    )
    # same SIDs, beams and candidate sets (all within the top 100 here); within a leaf the
    # off-the-shelf similarity now decides, and on this catalog it puts the named product first
    assert dense["candidates_mean"] == beam["candidates_mean"]
    assert dense["recall@100"] == beam["recall@100"]
    assert dense["mrr@100"] >= beam["mrr@100"]

    def pool(size: int) -> dict:
        order = ["--sid-order", "pool", "--rerank-pool", str(size)]
        return _evaluate(tmp_path, tiny_catalog, tiny_judgments, "hkmeans", *shape, *order)

    # a pool of 1 re-orders nothing: the single best candidate in beam order
    one = pool(1)
    assert one["recall@1"] == one["recall@100"] == beam["recall@1"]
    # a pool holding every candidate ranks them by similarity alone: the same set again
    every = pool(1000)
    assert every["candidates_mean"] == beam["candidates_mean"]
    assert every["recall@100"] == beam["recall@100"]


def test_category_ami_without_judgments(tmp_path):
    from tests.conftest import write_csv

    rows = [
        (f"t{i}", title, cat)
        for i, (title, cat) in enumerate(
            [
                ("Wooden train set", "Hobbies > Trains"),
                ("Model railway engine", "Hobbies > Trains"),
                ("Steam locomotive kit", "Hobbies > Trains"),
                ("Rag doll", "Dolls > Soft"),
                ("Baby doll with bottle", "Dolls > Baby"),
                ("Doll house furniture", "Dolls > Houses"),
                ("Jigsaw puzzle 1000 pieces", "Puzzles > Jigsaw"),
                ("3D puzzle globe", "Puzzles > 3D"),
                ("Untitled toy", ""),
            ]
        )
    ]
    cat = write_csv(tmp_path / "toys.csv", ["product_id", "title", "category_path"], rows)
    m = _evaluate(
        tmp_path,
        cat,
        None,
        "hkmeans",
        "--id-column",
        "product_id",
        "--description-column",
        "",
        "--category-column",
        "category_path",
        "--levels",
        "2",
        "--codebook-size",
        "3",
    )
    assert "ami_l1" in m and m["ami_l1_items"] == 8  # the uncategorised toy is left out
    assert "recall@10" not in m


def test_bad_input_exits_2_with_a_message(tmp_path, tiny_catalog, capsys):
    assert main(["evaluate", "--method", "bm25", "--catalog", str(tiny_catalog)]) == 2
    assert "needs --judgments" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--method",
                "dense",
                "--catalog",
                str(tmp_path / "nope.csv"),
                "--judgments",
                str(tiny_catalog),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--method",
                "hkmeans",
                "--catalog",
                str(tiny_catalog),
                "--levels",
                "2",
                "--min-depth",
                "3",
            ]
        )
        == 2
    )
    assert "--min-depth cannot exceed --levels" in capsys.readouterr().err


def test_console_script_help_lists_evaluate():
    out = subprocess.run(
        [sys.executable, "-m", "sidserve.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "evaluate" in out


def test_relevance_model_mlp_is_recorded_and_an_unknown_one_refused(
    tmp_path, tiny_catalog, tiny_judgments
):
    shape = ["--levels", "2", "--codebook-size", "4", "--beam", "3"]
    logistic = _evaluate(tmp_path, tiny_catalog, tiny_judgments, "hkmeans", *shape)
    mlp = _evaluate(
        tmp_path, tiny_catalog, tiny_judgments, "hkmeans", *shape, "--relevance-model", "mlp"
    )
    report = json.loads((tmp_path / "hkmeans.json").read_text())
    assert report["config"]["relevance_model"] == "mlp"
    for m in (logistic, mlp):
        assert 0.0 <= m["auc_dense"] <= 1.0 and 0.0 <= m["auc_dense_sid"] <= 1.0
    # (that the switch changes the classifier: tests/test_metrics_relevance.py)
    with pytest.raises(SystemExit):
        main(
            ["evaluate", "--method", "bm25", "--catalog", str(tiny_catalog)]
            + ["--relevance-model", "tree"]
        )
