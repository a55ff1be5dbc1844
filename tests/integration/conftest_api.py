"""Helpers for the read API tests: the app in-process and over a real socket, fresh exchanges, streams
written with explicit IDs, status records written by hand. Everything talks to the real servers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx

from perseus.api.app import create_app
from perseus.api.server import build_server
from perseus.config import Settings
from perseus.devstack import services
from perseus.keys import iso, status_key, stream_key
from perseus.store import db
from perseus.store.redis_store import RedisStore


@asynccontextmanager
async def in_process(
    settings: Settings, temporal_address: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app driven through httpx's ASGI transport, its lifespan run as a server would."""
    app = create_app(settings, temporal_address)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perseus") as http,
    ):
        yield http


@asynccontextmanager
async def over_socket(
    settings: Settings, temporal_address: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """uvicorn on a free loopback port in this event loop, and a client talking TCP to it."""
    server = build_server(settings, services.free_port(), temporal_address)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        server.should_exit = True
        await task


async def new_exchanges(database_url: str, count: int, prefix: str = "api") -> list[tuple[int, str]]:
    """Fresh active catalog rows ``(id, name)``: their own status keys and streams."""
    out = []
    conn = await db.connect(database_url)
    async with conn:
        for _ in range(count):
            name = f"{prefix}_{uuid.uuid4().hex[:10]}"
            row = await (
                await conn.execute(
                    "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id",
                    (name, name.upper()),
                )
            ).fetchone()
            assert row is not None
            out.append((int(row["id"]), name))
    return out


def status_record(exchange_id: int, name: str, **over: Any) -> dict[str, Any]:
    now = iso(datetime.now(UTC))
    record: dict[str, Any] = {
        "exchangeId": exchange_id,
        "exchangeName": name,
        "hostname": "node-a",
        "ipAddress": "192.0.2.10",
        "countryCode": None,
        "adminEmail": "admin@perseus.local",
        "adminDisplayName": "Perseus Admin",
        "connectionState": "active",
        "symbolCount": 3,
        "connectedAt": now,
        "lastHeartbeat": now,
        "lastStateChange": now,
        "registeredAt": now,
        "lastError": None,
        "lastErrorAt": None,
        "instanceId": str(uuid.uuid4()),
        "epoch": 1,
        "workflowId": f"instance-{name}-node-a",
        "heartbeatIntervalMs": 15000,
        "ttlMs": 45000,
    }
    record.update(over)
    return record


async def put_status(
    store: RedisStore, exchange_id: int, value: dict[str, Any] | str, ttl_ms: int = 60_000
) -> None:
    raw = value if isinstance(value, str) else json.dumps(value)
    await store.client.set(status_key(exchange_id), raw, px=ttl_ms)


def entry_fields(exchange_id: int, name: str, event: str, when: datetime, **extra: str) -> dict[str, str]:
    fields = {
        "event": event,
        "timestamp": iso(when),
        "exchangeId": str(exchange_id),
        "exchangeName": name,
        "hostname": "node-a",
        "ip": "192.0.2.10",
    }
    fields.update(extra)
    return fields


async def xadd(store: RedisStore, name: str, entry_id: str, fields: dict[str, str]) -> str:
    """A raw XADD (no trimming), usually with an explicit ID: for histories and same-millisecond runs."""
    return str(await store.client.xadd(stream_key(name), fields, id=entry_id))  # type: ignore[arg-type]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
