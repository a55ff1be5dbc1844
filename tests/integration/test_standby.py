"""Standbys, automatic failover and planned handoff, with real worker processes per host."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import pytest
from temporalio.client import Client

from perseus import control
from perseus import version as release
from perseus.errors import ClaimConflict, InvalidTransition, PerseusError
from perseus.keys import standby_index_key, status_key, workflow_id
from perseus.lifecycle import Command
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, events, holder, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5


def hosts(n: int, prefix: str) -> list[str]:
    tag = uuid.uuid4().hex[:5]
    return [f"{prefix}{i}-{tag}" for i in range(n)]


async def register(
    client: Client, exchange: str, host: str, *, standby: bool = False, start: bool = False, priority: int = 0
):
    return await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=start,
        standby=standby,
        priority=priority,
    )


async def test_standby_is_visible_and_does_not_claim(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, b = hosts(2, "sb")
    await start_workers(servers, worker_processes, *[a, b])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    result = await asyncio.to_thread(
        perseus,
        servers,
        "register",
        exchange,
        "--host",
        b,
        "--standby",
        "--heartbeat-interval",
        str(INTERVAL),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    assert registered["role"] == "standby"
    members = await store.client.zrange(standby_index_key(ex_id), 0, -1)
    assert members == [registered["instanceId"]]
    key = f"exchange:{ex_id}:standby:{registered['instanceId']}"
    assert 0 < await store.client.pttl(key) <= 3 * INTERVAL * 1000
    assert json.loads(await store.client.get(key) or "{}")["host"] == b

    async def versioned() -> str | None:  # the host's keeper stamps its release at each renewal
        found = json.loads(await store.client.get(key) or "{}").get("version")
        return str(found) if found else None

    assert await wait_for(versioned) == release.version()
    shown = await asyncio.to_thread(perseus, servers, "status", exchange, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert [s["version"] for s in view["standbys"]] == [release.version()]
    assert view["status"]["perseusVersion"] == release.version()
    assert (await holder(store, ex_id) or {})["hostname"] == a  # the standby took nothing
    kinds = [e["event"] for e in await events(store, exchange)]
    assert kinds.count("standby_registered") == 1
    # The standby refuses start/stop; registering B as active is a conflict naming the holder.
    with pytest.raises(InvalidTransition, match="is a standby"):
        await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.START)
    await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.SHUTDOWN)
    assert await store.client.exists(key) == 0
    other = hosts(1, "sb-extra")[0]
    await start_workers(servers, worker_processes, *[other])
    with pytest.raises(ClaimConflict, match=f"already claimed by {a}"):
        await register(client, exchange, other)
    await control.command(client, exchange=exchange, host=a, default_host=a, command=Command.SHUTDOWN)


async def test_crash_of_the_active_promotes_the_best_standby(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, low, high = hosts(3, "fo")
    procs = await start_workers(servers, worker_processes, *[a, low, high])
    ex_id = await exchange_id(servers, exchange)
    first = await register(client, exchange, a, start=True)
    await register(client, exchange, low, standby=True, priority=1)
    await register(client, exchange, high, standby=True, priority=5)
    await wait_for(lambda: active_on(store, ex_id, a))
    procs[0].signal(signal.SIGKILL)
    killed = time.monotonic()
    doc = await wait_for(lambda: active_on(store, ex_id, high), timeout=30)
    took = time.monotonic() - killed
    assert int(str(doc["epoch"])) > first.epoch
    print(f"crash → standby active in {took:.2f}s (TTL {3 * INTERVAL:.1f}s)")

    # At this short interval the standby claims over from Redis (1.05 s) or on the TTL fallback
    # (1.5 s) long before the 6.25 s heartbeat timeout, so it takes over before the dead
    # instance's loss is recorded; the loss is recorded all the same.
    async def lost_recorded():
        kinds = [(e["event"], e["hostname"]) for e in await events(store, exchange)]
        return kinds if ("instance_lost", a) in kinds else None

    kinds = await wait_for(lost_recorded, timeout=60)  # the heartbeat timeout, then a Redis probe
    assert ("promoted", high) in kinds
    assert ("promoted", low) not in kinds  # exactly one standby won: the higher priority
    # The other standby is still waiting, and can take over next.
    snap = await client.get_workflow_handle(workflow_id(exchange, low)).query("snapshot")
    assert snap["role"] == "standby" if isinstance(snap, dict) else snap.role == "standby"
    for h in (high, low):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)


async def test_a_standby_claims_over_a_holder_that_stopped_renewing_before_its_key_expires(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    """The holder here is a bare status key that some test code renews, then stops renewing (a
    host that died with no workflow left to notice): the standby's watch sees it pass its renew
    deadline plus the margin, and the claim takes it over while the key is still there."""
    interval = 3.0  # deadline + margin at 6.3 s, TTL 9 s: room for the promotion on a busy machine
    ex_id = await exchange_id(servers, exchange)
    stamp = "2026-01-01T00:00:00.000Z"
    dead = {
        "exchangeId": ex_id,
        "exchangeName": exchange,
        "hostname": "h-dead",
        "connectionState": "active",
        "lastHeartbeat": stamp,
        "lastStateChange": stamp,
        "registeredAt": stamp,
        "instanceId": str(uuid.uuid4()),
        "epoch": 1,
        "heartbeatIntervalMs": int(interval * 1000),
        "ttlMs": int(3 * interval * 1000),
    }

    async def renew() -> None:
        await store.client.set(status_key(ex_id), json.dumps(dead), px=int(3 * interval * 1000))

    await renew()
    registered = await control.register(
        client,
        exchange=exchange,
        host=shared_worker,
        admin_email=None,
        heartbeat_interval_s=interval,
        start=False,
        standby=True,
    )
    standby = f"exchange:{ex_id}:standby:{registered.instance_id}"
    await wait_for(lambda: store.client.exists(standby))
    await renew()  # the holder's last renewal: from now on it is silent
    doc = await wait_for(lambda: active_on(store, ex_id, shared_worker), timeout=60)
    assert int(str(doc["epoch"])) > 1
    promoted = [e for e in await events(store, exchange) if e["event"] == "promoted"]
    assert len(promoted) == 1
    # Claimed over the silent holder's key ("taken"), not after its TTL removed it.
    assert "claimed over h-dead (epoch 1)" in promoted[0].get("detail", ""), promoted[0]
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


async def test_planned_handoff_and_back(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, b = hosts(2, "ho")
    await start_workers(servers, worker_processes, *[a, b])
    ex_id = await exchange_id(servers, exchange)
    first = await register(client, exchange, a, start=True)
    await register(client, exchange, b, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))

    result = await asyncio.to_thread(perseus, servers, "handoff", exchange, "--to", b, "--json")
    assert result.returncode == 0, result.stderr
    assert "active at epoch" in json.loads(result.stdout)["detail"]
    doc = await wait_for(lambda: active_on(store, ex_id, b))
    assert int(str(doc["epoch"])) > first.epoch
    details = [e.get("detail", "") for e in await events(store, exchange) if e["event"] == "handoff"]
    assert [d.split(":")[0] for d in details] == ["notify", "takeover", "confirm"]
    snap_a = await client.get_workflow_handle(workflow_id(exchange, a)).query("snapshot")
    assert (snap_a["role"] if isinstance(snap_a, dict) else snap_a.role) == "standby"

    # And back again, this time shutting the old one down.
    await control.handoff(client, exchange=exchange, to_host=a, from_host=b, default_host=a, shutdown=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    assert await client.get_workflow_handle(workflow_id(exchange, b)).result() == f"handed over to {a}"
    await control.command(client, exchange=exchange, host=a, default_host=a, command=Command.SHUTDOWN)


async def test_handoff_refusals_change_nothing(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    (a,) = hosts(1, "hr")
    await start_workers(servers, worker_processes, *[a])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    before = await wait_for(lambda: active_on(store, ex_id, a))
    result = await asyncio.to_thread(perseus, servers, "handoff", exchange, "--to", "nowhere")
    assert result.returncode == 1
    assert f"no live standby of {exchange} on host nowhere (live standbys: none)" in result.stderr
    result = await asyncio.to_thread(perseus, servers, "handoff", exchange, "--to", a)
    assert result.returncode == 1 and "already runs on" in result.stderr
    after = await holder(store, ex_id)
    assert before is not None and after is not None
    assert (after["epoch"], after["connectionState"]) == (before["epoch"], "active")
    assert not [e for e in await events(store, exchange) if e["event"] == "handoff"]
    await control.command(client, exchange=exchange, host=a, default_host=a, command=Command.SHUTDOWN)


async def test_handoff_whose_target_dies_leaves_the_old_one_active(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, b = hosts(2, "hd")
    procs = await start_workers(servers, worker_processes, *[a, b])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    await register(client, exchange, b, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    procs[1].signal(signal.SIGSTOP)  # the target stops answering before the takeover
    try:
        # Refused before anything stopped here: the target's worker did not answer the ask-first.
        with pytest.raises(PerseusError, match=f"handoff to {b} refused .*did not answer.*nothing changed"):
            await control.handoff(
                client, exchange=exchange, to_host=b, from_host=a, default_host=a, shutdown=False
            )
    finally:
        procs[1].signal(signal.SIGCONT)
    doc = await wait_for(lambda: active_on(store, ex_id, a), timeout=30)
    assert doc["hostname"] == a
    details = [e.get("detail", "") for e in await events(store, exchange) if e["event"] == "handoff"]
    assert details[-1].startswith("aborted")
    await control.command(client, exchange=exchange, host=a, default_host=a, command=Command.SHUTDOWN)


async def test_a_promoted_standby_that_cannot_start_its_connector_hands_over_to_the_next(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """A claim is held only by an instance that runs its connector: the best standby's host cannot
    start it (its executable is missing there), so it releases and the next standby takes over."""
    a, broken, good = hosts(3, "fp")
    procs = await start_workers(servers, worker_processes, *[a, broken, good])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    await control.register(
        client,
        exchange=exchange,
        host=broken,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=False,
        standby=True,
        priority=5,
        connector=ConnectorSpec(kind="process", command=["/nonexistent/perseus-connector"]),
    )
    await register(client, exchange, good, standby=True, priority=1)
    await wait_for(lambda: active_on(store, ex_id, a))
    procs[0].signal(signal.SIGKILL)
    await wait_for(lambda: active_on(store, ex_id, good), timeout=60)
    kinds = [(e["event"], e["hostname"], e.get("error") or "") for e in await events(store, exchange)]
    promoted = [h for k, h, _ in kinds if k == "promoted"]
    assert promoted == [broken, good], kinds  # the priority order held, and the failure moved on
    assert any(k == "error" and h == broken and "released the exchange" in err for k, h, err in kinds), kinds

    # The failed host waits as a standby again, and says why it goes behind the others.
    async def failed_standby():
        records = [r for r in await store.standbys(ex_id) if r.host == broken]
        return records[0] if records and records[0].start_error else None

    record = await wait_for(failed_standby)
    assert record.start_error and "perseus-connector" in record.start_error
    assert record.start_retry_at is not None
    for h in (good, broken):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)
