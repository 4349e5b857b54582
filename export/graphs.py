"""The three ONNX graphs of a bundle: the encoder, the decoder's first step, and its later
steps.

The first step (level 0) reads the encoder states: it computes every decoder layer's
cross-attention keys and values once per text (`cross_kv`) and the first code's logits. The
later steps take `cross_kv` instead of the states, so no level recomputes them. A step takes a
fixed-width prefix (one column per level) and the level per text; columns at or after a
text's level are ignored: the decoder is causal, so the representation at position `level`
only sees the start input and codes `0 … level-1`. The I/O contract is written down in
docs/bundle.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from service.bundle import GRAPH_FILES
from training.indexer.model import SemanticIndexer, additive_mask

OPSET = 17
EXPORTER = "torch.onnx legacy (TorchScript) exporter, opset 17"
ENCODER_INPUTS = ["input_ids", "attention_mask"]
ENCODER_OUTPUTS = ["memory"]
FIRST_INPUTS = ["memory", "attention_mask"]
FIRST_OUTPUTS = ["logits", "present", "cross_kv"]
DECODER_INPUTS = ["cross_kv", "attention_mask", "prefix", "level", "past"]
DECODER_OUTPUTS = ["logits", "present"]


class EncoderGraph(nn.Module):
    """Token ids + mask -> encoder states: embeddings and every MiniLM layer (frozen + tuned),
    with the padding packed out.

    The layers' matrix products (all but the attention itself) run over the texts' real tokens
    only, taken out of the padded (batch, seq) grid into one (tokens, hidden) matrix; the
    attention puts them back in the grid, where each text sees its own tokens. Those products
    are nearly all of the encoder's work, and a micro-batch of queries padded to its longest is
    about a third padding (docs/capacity-log.md). Padded positions of `memory`
    are zeros.
    """

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        b, s = input_ids.shape
        flat = attention_mask.reshape(-1)
        keep = torch.nonzero(flat).reshape(-1)  # grid place of each real token
        grid = torch.cumsum(flat, 0) * flat  # grid place -> 1 + its packed row; 0: padding
        h = m.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        x = h.reshape(b * s, -1).index_select(0, keep)
        bias = additive_mask(attention_mask, x.dtype)
        for layer in [*m.lower, *m.upper]:
            x = _packed_bert_layer(layer, x, keep, grid, bias)
        return _to_grid(x, grid).reshape(b, s, -1)


def _to_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Packed rows (T, F) -> (B * S, F) in the padded grid, zero rows at the padding."""
    return torch.cat([x.new_zeros(1, x.shape[1]), x]).index_select(0, grid)


def _packed_bert_layer(
    layer: nn.Module, x: torch.Tensor, keep: torch.Tensor, grid: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """A BERT layer (HF `BertLayer`, eager attention, eval mode) over packed tokens x (T, D):
    the projections on the packed rows, the attention in the (B, heads, S, S) grid."""
    att = layer.attention.self
    heads, size = att.num_attention_heads, att.attention_head_size
    b, s = bias.shape[0], bias.shape[-1]
    projections = (att.query, att.key, att.value)  # as one product over the packed rows
    weight = torch.cat([f.weight for f in projections])
    qkv = _to_grid(F.linear(x, weight, torch.cat([f.bias for f in projections])), grid)
    q, k, v = qkv.reshape(b, s, 3, heads, size).permute(2, 0, 3, 1, 4).unbind(0)
    weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * att.scaling + bias, dim=-1)
    ctx = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(b * s, heads * size)
    a = layer.attention.output(ctx.index_select(0, keep), x)
    return layer.output(layer.intermediate(a), a)


class _DecoderGraph(nn.Module):
    """What both decoder graphs share: the layers for one new position per beam, and the
    logits. The codebooks are stored normalised, divided by the temperature and transposed,
    so the logits are one matrix product with no per-text copy."""

    def __init__(self, model: SemanticIndexer):
        super().__init__()
        self.model = model
        layer = model.decoder.layers[0]
        with torch.no_grad():
            books = F.normalize(model.codebooks.detach(), dim=-1) / model.cfg.code_temperature
            self.register_buffer("books", books.transpose(1, 2).contiguous())  # (L, D, K)
        self.codebook_size, self.dim = model.codebooks.shape[1], model.dim
        self.heads = layer.self_attn.num_heads
        self.register_buffer("member", head_membership(self.dim, self.heads))

    def _layers(
        self,
        x: torch.Tensor,
        qkv: torch.Tensor,
        past: torch.Tensor | None,
        cross_kv: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, W, D) and its first-layer self-attention `qkv` through every layer:
        (output (B, W, D), present (B, W, 2N, P + 1, D))."""
        layers = self.model.decoder.layers
        bias = (attention_mask == 0)[:, None, None, :].float() * torch.finfo(x.dtype).min
        present = []
        for i, layer in enumerate(layers):
            if i:  # the first layer's came from the tables or the start input
                qkv = _self_attention_qkv(layer, x)
            x, k, v = _cached_layer(
                layer,
                x,
                qkv,
                None if past is None else _layer_pair(past, i, len(layers), axis=2),
                _layer_pair(cross_kv, i, len(layers), axis=1),
                bias,
                self.member,
            )
            present += [k, v]
        return x, torch.stack(present, dim=2)

    def _logits(self, x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        """(B, W, D) decoder outputs -> (B, W, K) cosine to each code / temperature."""
        b, w, _ = x.shape
        rep = F.normalize(self.model.out_norm(x), dim=-1).reshape(-1, self.dim)  # (B * W, D)
        # one spare zero row: ONNX Runtime multiplies a single row by a non-constant matrix
        # (the later steps' codebook, picked by `level`) with a matrix-vector kernel whose
        # sums differ in the last bits from its matrix kernel's, so a lone row would not get
        # the bits it gets in a batch; from two rows on, every row's result is the same
        # whatever the row count. The first step's codebook is constant; it keeps the row
        # too, and tests/test_decoder_graph.py checks both graphs alone against batched.
        rep = torch.cat([rep, rep.new_zeros(1, self.dim)])
        return (rep @ book)[:-1].reshape(b, w, self.codebook_size)


class DecoderFirstGraph(_DecoderGraph):
    """The decoder at level 0, one beam per text:
    (memory (B, S, D), mask (B, S)) -> logits (B, 1, K), present (B, 1, 2N, 1, D),
    cross_kv (B, 2N, H, S, D / H).

    `cross_kv` holds, per decoder layer i, the cross-attention keys (entry 2i) and values
    (2i + 1) of the text's encoder states, split into heads: every later step reads them
    instead of projecting the states again."""

    def forward(
        self, memory: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        start = m.start_input(memory, attention_mask) + m.step_emb.weight[0]  # (B, D)
        x = start[:, None]  # (B, 1, D)
        qkv = _self_attention_qkv(m.decoder.layers[0], x)
        cross = []
        for layer in m.decoder.layers:
            ca = layer.multihead_attn
            _, wk, wv = ca.in_proj_weight.chunk(3)
            _, bk, bv = ca.in_proj_bias.chunk(3)
            cross += [_heads(F.linear(memory, wk, bk), self.heads)]  # (B, H, S, D / H)
            cross += [_heads(F.linear(memory, wv, bv), self.heads)]
        cross_kv = torch.stack(cross, dim=1)  # (B, 2N, H, S, D / H)
        x, present = self._layers(x, qkv, None, cross_kv, attention_mask)
        return self._logits(x, self.books[0]), present, cross_kv


class DecoderStepGraph(_DecoderGraph):
    """A later decoder step with a key/value cache, W beams per text, level >= 1:
    (cross_kv (B, 2N, H, S, D / H), mask (B, S), prefix (B, W, L), level (B,),
    past (B, W, 2N, P, D)) -> logits (B, W, K), present (B, W, 2N, P + 1, D).

    Only the new position (`level`) runs: its input is the embedding of the code chosen at
    level-1 and its self-attention reads the earlier positions' keys and values from `past`
    (P = level; N decoder layers, keys then values per layer). All texts of a call are at the
    same level (P is one axis).

    What depends only on (level, code) is computed once here rather than per beam and call:
    a beam's input (code projection + step embedding) and the first layer's self-attention
    query/key/value of it are looked up in tables of L x K rows (row level * K + code; the
    level-0 rows are unused). The tables are taken from the model's weights when the graph is
    built.
    """

    def __init__(self, model: SemanticIndexer):
        super().__init__(model)
        m, layer = model, model.decoder.layers[0]
        levels, k, d = m.codebooks.shape
        with torch.no_grad():
            inputs = m.codebooks.new_zeros(levels, k, d)
            for level in range(1, levels):
                chosen = m.code_proj(m.codebooks[level - 1])
                inputs[level] = chosen + m.step_emb.weight[level]
            qkv = _self_attention_qkv(layer, inputs)
        self.register_buffer("inputs", inputs.reshape(levels * k, d))
        self.register_buffer("inputs_qkv", qkv.reshape(levels * k, 3 * d))

    def forward(
        self,
        cross_kv: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor,
        level: torch.Tensor,
        past: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, w, _ = prefix.shape
        # the level whose code this position is fed (clamped: a one-level model's step graph
        # is exported at level 0, to complete the bundle, and never run)
        last = (level - 1).clamp(min=0)
        code = prefix.gather(2, last[:, None, None].expand(b, w, 1))[:, :, 0]  # (B, W)
        row = level[:, None] * self.codebook_size + code  # its row in the tables
        x, present = self._layers(
            self.inputs[row], self.inputs_qkv[row], past, cross_kv, attention_mask
        )
        return self._logits(x, self.books[level[0]]), present  # one level per call


def _layer_pair(t: torch.Tensor, i: int, layers: int, axis: int) -> torch.Tensor:
    """Entries 2i and 2i+1 (layer i's keys and values) of `t` along `axis`; with one layer,
    `t` itself (a Slice would copy it in ONNX Runtime)."""
    return t if layers == 1 else t.narrow(axis, 2 * i, 2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(R, T, D) -> (R, H, T, D / H)."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


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


def _cross_attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The W beams (B, W, D) of each text attending together over its (B, H, S, D / H)
    keys and values. Keys in that layout make the product's transpose one ONNX Runtime
    fuses into the matrix product (stored as (B, S, H, D / H) it was a separate Transpose of
    every text's keys at every step)."""
    b, w, _ = q.shape
    qh = _heads(q, keys.shape[1])  # (B, H, W, D / H)
    scores = qh @ keys.transpose(-1, -2) / math.sqrt(qh.shape[-1]) + bias
    return (scores.softmax(-1) @ values).transpose(1, 2).reshape(b, w, -1)


def _self_attention_qkv(layer: nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    """(..., 3D): the norm-first layer's self-attention query, key and value of x (..., D)."""
    return F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)


def _cached_layer(
    layer: nn.TransformerDecoderLayer,
    x: torch.Tensor,
    qkv: torch.Tensor,
    past: torch.Tensor | None,
    cross_kv: torch.Tensor,
    cross_bias: torch.Tensor,
    member: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A norm-first nn.TransformerDecoderLayer (eval) for one new position per beam.

    x (B, W, D); qkv (B, W, 3D) its `_self_attention_qkv`; past (B, W, 2, P, D) projected
    keys and values of the earlier positions (None: there are none); cross_kv
    (B, 2, H, S, D / H) the layer's cross-attention keys and values; member the layer's
    `head_membership`.
    Returns the new x and the keys/values with this position appended (B, W, P + 1, D).
    """
    q, k, v = qkv.chunk(3, dim=-1)
    if past is None:
        keys, values = k[:, :, None], v[:, :, None]  # (B, W, 1, D)
    else:
        keys = torch.cat([past[:, :, 0], k[:, :, None]], dim=2)  # (B, W, P + 1, D)
        values = torch.cat([past[:, :, 1], v[:, :, None]], dim=2)
    x = x + layer.self_attn.out_proj(_attend_few(q, keys, values, member))
    ca = layer.multihead_attn
    wq, _, _ = ca.in_proj_weight.chunk(3)
    bq, _, _ = ca.in_proj_bias.chunk(3)
    cq = F.linear(layer.norm2(x), wq, bq)  # (B, W, D): all beams of a text attend together
    x = x + ca.out_proj(_cross_attend(cq, cross_kv[:, 0], cross_kv[:, 1], cross_bias))
    x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
    return x, keys, values


def export_graphs(model: SemanticIndexer, out: Path) -> dict[str, Path]:
    """Write encoder.onnx, decoder_first.onnx and decoder_step.onnx into `out`; returns
    {role: path}."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in GRAPH_FILES.items()}
    # MultiheadAttention's fused fast path (`_native_multi_head_attention`) has no ONNX
    # symbolic: export the plain composition of matmuls and softmax instead.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export_all(model, paths)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.eval()  # the exporter restores the wrappers' mode, which would leave dropout on
    return paths


# dynamic axes of every graph input/output (docs/bundle.md)
AXES = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
    "memory": {0: "batch", 1: "seq"},
    "cross_kv": {0: "batch", 3: "seq"},
    "prefix": {0: "batch", 1: "beam"},
    "level": {0: "batch"},
    "logits": {0: "batch", 1: "beam"},
    "past": {0: "batch", 1: "beam", 3: "past"},
    "present": {0: "batch", 1: "beam", 3: "present"},
}


def _export_one(
    module: nn.Module,
    example: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]] | None = None,
) -> None:
    axes = AXES if axes is None else axes
    torch.onnx.export(
        module.eval(),
        example,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={name: axes[name] for name in inputs + outputs if name in axes},
        opset_version=OPSET,
        dynamo=False,
    )


def _export_all(model: SemanticIndexer, paths: dict[str, Path]) -> None:
    levels, d = model.cfg.levels, model.dim
    entries = 2 * len(model.decoder.layers)
    heads = model.decoder.layers[0].self_attn.num_heads
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7987, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    memory = torch.randn(2, ids.shape[1], d)
    cross_kv = torch.randn(2, entries, heads, ids.shape[1], d // heads)
    prefix = torch.zeros(2, 3, levels, dtype=torch.long)
    at = min(1, levels - 1)  # a later level; a one-level model has none
    level = torch.tensor([at, at])
    past = torch.randn(2, 3, entries, at, d)
    # the first step has one beam per text and one position: only its batch axis varies
    first_axes = {**AXES, "logits": {0: "batch"}, "present": {0: "batch"}}
    with torch.no_grad():
        _export_one(
            EncoderGraph(model), (ids, mask), paths["encoder"], ENCODER_INPUTS, ENCODER_OUTPUTS
        )
        _export_one(
            DecoderFirstGraph(model),
            (memory, mask),
            paths["decoder_first"],
            FIRST_INPUTS,
            FIRST_OUTPUTS,
            first_axes,
        )
        _export_one(
            DecoderStepGraph(model),
            (cross_kv, mask, prefix, level, past),
            paths["decoder_step"],
            DECODER_INPUTS,
            DECODER_OUTPUTS,
        )
    codebook = model.codebooks.shape[1]
    _fix_dims(paths["encoder"], "memory", {2: d})  # lost through the packed rows' gathers
    _fix_dims(paths["decoder_first"], "logits", {1: 1, 2: codebook})
    _fix_dims(paths["decoder_first"], "present", {1: 1, 2: entries, 3: 1, 4: d})
    _fix_dims(paths["decoder_first"], "cross_kv", {1: entries, 2: heads, 4: d // heads})
    _fix_dims(paths["decoder_step"], "present", {2: entries, 4: d})


def _fix_dims(path: Path, output: str, dims: dict[int, int]) -> None:
    """Write the static sizes ONNX shape inference lost (through a Concat, or a reshape to
    the traced beam count) into the graph's declared output (Triton configs are checked
    against these shapes)."""
    import onnx

    graph = onnx.load(str(path))
    (value,) = [v for v in graph.graph.output if v.name == output]
    for axis, size in dims.items():
        dim = value.type.tensor_type.shape.dim[axis]
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    onnx.save(graph, str(path))
