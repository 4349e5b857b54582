"""`sidserve train`, `evaluate --method indexer|indexer-dense` and `assign` end to end."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import asdict

from sidserve.cli import main
from tests.conftest import write_csv
from tests.indexer_toy import tiny_config, toy_rows


def _train(cat, jud, out, config, *extra) -> int:
    argv = ["train", "--catalog", str(cat), "--judgments", str(jud), "--out", str(out)]
    return main([*argv, "--config", str(config), *extra])


def test_train_evaluate_assign(tmp_path, capsys):
    products, judgments = toy_rows()
    cat = write_csv(tmp_path / "p.csv", ["product_uid", "title", "description"], products)
    jud = write_csv(tmp_path / "j.csv", ["query", "product_uid", "relevance"], judgments)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(asdict(tiny_config(epochs_per_level=[2.0, 2.0]))))
    ck = tmp_path / "ck"
    assert _train(cat, jud, ck, cfg, "--dev-fraction", "0.3") == 0
    log = [json.loads(line) for line in (ck / "train_log.jsonl").read_text().splitlines()]
    assert [e["level"] for e in log] == [1, 2]
    assert 0 < log[0]["l1_utilisation"] <= 1 and "l1_code_acc" in log[0]["dev"]
    assert json.loads((ck / "indexer.json").read_text())["levels_trained"] == 2

    out = tmp_path / "r.json"
    common = ["--catalog", str(cat), "--judgments", str(jud), "--checkpoint", str(ck)]
    common += ["--split", "all", "--out", str(out)]
    assert main(["evaluate", "--method", "indexer", *common, "--beam", "4"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["unique_after_disambiguation"] == 1.0 and m["recall@100"] > 0
    assert {"l1_code_acc", "l2_code_acc", "auc_dense_sid", "candidates_mean"} <= m.keys()
    assert main(["evaluate", "--method", "indexer-dense", *common]) == 0
    dense = json.loads(out.read_text())["metrics"]
    # 48 products, every query judged: the trained representation must beat chance by far
    assert dense["recall@10"] > 0.5

    table = tmp_path / "sids.csv.gz"
    assert (
        main(["assign", "--checkpoint", str(ck), "--catalog", str(cat), "--out", str(table)]) == 0
    )
    with gzip.open(table, "rt") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(products) and len({r["sid"] for r in rows}) == len(rows)
    assert rows[0]["sid"] == "-".join([rows[0]["l1"], rows[0]["l2"], rows[0]["l3"]])

    capsys.readouterr()
    assert main(["evaluate", "--method", "indexer", "--catalog", str(cat)]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"levels": 2, "colour": "red"}')
    assert _train(cat, jud, tmp_path / "x", bad) == 2
    assert "unknown config key(s): colour" in capsys.readouterr().err
