"""Retries that must not duplicate, and a Redis restart the workflow rides through.

These run the real workflow and activities on a task queue of their own, so that a stand-in (the
``record`` wrapper that loses its reply after the XADD) or a private Redis can be wired in without
touching the session's shared worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.catalog import CatalogActivities
from activities.host import HostActivities
from activities.notify import NotifyActivities
from activities.registry import RegistryActivities
from perseus.connectors.base import ConnectorHost
from perseus.core.lifecycle import Command, State
from perseus.devstack import services
from perseus.host.keeper import LeaseKeeper
from perseus.keys import host_task_queue, workflow_id
from perseus.models import CommandRequest, InstanceInput, Recorded, RecordRequest
from perseus.store import db
from perseus.store.db import Catalog, make_pool
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import search_attributes
from tests.conftest import Servers, exchange_id
from workflows.instance import InstanceWorkflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@asynccontextmanager
async def private_workers(
    client: Client,
    servers: Servers,
    redis_url: str,
    host: str,
    wrap_record: Callable[[RegistryActivities], Callable[..., Any]] | None = None,
) -> AsyncIterator[str]:
    """Workers for a private workflow queue and ``host``; yields the workflow queue's name."""
    queue = f"private-{uuid.uuid4().hex[:8]}"
    redis = make_client(redis_url)
    pool = make_pool(servers.database_url)
    await pool.open(wait=True)
    http = httpx.AsyncClient()
    store, catalog = RedisStore(redis), Catalog(pool)
    registry = RegistryActivities(store, catalog, notifications=False)
    connectors = ConnectorHost()
    keeper = LeaseKeeper(store, connectors)
    host_acts = HostActivities(
        hostname=host,
        store=store,
        catalog=catalog,
        http=http,
        ip_services=[],
        ip_timeout_s=1,
        connectors=connectors,
        keeper=keeper,
    )
    record = wrap_record(registry) if wrap_record else registry.record
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                Worker(
                    client,
                    task_queue=queue,
                    workflows=[InstanceWorkflow],
                    activities=[
                        CatalogActivities(catalog).resolve_instance,
                        registry.release_claim,
                        record,
                        NotifyActivities(None).notify_event,
                    ],
                )
            )
            await stack.enter_async_context(
                # As worker.py serves it: a record the workflow's worker could not write moves here.
                Worker(client, task_queue=host_task_queue(host), activities=[*host_acts.all(), record])
            )
            yield queue
    finally:
        await keeper.close()
        await http.aclose()
        await pool.close()
        await redis.aclose()


async def start(
    client: Client, queue: str, exchange: str, host: str, interval: float
) -> WorkflowHandle[Any, Any]:
    handle = await client.start_workflow(
        InstanceWorkflow.run,
        InstanceInput(exchange=exchange, host=host, heartbeat_interval_s=interval),
        id=workflow_id(exchange, host),
        task_queue=queue,
        search_attributes=search_attributes(exchange, host, State.IDLE),
    )
    await handle.execute_update(InstanceWorkflow.wait_registered)
    return handle


async def run_command(handle: WorkflowHandle[Any, Any], command: Command) -> Any:
    return await handle.execute_update(InstanceWorkflow.command, CommandRequest(command=command))


async def test_event_written_once_when_its_activity_is_retried(
    servers: Servers, client: Client, store: RedisStore, exchange: str
) -> None:
    failed_once: set[str] = set()

    def wrap(registry: RegistryActivities) -> Callable[..., Any]:
        @activity.defn(name="record")
        async def record_then_lose_the_reply(req: RecordRequest) -> Recorded:
            entry = await registry.record(req)
            if req.event.event_id not in failed_once:
                failed_once.add(req.event.event_id)
                raise RuntimeError("worker died after XADD, before reporting")  # retried by Temporal
            return entry

        return record_then_lose_the_reply

    host = f"retry-{uuid.uuid4().hex[:6]}"
    async with private_workers(client, servers, servers.redis_url, host, wrap) as queue:
        handle = await start(client, queue, exchange, host, 0.5)
        await run_command(handle, Command.START)
        await run_command(handle, Command.STOP)
        await run_command(handle, Command.SHUTDOWN)
        await handle.result()
    entries = [f for _, f in reversed(await store.events(exchange))]
    assert len(failed_once) == 6  # every event's first attempt failed after writing
    assert [(e["fromState"], e["toState"]) for e in entries] == [
        ("idle", "starting"),
        ("starting", "warming"),
        ("warming", "active"),
        ("active", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "idle"),
    ]
    assert len({e["eventId"] for e in entries}) == 6
    # The durable copy too: once per event, and one ledger interval per transition.
    conn = await db.connect(servers.database_url)
    async with conn:
        logged = await (
            await conn.execute("SELECT event_id FROM network_events WHERE exchange_name = %s", (exchange,))
        ).fetchall()
        states = await (
            await conn.execute(
                "SELECT state FROM exchange_state_intervals WHERE event_id = ANY(%s) ORDER BY started_at, id",
                ([e["eventId"] for e in entries],),
            )
        ).fetchall()
    assert sorted(r["event_id"] for r in logged) == sorted(e["eventId"] for e in entries)
    assert [r["state"] for r in states] == [e["toState"] for e in entries]


async def test_redis_restart_is_ridden_through(
    servers: Servers, client: Client, exchange: str, tmp_path: Any
) -> None:
    redis_server = await services.start_redis(tmp_path / "redis", None)
    port = redis_server.port
    url = f"redis://127.0.0.1:{port}/0"
    host = f"rr-{uuid.uuid4().hex[:6]}"
    private = RedisStore(make_client(url))
    try:
        async with private_workers(client, servers, url, host) as queue:
            handle = await start(client, queue, exchange, host, 2.0)
            await run_command(handle, Command.START)
            await asyncio.sleep(1.5)  # AOF is fsynced every second: the claim is on disk
            redis_server.stop()
            stopping = asyncio.ensure_future(run_command(handle, Command.STOP))
            await asyncio.sleep(2.5)  # meant to be shorter than the 4 s renew deadline
            assert not stopping.done()  # the writes are being retried, not skipped
            redis_server = await services.start_redis(tmp_path / "redis", port)
            result = await asyncio.wait_for(stopping, 60)
            assert result.state is State.IDLE
            raw, pttl = await private.raw_status(await exchange_id(servers, exchange))
            await run_command(handle, Command.SHUTDOWN)
            await handle.result()
        entries = [f for _, f in reversed(await private.events(exchange))]
        # The invariant, not an exact list: on a loaded machine the restart can outlast the renew
        # deadline and an `error` entry (no fromState) joins the stream. What must hold: no
        # transition lost (each starts where the one before ended), order kept, none twice.
        transitions = [(e["fromState"], e["toState"]) for e in entries if "fromState" in e]
        assert transitions[:3] == [("idle", "starting"), ("starting", "warming"), ("warming", "active")]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(transitions)), transitions
        assert transitions[-1][1] == "idle", transitions
        assert "stopping" in [to for _, to in transitions], transitions
        # On a loaded machine the restart itself can take seconds: past the renew deadline the
        # keeper stops the connector (an `error` entry says so) and the record may expire with its
        # TTL. Only then may it be gone; otherwise it says idle, with a TTL.
        if raw is None:
            assert any(e["event"] == "error" for e in entries), ("record lost without a deadline", entries)
        else:
            assert 0 < pttl <= 6000
            assert json.loads(raw)["connectionState"] == "idle"
        ids = [e["eventId"] for e in entries]
        assert len(ids) == len(set(ids)), entries
    finally:
        await private.client.aclose()
        redis_server.stop()


async def test_heartbeats_do_not_grow_history(
    servers: Servers, client: Client, store: RedisStore, exchange: str
) -> None:
    host = f"hb-{uuid.uuid4().hex[:6]}"
    async with private_workers(client, servers, servers.redis_url, host) as queue:
        handle = await start(client, queue, exchange, host, 0.5)
        await run_command(handle, Command.START)
        ex_id = await exchange_id(servers, exchange)
        first_beat = json.loads((await store.raw_status(ex_id))[0] or "{}")["lastHeartbeat"]
        events_before = len((await handle.fetch_history()).events)
        await asyncio.sleep(6)  # about 12 renewals
        events_after = len((await handle.fetch_history()).events)
        last_beat = json.loads((await store.raw_status(ex_id))[0] or "{}")["lastHeartbeat"]
        await run_command(handle, Command.SHUTDOWN)
    assert last_beat > first_beat
    assert events_after - events_before <= 2  # at most a late workflow task; no event per beat
