"""Triton Python-backend model that runs one bundle ONNX graph with ONNX Runtime on CPU.

One implementation serves every model (`sid_encoder`, `sid_decoder_first`, `sid_decoder`):
they differ only in the ONNX file and the tensor names, which come from the model config
(`args["model_config"]`) and the graph, so export/triton_repo.py copies this file unchanged
into every version directory.

Dynamic batching hands `execute` several requests at once. They are concatenated along the
batch axis and run as one ONNX Runtime call. Requests may differ in the graph's other named
dynamic axes (`seq`; the decoder's `beam`; the config marks those inputs `allow_ragged_batch`,
but not the decoder's `past`, whose length must match): inputs are right-padded to the
longest request along each of them (with the `pad_values` parameter, default 0, so padded
tokens have attention mask 0 and padded beams are valid code-0 prefixes), and each output
axis of the same name is cut back to the request's own size. The bundle graphs are mask-aware
and treat beams independently (docs/bundle.md), so padding never changes a real position's
result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Per request: its inputs as the graph wants them, its row count, and its size along each
# named dynamic axis of the graph (e.g. {"seq": 7, "beam": 3}).
_Request = tuple[dict[str, np.ndarray], int, dict[str, int]]


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: np.dtype
    # Per-row shape after any config reshape; -1 where the size varies.
    dims: tuple[int, ...]
    # Named dynamic axes of the graph tensor other than the batch axis: {axis: name}.
    axes: dict[int, str]


def _tensor(cfg: dict[str, Any], graph_shape: list[Any]) -> _Tensor:
    dims = tuple(int(d) for d in cfg["dims"])
    if "reshape" in cfg:
        dims = tuple(int(d) for d in cfg["reshape"].get("shape", []))
    axes = {a: str(d) for a, d in enumerate(graph_shape) if a > 0 and not isinstance(d, int)}
    dtype = np.dtype(pb_utils.triton_string_to_numpy(cfg["data_type"]))
    return _Tensor(cfg["name"], dtype, dims, axes)


def pad_concat(
    parts: list[np.ndarray], axes: dict[int, str], sizes: dict[str, int], pad_value: float
) -> np.ndarray:
    """Concatenate request arrays along rows, right-padding each named axis to `sizes`."""
    padded = []
    for p in parts:
        widths = [(0, 0)] * p.ndim
        for axis, name in axes.items():
            widths[axis] = (0, sizes[name] - p.shape[axis])
        if any(w for _, w in widths):
            p = np.pad(p, widths, constant_values=pad_value)
        padded.append(p)
    return padded[0] if len(padded) == 1 else np.concatenate(padded, axis=0)


class TritonPythonModel:
    """Triton entry point: `initialize` opens the ONNX session, `execute` runs batches."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.model_name = config["name"]
        self.pad_values: dict[str, float] = json.loads(params.get("pad_values", "{}"))

        path = Path(args["model_repository"]) / args["model_version"]
        path = path / params.get("onnx_file", "model.onnx")
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_num_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        # the encoder's and decoder's instances share the cores: an idle pool must not spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # Fail the model load, not every request, when config and graph disagree.
        graph_in = {i.name: i.shape for i in self.session.get_inputs()}
        graph_out = {o.name: o.shape for o in self.session.get_outputs()}
        cfg_in = {t["name"]: t for t in config["input"]}
        cfg_out = {t["name"]: t for t in config["output"]}
        if sorted(graph_in) != sorted(cfg_in) or sorted(graph_out) != sorted(cfg_out):
            raise pb_utils.TritonModelException(
                f"{self.model_name}: config I/O {sorted(cfg_in)} -> {sorted(cfg_out)} does not "
                f"match {path.name}: {sorted(graph_in)} -> {sorted(graph_out)}"
            )
        self.inputs = [_tensor(cfg_in[n], shape) for n, shape in graph_in.items()]
        self.outputs = [_tensor(cfg_out[n], shape) for n, shape in graph_out.items()]
        # An output axis that no input has (the decoder's `present`, one longer than `past`)
        # is not cut back per request: it must follow from inputs that are not ragged, so it
        # is the same for every request of a batch (`past` has no allow_ragged_batch).

    def _read(self, request: Any) -> _Request:
        feeds: dict[str, np.ndarray] = {}
        rows: int | None = None
        sizes: dict[str, int] = {}
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise ValueError(f"{self.model_name}: missing input '{t.name}'")
            array = tensor.as_numpy()
            if -1 not in t.dims:  # applies a config reshape, e.g. level (rows, 1) -> (rows,)
                array = array.reshape((array.shape[0], *t.dims))
            if rows is not None and array.shape[0] != rows:
                raise ValueError(f"{self.model_name}: inputs disagree on the batch size")
            rows = array.shape[0]
            for axis, name in t.axes.items():
                if sizes.setdefault(name, array.shape[axis]) != array.shape[axis]:
                    raise ValueError(f"{self.model_name}: inputs disagree on the '{name}' size")
            feeds[t.name] = array
        assert rows is not None
        return feeds, rows, sizes

    def _run(self, batch: list[_Request]) -> list[list[Any]]:
        """Run requests as one ONNX call; returns each request's output tensors."""
        longest: dict[str, int] = {}
        for _, _, sizes in batch:
            for name, size in sizes.items():
                longest[name] = max(longest.get(name, 0), size)
        feeds = {
            t.name: pad_concat(
                [f[t.name] for f, _, _ in batch], t.axes, longest, self.pad_values.get(t.name, 0)
            )
            for t in self.inputs
        }
        results = self.session.run([t.name for t in self.outputs], feeds)
        per_request: list[list[Any]] = []
        start = 0
        for _, rows, sizes in batch:
            tensors = []
            for t, full in zip(self.outputs, results, strict=True):
                index = [slice(None)] * full.ndim
                index[0] = slice(start, start + rows)
                for axis, name in t.axes.items():
                    if name in sizes:
                        index[axis] = slice(0, sizes[name])
                part = np.ascontiguousarray(full[tuple(index)], dtype=t.dtype)
                tensors.append(pb_utils.Tensor(t.name, part))
            per_request.append(tensors)
            start += rows
        return per_request

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; a bad request fails alone."""
        responses: list[Any] = [None] * len(requests)
        good: list[int] = []
        batch: list[_Request] = []
        for i, request in enumerate(requests):
            try:
                batch.append(self._read(request))
                good.append(i)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(e))
                )
        if batch:
            outputs: list[Any]
            try:
                outputs = self._run(batch)
            except Exception:
                # Something in the batch broke the graph (e.g. a code outside the codebook):
                # run each request alone so that only the offending ones get an error.
                outputs = []
                for one in batch:
                    try:
                        outputs.append(self._run([one])[0])
                    except Exception as e:
                        outputs.append(pb_utils.TritonError(f"{self.model_name}: {e}"))
            for i, out in zip(good, outputs, strict=True):
                if isinstance(out, list):
                    responses[i] = pb_utils.InferenceResponse(output_tensors=out)
                else:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=out)
        return responses

    def finalize(self) -> None:
        self.session = None
