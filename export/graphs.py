"""The two ONNX graphs of a bundle: the encoder, and one step of the code decoder.

The decoder step takes a fixed-width prefix (one column per level) and the level per row, so
one graph serves every level and rows at different levels can share a call (Triton's dynamic
batching mixes requests). Columns at or after a row's level are ignored: the decoder is
causal, so the representation at position `level` only sees the BOS and codes `0 … level-1`.
The I/O contract is written down in docs/bundle.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from training.indexer.model import SemanticIndexer

OPSET = 17
EXPORTER = "torch.onnx legacy (TorchScript) exporter, opset 17"
ENCODER_INPUTS = ["input_ids", "attention_mask"]
ENCODER_OUTPUTS = ["memory"]
DECODER_INPUTS = ["memory", "attention_mask", "prefix", "level"]
DECODER_OUTPUTS = ["logits"]


class EncoderGraph(nn.Module):
    """Token ids + mask -> encoder states: embeddings and every MiniLM layer (frozen + tuned)."""

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lower = self.model.lower_states(input_ids, attention_mask)
        return self.model.encode(lower, attention_mask)


class DecoderStepGraph(nn.Module):
    """(memory (B, S, D), mask (B, S), prefix (B, W, L), level (B,)) -> logits (B, W, K).

    W beams per text share their text's encoder states: the cross-attention keys and values
    are computed once per text, not once per beam, and only positions up to the deepest
    level asked for are run (the later ones cannot influence them).
    """

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model
        self.register_buffer("books", F.normalize(model.codebooks.detach(), dim=-1).clone())

    def forward(
        self,
        memory: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        level: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        b, w, levels = prefix.shape
        d = memory.shape[-1]
        steps = torch.arange(levels, device=prefix.device)
        chosen = m.codebooks[steps[None, None, :], prefix]  # (B, W, L, D)
        x = torch.cat([m.bos.expand(b, w, 1, d), m.code_proj(chosen)], dim=2)
        x = x + m.step_emb.weight  # (B, W, L + 1, D)
        positions = torch.arange(level.max() + 1, device=prefix.device)
        x = x.index_select(2, positions)  # (B, W, P, D)
        self_bias = torch.zeros(positions.shape[0], positions.shape[0]).masked_fill(
            positions[None, :] > positions[:, None], float("-inf")
        )
        cross_bias = (attention_mask == 0)[:, None, None, :].float() * torch.finfo(x.dtype).min
        for layer in m.decoder.layers:
            x = _decoder_layer(layer, x, memory, self_bias, cross_bias)
        reps = F.normalize(m.out_norm(x), dim=-1)
        pick = level[:, None, None, None].expand(b, w, 1, d)
        rep = reps.gather(2, pick).squeeze(2)  # (B, W, D): each text's own level
        book = self.books.index_select(0, level)  # (B, K, D)
        return torch.bmm(rep, book.transpose(1, 2)) / m.cfg.code_temperature


def _attention(
    attn: nn.MultiheadAttention, q_in: torch.Tensor, kv_in: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """nn.MultiheadAttention written out with reshapes that keep batch and length dynamic
    (the module's own code bakes the example's sizes into the traced graph)."""
    d, heads = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    rows = q_in.shape[0]
    q = F.linear(q_in, w[:d], b[:d]).reshape(rows, -1, heads, d // heads).transpose(1, 2)
    k = F.linear(kv_in, w[d : 2 * d], b[d : 2 * d]).reshape(rows, -1, heads, d // heads)
    v = F.linear(kv_in, w[2 * d :], b[2 * d :]).reshape(rows, -1, heads, d // heads)
    scores = q @ k.permute(0, 2, 3, 1) / math.sqrt(d // heads) + bias
    out = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(rows, -1, d)
    return attn.out_proj(out)


def _decoder_layer(
    layer: nn.TransformerDecoderLayer,
    x: torch.Tensor,
    memory: torch.Tensor,
    self_bias: torch.Tensor,
    cross_bias: torch.Tensor,
) -> torch.Tensor:
    """A norm-first nn.TransformerDecoderLayer in eval mode over x (B, W, P, D): self-attention
    within each beam, cross-attention of all of a text's beams at once to its memory."""
    b, d = x.shape[0], x.shape[-1]
    h = layer.norm1(x).reshape(-1, x.shape[2], d)
    x = x + _attention(layer.self_attn, h, h, self_bias).reshape(x.shape)
    h = layer.norm2(x).reshape(b, -1, d)
    x = x + _attention(layer.multihead_attn, h, memory, cross_bias).reshape(x.shape)
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))


def export_graphs(model: SemanticIndexer, out: Path) -> dict[str, Path]:
    """Write encoder.onnx and decoder_step.onnx into `out`; returns {role: path}."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    levels, d = model.cfg.levels, model.dim
    paths = {"encoder": out / "encoder.onnx", "decoder_step": out / "decoder_step.onnx"}
    # MultiheadAttention's fused fast path (`_native_multi_head_attention`) has no ONNX
    # symbolic: export the plain composition of matmuls and softmax instead.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export_both(model, paths, levels, d)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.eval()  # the exporter restores the wrappers' mode, which would leave dropout on
    return paths


# dynamic axes of every graph input/output (docs/bundle.md)
AXES = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
    "memory": {0: "batch", 1: "seq"},
    "prefix": {0: "batch", 1: "beam"},
    "level": {0: "batch"},
    "logits": {0: "batch", 1: "beam"},
}


def _export_one(
    module: nn.Module, example: tuple, path: Path, inputs: list[str], outputs: list[str]
) -> None:
    torch.onnx.export(
        module.eval(),
        example,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={name: AXES[name] for name in inputs + outputs},
        opset_version=OPSET,
        dynamo=False,
    )


def _export_both(model: SemanticIndexer, paths: dict[str, Path], levels: int, d: int) -> None:
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7987, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    memory = torch.randn(2, ids.shape[1], d)
    prefix = torch.zeros(2, 3, levels, dtype=torch.long)
    level = torch.tensor([0, levels - 1])
    with torch.no_grad():
        _export_one(
            EncoderGraph(model), (ids, mask), paths["encoder"], ENCODER_INPUTS, ENCODER_OUTPUTS
        )
        _export_one(
            DecoderStepGraph(model),
            (memory, mask, prefix, level),
            paths["decoder_step"],
            DECODER_INPUTS,
            DECODER_OUTPUTS,
        )
