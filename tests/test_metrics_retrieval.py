from __future__ import annotations

import math

import pytest

from training.metrics import retrieval_metrics


def test_recall_and_mrr_with_several_relevant_items() -> None:
    ranked = [[5, 1, 7, 2]]
    judged = [{1: 3.0, 2: 2.5, 9: 3.0, 5: 1.0}]
    # Relevant (>= 2.5): {1, 2, 9}. top-1 = {5}: 0/3; top-2 = {5, 1}: 1/3; top-4: {1, 2} -> 2/3.
    # First relevant item is 1 at rank 2 -> MRR 1/2.
    m = retrieval_metrics(ranked, judged, ks=(1, 2, 4), mrr_k=10, ndcg_k=10)
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["n_queries"] == 1


def test_graded_ndcg_explicit() -> None:
    ranked = [[4, 3, 8, 1]]
    judged = [{1: 3.0, 3: 2.0, 4: 2.5, 6: 3.0}]
    # Gains (relevance - 1): item 4 -> 1.5, 3 -> 1.0, 8 unjudged -> 0, 1 -> 2.0.
    # DCG@3 = 1.5/log2(2) + 1.0/log2(3) + 0/log2(4) = 1.5 + 0.6309298 = 2.1309298.
    # Ideal gains from all judged: 2.0 (item 1), 2.0 (item 6), 1.5, 1.0; top 3:
    # IDCG@3 = 2.0 + 2.0/log2(3) + 1.5/log2(4) = 2.0 + 1.2618595 + 0.75 = 4.0118595.
    dcg = 1.5 + 1.0 / math.log2(3)
    idcg = 2.0 + 2.0 / math.log2(3) + 1.5 / 2.0
    m = retrieval_metrics(ranked, judged, ks=(1,), ndcg_k=3)
    assert m["ndcg@3"] == pytest.approx(dcg / idcg)
    assert m["ndcg@3"] == pytest.approx(2.1309298 / 4.0118595, abs=1e-6)


def test_perfect_ranking_scores_one() -> None:
    # Ranking the judged items by gain is the ideal ranking: nDCG 1, MRR 1, recall@2 1.
    m = retrieval_metrics([[2, 0, 1]], [{0: 2.0, 1: 1.0, 2: 3.0}], ks=(2,), ndcg_k=10)
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["mrr@100"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(1.0)


def test_empty_ranking_and_skipped_query_are_averaged_correctly() -> None:
    ranked = [[], [3, 0], [1]]
    judged = [
        {0: 3.0},  # empty ranking: recall 0, MRR 0, nDCG 0
        {0: 2.6, 1: 2.0},  # relevant {0}; found at rank 2: recall@10 1, MRR 1/2
        {1: 2.0},  # no relevant item: skipped entirely
    ]
    m = retrieval_metrics(ranked, judged, ks=(1, 10))
    # Two queries count: recall@1 = (0 + 0)/2, recall@10 = (0 + 1)/2, MRR = (0 + 0.5)/2.
    assert m["n_queries"] == 2
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["mrr@100"] == pytest.approx(0.25)
    # Query 2 nDCG@10: gains [0 (item 3), 1.6 (item 0)] -> DCG = 1.6/log2(3);
    # IDCG = 1.6 + 1.0/log2(3). Mean with query 1's 0.
    q2 = (1.6 / math.log2(3)) / (1.6 + 1.0 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(q2 / 2)


def test_mrr_cutoff_and_threshold() -> None:
    # Relevant item at rank 3; with mrr_k=2 it is outside the cut-off -> 0.
    assert retrieval_metrics([[7, 8, 9]], [{9: 3.0}], mrr_k=2)["mrr@2"] == 0.0
    # Lower threshold makes item 8 (grade 2.0) relevant: first relevant at rank 2 -> 0.5.
    m = retrieval_metrics([[7, 8, 9]], [{8: 2.0, 9: 3.0}], threshold=2.0, mrr_k=3)
    assert m["mrr@3"] == pytest.approx(0.5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="no query has a relevant item"):
        retrieval_metrics([[1, 2]], [{1: 2.0}])
    with pytest.raises(ValueError, match="duplicated"):
        retrieval_metrics([[1, 2, 1]], [{1: 3.0}])
    with pytest.raises(ValueError):
        retrieval_metrics([[1]], [{1: 3.0}, {2: 3.0}])
