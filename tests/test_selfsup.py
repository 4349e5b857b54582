"""Self-supervised (LMIndexer) mode on the toy catalog: no queries, categories for AMI."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch

from sidserve.cli import main
from tests.conftest import write_csv
from tests.indexer_toy import DEPARTMENTS, tiny_config, toy_rows
from training.encoder import minilm_path
from training.indexer.model import SemanticIndexer
from training.indexer.selfsup import SelfSupervisedTrainer, TitleTokens
from training.indexer.states import compute_states


def test_reconstruction_and_contrast_improve_with_training():
    from transformers import AutoTokenizer

    products, _ = toy_rows()
    texts = [p[1] for p in products]
    cfg = tiny_config()
    torch.manual_seed(0)
    model = SemanticIndexer(cfg)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    states = compute_states(model, tok, texts, cfg.max_item_tokens, progress=False)
    tokens = TitleTokens.build(tok, texts, cfg.max_item_tokens)
    # targets index the catalog's own vocabulary; special tokens and padding are -1
    assert tokens.target.max() < len(tokens.vocab) and (tokens.target[:, 0] == -1).all()
    t = SelfSupervisedTrainer(model, states, tokens)
    first = t.run_epochs(0, 2.0, main=False, desc="a")
    for _ in range(3):
        last = t.run_epochs(0, 2.0, main=False, desc="b")
    assert last["recon"] < first["recon"] and last["contrast"] < first["contrast"]
    t.init_codebook(0)
    t.run_epochs(0, 2.0, main=True, desc="c")
    stats = t.assign_level(0)
    assert stats["utilisation"] >= 0.5  # 8 codes, 48 items: not collapsed


def test_self_supervised_cli_and_category_ami(tmp_path):
    products, _ = toy_rows()
    dept_of = {}
    for dept, nouns in DEPARTMENTS.items():
        for noun in nouns:
            dept_of[noun.title()] = dept.title()
    rows = [
        (pid, title, f"{next(d for n, d in dept_of.items() if n in title)} > {title[:3]}")
        for pid, title, _ in products
    ]
    cat = write_csv(tmp_path / "toys.csv", ["product_id", "title", "category_path"], rows)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(asdict(tiny_config(epochs_per_level=[2.0, 2.0]))))
    ck = tmp_path / "ck"
    common = ["--catalog", str(cat), "--id-column", "product_id", "--description-column", ""]
    assert (
        main(["train", "--self-supervised", *common, "--out", str(ck), "--config", str(cfg)]) == 0
    )
    doc = json.loads((ck / "indexer.json").read_text())
    assert doc["mode"] == "self-supervised" and doc["levels_trained"] == 2
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--method",
                "indexer",
                *common,
                "--category-column",
                "category_path",
                "--checkpoint",
                str(ck),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads(out.read_text())["metrics"]
    assert m["unique_after_disambiguation"] == 1.0 and m["ami_l1_items"] == len(rows)
    assert np.isfinite(m["ami_l1"])
    # without --self-supervised the judgments are required
    assert main(["train", *common, "--out", str(tmp_path / "x")]) == 2
