"""HF `generate` beam search on the wrapped indexer against the gateway's search on the bundle's
ONNX graphs and the offline PyTorch reference: the baseline of the serving benchmark must give
the same top-10 as what it is compared with, or the speed ratio means nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.hf_generate import AllowedTokens, hf_beams, wrap_indexer

BEAM = 10


@pytest.fixture(scope="module")
def setup(tiny_export: dict) -> dict:
    from service.bundle import load_bundle
    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer
    from training.data import load_catalog
    from training.indexer.checkpoint import load_checkpoint

    indexer, hf_tokenizer, _, _ = load_checkpoint(tiny_export["checkpoint"])
    before = {k: v.clone() for k, v in indexer.state_dict().items()}
    model = wrap_indexer(indexer)
    for key, value in indexer.state_dict().items():  # post_init must not re-initialise
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    bundle = load_bundle(tiny_export["bundle"])
    catalog = load_catalog(tiny_export["catalog"])
    texts = [*catalog.texts[::4], "cordless drill", "kitchen faucet", "pvc pipe", "led bulb"]
    return {
        "model": model,
        "hf_tokenizer": hf_tokenizer,
        "onnx": OnnxIndexer(bundle.graph_paths),
        "tokenizer": BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer),
        "bundle": bundle,
        "texts": texts[:20],
    }


def trie_paths(name: str, bundle) -> np.ndarray:
    """Every path; the catalog's own (a random model puts all items on very few paths, so
    fewer than `BEAM` exist and `generate` pads with filler beams); a sparse random subset."""
    every = np.array([(a, b) for a in range(8) for b in range(8)], dtype=np.int64)
    if name == "every":
        return every
    if name == "catalog":
        return bundle.semantic_sids
    rng = np.random.default_rng(0)
    return every[np.sort(rng.choice(len(every), 20, replace=False))]


def test_wrapper_scores_are_the_indexers_log_softmax(setup):
    model, tok = setup["model"], setup["hf_tokenizer"]
    indexer = model.indexer
    enc = tok(setup["texts"][:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        encoded = model.encoder(enc["input_ids"], enc["attention_mask"])
        memory = encoded.last_hidden_state
        prefix = torch.tensor([[2], [5], [7]])
        bos = model.config.decoder_start_token_id
        k = model.config.codebook_size
        for level in range(indexer.cfg.levels):
            tokens = prefix[:, :level] + k * torch.arange(level)  # token = level * K + code
            dec = torch.cat([torch.full((3, 1), bos), tokens], dim=1)
            out = model(decoder_input_ids=dec, encoder_outputs=encoded, **enc).logits[:, -1]
            reps = indexer.decode(memory, enc["attention_mask"], prefix[:, :level])[:, level]
            want = torch.log_softmax(indexer.code_logits(reps, level), -1)
            got = torch.log_softmax(out, -1)
            torch.testing.assert_close(got[:, level * k : (level + 1) * k], want)
            outside = torch.cat([got[:, : level * k], got[:, (level + 1) * k :]], dim=1)
            assert torch.isneginf(outside).all()


@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "cache"])
@pytest.mark.parametrize("trie_name", ["every", "catalog", "sparse"])
def test_generate_matches_gateway_and_reference(setup, trie_name, use_cache):
    from service.query_beams import search_beams
    from service.trie import CompactTrie
    from training.indexer.inference import query_beams
    from training.indexer.states import compute_states
    from training.sids import Trie

    model, texts, bundle = setup["model"], setup["texts"], setup["bundle"]
    paths = trie_paths(trie_name, bundle)
    trie = CompactTrie.from_codes(paths, bundle.codebook_sizes)
    gateway = search_beams(setup["onnx"], setup["tokenizer"], texts, trie, BEAM)
    states = compute_states(
        model.indexer,
        setup["hf_tokenizer"],
        texts,
        model.indexer.cfg.max_query_tokens,
        progress=False,
    )
    reference = query_beams(model.indexer, states, Trie(paths), BEAM)
    allowed = AllowedTokens.from_paths(paths, model.config.codebook_size, model.config.eos_token_id)
    got = hf_beams(
        model, setup["hf_tokenizer"], texts, paths, BEAM, 8, allowed=allowed, use_cache=use_cache
    )
    n_paths = len(np.unique(paths, axis=0))
    assert len(got) == len(texts)
    for (g_paths, g_scores), (w_paths, w_scores), (r_paths, r_scores) in zip(
        got, gateway, reference, strict=True
    ):
        assert len(g_paths) == min(BEAM, n_paths)
        np.testing.assert_array_equal(g_paths, w_paths)
        np.testing.assert_array_equal(g_paths, r_paths)
        np.testing.assert_allclose(g_scores, w_scores, rtol=0, atol=1e-4)
        np.testing.assert_allclose(g_scores, r_scores, rtol=0, atol=1e-4)
        assert all(tuple(p) in {tuple(r) for r in paths.tolist()} for p in g_paths.tolist())


def test_default_allowed_table_and_batch_size_do_not_change_results(setup):
    model, tok, texts = setup["model"], setup["hf_tokenizer"], setup["texts"][:5]
    paths = trie_paths("sparse", setup["bundle"])
    singles = hf_beams(model, tok, texts, paths, BEAM, batch_size=1)
    batched = hf_beams(model, tok, texts, paths, BEAM, batch_size=5)
    for (a_paths, a_scores), (b_paths, b_scores) in zip(singles, batched, strict=True):
        np.testing.assert_array_equal(a_paths, b_paths)
        np.testing.assert_allclose(a_scores, b_scores, rtol=0, atol=1e-5)


def test_cached_generate_runs_one_position_per_step(setup, monkeypatch):
    """With the cache, each decoder call gets only the newest token of every row, and the
    level-0 call alone projects the encoder states (later levels read them from the cache)."""
    model, tok, texts = setup["model"], setup["hf_tokenizer"], setup["texts"][:4]
    calls: list[tuple[str, tuple[int, ...]]] = []
    first, later = model.first_step.forward, model.later_step.forward

    def spy_first(memory, mask):
        calls.append(("first", tuple(memory.shape)))
        return first(memory, mask)

    def spy_later(cross_kv, mask, prefix, level, past):
        calls.append(("later", tuple(past.shape)))
        return later(cross_kv, mask, prefix, level, past)

    monkeypatch.setattr(model.first_step, "forward", spy_first)
    monkeypatch.setattr(model.later_step, "forward", spy_later)
    paths = trie_paths("every", setup["bundle"])
    hf_beams(model, tok, texts, paths, BEAM, batch_size=4, use_cache=True)
    levels = model.config.levels
    assert [name for name, _ in calls] == ["first"] + ["later"] * (levels - 1)
    assert calls[0][1][0] == 4 * BEAM  # generate repeats each text once per beam
    for level, (_, past) in enumerate(calls[1:], start=1):
        rows, width, entries, positions, _ = past
        assert (rows, width, positions) == (4 * BEAM, 1, level)  # P = the earlier positions
        assert entries == 2 * len(model.indexer.decoder.layers)


def test_cache_keeps_every_layer_apart_with_two_decoder_layers():
    """The cache holds each decoder layer's keys and values as its own cache layer: with two
    layers (a random model, three levels) the cached form must give the uncached one's beams."""
    from benchmarks.hf_generate import beams_for_memory
    from tests.indexer_toy import tiny_config
    from training.indexer.model import SemanticIndexer

    torch.manual_seed(0)
    cfg = tiny_config(levels=3, epochs_per_level=[1.0] * 3, decoder_layers=2)
    indexer = SemanticIndexer(cfg).eval()
    with torch.no_grad():
        indexer.codebooks.copy_(torch.randn_like(indexer.codebooks))
        # nn.TransformerDecoder starts every layer as a copy of one: make them differ, or
        # mixing the layers up would go unnoticed
        for param in indexer.decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model = wrap_indexer(indexer)
    k = cfg.codebook_size
    rng = np.random.default_rng(0)
    paths = np.unique(rng.integers(0, k, size=(60, 3)), axis=0)
    allowed = AllowedTokens.from_paths(paths, k, model.config.eos_token_id)
    memory = torch.randn(3, 5, indexer.dim)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    plain = beams_for_memory(model, memory, mask, allowed, BEAM, use_cache=False)
    cached = beams_for_memory(model, memory, mask, allowed, BEAM, use_cache=True)
    for (p_paths, p_scores), (c_paths, c_scores) in zip(plain, cached, strict=True):
        assert len(p_paths) == BEAM
        np.testing.assert_array_equal(c_paths, p_paths)
        np.testing.assert_allclose(c_scores, p_scores, rtol=0, atol=1e-4)
