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
DECODER_INPUTS = ["memory", "attention_mask", "prefix", "level", "past"]
DECODER_OUTPUTS = ["logits", "present"]


class EncoderGraph(nn.Module):
    """Token ids + mask -> encoder states: embeddings and every MiniLM layer (frozen + tuned)."""

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lower = self.model.lower_states(input_ids, attention_mask)
        return self.model.encode(lower, attention_mask)


class DecoderStepGraph(nn.Module):
    """One decoder step with a key/value cache:
    (memory (B, S, D), mask (B, S), prefix (B, W, L), level (B,), past (B, W, 2N, P, D))
    -> logits (B, W, K), present (B, W, 2N, P + 1, D).

    Only the new position (`level`) runs: its input is the embedding of the code chosen at
    level-1 (BOS at level 0) and its self-attention reads the earlier positions' keys and
    values from `past` (P = level; N decoder layers, keys then values per layer). The W beams
    of a text share its encoder states: cross-attention keys and values are computed once per
    text. All texts of a call are at the same level (P is one axis).

    What depends only on (level, code) is computed once here rather than per beam and call:
    from level 1 on, a beam's input (code projection + step embedding) and the first layer's
    self-attention query/key/value of it are looked up in tables of L x K rows (a fifth of a
    beam's multiply-adds at 1 decoder layer); the codebooks are stored normalised, divided by
    the temperature and transposed, so the logits are one matrix product with no per-text copy.
    The tables are taken from the model's weights when the graph is built.
    """

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model
        m, layer = model, model.decoder.layers[0]
        levels, k, d = m.codebooks.shape
        with torch.no_grad():
            books = F.normalize(m.codebooks.detach(), dim=-1) / m.cfg.code_temperature
            self.register_buffer("books", books.transpose(1, 2).contiguous())  # (L, D, K)
            inputs = m.codebooks.new_zeros(levels, k, d)  # level 0 takes the start input
            for level in range(1, levels):
                chosen = m.code_proj(m.codebooks[level - 1])
                inputs[level] = chosen + m.step_emb.weight[level]
            qkv = _self_attention_qkv(layer, inputs)
        self.register_buffer("inputs", inputs.reshape(levels * k, d))
        self.register_buffer("inputs_qkv", qkv.reshape(levels * k, 3 * d))
        self.codebook_size, self.dim = k, d
        self.register_buffer("member", head_membership(d, layer.self_attn.num_heads))

    def forward(
        self,
        memory: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        level: torch.Tensor,
        past: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        b, w, _ = prefix.shape
        last = (level - 1).clamp(min=0)  # the level whose code feeds this position
        code = prefix.gather(2, last[:, None, None].expand(b, w, 1))[:, :, 0]  # (B, W)
        row = level[:, None] * self.codebook_size + code  # its row in the tables
        first = (level == 0)[:, None, None]
        start = m.start_input(memory, attention_mask) + m.step_emb.weight[0]  # (B, D)
        start_qkv = _self_attention_qkv(m.decoder.layers[0], start)
        x = torch.where(first, start[:, None], self.inputs[row])  # (B, W, D)
        qkv = torch.where(first, start_qkv[:, None], self.inputs_qkv[row])
        cross_bias = (attention_mask == 0)[:, None, None, :].float() * torch.finfo(x.dtype).min
        present = []
        for i, layer in enumerate(m.decoder.layers):
            if i:  # the first layer's came from the tables or the start input above
                qkv = _self_attention_qkv(layer, x)
            x, k, v = _cached_layer(
                layer, x, qkv, past[:, :, 2 * i : 2 * i + 2], memory, cross_bias, self.member
            )
            present += [k, v]
        rep = F.normalize(m.out_norm(x), dim=-1).reshape(-1, self.dim)  # (B * W, D)
        # one spare zero row: ONNX Runtime multiplies a single row by a non-constant matrix
        # with a matrix-vector kernel whose sums differ in the last bits from its matrix
        # kernel's, so a query alone at level 0 (one row) would not get the bits it gets in a
        # batch; from two rows on, every row's result is the same whatever the row count
        rep = torch.cat([rep, rep.new_zeros(1, self.dim)])
        logits = rep @ self.books[level[0]]  # every text of a call is at the same level
        return logits[:-1].reshape(b, w, self.codebook_size), torch.stack(present, dim=2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(R, T, D) -> (R, H, T, D / H)."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias=None):
    """Scaled dot-product attention of (R, Tq, D) queries over (R, Tk, D) keys/values."""
    qh, kh, vh = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    scores = qh @ kh.transpose(2, 3) / math.sqrt(qh.shape[-1])
    if bias is not None:
        scores = scores + bias
    out = scores.softmax(-1) @ vh  # (R, H, Tq, D / H)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def head_membership(d: int, heads: int) -> torch.Tensor:
    """(D, H) 0/1: which head each of the D dimensions belongs to."""
    return (torch.arange(d)[:, None] // (d // heads) == torch.arange(heads)).float()


def _attend_few(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, member: torch.Tensor):
    """Attention of (..., D) queries over a few (..., T, D) keys/values each, without moving
    heads to an axis of their own: per-head dot products are a product with the (D, H)
    `head_membership`. A beam attends to at most `levels` positions, and per-(beam, head)
    matrix products of that size cost more in call overhead and transposes than in
    arithmetic (at 32 texts x 10 beams on 2 cores this made a step 8-10 % faster)."""
    scale = 1.0 / math.sqrt(member.shape[0] // member.shape[1])
    scores = (q[..., None, :] * k) @ (member * scale)  # (..., T, H)
    weights = scores.softmax(-2) @ member.T  # (..., T, D): each head's weight on its dims
    return (weights * v).sum(-2)


def _self_attention_qkv(layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    """(..., 3D): the norm-first layer's self-attention query, key and value of x (..., D)."""
    return F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)


def _cached_layer(
    layer: nn.TransformerDecoderLayer,
    x: torch.Tensor,
    qkv: torch.Tensor,
    past: torch.Tensor,
    memory: torch.Tensor,
    cross_bias: torch.Tensor,
    member: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A norm-first nn.TransformerDecoderLayer (eval) for one new position per beam.

    x (B, W, D); qkv (B, W, 3D) its `_self_attention_qkv`;
    past (B, W, 2, P, D) projected keys and values of the earlier positions; member the
    layer's `head_membership`.
    Returns the new x and the keys/values with this position appended (B, W, P + 1, D).
    """
    sa, ca = layer.self_attn, layer.multihead_attn
    heads = sa.num_heads
    q, k, v = qkv.chunk(3, dim=-1)
    keys = torch.cat([past[:, :, 0], k[:, :, None]], dim=2)  # (B, W, P + 1, D)
    values = torch.cat([past[:, :, 1], v[:, :, None]], dim=2)
    x = x + sa.out_proj(_attend_few(q, keys, values, member))
    wq, wk, wv = ca.in_proj_weight.chunk(3)
    bq, bk, bv = ca.in_proj_bias.chunk(3)
    cq = F.linear(layer.norm2(x), wq, bq)  # (B, W, D): all beams of a text attend together
    ck, cv = F.linear(memory, wk, bk), F.linear(memory, wv, bv)
    x = x + ca.out_proj(_attend(cq, ck, cv, heads, cross_bias))
    x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
    return x, keys, values


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
    "past": {0: "batch", 1: "beam", 3: "past"},
    "present": {0: "batch", 1: "beam", 3: "present"},
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
    level = torch.tensor([1, 1])
    past = torch.randn(2, 3, 2 * len(model.decoder.layers), 1, d)
    with torch.no_grad():
        _export_one(
            EncoderGraph(model), (ids, mask), paths["encoder"], ENCODER_INPUTS, ENCODER_OUTPUTS
        )
        _export_one(
            DecoderStepGraph(model),
            (memory, mask, prefix, level, past),
            paths["decoder_step"],
            DECODER_INPUTS,
            DECODER_OUTPUTS,
        )
    _fix_dims(paths["decoder_step"], "present", {2: past.shape[2], 4: d})


def _fix_dims(path: Path, output: str, dims: dict[int, int]) -> None:
    """Write the static sizes ONNX shape inference lost through a Concat into the graph's
    declared output (Triton configs are checked against these shapes)."""
    import onnx

    graph = onnx.load(str(path))
    (value,) = [v for v in graph.graph.output if v.name == output]
    for axis, size in dims.items():
        dim = value.type.tensor_type.shape.dim[axis]
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    onnx.save(graph, str(path))
