"""The FastAPI application. Its lifespan is the API's composition root: it opens Redis, the PostgreSQL
pool and the Temporal client, and closes them on exit; nothing connects at import time.

Errors are converted here, at the edge: every :class:`~perseus.errors.PerseusError` becomes a JSON
:class:`~perseus.api.routes.ErrorBody` with a status code chosen by its type, and so do FastAPI's
own validation and HTTP errors, so every answer (errors included) carries ``serverTime``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from perseus import tracing
from perseus.api.codec import codec_router
from perseus.api.commands import router as commands_router
from perseus.api.errors import _error, error_response
from perseus.api.hosts import router as hosts_router
from perseus.api.live import READER_CONNECTIONS, LiveFeed
from perseus.api.page import router as page_router
from perseus.api.ready import router as ready_router
from perseus.api.routes import ErrorBody, metrics_router
from perseus.api.routes import router as network_router
from perseus.config import Settings
from perseus.errors import (
    PerseusError,
)
from perseus.readmodel.ledger_fold import LedgerFold
from perseus.store.db import Catalog, make_pool, open_pool
from perseus.store.redis_store import RedisStore, make_client


async def _perseus_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PerseusError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems: list[dict[str, Any]] = jsonable_encoder(exc.errors())
    first = problems[0] if problems else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    body = ErrorBody(
        error=f"{where}: {first.get('msg', 'invalid request')}",
        type="ValidationError",
        detail=problems,
        server_time=datetime.now(UTC),
    )
    return _error(422, body)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = ErrorBody(error=str(exc.detail), type="HTTPError", server_time=datetime.now(UTC))
    return _error(exc.status_code, body, dict(exc.headers) if exc.headers else None)


def create_app(settings: Settings, temporal_address: str | None = None, *, fold: bool = True) -> FastAPI:
    """The app; ``temporal_address`` overrides TEMPORAL_ADDRESS for /readyz (``perseus dev``).
    ``fold=False`` leaves other writers' stream entries out of the ledger (the benchmark's "before")."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = make_client(str(settings.redis_url))
        # The live feed's blocking readers get a client of their own: they must never take the
        # connections the routes need.
        live_redis = make_client(str(settings.redis_url), max_connections=READER_CONNECTIONS)
        pool = make_pool(settings.database_url)
        try:
            await open_pool(pool)
        except BaseException:
            await live_redis.aclose()
            await redis.aclose()
            raise
        app.state.store = RedisStore(redis)
        app.state.catalog = Catalog(pool)
        # Other writers' transitions folded into the ledger (perseus.readmodel.ledger_fold): by the reader as
        # they arrive, and topped up by the uptime and timeline reads.
        app.state.fold = LedgerFold(app.state.store, app.state.catalog) if fold else None
        # One stream reader for the whole process, fanned out to every live page (routes.events).
        app.state.live = LiveFeed(
            app.state.store, app.state.catalog, reader=RedisStore(live_redis), fold=app.state.fold
        )
        app.state.live.start()
        try:
            yield
        finally:
            await app.state.live.stop()
            await pool.close()
            await live_redis.aclose()
            await redis.aclose()

    app = FastAPI(
        title="Perseus",
        version="0.1.0",
        description="The instance registry and health network's read API. Every `/api` route needs "
        "`Authorization: Bearer <api key>`; every answer carries `serverTime`.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if settings.api_docs else None,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.temporal_address = temporal_address
    # The write routes' Temporal client, connected on first use (perseus.api.deps.temporal).
    app.state.settings = settings
    app.state.temporal_client = None
    app.state.temporal_lock = asyncio.Lock()
    # The page's failsafe lines, read from Temporal once per FAILSAFE_PAGE_CACHE_S for every caller.
    app.state.failsafe_lock = asyncio.Lock()
    app.state.failsafe_cache = None
    app.state.failsafe_cached_at = 0.0
    if tracing.enabled():  # perseus.tracing: off by default, and then no middleware at all
        app.add_middleware(tracing.TraceRequests)
    app.add_exception_handler(PerseusError, _perseus_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(network_router)
    app.include_router(commands_router)
    app.include_router(hosts_router)
    app.include_router(ready_router)
    app.include_router(codec_router(settings))
    app.include_router(page_router)
    app.include_router(metrics_router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        # Open on purpose: liveness probes carry no key and this reveals nothing but "up".
        return {"ok": True, "serverTime": datetime.now(UTC).isoformat()}

    return app
