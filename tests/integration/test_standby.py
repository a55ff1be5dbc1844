"""Standbys, automatic failover and planned handoff, with real worker processes per host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from perseus import version as release
from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.errors import ClaimConflict, InvalidTransition, PerseusError
from perseus.keys import standby_index_key, status_key, workflow_id
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from perseus.timing import workflow_task_timeout_s
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, events, holder, start_workers, wait_for
from tests.integration.proxy import StallableProxy

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
    # Its workflow's tasks leave a worker that took one and went silent after a share of the interval.
    described = await client.get_workflow_handle(workflow_id(exchange, b)).describe()
    task_timeout = described.raw_description.execution_config.default_workflow_task_timeout
    assert task_timeout.ToTimedelta() == timedelta(seconds=workflow_task_timeout_s(INTERVAL)), task_timeout
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
    # (1.5 s) long before the 18.75 s heartbeat timeout, so it takes over before the dead
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


async def test_handoff_whose_target_dies_after_claiming_is_taken_back_from_redis(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """The target's worker dies after it claimed, while its connector is still starting, and no
    other standby is there. The handing-over side looks at the key while it waits: it sees the
    target's claim go unrenewed past its renew deadline, claims over it and starts again — it does
    not wait for the target's workflow to hear of the dead host (an activity timeout, many seconds
    later), which is what leaves the exchange with no connector meanwhile."""
    a, b = hosts(2, "hk")
    procs = await start_workers(servers, worker_processes, *[a, b])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    slow = ConnectorSpec(prepare_delay_s=30.0)  # the target's walk outlasts the test's kill
    await control.register(
        client,
        exchange=exchange,
        host=b,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=False,
        standby=True,
        connector=slow,
    )
    before = await wait_for(lambda: active_on(store, ex_id, a))
    attempt = asyncio.ensure_future(
        control.handoff(client, exchange=exchange, to_host=b, from_host=a, default_host=a, shutdown=False)
    )

    async def claimed_by_target() -> dict[str, object] | None:
        doc = await holder(store, ex_id)
        return doc if doc and doc.get("hostname") == b else None

    taken = await wait_for(claimed_by_target)
    procs[1].signal(signal.SIGKILL)
    with pytest.raises(PerseusError) as info:
        await attempt
    # Told by Redis (its look caught the claim past its deadline, or found it lapsed between two
    # looks), not by the target's workflow timing out its dead host's activities.
    seen = (f"{b} stopped renewing its claim", f"the claim {b} took has vanished")
    assert any(why in str(info.value) for why in seen), info.value
    assert f"kept {exchange} here" in str(info.value)
    back = await wait_for(lambda: active_on(store, ex_id, a), timeout=60)
    assert int(str(back["epoch"])) > int(str(taken["epoch"])) > int(str(before["epoch"]))
    details = [e.get("detail", "") for e in await events(store, exchange) if e["event"] == "handoff"]
    assert any(details[-1].startswith(f"aborted: {why}") for why in seen), details
    await control.command(client, exchange=exchange, host=a, default_host=a, command=Command.SHUTDOWN)


async def test_a_handoff_to_a_lower_standby_whose_host_is_slow_is_not_taken_by_the_best_one(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """A handoff names its target, and the other standbys hold back while it claims.

    The target is the lower of two standbys, and its host answers late (its worker is stopped for
    longer than an interval right after the old connector stopped): the best standby's watch sees
    the vacancy meanwhile and has nobody ahead of it to yield to. It must leave the exchange to the
    target, whose claim comes once its host answers again; the exchange is not left to the first
    standby that looks."""
    interval = 1.0
    a, best, target = hosts(3, "hr")
    procs = await start_workers(servers, worker_processes, *[a, best, target])
    ex_id = await exchange_id(servers, exchange)
    for host, priority in ((a, 0), (best, 5), (target, 1)):
        await control.register(
            client,
            exchange=exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=interval,
            start=host == a,
            standby=host != a,
            priority=priority,
        )
    await wait_for(lambda: active_on(store, ex_id, a))

    async def both_visible() -> bool:
        return {r.host for r in await store.standbys(ex_id)} == {best, target}

    await wait_for(both_visible)
    attempt = asyncio.ensure_future(
        control.handoff(
            client, exchange=exchange, to_host=target, from_host=a, default_host=a, shutdown=False
        )
    )

    async def notified() -> bool:
        return any(
            e["event"] == "handoff" and e.get("detail", "").startswith("notify")
            for e in await events(store, exchange)
        )

    await wait_for(notified)
    slow = procs[2]
    slow.signal(signal.SIGSTOP)
    try:
        # Past the best standby's next look at the key (within an interval of the release).
        await asyncio.sleep(1.6 * interval)
    finally:
        slow.signal(signal.SIGCONT)
    result = await attempt
    assert target in (result.detail or ""), result
    doc = await wait_for(lambda: active_on(store, ex_id, target), timeout=30)
    promoted = [e["hostname"] for e in await events(store, exchange) if e["event"] == "promoted"]
    assert promoted == [target], promoted  # the best standby never held it
    assert doc["hostname"] == target
    for h in (target, a, best):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)


async def test_a_restarted_standby_host_watches_again_without_waiting_for_a_timeout(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """The standby host's worker is killed and started again. The new worker tells the host's
    instances at once; the standby's workflow (the same run) cancels the watch that died with the
    old process and watches from the new one — its record is back, and no activity of it timed out
    (the old way back: the watch's heartbeat timeout, 18.75 s here, then the instance ended lost)."""
    a, b = hosts(2, "rw")
    procs = await start_workers(servers, worker_processes, *[a, b])
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    await register(client, exchange, b, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    handle = client.get_workflow_handle(workflow_id(exchange, b))
    run_before = (await handle.describe()).run_id

    async def visible() -> list[str] | None:
        return [r.host for r in await store.standbys(ex_id)] or None

    assert await wait_for(visible) == [b]
    procs[1].signal(signal.SIGKILL)
    procs[1].wait(30)

    async def gone() -> bool:
        return not await store.standbys(ex_id)

    await wait_for(gone)  # the record's TTL ran out with nobody renewing it
    again = WorkerProcess(servers, b)
    worker_processes.append(again)
    await again.ready()
    assert await wait_for(visible, timeout=60) == [b]
    described = await handle.describe()
    assert described.run_id == run_before and described.status == WorkflowExecutionStatus.RUNNING
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    signals = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events]
    assert "host_restarted" in signals
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in kinds
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT not in kinds
    assert "told 1 instance(s) of host" in again.log.read_text()
    # Still a working standby: the holder's crash promotes it.
    procs[0].signal(signal.SIGKILL)
    await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
    await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.SHUTDOWN)


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


async def test_a_holder_whose_redis_replies_are_lost_gives_way_to_its_standby(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """A one-way partition: the holder's requests still reach Redis, its answers never come back.
    The holder stops at its renew deadline and must then let its key age (whatever it writes
    while it cannot read the answers must not keep the key alive), so the standby takes over."""
    a, b = hosts(2, "ow")
    proxy = await StallableProxy(servers.redis_port).start()
    try:
        url = servers.redis_url.replace(f":{servers.redis_port}/", f":{proxy.port}/")
        holder_proc = WorkerProcess(servers, a, PERSEUS_REDIS_URL=url)
        worker_processes.append(holder_proc)
        await holder_proc.ready()
        await start_workers(servers, worker_processes, b)
        ex_id = await exchange_id(servers, exchange)
        await register(client, exchange, a, start=True)
        await register(client, exchange, b, standby=True)
        await wait_for(lambda: active_on(store, ex_id, a))

        async def visible() -> list[str] | None:
            return [r.host for r in await store.standbys(ex_id)] or None

        await wait_for(visible)
        proxy.one_way()
        cut = time.monotonic()
        doc = await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
        took = time.monotonic() - cut
        print(f"one-way partition of the holder → standby active in {took:.2f}s")
        assert doc["hostname"] == b
        proxy.resume()
        await asyncio.sleep(6 * INTERVAL)
        after = await holder(store, ex_id)
        assert after is not None and after["hostname"] == b, after  # no flapping back
        # While the holder's host can reach Redis again: a host cut off for good cannot shut down.
        for h in (b, a):
            with contextlib.suppress(PerseusError):
                await control.command(
                    client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN
                )
    finally:
        await proxy.close()
