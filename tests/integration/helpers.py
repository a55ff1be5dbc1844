"""Helpers shared by the tests that run real worker processes per host."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import State
from perseus.devstack import services
from perseus.keys import iso, workflow_id
from perseus.models import InstanceStatus
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess

T = TypeVar("T")


def host_name(prefix: str) -> str:
    """A host name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def start_workers(servers: Servers, procs: list[WorkerProcess], *hosts: str) -> list[WorkerProcess]:
    """`perseus worker --host H` per host, ready to poll; ``procs`` (a fixture) stops them afterwards."""
    started = [WorkerProcess(servers, host) for host in hosts]
    procs.extend(started)
    await asyncio.gather(*(p.ready() for p in started))
    return started


def claim_record(ex_id: int, exchange: str, host: str) -> InstanceStatus:
    """A status record as a claim of ``host`` writes it (1 s interval, a 30 s TTL), fresh instanceId."""
    now = iso(datetime.now(UTC))
    return InstanceStatus(
        exchange_id=ex_id,
        exchange_name=exchange,
        hostname=host,
        connection_state=State.STARTING,
        last_heartbeat=now,
        last_state_change=now,
        registered_at=now,
        instance_id=f"i-{uuid.uuid4().hex[:8]}",
        workflow_id=workflow_id(exchange, host),
        heartbeat_interval_ms=1000,
        ttl_ms=30_000,
    )


async def events(store: RedisStore, name: str) -> list[dict[str, str]]:
    """The exchange's network stream, oldest first."""
    return [f for _, f in reversed(await store.events(name))]


async def holder(store: RedisStore, ex_id: int) -> dict[str, object] | None:
    raw, _ = await store.raw_status(ex_id)
    return json.loads(raw) if raw else None


async def active_on(store: RedisStore, ex_id: int, host: str) -> dict[str, object] | None:
    """The status record if ``host`` holds the exchange and is active."""
    doc = await holder(store, ex_id)
    return doc if doc and doc.get("hostname") == host and doc.get("connectionState") == "active" else None


async def active_and_standby(
    client: Client,
    store: RedisStore,
    exchange: str,
    ex_id: int,
    active: str,
    standby: str,
    interval_s: float,
    timeout: float = 30.0,
) -> None:
    """``exchange`` registered on ``active`` (started) and on ``standby``; returns once ``active``
    is active."""
    for host, is_standby in ((active, False), (standby, True)):
        await control.register(
            client,
            exchange=exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=interval_s,
            start=not is_standby,
            standby=is_standby,
        )
    await wait_for(lambda: active_on(store, ex_id, active), timeout=timeout)


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@dataclass
class PrivateTemporal:
    """A Temporal dev server of one test's own: it can be frozen, and no other test's worker polls
    its queues (the harness' in-process shared worker serves the shared queue on the common one)."""

    service: services.Service
    port: int
    client: Client

    def freeze(self, frozen: bool) -> None:
        assert self.service.proc
        self.service.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
