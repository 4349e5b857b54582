"""`sidserve train`: train the semantic indexer on a catalog and its judgments, or, with
`--self-supervised`, on a catalog alone (LMIndexer).

It makes its own by-query dev split of the judgments (for reporting per level), trains on the
train side, and writes a checkpoint directory after every level, so an interrupted run keeps
the levels it finished; `--resume` goes on from there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.cli_args import add_data_arguments, load_inputs
from training.data import split_by_query

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, judgments_required=False)
    parser.add_argument(
        "--self-supervised",
        action="store_true",
        help="no judgments: learn codes by reconstructing masked titles",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument(
        "--config", type=Path, help="JSON file overriding IndexerConfig fields (docs/indexer.md)"
    )
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on: cpu (default), cuda, cuda:1, ...; the checkpoint is "
        "the same format either way",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with an interrupted run in --out: train the levels its checkpoint lacks "
        "(configuration, seed and ablation switches come from that checkpoint)",
    )
    a = parser.add_argument_group("ablations (each switches one part off)")
    a.add_argument("--no-kl", action="store_true", help="no query-item code KL term")
    a.add_argument("--no-hard-negatives", action="store_true", help="random batches at every level")
    a.add_argument("--no-multi-query", action="store_true", help="one query per item per batch")
    a.add_argument("--no-commitment", action="store_true", help="no commitment cross-entropy")


def dev_evaluator(dev_states, dev_pairs: tuple[np.ndarray, np.ndarray]):
    """Greedy top-1 code agreement on dev relevant pairs up to the level just trained."""
    from training.indexer.inference import greedy_codes
    from training.metrics import code_accuracy

    q_idx, i_idx = dev_pairs

    def evaluate(model, codes: np.ndarray, level: int) -> dict[str, float]:
        qcodes = greedy_codes(model, dev_states, levels=level + 1)
        return code_accuracy(qcodes, codes[:, : level + 1], q_idx, i_idx)

    return evaluate


@dataclass
class Setup:
    """What both training modes share: the model, its tokenizer, the item token states."""

    model: object
    tokenizer: object
    fingerprint: str
    item_states: object
    started: float = 0.0

    def states(self, texts: list[str], max_length: int, kind: str):
        from training.indexer.states import cached_states

        return cached_states(self.model, self.tokenizer, texts, max_length, self.fingerprint, kind)

    def checkpointer(self, out: Path, meta: dict):
        """The callback that writes the checkpoint after each finished level."""
        from training.indexer.checkpoint import save_checkpoint

        def write(state) -> None:
            done = int((state.codes >= 0).all(0).sum())
            seconds = round(time.perf_counter() - self.started, 1)
            save_checkpoint(
                out,
                self.model,
                self.tokenizer,
                state.codes,
                {**meta, "levels_trained": done, "train_seconds": seconds},
            )

        return write


def torch_device(name: str):
    """The torch device `name`, or a ValueError saying why it cannot be used here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this torch build or machine has no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda devices are supported")
    return device


def device_name(device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H200)': what the checkpoint records it was trained on."""
    import torch

    if device.type != "cuda":
        return device.type
    return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"


def setup(
    cfg,
    catalog,
    out: Path,
    resumed: Resumed | None = None,
    device: str = "cpu",
    encoder_dir: Path | None = None,
) -> tuple[Setup, Path, dict]:
    """`encoder_dir`: the encoder's starting weights when not MiniLM's (`encoder_init`)."""
    import torch
    from transformers import AutoTokenizer

    from training.encoder import file_digest, minilm_path
    from training.indexer.model import SemanticIndexer
    from training.indexer.states import cached_states

    dev = torch_device(device)
    torch.manual_seed(cfg.seed)
    model = SemanticIndexer(cfg, encoder_dir) if resumed is None else resumed.model
    model.to(dev)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    # keys the frozen layers' cached token states: the weights those layers started from
    if resumed is not None:
        fingerprint = resumed.doc["base_fingerprint"]
    else:
        fingerprint = file_digest((encoder_dir or minilm_path()) / "model.safetensors")[:16]
    items = cached_states(
        model, tokenizer, catalog.texts, cfg.max_item_tokens, fingerprint, "items"
    )
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    if resumed is None:
        log_path.write_text("")
    meta = {
        "base_model": "all-MiniLM-L6-v2"
        + (", fine-tuned as dense-ft" if cfg.encoder_init == "dense-ft" else ""),
        "base_fingerprint": fingerprint,
        "catalog": str(catalog.source),
        "catalog_checksum": catalog.checksum(),
        "device": device_name(dev),
    }
    # a resumed run's clock starts where the interrupted one stopped
    started = time.perf_counter() - (resumed.seconds if resumed else 0.0)
    return Setup(model, tokenizer, fingerprint, items, started), log_path, meta


def dense_ft_start(train_j, catalog, threshold: float, seed: int) -> Path:
    """`encoder_init: "dense-ft"`: MiniLM fine-tuned on the train side's relevant pairs exactly
    as the dense-ft baseline is (the same cache entry, so `sidserve evaluate --method dense-ft`
    on the same split trains it once for both)."""
    from training.baselines.dense_ft import FinetuneConfig, finetuned
    from training.encoder import TextEncoder

    pairs = train_j.relevant_pairs(threshold)
    fingerprint = TextEncoder().fingerprint
    model_dir, seconds = finetuned(pairs, catalog.texts, FinetuneConfig(seed=seed), fingerprint)
    took = "cached" if seconds is None else f"fine-tuned in {seconds:.0f} s"
    log.info("encoder starts from dense-ft (%d pairs, %s): %s", len(pairs), took, model_dir)
    return model_dir


@dataclass
class Resumed:
    """What an interrupted supervised run left in its checkpoint directory."""

    doc: dict
    model: object  # the SemanticIndexer as the checkpoint left it
    codes: np.ndarray
    levels_done: int
    seconds: float

    @classmethod
    def load(cls, args: argparse.Namespace, catalog) -> Resumed:
        from training.indexer.checkpoint import CONFIG_FILE, load_checkpoint

        given = [
            flag
            for flag, on in (
                ("--config", args.config),
                ("--seed", args.seed is not None),
                ("--self-supervised", args.self_supervised),
                ("--no-kl", args.no_kl),
                ("--no-hard-negatives", args.no_hard_negatives),
                ("--no-multi-query", args.no_multi_query),
                ("--no-commitment", args.no_commitment),
            )
            if on
        ]
        if given:
            raise ValueError(
                f"--resume takes the configuration from the checkpoint; drop {', '.join(given)}"
            )
        if not (args.out / CONFIG_FILE).is_file():
            raise ValueError(f"--resume: {args.out} holds no checkpoint of an earlier run")
        model, _, codes, doc = load_checkpoint(args.out)
        if doc.get("mode") != "supervised":
            raise ValueError(f"--resume: {args.out} is not a supervised run's checkpoint")
        done, levels = doc["levels_trained"], model.cfg.levels
        if done >= levels:
            raise ValueError(f"--resume: {args.out} has all {levels} levels trained already")
        if doc["catalog_checksum"] != catalog.checksum():
            raise ValueError(f"--resume: {args.out} was trained on another catalog")
        return cls(doc, model, codes, done, float(doc.get("train_seconds", 0.0)))


def train(args: argparse.Namespace) -> Path:
    from training.data import group_by_query
    from training.indexer.config import IndexerConfig
    from training.indexer.sampling import PairData
    from training.indexer.trainer import Ablation, Trainer

    catalog, judgments = load_inputs(args)
    resumed = Resumed.load(args, catalog) if args.resume else None
    if resumed is not None:
        cfg = resumed.model.cfg
        log.info("resuming %s after level %d of %d", args.out, resumed.levels_done, cfg.levels)
    else:
        cfg = IndexerConfig.from_file(args.config) if args.config else IndexerConfig()
    if args.seed is not None:
        cfg.seed = args.seed
    if resumed is None:
        cfg.resolve_start(args.self_supervised)
    if args.self_supervised:
        if cfg.encoder_init != "minilm":
            raise ValueError(
                f"encoder_init {cfg.encoder_init!r} fine-tunes on query-product pairs; "
                "the self-supervised mode has none (use 'minilm')"
            )
        return train_self_supervised(args, cfg, catalog)
    if judgments is None:
        raise ValueError("--judgments is required (or --self-supervised for a catalog alone)")
    train_j, dev_j = split_by_query(judgments, args.dev_fraction)
    negative_below = cfg.negative_threshold if cfg.judged_negatives else None
    pairs = PairData.from_judgments(train_j, cfg.positive_threshold, negative_below)
    log.info(
        "train: %d positive pairs, %d judged negative pairs, %d queries, %d items with queries; "
        "catalog %d items",
        len(pairs.positives),
        pairs.negative_pairs,
        len(pairs.query_texts),
        len(pairs.item_queries),
        len(catalog),
    )
    encoder_dir = None
    if cfg.encoder_init == "dense-ft" and resumed is None:
        encoder_dir = dense_ft_start(train_j, catalog, args.threshold, cfg.seed)
    run, log_path, meta = setup(cfg, catalog, args.out, resumed, args.device, encoder_dir)
    query_states = run.states(pairs.query_texts, cfg.max_query_tokens, "queries")
    dev_eval = None
    dev = group_by_query(dev_j) if len(dev_j) else None
    if dev is not None and len(dev.relevant_pairs(args.threshold)[0]):
        dev_states = run.states(dev.texts, cfg.max_query_tokens, "queries")
        dev_eval = dev_evaluator(dev_states, dev.relevant_pairs(args.threshold))
    if resumed is not None:
        ablation = Ablation(**resumed.doc["ablation"])
    else:
        ablation = Ablation(
            kl=not args.no_kl,
            hard_negatives=not args.no_hard_negatives,
            multi_query=not args.no_multi_query,
            commitment=not args.no_commitment,
        )
    meta.update(
        mode="supervised",
        ablation=ablation.__dict__,
        train_pairs=len(pairs.positives),
        judged_negative_pairs=pairs.negative_pairs,
    )
    trainer = Trainer(run.model, run.item_states, query_states, pairs, ablation, log_path, dev_eval)
    start = 0
    if resumed is not None:
        trainer.state.codes[:] = resumed.codes
        start = resumed.levels_done
    state = trainer.train(on_level_done=run.checkpointer(args.out, meta), start_level=start)
    log.info(
        "trained in %.1f s; last level: %s",
        time.perf_counter() - run.started,
        json.dumps(state.history[-1]),
    )
    return args.out


def train_self_supervised(args: argparse.Namespace, cfg, catalog) -> Path:
    from training.indexer.selfsup import SelfSupervisedTrainer, TitleTokens

    run, log_path, meta = setup(cfg, catalog, args.out, device=args.device)
    tokens = TitleTokens.build(run.tokenizer, catalog.texts, cfg.max_item_tokens)
    meta.update(mode="self-supervised")
    trainer = SelfSupervisedTrainer(run.model, run.item_states, tokens, log_path)
    trainer.train(on_level_done=run.checkpointer(args.out, meta))
    return args.out


def run(args: argparse.Namespace) -> int:
    out = train(args)
    print(f"checkpoint written to {out}")
    return 0
