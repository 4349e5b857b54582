"""TensorRT engines (fp16) from a bundle's ONNX graphs, for the `tensorrt_plan` variant of the
Triton repository (model_repo/variants/tensorrt).

Needs an NVIDIA GPU and the `tensorrt` Python package (TensorRT >= 10 for int64 inputs); on a
machine without them it stops with a message saying so. Unverified so far: this project has
not had a GPU (see docs/bundle.md).

    python -m export.tensorrt --bundle runs/bundle --out runs/trt [--max-batch 64 --max-beam 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from service.bundle import load_bundle

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # min, opt, max


@dataclass(frozen=True)
class Limits:
    max_batch: int = 64
    opt_batch: int = 16
    max_beam: int = 32
    opt_beam: int = 10


def profiles(manifest: dict, limits: Limits) -> dict[str, dict[str, ShapeRange]]:
    """Optimisation profile (min, opt, max) of every dynamic input of the three graphs."""
    h = int(manifest["hidden_size"])
    levels = int(manifest["levels"])
    tok = manifest["tokenizer"]
    seq = max(int(tok["max_query_tokens"]), int(tok["max_item_tokens"]))
    qseq = int(tok["max_query_tokens"])
    entries = int(manifest["decoder"]["cache_entries"])
    heads = int(manifest["decoder"]["heads"])
    b, ob, w, ow = limits.max_batch, limits.opt_batch, limits.max_beam, limits.opt_beam
    cross = (entries, heads)  # cross_kv: (batch, entries, heads, seq, hidden / heads)
    return {
        "encoder": {
            "input_ids": ((1, 1), (ob, qseq), (b, seq)),
            "attention_mask": ((1, 1), (ob, qseq), (b, seq)),
        },
        "decoder_first": {
            "memory": ((1, 1, h), (ob, qseq, h), (b, seq, h)),
            "attention_mask": ((1, 1), (ob, qseq), (b, seq)),
        },
        "decoder_step": {
            "cross_kv": (
                (1, *cross, 1, h // heads),
                (ob, *cross, qseq, h // heads),
                (b, *cross, seq, h // heads),
            ),
            "attention_mask": ((1, 1), (ob, qseq), (b, seq)),
            "prefix": ((1, 1, levels), (ob, ow, levels), (b, w, levels)),
            "level": ((1,), (ob,), (b,)),
            "past": (
                (1, 1, entries, 1, h),
                (ob, ow, entries, 1, h),
                (b, w, entries, max(levels - 1, 1), h),
            ),
        },
    }


def build_engine(onnx_path: Path, plan_path: Path, shapes: dict[str, ShapeRange]) -> Path:
    import tensorrt as trt  # only on GPU machines

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(engine))
    return plan_path


def build_all(bundle_dir: Path, out: Path, limits: Limits) -> dict[str, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "TensorRT is not installed: building engines needs an NVIDIA GPU machine with the "
            "`tensorrt` package (pip install tensorrt); the ONNX Runtime + TensorRT backend in "
            "model_repo/ builds them on the server instead"
        ) from exc
    bundle = load_bundle(bundle_dir)
    built = {}
    for role, shapes in profiles(bundle.manifest, limits).items():
        onnx_path = bundle.path / bundle.manifest["graphs"][role]
        built[role] = str(build_engine(onnx_path, out / f"{role}.plan", shapes))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-batch", type=int, default=Limits.max_batch)
    parser.add_argument("--max-beam", type=int, default=Limits.max_beam)
    args = parser.parse_args(argv)
    try:
        built = build_all(args.bundle, args.out, Limits(args.max_batch, max_beam=args.max_beam))
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"export.tensorrt: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
