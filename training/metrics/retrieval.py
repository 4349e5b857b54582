"""Ranked-retrieval metrics against graded judgments: recall@k, MRR and graded nDCG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["retrieval_metrics"]


def retrieval_metrics(
    ranked: Sequence[Sequence[int]],
    judged: Sequence[Mapping[int, float]],
    threshold: float = 2.5,
    ks: Sequence[int] = (1, 10, 100),
    mrr_k: int = 100,
    ndcg_k: int = 10,
) -> dict[str, float]:
    """Average retrieval metrics over the queries that have at least one relevant item.

    ``ranked[i]`` lists query i's item indices in rank order (may be empty or short);
    ``judged[i]`` maps every judged item of query i to its graded relevance. An item is relevant
    when its relevance is >= ``threshold``; queries without a relevant item are skipped.

    - ``recall@k``: |relevant ∩ top-k| / |relevant| (GSID definition), averaged over queries.
    - ``mrr@{mrr_k}``: 1 / rank (1-based) of the first relevant item within the top ``mrr_k``,
      else 0.
    - ``ndcg@{ndcg_k}``: linear gain = relevance - 1 for judged items, 0 for unjudged ones;
      discount 1 / log2(rank + 1) with rank from 1; the ideal DCG ranks all of the query's judged
      items by gain. A query whose ideal DCG is 0 scores 0.
    - ``n_queries``: how many queries were evaluated (an int).

    Raises ValueError when no query has a relevant item, when a ranked list repeats an item, or
    when ``ranked`` and ``judged`` differ in length.
    """
    if len(ranked) != len(judged):
        raise ValueError(f"ranked has {len(ranked)} queries but judged has {len(judged)}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks) or mrr_k < 1 or ndcg_k < 1:
        raise ValueError(f"cut-offs must be >= 1, got ks={ks}, mrr_k={mrr_k}, ndcg_k={ndcg_k}")

    recall_sums = dict.fromkeys(ks, 0.0)
    mrr_sum = 0.0
    ndcg_sum = 0.0
    n_eval = 0
    discounts = 1.0 / np.log2(np.arange(2, ndcg_k + 2))

    for i, (ranking, judgments) in enumerate(zip(ranked, judged, strict=True)):
        items = [int(x) for x in ranking]
        if len(set(items)) != len(items):
            raise ValueError(f"ranked list of query {i} contains duplicated items")
        grades = {int(item): float(rel) for item, rel in judgments.items()}
        relevant = {item for item, rel in grades.items() if rel >= threshold}
        if not relevant:
            continue
        n_eval += 1

        for k in ks:
            hits = sum(1 for item in items[:k] if item in relevant)
            recall_sums[k] += hits / len(relevant)

        for rank, item in enumerate(items[:mrr_k], start=1):
            if item in relevant:
                mrr_sum += 1.0 / rank
                break

        gains = np.array([grades[item] - 1.0 if item in grades else 0.0 for item in items[:ndcg_k]])
        dcg = float(np.dot(gains, discounts[: gains.size]))
        ideal = np.sort(np.array([rel - 1.0 for rel in grades.values()]))[::-1][:ndcg_k]
        idcg = float(np.dot(ideal, discounts[: ideal.size]))
        ndcg_sum += dcg / idcg if idcg > 0 else 0.0

    if n_eval == 0:
        raise ValueError(
            f"no query has a relevant item (relevance >= {threshold}); nothing to evaluate"
        )

    result: dict[str, float] = {f"recall@{k}": recall_sums[k] / n_eval for k in ks}
    result[f"mrr@{mrr_k}"] = mrr_sum / n_eval
    result[f"ndcg@{ndcg_k}"] = ndcg_sum / n_eval
    result["n_queries"] = n_eval
    return result
