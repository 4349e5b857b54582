"""The FastAPI application: built from settings, the service started and stopped with it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api_router import RequestTiming, router
from service.body_limit import BodyLimit
from service.errors import install_error_handlers
from service.request_id import RequestIds
from service.serving import SidService
from service.settings import Settings


def create_app(settings: Settings, svc: SidService | None = None) -> FastAPI:
    """`svc` lets tests inject a service built from parts; normally it comes from settings."""
    svc = svc or SidService.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        # Everything alive now (libraries, the bundle) lives as long as the process. Out of
        # the collector's sight, a full collection under load walks only request garbage:
        # it took 49-64 ms every 2 s at 32 clients (a stall of the event loop) before this.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await svc.close()
            gc.unfreeze()  # an app built again in this process (tests) leaves nothing behind

    app = FastAPI(
        title="sidserve",
        version="1",
        description="Hierarchical semantic IDs for search queries and products.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.include_router(router)
    # added first, so inside RequestTiming: a refused body is timed and counted too
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestTiming, metrics=svc.metrics)
    app.add_middleware(RequestIds)  # outermost of ours: every answer of the app carries one
    install_error_handlers(app, svc.metrics, settings.retry_after_s)
    return app
