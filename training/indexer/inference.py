"""Using a trained indexer: item codes, query beams over the catalog trie, representations."""

from __future__ import annotations

import numpy as np
import torch

from training.indexer.model import SemanticIndexer
from training.indexer.states import TokenStates
from training.indexer.trainer import encoded_batches
from training.sids import Trie


def greedy_codes(
    model: SemanticIndexer, states: TokenStates, levels: int | None = None, batch_size: int = 256
) -> np.ndarray:
    """(N, levels) greedy codes: at each level the best code given the text's own prefix
    (how items get their SIDs). The encoder runs once per batch; the decoder once per level."""
    return codes_and_dense(model, states, levels, batch_size)[0]


@torch.no_grad()
def codes_and_dense(
    model: SemanticIndexer, states: TokenStates, levels: int | None = None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(greedy codes (N, levels), dense vectors (N, D) as `dense_representations`) from one
    encoder pass."""
    model.eval()
    levels = model.cfg.levels if levels is None else levels
    out = np.zeros((len(states), levels), dtype=np.int64)
    dense = np.zeros((len(states), model.dim), dtype=np.float32)
    for idx, memory, mask in encoded_batches(model, states, batch_size, "greedy codes"):
        prefix = torch.zeros(len(idx), 0, dtype=torch.long, device=memory.device)
        for level in range(levels):
            reps = model.decode(memory, mask, prefix)[:, level]
            best = model.code_logits(reps, level).argmax(-1)
            prefix = torch.cat([prefix, best[:, None]], dim=1)
        out[idx] = prefix.cpu().numpy()
        dense[idx] = model.dense(memory, mask).cpu().numpy()
    return out, dense


@torch.no_grad()
def dense_representations(
    model: SemanticIndexer, states: TokenStates, batch_size: int = 256
) -> np.ndarray:
    """(N, D) the indexer's own dense vectors: unit-norm pooled outputs of its fine-tuned
    encoder (`SemanticIndexer.dense`)."""
    model.eval()
    out = np.zeros((len(states), model.dim), dtype=np.float32)
    for idx, memory, mask in encoded_batches(model, states, batch_size, "dense"):
        out[idx] = model.dense(memory, mask).cpu().numpy()
    return out


@torch.no_grad()
def query_beams(
    model: SemanticIndexer, states: TokenStates, trie: Trie, beam: int, batch_size: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: (paths (K, L), log-probabilities (K,)), K <= beam, best first.

    Scores are summed log-softmax over the whole codebook with codes absent from the trie
    after the prefix masked out (the convention of `generate(prefix_allowed_tokens_fn=...)`).
    Ties go to the lower (beam, code) index, so results are deterministic.
    """
    model.eval()
    k, levels = model.cfg.codebook_size, model.cfg.levels
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for idx, memory, mask in encoded_batches(model, states, batch_size, "query beams"):
        b = len(idx)
        paths = [[()] for _ in range(b)]  # per query: list of prefixes
        scores = [np.zeros(1) for _ in range(b)]
        for level in range(levels):
            rows = [(q, j) for q in range(b) for j in range(len(paths[q]))]
            prefix = torch.tensor([paths[q][j] for q, j in rows], dtype=torch.long)
            prefix = prefix.reshape(len(rows), level)
            sel = torch.tensor([q for q, _ in rows], device=memory.device)
            reps = model.decode(memory[sel], mask[sel], prefix)[:, level]
            logp = torch.log_softmax(model.code_logits(reps, level), -1).cpu().numpy()
            allowed = np.full((len(rows), k), -np.inf)
            for r, (q, j) in enumerate(rows):
                kids = trie.children(paths[q][j])
                allowed[r, kids] = 0.0
            total = logp + allowed
            offset = 0
            for q in range(b):
                n = len(paths[q])
                cand = (scores[q][:, None] + total[offset : offset + n]).ravel()
                offset += n
                finite = np.flatnonzero(np.isfinite(cand))
                order = finite[np.lexsort((finite, -cand[finite]))][:beam]
                paths[q] = [paths[q][i // k] + (int(i % k),) for i in order]
                scores[q] = cand[order]
        for i, p, s in zip(idx, paths, scores, strict=True):
            results[i] = (np.array(p, dtype=np.int64).reshape(len(p), levels), s)
    return [results[i] for i in range(len(states))]
