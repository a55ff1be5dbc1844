"""Transitions through the real CLI, waited for (``--wait``, the default) or signalled and left to run
(``--no-wait``); the spinner and ``--timeout`` of a wait; the activity log as aligned columns with
numbers as numbers; and "the active instance" taken from the status key, not search attributes."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import time
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command, Role, State
from perseus.keys import workflow_id
from perseus.store.redis_store import RedisStore
from perseus.temporal import INSTANCE_WORKFLOW, instances_filter, search_attributes
from tests.conftest import PERSEUS, ROOT, Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, events, host_name, start_workers, wait_for

pytestmark = pytest.mark.integration

INTERVAL = 0.5


async def cli(servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(perseus, servers, *args)


async def signals(client: Client, wf_id: str) -> list[str]:
    """The signal names in the workflow's history, in order."""
    history = await client.get_workflow_handle(wf_id).fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


async def transitions(store: RedisStore, name: str) -> list[tuple[str, str]]:
    return [
        (e["fromState"], e["toState"]) for e in await events(store, name) if e["event"] == "state_transition"
    ]


async def register(client: Client, exchange: str, host: str, *, start: bool, standby: bool = False) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=start,
        standby=standby,
    )


async def test_no_wait_signals_the_command_and_returns(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    wf_id = workflow_id(exchange, host)
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, host, start=False)

    result = await cli(servers, "start", exchange, "--host", host, "--no-wait", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "command": "start",
        "workflowId": wf_id,
        "signal": "command_signal",
        "state": "idle",
        "pending": [],
        "validated": True,
    }
    await wait_for(lambda: active_on(store, ex_id, host))

    began = time.monotonic()
    result = await cli(servers, "stop", exchange, "--host", host, "--no-wait")
    print(f"stop --no-wait: the process returned after {time.monotonic() - began:.2f}s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{exchange}: stop sent to {wf_id} (signal command_signal, from active)")
    assert await signals(client, wf_id) == ["command_signal", "command_signal"]

    async def back_to_idle() -> bool:
        return ("stopped", "idle") in await transitions(store, exchange)

    await wait_for(back_to_idle)
    assert await transitions(store, exchange) == [
        ("idle", "starting"),
        ("starting", "warming"),
        ("warming", "active"),
        ("active", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "idle"),
    ]

    # What the instance would refuse is refused here, and nothing is signalled.
    result = await cli(servers, "stop", exchange, "--host", host, "--no-wait", "--json")
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body == {
        "error": "cannot stop: the instance is idle; nothing is running",
        "type": "InvalidTransition",
        "exitCode": 1,
    }
    assert await signals(client, wf_id) == ["command_signal", "command_signal"]

    result = await cli(servers, "shutdown", exchange, "--host", host, "--no-wait")
    assert result.returncode == 0, result.stderr
    await client.get_workflow_handle(wf_id).result()  # the workflow completes on its own
    assert (await store.raw_status(ex_id))[0] is None


async def test_wait_is_the_default_and_the_log_is_columns_of_data(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, host, start=True)
    await wait_for(lambda: active_on(store, ex_id, host))
    try:
        result = await cli(servers, "stop", exchange, "--host", host, "--wait", "--json", "--timeout", "60")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["transitions"] == ["stopping", "stopped", "idle"]
        result = await cli(servers, "start", exchange, "--host", host)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{exchange}: start done (idle -> starting -> warming -> active)\n"

        # The log: numbers as numbers in JSON; aligned columns in text, data shown as it is.
        page = json.loads((await cli(servers, "log", exchange, "--json")).stdout)
        assert page["entries"] and all(
            isinstance(e["epoch"], int) and e["exchangeId"] == ex_id for e in page["entries"]
        )
        await store.append_event(
            exchange,
            uuid.uuid4().hex,
            "0-1",
            {
                "event": "error",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "error": "[/bold] boom",
                "state": "x",
            },
        )
        result = await cli(servers, "log", exchange)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "[/bold] boom (in x)" in lines[0]
        starts = {
            line.index(kind) for line in lines for kind in ("state_transition", "error ") if kind in line
        }
        assert len(lines) > 6 and len(starts) == 1, result.stdout  # one event column on every line
    finally:
        await control.command(
            client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )


def run_on_terminal(servers: Servers, *args: str) -> tuple[int, str, str]:
    """``perseus ARGS`` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [PERSEUS, *args],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            env=servers.env(TERM="xterm-256color", COLUMNS="160"),
            cwd=ROOT,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate(timeout=60)
        return proc.returncode, stdout, seen.decode(errors="replace")
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)


async def test_spinner_on_a_terminal_and_timeout(
    servers: Servers, shared_worker: str, client: Client, exchange: str
) -> None:
    # Nobody serves these hosts: their registrations cannot be answered.
    ghost, other = host_name("noworker"), host_name("noworker")
    try:
        code, stdout, terminal = await asyncio.to_thread(
            run_on_terminal, servers, "register", exchange, "--host", ghost, "--standby", "--timeout", "1.5"
        )
        assert code == 3 and stdout == "", terminal
        assert re.search(rf"registering {exchange} on {ghost} \(\d+\.\ds\)", terminal), terminal
        assert "no worker answered the registration within 1.5s" in terminal

        # JSON output: no spinner at all, the error as JSON on stdout (and its line on the terminal).
        code, stdout, terminal = await asyncio.to_thread(
            run_on_terminal,
            servers,
            *("register", exchange, "--host", other, "--standby", "--timeout", "1", "--json"),
        )
        assert code == 3 and json.loads(stdout)["exitCode"] == 3
        assert "registering" not in terminal and "no worker answered" in terminal
    finally:
        for host in (ghost, other):
            await client.get_workflow_handle(workflow_id(exchange, host)).terminate("test cleanup")


@pytest.mark.slow
async def test_active_instance_comes_from_the_status_key_not_search_attributes(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, b = shared_worker, host_name("sk-b")  # a runs in this process, b in a worker process
    await start_workers(servers, worker_processes, b)
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, start=True)
    await register(client, exchange, b, start=False, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    # A lagging workflow that still reads "active" in its search attributes (as a crashed host's
    # does right after a failover) and answers nothing: nobody serves its task queue.
    stale = await client.start_workflow(
        INSTANCE_WORKFLOW,
        id=workflow_id(exchange, "crashed"),
        task_queue=f"nobody-{uuid.uuid4().hex[:6]}",
        search_attributes=search_attributes(exchange, "crashed", State.ACTIVE, Role.ACTIVE),
    )
    try:

        async def two_read_active() -> bool:
            found = client.list_workflows(instances_filter(exchange, role=Role.ACTIVE))
            return len([wf async for wf in found]) == 2

        await wait_for(two_read_active)
        result = await cli(servers, "handoff", exchange, "--to", b, "--json", "--timeout", "60")
        assert result.returncode == 0, result.stderr
        assert "active at epoch" in json.loads(result.stdout)["detail"]
        await wait_for(lambda: active_on(store, ex_id, b))

        # stop without --host, with three instances running: the holder (b) is the one meant.
        result = await cli(servers, "stop", exchange, "--no-wait", "--json")
        assert result.returncode == 0, result.stderr
        sent = json.loads(result.stdout)
        assert (sent["workflowId"], sent["state"]) == (workflow_id(exchange, b), "active")
    finally:
        await stale.terminate("test cleanup")
        for host in (a, b):
            await control.command(
                client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
            )
