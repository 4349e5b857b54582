"""The "in-domain BERT" baseline: all-MiniLM-L6-v2 fine-tuned on train-split query-product pairs
with a symmetric in-batch InfoNCE loss. A batch never holds the same product or the same
(normalised) query twice, so no in-batch negative is secretly a positive.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.data import normalise_query
from training.encoder import TextEncoder

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIG_FILE = "finetune.json"


@dataclass
class FinetuneConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-5
    warmup: float = 0.1
    temperature: float = 0.05
    max_length: int = 32
    seed: int = 0


def unique_batches(
    pairs: Sequence[tuple[str, int]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle pair indices into batches with no repeated item and no repeated query."""
    pending = list(range(len(pairs)))
    rng.shuffle(pending)
    batches: list[list[int]] = []
    while pending:
        batch: list[int] = []
        items: set[int] = set()
        queries: set[str] = set()
        deferred: list[int] = []
        for i in pending:
            query, item = pairs[i]
            key = normalise_query(query)
            if len(batch) < batch_size and item not in items and key not in queries:
                batch.append(i)
                items.add(item)
                queries.add(key)
            else:
                deferred.append(i)
        batches.append(batch)
        pending = deferred
    return batches


def in_batch_loss(q: torch.Tensor, d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE: row i of `q` and of `d` are a pair, every other row of the
    batch a negative (the indexer's `multi_positive_nce` with one positive per row; within a
    float rounding of the mean of the two cross-entropies this baseline was first run with)."""
    import torch

    from training.indexer.losses import multi_positive_nce

    return multi_positive_nce(q, d, torch.eye(len(q), dtype=torch.bool), temperature)


def finetuned(
    pairs: Sequence[tuple[str, int]],
    item_texts: Sequence[str],
    cfg: FinetuneConfig,
    base_fingerprint: str,
) -> tuple[Path, float | None]:
    """The model fine-tuned on these pairs, from the cache (keyed by every input) or trained
    now: (its directory, seconds spent training; None on a cache hit). `sidserve evaluate
    --method dense-ft` and the indexer's `encoder_init: "dense-ft"` share it."""
    import time

    from training.encoder import cache_dir, parts_digest, texts_digest

    key = parts_digest(cfg.__dict__, base_fingerprint, texts_digest(item_texts), list(pairs))
    model_dir = cache_dir() / "dense-ft" / key
    if (model_dir / "model.safetensors").is_file():
        return model_dir, None
    started = time.perf_counter()
    finetune(pairs, item_texts, model_dir, cfg)
    return model_dir, time.perf_counter() - started


def finetune(
    pairs: Sequence[tuple[str, int]],
    item_texts: Sequence[str],
    out_dir: str | Path,
    cfg: FinetuneConfig | None = None,
    base_dir: str | Path | None = None,
) -> list[float]:
    """Fine-tune on (query, item index) pairs; writes an HF model directory (safetensors).

    Returns the loss of every step (also summarised in finetune.json).
    """
    import torch
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    if not pairs:
        raise ValueError("no training pairs: the train split has no relevant query-product pair")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    enc = TextEncoder(base_dir, max_length=cfg.max_length)
    model = enc.model
    model.train()
    epochs = [unique_batches(pairs, cfg.batch_size, rng) for _ in range(cfg.epochs)]
    total = sum(len(e) for e in epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    warm = max(1, int(total * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    bar = tqdm(total=total, desc="dense-ft", unit="batch")
    ema = None
    history: list[float] = []
    for batches in epochs:
        for batch in batches:
            q = enc.pool(enc.tokenize([pairs[i][0] for i in batch]), model)
            d = enc.pool(enc.tokenize([item_texts[pairs[i][1]] for i in batch]), model)
            loss = in_batch_loss(q, d, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            history.append(loss.item())
            ema = history[-1] if ema is None else 0.95 * ema + 0.05 * history[-1]
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}")
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    enc.tokenizer.save_pretrained(out)
    summary = {
        **asdict(cfg),
        "pairs": len(pairs),
        "steps": total,
        "first_loss": history[0],
        "last_loss_ema": ema,
    }
    (out / CONFIG_FILE).write_text(json.dumps(summary, indent=2))
    log.info("dense-ft: %d steps, final loss %.4f, saved to %s", total, ema or 0.0, out)
    return history
