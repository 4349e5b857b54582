"""Request ids: every response carries `x-request-id`, the caller's own when it sent a usable
one (so a search backend can follow one query through its logs and ours), else a new one; the
gateway's log line for an unexpected error names it."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str | None:
    """The id `RequestIds` gave this request (None outside it)."""
    return scope.get("state", {}).get("request_id")


class RequestIds:
    """ASGI middleware: picks the request's id, keeps it in the request state (where
    `errors.py` reads it) and adds it to the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = given if given is not None and _USABLE.fullmatch(given) else None
        text = rid.decode("ascii") if rid is not None else os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = text
        header = (HEADER, text.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
