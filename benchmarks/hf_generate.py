"""The semantic indexer as a Hugging Face generation model, to time and check the gateway's beam
search against `generate(num_beams=..., prefix_allowed_tokens_fn=...)` on the same weights.

`IndexerForGeneration` wraps a loaded `SemanticIndexer` (no copy, no new weights) as an
encoder-decoder `PreTrainedModel` + `GenerationMixin`. One token space covers every level:
token ``level * K + code`` is code `code` of level `level`, then BOS (the decoder start), EOS
and PAD, which the model never scores. At decoder step t the logits are the model's code logits
of level t in that level's K-token block and -inf everywhere else, so `generate`'s log-softmax
over the whole vocabulary equals the indexer's log-softmax over the level's codebook, and the
processor's -inf mask of codes not in the catalog trie gives the scoring of the gateway and of
`training.indexer.inference.query_beams`.

Two ways to run the decoder, both on the same weights:
- without a cache (`use_cache=False`, the wrapper's first form): each step re-runs the training
  model's decoder over the whole prefix and projects the encoder states for the
  cross-attention again;
- with HF's own cache (`use_cache=True`, an `EncoderDecoderCache` that `generate` creates and
  reorders between steps): each step runs only the new position, through the very PyTorch
  modules the bundle's decoder graphs are exported from (`export.graphs`: the first step also
  projects the cross-attention keys and values once; later steps look the code inputs up in
  tables), as a competent user of HF would. This is the stronger baseline.
The encoder runs once per batch of texts, outside `generate`, whose `encoder_outputs` argument
then skips its own encoding; `generate` repeats the encoder states once per beam (the gateway
shares them between a text's beams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from export.graphs import DecoderFirstGraph, DecoderStepGraph
from training.indexer.model import SemanticIndexer

# `generate` seeds beams 1..num_beams-1 with score -1e9 (not -inf) so that step 1 only expands
# beam 0; with fewer allowed paths than beams such copies survive to the end with scores near
# -1e9. Real path scores are sums of L log-probabilities of bounded logits, far above this.
DEAD_SCORE = -1e8


@strict
class IndexerGenerationConfig(PretrainedConfig):
    """Token layout of the wrapper: L * K code tokens, then BOS, EOS, PAD."""

    model_type = "sidserve_indexer_generation"

    levels: int = 2
    codebook_size: int = 8
    num_hidden_layers: int = 1  # decoder layers: the size of `generate`'s key/value cache
    vocab_size: int = 19
    bos_token_id: int | None = 16
    decoder_start_token_id: int | None = 16
    eos_token_id: int | None = 17
    pad_token_id: int | None = 18
    is_encoder_decoder: bool = True
    use_cache: bool = False


def generation_config_for(indexer: SemanticIndexer) -> IndexerGenerationConfig:
    levels, k = indexer.cfg.levels, indexer.cfg.codebook_size
    bos = levels * k
    return IndexerGenerationConfig(
        levels=levels,
        codebook_size=k,
        num_hidden_layers=len(indexer.decoder.layers),
        vocab_size=bos + 3,
        bos_token_id=bos,
        decoder_start_token_id=bos,
        eos_token_id=bos + 1,
        pad_token_id=bos + 2,
    )


class _Encoder(nn.Module):
    """`get_encoder()` for `generate(input_ids=...)`; `hf_beams` encodes outside `generate`."""

    main_input_name = "input_ids"

    def __init__(self, indexer: SemanticIndexer):
        super().__init__()
        self.indexer = indexer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> BaseModelOutput:
        lower = self.indexer.lower_states(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=self.indexer.encode(lower, attention_mask))


class IndexerForGeneration(PreTrainedModel, GenerationMixin):
    """The indexer's decoder behind HF's generation API (eager PyTorch; with or without HF's
    key/value cache, as `generate(use_cache=...)` asks)."""

    config_class = IndexerGenerationConfig
    base_model_prefix = "indexer"
    main_input_name = "input_ids"

    def __init__(self, config: IndexerGenerationConfig, indexer: SemanticIndexer):
        super().__init__(config)
        self.indexer = indexer
        self.encoder = _Encoder(indexer)
        # the cached path's modules: the indexer's own weights plus tables computed from them
        self.first_step = DecoderFirstGraph(indexer)
        self.later_step = DecoderStepGraph(indexer)
        self.post_init()
        self.eval()

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from the indexer checkpoint: `post_init` must not touch it."""

    def get_encoder(self) -> nn.Module:
        return self.encoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        **_: Any,
    ) -> Seq2SeqLMOutput:
        """Logits (N, 1, vocab) for the next token of each row of `decoder_input_ids`
        ([BOS, tokens of levels 0..t-1]): the level-t block holds the code logits.

        Only the last position is returned (`generate` reads only ``logits[:, -1]``). Rows
        whose prefix is not a path (beams with score -inf that `generate` keeps as fillers)
        are clamped into the codebook: their logits are garbage and never chosen.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        memory = encoder_outputs[0]
        if attention_mask is None:
            attention_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        if cache is not None:
            return self._cached_forward(decoder_input_ids, memory, attention_mask, cache)
        k = self.config.codebook_size
        tokens = decoder_input_ids[:, 1:]
        level = tokens.shape[1]
        if level >= self.config.levels:
            raise ValueError(f"asked for level {level}; the indexer has {self.config.levels}")
        offsets = torch.arange(level, device=tokens.device) * k
        codes = (tokens - offsets).clamp(0, k - 1)
        reps = self.indexer.decode(memory, attention_mask, codes)[:, level]
        logits = self._vocabulary_logits(self.indexer.code_logits(reps, level), level)
        return Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=memory)

    def _vocabulary_logits(self, code_logits: torch.Tensor, level: int) -> torch.Tensor:
        """(N, K) logits of level `level`'s codes -> (N, 1, vocab): -inf outside its block."""
        k = self.config.codebook_size
        out = code_logits.new_full((len(code_logits), 1, self.config.vocab_size), -torch.inf)
        out[:, 0, level * k : (level + 1) * k] = code_logits
        return out

    def _cached_forward(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: EncoderDecoderCache,
    ) -> Seq2SeqLMOutput:
        """One new position per row, its earlier ones read from `cache`: decoder layer i keeps
        its self-attention keys and values as layer i of the self-attention cache ((R, 1, P,
        D): one "head" of the model's width, as the step graph stores them) and its projected
        encoder states as layer i of the cross-attention cache ((R, H, S, D / H))."""
        level = cache.get_seq_length()
        if level >= self.config.levels:
            raise ValueError(f"asked for level {level}; the indexer has {self.config.levels}")
        layers = len(self.indexer.decoder.layers)
        if level == 0:
            logits, present, cross_kv = self.first_step(memory, attention_mask)
            for i in range(layers):
                cache.cross_attention_cache.update(cross_kv[:, 2 * i], cross_kv[:, 2 * i + 1], i)
                cache.is_updated[i] = True
        else:
            cross = cache.cross_attention_cache.layers
            cross_kv = torch.stack(
                [t for layer in cross[:layers] for t in (layer.keys, layer.values)], dim=1
            )
            own = cache.self_attention_cache.layers
            past = torch.stack([t for layer in own[:layers] for t in (layer.keys, layer.values)], 2)
            k = self.config.codebook_size
            # the last token is the code of level - 1 (filler beams' EOS is clamped: never chosen)
            code = (decoder_input_ids[:, -1] - (level - 1) * k).clamp(0, k - 1)
            prefix = code.new_zeros(len(code), 1, self.config.levels)
            prefix[:, 0, level - 1] = code
            at = torch.full((len(code),), level, dtype=torch.long, device=code.device)
            logits, present = self.later_step(cross_kv, attention_mask, prefix, at, past)
        for i in range(layers):  # the new position's keys and values
            cache.self_attention_cache.update(
                present[:, :, 2 * i, -1:], present[:, :, 2 * i + 1, -1:], i
            )
        out = self._vocabulary_logits(logits[:, 0], level)
        return Seq2SeqLMOutput(logits=out, cache=cache, encoder_last_hidden_state=memory)


def wrap_indexer(indexer: SemanticIndexer) -> IndexerForGeneration:
    return IndexerForGeneration(generation_config_for(indexer), indexer)


def load_for_generation(checkpoint: str | Path) -> tuple[IndexerForGeneration, Any]:
    """(wrapped model, HF tokenizer) of an indexer checkpoint directory."""
    from training.indexer.checkpoint import load_checkpoint

    indexer, tokenizer, _, _ = load_checkpoint(checkpoint)
    return wrap_indexer(indexer), tokenizer


@dataclass(frozen=True)
class AllowedTokens:
    """The catalog trie as ``prefix tokens -> allowed next tokens``, built once: the
    `prefix_allowed_tokens_fn` of `generate` is called per beam per step in Python."""

    table: dict[tuple[int, ...], list[int]]
    fallback: list[int]  # for prefixes outside the trie (dead filler beams): EOS, never scored

    @classmethod
    def from_paths(cls, paths: np.ndarray, codebook_size: int, eos_token_id: int) -> AllowedTokens:
        tokens = np.asarray(paths, dtype=np.int64) + np.arange(paths.shape[1]) * codebook_size
        kids: dict[tuple[int, ...], set[int]] = {}
        for row in map(tuple, np.unique(tokens, axis=0).tolist()):
            for d in range(len(row)):
                kids.setdefault(row[:d], set()).add(row[d])
        return cls({p: sorted(c) for p, c in kids.items()}, [eos_token_id])

    def __call__(self, batch_id: int, sent: torch.Tensor) -> list[int]:
        return self.table.get(tuple(sent[1:].tolist()), self.fallback)


def generate_kwargs(
    model: IndexerForGeneration, allowed: AllowedTokens, beam: int, use_cache: bool = False
) -> dict:
    """The exact `generate` arguments: canonical beam search (length_penalty=0 makes
    `sequences_scores` the plain sum of log-probabilities; nothing ends before max_new_tokens,
    so early stopping never triggers) returning every beam with its score; `use_cache`: HF's
    key/value cache (the wrapper's cached path) or none."""
    return {
        "num_beams": beam,
        "num_return_sequences": beam,
        "max_new_tokens": model.config.levels,
        "prefix_allowed_tokens_fn": allowed,
        "do_sample": False,
        "length_penalty": 0.0,
        "early_stopping": "never",
        "use_cache": use_cache,
        "output_scores": True,
        "return_dict_in_generate": True,
        "decoder_start_token_id": model.config.decoder_start_token_id,
        "eos_token_id": model.config.eos_token_id,
        "pad_token_id": model.config.pad_token_id,
    }


@torch.no_grad()
def encode(model: IndexerForGeneration, hf_tokenizer, texts: Sequence[str]):
    """(memory (B, S, D), mask (B, S)) of texts tokenised as the indexer's queries."""
    enc = hf_tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=model.indexer.cfg.max_query_tokens,
        return_tensors="pt",
    )
    mask = enc["attention_mask"]
    return model.encoder(enc["input_ids"], mask).last_hidden_state, mask


@torch.no_grad()
def beams_for_memory(
    model: IndexerForGeneration,
    memory: torch.Tensor,
    mask: torch.Tensor,
    allowed: AllowedTokens,
    beam: int = 10,
    use_cache: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One `generate` call over encoded texts (see `hf_beams`).

    The encoder outputs are wrapped afresh on every call: `generate` expands
    `encoder_outputs` to one copy per beam in place, so a reused object would grow each call.
    """
    cfg = model.config
    res = model.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=memory),
        attention_mask=mask,
        **generate_kwargs(model, allowed, beam, use_cache),
    )
    b = len(memory)
    seqs = res.sequences.numpy().reshape(b, beam, -1)
    scores = res.sequences_scores.double().numpy().reshape(b, beam)
    offsets = np.arange(cfg.levels) * cfg.codebook_size
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for q in range(b):
        keep = np.isfinite(scores[q]) & (scores[q] > DEAD_SCORE)
        paths = seqs[q, keep, 1 : 1 + cfg.levels] - offsets
        out.append((paths.astype(np.int64), scores[q, keep]))
    return out


def hf_beams(
    model: IndexerForGeneration,
    hf_tokenizer,
    texts: Sequence[str],
    trie_paths: np.ndarray,
    beam: int = 10,
    batch_size: int = 32,
    allowed: AllowedTokens | None = None,
    use_cache: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: (paths (k, L) int64, summed log-probabilities (k,) float64), best first,
    k <= beam: `generate`'s filler beams (score -inf or about -1e9, present when the trie
    has fewer than `beam` paths under the text's search) are dropped.

    `trie_paths` (N, L) are the catalog's semantic codes; pass `allowed` (built once with
    `AllowedTokens.from_paths`) to keep building the table out of a timing loop. Texts go in
    chunks of `batch_size`: one encoder call and one `generate` call each. `use_cache`: HF's
    key/value cache (see the module docstring).
    """
    cfg = model.config
    if allowed is None:
        allowed = AllowedTokens.from_paths(trie_paths, cfg.codebook_size, cfg.eos_token_id)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(texts), batch_size):
        memory, mask = encode(model, hf_tokenizer, texts[start : start + batch_size])
        out.extend(beams_for_memory(model, memory, mask, allowed, beam, use_cache))
    return out
