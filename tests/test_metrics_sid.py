from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    SidIndex,
    assignment_agreement,
    candidate_recall,
    category_ami,
    code_accuracy,
    code_accuracy_ceiling,
    codebook_stats,
    collision_stats,
    matched_depth,
    prefix_features,
    prefix_score,
)

# Item table used by several tests (L = 3).
ITEMS = np.array(
    [
        [1, 2, 3],  # 0
        [1, 2, 4],  # 1
        [1, 5, 3],  # 2
        [2, 2, 3],  # 3
        [1, 2, 3],  # 4 (same path as item 0)
        [7, 7, 7],  # 5
    ]
)


# ---------------------------------------------------------------- prefix


def test_matched_depth() -> None:
    queries = np.array([[1, 2, 3], [2, 2, 9]])
    # Item 0 [1,2,3]: 3 vs q0, 0 vs q1 (first code differs). Item 1 [1,2,4]: 2, 0.
    # Item 2 [1,5,3]: 1, 0. Item 3 [2,2,3]: 0 vs q0 (2 != 1), 2 vs q1. Item 4: 3, 0.
    # Item 5: 0, 0. Note item 3 agrees with q0 at levels 2 and 3 but not level 1 -> depth 0.
    expected = [[3, 0], [2, 0], [1, 0], [0, 2], [3, 0], [0, 0]]
    np.testing.assert_array_equal(matched_depth(queries, ITEMS), expected)


def test_prefix_score_mapping() -> None:
    # L = 3: 0, 2^-2, 2^-1, 2^0.
    np.testing.assert_allclose(prefix_score(np.arange(4), 3), [0.0, 0.25, 0.5, 1.0])
    # L = 2: depth 1 -> 2^-1, depth 2 -> 1.
    np.testing.assert_allclose(prefix_score(np.array([0, 1, 2]), 2), [0.0, 0.5, 1.0])
    assert float(prefix_score(2, 4)) == 0.25  # 2^(2-4)
    assert prefix_score(np.array([1]), 3).dtype == np.float64
    with pytest.raises(ValueError):
        prefix_score(np.array([4]), 3)


def test_prefix_features_layout() -> None:
    queries = np.array([[9, 9, 9], [1, 2, 0], [1, 2, 3]])  # K = 3
    feats = prefix_features(queries, ITEMS)
    assert feats.shape == (6, 5)
    # Item 0 [1,2,3]: depths (0, 2, 3) -> scores (0, .5, 1), max 1, best beam rank 2 -> 2/3.
    np.testing.assert_allclose(feats[0], [0.0, 0.5, 1.0, 1.0, 2 / 3])
    # Item 1 [1,2,4]: depths (0, 2, 2) -> (0, .5, .5), max .5, first beam with depth 2 is 1 -> 1/3.
    np.testing.assert_allclose(feats[1], [0.0, 0.5, 0.5, 0.5, 1 / 3])
    # Item 3 [2,2,3]: no match with any beam -> zeros, max 0, rank feature 1.0.
    np.testing.assert_allclose(feats[3], [0.0, 0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        prefix_features(np.empty((0, 3), dtype=np.int64), ITEMS)


# ---------------------------------------------------------------- SidIndex


def test_sid_index_prefix_groups_are_sorted() -> None:
    index = SidIndex(ITEMS)
    # Items with first code 1: 0, 1, 2, 4; with prefix (1, 2): 0, 1, 4; path (1,2,3): 0, 4.
    np.testing.assert_array_equal(index.items_with_prefix((1,)), [0, 1, 2, 4])
    np.testing.assert_array_equal(index.items_with_prefix((1, 2)), [0, 1, 4])
    np.testing.assert_array_equal(index.items_with_prefix((1, 2, 3)), [0, 4])
    assert index.items_with_prefix((3,)).size == 0


def test_sid_index_rank_order() -> None:
    index = SidIndex(ITEMS)
    queries = np.array([[2, 2, 3], [1, 2, 4], [1, 2, 3]])
    # Best (depth, first beam) per item:
    #   item 3 [2,2,3]: depth 3 via beam 0          -> (3, 0)
    #   item 1 [1,2,4]: depth 3 via beam 1          -> (3, 1)
    #   items 0, 4 [1,2,3]: depth 3 via beam 2      -> (3, 2), index order 0 then 4
    #   item 2 [1,5,3]: depth 1, first via beam 1   -> (1, 1)
    #   item 5: no match, excluded.
    ranked, total = index.rank(queries)
    np.testing.assert_array_equal(ranked, [3, 1, 0, 4, 2])
    assert total == 5
    # min_depth = 2 drops item 2 (depth 1).
    ranked, total = index.rank(queries, min_depth=2)
    np.testing.assert_array_equal(ranked, [3, 1, 0, 4])
    assert total == 4
    # limit truncates the list but reports the full count.
    ranked, total = index.rank(queries, limit=2)
    np.testing.assert_array_equal(ranked, [3, 1])
    assert total == 5


def test_sid_index_depth_beats_beam_rank() -> None:
    index = SidIndex(ITEMS)
    # Beam 0 [1,5,0] matches item 2 to depth 2 and items 0,1,4 to depth 1;
    # beam 1 [1,2,3] matches items 0,4 to depth 3 and item 1 to depth 2.
    # Keys: 0 -> (3,1), 4 -> (3,1), 2 -> (2,0), 1 -> (2,1). Deeper first, then beam rank.
    ranked, total = index.rank(np.array([[1, 5, 0], [1, 2, 3]]))
    np.testing.assert_array_equal(ranked, [0, 4, 2, 1])
    assert total == 4


def test_sid_index_similarity_replaces_beam_rank_within_a_depth() -> None:
    index = SidIndex(ITEMS)
    queries = np.array([[2, 2, 3], [1, 2, 4], [1, 2, 3]])
    # depth 3: items 3, 1, 0, 4 (beam order 3, 1, then 0 and 4 share beam 2); depth 1: item 2
    score = np.array([0.9, 0.1, 5.0, 0.2, 0.9, 7.0])
    ranked, total = index.rank(queries, similarity=lambda items: score[items])
    # within depth 3 by score (0 and 4 tie at 0.9: lower index first); depth 1 last although
    # item 2 scores highest; item 5 (no match) never appears
    np.testing.assert_array_equal(ranked, [0, 4, 3, 1, 2])
    assert total == 5
    with pytest.raises(ValueError, match="similarity returned shape"):
        index.rank(queries, similarity=lambda items: score)


def test_sid_index_pool_is_ranked_by_similarity_alone() -> None:
    index = SidIndex(ITEMS)
    queries = np.array([[2, 2, 3], [1, 2, 4], [1, 2, 3]])  # beam order: 3, 1, 0, 4, 2
    score = np.array([0.9, 0.1, 5.0, 0.2, 0.9, 7.0])
    ranked, total = index.rank(queries, similarity=lambda items: score[items], pool=5)
    # the depth-1 item 2 now comes first; item 5 (no match) is never a candidate
    np.testing.assert_array_equal(ranked, [2, 0, 4, 3, 1])
    assert total == 5
    # only the first 3 in beam order are re-ordered; limit cuts after that
    ranked, total = index.rank(queries, similarity=lambda items: score[items], pool=3, limit=2)
    np.testing.assert_array_equal(ranked, [0, 3])
    assert total == 5
    # ties keep the beam order (3 before 1), not the item index
    tied = np.array([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])
    ranked, _ = index.rank(queries, similarity=lambda items: tied[items], pool=5)
    np.testing.assert_array_equal(ranked[:2], [3, 1])
    with pytest.raises(ValueError, match="pool"):
        index.rank(queries, pool=5)
    with pytest.raises(ValueError, match="pool"):
        index.rank(queries, similarity=lambda items: score[items], pool=0)


def test_sid_index_empty_candidates() -> None:
    index = SidIndex(ITEMS)
    # Beam [1,9,9] matches items to depth 1 at most; min_depth 2 leaves nothing.
    ranked, total = index.rank(np.array([[1, 9, 9]]), min_depth=2)
    assert ranked.size == 0 and total == 0
    ranked, total = index.rank(np.array([[8, 8, 8]]))
    assert ranked.size == 0 and total == 0
    with pytest.raises(ValueError):
        index.rank(np.array([[1, 2]]))  # wrong number of levels
    with pytest.raises(ValueError):
        index.rank(np.array([[1, 2, 3]]), min_depth=4)


def _brute_force_rank(
    queries: np.ndarray, items: np.ndarray, min_depth: int, score: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    depth = matched_depth(queries, items)  # (N, K)
    keys = []
    for n in range(items.shape[0]):
        best = int(depth[n].max())
        if best >= min_depth:
            first_beam = int(np.flatnonzero(depth[n] == best)[0])
            second = first_beam if score is None else -float(score[n])
            keys.append((-best, second, n))
    keys.sort()
    return np.array([k[2] for k in keys], dtype=np.int64), len(keys)


def test_sid_index_matches_brute_force() -> None:
    rng = np.random.default_rng(42)
    items = rng.integers(0, 4, size=(500, 3))
    index = SidIndex(items)
    for trial in range(20):
        queries = rng.integers(0, 4, size=(5, 3))
        if trial % 4 == 0:
            queries[3] = queries[1]  # duplicated beam
        min_depth = 1 + trial % 3
        expected, expected_total = _brute_force_rank(queries, items, min_depth)
        ranked, total = index.rank(queries, min_depth=min_depth)
        assert total == expected_total
        np.testing.assert_array_equal(ranked, expected)
        ranked, total = index.rank(queries, min_depth=min_depth, limit=17)
        np.testing.assert_array_equal(ranked, expected[:17])
        assert total == expected_total
        score = rng.integers(0, 5, size=len(items)).astype(float)  # with ties
        expected, expected_total = _brute_force_rank(queries, items, min_depth, score)
        ranked, total = index.rank(
            queries, min_depth=min_depth, similarity=lambda found, s=score: s[found]
        )
        assert total == expected_total
        np.testing.assert_array_equal(ranked, expected)


# ---------------------------------------------------------------- sid_quality


def test_code_accuracy_partial_agreement() -> None:
    query_top1 = np.array([[1, 2, 3], [2, 2, 3]])
    # Pairs: (q0, item 0 [1,2,3]) agrees on 1, 2, 3 levels;
    #        (q0, item 1 [1,2,4]) agrees on levels 1..2 only;
    #        (q0, item 2 [1,5,3]) agrees on level 1 only (level 3 match does not count);
    #        (q1, item 0 [1,2,3]) disagrees at level 1.
    # l1 = 3/4, l2 = 2/4, l3 = 1/4.
    acc = code_accuracy(query_top1, ITEMS, np.array([0, 0, 0, 1]), np.array([0, 1, 2, 0]))
    assert acc == pytest.approx({"l1_code_acc": 0.75, "l2_code_acc": 0.5, "l3_code_acc": 0.25})
    with pytest.raises(ValueError):
        code_accuracy(query_top1, ITEMS, np.array([], dtype=int), np.array([], dtype=int))


def test_code_accuracy_ceiling_counts_each_querys_most_shared_prefix() -> None:
    # q0's relevant items 0 [1,2,3], 1 [1,2,4], 2 [1,5,3], 3 [2,2,3]: three share level 1 (code
    # 1), two levels 1-2 ([1,2]), no two all three levels; q2 (no q1) has item 5 alone.
    pq, pi = np.array([0, 0, 0, 0, 2]), np.array([0, 1, 2, 3, 5])
    ceiling = code_accuracy_ceiling(ITEMS, pq, pi)
    assert ceiling == pytest.approx(
        {"l1_code_acc_ceiling": 4 / 5, "l2_code_acc_ceiling": 3 / 5, "l3_code_acc_ceiling": 2 / 5}
    )
    # it bounds what any query SIDs reach, and query SIDs that pick those prefixes reach it
    best = np.array([[1, 2, 3], [0, 0, 0], [7, 7, 7]])
    acc = code_accuracy(best, ITEMS, pq, pi)
    assert acc["l1_code_acc"] == ceiling["l1_code_acc_ceiling"]
    assert acc["l2_code_acc"] == ceiling["l2_code_acc_ceiling"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        acc = code_accuracy(rng.integers(1, 3, size=(3, 3)), ITEMS, pq, pi)
        assert all(acc[f"l{d}_code_acc"] <= ceiling[f"l{d}_code_acc_ceiling"] for d in (1, 2, 3))
    with pytest.raises(ValueError):
        code_accuracy_ceiling(ITEMS, np.array([], dtype=int), np.array([], dtype=int))


def test_candidate_recall_counts_relevant_items_any_beam_reaches() -> None:
    beams = [np.array([[1, 2, 9], [2, 9, 9]]), np.array([[7, 7, 7]])]
    # q0: items 0 [1,2,3] and 1 [1,2,4] share levels 1-2 with beam 0, item 3 [2,2,3] level 1
    # with beam 1, item 5 [7,7,7] nothing; q1: item 5 fully, item 2 [1,5,3] nothing
    pq, pi = np.array([0, 0, 0, 0, 1, 1]), np.array([0, 1, 3, 5, 5, 2])
    assert candidate_recall(beams, ITEMS, pq, pi, min_depth=1) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert candidate_recall(beams, ITEMS, pq, pi, min_depth=2) == pytest.approx((2 / 4 + 1 / 2) / 2)
    assert candidate_recall(beams, ITEMS, pq, pi, min_depth=3) == pytest.approx((0 + 1 / 2) / 2)
    no_beams = [np.zeros((0, 3), dtype=int), np.zeros((0, 3), dtype=int)]
    assert candidate_recall(no_beams, ITEMS, pq, pi) == 0.0


def test_assignment_agreement_counts_prefixes_not_single_levels() -> None:
    final = ITEMS.copy()
    final[1] = [1, 3, 4]  # level 2 moved: levels 2 and 3 count as moved, level 3 code equal
    final[3] = [9, 2, 3]  # level 1 moved
    final[5, 2] = 0  # level 3 moved
    kept = assignment_agreement(final, ITEMS)
    assert kept == pytest.approx(
        {
            "l1_assignment_agreement": 5 / 6,
            "l2_assignment_agreement": 4 / 6,
            "l3_assignment_agreement": 3 / 6,
        }
    )
    assert set(assignment_agreement(ITEMS, ITEMS).values()) == {1.0}
    with pytest.raises(ValueError, match="differ"):
        assignment_agreement(ITEMS[:, :2], ITEMS)


def test_codebook_stats() -> None:
    # Level 1 codes: 1,1,1,2,1,7 -> 3 distinct of 8; p = (4/6, 1/6, 1/6).
    # Level 2 codes: 2,2,5,2,2,7 -> 3 distinct of 8; p = (4/6, 1/6, 1/6).
    # Level 3 codes: 3,4,3,3,3,7 -> 3 distinct of 10; p = (4/6, 1/6, 1/6).
    # Entropy H = -(2/3 ln 2/3 + 2 * 1/6 ln 1/6) = 0.8675632; perplexity exp(H) = 2.3811016.
    stats = codebook_stats(ITEMS, [8, 8, 10])
    h = -(2 / 3 * np.log(2 / 3) + 2 * (1 / 6) * np.log(1 / 6))
    assert stats["l1_utilisation"] == pytest.approx(3 / 8)
    assert stats["l3_utilisation"] == pytest.approx(3 / 10)
    assert stats["l2_perplexity"] == pytest.approx(np.exp(h))
    assert stats["l2_perplexity"] == pytest.approx(2.3811016, abs=1e-6)
    # Uniform over 4 codes -> perplexity 4, utilisation 4/4.
    uniform = codebook_stats(np.arange(4).reshape(4, 1), [4])
    assert uniform == pytest.approx({"l1_utilisation": 1.0, "l1_perplexity": 4.0})
    with pytest.raises(ValueError):
        codebook_stats(ITEMS, [8, 8])
    with pytest.raises(ValueError):
        codebook_stats(ITEMS, [8, 8, 5])  # code 7 at level 3 does not fit in 5


def test_collision_stats_small_table() -> None:
    table = np.array(
        [
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 1],
            [0, 1, 1],
            [0, 1, 1],
            [2, 0, 0],
        ]
    )
    # Paths: (0,0,0) x3, (0,0,1) x1, (0,1,1) x2, (2,0,0) x1 -> 4 leaves.
    # Items on a shared path: 3 + 2 = 5 of 7; largest leaf holds 3.
    stats = collision_stats(table)
    assert stats["collision_rate"] == pytest.approx(5 / 7)
    assert stats["max_items_per_leaf"] == 3
    assert stats["n_leaves"] == 4
    unique = collision_stats(np.array([[0, 0], [0, 1], [1, 0]]))
    assert unique == {"collision_rate": 0.0, "max_items_per_leaf": 1, "n_leaves": 3}
    with pytest.raises(ValueError):
        collision_stats(np.empty((0, 3), dtype=int))


# ---------------------------------------------------------------- category


def test_category_ami_perfect_and_unrelated() -> None:
    rng = np.random.default_rng(7)
    n = 600
    top = rng.integers(0, 4, size=n)
    sub = rng.integers(0, 3, size=n)
    sids = np.column_stack([top, sub, rng.integers(0, 5, size=n)])
    names = ["Toys", "Books", "Garden", "Tools"]
    level1 = [names[t] for t in top]
    # Level-2 category determined by the (code1, code2) path: one-to-one with it.
    level2: list[str | None] = [f"{names[t]} > Sub{s}" for t, s in zip(top, sub, strict=True)]
    level2[0] = None  # one item without a level-2 category
    ami = category_ami(sids, [level1, level2])
    assert ami["ami_l1"] == pytest.approx(1.0)
    assert ami["ami_l2"] == pytest.approx(1.0)
    assert ami["ami_l1_items"] == n
    assert ami["ami_l2_items"] == n - 1
    assert "ami_l3" not in ami  # only two label levels given

    # Categories drawn independently of the codes: AMI close to 0.
    unrelated = [names[c] for c in rng.integers(0, 4, size=n)]
    assert abs(category_ami(sids, [unrelated])["ami_l1"]) < 0.02


def test_category_ami_skips_sparse_levels() -> None:
    sids = np.array([[0, 0], [0, 1], [1, 0]])
    # Level 2 has a single labelled item -> skipped.
    ami = category_ami(sids, [["A", "A", "B"], [None, "A > x", None]])
    assert ami["ami_l1"] == pytest.approx(1.0)
    assert "ami_l2" not in ami and "ami_l2_items" not in ami
