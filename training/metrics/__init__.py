"""Evaluation metrics for sidserve (numpy + scikit-learn only).

- ``ranking``: top-k selection over dense score matrices.
- ``retrieval``: recall@k, MRR and graded nDCG against judgments.
- ``prefix``: prefix matching of item SIDs against query beams, and DSIRM-style features.
- ``sid_retrieval``: ``SidIndex``, prefix-index retrieval by beam match depth.
- ``sid_quality``: code accuracy, codebook utilisation/perplexity, leaf collisions, drift of
  final codes from the ones training assigned.
- ``category``: AMI between SID prefixes and the category tree.
- ``relevance``: grouped cross-validated AUC of relevance labels from pair features.

All SID arrays hold the semantic levels only (no disambiguation code).
"""

from __future__ import annotations

from training.metrics.category import category_ami
from training.metrics.prefix import matched_depth, prefix_features, prefix_score
from training.metrics.ranking import top_k
from training.metrics.relevance import RELEVANCE_MODELS, relevance_auc
from training.metrics.retrieval import retrieval_metrics
from training.metrics.sid_quality import (
    assignment_agreement,
    candidate_recall,
    code_accuracy,
    code_accuracy_ceiling,
    codebook_stats,
    collision_stats,
)
from training.metrics.sid_retrieval import RERANK_POOL, SID_ORDERS, SidIndex

__all__ = [
    "RERANK_POOL",
    "SID_ORDERS",
    "SidIndex",
    "assignment_agreement",
    "candidate_recall",
    "category_ami",
    "code_accuracy",
    "code_accuracy_ceiling",
    "codebook_stats",
    "collision_stats",
    "matched_depth",
    "prefix_features",
    "prefix_score",
    "RELEVANCE_MODELS",
    "relevance_auc",
    "retrieval_metrics",
    "top_k",
]
