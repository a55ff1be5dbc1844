"""``/readyz``: can this API serve? PostgreSQL, Redis and Temporal are each asked within a bound, at
the same time; 200 when all answer, 503 when one did not. Open like ``/healthz`` (load balancers
carry no key), so without a key it says only ready or not; with a valid key it also names which
dependency is down and why (never how to reach it).

:func:`preflight` is the same check of PostgreSQL and Redis before ``perseus api`` starts serving, so
a dependency that is down at start-up is one line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client

from perseus.api.auth import bearer, require_api_key
from perseus.config import Settings
from perseus.errors import PerseusError, Server, ServiceUnavailable
from perseus.redact import mask_text
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import connect_config, converter

#: Each dependency gets this long to answer a readiness check.
CHECK_S = 3.0

router = APIRouter()


async def _within(call: Awaitable[Any], what: str) -> str:
    """'ok', or one line saying why ``what`` is not ready."""
    try:
        await asyncio.wait_for(call, CHECK_S)
    except TimeoutError:
        return f"{what} did not answer within {CHECK_S:g}s"
    except PerseusError as exc:
        return mask_text(" ".join(str(exc).split()), tokens=False)
    except Exception as exc:  # a driver's own error: reported, not raised (readiness must answer)
        return mask_text(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return "ok"


async def plain_temporal(request: Request) -> Client:
    """The API's one Temporal client, for calls that carry no payloads (health, task queues)."""
    client: Client | None = getattr(request.app.state, "readyz_temporal", None)
    if client is None:
        # Lazy: created without a round trip, connects on first use. Health checks and task queue
        # descriptions carry no payloads, so the plain converter is enough (no key needed).
        config = connect_config(getattr(request.app.state, "temporal_address", None))
        client = await Client.connect(**config, data_converter=converter, lazy=True)
        request.app.state.readyz_temporal = client
    return client


async def _temporal(request: Request) -> None:
    client = await plain_temporal(request)
    await client.service_client.check_health(timeout=timedelta(seconds=CHECK_S))


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    store: RedisStore = request.app.state.store
    catalog: db.Catalog = request.app.state.catalog
    names = ("postgresql", "redis", "temporal")
    results = await asyncio.gather(
        _within(catalog.ping(), "PostgreSQL"),
        _within(store.ping(), "Redis"),
        _within(_temporal(request), "Temporal"),
    )
    checks = dict(zip(names, results, strict=True))
    down = [name for name, result in checks.items() if result != "ok"]
    body: dict[str, Any] = {"ready": not down, "serverTime": datetime.now(UTC).isoformat()}
    if await _key_given(request, catalog):
        body.update(down=down, checks=checks)
    return JSONResponse(body, status_code=503 if down else 200)


async def _key_given(request: Request, catalog: db.Catalog) -> bool:
    """Whether the request carries a valid API key; a key that cannot be checked now (PostgreSQL
    down) counts as none: the short answer is still the right one."""
    credentials = await bearer(request)
    if credentials is None:
        return False
    try:
        await asyncio.wait_for(require_api_key(request, catalog, credentials), CHECK_S)
    except (PerseusError, TimeoutError):
        return False
    return True


async def preflight(settings: Settings) -> None:
    """PostgreSQL and Redis answer, or ServiceUnavailable in one line (``perseus api`` start-up)."""
    try:
        conn = await asyncio.wait_for(db.connect(settings.database_url), CHECK_S + db.CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise ServiceUnavailable("PostgreSQL did not answer in time", server=Server.POSTGRESQL) from None
    await conn.close()
    redis = make_client(str(settings.redis_url))
    try:
        await RedisStore(redis).check_reachable()
    finally:
        await redis.aclose()
