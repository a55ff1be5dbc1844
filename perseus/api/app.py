"""The FastAPI application. Its lifespan is the API's composition root: it opens Redis, the PostgreSQL
pool and the Temporal client, and closes them on exit; nothing connects at import time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from perseus.config import Settings
from perseus.store.db import Catalog, make_pool
from perseus.store.redis_store import RedisStore, make_client


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = make_client(str(settings.redis_url))
        pool = make_pool(settings.database_url)
        await pool.open(wait=True, timeout=15)
        app.state.store = RedisStore(redis)
        app.state.catalog = Catalog(pool)
        try:
            yield
        finally:
            await pool.close()
            await redis.aclose()

    app = FastAPI(title="Perseus", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "serverTime": datetime.now(UTC).isoformat()}

    return app
