"""`sidserve export` on a tiny random model: graphs, parity (and its failure), the bundle and
the gateway's loader with each kind of broken bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.bundle import (
    ChecksumError,
    FormatVersionError,
    ManifestError,
    MissingFileError,
    TruncatedFileError,
    load_bundle,
    model_version_of,
)
from tests.export_fixtures import export_args

LARGE = (".onnx",)


def clone_bundle(src: Path, dst: Path) -> Path:
    """Copy the small files, link the large graphs (the tests edit only small files)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix in LARGE:
            (dst / f.name).symlink_to(f)
        else:
            shutil.copyfile(f, dst / f.name)
    return dst


def test_bundle_is_complete_and_valid(tiny_export):
    bundle = load_bundle(tiny_export["bundle"])
    m = bundle.manifest
    assert m["format_version"] == 2
    assert bundle.levels == 2 and bundle.codebook_sizes == [8, 8]
    assert m["decoder"] == {"cache_entries": 2, "heads": 4}  # tests/indexer_toy.py
    assert set(m["files"]) == {
        "tokenizer.json",
        "encoder.onnx",
        "decoder_first.onnx",
        "decoder_step.onnx",
        "items.ids.txt",
        "items.sids.npy",
        "items.vectors.npy",
    }
    assert len(bundle.item_ids) == 48 and bundle.item_sids.shape == (48, 3)
    assert len(np.unique(bundle.item_sids, axis=0)) == 48  # unique after disambiguation
    assert m["parity"]["items_identical"] == "48/48"
    assert bundle.model_version == tiny_export["summary"]["model_version"]
    assert len(bundle.model_version) == 16


def test_item_table_matches_pytorch_greedy_codes(tiny_export):
    from training.data import load_catalog
    from training.indexer.checkpoint import load_checkpoint
    from training.indexer.inference import dense_representations, greedy_codes
    from training.indexer.states import compute_states
    from training.sids import disambiguate

    model, tok, _, _ = load_checkpoint(tiny_export["checkpoint"])
    catalog = load_catalog(tiny_export["catalog"])
    states = compute_states(model, tok, catalog.texts, model.cfg.max_item_tokens, progress=False)
    want = disambiguate(greedy_codes(model, states))
    bundle = load_bundle(tiny_export["bundle"])
    assert bundle.item_ids == catalog.ids
    np.testing.assert_array_equal(bundle.item_sids, want)
    # the items' dense vectors: the checkpoint's own representation, stored as float16
    assert bundle.item_vectors is not None
    want_vectors = dense_representations(model, states)
    assert bundle.item_vectors.shape == want_vectors.shape == (len(catalog), bundle.hidden_size)
    np.testing.assert_allclose(bundle.item_vectors, want_vectors, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(bundle.item_vectors, axis=1), 1.0, atol=2e-3)


def test_exported_encoder_packs_out_the_padding(tiny_export):
    """The encoder graph runs its layers on the real tokens only: a padded batch gives the
    PyTorch encoder's states on every token, zeros at the padding, and each text the states
    it gets alone."""
    import torch

    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer
    from training.indexer.checkpoint import load_checkpoint

    bundle = load_bundle(tiny_export["bundle"])
    onnx = OnnxIndexer(bundle.graph_paths, threads=1)
    tok = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    texts = ["cordless drill", "kitchen faucet with a pull down sprayer, brushed nickel", "led"]
    ids, mask = tok.queries(texts)
    assert mask.min() == 0  # some padding to pack out
    memory = onnx.encode(ids, mask)
    real = mask.astype(bool)
    assert not memory[~real].any()
    model = load_checkpoint(tiny_export["checkpoint"])[0]
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        ref = model.encode(model.lower_states(t_ids, t_mask), t_mask).numpy()
    np.testing.assert_allclose(memory[real], ref[real], atol=1e-5)
    for q in range(len(texts)):
        n = int(mask[q].sum())
        alone = onnx.encode(ids[q : q + 1, :n], mask[q : q + 1, :n])
        np.testing.assert_allclose(alone[0], memory[q, :n], rtol=0, atol=1e-6)


def test_beam_parity_over_a_full_trie(tiny_export):
    """The catalog of a random model uses few paths; check beams where every path exists."""
    from export.parity import check_parity
    from service.bundle import load_bundle
    from service.item_codes import assign_items
    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer
    from training.data import load_catalog
    from training.indexer.checkpoint import load_checkpoint

    model, tok, _, _ = load_checkpoint(tiny_export["checkpoint"])
    bundle = load_bundle(tiny_export["bundle"])
    onnx = OnnxIndexer(bundle.graph_paths)
    tokenizer = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    texts = load_catalog(tiny_export["catalog"]).texts
    every_path = np.array([(a, b) for a in range(8) for b in range(8)])
    items = bundle.item_sids[:, :2].astype(np.int64)
    vectors = assign_items(onnx, tokenizer, texts, 2, progress=False)[1]
    report = check_parity(
        model, tok, onnx, tokenizer, texts, items, vectors, texts, every_path, beam=10
    )
    assert report.ok, report.summary()
    assert report.queries_identical == len(texts)
    assert report.max_logit_diff < 1e-4 and report.max_vector_diff < 1e-4
    # a wrong vector fails the check
    vectors[0] = -vectors[0]
    bad = check_parity(model, tok, onnx, tokenizer, texts, items, vectors, texts, every_path)
    assert not bad.ok and bad.max_vector_diff > 0.01
    vectors[0] = -vectors[0]
    # so does an item table that is not what the graphs assign
    items[0] = (items[0] + 1) % 8
    bad = check_parity(model, tok, onnx, tokenizer, texts, items, vectors, texts, every_path)
    assert not bad.ok and bad.items_identical == bad.items_checked - 1


def test_parity_report_passes_only_when_every_check_holds():
    from export.parity import LOGIT_TOLERANCE, ParityReport

    def report(**changes) -> ParityReport:
        fields = {"items_checked": 10, "items_identical": 10, "queries_checked": 5}
        return ParityReport(**{**fields, "queries_identical": 5, **changes})

    assert report().ok
    assert report(queries_identical=4, queries_tied=1).ok  # a near tie traded places
    assert not report(items_identical=9).ok
    assert not report(queries_identical=4).ok
    assert not report(max_logit_diff=2 * LOGIT_TOLERANCE).ok


def _beams(rows: list[tuple[tuple[int, ...], float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def test_same_beams_allows_near_tied_paths_to_trade_places_and_nothing_else():
    from export.parity import beam_score_tolerance, same_beams

    tol = beam_score_tolerance(3)
    assert tol == pytest.approx(6e-4)
    want = _beams([((1, 2, 3), -1.0), ((4, 5, 6), -2.0), ((7, 8, 9), -2.0000008)])
    assert same_beams(want, want, tol)
    # seen on the Home Depot model: two paths 1e-6 apart came out in the other order
    swapped = _beams([((1, 2, 3), -1.0), ((7, 8, 9), -2.0000001), ((4, 5, 6), -2.0000002)])
    assert same_beams(want, swapped, tol)
    # a near tie at the cut-off: the last path is another one of (nearly) the same score
    cut = _beams([((1, 2, 3), -1.0), ((4, 5, 6), -2.0), ((0, 0, 1), -2.0000005)])
    assert same_beams(want, cut, tol)
    # not noise: a different path of a clearly different score, scores off, a missing path
    other = _beams([((1, 2, 3), -1.0), ((4, 5, 6), -2.0), ((0, 0, 1), -1.5)])
    assert not same_beams(want, other, tol)
    off = _beams([((1, 2, 3), -1.01), ((4, 5, 6), -2.0), ((7, 8, 9), -2.0000008)])
    assert not same_beams(want, off, tol)
    one = _beams([((1, 2, 3), -1.0)])
    assert not same_beams(want, one, tol) and same_beams(one, one, tol)
    # the same scores by rank, but two paths far apart swapped: their own scores differ
    far = _beams([((4, 5, 6), -1.0), ((1, 2, 3), -2.0), ((7, 8, 9), -2.0000008)])
    assert not same_beams(want, far, tol)


def test_tokenizer_json_matches_transformers(tiny_export):
    from transformers import AutoTokenizer

    from service.tokenizer import BundleTokenizer

    bundle = load_bundle(tiny_export["bundle"])
    ours = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    theirs = AutoTokenizer.from_pretrained(tiny_export["checkpoint"])
    texts = ["Cordless DRILL 20V", "ünïcödé café – 3/4 in. x 10 ft.", "word " * 40, "a"]
    ids, mask = ours.encode(texts, 16)
    want = theirs(texts, padding=True, truncation=True, max_length=16)
    np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(want["attention_mask"]))


def test_export_fails_loudly_when_parity_fails(tiny_export, tmp_path, monkeypatch):
    """A graph that is off by 1 % must stop the export and leave nothing behind."""
    from export import graphs
    from export.command import export
    from export.parity import ParityError

    forward = graphs.EncoderGraph.forward
    monkeypatch.setattr(
        graphs.EncoderGraph, "forward", lambda self, i, m: forward(self, i, m) * 1.01
    )
    out = tmp_path / "bundle"
    stale = tmp_path / ".bundle.partial"  # the staging directory of an earlier, killed export
    stale.mkdir()
    (stale / "junk").write_text("x")
    args = export_args(
        tiny_export["checkpoint"], tiny_export["catalog"], tiny_export["judgments"], out
    )
    with pytest.raises(ParityError, match="does not reproduce"):
        export(args)
    assert not out.exists()
    assert not stale.exists()  # cleared before the export started, and after it failed
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_export_refuses_to_overwrite_without_force(tiny_export):
    from sidserve.cli import main

    code = main(
        [
            "export",
            "--checkpoint",
            str(tiny_export["checkpoint"]),
            "--catalog",
            str(tiny_export["catalog"]),
            "--out",
            str(tiny_export["bundle"]),
        ]
    )
    assert code == 2
    load_bundle(tiny_export["bundle"])  # untouched


@pytest.mark.parametrize(
    "mode, decoder_files",
    [
        ("int8", ("decoder_first.onnx", "decoder_step.onnx")),
        ("int8-all", ("decoder_first.int8.onnx", "decoder_step.int8.onnx")),
    ],
)
def test_int8_export_reports_agreement(tiny_export, tmp_path, capsys, mode, decoder_files):
    from export.command import export

    out = tmp_path / mode
    args = export_args(
        tiny_export["checkpoint"],
        tiny_export["catalog"],
        None,
        out,
        quantize=mode,
        parity_queries=20,
    )
    summary = export(args)
    bundle = load_bundle(out)
    q = bundle.manifest["quantization"]
    assert bundle.manifest["graphs"] == {
        "encoder": "encoder.int8.onnx",
        "decoder_first": decoder_files[0],
        "decoder_step": decoder_files[1],
    }
    assert not (out / "encoder.onnx").exists()
    assert (out / "decoder_first.onnx").exists() == (mode == "int8")
    assert (out / "decoder_step.onnx").exists() == (mode == "int8")
    assert q["bytes_int8"] < q["bytes_fp32"] / 2
    assert set(q["agreement_with_fp32"]) == {"l1", "l1-2"}
    assert 0.0 <= q["agreement_with_fp32"]["l1-2"] <= q["agreement_with_fp32"]["l1"] <= 1.0
    what = "int8 encoder and decoder" if mode == "int8-all" else "int8 encoder"
    assert f"{what} agreement with fp32" in capsys.readouterr().out
    assert summary["model_version"] != tiny_export["summary"]["model_version"]
    # the item table is what the served graphs assign (same batches: dynamic int8 scales
    # activations per batch, so the batch a text is computed in can change its codes)
    from service.item_codes import assign_items
    from service.onnx_model import OnnxIndexer
    from service.tokenizer import BundleTokenizer
    from training.data import load_catalog

    model = OnnxIndexer(bundle.graph_paths)
    tok = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    texts = load_catalog(tiny_export["catalog"]).texts
    codes = assign_items(model, tok, texts, bundle.levels, progress=False)[0]
    assert np.array_equal(codes, bundle.item_sids[:, : bundle.levels])


# ---- the loader: each broken bundle has its own error, naming the file


def test_missing_file(tiny_export, tmp_path):
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    (b / "tokenizer.json").unlink()
    with pytest.raises(MissingFileError, match="tokenizer.json"):
        load_bundle(b)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_wrong_checksum(tiny_export, tmp_path):
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    text = (b / "items.ids.txt").read_text()
    (b / "items.ids.txt").write_text(text.replace("t1\n", "t9\n", 1))  # same size
    with pytest.raises(ChecksumError, match="items.ids.txt"):
        load_bundle(b)


@pytest.mark.parametrize("cut", [1, 40])  # a single missing byte is a truncation too
def test_truncated_item_table(tiny_export, tmp_path, cut):
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    data = (b / "items.sids.npy").read_bytes()
    (b / "items.sids.npy").write_bytes(data[: len(data) - cut])
    with pytest.raises(TruncatedFileError, match="items.sids.npy"):
        load_bundle(b)


def test_item_vectors_are_checked_and_optional(tiny_export, tmp_path):
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    vectors = np.load(b / "items.vectors.npy")
    # the right size on disk, the wrong layout: half the rows, twice the columns
    np.save(b / "items.vectors.npy", vectors.reshape(len(vectors) // 2, -1))
    with pytest.raises(TruncatedFileError, match=r"items.vectors.npy.*expected \(48, 384\)"):
        load_bundle(b, checksums=False)
    # a bundle from before item vectors (no entry, no file) still loads, without them
    (b / "items.vectors.npy").unlink()
    m = json.loads((b / "manifest.json").read_text())
    del m["items"]["vectors"], m["files"]["items.vectors.npy"]
    m["model_version"] = model_version_of(m["files"])  # as its exporter wrote it
    (b / "manifest.json").write_text(json.dumps(m))
    assert load_bundle(b).item_vectors is None


def test_a_model_version_that_is_not_the_files_content_id_is_refused(tiny_export, tmp_path):
    """The version names the Redis namespace and the Triton repository: a manifest edited to
    claim another one (or files swapped under an old one) must not load."""
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    content = m["model_version"]
    m["model_version"] = "0123456789abcdef"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=f"0123456789abcdef is not the content id.*{content}"):
        load_bundle(b, checksums=False)


@pytest.mark.parametrize(
    "version, advice",
    [(1, "older exporter.*re-export"), (99, "newer exporter.*upgrade"), ("2", "not a version")],
)
def test_unknown_format_version(tiny_export, tmp_path, version, advice):
    b = clone_bundle(tiny_export["bundle"], tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = version
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError, match=f"manifest.json.*{version!r}.*{advice}"):
        load_bundle(b)


def test_tensorrt_profiles_cover_the_graph_inputs(tiny_export, capsys):
    """No GPU here: the profiles are checked against the graphs, and building stops with a
    message naming what is missing."""
    import onnx

    from export.tensorrt import Limits, main, profiles

    bundle = load_bundle(tiny_export["bundle"])
    for role, shapes in profiles(bundle.manifest, Limits()).items():
        graph = onnx.load(str(bundle.path / bundle.manifest["graphs"][role]))
        inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.graph.input}
        assert set(shapes) == set(inputs)
        for name, (lo, opt, hi) in shapes.items():
            assert len(lo) == len(opt) == len(hi) == inputs[name]
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), name
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["--bundle", str(bundle.path), "--out", "/nonexistent/trt"]) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err


def test_export_benchmark_int8_agreement_runs(tiny_export, tmp_path):
    # `make bench-export` quantises a copy of a bundle's encoder through the export's own code
    from benchmarks.export import int8_agreement
    from service.tokenizer import BundleTokenizer
    from training.data import load_catalog

    bundle = load_bundle(tiny_export["bundle"])
    tok = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    texts = load_catalog(tiny_export["catalog"]).texts
    report, path = int8_agreement(bundle, tok, texts, tmp_path)
    assert path == tmp_path / "encoder.int8.onnx" and path.is_file()
    assert report["files"] == {"encoder": "encoder.int8.onnx"}
    assert 0.0 <= report["agreement_with_fp32"]["l1"] <= 1.0
