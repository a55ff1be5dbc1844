"""Connectors prove their health while active, through the real worker, Redis and Temporal: what a
child reports reaches the status key, and a child that stops answering its health URL is caught and
handled by its policy. Interval 0.5 s, three failed checks: detection within 1.5 s plus a probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command, Role
from perseus.models import ConnectorSpec, InstanceSnapshot
from perseus.store.redis_store import RedisStore
from perseus.temporal import QUERY_SNAPSHOT
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.connectors.support import child_command, free_port, journal
from tests.integration.helpers import events, host_name, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5


async def register(
    client: Client, exchange: str, host: str, spec: ConnectorSpec, *, standby: bool = False
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=not standby,
        standby=standby,
        connector=spec,
    )


async def status(store: RedisStore, ex_id: int) -> dict[str, object]:
    raw, _ = await store.raw_status(ex_id)
    return json.loads(raw) if raw else {}


async def test_reported_symbols_errors_and_health_reach_the_status_key(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str
) -> None:
    spec = ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command(
                "--say",
                "PERSEUS symbols=42",
                "--say",
                "PERSEUS error=feed lagging",
                "--say",
                "PERSEUS health=ok",
            ),
            "ready_line": "READY",
        }
    )
    await register(client, exchange, shared_worker, spec)
    ex_id = await exchange_id(servers, exchange)

    async def reported() -> dict[str, object] | None:
        doc = await status(store, ex_id)
        reported = doc.get("symbolCount") == 42 and doc.get("lastError") == "feed lagging"
        return doc if reported and doc.get("healthy") and doc.get("connectionState") == "active" else None

    doc = await wait_for(reported, timeout=20)
    assert doc["lastHealthAt"]

    # The reported error is in the network stream too, once, as an error event of this claim.
    async def error_event() -> list[dict[str, str]]:
        return [e for e in await events(store, exchange) if e["event"] == "error"]

    (event,) = await wait_for(error_event, timeout=5)
    assert (event["error"], event["epoch"], event["hostname"]) == (
        "feed lagging",
        str(doc["epoch"]),
        doc["hostname"],
    )
    # The child says it right after READY: the state then is warming or already active.
    assert event["state"] in ("warming", "active") and event["detail"] == "reported by the connector"
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


async def test_a_hung_health_url_restarts_the_child_in_place(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "child.jsonl"
    spec = ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command("--http", str(port), "--hang-health-after", "2", "--journal", str(log)),
            "ready_url": f"http://127.0.0.1:{port}/health",
            "health_failures": 3,
            "on_unhealthy": "restart",
            "max_restarts": 1,
        }
    )
    await register(client, exchange, shared_worker, spec)
    ex_id = await exchange_id(servers, exchange)

    async def restarted() -> bool:
        return len([e for e in journal(log) if e["event"] == "start"]) >= 2

    await wait_for(restarted, timeout=30)
    kinds = [(e["event"], e.get("error", "")) for e in await events(store, exchange)]
    assert any(kind == "error" for kind, _ in kinds), kinds
    doc = await status(store, ex_id)
    assert doc["workflowId"] == f"instance-{exchange}-{shared_worker}"
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


async def test_an_unhealthy_child_with_failover_hands_the_exchange_to_the_standby(
    servers: Servers,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    first, second = host_name("hf1"), host_name("hf2")
    await start_workers(servers, worker_processes, first, second)
    port = free_port()
    sick = ConnectorSpec.model_validate(
        {
            "kind": "process",
            "command": child_command("--http", str(port), "--hang-health-after", "2"),
            "ready_url": f"http://127.0.0.1:{port}/health",
            "health_failures": 3,
            "on_unhealthy": "failover",
        }
    )
    healthy = ConnectorSpec.model_validate(
        {"kind": "process", "command": child_command(), "ready_line": "READY"}
    )
    await register(client, exchange, first, sick)
    await register(client, exchange, second, healthy, standby=True)
    ex_id = await exchange_id(servers, exchange)

    async def moved() -> dict[str, object] | None:
        doc = await status(store, ex_id)
        return doc if doc.get("hostname") == second and doc.get("connectionState") == "active" else None

    await wait_for(moved, timeout=40)
    # The sick instance waits as a standby now.
    handle = client.get_workflow_handle(f"instance-{exchange}-{first}")

    async def waiting() -> bool:
        snapshot = await handle.query(QUERY_SNAPSHOT, result_type=InstanceSnapshot)
        return snapshot.role is Role.STANDBY

    await wait_for(waiting, timeout=20)
    kinds = [e["event"] for e in await events(store, exchange)]
    assert "error" in kinds and "promoted" in kinds and "standby_registered" in kinds
