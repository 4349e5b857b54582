"""A real, throwaway `redis-server` for the tests (fixture `redis_server`: one server per
session, emptied before each test).

Enable it with `pytest_plugins = ["tests.redis_server"]` in tests/conftest.py. The server
listens on a free loopback port, persists nothing, and is terminated at the end of the
session whatever happened. Without the `redis-server` binary the tests fail (they are the
only check of the Redis store): install it with `apt-get install -y redis-server`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.launcher import free_port, stop_process

START_TIMEOUT_S = 10.0


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(binary: str) -> Iterator[str]:
    """Start redis-server on a free port, yield its URL, always terminate it."""
    with tempfile.TemporaryDirectory(prefix="sidserve-redis-") as workdir:
        log = Path(workdir) / "redis.log"
        output = ""
        for _attempt in range(3):  # another process may grab the port between probe and bind
            port = free_port()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "no", "--dir", workdir, "--logfile", str(log)]
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + START_TIMEOUT_S
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers_ping(port):
                        yield f"redis://127.0.0.1:{port}/0"
                        return
                    time.sleep(0.05)
                output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            finally:
                stop_process(proc, grace=5)
        pytest.fail(f"redis-server did not answer PING on 127.0.0.1; its log ends: {output}")


@pytest.fixture(scope="session")
def redis_session() -> Iterator[str]:
    """URL of the session's one redis-server (started once: tests get it through
    `redis_server`, which empties it first)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis store tests need a real server: "
            "apt-get install -y redis-server"
        )
    with running_redis(binary) as url:
        yield url


@pytest.fixture
def redis_server(redis_session: str) -> str:
    """URL of a live redis-server holding no keys when the test starts: versions, and the
    upserts journal that every version's load reads, do not leak from one test to the next."""
    with redis.Redis.from_url(redis_session) as client:
        client.flushall()
    return redis_session


@pytest.fixture
def redis_refusing_writes(redis_server: str) -> Iterator[Callable[[str], None]]:
    """Switches the session's Redis into a state that refuses writes ('oom': full under
    noeviction; 'replica': read-only after a failover), and always back."""
    redis_client = redis.Redis.from_url(redis_server, decode_responses=True)
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]

    def refuse(how: str) -> None:
        if how == "oom":
            redis_client.config_set("maxmemory-policy", "noeviction")
            redis_client.config_set("maxmemory", 1)  # below what the server already uses
        else:
            redis_client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    try:
        yield refuse
    finally:
        redis_client.execute_command("REPLICAOF", "NO", "ONE")
        redis_client.config_set("maxmemory", 0)
        redis_client.config_set("maxmemory-policy", policy)
        redis_client.close()
