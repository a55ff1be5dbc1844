"""The data plane rides through control-plane trouble, and a connector never outlives its claim.

Each test runs real worker processes against a private Temporal dev server (so it can be frozen
with SIGSTOP without disturbing other tests), the harness' Redis and PostgreSQL, and a real child
process as the connector (tests/connectors/child.py). A sampler watches, every 20 ms, whether the
child runs and whether the status key still holds the claim it runs under: "child alive while the
key is gone or names another epoch" is the violation every test asserts never happens.
Interval 1 s: heartbeat timeout 18.75 s (a heartbeat every 15 renewals), renew deadline 1.7 s, TTL 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from perseus.client import control
from perseus.core.decisions import lease_heartbeat_timeout_s
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.connectors.support import alive, child_command, journal
from tests.integration.helpers import (
    PrivateTemporal,
    active_on,
    events,
    holder,
    host_name,
    wait_for,
)
from tests.integration.proxy import StallableProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

INTERVAL = 1.0
#: Long enough that every lease activity is timed out (heartbeat timeout 18.75 s, counted from its
#: last heartbeat, which came before the outage) and every key would have expired three times over
#: (TTL 3 s) had renewals depended on Temporal: 21.5 s at 1 s.
FREEZE_S = lease_heartbeat_timeout_s(INTERVAL) + 2.75


@dataclass
class Sampler:
    """Samples (child alive?, key epoch) and records every moment a child ran without its claim."""

    store: RedisStore
    ex_id: int
    pid: int
    epoch: int
    violations: list[str] = field(default_factory=list)
    lapses: int = 0
    samples: int = 0

    async def run(self) -> None:
        while True:
            raw, _ = await self.store.raw_status(self.ex_id)
            doc = json.loads(raw) if raw else None
            running = alive(self.pid)
            self.samples += 1
            if doc is None or int(doc["epoch"]) != self.epoch:
                self.lapses += 1
                if running:
                    self.violations.append(
                        f"child {self.pid} alive while the key holds {doc and doc['epoch']}"
                    )
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def sampling(sampler: Sampler) -> AsyncIterator[Sampler]:
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        # Again until it ends: redis-py can swallow a cancellation that meets its read timeout.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_stack(
    servers: Servers, temporal: PrivateTemporal, host: str, *, host_port: int | None = None
) -> list[WorkerProcess]:
    """A workflow worker and ``host``'s worker; the host's may reach Temporal through a proxy."""
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}"}
    core = WorkerProcess(servers, host_name("core"), shared=True, extra_env=env)
    worker = WorkerProcess(
        servers, host, extra_env={"TEMPORAL_ADDRESS": f"127.0.0.1:{host_port or temporal.port}"}
    )
    procs = [core, worker]
    await asyncio.gather(*(p.ready() for p in procs))
    return procs


async def register_child(
    temporal: PrivateTemporal,
    store: RedisStore,
    servers: Servers,
    exchange: str,
    host: str,
    log: Path,
    history_limit: int | None = None,
) -> Sampler:
    spec = ConnectorSpec.model_validate(
        {"kind": "process", "command": child_command("--journal", str(log)), "ready_line": "READY"}
    )
    await control.register(
        temporal.client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=True,
        connector=spec,
        history_limit=history_limit,
    )
    ex_id = await exchange_id(servers, exchange)
    doc = await wait_for(lambda: active_on(store, ex_id, host))
    (start,) = [e for e in journal(log) if e["event"] == "start"]
    assert isinstance(start["pid"], int) and alive(start["pid"])
    return Sampler(store, ex_id, start["pid"], int(str(doc["epoch"])))


async def reattached(temporal: PrivateTemporal, exchange: str, host: str, after: float) -> bool:
    """The instance's lease activity runs again and has heartbeated since ``after`` (epoch seconds)."""
    described = await temporal.client.get_workflow_handle(f"instance-{exchange}-{host}").describe()
    for pending in described.raw_description.pending_activities:
        if pending.activity_type.name == "hold_lease" and pending.HasField("last_heartbeat_time"):
            return pending.last_heartbeat_time.ToDatetime().timestamp() > after
    return False


async def assert_rode_through(
    temporal: PrivateTemporal, store: RedisStore, sampler: Sampler, exchange: str, host: str, log: Path
) -> None:
    """Same claim, same child, no transition, no loss — and re-attached within 2 intervals."""
    resumed_at = time.time()
    started = time.monotonic()
    await wait_for(lambda: reattached(temporal, exchange, host, resumed_at), timeout=30)
    print(f"re-attached {time.monotonic() - started:.2f}s after Temporal answered again")
    doc = await holder(store, sampler.ex_id)
    assert doc is not None and int(str(doc["epoch"])) == sampler.epoch and doc["connectionState"] == "active"
    assert alive(sampler.pid)
    assert [e["event"] for e in journal(log)] == ["start"]  # never restarted, never signalled

    async def walked_up() -> list[str] | None:
        # The last event of the walk up may have been waiting for Temporal to come back.
        kinds = [e["event"] for e in await events(store, exchange)]
        return kinds if kinds.count("state_transition") >= 3 else None

    kinds = await wait_for(walked_up)
    await asyncio.sleep(INTERVAL)
    kinds = [e["event"] for e in await events(store, exchange)]
    assert "instance_lost" not in kinds and "error" not in kinds
    assert kinds.count("state_transition") == 3  # idle→starting→warming→active, nothing after
    assert sampler.lapses == 0 and sampler.violations == []


async def test_temporal_frozen_lapses_no_claim_and_stops_no_connector(
    servers: Servers, temporal: PrivateTemporal, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    host = host_name("rt")
    procs = await start_stack(servers, temporal, host)
    log = tmp_path / "child.jsonl"
    try:
        sampler = await register_child(temporal, store, servers, exchange, host, log)
        async with sampling(sampler):
            temporal.freeze(True)
            await asyncio.sleep(FREEZE_S)
            temporal.freeze(False)
            await assert_rode_through(temporal, store, sampler, exchange, host, log)
        assert sampler.samples > FREEZE_S / 0.05
    finally:
        for proc in procs:
            proc.stop()


async def test_one_host_partitioned_from_temporal_keeps_its_claim(
    servers: Servers, temporal: PrivateTemporal, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    """Only the host's worker loses Temporal (a stalled proxy): the workflow sees heartbeats stop,
    but Redis proves the host renews, so it waits and re-attaches instead of declaring it dead."""
    host = host_name("rp")
    proxy = await StallableProxy(temporal.port).start()
    procs = await start_stack(servers, temporal, host, host_port=proxy.port)
    log = tmp_path / "child.jsonl"
    try:
        sampler = await register_child(temporal, store, servers, exchange, host, log)
        async with sampling(sampler):
            proxy.stall()
            await asyncio.sleep(FREEZE_S)
            proxy.resume()
            await assert_rode_through(temporal, store, sampler, exchange, host, log)
    finally:
        for proc in procs:
            proc.stop()
        await proxy.close()


async def test_frozen_worker_child_killed_before_the_key_can_expire(
    servers: Servers, temporal: PrivateTemporal, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    """The worker is frozen (SIGSTOP: no renewals, no event loop, no way to kill anything itself):
    its watchdog process kills the child at the renew deadline, while the key still holds the
    claim — before any other host could take the exchange. Unfrozen, the instance recovers."""
    host = host_name("rz")
    procs = await start_stack(servers, temporal, host)
    log = tmp_path / "child.jsonl"
    try:
        sampler = await register_child(temporal, store, servers, exchange, host, log)
        async with sampling(sampler):
            procs[1].signal(signal.SIGSTOP)
            stopped = time.monotonic()
            while alive(sampler.pid):
                assert time.monotonic() - stopped < 3 * INTERVAL + 1, "child outlived the TTL"
                await asyncio.sleep(0.01)
            killed_after = time.monotonic() - stopped
            raw, pttl = await store.raw_status(sampler.ex_id)
            procs[1].signal(signal.SIGCONT)
        print(f"child killed {killed_after:.2f}s after the worker froze (renew deadline {2 * INTERVAL}s)")
        assert sampler.violations == []
        assert raw is not None and pttl > 0  # the claim had not expired yet when the child was gone

        # The worker wakes past its deadline, stops, and the workflow takes the exchange back.
        async def back() -> dict[str, object] | None:
            doc = await active_on(store, sampler.ex_id, host)
            return doc if doc and int(str(doc["epoch"])) > sampler.epoch else None

        await wait_for(back, timeout=60)
    finally:
        for proc in procs:
            proc.stop()


async def test_continue_as_new_keeps_the_child_and_the_claim(
    servers: Servers, temporal: PrivateTemporal, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    """The workflow cancels its lease itself before continuing as new: renewals go on, the new
    run re-attaches, the child is never touched."""
    host = host_name("rc")
    procs = await start_stack(servers, temporal, host)
    log = tmp_path / "child.jsonl"
    try:
        # A history limit so small that the walk to active alone passes it: the run that started
        # the child continues as new right after.
        sampler = await register_child(temporal, store, servers, exchange, host, log, history_limit=20)
        handle = temporal.client.get_workflow_handle(f"instance-{exchange}-{host}")
        async with sampling(sampler):

            async def continued() -> bool:
                described = await handle.describe()
                return described.run_id != described.raw_description.workflow_execution_info.first_run_id

            await wait_for(continued, timeout=30)
            since = time.time()
            await wait_for(lambda: reattached(temporal, exchange, host, since), timeout=15)
            await asyncio.sleep(2 * INTERVAL)
        assert alive(sampler.pid)
        assert [e["event"] for e in journal(log)] == ["start"]
        assert sampler.lapses == 0 and sampler.violations == []
    finally:
        for proc in procs:
            proc.stop()
