"""Loading and validating a bundle (docs/bundle.md): the only thing the gateway reads.

Every failure names the file and says what is wrong, each kind with its own exception class,
so an operator can tell a half-copied bundle from a tampered one from one made by a newer
exporter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidserve.hashing import sha256_file

# 2 (2026-12-05): a first-step decoder graph computes the cross-attention keys and values
# once per text; 1: one decoder step graph for every level (refused: re-export it)
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
# role -> the graph's file as `sidserve export` writes it (docs/bundle.md)
GRAPH_FILES = {
    "encoder": "encoder.onnx",
    "decoder_first": "decoder_first.onnx",
    "decoder_step": "decoder_step.onnx",
}
GRAPH_ROLES = tuple(GRAPH_FILES)
ITEM_IDS_FILE = "items.ids.txt"
ITEM_SIDS_FILE = "items.sids.npy"
ITEM_VECTORS_FILE = "items.vectors.npy"


class BundleError(ValueError):
    """A bundle that cannot be served."""


class MissingFileError(BundleError):
    pass


class TruncatedFileError(BundleError):
    pass


class ChecksumError(BundleError):
    pass


class FormatVersionError(BundleError):
    pass


class ManifestError(BundleError):
    pass


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    max_query_tokens: int
    max_item_tokens: int
    pad_id: int
    cls_id: int
    sep_id: int


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    model_version: str
    levels: int
    codebook_sizes: list[int]
    hidden_size: int
    tokenizer: TokenizerSpec
    item_ids: list[str]
    item_sids: np.ndarray  # (N, levels + 1) int32: semantic codes, then disambiguation
    cache_entries: int  # decoder key/value cache entries per position (2 x decoder layers)
    # (N, hidden_size) float32 unit dense vectors of the items; None in bundles without them
    item_vectors: np.ndarray | None = None

    @property
    def semantic_sids(self) -> np.ndarray:
        """(N, levels) int64: the semantic codes of every item, without disambiguation."""
        return self.item_sids[:, : self.levels].astype(np.int64)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def graph_paths(self) -> dict[str, Path]:
        """{role: file} of the graphs this bundle serves (`OnnxIndexer` takes it)."""
        return {role: self.path / self.manifest["graphs"][role] for role in GRAPH_ROLES}


def file_digest(path: Path) -> dict[str, Any]:
    """{'sha256': hex, 'bytes': size} of a file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def model_version_of(files: dict[str, dict[str, Any]]) -> str:
    """Content id of a bundle: 16 hex digits of a hash over its files' names and checksums."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()[:16]


def _require(manifest: dict[str, Any], key: str, path: Path) -> Any:
    if key not in manifest:
        raise ManifestError(f"{path}: manifest has no {key!r}")
    return manifest[key]


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise MissingFileError(f"{path}: bundle directory does not exist")
    if not mf.is_file():
        raise MissingFileError(f"{mf}: missing; not a bundle (export one with `sidserve export`)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{mf}: not valid JSON ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and 0 < version < FORMAT_VERSION:
            advice = (
                "an older exporter made it: re-export it from its checkpoint with `sidserve export`"
            )
        elif isinstance(version, int) and version > FORMAT_VERSION:
            advice = "a newer exporter made it: upgrade the gateway"
        else:
            advice = "not a version any exporter writes"
        raise FormatVersionError(
            f"{mf}: bundle format version {version!r}; this gateway reads version "
            f"{FORMAT_VERSION} ({advice})"
        )
    return manifest


def verify_files(path: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Every file in the manifest exists, has its recorded size and (optionally) sha256."""
    for name, want in _require(manifest, "files", path).items():
        f = path / name
        if not f.is_file():
            raise MissingFileError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size < want["bytes"]:
            raise TruncatedFileError(
                f"{f}: {size} bytes, {MANIFEST} records {want['bytes']}: truncated "
                "(an interrupted copy?)"
            )
        if size != want["bytes"] or (checksums and file_digest(f)["sha256"] != want["sha256"]):
            raise ChecksumError(
                f"{f}: content does not match the sha256 in {MANIFEST} (modified or corrupt)"
            )


def _read_item_table(path: Path, manifest: dict[str, Any], levels: int, sizes: list[int]):
    items = _require(manifest, "items", path)
    ids_file, sids_file = path / items["ids"], path / items["sids"]
    ids = ids_file.read_text(encoding="utf-8").split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    try:
        sids = np.load(sids_file, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise TruncatedFileError(f"{sids_file}: unreadable item table ({exc})") from exc
    count = int(items["count"])
    if len(ids) != count:
        raise TruncatedFileError(f"{ids_file}: {len(ids)} ids, {MANIFEST} records {count}")
    if sids.shape != (count, levels + 1) or sids.dtype != np.int32:
        raise TruncatedFileError(
            f"{sids_file}: array {sids.shape} {sids.dtype}, expected ({count}, {levels + 1}) int32"
        )
    if count and ((sids[:, :levels] < 0) | (sids[:, :levels] >= np.array(sizes))).any():
        raise ManifestError(f"{sids_file}: codes outside the codebook sizes {sizes}")
    if count and len(np.unique(sids, axis=0)) != count:
        raise ManifestError(f"{sids_file}: SIDs are not unique")
    if len(set(ids)) != count:
        raise ManifestError(f"{ids_file}: repeated item ids")
    return ids, sids


def _read_item_vectors(path: Path, manifest: dict[str, Any], hidden: int) -> np.ndarray | None:
    """The optional `items.vectors` table: float16 on disk, float32 in memory."""
    name = manifest["items"].get("vectors")
    if name is None:
        return None
    if name not in manifest["files"]:
        raise ManifestError(f"{path / MANIFEST}: {name} is used but has no checksum")
    f = path / name
    try:
        vectors = np.load(f, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise TruncatedFileError(f"{f}: unreadable item vectors ({exc})") from exc
    count = int(manifest["items"]["count"])
    if vectors.shape != (count, hidden) or vectors.dtype != np.float16:
        raise TruncatedFileError(
            f"{f}: array {vectors.shape} {vectors.dtype}, expected ({count}, {hidden}) float16"
        )
    if count and not np.isfinite(vectors).all():
        raise ManifestError(f"{f}: item vectors that are not finite")
    return vectors.astype(np.float32)


def load_bundle(path: str | Path, checksums: bool = True) -> Bundle:
    """Read and validate a bundle. `checksums=False` skips hashing (sizes are still checked)."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest, checksums)
    levels = int(_require(manifest, "levels", path))
    sizes = [int(k) for k in _require(manifest, "codebook_sizes", path)]
    if len(sizes) != levels:
        raise ManifestError(f"{path / MANIFEST}: {len(sizes)} codebook sizes for {levels} levels")
    tok = _require(manifest, "tokenizer", path)
    try:
        spec = TokenizerSpec(**tok)
    except TypeError as exc:
        raise ManifestError(f"{path / MANIFEST}: bad tokenizer settings ({exc})") from exc
    graphs = _require(manifest, "graphs", path)
    missing = [role for role in GRAPH_ROLES if role not in graphs]
    if missing:
        raise ManifestError(f"{path / MANIFEST}: no graph for {', '.join(missing)}")
    for name in (spec.file, *graphs.values()):
        if name not in manifest["files"]:
            raise ManifestError(f"{path / MANIFEST}: {name} is used but has no checksum")
    ids, sids = _read_item_table(path, manifest, levels, sizes)
    hidden = int(_require(manifest, "hidden_size", path))
    version = str(_require(manifest, "model_version", path))
    if version != (content := model_version_of(manifest["files"])):
        # the version names Redis namespaces and Triton repositories: it must be the files'
        raise ManifestError(
            f"{path / MANIFEST}: model_version {version} is not the content id of the files it "
            f"lists ({content}): edited by hand? Export the bundle again"
        )
    return Bundle(
        path=path,
        manifest=manifest,
        model_version=version,
        levels=levels,
        codebook_sizes=sizes,
        hidden_size=hidden,
        tokenizer=spec,
        item_ids=ids,
        item_sids=sids,
        cache_entries=int(_require(manifest, "decoder", path)["cache_entries"]),
        item_vectors=_read_item_vectors(path, manifest, hidden),
    )
