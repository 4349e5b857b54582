"""Every error becomes one JSON shape (`protocol.ErrorResponse`), mapped here and only here:
bad input -> 422 naming the field (400 for a body that is not text, 413 for one over
`max_body_bytes`), an unknown path or method -> 404 / 405, an unavailable dependency or a full
queue -> 503 with Retry-After, anything else -> 500 (logged)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.backends.base import BackendUnavailable
from service.batching import Overloaded
from service.body_limit import BodyTooLarge
from service.metrics import Metrics
from service.request_id import request_id
from service.serving import LimitError
from service.stores.base import StoreUnavailable

log = logging.getLogger(__name__)


def _field(loc: tuple | list) -> str:
    parts = [str(x) for x in loc if x not in ("body",)]
    return ".".join(parts) or "body"


def _detail(error: dict, request: Request) -> dict[str, str]:
    """One validation error -> {"field", "message"}. A body that is not JSON has the parser's
    position where a field would be: it names the body and says where it broke. A body FastAPI
    did not parse at all (no JSON content type: e.g. `curl -d` without a header) says so."""
    kind, loc = error.get("type"), tuple(error.get("loc", ()))
    if kind == "json_invalid":
        at = loc[-1] if len(loc) > 1 and isinstance(loc[-1], int) else None
        reason = (error.get("ctx") or {}).get("error", "")
        where = "" if at is None else f" at character {at}"
        return {
            "field": "body",
            "message": f"not valid JSON{where}" + (f" ({reason})" if reason else ""),
        }
    if loc == ("body",) and isinstance(error.get("input"), bytes | bytearray):
        got = request.headers.get("content-type") or "missing"
        return {
            "field": "body",
            "message": f"send a JSON object with content-type: application/json (got {got})",
        }
    return {"field": _field(loc), "message": error.get("msg", "")}


def _unreadable_body(request: Request) -> str:
    """What to say when FastAPI could not decode the body at all (bytes that are not text)."""
    encoding = request.headers.get("content-encoding")
    if encoding:
        return f"could not be read: content-encoding {encoding} is not supported, send it as is"
    return "could not be read as JSON text (UTF-8 expected)"


# HTTP errors raised by the routing itself (no route, wrong method), by status
HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    def reply(status: int, kind: str, message: str, details=None, headers=None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        body = {"error": kind, "message": message}
        if details is not None:
            body["details"] = details
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [_detail(e, request) for e in exc.errors()]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return reply(422, "invalid_request", message, details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body"
            message = _unreadable_body(request)
            details = [{"field": "body", "message": message}]
            return reply(400, "invalid_request", f"body: {message}", details)
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return reply(exc.status_code, kind, message, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return reply(413, "payload_too_large", exc.detail)

    @app.exception_handler(LimitError)
    async def _limit(_: Request, exc: LimitError) -> JSONResponse:
        return reply(422, "invalid_request", str(exc), [{"field": exc.field, "message": str(exc)}])

    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        kind = {
            StoreUnavailable: "store_unavailable",
            BackendUnavailable: "backend_unavailable",
            Overloaded: "overloaded",
        }[type(exc)]
        return reply(503, kind, str(exc), headers={"Retry-After": str(retry_after_s)})

    for cls in (StoreUnavailable, BackendUnavailable, Overloaded):
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette runs this handler outside every middleware, RequestIds included: the
        # response gets its id here
        rid = request_id(request.scope)
        log.exception(
            "unhandled error in %s %s (request %s)", request.method, request.url.path, rid
        )
        headers = {"x-request-id": rid} if rid else None
        return reply(500, "internal", f"internal error ({type(exc).__name__})", headers=headers)
