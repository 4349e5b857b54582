"""`sidserve train`: train the semantic indexer on a catalog and its judgments.

It makes its own by-query dev split of the judgments (for reporting per level), trains on the
train side, and writes a checkpoint directory after every level, so an interrupted run keeps
the levels it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from training.cli_args import add_data_arguments, load_inputs
from training.data import split_by_query

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, judgments_required=True)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument(
        "--config", type=Path, help="JSON file overriding IndexerConfig fields (docs/indexer.md)"
    )
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    a = parser.add_argument_group("ablations (each switches one part off)")
    a.add_argument("--no-kl", action="store_true", help="no query-item code KL term")
    a.add_argument("--no-hard-negatives", action="store_true", help="random batches at every level")
    a.add_argument("--no-multi-query", action="store_true", help="one query per item per batch")
    a.add_argument("--no-commitment", action="store_true", help="no commitment cross-entropy")


def dev_evaluator(dev_states, dev_pairs: tuple[np.ndarray, np.ndarray]):
    """Greedy top-1 code agreement on dev relevant pairs up to the level just trained."""
    from training.indexer.inference import greedy_codes

    q_idx, i_idx = dev_pairs

    def evaluate(model, codes: np.ndarray, level: int) -> dict[str, float]:
        qcodes = greedy_codes(model, dev_states, levels=level + 1)
        agree = np.cumprod(qcodes[q_idx] == codes[i_idx, : level + 1], axis=1).mean(0)
        return {f"l{t + 1}_code_acc": float(a) for t, a in enumerate(agree)}

    return evaluate


def train(args: argparse.Namespace) -> Path:
    from transformers import AutoTokenizer

    from training.data import group_by_query
    from training.encoder import file_digest, minilm_path
    from training.indexer.checkpoint import save_checkpoint
    from training.indexer.config import IndexerConfig
    from training.indexer.model import SemanticIndexer
    from training.indexer.sampling import PairData
    from training.indexer.states import cached_states
    from training.indexer.trainer import Ablation, Trainer

    cfg = IndexerConfig.from_file(args.config) if args.config else IndexerConfig()
    if args.seed is not None:
        cfg.seed = args.seed
    catalog, judgments = load_inputs(args)
    assert judgments is not None
    train_j, dev_j = split_by_query(judgments, args.dev_fraction)
    pairs = PairData.from_judgments(train_j, cfg.positive_threshold)
    log.info(
        "train: %d positive pairs, %d queries, %d items with queries; catalog %d items",
        len(pairs.positives),
        len(pairs.query_texts),
        len(pairs.item_queries),
        len(catalog),
    )

    import torch

    torch.manual_seed(cfg.seed)
    model = SemanticIndexer(cfg)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    fingerprint = file_digest(minilm_path() / "model.safetensors")[:16]
    item_states = cached_states(
        model, tokenizer, catalog.texts, cfg.max_item_tokens, fingerprint, "items"
    )
    query_states = cached_states(
        model, tokenizer, pairs.query_texts, cfg.max_query_tokens, fingerprint, "queries"
    )
    dev_eval = None
    if len(dev_j):
        dev = group_by_query(dev_j)
        dev_states = cached_states(
            model, tokenizer, dev.texts, cfg.max_query_tokens, fingerprint, "queries"
        )
        dev_eval = dev_evaluator(dev_states, dev.relevant_pairs(args.threshold))
    ablation = Ablation(
        kl=not args.no_kl,
        hard_negatives=not args.no_hard_negatives,
        multi_query=not args.no_multi_query,
        commitment=not args.no_commitment,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.jsonl"
    log_path.write_text("")
    started = time.perf_counter()
    meta = {
        "base_model": "all-MiniLM-L6-v2",
        "base_fingerprint": fingerprint,
        "catalog": str(args.catalog),
        "catalog_checksum": catalog.checksum(),
        "ablation": ablation.__dict__,
        "train_pairs": len(pairs.positives),
    }
    trainer = Trainer(model, item_states, query_states, pairs, ablation, log_path, dev_eval)

    def checkpoint(state) -> None:
        done = int((state.codes >= 0).all(0).sum())
        save_checkpoint(
            args.out,
            model,
            tokenizer,
            state.codes,
            {
                **meta,
                "levels_trained": done,
                "train_seconds": round(time.perf_counter() - started, 1),
            },
        )

    state = trainer.train(on_level_done=checkpoint)
    log.info(
        "trained in %.1f s; history: %s",
        time.perf_counter() - started,
        json.dumps(state.history[-1]),
    )
    return args.out


def run(args: argparse.Namespace) -> int:
    out = train(args)
    print(f"checkpoint written to {out}")
    return 0
