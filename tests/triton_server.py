"""A real Triton server for the tests: install, stand-in bundle, model repository, process.

The `nvidia-pytriton` wheel ships a real `tritonserver` (2.51) with only the Python backend,
which runs on CPU, so the tests talk to the same server, protocol and dynamic batcher as
production, with the CPU variant of the repository (model_repo/cpu: ONNX Runtime inside the
Python backend). The wheel pins numpy<2, so it never enters the project's environment: it is
pip-installed with --target into the sidserve cache (`python -m tests.triton_server install`,
or on first use by the fixtures), and only the server and its Python stub see it.

How the Python backend stub finds its Python (worked out on tritonserver 2.51 / Python 3.11):

- `triton_python_backend_stub` links `libpython3.X.so.1.0` by name, so LD_LIBRARY_PATH must
  start with this interpreter's LIBDIR; otherwise the loader may pick a system libpython of
  another patch release. The stub's RPATH points at `nvidia_pytriton.libs` only from its
  place in the wheel, so that folder goes on LD_LIBRARY_PATH too (and `install` copies the
  stub for this Python next to `libtriton_python.so`, where the backend looks for it).
- The stub embeds Python with an isolated config: PYTHONPATH and PYTHONHOME are ignored. Its
  `sys.path` comes from CPython's getpath, which looks up `python3` on PATH and honours a
  `pyvenv.cfg` beside it. So the server runs with a throwaway venv's `bin/` first on PATH
  (the same trick pytriton itself uses), and that venv's `.pth` file puts the pytriton
  target dir (numpy 1.26) first and this venv's site-packages (onnxruntime & co.) after it.
- The stub cannot use numpy 2: its pybind11 reads numpy 1.x array descriptors, and with the
  project's numpy 2 every output fails with "output tensor shape does not match size of
  output". onnxruntime (built against numpy 2, whose C API is backwards compatible) runs fine
  on numpy 1.26, so only numpy itself has to come from the target dir.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from export.triton_repo import materialise
from service.launcher import free_ports

PYTRITON_VERSION = "0.7.0"
# The newest numpy 1.x: what the stub's pybind11 can read (see the module docstring).
STUB_NUMPY_VERSION = "1.26.4"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTALLED_STAMP = ".sidserve-installed"


class TritonUnavailable(RuntimeError):
    """tritonserver could not be installed or started; the message says why and how to fix."""


# --------------------------------------------------------------------------------------------
# Install: nvidia-pytriton in a pip --target directory of the sidserve cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """$SIDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/sidserve, else ~/.cache/sidserve.

    The rule of training.encoder.cache_dir, repeated so the tests need not import torch.
    """
    explicit = os.environ.get("SIDSERVE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidserve"


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the pip --target directory that holds nvidia-pytriton."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "backends"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"


def install_dir() -> Path:
    return cache_dir() / "pytriton" / f"{PYTRITON_VERSION}-py{PY}"


def _check_shared_libpython() -> None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise TritonUnavailable(
            f"{sys.executable} has no shared libpython{PY}.so (built without --enable-shared); "
            "tritonserver's Python backend stub needs one. Use a Python built with it."
        )


def ensure_installed() -> TritonInstall:
    """The pytriton install for this Python, pip-installing it on first use (locked, atomic)."""
    _check_shared_libpython()
    dest = install_dir()
    if (dest / INSTALLED_STAMP).is_file():
        return TritonInstall(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be installing right now
        if (dest / INSTALLED_STAMP).is_file():
            return TritonInstall(dest)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".install-"))
        try:
            # --no-deps: the server and its stub need nothing from pytriton's own Python
            # dependencies, only numpy<2 for the stub (and onnxruntime, from the venv).
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                str(tmp),
                f"nvidia-pytriton=={PYTRITON_VERSION}",
                f"numpy=={STUB_NUMPY_VERSION}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                raise TritonUnavailable(
                    f"installing tritonserver failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                    f"{(proc.stdout + proc.stderr)[-4000:]}"
                )
            built = TritonInstall(tmp)
            stub = (
                tmp
                / "pytriton/tritonserver/python_backend_stubs"
                / PY
                / "triton_python_backend_stub"
            )
            if not stub.is_file() or not built.server.is_file():
                raise TritonUnavailable(
                    f"nvidia-pytriton {PYTRITON_VERSION} has no tritonserver or no Python "
                    f"backend stub for Python {PY} (looked for {stub})"
                )
            # The Python backend runs the stub it finds beside libtriton_python.so.
            target = built.backends / "python" / "triton_python_backend_stub"
            shutil.copyfile(stub, target)
            for exe in (target, built.server):
                exe.chmod(0o755)
            (tmp / INSTALLED_STAMP).write_text(
                json.dumps({"nvidia-pytriton": PYTRITON_VERSION, "python": sys.version}) + "\n"
            )
            tmp.chmod(0o755)  # mkdtemp made it private
            if dest.exists():  # an earlier install that never finished
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TritonInstall(dest)


def make_stub_env(path: Path, install: TritonInstall) -> Path:
    """A bare venv whose python3, found on PATH, gives the stub its sys.path; returns its bin/.

    sys.path order: the target dir (numpy 1.26) before this venv's site-packages, which
    supplies onnxruntime; see the module docstring for why PYTHONPATH cannot do this.
    """
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(path)
    site = path / "lib" / f"python{PY}" / "site-packages"
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_sidserve_tritonstub.pth").write_text("\n".join([str(install.root), *ours]) + "\n")
    return path / "bin"


# --------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------


@dataclass
class TritonServer:
    """A running tritonserver: its loopback endpoints, repository and log."""

    http_url: str  # host:port, as tritonclient wants it
    grpc_url: str
    metrics_url: str
    repo: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 6000) -> str:
        return _tail(self.log, chars)


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _log_report(path: Path) -> str:
    """The server's error lines (the model-status table buries them), then the log's end."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line[:2000] for line in lines if re.match(r"E\d{4} ", line)]
    return (
        f"error lines of {path}:\n"
        + "\n".join(errors[:20])
        + "\n\nend of the log:\n"
        + _tail(path, 3000)
    )


def server_env(install: TritonInstall, stub_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(install.libs)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{stub_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def server_command(install: TritonInstall, repo: Path, ports: list[int], tag: str) -> list[str]:
    http, grpc, metrics = ports
    return [
        str(install.server),
        f"--model-repository={repo}",
        f"--backend-directory={install.backends}",
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--strict-readiness=true",
        # Our configs are complete; skipping auto-complete saves a stub start per model.
        "--disable-auto-complete-config",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=5",
        # Shared-memory regions in /dev/shm named per server, so parallel sessions never clash.
        f"--backend-config=python,shm-region-prefix-name={tag}",
    ]


def _wait_ready(proc: subprocess.Popen[bytes], http_port: int, log: Path, timeout: float) -> None:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TritonUnavailable(
                f"tritonserver exited with {proc.returncode} before it was ready; "
                + _log_report(log)
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:  # URLError included: not listening yet
            pass
        time.sleep(0.2)
    raise TritonUnavailable(f"tritonserver not ready after {timeout:.0f} s; {_log_report(log)}")


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL to the server's own process group (it and its Python stubs)."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is proc.pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def run_tritonserver(
    repo: Path, workdir: Path, timeout: float = 90.0, ports: list[int] | None = None
) -> Iterator[TritonServer]:
    """Start tritonserver on loopback `ports` (HTTP, gRPC, metrics; default: free ones), wait
    until ready, always stop it."""
    install = ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    stub_bin = make_stub_env(workdir / "stub-env", install)
    ports = ports or free_ports(3)
    tag = f"sidserve-triton-{os.getpid()}-{ports[0]}-"
    log = workdir / "tritonserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(install, repo, ports, tag),
            env=server_env(install, stub_bin),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, ports[0], log, timeout)
        yield TritonServer(
            http_url=f"127.0.0.1:{ports[0]}",
            grpc_url=f"127.0.0.1:{ports[1]}",
            metrics_url=f"127.0.0.1:{ports[2]}",
            repo=repo,
            log=log,
            process=proc,
        )
    finally:
        stop(proc)
        # The Python backend's /dev/shm regions outlive a server that had to be killed.
        for region in Path("/dev/shm").glob(f"{tag}*"):
            region.unlink(missing_ok=True)


def variant_bundle(bundle: Path, out: Path) -> Path:
    """The same graphs with another item table: a second model version for the versioning
    tests, without a second export."""
    import json

    from export.bundle import finish_bundle, write_item_table
    from service.bundle import load_bundle

    b = load_bundle(bundle)
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(parents=True)
    for name in {b.tokenizer.file, *b.manifest["graphs"].values()}:
        shutil.copyfile(bundle / name, staging / name)
    sids = b.item_sids.copy()
    sids[:, -1] += 1  # other disambiguation codes: other table, other version
    write_item_table(staging, b.item_ids, np.asarray(sids))
    m = b.manifest
    return finish_bundle(
        staging,
        out,
        levels=b.levels,
        codebook_sizes=b.codebook_sizes,
        hidden_size=b.hidden_size,
        cache_entries=b.cache_entries,
        heads=int(m["decoder"]["heads"]),
        tokenizer={k: v for k, v in m["tokenizer"].items() if k != "file"},
        graphs=m["graphs"],
        item_count=len(b.item_ids),
        source={"variant_of": json.dumps(m["model_version"])},
    )


# --------------------------------------------------------------------------------------------
# Fixtures (session-scoped: one server for the whole run). Registered under the names
# triton_bundle_dir, triton_repo_dir and triton_server.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="triton_bundle_dir")
def fixture_triton_bundle_dir(tiny_export: dict) -> Path:
    """The bundle the server serves: $SIDSERVE_TRITON_BUNDLE if set (to run the Triton tests
    on a real export), else the real export of the tiny random model (tests/export_fixtures)."""
    explicit = os.environ.get("SIDSERVE_TRITON_BUNDLE")
    if explicit:
        return Path(explicit)
    return tiny_export["bundle"]


@pytest.fixture(scope="session", name="triton_repo_dir")
def fixture_triton_repo_dir(
    triton_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """CPU repository materialised from the bundle, exactly as a deployment would."""
    return materialise(triton_bundle_dir, tmp_path_factory.mktemp("triton-repo"), "cpu")


@pytest.fixture(scope="session", name="triton_server")
def fixture_triton_server(
    triton_repo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """The real tritonserver on free loopback ports; fails (never skips) if it cannot run."""
    try:
        with run_tritonserver(triton_repo_dir, tmp_path_factory.mktemp("triton-run")) as server:
            yield server
            return
    except TritonUnavailable as e:
        reason = str(e)
    pytest.fail(reason, pytrace=False)


def main(argv: list[str] | None = None) -> int:
    """`install` fetches tritonserver into the cache (make target); `serve` runs a repo."""
    parser = argparse.ArgumentParser(prog="python -m tests.triton_server", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="pip-install nvidia-pytriton into the sidserve cache")
    serve = sub.add_parser("serve", help="run tritonserver on a (cpu) repository until Ctrl-C")
    serve.add_argument("repo", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(ensure_installed().root)
            return 0
        with tempfile.TemporaryDirectory() as work, run_tritonserver(args.repo, Path(work)) as srv:
            print(f"http {srv.http_url}  grpc {srv.grpc_url}  metrics {srv.metrics_url}")
            with contextlib.suppress(KeyboardInterrupt):
                srv.process.wait()
            return 0
    except TritonUnavailable as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
