"""Triton model repository from a bundle: the only way model files reach Triton.

`materialise` copies the bundle's three graphs into `<repo>/sid_encoder/<version>/model.onnx`,
`<repo>/sid_decoder_first/<version>/model.onnx` and `<repo>/sid_decoder/<version>/model.onnx`
and renders each `config.pbtxt` from the
templates in `model_repo/` (`variant="gpu"`: ONNX Runtime + TensorRT) or `model_repo/cpu/`
(`variant="cpu"`: Python backend running ONNX Runtime, plus its `model.py`), filling in the
bundle's real hidden size, levels, codebook size and model version. No torch: this runs on
serving hosts and in the gateway's tests.

A version directory belongs to one bundle: the file `sid_model_version` in it records the
bundle's `model_version`, so materialising the same bundle again reuses (and repairs) that
directory, and a different bundle gets the next Triton version number.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from service.bundle import FORMAT_VERSION
from sidserve.hashing import sha256_file

Variant = Literal["gpu", "cpu"]

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repo"
# Triton model name -> key of the graph in manifest["graphs"].
MODELS = {
    "sid_encoder": "encoder",
    "sid_decoder_first": "decoder_first",
    "sid_decoder": "decoder_step",
}
MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
MARKER = "sid_model_version"
FORMAT_VERSIONS = {FORMAT_VERSION}
LATEST_POLICY = "version_policy: { latest: { num_versions: 1 } }"


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """The bundle's manifest.json (stand-in until service.bundle reads and checks bundles)."""
    path = Path(bundle_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a bundle: {path} is missing")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") not in FORMAT_VERSIONS:
        raise ValueError(f"{path}: unknown format_version {manifest.get('format_version')!r}")
    return manifest


def template_values(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The values the `${...}` fields of the config templates take for this bundle."""
    codebooks = [int(k) for k in manifest["codebook_sizes"]]
    if len(codebooks) != int(manifest["levels"]):
        raise ValueError("manifest: codebook_sizes must have one entry per level")
    tokenizer = manifest["tokenizer"]
    decoder = manifest["decoder"]
    hidden, heads = int(manifest["hidden_size"]), int(decoder["heads"])
    if heads < 1 or hidden % heads:
        raise ValueError(f"manifest: {heads} decoder heads do not divide hidden size {hidden}")
    return {
        "model_version": str(manifest["model_version"]),
        "hidden_size": str(int(manifest["hidden_size"])),
        "levels": str(int(manifest["levels"])),
        # Texts at different levels share one call, so the logits have one width: the
        # widest codebook (equal sizes, the usual case, make this just the codebook size).
        "codebook_size": str(max(codebooks)),
        "max_seq": str(max(int(tokenizer["max_query_tokens"]), int(tokenizer["max_item_tokens"]))),
        "pad_id": str(int(tokenizer["pad_id"])),
        "cache_entries": str(int(decoder["cache_entries"])),
        "heads": str(heads),
        "head_dim": str(hidden // heads),
        # the longest `past` a later step gets: levels - 1 positions (at least 1)
        "max_past": str(max(len(codebooks) - 1, 1)),
    }


def render_config(template: Path, manifest: Mapping[str, Any]) -> str:
    """A config.pbtxt template with the bundle's values filled in (missing ones raise)."""
    return string.Template(Path(template).read_text(encoding="utf-8")).substitute(
        template_values(manifest)
    )


def _pin_version(config: str, version: int) -> str:
    """A rendered config that serves exactly `version` instead of the latest one."""
    if LATEST_POLICY not in config:
        raise ValueError(f"template has no `{LATEST_POLICY}` line to pin a version with")
    return config.replace(
        LATEST_POLICY, f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}"
    )


def template_dir(variant: Variant, templates: Path | None = None) -> Path:
    root = Path(templates) if templates is not None else TEMPLATES
    if variant == "gpu":
        return root
    if variant == "cpu":
        return root / "cpu"
    raise ValueError(f"unknown variant {variant!r}: expected 'gpu' or 'cpu'")


def _checked_graph(bundle_dir: Path, manifest: Mapping[str, Any], key: str) -> tuple[Path, str]:
    """A graph file of the bundle and its sha256, refused if it differs from the manifest."""
    name = manifest["graphs"][key]
    path = bundle_dir / name
    record = manifest.get("files", {}).get(name)
    if record is None:
        raise ValueError(f"{bundle_dir}: manifest lists no checksum for {name}")
    if not path.is_file():
        raise FileNotFoundError(f"{bundle_dir}: {name} is missing")
    if path.stat().st_size != int(record["bytes"]):
        raise ValueError(f"{path}: {path.stat().st_size} bytes, manifest says {record['bytes']}")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise ValueError(f"{path}: sha256 differs from the manifest")
    return path, digest


def _versions(model_dir: Path) -> dict[int, str | None]:
    """Numeric version directories of one model and the model_version each records."""
    found: dict[int, str | None] = {}
    if model_dir.is_dir():
        for d in model_dir.iterdir():
            if d.is_dir() and d.name.isdigit():
                marker = d / MARKER
                found[int(d.name)] = marker.read_text().strip() if marker.is_file() else None
    return found


def _choose_version(repo_dir: Path, model_version: str, version: int | None) -> int:
    existing = {m: _versions(repo_dir / m) for m in MODELS}
    if version is not None:
        if version < 1:
            raise ValueError(f"Triton versions start at 1, got {version}")
        for model, versions in existing.items():
            if version in versions and versions[version] != model_version:
                raise FileExistsError(
                    f"{repo_dir / model / str(version)} holds model_version "
                    f"{versions[version]!r}, not {model_version!r}: pick another version"
                )
        return version
    ours = [
        v
        for v in set.intersection(*(set(vs) for vs in existing.values()))
        if all(vs[v] == model_version for vs in existing.values())
    ]
    if ours:
        return max(ours)
    return 1 + max((v for vs in existing.values() for v in vs), default=0)


def _write_text(path: Path, text: str) -> None:
    """Atomic write that leaves an identical file untouched (Triton polls mtimes)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)


def _copy(src: Path, dst: Path, sha256: str) -> None:
    """Copy unless dst already has the same content; never leaves a half-written dst."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256:
        return
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def materialise(
    bundle_dir: Path,
    repo_dir: Path,
    variant: Variant,
    version: int | None = None,
    *,
    templates: Path | None = None,
) -> Path:
    """Write (or refresh) the bundle as one Triton version of its models; returns repo_dir.

    `version=None` reuses the version directory already holding this bundle's model_version,
    else takes the next number after the existing ones; an explicit `version` that holds a
    different bundle is refused rather than overwritten. The configs serve the newest version,
    or, when the bundle went into an older one (a rollback), pin exactly that version.
    """
    bundle_dir, repo_dir = Path(bundle_dir), Path(repo_dir)
    source = template_dir(variant, templates)
    root = (Path(templates) if templates is not None else TEMPLATES).resolve()
    target = repo_dir.resolve()
    if target == root or root in target.parents:
        raise ValueError(f"{repo_dir} is the template directory: materialise somewhere else")
    manifest = read_manifest(bundle_dir)
    model_version = str(manifest["model_version"])
    graphs = {m: _checked_graph(bundle_dir, manifest, key) for m, key in MODELS.items()}
    configs = {m: render_config(source / m / "config.pbtxt", manifest) for m in MODELS}
    chosen = _choose_version(repo_dir, model_version, version)
    newest = max((v for m in MODELS for v in _versions(repo_dir / m)), default=chosen)
    if chosen < newest:
        # Going back to an older bundle: `latest` would keep serving the newer version while
        # the config (sizes, sid_model_version) describes this one, so pin this version.
        configs = {m: _pin_version(text, chosen) for m, text in configs.items()}

    for model, (graph, digest) in graphs.items():
        version_dir = repo_dir / model / str(chosen)
        version_dir.mkdir(parents=True, exist_ok=True)
        _copy(graph, version_dir / MODEL_FILE, digest)
        python_model = version_dir / PYTHON_MODEL_FILE
        if variant == "cpu":
            _write_text(python_model, (source / PYTHON_MODEL_FILE).read_text(encoding="utf-8"))
        elif python_model.exists():
            python_model.unlink()  # left by an earlier cpu materialise; the ORT backend ignores it
        # The marker goes last: a version directory without it was never completed.
        _write_text(version_dir / MARKER, model_version + "\n")
        _write_text(repo_dir / model / "config.pbtxt", configs[model])
    return repo_dir
