"""Triton repositories: rendered configs match the graph contract, model.py batches exactly,
and a real tritonserver (CPU variant) answers HTTP and gRPC as in-process ONNX Runtime does.

The server serves the real export of the tiny random model (or SIDSERVE_TRITON_BUNDLE); sizes
come from the served bundle's manifest.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from export.triton_repo import MARKER, MODELS, TEMPLATES, materialise, read_manifest, render_config
from tests.triton_server import TritonServer, variant_bundle

ATOL = 1e-5
ONNX_TO_TRITON = {onnx.TensorProto.INT64: mc.TYPE_INT64, onnx.TensorProto.FLOAT: mc.TYPE_FP32}
ALL_TEMPLATES = {
    "gpu": TEMPLATES,
    "cpu": TEMPLATES / "cpu",
    "tensorrt_plan": TEMPLATES / "variants" / "tensorrt",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """In-process ONNX Runtime on the bundle's own graphs (what Triton must reproduce), and
    inputs that follow the bundle's contract."""

    encoder: ort.InferenceSession
    first: ort.InferenceSession
    decoder: ort.InferenceSession
    manifest: dict[str, Any]

    @property
    def hidden(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def levels(self) -> int:
        return int(self.manifest["levels"])

    @property
    def codebook(self) -> int:
        return max(self.manifest["codebook_sizes"])

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.encoder.run(["memory"], feeds)[0]

    def first_step(self, memory: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The first decoder step's outputs by name."""
        names = ["logits", "present", "cross_kv"]
        feeds = {"memory": memory, "attention_mask": attention_mask}
        return dict(zip(names, self.first.run(names, feeds), strict=True))

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # The graph takes level as (batch,); Triton clients send (batch, 1).
        return self.decoder.run(["logits"], {**feeds, "level": feeds["level"][:, 0]})[0]

    def encoder_inputs(self, rng: np.random.Generator, rows: int, seq: int) -> dict[str, Any]:
        """[CLS] tokens [SEP] rows, right-padded with pad_id; the first row fills all of seq."""
        tok = self.manifest["tokenizer"]
        ids = np.full((rows, seq), tok["pad_id"], np.int64)
        mask = np.zeros((rows, seq), np.int64)
        lengths = rng.integers(2, seq + 1, size=rows)
        lengths[0] = seq
        first = max(tok["cls_id"], tok["sep_id"], tok["pad_id"]) + 1  # ordinary token ids
        for r, n in enumerate(lengths):
            ids[r, :n] = [tok["cls_id"], *rng.integers(first, first + 50, n - 2), tok["sep_id"]]
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @property
    def cache_entries(self) -> int:
        return int(self.manifest["decoder"]["cache_entries"])

    def decoder_inputs(
        self, rng: np.random.Generator, rows: int, seq: int, beam: int, level: int = 1
    ) -> dict[str, np.ndarray]:
        """One later decoder step at `level` (>= 1) for `rows` texts of `seq` tokens with `beam`
        beams each (their first step's cross-attention keys and values, a random key/value
        cache of the `level` earlier positions)."""
        enc = self.encoder_inputs(rng, rows, seq)
        past = rng.standard_normal((rows, beam, self.cache_entries, level, self.hidden))
        first = self.first_step(self.encode(**enc), enc["attention_mask"])
        return {
            "cross_kv": first["cross_kv"],
            "attention_mask": enc["attention_mask"],
            "prefix": rng.integers(0, self.codebook, size=(rows, beam, self.levels)),
            "level": np.full((rows, 1), level, dtype=np.int64),
            "past": past.astype(np.float32),
        }


@pytest.fixture(scope="module")
def reference(triton_bundle_dir: Path) -> Reference:
    def session(name: str) -> ort.InferenceSession:
        path = str(triton_bundle_dir / name)
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    manifest = read_manifest(triton_bundle_dir)
    graphs = manifest["graphs"]
    return Reference(
        session(graphs["encoder"]),
        session(graphs["decoder_first"]),
        session(graphs["decoder_step"]),
        manifest,
    )


def make_inputs(module: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    """tritonclient InferInputs (http or grpc module) for named numpy arrays."""
    inputs = []
    for name, array in arrays.items():
        datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}[array.dtype]
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer(module: Any, client: Any, model: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    output = "memory" if model == "sid_encoder" else "logits"
    result = client.infer(
        model, make_inputs(module, arrays), outputs=[module.InferRequestedOutput(output)]
    )
    return result.as_numpy(output)


def counts(server: TritonServer, model: str, at_least: int = 0) -> tuple[int, int]:
    """(inference_count, execution_count): batch rows inferred, and executions for them.

    Triton updates its statistics just after it sends a response, so a read right after the
    last answer can miss the last requests: wait (bounded) until `at_least` rows are counted.
    """
    client = httpclient.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + 10
    try:
        while True:
            stats = client.get_inference_statistics(model)["model_stats"][0]
            if int(stats["inference_count"]) >= at_least or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def graph_io(path: Path) -> dict[str, tuple[int, list[int | str]]]:
    """name -> (onnx elem type, shape with dim_param names for dynamic axes)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    io = {}
    for value in [*graph.input, *graph.output]:
        t = value.type.tensor_type
        io[value.name] = (t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim])
    return io


def assert_config_matches_graph(config: mc.ModelConfig, graph: Path) -> None:
    """Names, dtypes and shapes of the config are those of the ONNX graph (docs/bundle.md)."""
    io = graph_io(graph)
    tensors = [*config.input, *config.output]
    assert sorted(t.name for t in tensors) == sorted(io), config.name
    assert config.max_batch_size > 0
    for t in tensors:
        elem, shape = io[t.name]
        assert ONNX_TO_TRITON[elem] == t.data_type, t.name
        model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        assert isinstance(shape[0], str), f"{t.name}: batch axis must be dynamic"
        assert len(model_dims) == len(shape) - 1, t.name
        for dim, want in zip(model_dims, shape[1:], strict=True):
            assert dim == (-1 if isinstance(want, str) else want), (t.name, dim, want)


# --------------------------------------------------------------------------------------------
# Repository and configs (no server)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(ALL_TEMPLATES))
def test_every_template_renders_to_a_config_matching_the_graphs(
    variant: str, triton_bundle_dir: Path
) -> None:
    manifest = read_manifest(triton_bundle_dir)
    for model, key in MODELS.items():
        text = render_config(ALL_TEMPLATES[variant] / model / "config.pbtxt", manifest)
        config = parse_config(text)
        assert config.name == model
        assert_config_matches_graph(config, triton_bundle_dir / manifest["graphs"][key])
        assert config.HasField("dynamic_batching")
        assert config.version_policy.latest.num_versions == 1
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["sid_model_version"] == manifest["model_version"]
        kinds = [g.kind for g in config.instance_group]
        gpu = mc.ModelInstanceGroup.KIND_GPU
        assert kinds == [mc.ModelInstanceGroup.KIND_CPU if variant == "cpu" else gpu]
        if variant == "gpu":
            (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
            assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
            assert int(trt.parameters["max_workspace_size_bytes"]) > 0


def test_materialise_is_idempotent_and_versions_new_bundles(
    triton_bundle_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    version = read_manifest(triton_bundle_dir)["model_version"]
    assert materialise(triton_bundle_dir, repo, "cpu") == repo
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    materialise(triton_bundle_dir, repo, "cpu")
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()} == before
    for model in MODELS:
        assert sorted(p.name for p in (repo / model).iterdir()) == ["1", "config.pbtxt"]
        files = sorted(p.name for p in (repo / model / "1").iterdir())
        assert files == ["model.onnx", "model.py", MARKER]
        assert (repo / model / "1" / MARKER).read_text().strip() == version

    # The same bundle as the GPU variant reuses version 1 and drops the Python model.
    materialise(triton_bundle_dir, repo, "gpu")
    assert not (repo / "sid_encoder" / "1" / "model.py").exists()
    assert 'backend: "onnxruntime"' in (repo / "sid_encoder" / "config.pbtxt").read_text()

    other = variant_bundle(triton_bundle_dir, tmp_path / "other")
    other_version = read_manifest(other)["model_version"]
    assert other_version != version
    materialise(other, repo, "cpu")
    assert (repo / "sid_decoder" / "2" / MARKER).read_text().strip() == other_version
    assert "latest: { num_versions: 1 }" in (repo / "sid_decoder" / "config.pbtxt").read_text()
    materialise(triton_bundle_dir, repo, "cpu")  # back to the first: its version, not a new one
    assert not (repo / "sid_decoder" / "3").exists()
    config = parse_config((repo / "sid_decoder" / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1]  # served, though not newest
    assert config.parameters["sid_model_version"].string_value == version
    with pytest.raises(FileExistsError, match="model_version"):
        materialise(other, repo, "cpu", version=1)
    materialise(other, repo, "cpu", version=7)
    assert (repo / "sid_encoder" / "7" / MARKER).read_text().strip() == other_version


def test_materialise_refuses_damaged_bundles_and_the_template_dir(
    triton_bundle_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(triton_bundle_dir, bundle)
    with pytest.raises(ValueError, match="template"):
        materialise(bundle, TEMPLATES, "gpu")
    with pytest.raises(ValueError, match="variant"):
        materialise(bundle, tmp_path / "repo", "tpu")  # type: ignore[arg-type]

    data = bytearray((bundle / "decoder_step.onnx").read_bytes())
    data[-1] ^= 1
    (bundle / "decoder_step.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="decoder_step.onnx: sha256"):
        materialise(bundle, tmp_path / "repo", "cpu")
    (bundle / "decoder_step.onnx").write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="bytes"):
        materialise(bundle, tmp_path / "repo", "cpu")
    (bundle / "decoder_step.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="decoder_step.onnx"):
        materialise(bundle, tmp_path / "repo", "cpu")

    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        materialise(bundle, tmp_path / "repo", "cpu")
    assert not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------------------------
# model.py without a server: a stand-in for triton_python_backend_utils
# --------------------------------------------------------------------------------------------


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor  # type: ignore[attr-defined]
    pb.InferenceResponse = _Response  # type: ignore[attr-defined]
    pb.TritonError = str  # type: ignore[attr-defined]
    pb.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: (  # type: ignore[attr-defined]
        _Tensor(name, request[name]) if name in request else None
    )
    pb.triton_string_to_numpy = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}.get  # type: ignore[attr-defined]
    return pb


def load_python_model(repo: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The materialised model.py of `model`, initialised as the Python backend would."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"_triton_{model}", repo / model / "1/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    config = parse_config((repo / model / "config.pbtxt").read_text())
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(as_json),
            "model_repository": str(repo / model),
            "model_version": "1",
        }
    )
    return instance


class _CountingSession:
    """Wraps an ONNX Runtime session to count how many runs a batch took."""

    def __init__(self, session: Any) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_python_model_pads_a_ragged_batch_and_splits_it_exactly(
    triton_repo_dir: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests of different lengths (and beams) in one execute(): one ONNX run, each answer
    cut back to its own shape and equal to running that request alone."""
    rng = np.random.default_rng(4)
    encoder = load_python_model(triton_repo_dir, "sid_encoder", monkeypatch)
    encoder.session = counting = _CountingSession(encoder.session)
    requests = [reference.encoder_inputs(rng, rows, seq) for rows, seq in [(1, 3), (2, 9), (3, 5)]]
    responses = encoder.execute(requests)
    assert counting.runs == 1
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        want = reference.encode(**request)
        assert response.outputs["memory"].shape == want.shape
        np.testing.assert_allclose(response.outputs["memory"], want, atol=ATOL, rtol=0)

    first = load_python_model(triton_repo_dir, "sid_decoder_first", monkeypatch)
    first.session = counting = _CountingSession(first.session)
    requests = [
        {"memory": reference.encode(**enc), "attention_mask": enc["attention_mask"]}
        for enc in (reference.encoder_inputs(rng, rows, seq) for rows, seq in [(2, 4), (1, 8)])
    ]
    responses = first.execute(requests)
    assert counting.runs == 1
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        for name, want in reference.first_step(**request).items():
            assert response.outputs[name].shape == want.shape, name
            np.testing.assert_allclose(response.outputs[name], want, atol=ATOL, rtol=0)

    decoder = load_python_model(triton_repo_dir, "sid_decoder", monkeypatch)
    decoder.session = counting = _CountingSession(decoder.session)
    shapes = [(1, 2, 1), (2, 7, 3), (3, 4, 2)]
    requests = [reference.decoder_inputs(rng, *shape) for shape in shapes]
    responses = decoder.execute(requests)
    assert counting.runs == 1
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        want = reference.step(request)
        assert response.outputs["logits"].shape == want.shape
        np.testing.assert_allclose(response.outputs["logits"], want, atol=ATOL, rtol=0)

    # A malformed request and one the graph rejects fail alone; the rest are still exact.
    broken = dict(requests[0], attention_mask=requests[0]["attention_mask"][:, :1])
    out_of_range = {k: v.copy() for k, v in requests[1].items()}
    out_of_range["prefix"][0, 0, 0] = 10**6
    responses = decoder.execute([broken, out_of_range, requests[2]])
    assert "seq" in responses[0].error and responses[1].error
    np.testing.assert_allclose(
        responses[2].outputs["logits"], reference.step(requests[2]), atol=ATOL, rtol=0
    )


# --------------------------------------------------------------------------------------------
# The real server
# --------------------------------------------------------------------------------------------


def test_server_serves_the_bundle_with_dynamic_batching(
    triton_server: TritonServer, triton_bundle_dir: Path
) -> None:
    model_version = read_manifest(triton_bundle_dir)["model_version"]
    client = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        assert client.is_server_ready()
        for model in MODELS:
            assert client.is_model_ready(model, "1")
            config = client.get_model_config(model)
            assert config["max_batch_size"] > 0 and "dynamic_batching" in config
            assert config["parameters"]["sid_model_version"]["string_value"] == model_version
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_matches_onnxruntime(
    protocol: str, triton_server: TritonServer, reference: Reference
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    client = module.InferenceServerClient(url)
    rng = np.random.default_rng(1)
    try:
        for rows, seq, beam in [(1, 2, 1), (3, 9, 4), (5, 12, 10)]:
            enc = reference.encoder_inputs(rng, rows, seq)
            memory = infer(module, client, "sid_encoder", enc)
            assert memory.shape == (rows, seq, reference.hidden)
            assert memory.dtype == np.float32
            np.testing.assert_allclose(memory, reference.encode(**enc), atol=ATOL, rtol=0)

            first = {"memory": memory, "attention_mask": enc["attention_mask"]}
            result = client.infer(
                "sid_decoder_first",
                make_inputs(module, first),
                outputs=[module.InferRequestedOutput("cross_kv")],
            )
            want = reference.first_step(**first)["cross_kv"]
            np.testing.assert_allclose(result.as_numpy("cross_kv"), want, atol=ATOL, rtol=0)

            dec = reference.decoder_inputs(rng, rows, seq, beam)
            logits = infer(module, client, "sid_decoder", dec)
            assert logits.shape == (rows, beam, reference.codebook)
            assert logits.dtype == np.float32
            np.testing.assert_allclose(logits, reference.step(dec), atol=ATOL, rtol=0)
    finally:
        client.close()


def test_concurrent_encoder_requests_of_different_lengths_are_batched(
    triton_server: TritonServer, reference: Reference
) -> None:
    """16 single-row requests of 8 different lengths at once over HTTP: the dynamic batcher
    runs several in one execution (model.py pads them) and every answer is still exact."""
    n = 16
    rng = np.random.default_rng(2)
    requests = [reference.encoder_inputs(rng, 1, 3 + i % 8) for i in range(n)]
    barrier = threading.Barrier(n)

    def call(arrays: dict[str, np.ndarray]) -> np.ndarray:
        client = httpclient.InferenceServerClient(triton_server.http_url)
        try:
            barrier.wait(timeout=30)
            return infer(httpclient, client, "sid_encoder", arrays)
        finally:
            client.close()

    inferred, executed = counts(triton_server, "sid_encoder")
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(call, requests))
    inferred_after, executed_after = counts(triton_server, "sid_encoder", inferred + n)

    for arrays, memory in zip(requests, results, strict=True):
        assert memory.shape == (1, arrays["input_ids"].shape[1], reference.hidden)
        np.testing.assert_allclose(memory, reference.encode(**arrays), atol=ATOL, rtol=0)
    assert inferred_after - inferred == n
    assert executed_after - executed < n, "no two requests shared an execution"


def test_concurrent_decoder_requests_are_batched_and_a_bad_one_fails_alone(
    triton_server: TritonServer, reference: Reference
) -> None:
    """16 gRPC async requests with different numbers of texts and lengths, one with a
    code far outside the codebook: the others are batched and exact, the bad one fails alone."""
    n = 16
    bad = 5
    rng = np.random.default_rng(3)
    # Same beam count and level (as the gateway sends): `past` is not ragged, so Triton only
    # batches requests whose caches have one shape; texts and lengths still differ.
    requests = [reference.decoder_inputs(rng, 1 + i % 3, 2 + i % 5, 3) for i in range(n)]
    requests[bad]["prefix"][0, 0, 0] = 10**6
    results: dict[int, Any] = {}
    done = threading.Event()

    def callback(i: int, result: Any, error: InferenceServerException | None) -> None:
        results[i] = error if error is not None else result.as_numpy("logits")
        if len(results) == n:
            done.set()

    inferred, executed = counts(triton_server, "sid_decoder")
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        for i, arrays in enumerate(requests):
            client.async_infer(
                "sid_decoder",
                make_inputs(grpcclient, arrays),
                callback=lambda result, error, i=i: callback(i, result, error),
                outputs=[grpcclient.InferRequestedOutput("logits")],
            )
        assert done.wait(60), f"only {len(results)} of {n} answers"
    finally:
        client.close()
    texts = sum(len(a["prefix"]) for a in requests)
    inferred_after, executed_after = counts(triton_server, "sid_decoder", inferred + texts)

    assert isinstance(results[bad], InferenceServerException)
    for i, arrays in enumerate(requests):
        if i != bad:
            assert isinstance(results[i], np.ndarray), f"request {i}: {results[i]}"
            np.testing.assert_allclose(results[i], reference.step(arrays), atol=ATOL, rtol=0)
    assert executed_after - executed < n, "no two requests shared an execution"
    # Triton counts every row of an executed batch, the failed request's too.
    assert inferred_after - inferred == texts
