"""ONNX Runtime against PyTorch on real texts: the check `sidserve export` runs before it
writes a bundle, and that the tests run on a tiny model.

Four checks, all required: logits (encoder → every decoder level along the text's own greedy
path) within `LOGIT_TOLERANCE`; identical greedy item SIDs; item dense vectors within
`VECTOR_TOLERANCE`; the same top-`beam` trie-constrained query beams, where two paths whose
scores differ by less than float noise may trade places (`same_beams`). The PyTorch side
tokenises with the checkpoint's `transformers` tokenizer and the ONNX side with the bundle's
`tokenizers` file, so tokenisation is covered too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.onnx_model import OnnxIndexer, greedy_steps
from service.query_beams import search_beams
from service.tokenizer import BundleTokenizer
from service.trie import CompactTrie
from training.indexer.inference import codes_and_dense, query_beams
from training.indexer.model import SemanticIndexer
from training.indexer.states import compute_states
from training.sids import Trie

LOGIT_TOLERANCE = 1e-4
VECTOR_TOLERANCE = 1e-4


class ParityError(ValueError):
    """The exported graphs do not reproduce the checkpoint: no bundle is written."""


@dataclass
class ParityReport:
    max_logit_diff: float = 0.0
    max_vector_diff: float = 0.0
    items_checked: int = 0
    items_identical: int = 0
    queries_checked: int = 0
    queries_identical: int = 0
    queries_tied: int = 0  # not identical, but only near-tied paths traded places
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.max_logit_diff <= LOGIT_TOLERANCE
            and self.max_vector_diff <= VECTOR_TOLERANCE
            and self.items_identical == self.items_checked
            and self.queries_identical + self.queries_tied == self.queries_checked
        )

    def summary(self) -> dict[str, Any]:
        return {
            "max_abs_logit_diff": self.max_logit_diff,
            "logit_tolerance": LOGIT_TOLERANCE,
            "max_abs_vector_diff": self.max_vector_diff,
            "vector_tolerance": VECTOR_TOLERANCE,
            "items_identical": f"{self.items_identical}/{self.items_checked}",
            "query_beams_identical": f"{self.queries_identical}/{self.queries_checked}",
            "query_beams_tied": self.queries_tied,
        }


def beam_score_tolerance(levels: int) -> float:
    """How far a path's score (summed log-softmax) may move when every logit moves by at most
    `LOGIT_TOLERANCE`: each level's log-softmax by at most twice that."""
    return 2 * levels * LOGIT_TOLERANCE


def same_beams(
    want: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], tolerance: float
) -> bool:
    """Whether two top-k lists of (paths (k, L), scores (k,)) agree up to float noise: the
    same number of paths; rank by rank scores within `tolerance`; a path in both lists has
    the same score in both; and a path in only one list scores within `tolerance` of the
    other list's last, so it only traded places with a near-tied path at the cut-off."""
    (w_paths, w_scores), (g_paths, g_scores) = want, got
    if len(w_paths) != len(g_paths):
        return False
    if len(w_paths) == 0:
        return True
    if np.abs(np.asarray(w_scores) - np.asarray(g_scores)).max() > tolerance:
        return False
    w = {tuple(p): float(s) for p, s in zip(w_paths.tolist(), w_scores, strict=True)}
    g = {tuple(p): float(s) for p, s in zip(g_paths.tolist(), g_scores, strict=True)}
    for mine, other in ((w, g), (g, w)):
        last = min(other.values())
        for path, score in mine.items():
            ref = other.get(path, last)
            if abs(score - ref) > tolerance:
                return False
    return True


@torch.no_grad()
def logit_diff(
    model: SemanticIndexer,
    hf_tokenizer,
    onnx: OnnxIndexer,
    tokenizer: BundleTokenizer,
    texts: list[str],
    max_length: int,
) -> float:
    """Max |logit difference| over every level along each text's greedy (ONNX) path."""
    levels = model.cfg.levels
    ids, mask = tokenizer.encode(texts, max_length)
    enc = hf_tokenizer(texts, padding=True, truncation=True, max_length=max_length)
    if not np.array_equal(np.asarray(enc["input_ids"]), ids):
        raise ParityError("tokenizer.json and the checkpoint's tokenizer give different ids")
    codes, steps = greedy_steps(onnx, ids, mask, levels)
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    t_memory = model.encode(model.lower_states(t_ids, t_mask), t_mask)
    worst = 0.0
    for level, got in enumerate(steps):
        reps = model.decode(t_memory, t_mask, torch.from_numpy(codes[:, :level]))[:, level]
        want = model.code_logits(reps, level).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def check_parity(
    model: SemanticIndexer,
    hf_tokenizer,
    onnx: OnnxIndexer,
    tokenizer: BundleTokenizer,
    item_texts: list[str],
    onnx_item_codes: np.ndarray,
    onnx_item_vectors: np.ndarray,
    query_texts: list[str],
    catalog_codes: np.ndarray,
    beam: int = 10,
) -> ParityReport:
    """`onnx_item_codes` and `onnx_item_vectors` are the ONNX codes and dense vectors of
    `item_texts`; `catalog_codes` (N, L) make the trie the beams are constrained to."""
    cfg = model.cfg
    report = ParityReport()
    few = min(64, len(item_texts)), min(64, len(query_texts))
    report.max_logit_diff = max(
        logit_diff(model, hf_tokenizer, onnx, tokenizer, item_texts[: few[0]], cfg.max_item_tokens),
        logit_diff(
            model, hf_tokenizer, onnx, tokenizer, query_texts[: few[1]], cfg.max_query_tokens
        ),
    )
    states = compute_states(
        model, hf_tokenizer, item_texts, cfg.max_item_tokens, desc="parity items", progress=False
    )
    torch_codes, torch_vectors = codes_and_dense(model, states)
    if len(torch_vectors):
        report.max_vector_diff = float(np.abs(torch_vectors - onnx_item_vectors).max())
    same = (torch_codes == onnx_item_codes).all(axis=1)
    report.items_checked, report.items_identical = len(same), int(same.sum())
    report.failures += [f"item {item_texts[i]!r}" for i in np.flatnonzero(~same)[:5]]

    qstates = compute_states(
        model,
        hf_tokenizer,
        query_texts,
        cfg.max_query_tokens,
        desc="parity queries",
        progress=False,
    )
    want = query_beams(model, qstates, Trie(catalog_codes), beam)
    trie = CompactTrie.from_codes(catalog_codes, [cfg.codebook_size] * cfg.levels)
    got = search_beams(onnx, tokenizer, query_texts, trie, beam)
    report.queries_checked = len(query_texts)
    tolerance = beam_score_tolerance(cfg.levels)
    for text, w, g in zip(query_texts, want, got, strict=True):
        if np.array_equal(w[0], g[0]):
            report.queries_identical += 1
        elif same_beams(w, g, tolerance):
            report.queries_tied += 1
        elif len(report.failures) < 10:
            report.failures.append(f"query {text!r}")
    return report
