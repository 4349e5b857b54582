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


def _toy_files(tmp_path, epochs: float):
    """The toy catalog, its judgments and a tiny config with `epochs` per level, as files."""
    products, judgments = toy_rows()
    cat = write_csv(tmp_path / "p.csv", ["product_uid", "title", "description"], products)
    jud = write_csv(tmp_path / "j.csv", ["query", "product_uid", "relevance"], judgments)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(asdict(tiny_config(epochs_per_level=[epochs, epochs]))))
    return cat, jud, cfg


def test_train_evaluate_assign(tmp_path, capsys):
    products = toy_rows()[0]
    cat, jud, cfg = _toy_files(tmp_path, 2.0)
    ck = tmp_path / "ck"
    assert _train(cat, jud, ck, cfg, "--dev-fraction", "0.3") == 0
    log = [json.loads(line) for line in (ck / "train_log.jsonl").read_text().splitlines()]
    assert [e["level"] for e in log] == [1, 2]
    assert 0 < log[0]["l1_utilisation"] <= 1 and "l1_code_acc" in log[0]["dev"]
    doc = json.loads((ck / "indexer.json").read_text())
    assert doc["levels_trained"] == 2 and doc["device"] == "cpu"

    out = tmp_path / "r.json"
    common = ["--catalog", str(cat), "--judgments", str(jud), "--checkpoint", str(ck)]
    common += ["--split", "all", "--out", str(out)]
    assert main(["evaluate", "--method", "indexer", *common, "--beam", "4"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["unique_after_disambiguation"] == 1.0 and m["recall@100"] > 0
    assert {"l1_code_acc", "l2_code_acc", "auc_dense_sid", "candidates_mean"} <= m.keys()
    # same catalog as training: how many items the finished model still codes as assigned
    assert 1.0 >= m["l1_assignment_agreement"] >= m["l2_assignment_agreement"] > 0.5
    # candidates of one depth ordered by the indexer's dense vectors: the same candidate sets
    # (every one of the 48 products fits in the top 100), so only the order may change
    assert (
        main(["evaluate", "--method", "indexer", *common, "--beam", "4", "--sid-order", "dense"])
        == 0
    )
    by_dense = json.loads(out.read_text())
    assert by_dense["config"]["sid_order"] == "dense"
    dm = by_dense["metrics"]
    assert dm["candidates_mean"] == m["candidates_mean"] and dm["recall@100"] == m["recall@100"]
    assert dm["l1_code_acc"] == m["l1_code_acc"]
    assert main(["evaluate", "--method", "indexer-dense", *common]) == 0
    dense = json.loads(out.read_text())["metrics"]
    # 48 products, every query judged: the trained representation must beat chance by far
    assert dense["recall@10"] > 0.5

    # one pass over the catalog serves all three evaluations (cached per checkpoint files and
    # catalog texts), and indexer-dense really ranks with the cached vectors
    import numpy as np

    from training.encoder import cache_dir

    (entry,) = (cache_dir() / "indexer-catalog").glob("*.npz")
    with np.load(entry) as cached:
        codes, vecs = cached["codes"], cached["dense"]
    np.savez(entry, codes=codes, dense=np.zeros_like(vecs))
    assert main(["evaluate", "--method", "indexer-dense", *common]) == 0
    assert json.loads(out.read_text())["metrics"]["recall@10"] < dense["recall@10"]
    # a changed checkpoint gets its own entry, computed afresh
    meta = ck / "indexer.json"
    meta.write_text(meta.read_text() + "\n")
    assert main(["evaluate", "--method", "indexer-dense", *common]) == 0
    assert json.loads(out.read_text())["metrics"] == dense
    assert len(list((cache_dir() / "indexer-catalog").glob("*.npz"))) == 2

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


def test_ablation_benchmark_reports_a_reused_checkpoint(tmp_path):
    """benchmarks/ablation.py end to end on the toy set: its table holds what evaluate says."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cat, jud, cfg = _toy_files(tmp_path, 1.0)
    data = tmp_path / "data" / "homedepot"
    data.mkdir(parents=True)
    for src, name in ((cat, "products.csv.gz"), (jud, "judgments.csv.gz")):
        (data / name).write_bytes(gzip.compress(src.read_bytes()))
    ck = tmp_path / "ck"
    assert _train(cat, jud, ck, cfg) == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"
    out = tmp_path / "ablation.md"
    base = [sys.executable, str(script), "--data", str(tmp_path / "data"), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [*base, "--variants", "full", "--reuse", f"full={ck}"], env=env, capture_output=True
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    sid = json.loads((ck / "eval-indexer.json").read_text())["metrics"]
    dense = json.loads((ck / "eval-indexer-dense.json").read_text())["metrics"]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| full |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{sid['recall@10']:.4f}" and cells[-1] == f"{dense['mrr@100']:.4f}"
    assert cells[11] == f"{sid['l1_assignment_agreement']:.4f}"
    assert "Not run in this invocation: no-kl" in out.read_text()

    bad = subprocess.run([*base, "--reuse", f"full={tmp_path}"], env=env, capture_output=True)
    assert bad.returncode == 2 and b"not a fully trained" in bad.stderr


def test_resume_goes_on_after_the_last_finished_level(tmp_path, monkeypatch, capsys):
    from safetensors.numpy import load_file

    from training.indexer.trainer import Trainer

    cat, jud, cfg = _toy_files(tmp_path, 1.0)
    ck = tmp_path / "ck"

    class Killed(Exception):
        pass

    assign = Trainer.assign_level

    def dies_at_level_2(self, level):
        if level == 1:
            raise Killed
        return assign(self, level)

    monkeypatch.setattr(Trainer, "assign_level", dies_at_level_2)
    try:
        _train(cat, jud, ck, cfg)
    except Killed:
        pass
    else:
        raise AssertionError("the simulated crash did not happen")
    first = json.loads((ck / "indexer.json").read_text())
    assert first["levels_trained"] == 1
    level1 = load_file(str(ck / "indexer.safetensors"))["item_codes"][:, 0].copy()
    monkeypatch.setattr(Trainer, "assign_level", assign)

    # the configuration comes from the checkpoint, so passing one is a mistake
    assert _train(cat, jud, ck, cfg, "--resume") == 2
    assert "drop --config" in capsys.readouterr().err
    argv = ["train", "--catalog", str(cat), "--judgments", str(jud), "--out", str(ck)]
    assert main([*argv, "--resume"]) == 0
    doc = json.loads((ck / "indexer.json").read_text())
    assert doc["levels_trained"] == 2 and doc["indexer"] == first["indexer"]
    assert doc["train_seconds"] >= first["train_seconds"]
    codes = load_file(str(ck / "indexer.safetensors"))["item_codes"]
    assert (codes[:, 0] == level1).all() and (codes[:, 1] >= 0).all()
    log = [json.loads(line) for line in (ck / "train_log.jsonl").read_text().splitlines()]
    assert [e["level"] for e in log] == [1, 2]  # the interrupted run's level 1 is kept

    assert main([*argv, "--resume"]) == 2
    assert "all 2 levels trained already" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_train_refuses_a_device_it_cannot_use(tmp_path, capsys):
    cat, jud, cfg = _toy_files(tmp_path, 1.0)
    # no machine has 100 GPUs: with CUDA the index is out of range, without it CUDA is missing
    assert _train(cat, jud, tmp_path / "ck", cfg, "--device", "cuda:99") == 2
    err = capsys.readouterr().err
    assert "--device 'cuda:99'" in err and "CUDA device" in err
    assert _train(cat, jud, tmp_path / "ck", cfg, "--device", "meta") == 2
    assert "only cpu and cuda devices are supported" in capsys.readouterr().err
    assert _train(cat, jud, tmp_path / "ck", cfg, "--device", "gpu0") == 2
    assert "--device 'gpu0'" in capsys.readouterr().err
    assert not (tmp_path / "ck" / "indexer.safetensors").exists()


def test_encoder_init_dense_ft_starts_from_the_dense_ft_baseline(tmp_path, capsys):
    """The default `encoder_init` ("auto") on judgments: the encoder starts from the dense-ft
    baseline's model (the same cache entry `sidserve evaluate --method dense-ft` trains), so
    the frozen lower layers are that model's, not MiniLM's; the checkpoint records
    "dense-ft"."""
    from safetensors.numpy import load_file

    from training.encoder import cache_dir, minilm_path

    cat, jud, cfg = _toy_files(tmp_path, 1.0)
    doc = json.loads(cfg.read_text())
    del doc["encoder_init"], doc["lr"]  # tiny_config's: the defaults are what is under test
    cfg.write_text(json.dumps(doc))
    ck = tmp_path / "ck"
    assert _train(cat, jud, ck, cfg) == 0
    (ft_dir,) = (cache_dir() / "dense-ft").iterdir()
    baseline = load_file(str(ft_dir / "model.safetensors"))
    minilm = load_file(str(minilm_path() / "model.safetensors"))
    weights = load_file(str(ck / "indexer.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    frozen = weights["lower.0.attention.self.query.weight"]
    assert (frozen == baseline[name]).all() and not (frozen == minilm[name]).all()
    meta = json.loads((ck / "indexer.json").read_text())
    assert meta["base_model"].endswith("fine-tuned as dense-ft")
    assert meta["indexer"]["encoder_init"] == "dense-ft"
    assert meta["indexer"]["lr"] == 2e-5  # the dense-ft start's rate

    # the baseline evaluated on the same split reuses that model: nothing is trained again
    out = tmp_path / "r.json"
    argv = ["evaluate", "--method", "dense-ft", "--catalog", str(cat), "--judgments", str(jud)]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "train_s" not in report["timings"] and report["info"]["model_dir"] == str(ft_dir)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "encoder_init": "bert"}))
    assert _train(cat, jud, tmp_path / "ck2", bad) == 2
    assert "encoder_init must be 'auto', 'minilm' or 'dense-ft'" in capsys.readouterr().err
    explicit = tmp_path / "dense-ft.json"
    explicit.write_text(json.dumps({**doc, "encoder_init": "dense-ft"}))
    argv = ["train", "--catalog", str(cat), "--out", str(tmp_path / "ck3"), "--self-supervised"]
    assert main([*argv, "--config", str(explicit)]) == 2
    assert "self-supervised mode has none" in capsys.readouterr().err
