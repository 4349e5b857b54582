"""`sidserve serve` in a child process, for the demo and the serving benchmark (and free
loopback ports, which the test servers use too)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def running_gateway(
    bundle: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    quiet: bool = True,
    cwd: Path | None = None,
) -> Iterator[GatewayProcess]:
    """Start the gateway on a free port, wait for /readyz, always stop it. `cwd`: run the
    code of another source tree (`python -m` imports from the working directory first)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sidserve-gateway-") as tmp:
        log = Path(tmp) / "gateway.log"
        cmd = [sys.executable, "-m", "sidserve.cli", "serve", "--bundle", str(bundle)]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*cmd, "--port", str(port)],
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdout=out if quiet else None,
                stderr=out if quiet else None,
            )
            gateway = GatewayProcess(f"http://127.0.0.1:{port}", proc, log)
            try:
                _wait_ready(gateway, timeout)
                yield gateway
            finally:
                stop_process(proc, grace=20)


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(gateway: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            tail = gateway.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the gateway exited with code {gateway.process.returncode}: {tail}")
        try:
            if httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the gateway was not ready after {timeout:.0f} s")
