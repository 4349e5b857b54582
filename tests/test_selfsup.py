"""Self-supervised (LMIndexer) mode on the toy catalog: no queries, categories for AMI."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from sidserve.cli import main
from tests.conftest import write_csv
from tests.indexer_toy import DEPARTMENTS, tiny_config, toy_rows
from training.encoder import minilm_path
from training.indexer.config import IndexerConfig
from training.indexer.model import SemanticIndexer
from training.indexer.selfsup import SelfSupervisedTrainer, TitleTokens, nearest_neighbours
from training.indexer.states import compute_states


def _toy_trainer(**overrides) -> SelfSupervisedTrainer:
    from transformers import AutoTokenizer

    products, _ = toy_rows()
    texts = [p[1] for p in products]
    cfg = tiny_config(**overrides)
    torch.manual_seed(0)
    model = SemanticIndexer(cfg)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    states = compute_states(model, tok, texts, cfg.max_item_tokens, progress=False)
    return SelfSupervisedTrainer(model, states, TitleTokens.build(tok, texts, cfg.max_item_tokens))


def test_reconstruction_and_contrast_improve_with_training():
    # dropout views: with the default 20 neighbours, nearly half of the 48 toy items would be
    # each item's neighbours (the neighbour views' own training test uses 3)
    t = _toy_trainer(neighbours=0)
    tokens = t.tokens
    # targets index the catalog's own vocabulary; special tokens and padding are -1
    assert tokens.target.max() < len(tokens.vocab) and (tokens.target[:, 0] == -1).all()
    first = t.run_epochs(0, 2.0, main=False, desc="a")
    for _ in range(3):
        last = t.run_epochs(0, 2.0, main=False, desc="b")
    assert last["recon"] < first["recon"] and last["contrast"] < first["contrast"]
    t.init_codebook(0)
    t.run_epochs(0, 2.0, main=True, desc="c")
    stats = t.assign_level(0)
    assert stats["utilisation"] >= 0.5  # 8 codes, 48 items: not collapsed


def test_nearest_neighbours_best_first_never_itself():
    angles = np.array([0.0, 0.1, 0.3, 1.0, 3.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # chunk 2 puts rows 2-3 and 4 in later chunks: their own column is excluded there too
    got = nearest_neighbours(x, 2, chunk=2)
    assert got.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]
    assert nearest_neighbours(x, 10).shape == (5, 4)  # at most every other row


def test_neighbour_views_share_the_prefix_else_fall_back_to_the_item():
    t = _toy_trainer(neighbours=3)
    n = len(t.items)
    assert t.neighbours.shape == (n, 3)
    assert not (t.neighbours == np.arange(n)[:, None]).any()
    idx = np.arange(n)
    first = t.second_views(idx, 0)  # no prefix yet: always one of the 3 neighbours
    assert all(first[i] in t.neighbours[i] for i in idx)
    # level 2: item 0 shares its level-1 code with none, the others with everyone but item 0
    t.state.codes[:, 0] = 1
    t.state.codes[0, 0] = 0
    views = t.second_views(idx, 1)
    assert views[0] == 0
    for i in idx[1:]:
        near = [j for j in t.neighbours[i] if j != 0]
        assert views[i] in near if near else views[i] == i
    dropout = _toy_trainer(neighbours=0)  # dropout views of the item itself
    assert dropout.neighbours is None and (dropout.second_views(idx, 1) == idx).all()
    for bad in ({"neighbours": -1}, {"view_kl_weight": -0.5}):
        with pytest.raises(ValueError, match="neighbours and view_kl_weight"):
            IndexerConfig(**bad)


def test_neighbour_views_train_with_their_code_kl():
    t = _toy_trainer(neighbours=3, view_kl_weight=1.0)
    first = t.run_epochs(0, 2.0, main=False, desc="a")
    assert "view_kl" not in first  # only once the level has a codebook
    for _ in range(3):
        last = t.run_epochs(0, 2.0, main=False, desc="b")
    assert last["contrast"] < first["contrast"]
    t.init_codebook(0)
    main_phase = t.run_epochs(0, 2.0, main=True, desc="c")
    assert np.isfinite(main_phase["view_kl"]) and main_phase["view_kl"] >= 0


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
    # the default encoder_init ("auto") starts the self-supervised mode from MiniLM, at the
    # MiniLM start's rate
    auto = tiny_config(epochs_per_level=[2.0, 2.0], encoder_init="auto", lr=None)
    cfg.write_text(json.dumps(asdict(auto)))
    ck = tmp_path / "ck"
    common = ["--catalog", str(cat), "--id-column", "product_id", "--description-column", ""]
    assert (
        main(["train", "--self-supervised", *common, "--out", str(ck), "--config", str(cfg)]) == 0
    )
    doc = json.loads((ck / "indexer.json").read_text())
    assert doc["mode"] == "self-supervised" and doc["levels_trained"] == 2
    assert doc["indexer"]["encoder_init"] == "minilm" and doc["base_model"] == "all-MiniLM-L6-v2"
    assert doc["indexer"]["lr"] == 5e-5
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
