"""A worker cut off from Redis holds nobody's workflow (issue 24).

A host's worker also serves the shared workflow queue, so it runs other hosts' instances' workflow
tasks. Here the only worker of the shared queue reaches Redis through a proxy that is stalled (its
host partitioned from Redis), and the instance's own host worker (``--no-shared``) reaches Redis
directly. The instance is told to start while the cut lasts: its transitions' records — a local
activity in the cut-off worker — must still land, handed to the instance's host, not wait for the
cut to end. Real Temporal (a private dev server: no other test's worker polls its queues), Redis
and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.core.record import RECORD_MOVES
from perseus.keys import host_task_queue, workflow_id
from perseus.models import CommandResult
from perseus.store.redis_store import RedisStore
from perseus.temporal import converter
from perseus.timing import RECORD_HERE_S
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import PrivateTemporal, active_on, events, holder, host_name, wait_for
from tests.integration.proxy import StallableProxy
from workflows.instance import InstanceWorkflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL = 1.0
#: How long the shared worker's Redis stays cut while the records are awaited: far longer than a
#: record is tried there (RECORD_HERE_S) and a host-queue write after it, so records that waited
#: for the cut to end are told apart from ones that did not. (Before issue 24 they landed about a
#: second after the cut ended, whatever its length.)
CUT_S = 10 * RECORD_HERE_S + 10.0


def patch_markers(history: WorkflowHistory) -> list[str]:
    """The patch ids the run recorded."""
    return [
        converter.payload_converter.from_payload(
            e.marker_recorded_event_attributes.details["patch-data"].payloads[0]
        )["id"]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


async def command(*args: Any, **kwargs: Any) -> CommandResult:
    return await control.command(*args, **kwargs)


@pytest.mark.parametrize("cut", ["stalled", "refused"])
async def test_a_transition_is_recorded_while_the_workflows_worker_cannot_reach_redis(
    cut: str,
    servers: Servers,
    temporal: PrivateTemporal,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}"}
    proxy = await StallableProxy(servers.redis_port).start()
    port = servers.redis_port
    cut_off = WorkerProcess(
        servers,
        host_name("rm-core"),
        shared=True,
        extra_env={**env, "PERSEUS_REDIS_URL": servers.redis_url.replace(f":{port}/", f":{proxy.port}/")},
    )
    host = host_name("rm-host")
    host_worker = WorkerProcess(servers, host, extra_env=env)  # --no-shared: Redis directly
    worker_processes += [cut_off, host_worker]
    try:
        await asyncio.gather(cut_off.ready(), host_worker.ready())
        await control.register(
            temporal.client,
            exchange=exchange,
            admin_email=None,
            host=host,
            heartbeat_interval_s=INTERVAL,
            start=False,
        )
        ex_id = await exchange_id(servers, exchange)

        async def idle_recorded() -> bool:
            doc = await holder(store, ex_id)
            return doc is not None and doc.get("connectionState") == "idle"

        await wait_for(idle_recorded)
        before = len([e for e in await events(store, exchange) if e["event"] == "state_transition"])

        # The workflow's worker is cut off from Redis from here on: its writes time out (stalled), or
        # fail at once (refused — a local activity's failure then reaches the workflow unwrapped).
        if cut == "stalled":
            proxy.stall()
        else:
            await proxy.down()
        cut_at = time.monotonic()
        start: asyncio.Task[CommandResult] = asyncio.create_task(
            command(
                temporal.client,
                exchange=exchange,
                host=host,
                default_host=host,
                command=Command.START,
                timeout_s=CUT_S,
            )
        )

        async def walked_up() -> bool:
            kinds = [e["event"] for e in await events(store, exchange)]
            return kinds.count("state_transition") >= before + 3 and bool(await active_on(store, ex_id, host))

        try:
            # Recorded while the cut lasts: the stall is only lifted after this wait.
            await wait_for(walked_up, timeout=CUT_S)
            took = time.monotonic() - cut_at
        finally:
            proxy.resume()
            await proxy.up()
        print(f"start recorded (status active, 3 transitions) {took:.2f}s after the command, Redis cut")
        assert (await start).state == "active"
        # Written by the instance's host, not by the cut-off worker once its Redis came back.
        assert "trying on the host's queue" in cut_off.log.read_text()
        # The whole run, ended as a golden history is, so it can be replayed to its end.
        await control.command(
            temporal.client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )
        handle = temporal.client.get_workflow_handle(workflow_id(exchange, host))
        await handle.result()
        history = await handle.fetch_history()
        assert RECORD_MOVES in patch_markers(history)
        on_host = [
            e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "record"
        ]
        assert on_host and {a.task_queue.name for a in on_host} == {host_task_queue(host)}
        # The moved path replays (a run on it must survive a worker restart or an upgrade).
        replayed = await Replayer(workflows=[InstanceWorkflow], data_converter=converter).replay_workflow(
            history, raise_on_replay_failure=False
        )
        assert replayed.replay_failure is None, replayed.replay_failure
    finally:
        await proxy.close()
