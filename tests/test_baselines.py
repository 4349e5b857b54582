from __future__ import annotations

import random

import numpy as np

from training.baselines.bm25 import BM25Retriever
from training.baselines.dense_ft import FinetuneConfig, finetune, unique_batches
from training.baselines.hkmeans import HierarchicalKMeans
from training.baselines.rqvae import RQVAE, RQVAEConfig
from training.sids import Trie

# a quantiser small enough for 120 toy vectors of 16 dimensions
TINY_QUANTISER = dict(
    in_dim=16, hidden=[32], latent=8, levels=2, codebook_size=4, batch_size=32, lr=3e-3
)


def _blobs(seed: int = 0, per: int = 30, centres: int = 4, dim: int = 16):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)) * 5
    x = np.concatenate([m + rng.normal(size=(per, dim)) * 0.3 for m in means])
    return x.astype(np.float32), np.repeat(np.arange(centres), per)


def test_bm25_ranks_the_matching_title_first_and_skips_zero_scores():
    bm = BM25Retriever(["cordless drill", "latex paint", "kitchen faucet chrome"])
    ranked = bm.rank(["paint", "chrome faucet", "zebra"], k=10)
    assert ranked[0].tolist() == [1]
    assert ranked[1].tolist() == [2]
    assert ranked[2].tolist() == []


def test_hkmeans_recovers_clusters_and_query_paths_exist():
    x, truth = _blobs()
    hk = HierarchicalKMeans(levels=2, codebook_size=4, seed=0)
    codes = hk.fit(x)
    # level 1 is a relabelling of the four blobs
    assert len({(a, b) for a, b in zip(codes[:, 0], truth, strict=True)}) == 4
    existing = {tuple(r) for r in codes.tolist()}
    paths, scores = hk.query_paths(x[0], beam=5)
    assert len(paths) == 5 and all(tuple(p) in existing for p in paths.tolist())
    assert paths[0, 0] == codes[0, 0]  # an item's own cluster is its best level-1 code
    assert np.all(np.diff(scores) <= 0)


def test_rqvae_trains_saves_and_reloads_identically(tmp_path):
    x, truth = _blobs(seed=1)
    cfg = RQVAEConfig(**TINY_QUANTISER, epochs=30)
    model = RQVAE(cfg)
    info = model.fit(x)
    codes = model.codes(x)
    assert codes.shape == (120, 2) and codes.max() < 4
    # well separated blobs: each blob maps to one level-1 code, different blobs mostly apart
    purity = np.mean([np.bincount(codes[truth == c, 0]).max() / 30 for c in range(4)])
    assert purity > 0.9
    assert np.isfinite(info["recon_loss"])
    model.save(tmp_path / "rq")
    again = RQVAE.load(tmp_path / "rq")
    assert np.array_equal(again.codes(x), codes)
    again.trie = Trie(codes)
    paths, _ = again.query_paths(x[0], beam=3)
    assert tuple(paths[0]) in {tuple(r) for r in codes.tolist()}


def test_unique_batches_have_no_repeated_item_or_query():
    pairs = [("drill", 1), ("Drill ", 2), ("saw", 1), ("paint", 3), ("saw", 4), ("tape", 5)]
    batches = unique_batches(pairs, batch_size=3, rng=random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
    for b in batches:
        assert len(b) <= 3
        assert len({pairs[i][1] for i in b}) == len(b)
        assert len({pairs[i][0].strip().lower() for i in b}) == len(b)


def test_finetune_lowers_the_in_batch_loss(tmp_path):
    texts = [
        "Cordless Drill 20V",
        "Latex Paint White",
        "Kitchen Faucet Chrome",
        "Toilet Flapper Kit",
        "Circular Saw Corded",
        "Wood Stain Cedar",
    ]
    pairs = [
        ("battery drill", 0),
        ("white wall paint", 1),
        ("sink tap", 2),
        ("toilet repair", 3),
        ("saw blade cutter", 4),
        ("deck stain", 5),
    ]
    cfg = FinetuneConfig(epochs=8, batch_size=6, lr=1e-4, warmup=0.0)
    losses = finetune(pairs, texts, tmp_path / "ft", cfg)
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < losses[0]
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert (tmp_path / "ft" / "finetune.json").is_file()


def test_dsirm_contrastive_rqvae_aligns_queries_with_their_items():
    from training.baselines.rqvae import dsirm_config

    x, truth = _blobs(seed=2)
    rng = np.random.default_rng(0)
    # a query sits near its item, but shifted: the quantiser must learn to bridge them
    shift = rng.normal(size=x.shape[1]).astype(np.float32)
    queries = x + shift + rng.normal(size=x.shape).astype(np.float32) * 0.3
    pairs = np.stack([np.arange(len(x)), np.arange(len(x))], axis=1)
    cfg = dsirm_config(**TINY_QUANTISER, epochs=40, pair_batch=32)
    model = RQVAE(cfg)
    info = model.fit(x, queries, pairs)
    assert np.isfinite(info["nce_loss"]) and info["nce_loss"] < np.log(32)
    items, qs = model.codes(x), model.codes(queries)
    assert (items[:, 0] == qs[:, 0]).mean() > 0.8
    with np.testing.assert_raises(ValueError):
        RQVAE(cfg).fit(x)


def test_rqvae_levels_quantise_the_residual_and_gradients_pass_straight_through():
    import torch

    from training.baselines.rqvae import dsirm_config

    model = RQVAE(RQVAEConfig(**TINY_QUANTISER))
    x = torch.from_numpy(_blobs()[0][:16])
    z = model.module.encoder(x)
    quantised, codes, residuals = model.module.quantise(z)
    books = model.module.codebooks
    # level l + 1 quantises what level l left: the residual minus its chosen code vector
    torch.testing.assert_close(residuals[0], z)
    torch.testing.assert_close(residuals[1], z - books[0][codes[:, 0]])
    torch.testing.assert_close(quantised, books[0][codes[:, 0]] + books[1][codes[:, 1]])
    # the reconstruction's gradient reaches the encoder through the quantiser
    # (straight-through estimator), not only through the commitment term
    recon, _, _, _ = model.module(x)
    recon.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.module.encoder.parameters()
    )
    # DSIRM's weights: InfoNCE 1.0, commitment 1.0, reconstruction 0.1
    cfg = dsirm_config()
    assert (cfg.nce_weight, cfg.commit_weight, cfg.recon_weight) == (1.0, 1.0, 0.1)


def test_dense_ft_loss_is_symmetric_in_batch_infonce():
    import torch

    from training.baselines.dense_ft import in_batch_loss

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    d = torch.nn.functional.normalize(q + 0.3 * torch.randn(6, 8), dim=-1)
    # queries -> items and items -> queries weigh the same: swapping the sides changes nothing
    torch.testing.assert_close(in_batch_loss(q, d, 0.05), in_batch_loss(d, q, 0.05))
    # row i of q and of d are the pair: mismatching the rows costs
    assert in_batch_loss(q, d, 0.05) < in_batch_loss(q, d.roll(1, dims=0), 0.05)
