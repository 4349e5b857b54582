"""Optional int8 dynamic quantisation of the encoder, with its SID agreement against fp32.

Dynamic quantisation (int8 weights, activations quantised per batch at run time) needs no
calibration data. It changes the encoder states slightly, so near-tied codes can flip: the
agreement of item codes with the fp32 encoder is measured on catalog items and printed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import ENCODER_FILE
from service.onnx_model import OnnxIndexer
from service.tokenizer import BundleTokenizer

log = logging.getLogger(__name__)
INT8_ENCODER_FILE = "encoder.int8.onnx"
DEFAULT_WORTHY = 0.99  # level 1-2 agreement at which int8 could become the default


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of rows whose first d codes agree, for d = 1 .. L."""
    same = np.cumprod(a == b, axis=1).mean(axis=0)
    return {f"l1-{d + 1}" if d else "l1": round(float(s), 4) for d, s in enumerate(same)}


def quantize_encoder(
    bundle_dir: Path,
    fp32: OnnxIndexer,
    tokenizer: BundleTokenizer,
    texts: Sequence[str],
    fp32_codes: np.ndarray,
    threads: int = 0,
    sample: int = 1000,
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.item_table import assign_semantic_codes

    src, dst = bundle_dir / ENCODER_FILE, bundle_dir / INT8_ENCODER_FILE
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    int8 = OnnxIndexer(dst, bundle_dir / "decoder_step.onnx", threads)
    pick = np.unique(np.linspace(0, len(texts) - 1, sample).astype(int))
    levels = fp32_codes.shape[1]
    codes = assign_semantic_codes(int8, tokenizer, [texts[i] for i in pick], levels, progress=False)
    agree = agreement(codes, fp32_codes[pick])
    l12 = agree.get("l1-2", agree["l1"])
    verdict = "could be the default" if l12 >= DEFAULT_WORTHY else "stays opt-in"
    log.info(
        "int8 encoder: item SID agreement with fp32 over %d items %s (%s: level 1-2 %.2f%%, "
        "threshold %.0f%%)",
        len(pick),
        agree,
        verdict,
        100 * l12,
        100 * DEFAULT_WORTHY,
    )
    print(f"int8 encoder agreement with fp32 ({len(pick)} items): {agree} -> {verdict}")
    return {
        "encoder": "int8 dynamic (onnxruntime.quantization.quantize_dynamic, QInt8 weights)",
        "file": INT8_ENCODER_FILE,
        "agreement_with_fp32": agree,
        "items_compared": len(pick),
        "bytes_fp32": src.stat().st_size,
        "bytes_int8": dst.stat().st_size,
    }
