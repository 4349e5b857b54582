"""Baselines that the semantic indexer is measured against: BM25, dense, two-stage SIDs."""
