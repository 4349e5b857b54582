"""The load generator against a real local HTTP server (asyncio, in a thread) whose answers
each test chooses: counting, its own HTTP/1.1 client (Content-Length, chunked, keep-alive,
connections the server closes), and every failure kind it reports."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loadtests import loadgen

# handler(method, path, body) -> (status, body, framing); framing: "length", "chunked",
# "none" (no body and no length), "close" (no length, the connection ends the body), "hang"
# (never answers), "cut" (closes the connection half-way through the body)
Handler = Callable[[str, str, bytes], tuple[int, bytes, str]]


@dataclass
class StubServer:
    handler: Handler
    url: str = ""
    connections: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    close_after: int = 0  # > 0: close every connection after that many responses


def results_body(body: bytes) -> bytes:
    req = json.loads(body)
    n = len(req["queries"]) if "queries" in req else 1
    return json.dumps({"model_version": "x", "results": [{}] * n}).encode()


def ok_handler(framing: str = "length") -> Handler:
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        if method == "GET":
            return 200, b'{"status": "ok"}', "length"
        return 200, results_body(body), framing

    return handle


async def _serve_one(server: StubServer, reader, writer) -> None:
    server.connections += 1
    served = 0
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ")
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            body = await reader.readexactly(length)
            server.requests.append((method, path))
            status, payload, framing = server.handler(method, path, body)
            if framing == "hang":
                await asyncio.sleep(3600)
            start = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            if framing == "length":
                writer.write(f"{start}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            elif framing == "chunked":
                half = len(payload) // 2
                chunks = b"".join(
                    f"{len(c):x}\r\n".encode() + c + b"\r\n"
                    for c in (payload[:half], payload[half:])
                )
                writer.write(
                    f"{start}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
                )
            elif framing == "none":  # no body, no length (e.g. 204)
                writer.write(f"{start}\r\n".encode())
            elif framing == "close":
                writer.write(f"{start}Connection: close\r\n\r\n".encode() + payload)
                await writer.drain()
                return
            elif framing == "cut":
                writer.write(
                    f"{start}Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:5]
                )
                await writer.drain()
                return
            await writer.drain()
            served += 1
            if server.close_after and served >= server.close_after:
                return
    finally:
        writer.close()


@pytest.fixture
def stub() -> Iterator[Callable[[Handler], StubServer]]:
    """Start a stub server with a handler; stopped at the end of the test."""
    loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    def start(handler: Handler) -> StubServer:
        server = StubServer(handler)
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            srv = await asyncio.start_server(lambda r, w: _serve_one(server, r, w), "127.0.0.1", 0)
            server.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(main())
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(10), "stub server did not start"
        loops.append((loop, thread))
        return server

    yield start
    for loop, thread in loops:
        asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def _cancel_all() -> None:
    """Cancel the stub's connection handlers (a hanging one sleeps) before its loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def queries(tmp_path: Path) -> Path:
    path = tmp_path / "queries.txt"
    path.write_text("cordless drill\n\nkitchen faucet\nled bulb\n")
    return path


def run(url: str, queries: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = loadgen.main(
        ["--url", url, "--queries", str(queries), "--out", str(out), "--quiet", *extra]
    )
    return code, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_counts_every_request_and_keeps_connections_alive(stub, queries, tmp_path, framing):
    server = stub(ok_handler(framing))
    code, r = run(server.url, queries, tmp_path / "r.json", "--concurrency", "3",
                  "--requests", "60", "--batch", "2", "--validate")  # fmt: skip
    assert code == 0
    assert r["count"] == r["ok"] == 60 and r["errors"] == 0
    assert r["status_codes"] == {"200": 60}
    assert r["warmup"] == {"count": 0, "errors": 0}
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["loadgen_cpu_ms_per_request"] > 0
    posts = [p for m, p in server.requests if m == "POST"]
    assert posts == ["/v1/query/sids"] * 60
    # one connection for the health check, then one per worker, unless the server closes them
    expected = 1 + (60 if framing == "close" else 3)
    assert server.connections == expected


def test_a_204_without_length_is_an_empty_answer_not_a_wait(stub, queries, tmp_path):
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        return (200, b"{}", "length") if method == "GET" else (204, b"", "none")

    server = stub(handle)
    code, r = run(server.url, queries, tmp_path / "r.json", "--requests", "5", "--concurrency",
                  "1", "--timeout", "2")  # fmt: skip
    assert code == 0 and r["ok"] == 5 and r["status_codes"] == {"204": 5}
    assert r["max_ms"] < 1000
    assert server.connections == 2  # the connection stays open across the answers


def test_a_connection_the_server_closed_while_idle_is_replaced(stub, queries, tmp_path):
    server = stub(ok_handler())
    server.close_after = 1  # the server ends every connection after one response
    code, r = run(server.url, queries, tmp_path / "r.json", "--concurrency", "2",
                  "--requests", "20")  # fmt: skip
    assert code == 0 and r["ok"] == 20 and r["errors"] == 0, r["errors_by_kind"]


def test_http_errors_and_bad_bodies_are_counted_by_kind(stub, queries, tmp_path):
    n = {"posts": 0}

    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        if method == "GET":
            return 200, b"{}", "length"
        n["posts"] += 1
        if n["posts"] % 3 == 0:
            return 503, b'{"error": "overloaded"}', "length"
        if n["posts"] % 3 == 1:
            return 200, b'{"results": []}', "length"  # wrong count for --validate
        return 200, results_body(body), "length"

    server = stub(handle)
    code, r = run(server.url, queries, tmp_path / "r.json", "--concurrency", "1",
                  "--requests", "30", "--validate")  # fmt: skip
    assert code == 0  # some succeeded and --max-error-rate is off
    assert r["errors_by_kind"] == {"bad_response": 10, "http_503": 10}
    assert r["ok"] == 10 and r["status_codes"] == {"200": 20, "503": 10}
    code, r = run(server.url, queries, tmp_path / "r2.json", "--concurrency", "1",
                  "--requests", "30", "--max-error-rate", "0.5", "--validate")  # fmt: skip
    assert code == 1 and r["error_rate"] == pytest.approx(2 / 3, abs=1e-4)


def test_a_hanging_server_is_a_timeout_and_the_run_still_ends(stub, queries, tmp_path):
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        return (200, b"{}", "length") if method == "GET" else (200, b"", "hang")

    server = stub(handle)
    start = time.monotonic()
    code, r = run(server.url, queries, tmp_path / "r.json", "--concurrency", "2",
                  "--duration", "0.5", "--timeout", "0.3")  # fmt: skip
    assert time.monotonic() - start < 10
    assert code == 1  # nothing succeeded
    assert r["ok"] == 0 and r["count"] > 0
    assert set(r["errors_by_kind"]) == {"timeout"}


def test_a_response_cut_short_is_a_protocol_error(stub, queries, tmp_path):
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        return (200, b"{}", "length") if method == "GET" else (200, b'{"results": []}', "cut")

    server = stub(handle)
    code, r = run(server.url, queries, tmp_path / "r.json", "--requests", "5")
    assert code == 1 and r["errors_by_kind"] == {"remote_protocol_error": 5}


def test_an_unreachable_or_unhealthy_server_exits_2_without_load(stub, queries, tmp_path, capsys):
    from service.launcher import free_port

    out = tmp_path / "r.json"
    code, _ = run(f"http://127.0.0.1:{free_port()}", queries, out, "--requests", "5")
    assert code == 2 and not out.exists()
    assert "connect_error" in capsys.readouterr().err

    def unhealthy(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        return 503, b"{}", "length"

    server = stub(unhealthy)
    code, _ = run(server.url, queries, out, "--requests", "5")
    assert code == 2 and not out.exists()
    assert "GET /healthz answered 503" in capsys.readouterr().err
    assert all(m == "GET" for m, _ in server.requests)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:8000", "http://:80"])
def test_a_url_it_cannot_use_is_a_clear_error(queries, tmp_path, capsys, url):
    code, _ = run(url, queries, tmp_path / "r.json", "--requests", "1")
    assert code == 2 and "--url" in capsys.readouterr().err


def test_open_loop_sends_on_schedule(stub, queries, tmp_path):
    server = stub(ok_handler())
    start = time.monotonic()
    code, r = run(server.url, queries, tmp_path / "r.json", "--rate", "80", "--duration", "1",
                  "--warmup", "0.25", "--concurrency", "4", "--validate")  # fmt: skip
    assert code == 0 and r["errors"] == 0
    assert r["config"]["mode"] == "open" and r["config"]["rate_per_s"] == 80
    # due at 0, 1/80, ...: the schedule, not the answers; the first 0.25 s are the warm-up
    assert r["warmup"]["count"] == 20 and r["count"] == 80
    assert time.monotonic() - start < 5
    assert r["send_lag_ms"]["p50"] < 20  # a fast server: requests leave when due


def test_open_loop_latency_counts_from_when_a_request_was_due(stub, queries, tmp_path):
    """One connection and a server that takes 50 ms per answer serve 20 requests/s; offered 40,
    the queue grows, and a request's latency includes its wait (no coordinated omission)."""

    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        if method == "POST":
            time.sleep(0.05)
        return 200, results_body(body) if method == "POST" else b"{}", "length"

    server = stub(handle)
    code, r = run(server.url, queries, tmp_path / "r.json", "--rate", "40", "--duration", "1",
                  "--concurrency", "1", "--timeout", "5")  # fmt: skip
    assert code == 0 and r["count"] == 40 and r["errors"] == 0
    # the last requests waited for about 20 answers ahead of them (~1 s): far above 50 ms
    assert r["latency_ms"]["max"] > 600
    assert r["send_lag_ms"]["max"] > 500
    code, closed = run(server.url, queries, tmp_path / "c.json", "--duration", "1",
                       "--concurrency", "1")  # fmt: skip
    assert closed["config"]["mode"] == "closed" and closed["send_lag_ms"] is None
    assert closed["latency_ms"]["max"] < 300  # a closed loop never sees that queue


def test_open_loop_with_a_hanging_server_times_out_and_ends(stub, queries, tmp_path):
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        return (200, b"{}", "length") if method == "GET" else (200, b"", "hang")

    server = stub(handle)
    start = time.monotonic()
    code, r = run(server.url, queries, tmp_path / "r.json", "--rate", "20", "--duration", "0.5",
                  "--concurrency", "2", "--timeout", "0.3")  # fmt: skip
    assert time.monotonic() - start < 10
    assert code == 1 and r["ok"] == 0 and r["count"] == 10
    assert set(r["errors_by_kind"]) == {"timeout"}  # waiting for a connection counts too
