"""Judged hard negatives: items the raters graded below the threshold for a query join its batch
as extra in-batch negatives (`IndexerConfig.judged_negatives`)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.indexer_toy import load_toy, tiny_config
from training.data import Judgments
from training.encoder import minilm_path
from training.indexer.config import IndexerConfig
from training.indexer.model import SemanticIndexer
from training.indexer.sampling import Batch, PairData, make_batches
from training.indexer.states import compute_states
from training.indexer.trainer import Trainer


def _judgments(rows: list[tuple[str, int, float]]) -> Judgments:
    queries, items, grades = zip(*rows, strict=True)
    return Judgments(list(queries), np.array(items), np.array(grades, dtype=float))


def test_negatives_are_the_pairs_below_the_threshold_of_queries_with_a_positive():
    j = _judgments(
        [
            ("Drill", 0, 3.0),
            ("drill", 1, 1.0),  # the same query, normalised: one query id
            ("drill", 2, 2.33),
            ("drill", 2, 2.33),  # a repeated pair counts once
            ("DRILL", 0, 1.0),  # another spelling graded a positive pair low: still no negative
            ("paint", 4, 1.0),  # no positive: never in a batch, so no negatives either
        ]
    )
    drill = 0
    assert PairData.from_judgments(j, 2.5, 2.5).negatives == {drill: [1, 2]}
    assert PairData.from_judgments(j, 2.5, 2.5).negative_pairs == 2
    assert PairData.from_judgments(j, 2.5, 2.0).negatives == {drill: [1]}
    assert PairData.from_judgments(j, 2.5).negatives == {}


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    cat, j = load_toy(tmp_path_factory.mktemp("negatives"))
    return cat, PairData.from_judgments(j, 2.5, 2.5)


def test_batches_bring_one_judged_negative_per_query(toy_pairs):
    _, pairs = toy_pairs
    assert pairs.negatives, "the toy set has irrelevant judged pairs"
    batches = make_batches(pairs, 8, 2, random.Random(0), negatives_per_query=1)
    extra = 0
    for b in batches:
        assert len(set(b.items)) == len(b.items)
        added = b.items[len(b.items) - b.judged :]
        # every added item is a judged negative of some query of the batch
        assert all(any(i in pairs.negatives.get(q, ()) for q in b.queries) for i in added)
        # a query lacks one only when all its negatives are already in the batch
        for q in b.queries:
            negs = pairs.negatives.get(q, [])
            assert not negs or any(i in b.items for i in negs)
        # the positive matrix covers the added items too (one may be another query's positive)
        expect = [[(q, i) in pairs.positives for i in b.items] for q in b.queries]
        assert np.array_equal(b.positive, np.array(expect, dtype=bool))
        extra += len(added)
    assert extra > 0


def test_without_judged_negatives_the_batches_are_unchanged(toy_pairs):
    _, pairs = toy_pairs
    plain = make_batches(pairs, 8, 2, random.Random(3))
    off = make_batches(pairs, 8, 2, random.Random(3), negatives_per_query=0)
    assert [(b.items, b.queries) for b in plain] == [(b.items, b.queries) for b in off]


def test_judged_negatives_enter_both_contrastive_terms(toy_pairs):
    """The same batch with and without its judged negatives: the query side of both InfoNCE
    terms has more to tell apart with them, so both are larger; with scope "dense" only the
    encoder's term sees them."""
    from transformers import AutoTokenizer

    cat, pairs = toy_pairs
    cfg = tiny_config()
    torch.manual_seed(0)
    model = SemanticIndexer(cfg)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    items = compute_states(model, tok, cat.texts, cfg.max_item_tokens, progress=False)
    texts = compute_states(model, tok, pairs.query_texts, cfg.max_query_tokens, progress=False)
    trainer = Trainer(model, items, texts, pairs)
    model.eval()  # no dropout: the two losses differ only by the negatives
    # four queries with their first positive item, then judged negatives that are nobody's
    # positive here, so they can only add negatives
    queries = sorted(pairs.negatives)[:4]
    first = {q: min(i for p, i in pairs.positives if p == q) for q in queries}
    sampled = list(dict.fromkeys(first[q] for q in queries))
    added = [
        i
        for q in queries
        for i in pairs.negatives[q][:1]
        if i not in sampled and not any((p, i) in pairs.positives for p in queries)
    ]
    assert added, "the toy set has judged negatives outside the queries' positives"

    def batch(items: list[int]) -> Batch:
        positive = np.array([[(q, i) in pairs.positives for i in items] for q in queries])
        query_item = [sampled.index(first[q]) for q in queries]
        return Batch(items, queries, query_item, positive, judged=len(items) - len(sampled))

    full, bare = batch(sampled + added), batch(sampled)
    with torch.no_grad():
        _, with_negatives = trainer.loss(full, 0, main=False)
        _, without = trainer.loss(bare, 0, main=False)
        cfg.judged_negatives_scope = "dense"
        _, dense_only = trainer.loss(full, 0, main=False)
    assert with_negatives["nce"] > without["nce"]
    assert with_negatives["enc_nce"] > without["enc_nce"]
    # scope "dense": the decoder's InfoNCE does not see them, the encoder's does
    assert dense_only["nce"] == pytest.approx(without["nce"], rel=1e-6)
    assert dense_only["enc_nce"] == pytest.approx(with_negatives["enc_nce"], rel=1e-6)


def test_config_checks_judged_negatives():
    with pytest.raises(ValueError, match="judged_negatives"):
        IndexerConfig(judged_negatives=-1)
    with pytest.raises(ValueError, match="negative_threshold"):
        IndexerConfig(negative_threshold=3.0)
    with pytest.raises(ValueError, match="judged_negatives_scope"):
        IndexerConfig(judged_negatives_scope="decoder")
    with pytest.raises(ValueError, match="needs encoder_nce_weight"):
        IndexerConfig(judged_negatives_scope="dense", encoder_nce_weight=0.0)
    IndexerConfig(judged_negatives=0, judged_negatives_scope="dense", encoder_nce_weight=0.0)


def test_checkpoints_from_before_judged_negatives_load_without_them(tmp_path):
    """`--resume` of an older run must go on as it was trained: no judged negatives."""
    import json

    from transformers import AutoTokenizer

    from training.indexer.checkpoint import load_checkpoint, save_checkpoint

    model = SemanticIndexer(tiny_config(judged_negatives=2))
    tok = AutoTokenizer.from_pretrained(minilm_path())
    codes = np.zeros((3, 2), dtype=np.int64)
    save_checkpoint(tmp_path / "ck", model, tok, codes, {"base_fingerprint": "x"})
    assert load_checkpoint(tmp_path / "ck")[0].cfg.judged_negatives == 2
    doc = json.loads((tmp_path / "ck" / "indexer.json").read_text())
    del doc["indexer"]["judged_negatives"]
    (tmp_path / "ck" / "indexer.json").write_text(json.dumps(doc))
    assert load_checkpoint(tmp_path / "ck")[0].cfg.judged_negatives == 0
