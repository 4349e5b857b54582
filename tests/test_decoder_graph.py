"""The exported decoder graphs (`export.graphs.DecoderFirstGraph` for level 0, then
`DecoderStepGraph`), run in PyTorch, against the model's own full decoder: the cross-attention
keys and values computed once, the per-(level, code) tables and the key/value cache must give
the same logits at every level, for more than one decoder layer and both start inputs."""

from __future__ import annotations

import pytest
import torch

from export.graphs import DecoderFirstGraph, DecoderStepGraph
from tests.indexer_toy import tiny_config
from training.indexer.model import SemanticIndexer

LEVELS, BEAMS = 3, 4


@pytest.mark.parametrize("bos_input", ["pooled", "learned"])
def test_cached_step_matches_full_decode_at_every_level(bos_input: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(
        levels=LEVELS, epochs_per_level=[1.0] * LEVELS, decoder_layers=2, bos_input=bos_input
    )
    model = SemanticIndexer(cfg).eval()
    k, d = cfg.codebook_size, model.dim
    with torch.no_grad():
        model.codebooks.copy_(torch.randn_like(model.codebooks))
        model.bos.copy_(torch.randn_like(model.bos))
        # nn.TransformerDecoder starts every layer as a copy of one: make them differ, or a
        # graph that mixed the layers up would still pass
        for param in model.decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    memory = torch.randn(2, 5, d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    prefix = torch.randint(0, k, (2, BEAMS, LEVELS))
    first, step = DecoderFirstGraph(model), DecoderStepGraph(model)
    rows = prefix.reshape(-1, LEVELS)
    with torch.no_grad():
        logits, past, cross_kv = first(memory, mask)
        heads = cfg.decoder_heads
        assert cross_kv.shape == (2, 2 * cfg.decoder_layers, heads, 5, d // heads)
        for level in range(LEVELS):
            if level:
                logits, past = step(cross_kv, mask, prefix, torch.full((2,), level), past)
            else:  # the first step has one beam per text: give each beam its text's cache
                past = past.repeat_interleave(BEAMS, 1)
                logits = logits.repeat_interleave(BEAMS, 1)
            reps = model.decode(
                memory.repeat_interleave(BEAMS, 0),
                mask.repeat_interleave(BEAMS, 0),
                rows[:, :level],
            )
            expected = model.code_logits(reps[:, level], level)
            assert past.shape == (2, BEAMS, 2 * cfg.decoder_layers, level + 1, d)
            torch.testing.assert_close(logits.reshape(-1, k), expected, rtol=0, atol=1e-4)
            # a wrong code table would still give the right shapes: the codes must matter
            if level:
                assert not torch.allclose(logits[:, 0], logits[:, 1], atol=1e-3)


def test_exported_step_gives_a_text_the_same_bits_alone_and_in_a_batch(tiny_export) -> None:
    """The gateway micro-batches queries: a query's SIDs and log-probabilities must not depend
    on what it was batched with, at level 0 (one beam per text) as at later levels."""
    import numpy as np

    from service.bundle import load_bundle
    from service.onnx_model import OnnxIndexer

    bundle = load_bundle(tiny_export["bundle"])
    model = OnnxIndexer(bundle.graph_paths, threads=1)
    rng = np.random.default_rng(0)
    texts, seq, hidden = 3, 7, model.hidden
    memory = rng.standard_normal((texts, seq, hidden)).astype(np.float32)
    mask = np.ones((texts, seq), dtype=np.int64)
    mask[1, 4:] = 0
    first = model.decode_first(memory, mask)
    for q in range(texts):
        alone = model.decode_first(memory[q : q + 1], mask[q : q + 1])
        for a, b in zip(alone, first, strict=True):
            np.testing.assert_array_equal(a[0], b[q])
    cross_kv = first[2]
    k = bundle.codebook_sizes[0]
    for level in range(1, len(bundle.codebook_sizes)):
        prefix = rng.integers(0, k, (texts, BEAMS, len(bundle.codebook_sizes)))
        past = rng.standard_normal((texts, BEAMS, model.cache_entries, level, hidden))
        past = past.astype(np.float32)
        batched = model.decode_step(cross_kv, mask, prefix, np.full(texts, level), past)
        for q in range(texts):
            alone = model.decode_step(
                cross_kv[q : q + 1],
                mask[q : q + 1],
                prefix[q : q + 1],
                np.full(1, level),
                past[q : q + 1],
            )
            for a, b in zip(alone, batched, strict=True):
                np.testing.assert_array_equal(a[0], b[q])


def test_a_one_level_model_exports_and_decodes(tmp_path) -> None:
    """One semantic level: the first-step graph does all the work, and the step graph (never
    run) must still export, so that the bundle is complete."""
    import numpy as np

    from export.graphs import export_graphs
    from service.onnx_model import OnnxIndexer, greedy_steps

    torch.manual_seed(0)
    model = SemanticIndexer(tiny_config(levels=1, epochs_per_level=[1.0])).eval()
    with torch.no_grad():
        model.codebooks.copy_(torch.randn_like(model.codebooks))
    onnx = OnnxIndexer(export_graphs(model, tmp_path), threads=1)
    ids = np.array([[101, 2023, 2003, 1037, 102], [101, 7987, 102, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    codes, (logits,) = greedy_steps(onnx, ids, mask, levels=1)
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        memory = model.encode(model.lower_states(t_ids, t_mask), t_mask)
        want = model.code_logits(model.decode(memory, t_mask, torch.zeros(2, 0).long())[:, 0], 0)
    np.testing.assert_allclose(logits, want.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(codes[:, 0], want.argmax(-1).numpy())
