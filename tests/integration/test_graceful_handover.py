"""A host worker that also serves the shared queue (the README's topology) stops gracefully.

A workflow task the server hands a worker as it shuts down is lost until the task's timeout: the
woken standby's promotion, whose run the stopping worker had cached, once waited a whole second so
(bench.failover, one graceful stop in ten at a 1 s interval). So a stopping worker that has a peer on
the shared queue hands the queue over *before* it releases its instances, and runs no workflow task
after; if the peer turns out to be gone, it serves the queue again to finish its own release.

Each test has a private Temporal (no other test's worker polls its shared queue, so which worker
ran a task is decided here) and a Redis of its own (no other test's worker is announced there).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.host.workers import WorkerRecord
from perseus.keys import SHARED_TASK_QUEUE, iso, workflow_id
from perseus.store.redis_store import RedisStore, make_client
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import PrivateTemporal, active_on, events, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL = 1.0


@dataclass
class Private:
    """One exchange, a private Temporal and a Redis of this test's own, and the host workers started."""

    servers: Servers
    temporal: PrivateTemporal
    store: RedisStore
    env: dict[str, str]
    procs: list[WorkerProcess]
    exchange: str
    ex_id: int

    async def worker(self, host: str) -> WorkerProcess:
        """``perseus worker --host H`` that also serves the shared queue (the README's), polling."""
        proc = WorkerProcess(self.servers, host, shared=True, extra_env=self.env)
        self.procs.append(proc)
        await proc.ready()
        return proc

    async def register(self, host: str, *, standby: bool = False) -> None:
        await control.register(
            self.temporal.client,
            exchange=self.exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=not standby,
            standby=standby,
        )
        if not standby:
            await wait_for(lambda: active_on(self.store, self.ex_id, host), timeout=60)


@pytest_asyncio.fixture
async def private(
    servers: Servers,
    temporal: PrivateTemporal,
    own_redis: services.Service,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> AsyncIterator[Private]:
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}", "PERSEUS_REDIS_URL": redis_url}
    store = RedisStore(make_client(redis_url))
    try:
        ex_id = await exchange_id(servers, exchange)
        yield Private(servers, temporal, store, env, worker_processes, exchange, ex_id)
    finally:
        await store.client.aclose()


async def identity_of(store: RedisStore, host: str) -> str:
    """The Temporal identity a host's worker announced."""

    async def announced() -> str | None:
        return next((r.worker_id for r in await store.workers() if r.host == host), None)

    return await wait_for(announced)


async def tasks_after(client: Client, workflow: str, signal_name: str) -> list[str]:
    """Who started each workflow task of ``workflow`` after it last received ``signal_name``."""
    events: list[HistoryEvent] = list((await client.get_workflow_handle(workflow).fetch_history()).events)
    signalled = max(
        i
        for i, e in enumerate(events)
        if e.HasField("workflow_execution_signaled_event_attributes")
        and e.workflow_execution_signaled_event_attributes.signal_name == signal_name
    )
    return [
        e.workflow_task_started_event_attributes.identity
        for e in events[signalled:]
        if e.HasField("workflow_task_started_event_attributes")
    ]


async def test_a_stopping_worker_hands_the_shared_queue_over_before_it_releases(private: Private) -> None:
    """The active instance's run is cached on its own host's worker (the only one polling while it
    started). That worker is stopped with a peer beside it: every workflow task of the release, and
    of the standby's promotion it wakes, runs on the peer — none on the worker going away."""
    p, a, b = private, host_name("hand-a"), host_name("hand-b")
    first = await p.worker(a)
    await p.register(a)
    await p.worker(b)
    await p.register(b, standby=True)

    async def standing_by() -> bool:
        return [r.host for r in await p.store.standbys(p.ex_id)] == [b]

    await wait_for(standing_by)
    stopping, taking_over = await identity_of(p.store, a), await identity_of(p.store, b)

    first.signal(signal.SIGTERM)
    await wait_for(lambda: active_on(p.store, p.ex_id, b), timeout=30)
    assert await asyncio.to_thread(first.wait, 60) == 0
    log = first.log.read_text()
    assert f"host {a} hands the shared queue to {taking_over} before it releases its instances" in log
    assert "serving it again" not in log

    client = p.temporal.client
    released = await tasks_after(client, workflow_id(p.exchange, a), "host_shutting_down")
    promoted = await tasks_after(client, workflow_id(p.exchange, b), "promote")
    assert released and promoted
    assert stopping not in released + promoted, (stopping, released, promoted)
    await control.command(client, exchange=p.exchange, host=b, default_host=b, command=Command.SHUTDOWN)


async def test_a_stopping_worker_whose_peer_has_gone_serves_the_shared_queue_again(private: Private) -> None:
    """The peer announced itself and polled the shared queue, then died before its announcement ran
    out: the stopping worker hands the queue over to nobody. Its instance's release must still finish
    — it serves the queue again once the release has stalled — and the worker exits cleanly, its
    claim released rather than left to run out."""
    p, a, ghost = private, host_name("alone"), "4242@gone-peer"
    worker = await p.worker(a)
    await p.register(a)

    # The peer's one poll (it takes nothing: every run here is cached on the live worker, and the
    # poll ends before anything happens) and its announcement, fresh when the stop begins.
    with_timeout = timedelta(seconds=3)  # the server refuses a shorter long poll
    client = p.temporal.client
    poll = PollWorkflowTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=SHARED_TASK_QUEUE), identity=ghost
    )
    try:
        await client.workflow_service.poll_workflow_task_queue(poll, timeout=with_timeout)
    except RPCError:
        pass  # the long poll ran out: that is all a peer that died next would have done
    now = iso(datetime.now(UTC))
    record = WorkerRecord(
        host="gone-peer",
        worker_id=ghost,
        machine="gone-peer",
        pid=4242,
        started_at=now,
        seen_at=now,
        capacity=10,
        shared_queue=True,
    )
    await p.store.announce_worker(record, 60_000)

    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 60) == 0
    log = worker.log.read_text()
    assert f"host {a} hands the shared queue to {ghost} before it releases its instances" in log
    assert "serving it again to finish" in log
    assert "not released in time" not in log
    stopped = [e for e in await events(p.store, p.exchange) if e.get("toState") == "stopped"]
    assert [e["hostname"] for e in stopped] == [a], stopped
    assert (await p.store.raw_status(p.ex_id))[0] is None  # released, not left to run out
