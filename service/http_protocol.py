"""uvicorn's HTTP protocol with its writes coalesced: one socket write per response.

uvicorn writes a response's head and its body with two `transport.write` calls, so two
syscalls, and on loopback the first already wakes the client for a packet it cannot use yet.
Here every write made within one turn of the event loop (the head and the body of a response
are) is joined and handed to the real transport at the end of that turn. One lone query on
the Zen 2 host: p50 11.13 -> 10.60 ms (docs/capacity-log.md, twelfth sitting).
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Delegates to `transport`, except that writes are buffered until the loop's current
    turn ends (or the transport is closed) and then written as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()  # what was written before close still goes out, as with the transport
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing_protocol() -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol writing through `CoalescingTransport`, or None where
    httptools is not installed (uvicorn then picks its own)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
            super().connection_made(wrapped)  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol
