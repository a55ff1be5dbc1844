"""A dead or stopping worker holds nobody's workflow: in the README's topology every host's worker
also runs workflows, so the one that dies may have other instances' runs in its cache.

Each test runs against a private Temporal dev server, so the harness' in-process shared worker
cannot take the workflows: host A's worker (which also serves the shared queue) runs both instances'
workflows — A's active one and B's standby — and B's worker serves only B's host queue. Worker C
(shared queue only) is started afterwards: once A is gone, it is the one left to run the workflows.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType, TaskQueueKind

from perseus.client import control
from perseus.keys import workflow_id
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import PrivateTemporal, active_on, events, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

INTERVAL = 1.0
#: The SDK's default sticky timeout, which a dead worker's queue used to hold every task for.
SDK_STICKY_DEFAULT_S = 10.0


@dataclass
class CachedOnA:
    worker_a: WorkerProcess
    b: str
    ex_id: int


@pytest_asyncio.fixture
async def cached_on_a(
    servers: Servers,
    temporal: PrivateTemporal,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> CachedOnA:
    """Active on A, standby on B, both workflows last run (and cached) by A's worker; then C."""
    procs = worker_processes
    a, b, c = host_name("wl-a"), host_name("wl-b"), host_name("wl-c")
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}"}
    worker_a = WorkerProcess(servers, a, shared=True, extra_env=env)
    worker_b = WorkerProcess(servers, b, extra_env=env)
    procs += [worker_a, worker_b]
    await worker_a.ready()
    await worker_b.ready()
    ex_id = await exchange_id(servers, exchange)
    for host, standby in ((a, False), (b, True)):
        await control.register(
            temporal.client,
            exchange=exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=not standby,
            standby=standby,
        )
    await wait_for(lambda: active_on(store, ex_id, a))
    worker_c = WorkerProcess(servers, c, shared=True, extra_env=env)
    procs.append(worker_c)
    await worker_c.ready()
    return CachedOnA(worker_a, b, ex_id)


async def test_a_killed_worker_does_not_hold_the_standbys_promotion(
    cached_on_a: CachedOnA, temporal: PrivateTemporal, store: RedisStore, exchange: str
) -> None:
    worker_a, b, ex_id = cached_on_a.worker_a, cached_on_a.b, cached_on_a.ex_id
    worker_a.signal(signal.SIGKILL)
    killed = time.monotonic()
    await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
    took = time.monotonic() - killed
    # The standby's next task was scheduled on the dead worker's sticky queue. It must have moved
    # to the normal queue (and worker C) within the worker's sticky timeout, not the SDK's 10 s.
    moved = []
    scheduled_at = None
    async for event in temporal.client.get_workflow_handle(workflow_id(exchange, b)).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            attrs = event.workflow_task_scheduled_event_attributes
            sticky = attrs.task_queue.kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY
            scheduled_at = event.event_time.ToDatetime() if sticky else None
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT and scheduled_at:
            moved.append(event.event_time.ToDatetime() - scheduled_at)
    assert moved, "no task was left on the dead worker's sticky queue: the test set-up is wrong"
    assert max(moved) < timedelta(seconds=2), moved
    # The liveness bound: the claim-over line (2.1 intervals after the last renewal), the simulated
    # connector's walk (0.7 s), and a margin well below the 10 s the dead worker's queue used to add.
    assert took < 2.1 * INTERVAL + 0.7 + SDK_STICKY_DEFAULT_S / 2, took
    print(f"crash → standby active in {took:.2f}s; the task left the dead worker's queue after {moved}")


async def test_a_stopping_worker_wakes_the_standby_after_releasing(
    cached_on_a: CachedOnA, store: RedisStore, exchange: str
) -> None:
    worker_a, b, ex_id = cached_on_a.worker_a, cached_on_a.b, cached_on_a.ex_id
    worker_a.signal(signal.SIGTERM)
    await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
    assert worker_a.wait(60) == 0
    promoted = [e for e in await events(store, exchange) if e["event"] == "promoted"]
    # Woken by the released holder, not left to find a vacancy that proves nothing (which waits
    # out the old holder's renew deadline before acting) or the TTL.
    assert [e["hostname"] for e in promoted] == [b]
    assert "released: its worker shut down" in promoted[0].get("detail", ""), promoted[0]
