"""Token states after the frozen lower encoder layers, computed once per text and cached.

Stored ragged (all tokens of all texts end to end, float32, plus offsets): the 54,667-title
catalog takes about 1.7 GB. The disk cache key covers the base weights, the number of frozen
layers, the maximum length and the exact texts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.encoder import cache_dir, save_cache_entry, texts_digest

log = logging.getLogger(__name__)


@dataclass
class TokenStates:
    states: torch.Tensor  # (total tokens, D) float32 (fp16 would flip near-tied codes)
    offsets: np.ndarray  # (n + 1,) int64
    device: torch.device = torch.device("cpu")  # where `batch` puts its tensors

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token counts of texts `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.offsets[idx + 1] - self.offsets[idx]

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, S, D) float32 states and (B, S) 0/1 mask for texts `idx`."""
        lengths = self.lengths(idx).tolist()
        width = max(lengths)
        out = torch.zeros(len(idx), width, self.states.shape[1])
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            start = int(self.offsets[i])
            out[row, :n] = self.states[start : start + n]
            mask[row, :n] = 1
        return out.to(self.device), mask.to(self.device)


def compute_states(
    model,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 256,
    desc: str = "token states",
    progress: bool = True,
) -> TokenStates:
    """Token states of `texts` after the frozen layers, run on the model's device and kept in
    host memory; their `batch` comes on that device."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunks: list[np.ndarray | None] = [None] * len(texts)
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        h = model.lower_states(ids, mask).to(device="cpu", dtype=torch.float32)
        for row, i in enumerate(idx):
            n = int(enc["attention_mask"][row].sum())
            chunks[i] = h[row, :n].numpy()
        bar.update(len(idx))
    bar.close()
    lengths = np.array([len(c) for c in chunks])  # type: ignore[arg-type]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    states = torch.from_numpy(np.concatenate(chunks))  # type: ignore[arg-type]
    return TokenStates(states=states, offsets=offsets, device=device)


def cached_states(
    model, tokenizer, texts: Sequence[str], max_length: int, fingerprint: str, kind: str
) -> TokenStates:
    """`compute_states`, memoised on disk (two .npy files written atomically)."""
    device = next(model.parameters()).device
    key = f"{kind}-{fingerprint}-F{model.n_frozen}-L{max_length}-{texts_digest(texts)[:24]}"
    base = cache_dir() / "states" / key
    s_path, o_path = base.with_suffix(".states.npy"), base.with_suffix(".offsets.npy")
    if s_path.is_file() and o_path.is_file():
        offsets = np.load(o_path)
        if len(offsets) == len(texts) + 1:
            log.info("token states: cache hit %s", base)
            return TokenStates(torch.from_numpy(np.load(s_path)), offsets, device)
    ts = compute_states(model, tokenizer, texts, max_length, desc=f"{kind} token states")
    save_cache_entry(s_path, ts.states.numpy())
    save_cache_entry(o_path, ts.offsets)
    return ts
