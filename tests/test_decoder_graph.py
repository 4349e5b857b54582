"""The exported decoder step (`export.graphs.DecoderStepGraph`), run in PyTorch, against the
model's own full decoder: its per-(level, code) tables and key/value cache must give the same
logits at every level, for more than one decoder layer and both start inputs."""

from __future__ import annotations

import pytest
import torch

from export.graphs import DecoderStepGraph
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
    memory = torch.randn(2, 5, d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    prefix = torch.randint(0, k, (2, BEAMS, LEVELS))
    graph = DecoderStepGraph(model)
    past = torch.zeros(2, BEAMS, 2 * cfg.decoder_layers, 0, d)
    rows = prefix.reshape(-1, LEVELS)
    with torch.no_grad():
        for level in range(LEVELS):
            logits, past = graph(memory, mask, prefix, torch.full((2,), level), past)
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
