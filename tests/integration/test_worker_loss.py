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
from tests.integration.helpers import (
    PrivateTemporal,
    active_and_standby,
    active_on,
    events,
    host_name,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

INTERVAL = 1.0
#: The SDK's default sticky timeout, which a dead worker's queue used to hold every task for.
SDK_STICKY_DEFAULT_S = 10.0


async def sticky_waits(temporal: PrivateTemporal, wf_id: str) -> list[timedelta]:
    """How long each workflow task that timed out on a sticky queue had waited there (the server's
    own times: scheduled, then timed out schedule-to-start)."""
    waits = []
    scheduled_at = None
    async for event in temporal.client.get_workflow_handle(wf_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            attrs = event.workflow_task_scheduled_event_attributes
            sticky = attrs.task_queue.kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY
            scheduled_at = event.event_time.ToDatetime() if sticky else None
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT and scheduled_at:
            waits.append(event.event_time.ToDatetime() - scheduled_at)
    return waits


async def marks_of(temporal: PrivateTemporal, wf_id: str) -> list[str]:
    """A run's history as the steps these tests order: signals by name, a task that left a sticky
    queue after its timeout, and activities done (``<type> done``)."""
    marks: list[str] = []
    types: dict[int, str] = {}
    async for event in temporal.client.get_workflow_handle(wf_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            marks.append(event.workflow_execution_signaled_event_attributes.signal_name)
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            marks.append("left the dead queue")
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            types[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            marks.append(f"{types[event.activity_task_completed_event_attributes.scheduled_event_id]} done")
    return marks


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
    await active_and_standby(temporal.client, store, exchange, ex_id, a, b, INTERVAL)
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
    # (Whether the server leaves a task there at all depends on when it notices the poller gone:
    # a task it routes to the normal queue at once waited for nothing.)
    moved = await sticky_waits(temporal, workflow_id(exchange, b))
    assert max(moved, default=timedelta(0)) < timedelta(seconds=2), moved
    # And before the watch saw the holder past the claim-over line: B's host told B's run as soon as
    # the holder missed a renewal, so its task left the dead queue while nothing waited on it.
    marks = await marks_of(temporal, workflow_id(exchange, b))
    assert marks.index("heads_up") < marks.index("left the dead queue") < marks.index("hold_standby done"), (
        marks
    )
    # The liveness bound: the latest claim-over line (2.1 intervals after the last renewal), the simulated
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


async def test_a_handoff_after_the_workflows_worker_died_waits_for_no_dead_queue(
    servers: Servers,
    temporal: PrivateTemporal,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """Dedicated workflow workers: S ran (and cached) both instances' workflows and is SIGKILLed, T
    is left. A handoff right after the kill runs through both workflows, whose next tasks go to
    S's sticky queue: each must leave it for T within the sticky timeout as the server keeps it (not
    the SDK's 10 s), and the handoff complete. Not one after the other: the caller wakes the target
    beside its request to the holder, so the target's wait is over before the holder's release
    promotes it (it used to come after, while the exchange had no connector)."""
    a, b, s, t = (host_name(f"wl-{x}") for x in ("ha", "hb", "s", "t"))
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}"}
    worker_s = WorkerProcess(servers, s, shared=True, extra_env=env)
    hosts = [WorkerProcess(servers, h, extra_env=env) for h in (a, b)]
    worker_processes.extend([worker_s, *hosts])
    for worker in (worker_s, *hosts):
        await worker.ready()
    ex_id = await exchange_id(servers, exchange)
    await active_and_standby(temporal.client, store, exchange, ex_id, a, b, INTERVAL)
    worker_t = WorkerProcess(servers, t, shared=True, extra_env=env)
    worker_processes.append(worker_t)
    await worker_t.ready()
    ids = [workflow_id(exchange, a), workflow_id(exchange, b)]

    async def last_worker(wf_id: str) -> str:
        identity = ""
        async for event in temporal.client.get_workflow_handle(wf_id).fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                identity = event.workflow_task_completed_event_attributes.identity
        return identity.split("@", 1)[0]

    assert [await last_worker(x) for x in ids] == [str(worker_s.proc.pid)] * 2, "not both cached on S"
    worker_s.signal(signal.SIGKILL)
    assert worker_s.wait(30) != 0
    await control.handoff(
        temporal.client, exchange=exchange, to_host=b, from_host=a, default_host=b, shutdown=False
    )
    await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
    waits = [wait for wf_id in ids for wait in await sticky_waits(temporal, wf_id)]
    assert max(waits, default=timedelta(0)) < timedelta(seconds=2), waits
    assert [await last_worker(x) for x in ids] == [str(worker_t.proc.pid)] * 2
    marks = [m for m in await marks_of(temporal, ids[1]) if not m.endswith(" done")]
    assert marks[-3:] == ["heads_up", "left the dead queue", "promote"], marks
