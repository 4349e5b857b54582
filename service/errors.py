"""Every error becomes one JSON shape (`protocol.ErrorResponse`), mapped here and only here:
bad input -> 422 naming the field (413 for a body over `max_body_bytes`), an unavailable
dependency or a full queue -> 503 with Retry-After, anything else -> 500 (logged)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.backends.base import BackendUnavailable
from service.batching import Overloaded
from service.body_limit import BodyTooLarge
from service.metrics import Metrics
from service.serving import LimitError
from service.stores.base import StoreUnavailable

log = logging.getLogger(__name__)


def _field(loc: tuple | list) -> str:
    parts = [str(x) for x in loc if x not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    def reply(status: int, kind: str, message: str, details=None, headers=None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        body = {"error": kind, "message": message}
        if details is not None:
            body["details"] = details
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in errors]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return reply(422, "invalid_request", message, details)

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
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return reply(500, "internal", f"internal error ({type(exc).__name__})")
