"""`service.http_protocol`: writes made in one turn of the event loop leave as one, in order,
and nothing written before a close is lost."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from service.http_protocol import CoalescingTransport, coalescing_protocol


class Recorder:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


def test_writes_of_one_turn_go_out_as_one_and_later_turns_separately():
    async def run() -> Recorder:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        t.write(b"")
        assert raw.writes == [] and t.get_write_buffer_size() == 7 + 23
        await asyncio.sleep(0)
        t.writelines([b"next", b"-turn"])
        await asyncio.sleep(0)
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next-turn"]


def test_close_sends_what_was_written_first_and_abort_drops_it():
    async def run() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        closing, aborting = Recorder(), Recorder()
        a = CoalescingTransport(closing, loop)  # type: ignore[arg-type]
        a.write(b"last words")
        a.close()
        assert closing.writes == [b"last words"] and closing.closed
        b = CoalescingTransport(aborting, loop)  # type: ignore[arg-type]
        b.write(b"lost")
        b.abort()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        a.write(b"after close")  # dropped, as the closed transport would
        await asyncio.sleep(0)
        return closing, aborting

    closing, aborting = asyncio.run(run())
    assert closing.writes == [b"last words"]
    assert aborting.writes == [] and aborting.aborted


def test_other_calls_reach_the_transport():
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.new_event_loop())  # type: ignore[arg-type]
    assert t.get_extra_info("peername") == ("127.0.0.1", 5)
    assert not t.is_closing()


def test_a_real_server_sends_each_response_in_one_write():
    """uvicorn with the coalescing protocol, a raw socket client: each response's head and body
    reach the transport as one write (counted at the real transport)."""
    import uvicorn

    protocol = coalescing_protocol()
    assert protocol is not None, "httptools is missing: pip install 'uvicorn[standard]'"
    writes: list[bytes] = []
    body = b'{"ok": true}' * 100

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    class Counting(protocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            original = transport.write

            def write(data: bytes) -> None:
                writes.append(bytes(data))
                original(data)

            transport.write = write
            super().connection_made(transport)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=Counting, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    async def run() -> list[bytes]:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(head + await reader.readexactly(len(body)))
        writer.close()
        server.should_exit = True
        await serving
        return answers

    answers = asyncio.run(run())
    assert len(writes) == 2 and writes == answers  # head and body together, per response
    assert all(a.endswith(body) for a in answers)


def test_without_httptools_uvicorn_keeps_its_own_protocol(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_httptools(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("uvicorn.protocols.http.httptools_impl"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_httptools)
    assert coalescing_protocol() is None
