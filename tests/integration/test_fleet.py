"""The declared fleet with real worker processes per host: apply, enrolment at worker start,
failover and re-enrolment, refusals, idempotence, diff, prune, drain and status."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from perseus import control
from perseus.enrol import live_hosts
from perseus.keys import workflow_id
from perseus.lifecycle import Command
from perseus.models import StandbyRecord
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, events, holder, host_name, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 1.0


async def new_exchange(servers: Servers) -> str:
    """A second fresh catalog exchange (the ``exchange`` fixture gives one)."""
    name = f"tx_{uuid.uuid4().hex[:10]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("INSERT INTO exchanges (name, display_name) VALUES (%s, %s)", (name, name.upper()))
    return name


def fleet_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / f"fleet-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f"heartbeat_interval = {INTERVAL}\n{body}")
    return str(path)


def table(exchange: str, *hosts: str) -> str:
    return f'[exchanges.{exchange}]\nhosts = {json.dumps(list(hosts))}\nconnector = "simulated"\n'


async def cli(servers: Servers, *args: str):
    return await asyncio.to_thread(perseus, servers, *args)


async def standby_hosts(store: RedisStore, ex_id: int) -> list[str]:
    return [StandbyRecord.model_validate_json(raw).host for raw in await store.standbys(ex_id)]


async def wait_live(client: Client, *hosts: str) -> None:
    async def all_live() -> bool:
        return set(hosts) <= await live_hosts(client, hosts)

    await wait_for(all_live)


async def wait_closed(client: Client, wf_id: str) -> None:
    async def closed() -> bool:
        return (await client.get_workflow_handle(wf_id).describe()).status != WorkflowExecutionStatus.RUNNING

    await wait_for(closed)


async def shutdown_all(client: Client, exchange: str, *hosts: str) -> None:
    for host in hosts:
        try:
            await control.command(
                client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
            )
        except Exception:  # noqa: BLE001 - already gone is fine at the end of a test
            pass


async def test_two_hosts_one_file_failover_and_reenrolment(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    a, b = host_name("fl-a"), host_name("fl-b")
    await start_workers(servers, worker_processes, a, b)
    await wait_live(client, a, b)
    ex_id = await exchange_id(servers, exchange)
    path = fleet_file(tmp_path, table(exchange, a, b))

    # Preferred host active, the other a standby — nobody typed `register`.
    result = await cli(servers, "fleet", "apply", path, "--json")
    assert result.returncode == 0, result.stderr
    first = await wait_for(lambda: active_on(store, ex_id, a))
    assert await wait_for(lambda: standby_hosts(store, ex_id)) == [b]
    assert [p.hosts for p in await catalog.placements() if p.exchange == exchange] == [(a, b)]

    # Applying the same file again changes nothing: no epoch, no transition, no event.
    async def settled() -> list[dict[str, str]] | None:
        seen = await events(store, exchange)
        done = any(e.get("toState") == "active" for e in seen) and any(
            e["event"] == "standby_registered" for e in seen
        )
        return seen if done else None

    before = await wait_for(settled)
    again = await cli(servers, "fleet", "apply", path)
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    diff = await cli(servers, "fleet", "diff", path)
    assert diff.returncode == 0 and "nothing to apply" in diff.stdout
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]
    assert await events(store, exchange) == before

    # kill -9 the preferred host's worker: the standby takes over.
    worker_processes[0].signal(signal.SIGKILL)
    taken = await wait_for(lambda: active_on(store, ex_id, b))
    assert int(str(taken["epoch"])) > int(str(first["epoch"]))
    await wait_closed(client, workflow_id(exchange, a))

    # Restart that worker: it enrols itself as a standby (the highest priority), by itself.
    await start_workers(servers, worker_processes, a)
    assert await wait_for(lambda: standby_hosts(store, ex_id)) == [a]
    assert (await holder(store, ex_id) or {})["epoch"] == taken["epoch"]  # no failback
    status = await cli(servers, "fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    (view,) = [v for v in json.loads(status.stdout) if v["exchange"] == exchange]
    assert (view["active_host"], view["standbys"], view["in_fleet"]) == (b, [a], True)
    assert any(f"preferred {a}" in d for d in view["drift"])

    # Stop both workers gracefully and start them again: the exchange is active again by itself.
    for proc in worker_processes[1:]:
        proc.signal(signal.SIGTERM)
    for proc in worker_processes[1:]:
        await asyncio.to_thread(proc.wait)
    await wait_closed(client, workflow_id(exchange, b))
    await start_workers(servers, worker_processes, a, b)
    back = await wait_for(lambda: holder(store, ex_id))
    assert back["hostname"] in (a, b)
    await wait_for(lambda: active_on(store, ex_id, str(back["hostname"])))
    await shutdown_all(client, exchange, a, b)
    await catalog.store_placements([], forget=[exchange])


async def test_bad_files_are_refused_in_one_line_and_change_nothing(
    servers: Servers, catalog: db.Catalog, exchange: str, tmp_path: Path
) -> None:
    simulated = 'connector = "simulated"\n'
    cases = {
        "exchanges.nasdaq: unknown exchange": f'[exchanges.nasdaq]\nhosts = ["x"]\n{simulated}',
        f"exchanges.{exchange}.heartbeat_interval: the heartbeat interval must be between": (
            f'[exchanges.{exchange}]\nhosts = ["x"]\nheartbeat_interval = 0.01\n{simulated}'
        ),
        f"exchanges.{exchange}.hosts: duplicate host 'x'": (
            f'[exchanges.{exchange}]\nhosts = ["x", "x"]\n{simulated}'
        ),
        f"exchanges.{exchange}: no connector": f'[exchanges.{exchange}]\nhosts = ["x"]\n',
        f"exchanges.{exchange}.hosts: expected": f'[exchanges.{exchange}]\nhosts = "x"\n{simulated}',
        f"exchanges.{exchange}.admin_email: unknown admin": (
            f'[exchanges.{exchange}]\nhosts = ["x"]\nadmin_email = "nobody@nowhere"\n{simulated}'
        ),
    }
    before = await catalog.placements()
    # Each bad file is preceded by a good table: nothing of it may be stored either.
    good = table(exchange, "x")
    paths = {
        msg: fleet_file(tmp_path, body if exchange in body else good + body) for msg, body in cases.items()
    }
    results = await asyncio.gather(*(cli(servers, "fleet", "apply", p) for p in paths.values()))
    for message, result in zip(cases, results, strict=True):
        assert result.returncode == 1, (message, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (message, result.stderr)
    assert await catalog.placements() == before


async def test_prune_drain_and_hand_registered_instances(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    a, b = host_name("fd-a"), host_name("fd-b")
    await start_workers(servers, worker_processes, a, b)
    await wait_live(client, a, b)
    other = await new_exchange(servers)
    ex_id, other_id = await exchange_id(servers, exchange), await exchange_id(servers, other)
    both = fleet_file(tmp_path, table(exchange, a, b) + table(other, a))
    assert (await cli(servers, "fleet", "apply", both)).returncode == 0
    first = await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: active_on(store, other_id, a))
    await wait_for(lambda: standby_hosts(store, ex_id))

    # Drain refuses as a whole while one exchange has no standby: nothing moves.
    refused = await cli(servers, "drain", a)
    assert refused.returncode == 1 and f"no live standby for {other}" in refused.stderr
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]

    # Diff shows the prune, changes nothing; apply --prune shuts down only what the file dropped.
    only = fleet_file(tmp_path, table(exchange, a, b))
    diff = await cli(servers, "fleet", "diff", only, "--prune")
    assert diff.returncode == 0 and f"{other}: shut down the instance on {a}" in diff.stdout
    assert await active_on(store, other_id, a)
    pruned = await cli(servers, "fleet", "apply", only, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"{other}: shut down on {a}" in pruned.stdout
    await wait_closed(client, workflow_id(other, a))
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]
    assert other not in [p.exchange for p in await catalog.placements()]

    # One registered by hand shows as "not in the fleet".
    await control.register(
        client, exchange=other, host=b, admin_email=None, heartbeat_interval_s=INTERVAL, start=False
    )
    status = json.loads((await cli(servers, "fleet", "status", "--json")).stdout)
    (by_hand,) = [v for v in status if v["exchange"] == other]
    assert not by_hand["in_fleet"] and "not in the fleet" in by_hand["drift"][0]

    # Drain a: the exchange is active on b, and a's instance stands by.
    drained = await cli(servers, "drain", a)
    assert drained.returncode == 0, drained.stderr
    moved = await wait_for(lambda: active_on(store, ex_id, b))
    assert int(str(moved["epoch"])) > int(str(first["epoch"]))
    assert await wait_for(lambda: standby_hosts(store, ex_id)) == [a]
    nothing = await cli(servers, "drain", a)
    assert nothing.returncode == 0 and "nothing to drain" in nothing.stdout

    await shutdown_all(client, exchange, a, b)
    await shutdown_all(client, other, b)
    await catalog.store_placements([], forget=[exchange])
