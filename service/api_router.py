"""The HTTP routes: thin, they validate with `protocol`, call `serving`, time the request."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import protocol as p
from service.metrics import Metrics
from service.serving import SidService

router = APIRouter()
ERRORS = {
    413: {"model": p.ErrorResponse, "description": "request body over max_body_bytes"},
    422: {"model": p.ErrorResponse, "description": "invalid input; the message names the field"},
    503: {"model": p.ErrorResponse, "description": "store/model server unavailable or overloaded"},
}


def service(request: Request) -> SidService:
    return request.app.state.service


def json_response(body: object) -> Response:
    """Serialise plain dicts and lists built by `serving` directly (pydantic-core), skipping
    FastAPI's validation pass over them: for 100 candidates that pass cost more than the beam
    search's bookkeeping. The declared `response_model` documents the schema, and the tests
    validate real responses against it."""
    return Response(to_json(body), media_type="application/json")


@router.post("/v1/query/sids", response_model=p.QuerySidsResponse, responses=ERRORS)
async def query_sids(body: p.QuerySidsRequest, request: Request) -> Response:
    """Query (or batch) -> top-K SIDs by trie-constrained beam search -> candidate items
    with prefix-match features."""
    return json_response(await service(request).query_sids(body))


@router.post("/v1/items/encode", response_model=p.EncodeResponse, responses=ERRORS)
async def encode_items(body: p.EncodeRequest, request: Request) -> p.EncodeResponse:
    """Product texts -> SIDs; with `upsert` they are stored and retrievable at once."""
    return await service(request).encode_items(body)


@router.post("/v1/items/delete", response_model=p.DeleteResponse, responses=ERRORS)
async def delete_items(body: p.DeleteRequest, request: Request) -> p.DeleteResponse:
    """Item ids -> removed from the store (discontinued products): no longer candidates."""
    return await service(request).delete_items(body)


@router.post("/v1/relevance", response_model=p.RelevanceResponse, responses=ERRORS)
async def relevance(body: p.RelevanceRequest, request: Request) -> p.RelevanceResponse:
    """A query and candidate item ids from another retriever -> prefix-match features."""
    return await service(request).relevance(body)


@router.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: load balancers' checks
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.api_route("/readyz", methods=["GET", "HEAD"], responses={503: {"model": p.ErrorResponse}})
async def readyz(request: Request) -> dict[str, str]:
    """The bundle is loaded and the store and inference backend answer."""
    return await service(request).readiness()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


class RequestTiming:
    """ASGI middleware: latency histogram and status counter per endpoint.

    Plain ASGI rather than `@app.middleware("http")`: its `call_next` runs the app in a
    separate task with memory streams between them (a fixed cost on every request), and an
    exception escaping the app skipped the counter, so 500s went uncounted."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app is a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint, str(status)).inc()
