"""The HTTP routes: thin, they validate with `protocol`, call `serving`, time the request."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import to_json

from service import protocol as p
from service.serving import SidService

router = APIRouter()
ERRORS = {
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


@router.post("/v1/relevance", response_model=p.RelevanceResponse, responses=ERRORS)
async def relevance(body: p.RelevanceRequest, request: Request) -> p.RelevanceResponse:
    """A query and candidate item ids from another retriever -> prefix-match features."""
    return await service(request).relevance(body)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": p.ErrorResponse}})
async def readyz(request: Request) -> dict[str, str]:
    """The bundle is loaded and the store and inference backend answer."""
    return await service(request).readiness()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


async def time_requests(request: Request, call_next):
    """Middleware: latency histogram and status counter per endpoint."""
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    endpoint = getattr(route, "path", "unmatched")
    m = request.app.state.service.metrics
    m.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
    m.requests.labels(endpoint, str(response.status_code)).inc()
    return response
