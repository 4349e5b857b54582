"""Trie-constrained beam search over a batch of queries, one decoder call per level.

Scoring follows the offline reference (`training.indexer.inference.query_beams`): log-softmax
over the whole codebook, then codes absent from the trie after the prefix are masked out (as
HF `generate(prefix_allowed_tokens_fn=...)` does), summed over levels. Per query the `beam`
best candidates are kept, ties to the lower flat index ``beam_index * K + code``, best first;
candidates with a non-finite score are dropped, so a query may end with fewer than `beam` paths.

State is a (batch, slots) grid: slot j of query q is its j-th best beam, dead slots (score
-inf) only ever sit at the end of a query's row, so a slot index is the reference's beam index.
A level with many allowed codes per row (the top of the trie) is ranked on the dense
-inf-masked (batch, slots * K) grid; a sparse one (deep levels: a code or two per row) on the
list of allowed candidates. Both do the same float operations, so they give the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from service.trie import CompactTrie

# step(level, rows (R,) query of each row, prefix (R, levels) codes so far, parents (R,) each
# row's index among the rows of the previous call, None at level 0) -> (R, K_level) logits
Step = Callable[[int, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]

_PENALTY = np.array([-np.inf, 0.0])  # indexed by "is allowed"


@dataclass(frozen=True, eq=False)
class BeamResult:
    """Padded per-query beams: query q's paths are ``paths[q, :counts[q]]``, best first."""

    paths: np.ndarray  # (batch, width, levels) int64; rows past counts[q] are zero
    scores: np.ndarray  # (batch, width) float64 log-probabilities; -inf past counts[q]
    counts: np.ndarray  # (batch,) int64, each <= beam

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """(paths (k, L) int64, log-probabilities (k,) float64) of query q."""
        k = int(self.counts[q])
        return self.paths[q, :k], self.scores[q, :k]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (self[q] for q in range(len(self)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax as float64: ``x - (max + log(sum(exp(x - max))))``.

    Rows with no proper distribution (a NaN or +inf logit, or all -inf) come out all -inf, so
    that nothing is chosen from them.
    """
    x, lse, bad = _normaliser(logits)
    out = x.astype(np.float64)
    out -= lse[:, None]
    out[bad] = -np.inf
    return out


def _normaliser(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits as float32/64 with bad rows zeroed, log-sum-exp (R,) float64, bad rows (R,)).

    The exponentials stay in float32 for float32 logits (~4x cheaper than float64); the sum is
    in float64.
    """
    x = np.asarray(logits)
    if x.dtype not in (np.float32, np.float64):  # e.g. float16: exp in it would be too coarse
        x = x.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    bad = ~np.isfinite(top[:, 0])  # NaN and +inf propagate to the max; so does an all -inf row
    if bad.any():
        x, top = x.copy(), top.copy()
        x[bad], top[bad] = 0, 0
    lse = np.log(np.exp(x - top).sum(axis=1, dtype=np.float64))
    lse += top[:, 0]
    return x, lse, bad


def beam_search(step: Step, trie: CompactTrie, batch: int, beam: int, levels: int) -> BeamResult:
    """Top-`beam` catalog paths of depth `levels` for each of `batch` queries.

    `step` is called exactly once per level, with the live rows of every query together
    (query-major, best beam first), except that a level with no live row is not called.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if not 1 <= levels <= trie.levels:
        raise ValueError(f"levels must be in [1, {trie.levels}], got {levels}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    scores = np.zeros((batch, 1))  # one live slot per query: the empty prefix at the root
    nodes = np.full((batch, 1), trie.root, dtype=np.int64)
    prefix = np.zeros((batch, 1, levels), dtype=np.int64)
    origin = None  # per slot of the grid: its parent's row in the last step call
    # beams are taken by (query, parent slot) fancy indexing: a few numpy calls fewer per level
    # than take_along_axis, which matters for a lone query
    query = np.arange(batch)[:, None]
    for level in range(levels):
        slots = scores.shape[1]
        scores, flat, called, kids = _level(step, trie, level, scores, nodes, prefix, beam, origin)
        parent, code = np.divmod(flat, trie.codebook_sizes[level])
        live = np.isfinite(scores)
        prefix = prefix[query, parent]
        prefix[:, :, level] = np.where(live, code, 0)
        if level + 1 < levels:  # the nodes and parents are only needed for the next level
            if kids is None:
                kids = trie.child(level, nodes[query, parent], code)
            nodes = np.where(live, kids, -1)
            row = np.zeros(batch * slots, dtype=np.int64)  # a dead slot's row is never read
            row[called] = np.arange(len(called))
            origin = row[query * slots + parent]
    live = np.isfinite(scores)
    prefix[~live] = 0
    return BeamResult(prefix, scores, live.sum(axis=1))


# A level whose allowed codes are at most this fraction of the (rows, K) logits is searched
# over the list of allowed candidates rather than over the dense -inf-masked grid.
SPARSE_FRACTION = 1 / 16


def _level(
    step: Step,
    trie: CompactTrie,
    level: int,
    scores: np.ndarray,
    nodes: np.ndarray,
    prefix: np.ndarray,
    beam: int,
    origin: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One decoder call and the new beams: (scores, flat index slot * K + code), each
    (batch, min(beam, slots * K)), best first, -inf where a query has no more candidates;
    the flat slots the step was called for; and each new beam's trie node where the sparse
    path had them at hand (else None)."""
    batch, slots = scores.shape
    k = trie.codebook_sizes[level]
    width = min(beam, slots * k)
    live = np.flatnonzero(np.isfinite(scores.ravel()))
    if len(live) == 0:  # nothing left to expand (batch 0): spare the decoder an empty call
        empty = np.full((batch, width), -np.inf), np.zeros((batch, width), dtype=np.int64)
        return *empty, live, None
    rows = live // slots
    parents = None if origin is None else origin.ravel()[live]
    logits = np.asarray(step(level, rows, prefix.reshape(batch * slots, -1)[live], parents))
    if logits.shape != (len(live), k):
        raise ValueError(f"step({level}) returned {logits.shape}, expected {(len(live), k)}")
    x, lse, bad = _normaliser(logits)
    live_nodes, live_scores = nodes.ravel()[live], scores.ravel()[live]
    start, stop = trie.children(level, live_nodes)
    if (stop - start).sum() > SPARSE_FRACTION * logits.size:
        cand = _dense_candidates(x, lse, bad, live_scores, trie, level, live_nodes)
        if len(live) < batch * slots:
            grid = np.full((batch * slots, k), -np.inf)
            grid[live] = cand
            cand = grid
        return *_top_k(cand.reshape(batch, slots * k), width), live, None
    # sparse: score only the allowed (row, code) pairs, with the same float operations
    owner, child = trie.all_children(level, live_nodes)
    code = trie.codes[level][child].astype(np.int64)
    cand = x[owner, code].astype(np.float64)
    cand -= lse[owner]
    cand[bad[owner]] = -np.inf
    cand += live_scores[owner]
    flat = (live % slots)[owner] * k + code
    top, top_flat, kids = _sparse_top_k(cand, rows[owner], flat, child, batch, width)
    return top, top_flat, live, kids


def _dense_candidates(
    x: np.ndarray,
    lse: np.ndarray,
    bad: np.ndarray,
    scores: np.ndarray,
    trie: CompactTrie,
    level: int,
    nodes: np.ndarray,
) -> np.ndarray:
    """(rows, K): score + log-softmax where the trie allows the code, -inf elsewhere."""
    total = x.astype(np.float64)
    total -= lse[:, None]
    total[bad] = -np.inf
    total += scores[:, None]
    # + 0 where allowed, + -inf elsewhere: a table lookup, since masked writes (np.where,
    # copyto(where=)) are several times slower on a random mask
    total += _PENALTY.take(trie.allowed_mask(level, nodes).view(np.uint8))
    return total


# Up to this many candidates in all (a lone query's first level: 256), `_top_k` sorts them:
# 4x faster there than the argmax loop, and 2-15x slower on wider grids (one-off timing).
SORT_TOP_K_MAX = 2048


def _top_k(cand: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the `width` best (score desc, index asc): (scores, flat indices), each (B, width).

    Repeated argmax, taking the winner out each time: argmax returns the first maximum, which is
    exactly the tie rule, and with beam << row width it is faster and far more predictable than
    argpartition (whose run time swings 10x with the -inf padding here). Small grids are
    sorted instead (`SORT_TOP_K_MAX`). Consumes `cand`; where a row runs out of candidates its
    scores are -inf and its indices arbitrary (in range).
    """
    batch, size = cand.shape
    if cand.size <= SORT_TOP_K_MAX:
        # a stable sort of the negated scores gives the same order (ties: lower index first)
        best = np.argsort(-cand, axis=1, kind="stable")[:, :width]
        return cand[np.arange(batch)[:, None], best], best
    flat_cand = cand.reshape(-1)  # a view: linear take/put are cheaper than 2-D fancy indexing
    row_start = np.arange(batch) * size
    scores = np.full((width, batch), -np.inf)
    flat = np.zeros((width, batch), dtype=np.int64)
    for i in range(width):
        best = cand.argmax(axis=1)
        top = flat_cand.take(best + row_start)
        if not top.max(initial=-np.inf) > -np.inf:  # every query is out of candidates
            break
        scores[i], flat[i] = top, best
        flat_cand.put(best + row_start, -np.inf)
    return np.ascontiguousarray(scores.T), np.ascontiguousarray(flat.T)


def _sparse_top_k(
    cand: np.ndarray, query: np.ndarray, flat: np.ndarray, node: np.ndarray, batch: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_top_k` for candidates given as lists grouped by query in ascending flat index, each
    with its trie `node`; also the node of every kept candidate (-1 past them)."""
    order = np.lexsort((-cand, query))  # stable: equal scores keep ascending flat index
    query, cand = query[order], cand[order]
    rank = np.arange(len(order)) - np.searchsorted(query, query)
    keep = (rank < width) & (cand > -np.inf)
    at = query[keep], rank[keep]
    kept = order[keep]
    scores = np.full((batch, width), -np.inf)
    out = np.zeros((batch, width), dtype=np.int64)
    nodes = np.full((batch, width), -1, dtype=np.int64)
    scores[at] = cand[keep]
    out[at] = flat[kept]
    nodes[at] = node[kept]
    return scores, out, nodes
