"""HTTP load generator for the sidserve gateway, run as its own process.

    python loadtests/loadgen.py --url http://127.0.0.1:8000 --queries queries.txt \
        --concurrency 8 --duration 10 --warmup 2 --endpoint query --out results.json

Closed loop (the default): N workers each own one keep-alive HTTP/1.1 connection (a minimal
asyncio client, below); each sends its next request as soon as the previous one answered.
Open loop (`--rate R`): request i is due at i / R seconds, whatever the answers, on up to N
connections, and its latency counts from when it was due, so a slow server shows as latency
instead of silently lowering the rate (no coordinated omission). Request k (counted from the
start, warm-up included) is built from the input lines starting at line (k * batch) mod n, so
every run sends the same sequence of bodies. Only requests *started* (open loop: due) after
the warm-up are measured. See loadtests/README.md for the output.

Exit codes: 0 the run finished and the results were written; 1 no measured request succeeded
(or the error rate exceeded --max-error-rate); 2 bad arguments or input, or the server was
unreachable or unhealthy at start.

Standard library only, so it runs from any Python 3.11. It does not use httpx: on a 2-core
machine the generator shares the cores with the server it measures, and httpx cost about
2.3 ms of CPU per request against the gateway's 7.6 (docs/capacity-log.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SCHEMA = "sidserve.loadgen/1"
PATHS = {"query": "/v1/query/sids", "encode": "/v1/items/encode"}
# after a transport error (connection refused, reset) a worker pauses this long, so a dead
# server does not turn the load generator into a busy loop
ERROR_BACKOFF_S = 0.01
# open loop: the longest the schedule sleeps before it looks at the stop signal again
STOP_CHECK_S = 0.05


class LoadgenError(Exception):
    """Bad input or an unreachable server: one line on stderr, exit 2."""


# --------------------------------------------------------------------------- request bodies


class Bodies:
    """The deterministic sequence of request bodies: request k starts at line (k*batch) mod n,
    so there are at most n distinct ones. For `encode` the item ids are
    `<id_prefix><line number>`, so they repeat across cycles (an upsert rewrites the same ids)
    and are distinct within a request as long as batch <= n.
    """

    def __init__(
        self, lines: Sequence[str], endpoint: str, batch: int, extra: dict[str, Any], id_prefix: str
    ) -> None:
        if not lines:
            raise LoadgenError("the queries file has no non-blank line")
        if batch < 1:
            raise LoadgenError("--batch must be >= 1")
        if endpoint == "encode" and batch > len(lines):
            raise LoadgenError(
                f"--batch {batch} exceeds the {len(lines)} lines of the file: item ids "
                "would repeat within a request"
            )
        self.lines = list(lines)
        self.endpoint = endpoint
        self.batch = batch
        self.extra = extra
        self.id_prefix = id_prefix

    def start(self, k: int) -> int:
        """The line request k starts at."""
        return (k * self.batch) % len(self.lines)

    def payload(self, k: int) -> dict[str, Any]:
        n = len(self.lines)
        start = self.start(k)
        idx = [(start + j) % n for j in range(self.batch)]
        body: dict[str, Any]
        if self.endpoint == "query":
            if self.batch == 1:
                body = {"query": self.lines[idx[0]]}
            else:
                body = {"queries": [self.lines[i] for i in idx]}
        else:
            items = [{"item_id": f"{self.id_prefix}{i}", "text": self.lines[i]} for i in idx]
            body = {"items": items, "upsert": False}
        body.update(self.extra)
        return body

    def body(self, k: int) -> bytes:
        return json.dumps(self.payload(k), ensure_ascii=False).encode("utf-8")


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadgenError(f"cannot read {path}: {exc}") from exc
    return [s for s in (line.strip() for line in text.splitlines()) if s]


def expected_count(response: dict[str, Any], endpoint: str) -> int:
    key = "results" if endpoint == "query" else "items"
    value = response.get(key)
    return len(value) if isinstance(value, list) else -1


# --------------------------------------------------------------------------- the run


@dataclass
class Record:
    """Outcomes of the measured requests (warm-up requests only go to the warm-up counters)."""

    latencies_ns: list[int] = field(default_factory=list)  # successful (2xx) requests
    all_latencies_ns: list[int] = field(default_factory=list)  # every completed request
    lags_ns: list[int] = field(default_factory=list)  # open loop: sent this long after due
    status: Counter[str] = field(default_factory=Counter)  # HTTP status -> count
    errors: Counter[str] = field(default_factory=Counter)  # kind -> count
    count: int = 0
    ok: int = 0
    last_done_ns: int = 0
    warmup_count: int = 0
    warmup_errors: int = 0


# --------------------------------------------------------------------------- HTTP/1.1 client


class RequestError(Exception):
    """A request that got no (complete) HTTP response; `kind` goes to errors_by_kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where to connect, from --url: http or https, host, port, and a path prefix."""

    host: str
    port: int
    tls: bool
    host_header: str
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LoadgenError(f"--url must be http://host[:port] or https://…, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise LoadgenError(f"--url {url!r}: {exc}") from exc
        return cls(parts.hostname, port, parts.scheme == "https", parts.netloc, parts.path)

    def request(self, method: str, path: str, body: bytes) -> bytes:
        """The bytes of a JSON request: request line, headers and body."""
        head = (
            f"{method} {self.base_path}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body


class Connection:
    """One keep-alive HTTP/1.1 connection (asyncio streams), used by one worker at a time.

    Any failure, or a deadline hit mid-request, closes it: the next request opens a fresh one,
    so a late answer can never be read as the next request's. A connection the server closed
    while idle (keep-alive timeout) is noticed before reuse and replaced."""

    def __init__(self, target: Target, connect_timeout: float) -> None:
        self.target, self.connect_timeout = target, connect_timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        t = self.target
        try:
            async with asyncio.timeout(self.connect_timeout):
                self.reader, self.writer = await asyncio.open_connection(
                    t.host, t.port, ssl=ssl.create_default_context() if t.tls else None
                )
        except TimeoutError:
            why = f"no connection within {self.connect_timeout:g} s"
            raise RequestError("connect_timeout", why) from None
        except OSError as exc:
            raise RequestError("connect_error", str(exc) or type(exc).__name__) from exc
        return self.reader, self.writer

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body) of the response. A reused connection that turns
        out to be closed before any byte of the answer (the server ended it while idle, and
        its FIN had not been seen yet) is replaced and the request sent once more, as HTTP
        clients do."""
        reused = self.reader is not None and not self.reader.at_eof()
        if not reused:
            self.close()
            await self._connect()
        try:
            return await self._exchange(data)
        except _Stale:
            if not reused:
                raise
        self.close()
        await self._connect()
        return await self._exchange(data)

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            try:
                writer.write(data)
                await writer.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _Stale("write_error", str(exc) or type(exc).__name__) from exc
            except OSError as exc:
                raise RequestError("write_error", str(exc) or type(exc).__name__) from exc
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                kind = _Stale if not exc.partial else RequestError
                raise kind("remote_protocol_error", "connection closed before the answer") from exc
            except ConnectionResetError as exc:
                raise _Stale("read_error", str(exc) or type(exc).__name__) from exc
            except asyncio.LimitOverrunError as exc:
                raise RequestError("remote_protocol_error", "response head too large") from exc
            except OSError as exc:
                raise RequestError("read_error", str(exc) or type(exc).__name__) from exc
            try:
                status, length, chunked, keep = _parse_head(raw)
                if status in (204, 304) or status < 200:  # never a body (RFC 9112 6.3)
                    payload = b""
                elif chunked:
                    payload = await _read_chunked(reader)
                elif length is not None:
                    payload = await reader.readexactly(length)
                else:  # delimited by the end of the connection
                    payload, keep = await reader.read(), False
            except asyncio.IncompleteReadError as exc:
                why = "connection closed mid-response"
                raise RequestError("remote_protocol_error", why) from exc
            except asyncio.LimitOverrunError as exc:
                raise RequestError("remote_protocol_error", "chunk line too long") from exc
            except OSError as exc:
                raise RequestError("read_error", str(exc) or type(exc).__name__) from exc
        except BaseException:  # including a deadline or cancellation mid-request
            self.close()
            raise
        if not keep:
            self.close()
        return status, payload


class _Stale(RequestError):
    """The connection ended before any byte of the answer: on a reused connection, worth
    one more try on a fresh one."""


def _parse_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    """Status line and headers -> (status, content length, chunked, keep-alive)."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise RequestError("remote_protocol_error", f"not an HTTP/1.x status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None
    if not chunked and "content-length" in headers:
        if not headers["content-length"].isdigit():
            raise RequestError("remote_protocol_error", "bad Content-Length")
        length = int(headers["content-length"])
    keep = headers.get("connection", "").lower() != "close" and version != "HTTP/1.0"
    return int(code), length, chunked, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise RequestError("remote_protocol_error", f"bad chunk size {line[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(out)
        out += (await reader.readexactly(size + 2))[:-2]


async def _same(conn: Connection) -> Connection:
    """A closed-loop worker's connection source: always its own connection."""
    return conn


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a failed request's exception."""
    if isinstance(exc, RequestError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"exception:{type(exc).__name__}"


class Runner:
    def __init__(self, args: argparse.Namespace, bodies: Bodies) -> None:
        self.args = args
        self.bodies = bodies
        self.path = PATHS[args.endpoint]
        self.target = Target.parse(args.url)
        self._requests: dict[int, bytes] = {}  # whole POSTs by start line, built once each
        self.rec = Record()
        self.next_k = 0  # next request index (warm-up included); asyncio: no lock needed
        self.measured_claimed = 0
        self.stop = asyncio.Event()
        self.truncated = False
        self.t0_ns = 0
        self.measure_start_ns = 0
        self.end_ns: int | None = None  # duration mode: no request starts at or after this
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.workers: list[asyncio.Task[None]] = []
        self.in_flight: set[asyncio.Task[None]] = set()  # open loop: requests under way
        self.cpu_s = 0.0  # this process's CPU time over the run (warm-up included)

    def on_signal(self) -> None:
        """First SIGINT/SIGTERM: start no new request, let in-flight ones finish (each within
        --timeout) and write the results. A second one cancels the in-flight requests."""
        if self.stop.is_set():
            for t in [*self.workers, *self.in_flight]:
                t.cancel()
        self.stop.set()

    async def preflight(self) -> None:
        """GET --health-path until it answers 2xx, for at most --wait-ready seconds."""
        a = self.args
        if not a.health_path:
            return
        deadline = time.monotonic() + a.wait_ready
        data = self.target.request("GET", a.health_path, b"")
        last = ""
        while True:
            conn = Connection(self.target, a.connect_timeout)
            try:
                async with asyncio.timeout(a.timeout):
                    status, _ = await conn.request(data)
                if 200 <= status < 300:
                    return
                last = f"GET {a.health_path} answered {status}"
            except (RequestError, TimeoutError) as exc:
                why = str(exc) or f"no answer within {a.timeout:g} s"
                last = f"{a.url} unreachable ({error_kind(exc)}: {why})"
            finally:
                conn.close()
            if time.monotonic() >= deadline:
                raise LoadgenError(last)
            await asyncio.sleep(0.2)

    def _request(self, k: int) -> bytes:
        """The bytes of request k (head and body), serialised once per start line."""
        start = self.bodies.start(k)
        data = self._requests.get(start)
        if data is None:
            data = self.target.request("POST", self.path, self.bodies.body(k))
            self._requests[start] = data
        return data

    def _claim(self, now: int) -> tuple[int, bool] | None:
        """The index of the request starting (open loop: due) at `now` and whether it is
        measured; None when the run stops."""
        if self.stop.is_set():
            return None
        if self.end_ns is not None and now >= self.end_ns:
            return None
        measured = now >= self.measure_start_ns
        if measured and self.args.requests is not None:
            if self.measured_claimed >= self.args.requests:
                return None
            self.measured_claimed += 1
        k = self.next_k
        self.next_k += 1
        return k, measured

    async def worker(self) -> None:
        """One closed-loop worker on its own keep-alive connection."""
        conn = Connection(self.target, self.args.connect_timeout)
        try:
            await self._loop(conn)
        finally:
            conn.close()

    async def _loop(self, conn: Connection) -> None:
        while (claim := self._claim(time.perf_counter_ns())) is not None:
            k, measured = claim
            start = time.perf_counter_ns()
            status, kind = await self._send(self._request(k), _same(conn))
            self._record(measured, start, status, kind)
            if kind is not None and status is None:
                await asyncio.sleep(ERROR_BACKOFF_S)

    async def _open_loop(self) -> None:
        """Request i is due at t0 + i / rate; each runs in its own task on the first free
        connection (at most --concurrency), so the schedule never waits for an answer."""
        period_ns = 1e9 / self.args.rate
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        conns = [
            Connection(self.target, self.args.connect_timeout) for _ in range(self.args.concurrency)
        ]
        for conn in conns:
            idle.put_nowait(conn)
        tasks: set[asyncio.Task[None]] = set()
        self.in_flight = tasks
        try:
            for i in itertools.count():
                due = self.t0_ns + int(i * period_ns)
                claim = self._claim(due)
                if claim is None:
                    break
                # plain sleeps (a wait_for on the stop event cost a task per request), in
                # slices so that a stop signal is seen within STOP_CHECK_S
                while (wait_ns := due - time.perf_counter_ns()) > 0 and not self.stop.is_set():
                    await asyncio.sleep(min(wait_ns / 1e9, STOP_CHECK_S))
                if self.stop.is_set():
                    break
                task = asyncio.create_task(self._due(idle, *claim, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # only left when this loop itself was cancelled (hard limit)
                task.cancel()
            for conn in conns:
                conn.close()

    async def _due(self, idle: asyncio.Queue[Connection], k: int, measured: bool, due: int) -> None:
        """One open-loop request: wait for a free connection, send; latency from `due`."""
        taken: list[Connection] = []

        async def take() -> Connection:
            conn = await idle.get()
            taken.append(conn)
            if measured:
                self.rec.lags_ns.append(time.perf_counter_ns() - due)
            return conn

        try:
            status, kind = await self._send(self._request(k), take())
        finally:
            for conn in taken:
                idle.put_nowait(conn)
        self._record(measured, due, status, kind)

    async def _send(
        self, data: bytes, connection: Awaitable[Connection]
    ) -> tuple[str | None, str | None]:
        """(HTTP status or None, error kind or None) of one request on the connection that
        `connection` gives, within --timeout counted from now (open loop: waiting for a free
        connection included)."""
        a = self.args
        status: str | None = None
        kind: str | None = None
        try:
            async with asyncio.timeout(a.timeout):
                conn = await connection
                code, payload = await conn.request(data)
            status = str(code)
            if not 200 <= code < 300:
                kind = f"http_{code}"
            elif a.validate:
                try:
                    got = expected_count(json.loads(payload), a.endpoint)
                except ValueError:
                    got = -1
                if got != self.bodies.batch:
                    kind = "bad_response"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is counted, none ends the run
            kind = error_kind(exc)
        return status, kind

    def _record(self, measured: bool, start: int, status: str | None, kind: str | None) -> None:
        rec = self.rec
        done = time.perf_counter_ns()
        if measured:
            rec.count += 1
            rec.all_latencies_ns.append(done - start)
            rec.last_done_ns = max(rec.last_done_ns, done)
            if status is not None:
                rec.status[status] += 1
            if kind is None:
                rec.ok += 1
                rec.latencies_ns.append(done - start)
            else:
                rec.errors[kind] += 1
        else:
            rec.warmup_count += 1
            rec.warmup_errors += kind is not None

    async def run(self) -> None:
        a = self.args
        await self.preflight()
        self.t0_ns = time.perf_counter_ns()
        cpu0 = time.process_time()
        self.measure_start_ns = self.t0_ns + int(a.warmup * 1e9)
        if a.duration is not None:
            self.end_ns = self.measure_start_ns + int(a.duration * 1e9)
            # in-flight requests end within --timeout; then a little slack
            hard_limit = a.warmup + a.duration + a.timeout + 5.0
        else:
            hard_limit = a.max_time
        if a.rate is not None:
            workers = [asyncio.create_task(self._open_loop())]
        else:
            workers = [asyncio.create_task(self.worker()) for _ in range(a.concurrency)]
        self.workers = workers
        _, pending = await asyncio.wait(workers, timeout=hard_limit)
        if pending:
            self.truncated = True
            for t in pending:
                t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for t in workers:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:  # a bug in the worker, not a failed request
                raise exc
        self.cpu_s = time.process_time() - cpu0
        if self.stop.is_set():
            self.truncated = True


# --------------------------------------------------------------------------- results


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(values_ns: Sequence[int]) -> dict[str, float | None]:
    ms = sorted(v / 1e6 for v in values_ns)
    if not ms:
        return {k: None for k in ("min", "mean", "p50", "p90", "p99", "max")}
    return {
        "min": round(ms[0], 4),
        "mean": round(sum(ms) / len(ms), 4),
        "p50": round(percentile(ms, 50), 4),
        "p90": round(percentile(ms, 90), 4),
        "p99": round(percentile(ms, 99), 4),
        "max": round(ms[-1], 4),
    }


def results(runner: Runner, lines: int) -> dict[str, Any]:
    a = runner.args
    rec = runner.rec
    if rec.count:
        elapsed_ns = max(rec.last_done_ns - runner.measure_start_ns, 1)
        if runner.end_ns is not None and not runner.truncated:
            elapsed_ns = max(elapsed_ns, runner.end_ns - runner.measure_start_ns)
    else:
        elapsed_ns = 0
    elapsed = elapsed_ns / 1e9

    def rate(n: int) -> float:
        return round(n / elapsed, 3) if elapsed > 0 else 0.0

    lat = latency_summary(rec.latencies_ns)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": runner.started_at,
        "config": {
            "url": a.url,
            "endpoint": a.endpoint,
            "path": runner.path,
            "concurrency": a.concurrency,
            "mode": "closed" if a.rate is None else "open",
            "rate_per_s": a.rate,
            "duration_s": a.duration,
            "requests": a.requests,
            "warmup_s": a.warmup,
            "batch": a.batch,
            "timeout_s": a.timeout,
            "connect_timeout_s": a.connect_timeout,
            "validate": a.validate,
            "queries_file": str(a.queries),
            "lines": lines,
            "body_extra": a.body_extra,
        },
        "count": rec.count,
        "ok": rec.ok,
        "errors": rec.count - rec.ok,
        "error_rate": round((rec.count - rec.ok) / rec.count, 6) if rec.count else None,
        "errors_by_kind": dict(sorted(rec.errors.items())),
        "status_codes": dict(sorted(rec.status.items())),
        "elapsed_s": round(elapsed, 6),
        "qps": rate(rec.count),
        "ok_qps": rate(rec.ok),
        "texts_per_s": rate(rec.ok * a.batch),
        "items_per_s": rate(rec.ok * a.batch) if a.endpoint == "encode" else None,
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "max_ms": lat["max"],
        "latency_ms": lat,
        "latency_ms_all": latency_summary(rec.all_latencies_ns),
        # open loop: how late requests went out after they were due (a free connection and
        # the generator's own scheduling); large values mean --concurrency is too small
        "send_lag_ms": latency_summary(rec.lags_ns) if a.rate is not None else None,
        "warmup": {"count": rec.warmup_count, "errors": rec.warmup_errors},
        # the generator's own CPU (warm-up included): on a small machine it competes with the
        # server, so a benchmark should report it next to the server's numbers
        "loadgen_cpu_s": round(runner.cpu_s, 3),
        "loadgen_cpu_ms_per_request": round(
            1e3 * runner.cpu_s / max(rec.count + rec.warmup_count, 1), 4
        ),
        "truncated": runner.truncated,
    }
    if a.save_latencies:
        out["latencies_ms"] = [round(v / 1e6, 4) for v in rec.latencies_ns]
    return out


def summary_line(r: dict[str, Any]) -> str:
    c = r["config"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rate = f"{r['qps']:.1f} req/s"
    if c["endpoint"] == "encode":
        rate += f", {r['items_per_s']:.1f} items/s"
    elif c["batch"] > 1:
        rate += f", {r['texts_per_s']:.1f} queries/s"
    codes = " ".join(f"{k}:{v}" for k, v in r["status_codes"].items()) or "-"
    kinds = " ".join(f"{k}:{v}" for k, v in r["errors_by_kind"].items())
    load = f"c={c['concurrency']}"
    if c.get("rate_per_s") is not None:
        load = f"rate={c['rate_per_s']:g}/s c<={c['concurrency']}"
    return (
        f"loadgen {c['endpoint']} {load} b={c['batch']}: {r['count']} req in "
        f"{r['elapsed_s']:.2f}s, {rate}, ms p50 {ms(r['p50_ms'])} p90 {ms(r['p90_ms'])} "
        f"p99 {ms(r['p99_ms'])} max {ms(r['max_ms'])}, errors {r['errors']}"
        + (f" ({kinds})" if kinds else "")
        + f", status {codes}"
        + (" [truncated]" if r["truncated"] else "")
    )


# --------------------------------------------------------------------------- CLI


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def non_negative_float(text: str) -> float:
    v = float(text)
    if not v >= 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def json_object(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadgen",
        description="Load generator for the sidserve gateway (closed loop, or open with --rate).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--queries",
        required=True,
        type=Path,
        help="text file, one query (or item text for --endpoint encode) per line",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        help="closed loop: workers; open loop: the most requests in flight (connections)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        help="open loop: requests per second, sent on schedule whatever the answers; "
        "latency counts from when each was due (default: closed loop)",
    )
    stop = p.add_mutually_exclusive_group(required=True)
    stop.add_argument("--duration", type=positive_float, help="measured seconds (after warm-up)")
    stop.add_argument("--requests", type=positive_int, help="measured requests (after warm-up)")
    p.add_argument("--warmup", type=non_negative_float, default=0.0, help="unmeasured seconds")
    p.add_argument("--endpoint", choices=sorted(PATHS), default="query")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        help="texts per request: query 1 sends {'query'}, >1 {'queries'}; encode: items",
    )
    p.add_argument(
        "--body-extra",
        type=json_object,
        default={},
        help='JSON object merged into every body, e.g. \'{"beam_width": 10, "top_k": 10}\'',
    )
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="total seconds per request")
    p.add_argument("--connect-timeout", type=positive_float, default=2.0)
    p.add_argument(
        "--health-path",
        default="/healthz",
        help="GET before the run; must answer 2xx (empty string: skip the check)",
    )
    p.add_argument(
        "--wait-ready",
        type=non_negative_float,
        default=0.0,
        help="keep retrying the health check this many seconds before giving up",
    )
    p.add_argument(
        "--max-time",
        type=positive_float,
        default=600.0,
        help="with --requests: stop (results marked truncated) after this many seconds",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="parse each 2xx body and check it holds one result/item per text",
    )
    p.add_argument(
        "--max-error-rate",
        type=non_negative_float,
        default=1.0,
        help="exit 1 if errors/count exceeds this (exit 1 anyway when nothing succeeded)",
    )
    p.add_argument("--id-prefix", default="lg-", help="encode: item_id = prefix + line number")
    p.add_argument("--save-latencies", action="store_true", help="also write every ok latency (ms)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stdout")
    return p


async def amain(args: argparse.Namespace) -> int:
    lines = read_lines(args.queries)
    bodies = Bodies(lines, args.endpoint, args.batch, args.body_extra, args.id_prefix)
    runner = Runner(args, bodies)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, runner.on_signal)
    await runner.run()
    r = results(runner, len(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.out)
    if not args.quiet:
        print(summary_line(r), flush=True)
    if r["ok"] == 0:
        print("loadgen: no measured request succeeded", file=sys.stderr)
        return 1
    if r["error_rate"] is not None and r["error_rate"] > args.max_error_rate:
        print(
            f"loadgen: error rate {r['error_rate']:.4f} exceeds {args.max_error_rate}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.url = args.url.rstrip("/")
    try:
        return asyncio.run(amain(args))
    except LoadgenError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were installed
        print("loadgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
