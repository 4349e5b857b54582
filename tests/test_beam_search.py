"""The gateway's compact trie and batched, trie-constrained beam search (service/)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import service.beam_search as beam_search_module
from service.beam_search import beam_search, log_softmax
from service.trie import CompactTrie
from training.sids import Trie, trie_beam_search


class Logits:
    """A deterministic fake decoder step: float32 logits from (query, level, prefix).

    `tied=True` gives small integer logits that ignore the prefix, so many rows are identical
    and many paths tie exactly (same float values summed in the same order).
    """

    def __init__(self, rng: np.random.Generator, batch: int, sizes: list[int], tied: bool = False):
        self.tied = tied
        self.base = [rng.normal(size=(batch, k)) for k in sizes]
        self.mix = [
            [rng.normal(size=(sizes[d], k)) for d in range(lv)] for lv, k in enumerate(sizes)
        ]
        if tied:
            self.base = [np.round(rng.random(size=(batch, k)) * 1.6) for k in sizes]
        self.calls: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def __call__(
        self, level: int, rows: np.ndarray, prefix: np.ndarray, parents: np.ndarray | None = None
    ) -> np.ndarray:
        self.calls.append((level, rows.copy(), prefix.copy(), parents))
        out = self.base[level][rows].copy()
        if not self.tied:
            for d, table in enumerate(self.mix[level]):
                out += table[prefix[:, d]]
        return out.astype(np.float32)

    def row_logp(self, level: int, query: int, prefix: tuple[int, ...], levels: int) -> np.ndarray:
        """log-softmax of one row, asked for on its own (not batched)."""
        padded = np.zeros((1, levels), dtype=np.int64)
        padded[0, : len(prefix)] = prefix
        return log_softmax(self(level, np.array([query]), padded))[0]


def random_codes(rng: np.random.Generator, n: int, sizes: list[int]) -> np.ndarray:
    """Random (n, L) codes; narrow ranges so that paths share prefixes and repeat."""
    cols = [rng.integers(0, rng.integers(1, k + 1), size=n) for k in sizes]
    return np.stack(cols, axis=1)


def exhaustive(
    logits: Logits, codes: np.ndarray, query: int, beam: int, levels: int
) -> tuple[list[tuple[int, ...]], list[float]]:
    """Every catalog path scored outright (summed log-softmax along it, level by level).

    Order of a beam search whose beam never prunes, under the rule "ties to the lower
    beam_index * K + code" with beams best-first: by total score, then by the score of each
    shorter prefix (longest first, higher first), then by the path itself.
    """
    paths = sorted({tuple(p) for p in codes[:, :levels].tolist()})
    keyed = []
    for path in paths:
        partial, total = [], 0.0
        for d in range(levels):
            total = total + logits.row_logp(d, query, path[:d], levels)[path[d]]
            partial.append(total)
        keyed.append(((*(-s for s in reversed(partial)), path), partial[-1]))
    keyed.sort(key=lambda t: t[0])
    return [k[-1] for k, _ in keyed[:beam]], [s for _, s in keyed[:beam]]


def reference_beams(
    logits: Logits, codes: np.ndarray, query: int, beam: int, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """`training.sids.trie_beam_search` with the same scores (kids in ascending code order,
    ties to the earlier (beam, code) candidate: the same rule as the service)."""

    def expand(level, prefix, state, kids):
        return logits.row_logp(level, query, prefix, levels)[kids], [None] * len(kids)

    return trie_beam_search(Trie(codes[:, :levels]), beam, expand)


def as_tuples(paths: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(p) for p in paths.tolist()]


# --- the trie ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("bitmaps", [None, True, False])
def test_trie_matches_a_set_of_prefixes(seed, bitmaps):
    rng = np.random.default_rng(seed)
    levels = int(rng.integers(1, 5))
    sizes = [int(rng.choice([2, 5, 9, 300, 4096])) for _ in range(levels)]
    codes = random_codes(rng, int(rng.integers(1, 200)), sizes)
    trie = CompactTrie.from_codes(codes, sizes, bitmaps=bitmaps)
    slow = Trie(codes)
    prefixes = [sorted({tuple(r[:d]) for r in codes.tolist()}) for d in range(levels + 1)]
    for d in range(levels):
        assert trie.n_nodes(d + 1) == len(prefixes[d + 1])
        nodes = trie.node_of_path(
            np.array(prefixes[d], dtype=np.int64).reshape(len(prefixes[d]), d)
        )
        # nodes are numbered in lexicographic order of their prefixes
        assert nodes.tolist() == list(range(len(prefixes[d])))
        mask = trie.allowed_mask(d, nodes)
        start, stop = trie.children(d, nodes)
        for i, prefix in enumerate(prefixes[d]):
            kids = slow.children(prefix)
            assert np.flatnonzero(mask[i]).tolist() == kids.tolist()
            assert trie.codes[d][start[i] : stop[i]].tolist() == kids.tolist()
            got = trie.child(d, np.full(len(kids), i), kids)
            want = trie.node_of_path(np.array([prefix + (c,) for c in kids]).reshape(-1, d + 1))
            assert got.tolist() == want.tolist() == list(range(start[i], stop[i]))


def test_trie_lookups_of_missing_paths_give_minus_one():
    trie = CompactTrie.from_codes(np.array([[0, 1], [0, 1], [2, 0], [2, 3]]), [4, 4])
    assert trie.n_nodes(1) == 2 and trie.n_nodes(2) == 3 and trie.n_items == 4
    assert trie.node_of_path(np.array([[0, 1], [2, 0], [2, 3], [1, 0], [0, 0], [2, 4], [-1, 0]]))[
        :
    ].tolist() == [0, 1, 2, -1, -1, -1, -1]
    # node -1 (missing) and nodes / codes out of range are misses, never a neighbour's child
    assert trie.child(1, np.array([-1, 2, 0, 1, 0]), np.array([1, 0, 4, -1, 1])).tolist() == [
        -1,
        -1,
        -1,
        -1,
        0,
    ]
    assert (2, 3) in trie and (2,) in trie and (3,) not in trie and () in trie
    assert trie.allowed_mask(1, np.array([1, 0])).tolist() == [
        [True, False, False, True],
        [False, True, False, False],
    ]
    with pytest.raises(ValueError):
        trie.node_of_path(np.zeros((1, 3), dtype=np.int64))


@pytest.mark.parametrize(
    ("codes", "sizes", "match"),
    [
        (np.empty((0, 2), dtype=np.int64), [4, 4], "non-empty"),
        (np.empty((3, 0), dtype=np.int64), [], "non-empty"),
        (np.array([1, 2, 3]), [4], "non-empty"),
        (np.zeros((2, 2, 2), dtype=np.int64), [4, 4], "non-empty"),
        (np.array([[0.0, 1.0]]), [4, 4], "integers"),
        (np.array([[0, 1]]), [4], "codebook sizes"),
        (np.array([[0, 1]]), [4, 0], ">= 1"),
        (np.array([[0, 4]]), [4, 4], r"level 1 codes must be in \[0, 4\)"),
        (np.array([[-1, 0]]), [4, 4], r"level 0 codes must be in \[0, 4\)"),
    ],
)
def test_trie_rejects_bad_codes(codes, sizes, match):
    with pytest.raises(ValueError, match=match):
        CompactTrie.from_codes(codes, sizes)


def test_memory_per_item_is_reported_and_plausible():
    rng = np.random.default_rng(0)
    n, sizes = 20_000, [256, 256, 256]
    trie = CompactTrie.from_codes(rng.integers(0, 256, size=(n, 3)), sizes)
    arrays = [*trie.offsets, *trie.codes, *trie.keys, *(b for b in trie.bitmaps if b is not None)]
    assert trie.nbytes == sum(a.nbytes for a in arrays) > 0
    assert trie.bytes_per_item() == trie.nbytes / n
    # per item about one node per level (key int32 + code uint8 + offset int32) and little more;
    # far below the raw (N, L) int64 codes (24 bytes / item)
    assert 3 < trie.bytes_per_item() < 24
    # bitmaps only where they do not outweigh the level's CSR arrays: the two top levels here
    assert [b is not None for b in trie.bitmaps] == [True, True, False]


# --- beam search ------------------------------------------------------------------------------


@pytest.fixture(params=["dense", "dense-sorted", "sparse", "auto"])
def candidates(request, monkeypatch):
    """Run a test with every level scored on the dense masked grid (its top-k by the argmax
    loop, or by sorting), on the list of allowed candidates, or as chosen by size (tiny tries
    here mostly pick dense, and sort)."""
    fraction = {"sparse": 1.0, "auto": beam_search_module.SPARSE_FRACTION}
    sort_max = {"dense": 0, "dense-sorted": 10**9, "auto": beam_search_module.SORT_TOP_K_MAX}
    monkeypatch.setattr(beam_search_module, "SPARSE_FRACTION", fraction.get(request.param, 0.0))
    monkeypatch.setattr(beam_search_module, "SORT_TOP_K_MAX", sort_max.get(request.param, 0))
    return request.param


def _random_case(seed: int, tied: bool):
    rng = np.random.default_rng(seed)
    levels = int(rng.integers(1, 4))
    sizes = [int(rng.integers(2, 7)) for _ in range(levels)]
    codes = random_codes(rng, int(rng.integers(1, 40)), sizes)
    batch = int(rng.integers(1, 5))
    return rng, codes, sizes, batch, Logits(rng, batch, sizes, tied=tied)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.usefixtures("candidates")
def test_beam_wider_than_the_catalog_equals_exhaustive_scoring(seed, tied):
    rng, codes, sizes, batch, logits = _random_case(seed, tied)
    levels = len(sizes)
    n_paths = len({tuple(p) for p in codes.tolist()})
    beam = n_paths + int(rng.integers(0, 3))
    trie = CompactTrie.from_codes(codes, sizes, bitmaps=bool(seed % 2))
    result = beam_search(logits, trie, batch, beam, levels)
    assert len(result) == batch and result.counts.tolist() == [n_paths] * batch
    for q, (paths, scores) in enumerate(result):
        want_paths, want_scores = exhaustive(logits, codes, q, beam, levels)
        assert as_tuples(paths) == want_paths
        np.testing.assert_array_equal(scores, want_scores)  # same floats, same order of sums
        assert scores.dtype == np.float64 and paths.dtype == np.int64


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.usefixtures("candidates")
def test_pruned_beams_agree_with_the_offline_trie_beam_search(seed, tied):
    rng = np.random.default_rng(1000 + seed)
    levels = int(rng.integers(2, 4))
    sizes = [int(rng.integers(3, 9)) for _ in range(levels)]
    codes = random_codes(rng, int(rng.integers(20, 120)), sizes)
    batch = int(rng.integers(1, 6))
    logits = Logits(rng, batch, sizes, tied=tied)
    beam = int(rng.integers(1, 8))
    result = beam_search(logits, CompactTrie.from_codes(codes, sizes), batch, beam, levels)
    for q, (paths, scores) in enumerate(result):
        want_paths, want_scores = reference_beams(logits, codes, q, beam, levels)
        assert as_tuples(paths) == as_tuples(want_paths)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.usefixtures("candidates")
def test_ties_go_to_the_better_beam_before_the_smaller_path():
    """(0, 0) and (1, 0) tie exactly; (1,) was the better beam after level 0, so (1, 0) wins
    although (0, 0) is lexicographically smaller (the rule of `query_beams`)."""
    codes = np.array([[0, 0], [1, 0]])
    table = {(): [0.0, 1.0], (0,): [1.0, 0.0], (1,): [0.0, 1.0]}

    def step(level, rows, prefix, parents):
        return np.array([table[tuple(p[:level])] for p in prefix.tolist()], dtype=np.float32)

    paths, scores = beam_search(step, CompactTrie.from_codes(codes, [2, 2]), 1, 5, 2)[0]
    assert scores[0] == scores[1]
    assert paths.tolist() == [[1, 0], [0, 0]]
    # the offline search agrees (its docstring's "smaller path" holds only for tied prefixes)
    expand = lambda level, prefix, state, kids: (  # noqa: E731
        log_softmax(np.array([table[prefix]], dtype=np.float32))[0][kids],
        [None] * len(kids),
    )
    offline, _ = trie_beam_search(Trie(codes), 5, expand)
    assert offline.tolist() == [[1, 0], [0, 0]]


@pytest.mark.usefixtures("candidates")
def test_all_equal_logits_give_lexicographic_order_and_beam_cut():
    codes = np.array(list(itertools.product(range(3), range(3))))[::-1]
    trie = CompactTrie.from_codes(codes, [3, 3])

    def flat(level, rows, prefix, parents):
        return np.zeros((len(rows), 3), dtype=np.float32)

    paths, scores = beam_search(flat, trie, 2, 4, 2)[1]
    assert paths.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]]
    np.testing.assert_allclose(scores, 2 * np.log(1 / 3))


@pytest.mark.usefixtures("candidates")
def test_step_is_called_once_per_level_with_every_live_row():
    rng = np.random.default_rng(7)
    sizes = [16, 16, 16]
    codes = rng.integers(0, 16, size=(300, 3))
    trie = CompactTrie.from_codes(codes, sizes)
    logits = Logits(rng, 5, sizes)
    beam = 4
    result = beam_search(logits, trie, 5, beam, 3)
    assert [c[0] for c in logits.calls] == [0, 1, 2]
    last = None
    for level, rows, prefix, parents in logits.calls:
        assert prefix.shape == (len(rows), 3) and prefix.dtype == np.int64
        assert rows.tolist() == sorted(rows.tolist())  # query-major
        assert np.bincount(rows, minlength=5).tolist() == [1 if level == 0 else beam] * 5
        assert not prefix[:, level:].any()  # later columns are zero
        assert (trie.node_of_path(prefix[:, :level]) >= 0).all()  # prefixes in the catalog
        if level == 0:
            assert parents is None
        else:  # each row's parent: the last call's row of its query and its earlier codes
            _, last_rows, last_prefix, _ = last
            np.testing.assert_array_equal(last_rows[parents], rows)
            np.testing.assert_array_equal(last_prefix[parents], prefix * (np.arange(3) < level - 1))
        last = level, rows, prefix, parents
    assert result.counts.tolist() == [beam] * 5


@pytest.mark.usefixtures("candidates")
def test_fewer_paths_than_beam_and_dead_rows():
    codes = np.array([[0, 1], [0, 1], [2, 0], [2, 3], [1, 1]])
    trie = CompactTrie.from_codes(codes, [4, 4])
    seen_rows = []

    def step(level, rows, prefix, parents):
        seen_rows.append(rows.copy())
        out = np.zeros((len(rows), 4), dtype=np.float32)
        out[rows == 1, :] = -np.inf  # query 1 has no distribution at all
        if level == 1:
            out[(rows == 2) & (prefix[:, 0] == 2), 0] = -np.inf  # code 0 impossible after (2,)
            out[(rows == 3) & (prefix[:, 0] == 0)] = np.nan  # a broken row
        return out

    result = beam_search(step, trie, 4, 10, 2)
    assert result.counts.tolist() == [4, 0, 3, 3]
    assert as_tuples(result[0][0]) == [(0, 1), (1, 1), (2, 0), (2, 3)]
    # -inf logit: code 0 drops out of the softmax after (2,), so (2, 3) gets 1/3 instead of 1/4
    assert as_tuples(result[2][0]) == [(2, 3), (0, 1), (1, 1)]
    assert as_tuples(result[3][0]) == [(1, 1), (2, 0), (2, 3)]
    assert result[1][0].shape == (0, 2) and result[1][1].shape == (0,)
    assert np.isfinite(result[2][1]).all()
    # padding: -inf scores and zero paths past each query's count
    assert np.isneginf(result.scores[2, 3:]).all() and not result.paths[2, 3:].any()
    assert 1 not in seen_rows[1].tolist()  # a query with no beam left is not decoded again


def test_shallower_search_equals_search_on_the_prefix_trie():
    rng = np.random.default_rng(3)
    sizes = [6, 6, 6]
    codes = random_codes(rng, 80, sizes)
    logits = Logits(rng, 3, sizes)
    deep = beam_search(logits, CompactTrie.from_codes(codes, sizes), 3, 5, 2)
    flat = beam_search(logits, CompactTrie.from_codes(codes[:, :2], sizes[:2]), 3, 5, 2)
    for (p1, s1), (p2, s2) in zip(deep, flat, strict=True):
        assert p1.tolist() == p2.tolist() and s1.tolist() == s2.tolist()


@pytest.mark.usefixtures("candidates")
def test_batching_does_not_change_a_query_result():
    rng = np.random.default_rng(11)
    sizes = [32, 32, 32]
    codes = rng.integers(0, 32, size=(2000, 3))
    trie = CompactTrie.from_codes(codes, sizes)
    logits = Logits(rng, 6, sizes)
    together = beam_search(logits, trie, 6, 8, 3)
    for q in range(6):

        def alone(level, rows, prefix, parents, q=q):
            return logits(level, np.full_like(rows, q), prefix, parents)

        paths, scores = beam_search(alone, trie, 1, 8, 3)[0]
        assert paths.tolist() == together[q][0].tolist()
        np.testing.assert_array_equal(scores, together[q][1])


def test_empty_batch_and_argument_errors():
    trie = CompactTrie.from_codes(np.array([[0, 1]]), [2, 2])

    def step(level, rows, prefix, parents):
        raise AssertionError("no rows: the decoder is not called")

    empty = beam_search(step, trie, 0, 3, 2)
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(ValueError, match="beam"):
        beam_search(step, trie, 1, 0, 2)
    with pytest.raises(ValueError, match="levels"):
        beam_search(step, trie, 1, 3, 3)
    with pytest.raises(ValueError, match="expected"):
        beam_search(lambda lv, r, p, parents: np.zeros((len(r), 3), np.float32), trie, 1, 3, 2)


def test_log_softmax_is_accurate_and_stable():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 300)) * 5).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = x64 - np.log(np.exp(x64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_softmax(x), exact, rtol=0, atol=1e-6)
    big = np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float32)
    np.testing.assert_allclose(
        log_softmax(big)[0, :2], [-np.log1p(np.exp(-1.0)), -1 - np.log1p(np.exp(-1.0))]
    )
    bad = np.array([[0.0, np.nan], [np.inf, 0.0], [-np.inf, -np.inf], [0.0, 0.0]])
    out = log_softmax(bad)
    assert np.isneginf(out[:3]).all() and np.allclose(out[3], np.log(0.5))
