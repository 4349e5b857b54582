"""`service.query_beams`: the beam search run over the decoder graphs' (text, beam) layout with
their key/value caches gives what the plain row-wise search gives, when every query keeps
`beam` live rows and when queries keep different numbers of them."""

from __future__ import annotations

import numpy as np
import pytest

from service.beam_search import beam_search
from service.query_beams import beams_for_memory
from service.trie import CompactTrie
from tests.test_beam_search import Logits, random_codes


class CachedFake:
    """A `Decoder` whose logits are `Logits`' for the path its cache holds.

    The query's id travels in the encoder states and `cross_kv`; each cache position holds
    the code that position was fed (the start position: -1). A later step reads the codes of
    earlier levels from `past` only and the last one from `prefix`, so a row given another
    beam's cache gets another path's logits. (Padded slots of a ragged grid get a zero cache
    and whatever logits follow from it; the search must drop them.)
    """

    def __init__(self, logits: Logits, levels: int):
        self.logits, self.levels = logits, levels
        self.first_calls = self.step_calls = 0

    def decode_first(self, memory: np.ndarray, mask: np.ndarray):
        self.first_calls += 1
        queries = memory[:, 0, 0].astype(np.int64)
        out = self.logits(0, queries, np.zeros((len(queries), self.levels), np.int64))
        present = np.full((len(queries), 1, 2, 1, 1), -1.0, dtype=np.float32)
        cross_kv = memory[:, None, None, :, :].repeat(2, axis=1)  # (B, 2, 1, S, D)
        return out[:, None], present, cross_kv

    def decode_step(self, cross_kv, mask, prefix, level, past):
        self.step_calls += 1
        b, w, _ = prefix.shape
        at = int(level[0])
        assert past.shape == (b, w, 2, at, 1)
        codes = np.zeros((b, w, self.levels), dtype=np.int64)
        codes[:, :, : at - 1] = past[:, :, 0, 1:, 0]  # levels 0 .. at-2, from the cache
        codes[:, :, at - 1] = prefix[:, :, at - 1]
        queries = np.repeat(cross_kv[:, 0, 0, 0, 0].astype(np.int64), w)
        out = self.logits(at, queries, codes.reshape(b * w, -1)).reshape(b, w, -1)
        fed = prefix[:, :, at - 1].astype(np.float32)[:, :, None, None, None].repeat(2, axis=2)
        return out, np.concatenate([past, fed], axis=3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beam", [1, 3, 7])
def test_cached_search_equals_the_row_wise_search(seed: int, beam: int) -> None:
    rng = np.random.default_rng(seed)
    sizes, batch = [5, 4, 6], 6
    codes = random_codes(rng, 40, sizes)
    trie = CompactTrie.from_codes(codes, sizes)
    logits = Logits(rng, batch, sizes)
    want = beam_search(logits, trie, batch, beam, len(sizes))

    fake = CachedFake(logits, len(sizes))
    memory = np.zeros((batch, 4, 8), dtype=np.float32)
    memory[:, 0, 0] = np.arange(batch)
    mask = np.ones((batch, 4), dtype=np.int64)
    got = beams_for_memory(fake, memory, mask, trie, beam)

    assert fake.first_calls == 1 and fake.step_calls == len(sizes) - 1
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.paths, want.paths)
    np.testing.assert_array_equal(got.scores, want.scores)


def assert_cached_search_equals(want, logits: Logits, trie: CompactTrie, batch: int, beam: int):
    """The cached search over `CachedFake` gives exactly the row-wise search's `want`."""
    fake = CachedFake(logits, trie.levels)
    memory = np.zeros((batch, 3, 8), dtype=np.float32)
    memory[:, 0, 0] = np.arange(batch)
    got = beams_for_memory(fake, memory, np.ones((batch, 3), dtype=np.int64), trie, beam)
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.paths, want.paths)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_queries_with_different_numbers_of_live_beams() -> None:
    """Candidates with a non-finite score are dropped, so a query whose logits rule out most
    codes keeps fewer live beams than the others: the next level's grid is ragged, and its
    padded slots must not leak into any query's beams."""
    rng = np.random.default_rng(7)
    sizes, batch, beam = [4, 5, 3], 3, 4
    codes = np.array([[a, b, c] for a in range(4) for b in range(5) for c in range(3)])
    trie = CompactTrie.from_codes(codes, sizes)
    logits = Logits(rng, batch, sizes)
    logits.base[0][0, 1:] = -np.inf  # query 0 keeps one beam at level 0 ...
    logits.base[1][0, 2:] = -np.inf  # ... two at level 1 ...
    logits.base[2][0, 1:] = -np.inf  # ... and two at the end: one code per beam at level 2
    logits.base[2][1, 1:] = -np.inf  # query 1 too, but from four beams
    want = beam_search(logits, trie, batch, beam, len(sizes))
    assert list(want.counts) == [2, beam, beam]
    assert_cached_search_equals(want, logits, trie, batch, beam)


def test_a_query_without_live_beams_drops_out_of_later_calls() -> None:
    """A query whose every candidate is ruled out at level 1 has no rows at level 2: the
    decoder grid holds only the others, and each still reads its own caches."""
    rng = np.random.default_rng(3)
    sizes, batch, beam = [4, 5, 3], 4, 3
    codes = np.array([[a, b, c] for a in range(4) for b in range(5) for c in range(3)])
    trie = CompactTrie.from_codes(codes, sizes)
    logits = Logits(rng, batch, sizes)
    logits.base[1][1, :] = -np.inf  # query 1 dies at level 1
    want = beam_search(logits, trie, batch, beam, len(sizes))
    assert list(want.counts) == [beam, 0, beam, beam]
    assert_cached_search_equals(want, logits, trie, batch, beam)
    cached_level2 = [rows for level, rows, *_ in logits.calls if level == 2][-1]
    assert cached_level2.tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]  # no row of query 1


def test_rows_out_of_query_order_are_refused() -> None:
    from service.query_beams import CachedSteps

    rng = np.random.default_rng(0)
    logits = Logits(rng, 2, [3, 3])
    fake = CachedFake(logits, 2)
    memory = np.zeros((2, 3, 8), dtype=np.float32)
    memory[:, 0, 0] = [0, 1]
    step = CachedSteps(fake, memory, np.ones((2, 3), dtype=np.int64))
    step(0, np.arange(2), np.zeros((2, 2), dtype=np.int64), None)
    with pytest.raises(ValueError, match="query-major"):
        step(1, np.array([1, 0]), np.zeros((2, 2), dtype=np.int64), np.array([1, 0]))
