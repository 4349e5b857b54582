"""Progressive training of the semantic indexer, one level at a time (GSID 2.2).

For level T: a contrastive-only warm-up at step T; the level's codebook is initialised by
k-means of the step-T representations of the catalog (LMIndexer) and then follows them by EMA;
the main phase adds the code KL at every level <= T and the commitment cross-entropy at every
level < T; finally every catalog item is assigned its level-T code, which is fixed from then on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.indexer.losses import (
    code_kl,
    commitment,
    multi_positive_nce,
    sinkhorn_targets,
    soft_cross_entropy,
)
from training.indexer.model import SemanticIndexer
from training.indexer.sampling import Batch, PairData, make_batches
from training.indexer.states import TokenStates
from training.metrics import codebook_stats

log = logging.getLogger(__name__)

# a training batch's texts run through the encoder in this many groups of similar length
LENGTH_GROUPS = 4


@dataclass
class Ablation:
    """Switches for the ablation table; all on is the reported model."""

    kl: bool = True
    hard_negatives: bool = True
    multi_query: bool = True
    commitment: bool = True


@dataclass
class TrainState:
    codes: np.ndarray  # (N, levels) item codes; -1 where a level is not trained yet
    history: list[dict] = field(default_factory=list)


def batched(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def encoded_batches(
    model: SemanticIndexer,
    states: TokenStates,
    batch_size: int,
    desc: str,
    rows: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(row indices, encoder memory, mask) per batch of texts `rows` (default: all), under a
    progress bar; the caller decides the grad mode and the model's train/eval mode.

    Batches come in order of text length, so each pads to a width close to its texts' own
    (on the Home Depot titles this halves the tokens the encoder runs over); callers place
    results by the row indices."""
    from tqdm.auto import tqdm

    rows = np.arange(len(states)) if rows is None else np.asarray(rows, dtype=np.int64)
    rows = rows[np.argsort(states.lengths(rows), kind="stable")]
    for chunk in tqdm(batched(len(rows), batch_size), desc=desc, leave=False):
        idx = rows[chunk.start : chunk.stop].tolist()
        lower, mask = states.batch(idx)
        yield idx, model.encode(lower, mask), mask


@torch.no_grad()
def step_representations(
    model: SemanticIndexer,
    states: TokenStates,
    prefix: np.ndarray,
    batch_size: int = 256,
    rows: Sequence[int] | None = None,
    desc: str = "represent",
) -> torch.Tensor:
    """(n, t+1, D) decoder representations of texts `rows` (in that order) given their t-code
    prefixes."""
    was = model.training
    model.eval()
    rows = list(range(len(states))) if rows is None else list(rows)
    at = {row: n for n, row in enumerate(rows)}
    out = torch.zeros(len(rows), prefix.shape[1] + 1, model.dim, device=states.device)
    for idx, memory, mask in encoded_batches(model, states, batch_size, desc, rows):
        out[[at[i] for i in idx]] = model.decode(memory, mask, torch.from_numpy(prefix[idx]))
    model.train(was)
    return out


def encode_by_length(
    model: SemanticIndexer,
    states: TokenStates,
    rows: Sequence[int],
    prefix: torch.Tensor,
    groups: int = LENGTH_GROUPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(step representations (len(prefix), t+1, D) of the first len(prefix) texts given their
    t-code prefixes, dense vectors (len(rows), D) of all) for one training batch of texts.

    The texts run in `groups` groups of similar length, each padded only to its own longest
    text: the same numbers as one padded batch up to float rounding, at about 60 % of the
    tokens on Home Depot batches (titles of 5 to 48 tokens)."""
    n, decoded = len(rows), len(prefix)
    order = np.argsort(states.lengths(rows), kind="stable")
    reps, dense, reps_rows = [], [], []
    for part in np.array_split(order, min(groups, n)):
        lower, mask = states.batch([rows[i] for i in part])
        memory = model.encode(lower, mask)
        dense.append(model.dense(memory, mask))
        keep = np.flatnonzero(part < decoded)
        if len(keep) < len(part):
            sel = torch.from_numpy(keep).to(memory.device)
            memory, mask = memory[sel], mask[sel]
        if len(keep):
            reps.append(model.decode(memory, mask, prefix[torch.from_numpy(part[keep])]))
            reps_rows.append(part[keep])
    return _unsort(torch.cat(reps), np.concatenate(reps_rows)), _unsort(torch.cat(dense), order)


def _unsort(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows of `x` put back in place: x[i] belongs at position rows[i]."""
    inverse = np.empty_like(rows)
    inverse[rows] = np.arange(len(rows))
    return x[torch.from_numpy(inverse).to(x.device)]


def kmeans_init(model: SemanticIndexer, level: int, reps: torch.Tensor, seed: int) -> None:
    from sklearn.cluster import KMeans

    k = model.cfg.codebook_size
    x = reps.cpu().numpy()
    if model.cfg.codebook_init == "kmeans" and len(x) > k:
        km = KMeans(k, n_init=1, max_iter=50, random_state=seed).fit(x)
        centres = torch.from_numpy(km.cluster_centers_.astype(np.float32))
    else:
        rng = np.random.default_rng(seed)
        centres = torch.from_numpy(x[rng.choice(len(x), k, replace=len(x) < k)])
    model.set_codebook(level, centres)


def code_stats(codes: np.ndarray, k: int) -> dict[str, float]:
    """Utilisation and perplexity of the last level's codes (the evaluation's definitions),
    and how many distinct paths the levels so far make: (N, levels so far) codes."""
    stats = codebook_stats(codes[:, -1:], [k])
    return {
        "utilisation": stats["l1_utilisation"],
        "perplexity": stats["l1_perplexity"],
        "paths": len(np.unique(codes, axis=0)),
    }


class Trainer:
    def __init__(
        self,
        model: SemanticIndexer,
        item_states: TokenStates,
        query_states: TokenStates,
        pairs: PairData | None,
        ablation: Ablation | None = None,
        log_path: Path | None = None,
        dev_eval=None,
    ):
        self.model, self.cfg = model, model.cfg
        self.items, self.queries, self.pairs = item_states, query_states, pairs
        self.ab = ablation or Ablation()
        self.log_path = log_path
        self.dev_eval = dev_eval  # callable(model, codes, level) -> dict, for reporting
        self.rng = random.Random(self.cfg.seed)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        head = [
            p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("upper.")
        ]
        self.opt = torch.optim.AdamW(
            [
                {"params": list(model.upper.parameters()), "lr": self.cfg.encoder_lr},
                {"params": head, "lr": self.cfg.head_lr},
            ],
            weight_decay=0.01,
        )
        self.state = TrainState(codes=np.full((len(item_states), self.cfg.levels), -1, np.int64))
        self.epochs_done = 0.0  # epochs of every phase so far, for the encoder's lr schedule

    def run_length(self) -> float:
        """Epochs of the whole run: every level's warm-up and main phase."""
        return self.cfg.levels * self.cfg.warmup_epochs + sum(self.cfg.epochs_per_level)

    def encoder_lr_after(self, epochs_done: float) -> float:
        """The encoder's lr after `epochs_done` epochs of the run (`lr_schedule`)."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.encoder_lr
        return self.cfg.encoder_lr * max(0.0, 1.0 - epochs_done / self.run_length())

    # ---- one batch
    def loss(self, batch: Batch, level: int, main: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss at 0-based `level`; `main` adds the KL at `level` and the EMA update."""
        m, cfg, codes = self.model, self.cfg, self.state.codes
        items = np.asarray(batch.items)
        dev = self.items.device
        prefix_items = torch.from_numpy(codes[items, :level]).to(dev)
        # the items the decoder sees: all, or without the judged negatives when their scope is
        # the dense representation alone
        coded_items = len(items) - (batch.judged if cfg.judged_negatives_scope == "dense" else 0)
        h_d, dense_d = encode_by_length(m, self.items, batch.items, prefix_items[:coded_items])
        q_item = torch.tensor(batch.query_item, device=dev)
        h_q, dense_q = encode_by_length(m, self.queries, batch.queries, prefix_items[q_item])
        positive = torch.from_numpy(batch.positive).to(dev)
        parts: dict[str, torch.Tensor] = {
            "nce": multi_positive_nce(
                h_q[:, level], h_d[:, level], positive[:, :coded_items], cfg.temperature
            )
        }
        if cfg.encoder_nce_weight > 0:
            parts["enc_nce"] = cfg.encoder_nce_weight * multi_positive_nce(
                dense_q, dense_d, positive, cfg.temperature
            )
        # code logits of every level with a codebook (level T itself only in the main phase),
        # computed once and shared by the KL, commitment and balancing terms
        coded = range(level + 1 if main else level)
        logits_d = [m.code_logits(h_d[:, t], t) for t in coded]
        logits_q = [m.code_logits(h_q[:, t], t) for t in coded]
        sharpen = cfg.code_temperature / (cfg.code_loss_temperature or cfg.code_temperature)
        sharp_d = [x * sharpen for x in logits_d] if sharpen != 1 else logits_d
        sharp_q = [x * sharpen for x in logits_q] if sharpen != 1 else logits_q
        if self.ab.kl and len(coded):
            parts["kl"] = (
                cfg.kl_weight
                * sum(code_kl(sharp_q[t], sharp_d[t][q_item]) for t in coded)
                / len(coded)
            )
        if self.ab.commitment and level > 0:
            fixed = prefix_items[:coded_items]
            parts["commit"] = (
                cfg.commit_weight
                * sum(
                    commitment(sharp_d[t], fixed[:, t]) + commitment(sharp_q[t], fixed[q_item, t])
                    for t in range(level)
                )
                / level
            )
        balanced = None
        if main and cfg.balance_weight > 0:
            target = sinkhorn_targets(
                logits_d[level].detach() * cfg.code_temperature,
                cfg.balance_epsilon,
                cfg.balance_iters,
            )
            parts["balance"] = (
                cfg.balance_weight
                * (
                    soft_cross_entropy(logits_d[level], target)
                    + soft_cross_entropy(logits_q[level], target[q_item])
                )
                / 2
            )
            balanced = target.argmax(-1)
        if main:
            m.ema_update(level, h_d[:, level].detach(), self.gen, balanced)
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def epoch_batches(self, level: int) -> list:
        """One epoch of batches for `level` (subclasses with other data override this)."""
        cfg = self.cfg
        prefix = self.state.codes[:, :level] if (self.ab.hard_negatives and level > 0) else None
        per_item = cfg.queries_per_item if self.ab.multi_query else 1
        return make_batches(
            self.pairs,
            cfg.batch_items,
            per_item,
            self.rng,
            prefix,
            cfg.group_size,
            negatives_per_query=cfg.judged_negatives,
        )

    def run_epochs(self, level: int, epochs: float, main: bool, desc: str) -> dict[str, float]:
        """`epochs` (fractional allowed) passes of `loss` + an optimiser step per batch."""
        from tqdm.auto import tqdm

        steps = [self.epoch_batches(level)]
        while sum(len(s) for s in steps) < epochs * len(steps[0]):
            steps.append(self.epoch_batches(level))
        first = len(steps[0])
        flat = [b for s in steps for b in s][: max(1, math.ceil(epochs * first))]
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(flat, desc=desc, unit="batch")
        for n, batch in enumerate(bar, 1):
            self.opt.param_groups[0]["lr"] = self.encoder_lr_after(
                self.epochs_done + (n - 1) / first
            )
            total, parts = self.loss(batch, level, main)
            self.opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / n:.3f}" for k, v in sums.items()})
        self.epochs_done += len(flat) / first
        return {k: v / len(flat) for k, v in sums.items()}

    # ---- assignment
    def assign_level(self, level: int) -> dict[str, float]:
        reps = step_representations(
            self.model, self.items, self.state.codes[:, :level], desc=f"assign level {level + 1}"
        )
        codes = self.model.code_logits(reps[:, level], level).argmax(-1).cpu().numpy()
        self.state.codes[:, level] = codes
        return code_stats(self.state.codes[:, : level + 1], self.cfg.codebook_size)

    def init_codebook(self, level: int, sample: int = 20000) -> None:
        rows = np.random.default_rng(self.cfg.seed + level).permutation(len(self.items))[:sample]
        reps = step_representations(
            self.model,
            self.items,
            self.state.codes[:, :level],
            rows=rows.tolist(),
            desc=f"init codebook {level + 1}",
        )
        kmeans_init(self.model, level, reps[:, level], self.cfg.seed + level)

    def record(self, entry: dict) -> None:
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.state.history.append(entry)
        log.info("%s", json.dumps(entry))
        if self.log_path:
            with self.log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def train(self, on_level_done=None, start_level: int = 0) -> TrainState:
        """Levels `start_level`.. (earlier ones already in `state.codes`, as when resuming)."""
        cfg = self.cfg
        self.epochs_done = start_level * cfg.warmup_epochs + sum(cfg.epochs_per_level[:start_level])
        for level in range(start_level, cfg.levels):
            t0 = time.perf_counter()
            warm = (
                self.run_epochs(
                    level, cfg.warmup_epochs, main=False, desc=f"level {level + 1} warm-up"
                )
                if cfg.warmup_epochs
                else {}
            )
            self.init_codebook(level)
            main = self.run_epochs(
                level, cfg.epochs_per_level[level], main=True, desc=f"level {level + 1}"
            )
            stats = self.assign_level(level)
            entry = {
                "level": level + 1,
                "warmup": warm,
                "main": main,
                **{f"l{level + 1}_{k}": v for k, v in stats.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if self.dev_eval is not None:
                entry["dev"] = self.dev_eval(self.model, self.state.codes, level)
            self.record(entry)
            if on_level_done is not None:
                on_level_done(self.state)
        return self.state
