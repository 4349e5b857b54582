"""Optional int8 dynamic quantisation of the encoder (and of the decoder step), with the SID
agreement against fp32.

Dynamic quantisation (int8 weights, activations quantised per batch at run time) needs no
calibration data. At batch 1 both graphs are bound by reading their weights (42 MB of encoder
layers; 12.5 MB of decoder step per level with one decoder layer, 22 MB with two), so int8
weights are what makes them faster. It changes the states slightly, so near-tied codes can
flip: the agreement of item codes with the fp32 graphs is measured on catalog items and
printed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import GRAPH_FILES
from service.onnx_model import OnnxIndexer
from service.tokenizer import BundleTokenizer

log = logging.getLogger(__name__)
DEFAULT_WORTHY = 0.99  # level 1-2 agreement at which int8 could become the default


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of rows whose first d codes agree, for d = 1 .. L."""
    same = np.cumprod(a == b, axis=1).mean(axis=0)
    return {f"l1-{d + 1}" if d else "l1": round(float(s), 4) for d, s in enumerate(same)}


def quantize_graphs(
    bundle_dir: Path,
    fp32: OnnxIndexer,
    tokenizer: BundleTokenizer,
    texts: Sequence[str],
    fp32_codes: np.ndarray,
    threads: int = 0,
    sample: int = 1000,
    decoder: bool = False,
) -> dict[str, Any]:
    """Write the int8 encoder (and with `decoder`, the int8 decoder graphs) next to the fp32
    graphs; returns the manifest's `quantization` entry (the files to serve, agreement)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from service.item_codes import assign_items

    # role -> (fp32 graph, its int8 version, e.g. encoder.int8.onnx)
    quantized = GRAPH_FILES if decoder else {"encoder": GRAPH_FILES["encoder"]}
    roles = {r: (f, f.removesuffix(".onnx") + ".int8.onnx") for r, f in quantized.items()}
    for src, dst in roles.values():
        quantize_dynamic(str(bundle_dir / src), str(bundle_dir / dst), weight_type=QuantType.QInt8)
    files = {role: dst for role, (_, dst) in roles.items()}
    int8 = OnnxIndexer({r: bundle_dir / f for r, f in {**GRAPH_FILES, **files}.items()}, threads)
    pick = np.unique(np.linspace(0, len(texts) - 1, sample).astype(int))
    levels = fp32_codes.shape[1]
    codes = assign_items(int8, tokenizer, [texts[i] for i in pick], levels, progress=False)[0]
    agree = agreement(codes, fp32_codes[pick])
    l12 = agree.get("l1-2", agree["l1"])
    verdict = "could be the default" if l12 >= DEFAULT_WORTHY else "stays opt-in"
    what = "int8 encoder and decoder" if decoder else "int8 encoder"
    log.info(
        "%s: item SID agreement with fp32 over %d items %s (%s: level 1-2 %.2f%%, "
        "threshold %.0f%%)",
        what,
        len(pick),
        agree,
        verdict,
        100 * l12,
        100 * DEFAULT_WORTHY,
    )
    print(f"{what} agreement with fp32 ({len(pick)} items): {agree} -> {verdict}")
    method = "int8 dynamic (onnxruntime.quantization.quantize_dynamic, QInt8 weights)"
    return {
        "encoder": method,
        "decoder_first": method if decoder else "fp32",
        "decoder_step": method if decoder else "fp32",
        "files": files,
        "agreement_with_fp32": agree,
        "items_compared": len(pick),
        "bytes_fp32": sum((bundle_dir / src).stat().st_size for src, _ in roles.values()),
        "bytes_int8": sum((bundle_dir / dst).stat().st_size for _, dst in roles.values()),
    }
