"""The semantic indexer: a MiniLM encoder and a small transformer decoder that emits one code
per step against that level's codebook (GSID / LMIndexer).

The encoder's lower layers are frozen so their token states can be computed once per text and
cached (see `states.py`); only the top `trainable_layers` run in training. At step t the
decoder attends to the encoder states and to the embeddings of the codes chosen so far; its
output, L2-normalised, is the step-t representation. Code logits are cosine similarities to
the level's codebook over `code_temperature`. Codebooks are buffers updated by EMA, not by
gradients. Queries and products go through the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from training.indexer.config import IndexerConfig


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 1/0 attention mask -> (B, 1, 1, S) additive mask for BERT's eager attention."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class SemanticIndexer(nn.Module):
    # state-dict names of the frozen part (`embeddings`, `lower`): the base model's own weights
    FROZEN_PREFIXES = ("embeddings.", "lower.")

    def __init__(self, cfg: IndexerConfig, encoder_dir: str | Path | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from training.encoder import minilm_path

        self.cfg = cfg
        source = Path(encoder_dir) if encoder_dir else minilm_path()
        if encoder_dir is None or (source / "model.safetensors").is_file():
            base = AutoModel.from_pretrained(source, attn_implementation="eager")
        else:  # structure only; weights come from the indexer checkpoint
            base = AutoModel.from_config(
                AutoConfig.from_pretrained(source), attn_implementation="eager"
            )
        n_layers = len(base.encoder.layer)
        if cfg.trainable_layers > n_layers:
            raise ValueError(f"trainable_layers={cfg.trainable_layers} > {n_layers} layers")
        self.n_frozen = n_layers - cfg.trainable_layers
        self.embeddings = base.embeddings
        self.lower = nn.ModuleList(base.encoder.layer[: self.n_frozen])
        self.upper = nn.ModuleList(base.encoder.layer[self.n_frozen :])
        for p in [*self.embeddings.parameters(), *self.lower.parameters()]:
            p.requires_grad_(False)
        d = base.config.hidden_size
        self.dim = d
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.step_emb = nn.Embedding(cfg.levels + 1, d)
        self.code_proj = nn.Linear(d, d)
        layer = nn.TransformerDecoderLayer(
            d, cfg.decoder_heads, cfg.decoder_ff, cfg.dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers)
        self.out_norm = nn.LayerNorm(d)
        self.register_buffer("codebooks", torch.zeros(cfg.levels, cfg.codebook_size, d))
        self.register_buffer("ema_count", torch.zeros(cfg.levels, cfg.codebook_size))
        self.register_buffer("ema_sum", torch.zeros(cfg.levels, cfg.codebook_size, d))

    def train(self, mode: bool = True) -> SemanticIndexer:
        """The frozen part never trains: it stays in eval mode (no dropout), so the token
        states cached from it are exact and the same in training and serving."""
        super().train(mode)
        self.embeddings.eval()
        self.lower.eval()
        return self

    # ---- encoder
    @torch.no_grad()
    def lower_states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen part: embeddings + lower layers. Cached per text by `states.py`."""
        h = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        ext = additive_mask(mask, h.dtype)
        for layer in self.lower:
            h = layer(h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        return h

    def encode(self, lower: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Trainable top layers over cached lower states -> encoder memory (B, S, D)."""
        ext = additive_mask(mask, lower.dtype)
        h = lower
        for layer in self.upper:
            h = layer(h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        return h

    # ---- decoder
    def decode(
        self, memory: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor
    ) -> torch.Tensor:
        """Step representations for levels 1..t+1 given t chosen codes: (B, t+1, D), unit norm.

        prefix: (B, t) codes of levels 1..t (t may be 0), on any device.
        """
        prefix = prefix.to(memory.device)
        b, t = prefix.shape
        inputs = [self.start_input(memory, mask)[:, None]]
        if t:
            levels = torch.arange(t, device=prefix.device)
            chosen = self.codebooks[levels[None, :], prefix]  # (B, t, D)
            inputs.append(self.code_proj(chosen))
        x = torch.cat(inputs, dim=1) + self.step_emb.weight[: t + 1][None]
        causal = torch.triu(torch.ones(t + 1, t + 1, dtype=torch.bool, device=x.device), 1)
        out = self.decoder(x, memory, tgt_mask=causal, memory_key_padding_mask=~mask.bool())
        return F.normalize(self.out_norm(out), dim=-1)

    def start_input(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D) input of the first decoder position (see IndexerConfig.bos_input)."""
        if self.cfg.bos_input == "learned":
            return self.bos.expand(len(memory), -1)
        return self.mean_pool(memory, mask)

    @staticmethod
    def mean_pool(memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D) masked mean of the encoder states: MiniLM's own sentence embedding.

        A (1 x S) @ (S x D) product per text rather than a reduction: ONNX Runtime's ReduceSum
        sums in a different order for a padded batch, this matmul does not, so a query gets
        bit-identical results alone and micro-batched with longer ones."""
        weight = mask.to(memory.dtype)[:, None, :]
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(1.0)
        return (weight @ memory)[:, 0]

    def dense(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D) the indexer's dense representation: the unit-norm pooled encoder output."""
        return F.normalize(self.mean_pool(memory, mask), dim=-1)

    def code_logits(self, reps: torch.Tensor, level: int) -> torch.Tensor:
        """(..., D) unit representations -> (..., K) logits for `level` (0-based)."""
        book = F.normalize(self.codebooks[level], dim=-1)
        return reps @ book.T / self.cfg.code_temperature

    # ---- codebooks
    @torch.no_grad()
    def set_codebook(self, level: int, centres: torch.Tensor) -> None:
        centres = F.normalize(centres.to(self.codebooks.device), dim=-1)
        self.codebooks[level] = centres
        self.ema_count[level] = 1.0 / self.cfg.codebook_size
        self.ema_sum[level] = centres / self.cfg.codebook_size

    @torch.no_grad()
    def ema_update(
        self,
        level: int,
        reps: torch.Tensor,
        generator: torch.Generator,
        codes: torch.Tensor | None = None,
    ) -> int:
        """Move codes towards the mean of the representations assigned to them (`codes`, by
        default each representation's nearest code); re-seed codes whose EMA count fell below
        the threshold. Returns how many were re-seeded."""
        k, decay = self.cfg.codebook_size, self.cfg.ema_decay
        if codes is None:
            codes = self.code_logits(reps, level).argmax(-1)
        onehot = F.one_hot(codes, k).to(reps.dtype)
        share = onehot.sum(0) / len(reps)
        self.ema_count[level].mul_(decay).add_(share, alpha=1 - decay)
        self.ema_sum[level].mul_(decay).add_(onehot.T @ reps / len(reps), alpha=1 - decay)
        dead = (self.ema_count[level] < self.cfg.dead_code_threshold / k).nonzero().flatten()
        if len(dead):
            pick = torch.randint(len(reps), (len(dead),), generator=generator)
            noise = torch.randn(len(dead), reps.shape[1], generator=generator) * 0.01
            self.ema_sum[level, dead] = (reps[pick.to(reps.device)] + noise.to(reps.device)) / k
            self.ema_count[level, dead] = 1.0 / k
        self.codebooks[level] = F.normalize(
            self.ema_sum[level] / self.ema_count[level].clamp_min(1e-8)[:, None], dim=-1
        )
        return len(dead)
