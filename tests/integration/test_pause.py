"""Pause (maintenance mode): a crash while paused promotes nobody; a resume, or the deadline, lets the
standby take over."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.keys import parse_iso, pause_key, standby_index_key, status_key, workflow_id
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_and_standby, active_on, events, holder, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5
#: How long the exchange must stay vacant after the loss was recorded: many times what a
#: promotion takes at this interval (about a second), so one that was not held back shows.
HELD_S = 3.0


async def test_a_crash_while_paused_promotes_nobody_until_resumed(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    tag = uuid.uuid4().hex[:5]
    a, b = f"pa0-{tag}", f"pa1-{tag}"
    procs = await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    await active_and_standby(client, store, exchange, ex_id, a, b, INTERVAL)
    await wait_for(lambda: store.client.zcard(standby_index_key(ex_id)))

    # Refusals change nothing: a bad duration (usage), a resume with no pause.
    bad = await asyncio.to_thread(perseus, servers, "pause", exchange, "--for", "9d")
    assert bad.returncode == 2 and "at most 7 days" in bad.stderr
    assert await store.client.exists(pause_key(ex_id)) == 0
    idle = await asyncio.to_thread(perseus, servers, "resume", exchange)
    assert idle.returncode == 1 and f"{exchange} is not paused" in idle.stderr
    unknown = await asyncio.to_thread(perseus, servers, "pause", "no-such-exchange", "--json")
    assert unknown.returncode == 4 and json.loads(unknown.stdout)["type"] == "UnknownExchange"

    paused = await asyncio.to_thread(perseus, servers, "pause", exchange, "--for", "10m", "--json")
    assert paused.returncode == 0, paused.stderr
    answer = json.loads(paused.stdout)
    assert answer["paused"] is True and answer["actor"].startswith("cli:")
    assert 0 < await store.client.pttl(pause_key(ex_id)) <= 600_000
    shown = json.loads((await asyncio.to_thread(perseus, servers, "status", exchange, "--json")).stdout)
    assert shown["paused"] is True and shown["pausedUntil"] == answer["pausedUntil"]
    table = await asyncio.to_thread(perseus, servers, "status", exchange, COLUMNS="400")
    assert f"{exchange} paused until {answer['pausedUntil']} by cli:" in table.stdout
    (standby_line,) = [line for line in table.stdout.splitlines() if f" {b} " in line]
    assert f"standby (priority 0), paused until {answer['pausedUntil']}" in standby_line

    procs[0].signal(signal.SIGKILL)

    # The active host's workflow records the loss and wakes the standby; its claim is refused.
    async def lost() -> bool | None:
        return True if any(e["event"] == "instance_lost" for e in await events(store, exchange)) else None

    await wait_for(lost, timeout=60)
    await asyncio.sleep(HELD_S)
    assert await holder(store, ex_id) is None
    assert not [e for e in await events(store, exchange) if e["event"] == "promoted"]
    # The standby keeps watching, renewed all along.
    assert await store.client.zcard(standby_index_key(ex_id)) == 1
    snap = await client.get_workflow_handle(workflow_id(exchange, b)).query("snapshot")
    assert (snap["role"] if isinstance(snap, dict) else snap.role) == "standby"

    resumed = await asyncio.to_thread(perseus, servers, "resume", exchange)
    assert resumed.returncode == 0, resumed.stderr
    assert await store.client.exists(pause_key(ex_id)) == 0
    await wait_for(lambda: active_on(store, ex_id, b), timeout=30)
    kinds = [(e["event"], e.get("actor", "")) for e in await events(store, exchange)]
    ours = [k for k, actor in kinds if k in ("paused", "resumed") and actor.startswith("cli:")]
    assert ours == ["paused", "resumed"]  # oldest first
    await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.SHUTDOWN)


async def test_a_pause_ends_by_itself_at_its_deadline(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    """The holder here is a bare status key the test renews, then lets lapse during a short pause:
    the standby takes over only once the pause's key has expired — with no resume."""
    ex_id = await exchange_id(servers, exchange)
    stamp = "2026-01-01T00:00:00.000Z"
    dead = {
        "exchangeId": ex_id,
        "exchangeName": exchange,
        "hostname": "h-maintained",
        "connectionState": "active",
        "lastHeartbeat": stamp,
        "lastStateChange": stamp,
        "registeredAt": stamp,
        "instanceId": str(uuid.uuid4()),
        "epoch": 1,
        "heartbeatIntervalMs": int(INTERVAL * 1000),
        "ttlMs": int(3 * INTERVAL * 1000),
    }
    renewing = True

    async def renew() -> None:
        while renewing:
            await store.client.set(status_key(ex_id), json.dumps(dead), px=int(3 * INTERVAL * 1000))
            await asyncio.sleep(INTERVAL / 2)

    renewer = asyncio.create_task(renew())
    try:
        await control.register(
            client,
            exchange=exchange,
            host=shared_worker,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=False,
            standby=True,
        )
        await wait_for(lambda: store.client.zcard(standby_index_key(ex_id)))
        paused = await asyncio.to_thread(perseus, servers, "pause", exchange, "--for", "4s", "--json")
        assert paused.returncode == 0, paused.stderr
        until = parse_iso(json.loads(paused.stdout)["pausedUntil"])
    finally:
        renewing = False
        await renewer
    # The holder is silent from now on; its key lapses long before the pause ends.
    await wait_for(lambda: active_on(store, ex_id, shared_worker), timeout=60)
    promoted = [e for e in await events(store, exchange) if e["event"] == "promoted"]
    assert len(promoted) == 1 and parse_iso(promoted[0]["timestamp"]) >= until
    assert not [e for e in await events(store, exchange) if e["event"] == "resumed"]
    assert await store.client.exists(pause_key(ex_id)) == 0
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )
