"""A ceiling on request bodies: FastAPI reads a whole body before validating it, so without
one a single huge request could take the gateway's memory before any limit on texts or
items is checked."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body reading passes it through unchanged; mapped to
    the error shape in `errors.py`."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (max_body_bytes)")


class BodyLimit:
    """ASGI middleware: a declared Content-Length over `limit` fails before anything is read;
    a body without one (chunked) fails as soon as the bytes received pass `limit`."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.limit
        received = 0

        async def counted() -> Message:
            nonlocal received
            if too_large:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
