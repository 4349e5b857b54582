"""`sidserve export`: indexer checkpoint + catalog -> bundle (docs/bundle.md).

Steps: ONNX graphs → item SIDs of the whole catalog with ONNX Runtime (what the gateway would
compute) → parity against PyTorch (fails loudly, no bundle) → optional int8 encoder with its
measured SID agreement → manifest with checksums, validated by the gateway's loader → the
bundle directory appears in one rename. Optionally a Triton model repository from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from training.cli_args import add_data_arguments, load_inputs

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="indexer checkpoint dir")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    add_data_arguments(parser, judgments_required=False)
    parser.add_argument(
        "--force", action="store_true", help="replace --out if it already holds a bundle"
    )
    parser.add_argument(
        "--parity-items", type=int, default=1000, help="catalog items checked (default: 1000)"
    )
    parser.add_argument(
        "--parity-queries",
        type=int,
        default=1000,
        help="queries whose top-10 beams are checked; from --judgments (dev split first), "
        "else catalog titles (default: 1000)",
    )
    parser.add_argument(
        "--quantize",
        choices=["none", "int8", "int8-all"],
        default="none",
        help="int8: serve a dynamically quantised encoder; int8-all: the decoder graphs too "
        "(agreement with fp32 is printed)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="items per ONNX call")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: auto)")
    parser.add_argument(
        "--triton-repo", type=Path, help="also materialise a Triton model repository here"
    )
    parser.add_argument(
        "--triton-variant",
        choices=["gpu", "cpu"],
        default="gpu",
        help="gpu: ONNX Runtime + TensorRT backend; cpu: Python backend (tests)",
    )


def _parity_queries(args: argparse.Namespace, judgments, catalog) -> list[str]:
    n = args.parity_queries
    if judgments is not None:
        from training.data.judgments import in_dev, normalise_query

        distinct = list(dict.fromkeys(normalise_query(q) for q in judgments.queries))
        distinct.sort(key=lambda q: not in_dev(q, args.dev_fraction))  # dev queries first
        return distinct[:n]
    step = max(1, len(catalog) // max(n, 1))
    return [t[:60] for t in catalog.texts[1::step][:n]]  # title beginnings as queries


def export(args: argparse.Namespace) -> dict:
    from export.bundle import finish_bundle, write_item_table
    from export.graphs import EXPORTER, export_graphs
    from export.parity import ParityError, check_parity
    from export.quantize import quantize_graphs
    from service.bundle import TOKENIZER_FILE, TokenizerSpec
    from service.item_codes import assign_items
    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer
    from training.indexer.checkpoint import load_checkpoint
    from training.sids import disambiguate

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} exists and is not empty; pass --force to replace it")
    if args.parity_items < 1 or args.parity_queries < 1:
        raise ValueError("--parity-items and --parity-queries must be >= 1")
    catalog, judgments = load_inputs(args)
    model, hf_tokenizer, _, meta = load_checkpoint(args.checkpoint)
    cfg = model.cfg
    tok_src = args.checkpoint / TOKENIZER_FILE
    if not tok_src.is_file():
        raise FileNotFoundError(f"{tok_src}: the checkpoint has no fast tokenizer file")
    started = time.perf_counter()
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        paths = export_graphs(model, staging)
        shutil.copyfile(tok_src, staging / TOKENIZER_FILE)
        spec = TokenizerSpec(
            file=TOKENIZER_FILE,
            max_query_tokens=cfg.max_query_tokens,
            max_item_tokens=cfg.max_item_tokens,
            pad_id=int(hf_tokenizer.pad_token_id),
            cls_id=int(hf_tokenizer.cls_token_id),
            sep_id=int(hf_tokenizer.sep_token_id),
        )
        tokenizer = BundleTokenizer(staging / TOKENIZER_FILE, spec)
        onnx = OnnxIndexer(paths, args.threads)
        t0 = time.perf_counter()
        codes, vectors = assign_items(onnx, tokenizer, catalog.texts, cfg.levels, args.batch_size)
        assign_s = time.perf_counter() - t0
        pick = np.unique(np.linspace(0, len(catalog) - 1, args.parity_items).astype(int))
        report = check_parity(
            model,
            hf_tokenizer,
            onnx,
            tokenizer,
            [catalog.texts[i] for i in pick],
            codes[pick],
            vectors[pick],
            _parity_queries(args, judgments, catalog),
            codes,
        )
        log.info("parity: %s", report.summary())
        if not report.ok:
            raise ParityError(
                f"ONNX Runtime does not reproduce PyTorch: {report.summary()}; "
                f"first failures: {report.failures[:5]}"
            )
        extra: dict = {"parity": report.summary()}
        graphs = {role: path.name for role, path in paths.items()}
        if args.quantize in ("int8", "int8-all"):
            quant = quantize_graphs(
                staging,
                onnx,
                tokenizer,
                catalog.texts,
                codes,
                args.threads,
                decoder=args.quantize == "int8-all",
            )
            extra["quantization"] = quant
            for role, name in quant["files"].items():  # the bundle serves the int8 graphs only
                (staging / graphs[role]).unlink()
                graphs[role] = name
            codes, vectors = assign_items(
                OnnxIndexer({role: staging / name for role, name in graphs.items()}),
                tokenizer,
                catalog.texts,
                cfg.levels,
                args.batch_size,
            )
        sids = disambiguate(codes)
        write_item_table(staging, catalog.ids, sids, vectors)
        finish_bundle(
            staging,
            out,
            levels=cfg.levels,
            codebook_sizes=[cfg.codebook_size] * cfg.levels,
            hidden_size=model.dim,
            cache_entries=2 * model.cfg.decoder_layers,
            heads=model.cfg.decoder_heads,
            tokenizer={k: v for k, v in vars(spec).items() if k != "file"},
            graphs=graphs,
            item_count=len(catalog),
            source={
                "checkpoint": str(args.checkpoint),
                "checkpoint_levels_trained": meta.get("levels_trained"),
                "catalog": str(args.catalog),
                "catalog_sha256": catalog.checksum(),
                "exporter": EXPORTER,
            },
            extra=extra,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = json.loads((out / "manifest.json").read_text())
    summary = {
        "bundle": str(out),
        "model_version": manifest["model_version"],
        "items": len(catalog),
        "collision_rate": float(1 - len(np.unique(codes, axis=0)) / len(codes)),
        "assign_items_per_s": round(len(catalog) / assign_s, 1),
        "export_s": round(time.perf_counter() - started, 1),
        "bytes": sum(f["bytes"] for f in manifest["files"].values()),
        **extra,
    }
    if args.triton_repo:
        from export.triton_repo import materialise

        summary["triton_repo"] = str(materialise(out, args.triton_repo, args.triton_variant))
    return summary


def run(args: argparse.Namespace) -> int:
    summary = export(args)
    print(json.dumps(summary, indent=2))
    return 0
