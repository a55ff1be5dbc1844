"""Races, dead hosts, graceful worker stops and connector failures — with real worker processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.errors import ClaimConflict, ServiceUnavailable
from perseus.keys import workflow_id
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import events, host_name, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5


async def wait_closed(client: Client, wf_id: str, timeout: float = 60) -> str:
    handle = client.get_workflow_handle(wf_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = await handle.describe()
        if described.status != WorkflowExecutionStatus.RUNNING:
            return str(await handle.result())
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wf_id} still running")


async def test_two_hosts_race_exactly_one_claims(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    host_a, host_b = host_name("race-a"), host_name("race-b")
    await start_workers(servers, worker_processes, host_a, host_b)
    epochs: list[int] = []
    for _ in range(5):
        results = await asyncio.gather(
            *(
                control.register(
                    client,
                    exchange=exchange,
                    host=h,
                    admin_email=None,
                    heartbeat_interval_s=INTERVAL,
                    start=False,
                )
                for h in (host_a, host_b)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1, results
        winner, loser = winners[0], losers[0]
        assert isinstance(loser, ClaimConflict), loser
        assert f"already claimed by {winner.hostname}" in str(loser) and "TTL left" in str(loser)
        epochs.append(winner.epoch)
        await control.command(
            client, exchange=exchange, host=winner.host, default_host=winner.host, command=Command.SHUTDOWN
        )
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    conflicts = [e for e in await events(store, exchange) if e["event"] == "claim_conflict"]
    assert len(conflicts) == 5


async def test_killed_worker_is_noticed_and_its_claim_freed_within_the_ttl(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    host = host_name("k9")
    (proc,) = await start_workers(servers, worker_processes, host)
    await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=INTERVAL, start=True
    )
    ex_id = await exchange_id(servers, exchange)
    for _ in range(100):
        raw, _ = await store.raw_status(ex_id)
        if raw and json.loads(raw)["connectionState"] == "active":
            break
        await asyncio.sleep(0.1)
    proc.signal(signal.SIGKILL)
    killed = time.monotonic()
    for _ in range(400):  # bounded: 20 s at most
        if (await store.raw_status(ex_id))[0] is None:
            break
        await asyncio.sleep(0.05)
    freed_after = time.monotonic() - killed
    assert freed_after < 3 * INTERVAL + 0.5  # the TTL is the upper bound; release usually comes first
    outcome = await wait_closed(client, workflow_id(exchange, host))
    assert outcome.startswith("instance lost")
    kinds = [(e["event"], e.get("toState")) for e in await events(store, exchange)]
    lost_at = kinds.index(("instance_lost", None))
    assert kinds[lost_at + 1 :] == [
        ("state_transition", "stopping"),
        ("state_transition", "stopped"),
        ("state_transition", "idle"),
    ]


async def test_sigterm_stops_gracefully_and_releases(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    host = host_name("term")
    (proc,) = await start_workers(servers, worker_processes, host)
    await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=INTERVAL, start=True
    )
    ex_id = await exchange_id(servers, exchange)
    await control.command(client, exchange=exchange, host=host, default_host=host, command=Command.STOP)
    await control.command(client, exchange=exchange, host=host, default_host=host, command=Command.START)
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    assert (await store.raw_status(ex_id))[0] is None  # released before the worker exited
    outcome = await wait_closed(client, workflow_id(exchange, host))
    assert "shut down" in outcome
    tail = [
        (e["fromState"], e["toState"])
        for e in await events(store, exchange)
        if e["event"] == "state_transition"
    ]
    assert tail[-2:] == [("active", "stopping"), ("stopping", "stopped")]


async def test_connector_failure_is_recorded_and_recovers_to_idle(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=False,
        connector=ConnectorSpec(fail_steps=["warm_up"], warmup_delay_s=0.0),
    )
    try:
        with pytest.raises(Exception, match="start failed: simulated warm_up failure") as info:
            await control.command(
                client, exchange=exchange, host=host, default_host=host, command=Command.START
            )
        assert "recovered to idle" in str(info.value)
        raw, pttl = await store.raw_status(await exchange_id(servers, exchange))
        assert raw is not None and pttl > 0
        doc = json.loads(raw)
        assert doc["connectionState"] == "idle" and "warm_up" in doc["lastError"] and doc["lastErrorAt"]
        got = [
            (e["event"], e.get("fromState"), e.get("toState"), e.get("state"))
            for e in await events(store, exchange)
        ]
        assert got == [
            ("state_transition", "idle", "starting", None),
            ("state_transition", "starting", "warming", None),
            ("error", None, None, "warming"),
            ("state_transition", "warming", "idle", None),
        ]
    finally:
        await control.command(
            client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )


async def test_host_without_worker_is_a_clear_error(
    shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    with pytest.raises(
        ServiceUnavailable, match="no worker is serving host 'nobody-home'.*perseus worker --host"
    ):
        await control.register(
            client,
            exchange=exchange,
            host="nobody-home",
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=False,
        )
    assert await store.events(exchange) == []


async def test_epochs_keep_rising_after_redis_lost_them(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    first = await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=INTERVAL, start=False
    )
    await control.command(client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN)
    ex_id = await exchange_id(servers, exchange)
    await store.client.delete(f"exchange:{ex_id}:epoch")  # Redis lost the counter; no workflow remembers
    second = await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=INTERVAL, start=False
    )
    assert second.epoch > first.epoch  # PostgreSQL's high-water mark is the floor
    await control.command(client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN)
