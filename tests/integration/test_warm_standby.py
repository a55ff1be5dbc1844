"""Warm standbys under the real workflow: a standby's connector is prepared and warmed while it waits,
promoted by ``ACTIVATE <epoch>`` after the new claim is taken, demoted by a handback. Real workers,
real children (tests/connectors/child.py), Redis, PostgreSQL and Temporal; interval 0.5 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.keys import standby_index_key, standby_key
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.connectors.support import child_command, journal
from tests.integration.helpers import active_on, events, host_name, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5


async def register(
    client: Client, exchange: str, host: str, spec: ConnectorSpec, *, standby: bool = False, priority: int = 0
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=not standby,
        standby=standby,
        priority=priority,
        connector=spec,
    )


async def standby_records(store: RedisStore, ex_id: int) -> dict[str, dict[str, object]]:
    """Live standby records by host."""
    found: dict[str, dict[str, object]] = {}
    for instance in await store.client.zrange(standby_index_key(ex_id), 0, -1):
        raw = await store.client.get(standby_key(ex_id, str(instance)))
        if raw:
            doc = json.loads(raw)
            found[str(doc["host"])] = doc
    return found


async def warm_ready(store: RedisStore, ex_id: int, host: str) -> dict[str, object] | None:
    doc = (await standby_records(store, ex_id)).get(host)
    return doc if doc and doc.get("warm") and doc.get("warmReady") else None


def env(line: dict[str, object]) -> dict[str, str]:
    """The PERSEUS_* environment a child journalled at its start."""
    found = line["env"]
    assert isinstance(found, dict)
    return found


def warm_child(log: Path) -> ConnectorSpec:
    """A warm process connector (tests/connectors/child.py) that journals what it is told to ``log``."""
    return ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command("--commands", "--journal", str(log), "--ready-after", "0.3"),
            "ready_line": "READY",
            "warm": True,
        }
    )


def warm_failures(stream: list[dict[str, str]]) -> list[str]:
    return [e.get("error", "") for e in stream if e["event"] == "error" and "warm" in e.get("error", "")]


async def test_crash_promotes_the_warm_standby_by_activate_without_a_restart(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    a, b, c = host_name("wa"), host_name("wb"), host_name("wc")
    procs = await start_workers(servers, worker_processes, a, b, c)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "children.jsonl"
    spec = warm_child(log)
    await register(client, exchange, a, spec)
    await register(client, exchange, b, spec, standby=True, priority=5)  # ahead of c
    await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: warm_ready(store, ex_id, b))
    # The CLI spelling of the same: --standby --warm, on a third host.
    result = await asyncio.to_thread(
        perseus,
        servers,
        "register",
        exchange,
        "--host",
        c,
        "--standby",
        "--warm",
        "--exec",
        " ".join(spec.command),
        "--ready-line",
        "READY",
        "--heartbeat-interval",
        str(INTERVAL),
    )
    assert result.returncode == 0, result.stderr
    await wait_for(lambda: warm_ready(store, ex_id, c))
    standby_children = [
        e for e in journal(log) if e["event"] == "start" and env(e)["PERSEUS_ROLE"] == "standby"
    ]
    assert len(standby_children) == 2
    assert {env(e)["PERSEUS_EPOCH"] for e in standby_children} == {"0"}  # they hold nothing
    assert not [e for e in journal(log) if e["event"] == "activate"]  # nobody acts before ACTIVATE

    procs[0].signal(signal.SIGKILL)
    doc = await wait_for(lambda: active_on(store, ex_id, b), timeout=30)
    epoch = str(doc["epoch"])
    activations = [e for e in journal(log) if e["event"] == "activate"]
    assert [e["epoch"] for e in activations] == [epoch]  # once, with the new claim's epoch
    b_child = activations[0]["pid"]
    assert b_child in {e["pid"] for e in standby_children}  # the warm child itself: no restart
    assert warm_failures(await events(store, exchange)) == []

    # A warm standby that leaves stops its child.
    c_child = next(e["pid"] for e in standby_children if e["pid"] != b_child)
    await control.command(client, exchange=exchange, host=c, default_host=c, command=Command.SHUTDOWN)

    async def c_stopped() -> bool:
        return any(e["event"] == "term" and e["pid"] == c_child for e in journal(log))

    await wait_for(c_stopped, timeout=15)
    await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.SHUTDOWN)


async def test_handoff_to_a_warm_target_and_back_keeps_both_warm(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    a, b = host_name("ha"), host_name("hb")
    await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    spec = ConnectorSpec(warm=True, warmup_delay_s=0.5)
    await register(client, exchange, a, spec)
    await register(client, exchange, b, spec, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: warm_ready(store, ex_id, b))

    done = await control.handoff(
        client, exchange=exchange, to_host=b, from_host=a, default_host=a, shutdown=False
    )
    assert "active at epoch" in (done.detail or "")
    await wait_for(lambda: active_on(store, ex_id, b))
    # The old active one was demoted, not stopped: it is a warm standby at once.
    await wait_for(lambda: warm_ready(store, ex_id, a), timeout=5)

    await control.handoff(client, exchange=exchange, to_host=a, from_host=b, default_host=b, shutdown=False)
    await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: warm_ready(store, ex_id, b), timeout=5)
    stream = await events(store, exchange)
    assert warm_failures(stream) == []
    notes = [
        e.get("detail", "")
        for e in stream
        if e["event"] == "handoff" and e.get("detail", "").startswith("notify")
    ]
    assert len(notes) == 2 and all(n.endswith(", warm)") for n in notes)
    # Each takeover walked starting → warming → active without a prepare (no cold start).
    for h in (a, b):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)


async def test_a_warm_standby_whose_child_dies_is_warmed_again_and_promoted_warm(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """The standby's host sees its warm child go and the watch says so: the workflow records it and
    warms a new child at once, so that a failover later still activates a warm connector."""
    a, b = host_name("da"), host_name("db")
    procs = await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "children.jsonl"
    spec = warm_child(log)
    await register(client, exchange, a, spec)
    await register(client, exchange, b, spec, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: warm_ready(store, ex_id, b))

    def standby_children() -> list[int]:
        return [
            int(str(e["pid"]))
            for e in journal(log)
            if e["event"] == "start" and env(e)["PERSEUS_ROLE"] == "standby"
        ]

    [first] = standby_children()
    os.kill(first, signal.SIGKILL)

    async def warmed_again() -> list[int] | None:
        children = standby_children()
        return children if len(children) == 2 and await warm_ready(store, ex_id, b) else None

    children = await wait_for(warmed_again, timeout=20)
    second = children[1]
    assert second != first
    stream = await events(store, exchange)
    assert any("stopped while waiting" in error for error in warm_failures(stream))

    procs[0].signal(signal.SIGKILL)
    await wait_for(lambda: active_on(store, ex_id, b), timeout=30)
    activations = [e for e in journal(log) if e["event"] == "activate"]
    assert [int(str(e["pid"])) for e in activations] == [second]  # the new warm child, no cold start
    stream = await events(store, exchange)
    assert not [e for e in warm_failures(stream) if "activation failed" in e]
    await control.command(client, exchange=exchange, host=b, default_host=b, command=Command.SHUTDOWN)


async def test_a_failed_warm_up_is_recorded_with_the_childs_output_and_retried(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """The first warm child exits before it is ready: the error event carries its last output, the
    standby's record says why and when it tries again, and the next try (5 s later) warms it."""
    a, b = host_name("ra"), host_name("rb")
    await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "children.jsonl"
    flaky = ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command(
                "--commands",
                "--journal",
                str(log),
                "--ready-after",
                "0.5",
                "--exit-after",
                "0.2",
                "--crash-once",
                str(tmp_path / "crashed"),
            ),
            "ready_line": "READY",
            "warm": True,
        }
    )
    await register(client, exchange, a, ConnectorSpec())
    await wait_for(lambda: active_on(store, ex_id, a))
    await register(client, exchange, b, flaky, standby=True)

    async def failed_record() -> dict[str, object] | None:
        doc = (await standby_records(store, ex_id)).get(b)
        return doc if doc and doc.get("warmError") else None

    doc = await wait_for(failed_record, timeout=15)
    # The child's own last words, as it said them before it exited.
    said = "fatal: lost the exchange websocket"
    assert said in str(doc["warmError"]) and doc["warmRetryAt"] and not doc["warmReady"]

    # The event comes from the workflow, the record from the host's keeper: either may be first.
    async def failure_recorded() -> list[str] | None:
        return warm_failures(await events(store, exchange)) or None

    [failure] = await wait_for(failure_recorded, timeout=15)
    assert said in failure and failure.endswith("trying again in 5s"), failure
    ready = await wait_for(lambda: warm_ready(store, ex_id, b), timeout=20)
    assert ready.get("warmError") is None and ready.get("warmRetryAt") is None
    starts = [e for e in journal(log) if e["event"] == "start"]
    assert len(starts) == 2  # the one that failed, and the retry that warmed
    assert len(warm_failures(await events(store, exchange))) == 1
    for h in (b, a):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)


async def test_a_handoff_to_a_warm_standby_that_cannot_warm_is_refused_and_changes_nothing(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """The README's case: a warm-up longer than the ready timeout. The handoff says why it will not
    go, at once, and the active connector never stops."""
    a, b = host_name("na"), host_name("nb")
    await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "children.jsonl"
    await register(client, exchange, a, warm_child(log))
    never_ready = ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command("--commands", "--ready-after", "30"),
            "ready_line": "READY",
            "ready_timeout_s": 1,
            "warm": True,
        }
    )
    await register(client, exchange, b, never_ready, standby=True)
    before = await wait_for(lambda: active_on(store, ex_id, a))

    async def failed() -> dict[str, object] | None:
        doc = (await standby_records(store, ex_id)).get(b)
        return doc if doc and doc.get("warmError") else None

    await wait_for(failed, timeout=15)
    children = journal(log)
    result = await asyncio.to_thread(perseus, servers, "handoff", exchange, "--to", b, "--from", a)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "warm-up failed" in result.stderr and "last output: child" in result.stderr, result.stderr
    assert "nothing changed" in result.stderr and "perseus worker" not in result.stderr
    after = await active_on(store, ex_id, a)
    assert after is not None
    assert (after["instanceId"], after["epoch"]) == (before["instanceId"], before["epoch"])
    assert after["connectionState"] == "active"
    assert journal(log) == children  # the active child was neither stopped nor told anything
    stream = await events(store, exchange)
    assert not [
        e for e in stream if e["event"] == "handoff" and not e.get("detail", "").startswith("aborted")
    ]
    for h in (b, a):
        await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)
