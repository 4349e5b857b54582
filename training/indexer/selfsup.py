"""Self-supervised indexing for catalogs without queries (LMIndexer).

The indexer learns codes by reconstructing masked title tokens *from the codes* through a
deliberately shallow (1-layer) reconstructor, which cannot rebuild a title without them. At
level T, with levels < T fixed:
- reconstruction: the reconstructor sees the masked title plus the code vectors of levels
  1..T (level T straight-through quantised; during the warm-up, the continuous step-T
  representation: the reconstructor warm-up that LMIndexer uses against collapse);
- contrastive: two views of each item at step T, in-batch negatives drawn from items
  sharing the fixed prefix (batches are prefix-grouped), so level T separates what the prefix
  leaves together. The second view is a dropout view of the item itself, or with `neighbours`
  one of its nearest catalog items (SCAN's mined neighbours, Van Gansbeke et al. 2020), with
  `view_kl_weight` their code distributions pulled together too;
- commitment: cross-entropy keeping levels < T on their codes.
Codebooks: k-means initialisation and EMA, as in the supervised trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.indexer.inference import dense_representations
from training.indexer.losses import code_kl, commitment, multi_positive_nce
from training.indexer.model import SemanticIndexer
from training.indexer.sampling import item_order
from training.indexer.states import TokenStates
from training.indexer.trainer import Trainer, encode_by_length
from training.metrics.ranking import top_k

MASK_RATE = 0.5


class Reconstructor(nn.Module):
    """One transformer layer over [code vectors; masked title tokens] -> token logits over the
    catalog's own vocabulary (tied to the frozen MiniLM word embeddings, plus a bias)."""

    def __init__(self, model: SemanticIndexer, vocab: torch.Tensor, heads: int = 6):
        super().__init__()
        emb = model.embeddings
        d = model.dim
        self.register_buffer("words", emb.word_embeddings.weight.detach().clone())
        self.register_buffer("positions", emb.position_embeddings.weight.detach().clone())
        self.register_buffer("vocab", vocab)
        self.mask_emb = nn.Parameter(torch.zeros(d))
        self.code_in = nn.Linear(d, d)
        self.layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, 0.1, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(len(vocab)))

    def forward(
        self, codes: torch.Tensor, ids: torch.Tensor, attn: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """codes (B, T, D); ids/attn/masked (B, S) -> logits (n masked tokens, |vocab|)."""
        tok = self.words[ids]
        tok = torch.where(masked[..., None], self.mask_emb.expand_as(tok), tok)
        tok = tok + self.positions[: ids.shape[1]][None]
        x = torch.cat([self.code_in(codes), tok], dim=1)
        start = torch.zeros(codes.shape[:2], dtype=torch.bool, device=attn.device)
        pad = torch.cat([start, ~attn.bool()], dim=1)
        h = self.layer(x, src_key_padding_mask=pad)[:, codes.shape[1] :]
        return self.out(h[masked]) @ self.words[self.vocab].T + self.bias


def nearest_neighbours(vectors: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """(N, min(k, N-1)) each row's most similar other rows by dot product (unit vectors:
    cosine), best first (`top_k`'s order and ties), `chunk` rows of similarities at a time."""
    x = np.asarray(vectors, dtype=np.float32)
    out = []
    for start in range(0, len(x), chunk):
        sims = x[start : start + chunk] @ x.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf  # not its own neighbour
        out.append(top_k(sims, min(k, len(x) - 1)))
    return np.concatenate(out)


@dataclass
class TitleTokens:
    ids: torch.Tensor  # (N, S) token ids, padded
    attn: torch.Tensor  # (N, S)
    target: torch.Tensor  # (N, S) index into the catalog vocabulary, -1 for special/pad
    vocab: torch.Tensor  # catalog vocabulary (token ids)

    @classmethod
    def build(cls, tokenizer, texts: list[str], max_length: int) -> TitleTokens:
        enc = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        ids, attn = enc["input_ids"], enc["attention_mask"]
        real = (attn == 1) & (enc["special_tokens_mask"] == 0)
        vocab = torch.unique(ids[real])
        lookup = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        lookup[vocab] = torch.arange(len(vocab))
        target = torch.where(real, lookup[ids], torch.full_like(ids, -1))
        return cls(ids, attn, target, vocab)


class SelfSupervisedTrainer(Trainer):
    def __init__(
        self, model: SemanticIndexer, item_states: TokenStates, tokens: TitleTokens, log_path=None
    ):
        self.tokens = tokens
        self.recon = Reconstructor(model, tokens.vocab).to(model.codebooks.device)
        super().__init__(model, item_states, item_states, pairs=None, log_path=log_path)
        self.opt.add_param_group({"params": list(self.recon.parameters()), "lr": self.cfg.head_lr})
        self.neighbours = None
        if self.cfg.neighbours > 0:
            vectors = dense_representations(model, item_states)
            self.neighbours = nearest_neighbours(vectors, self.cfg.neighbours)

    def second_views(self, idx: np.ndarray, level: int) -> np.ndarray:
        """Per item of a batch, the item whose step-T representation is its positive: a random
        one of its nearest neighbours that share its fixed prefix, else (no neighbours asked
        for, or none shares the prefix) the item itself, seen through another dropout mask."""
        if self.neighbours is None:
            return idx
        codes = self.state.codes[:, :level]
        out = idx.copy()
        for r, i in enumerate(idx):
            near = self.neighbours[i]
            if level > 0:
                near = near[(codes[near] == codes[i]).all(1)]
            if len(near):
                out[r] = near[self.rng.randrange(len(near))]
        return out

    def epoch_batches(self, level: int) -> list[list[int]]:
        prefix = self.state.codes[:, :level] if level > 0 else None
        order = item_order(list(range(len(self.items))), self.rng, prefix, self.cfg.group_size)
        b = self.cfg.batch_items
        return [order[s : s + b] for s in range(0, len(order), b)]

    def loss(self, batch: list[int], level: int, main: bool):
        m, cfg = self.model, self.cfg
        idx = np.asarray(batch)
        dev = self.items.device
        prefix = torch.from_numpy(self.state.codes[idx, :level]).to(dev)
        h1, _ = encode_by_length(m, self.items, batch, prefix)
        other = self.second_views(idx, level)  # share the prefix: decoded with the same one
        h2, _ = encode_by_length(m, self.items, other.tolist(), prefix)
        # row k of h2 is a view of item i if it is i's own second view, or i itself
        same = (other[None, :] == other[:, None]) | (other[None, :] == idx[:, None])
        positive = torch.from_numpy(same).to(dev)
        parts = {
            "contrast": multi_positive_nce(h1[:, level], h2[:, level], positive, cfg.temperature)
        }
        if main and cfg.view_kl_weight > 0:
            parts["view_kl"] = cfg.view_kl_weight * code_kl(
                m.code_logits(h1[:, level], level), m.code_logits(h2[:, level], level)
            )
        current = h1[:, level]
        if main:  # straight-through quantisation of level T
            book = F.normalize(m.codebooks[level], dim=-1)
            chosen = book[m.code_logits(current, level).argmax(-1)]
            current = current + (chosen - current).detach()
        fixed = [F.normalize(m.codebooks[t], dim=-1)[prefix[:, t]] for t in range(level)]
        codes = torch.stack([*fixed, current], dim=1)
        ids, attn = self.tokens.ids[idx].to(dev), self.tokens.attn[idx].to(dev)
        target = self.tokens.target[idx]
        gen = torch.Generator().manual_seed(self.rng.randrange(2**31))
        masked = (torch.rand(target.shape, generator=gen) < MASK_RATE) & (target >= 0)
        masked, target = masked.to(dev), target.to(dev)
        if masked.any():
            logits = self.recon(codes, ids, attn, masked)
            parts["recon"] = F.cross_entropy(logits, target[masked])
        if level > 0:
            parts["commit"] = (
                cfg.commit_weight
                * sum(commitment(m.code_logits(h1[:, t], t), prefix[:, t]) for t in range(level))
                / level
            )
        if main:
            m.ema_update(level, h1[:, level].detach(), self.gen)
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}
