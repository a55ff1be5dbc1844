"""The declared fleet with real worker processes per host: apply, enrolment at worker start,
failover and re-enrolment, refusals, idempotence, diff, prune, drain and status."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.errors import ServiceUnavailable
from perseus.fleet.enrol import (
    FleetExchangeView,
    apply_fleet,
    drain_host,
    fleet_status,
    live_hosts,
    plan_fleet,
)
from perseus.fleet.file import Placement, parse_fleet
from perseus.keys import workflow_id
from perseus.models import StandbyRecord
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, events, holder, host_name, start_workers, wait_for
from tests.integration.proxy import StallableProxy

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
    return [record.host for record in await store.standbys(ex_id)]


async def standbys_become(store: RedisStore, ex_id: int, expected: list[str]) -> None:
    """Wait until the live standby records name exactly ``expected`` (a promoted standby's record
    may outlive its promotion for a moment)."""

    async def check() -> bool:
        return await standby_hosts(store, ex_id) == expected

    await wait_for(check)


async def wait_live(client: Client, *hosts: str) -> None:
    async def all_live() -> bool:
        try:
            return set(hosts) <= await live_hosts(client, hosts)
        except ServiceUnavailable:  # a busy dev server may cancel one describe call: ask again
            return False

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


async def placements_of(catalog: db.Catalog, body: str) -> list[Placement]:
    known = [e.name for e in await catalog.exchanges(active_only=True)]
    return parse_fleet(f"heartbeat_interval = {INTERVAL}\n{body}", known)


async def settled(store: RedisStore, exchange: str, *hosts: str) -> list[dict[str, str]]:
    """The stream once the active transition and each host's standby registration are in it."""

    async def check() -> list[dict[str, str]] | None:
        seen = await events(store, exchange)
        active = any(e.get("toState") == "active" for e in seen)
        standbys = {e["hostname"] for e in seen if e["event"] == "standby_registered"}
        return seen if active and set(hosts) <= standbys else None

    return await wait_for(check)


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
    body = table(exchange, a, b)

    # Preferred host active, the other a standby — nobody typed `register`.
    result = await cli(servers, "fleet", "apply", fleet_file(tmp_path, body), "--json")
    assert result.returncode == 0, result.stderr
    assert [a["kind"] for a in json.loads(result.stdout)["actions"]] == [
        "store",
        "register-active",
        "register-standby",
    ]
    first = await wait_for(lambda: active_on(store, ex_id, a))
    await standbys_become(store, ex_id, [b])
    assert [p.hosts for p in await catalog.placements() if p.exchange == exchange] == [(a, b)]

    # Applying the same file again changes nothing: no epoch, no transition, no event; diff agrees.
    before = await settled(store, exchange, b)
    placements = await placements_of(catalog, body)
    actions, report = await apply_fleet(client, catalog, store, placements, prune=True)
    assert (actions, report.done) == ([], [])
    assert (await plan_fleet(client, catalog, store, placements, prune=True))[0] == []
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]
    assert await events(store, exchange) == before

    # kill -9 the preferred host's worker: the standby takes over.
    worker_processes[0].signal(signal.SIGKILL)
    taken = await wait_for(lambda: active_on(store, ex_id, b))
    assert int(str(taken["epoch"])) > int(str(first["epoch"]))
    await wait_closed(client, workflow_id(exchange, a))

    # Restart that worker after its instance ended: it enrols as a standby again, by itself.
    await start_workers(servers, worker_processes, a)
    await standbys_become(store, ex_id, [a])
    assert (await holder(store, ex_id) or {})["epoch"] == taken["epoch"]  # no failback
    (view,) = [v for v in await fleet_status(client, catalog, store) if v.exchange == exchange]
    assert (view.active_host, view.standbys, view.in_fleet) == (b, [a], True)
    assert any(f"preferred {a}" in d for d in view.drift)
    await shutdown_all(client, exchange, b, a)
    await catalog.store_placements([], forget=[exchange])


async def test_graceful_stop_and_start_brings_the_exchange_back(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    (a,) = await start_workers(servers, worker_processes, host_name("fg"))
    await wait_live(client, a.host)
    ex_id = await exchange_id(servers, exchange)
    await apply_fleet(
        client, catalog, store, await placements_of(catalog, table(exchange, a.host)), prune=False
    )
    first = await wait_for(lambda: active_on(store, ex_id, a.host))
    a.signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait) == 0
    assert await holder(store, ex_id) is None  # released on the way out
    await wait_closed(client, workflow_id(exchange, a.host))
    await start_workers(servers, worker_processes, a.host)
    again = await wait_for(lambda: active_on(store, ex_id, a.host))
    assert int(str(again["epoch"])) > int(str(first["epoch"]))
    await shutdown_all(client, exchange, a.host)
    await catalog.store_placements([], forget=[exchange])


async def test_bad_files_are_refused_in_one_line_and_change_nothing(
    servers: Servers, catalog: db.Catalog, exchange: str, tmp_path: Path
) -> None:
    # Every refusal is covered by tests/unit/test_fleet.py; these go through the command line.
    simulated = 'connector = "simulated"\n'
    cases = {
        "exchanges.nasdaq: unknown exchange": table(exchange, "x") + table("nasdaq", "x"),
        f"exchanges.{exchange}.hosts: duplicate host 'x'": table(exchange, "x", "x"),
        f"exchanges.{exchange}.admin_email: unknown admin": (
            f'[exchanges.{exchange}]\nhosts = ["x"]\nadmin_email = "nobody@nowhere"\n{simulated}'
        ),
    }
    before = await catalog.placements()
    paths = [fleet_file(tmp_path, body) for body in cases.values()]
    results = await asyncio.gather(*(cli(servers, "fleet", "apply", p) for p in paths))
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
    both = await placements_of(catalog, table(exchange, a, b) + table(other, a))
    await apply_fleet(client, catalog, store, both, prune=False)
    first = await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: active_on(store, other_id, a))
    await wait_for(lambda: standby_hosts(store, ex_id))

    # Drain refuses as a whole while one exchange has no standby: nothing moves.
    refused = await cli(servers, "drain", a)
    assert refused.returncode == 1 and f"no live standby for {other}" in refused.stderr
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]

    # Diff shows the prune and changes nothing; apply --prune shuts down only what the file dropped.
    only = fleet_file(tmp_path, table(exchange, a, b))
    diff = await cli(servers, "fleet", "diff", only, "--prune")
    assert diff.returncode == 0 and f"{other}: shut down the instance on {a}" in diff.stdout
    assert await active_on(store, other_id, a)
    pruned = await cli(servers, "fleet", "apply", only, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"{other}: shut down on {a}" in pruned.stdout
    assert await holder(store, other_id) is None
    assert (await holder(store, ex_id) or {})["epoch"] == first["epoch"]
    assert other not in [p.exchange for p in await catalog.placements()]

    # One registered by hand shows as "not in the fleet".
    await control.register(
        client, exchange=other, host=b, admin_email=None, heartbeat_interval_s=INTERVAL, start=False
    )
    views = {v.exchange: v for v in await fleet_status(client, catalog, store)}
    assert not views[other].in_fleet and "not in the fleet" in views[other].drift[0]
    assert views[exchange].active_host == a and views[exchange].drift == []

    # Drain a: the exchange is active on b, and a's instance stands by.
    done = await drain_host(client, catalog, store, a, force=False)
    assert [line.split(":")[0] for line in done] == [exchange]
    moved = await wait_for(lambda: active_on(store, ex_id, b))
    assert int(str(moved["epoch"])) > int(str(first["epoch"]))
    await standbys_become(store, ex_id, [a])
    assert await drain_host(client, catalog, store, a, force=False) == []

    await asyncio.gather(shutdown_all(client, exchange, a, b), shutdown_all(client, other, b))
    await catalog.store_placements([], forget=[exchange])


async def test_a_worker_that_outlives_its_lost_instance_enrols_it_again(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """The event path: the instance's run ends as lost while its worker process lives on (paused
    past the pickup window); the worker's watch sees the run end and enrols it as a standby."""
    a, b = host_name("fw-a"), host_name("fw-b")
    procs = await start_workers(servers, worker_processes, a, b)
    await wait_live(client, a, b)
    ex_id = await exchange_id(servers, exchange)
    await apply_fleet(
        client, catalog, store, await placements_of(catalog, table(exchange, a, b)), prune=False
    )
    await wait_for(lambda: active_on(store, ex_id, a))
    await wait_for(lambda: standby_hosts(store, ex_id))
    lost_run = (await client.get_workflow_handle(workflow_id(exchange, a)).describe()).run_id
    procs[0].signal(signal.SIGSTOP)
    try:
        await wait_for(lambda: active_on(store, ex_id, b))
        await wait_closed(client, workflow_id(exchange, a))
    finally:
        procs[0].signal(signal.SIGCONT)
    await standbys_become(store, ex_id, [a])
    described = await client.get_workflow_handle(workflow_id(exchange, a)).describe()
    assert described.run_id != lost_run and described.status == WorkflowExecutionStatus.RUNNING
    await shutdown_all(client, exchange, b, a)
    await catalog.store_placements([], forget=[exchange])


async def test_warm_true_in_the_fleet_file_makes_warm_standbys(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    a, b = host_name("fw-a"), host_name("fw-b")
    await start_workers(servers, worker_processes, a, b)
    await wait_live(client, a, b)
    ex_id = await exchange_id(servers, exchange)
    result = await cli(
        servers, "fleet", "apply", fleet_file(tmp_path, table(exchange, a, b) + "warm = true\n")
    )
    assert result.returncode == 0, result.stderr
    await wait_for(lambda: active_on(store, ex_id, a))

    async def warm_standby() -> StandbyRecord | None:
        records = await store.standbys(ex_id)
        return next((r for r in records if r.host == b and r.warm and r.warm_ready), None)

    await wait_for(warm_standby)  # prepared and warmed on b, not merely stored in the placement
    await shutdown_all(client, exchange, b, a)
    await catalog.store_placements([], forget=[exchange])


async def test_a_changed_failsafe_is_reported_not_restarted_and_applied_once_shut_down(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """`failsafe = true` added to a running exchange: apply stores it and says which instances run
    without it, registers nothing beside them (the door would refuse a mix), and restarts nothing;
    once they are shut down, the next apply registers every instance with the failsafe."""
    a, b = host_name("ffs-a"), host_name("ffs-b")
    await start_workers(servers, worker_processes, a, b)
    await wait_live(client, a, b)
    ex_id = await exchange_id(servers, exchange)
    first = await cli(servers, "fleet", "apply", fleet_file(tmp_path, table(exchange, a)))
    assert first.returncode == 0, first.stderr
    before = await wait_for(lambda: active_on(store, ex_id, a))

    changed = fleet_file(tmp_path, table(exchange, a, b) + "failsafe = true\n")
    result = await cli(servers, "fleet", "apply", changed)
    assert result.returncode == 0, result.stderr
    assert (
        f"{exchange}: failsafe on in the file, off in the instance on {a}: not restarted behind your back"
        in result.stdout
    ), result.stdout
    assert f"perseus shutdown {exchange} --host {a}, then apply again" in result.stdout
    assert "runs as declared" not in result.stdout
    assert not await control_running(client, exchange, b)  # nothing registered beside it
    still = await holder(store, ex_id)
    assert still is not None and (still["hostname"], still["epoch"]) == (a, before["epoch"])  # not restarted
    (stored,) = [p for p in await catalog.placements() if p.exchange == exchange]
    assert stored.failsafe and stored.hosts == (a, b)
    status = json.loads((await cli(servers, "fleet", "status", "--json")).stdout)
    (mine,) = [v for v in status if v["exchange"] == exchange]
    assert (
        f"{a}: failsafe off, the file says on (perseus shutdown {exchange} --host {a}, then fleet apply)"
        in (mine["drift"])
    )
    diff = await cli(servers, "fleet", "diff", changed)
    assert (
        "failsafe on in the file, off in the instance on" in diff.stdout
        and "runs as declared" not in diff.stdout
    )

    await shutdown_all(client, exchange, a)
    await wait_closed(client, workflow_id(exchange, a))
    again = await cli(servers, "fleet", "apply", changed)
    assert again.returncode == 0, again.stderr
    assert "failsafe on in the file" not in again.stdout
    await wait_for(lambda: active_on(store, ex_id, a))
    await standbys_become(store, ex_id, [b])
    members = await control.failsafe_members(client, exchange)
    assert members == {workflow_id(exchange, a), workflow_id(exchange, b)}
    status = json.loads((await cli(servers, "fleet", "status", "--json")).stdout)
    (mine,) = [v for v in status if v["exchange"] == exchange]
    assert not [d for d in mine["drift"] if "failsafe" in d], mine["drift"]
    settled_again = await cli(servers, "fleet", "apply", changed)
    assert "nothing to change: the fleet runs as declared" in settled_again.stdout, settled_again.stdout
    await shutdown_all(client, exchange, b, a)
    await catalog.store_placements([], forget=[exchange])


async def control_running(client: Client, exchange: str, host: str) -> bool:
    try:
        described = await client.get_workflow_handle(workflow_id(exchange, host)).describe()
    except Exception:  # noqa: BLE001 - never registered
        return False
    return described.status == WorkflowExecutionStatus.RUNNING


#: A worker that started while PostgreSQL was down has every placement enrolled this soon after the
#: server answers: the enrolment's longest wait between attempts (5 s), a registration, the
#: simulated connector's walk, and a margin for a busy machine.
ENROLLED_AFTER_OUTAGE_S = 20.0


async def said_waiting(proc: WorkerProcess) -> bool:
    """Whether the worker has logged that it waits for a server (or died trying)."""
    if proc.proc.poll() is not None:
        raise AssertionError(f"worker {proc.host} exited: {proc.log.read_text()[-2000:]}")
    return any("waiting:" in line for line in proc.log.read_text().splitlines())


async def test_workers_started_while_postgresql_is_down_enrol_once_it_answers(
    servers: Servers,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """Both hosts restart during a database outage (the README's topology: each worker also serves
    the shared queue). They serve anyway, say once that they wait, and enrol every placement as
    soon as PostgreSQL answers — the fleet never keeps a placement "not enrolled" behind a running
    worker (it once did until the next restart)."""
    other = await new_exchange(servers)
    a, b = host_name("fpg-a"), host_name("fpg-b")
    await catalog.store_placements(
        await placements_of(catalog, table(exchange, a, b) + table(other, b, a)), forget=[]
    )
    ids = {exchange: await exchange_id(servers, exchange), other: await exchange_id(servers, other)}
    # The workers reach PostgreSQL through a proxy: their outage, not the other tests' server.
    proxy = await StallableProxy(servers.postgres_port).start()
    url = servers.database_url.replace(f":{servers.postgres_port}/", f":{proxy.port}/")
    assert url != servers.database_url
    await proxy.down()
    try:
        procs = [WorkerProcess(servers, h, shared=True, PERSEUS_DATABASE_URL=url) for h in (a, b)]
        worker_processes.extend(procs)
        await asyncio.gather(*(p.ready() for p in procs))  # serving, although PostgreSQL is down
        for proc in procs:  # each says so (however slowly a loaded machine starts it) ...
            await wait_for(functools.partial(said_waiting, proc), timeout=60)
        await asyncio.sleep(4)  # ... and not again over several attempts (0.5 s, 1 s, 2 s apart)
        for proc in procs:
            lines = proc.log.read_text().splitlines()
            waiting = [line for line in lines if "fleet enrolment of host" in line and "waiting:" in line]
            assert len(waiting) == 1 and "PostgreSQL unreachable" in waiting[0], lines
            assert not any("Traceback" in line for line in lines), lines
        assert [await holder(store, i) for i in ids.values()] == [None, None]

        await proxy.up()
        back = time.monotonic()

        async def enrolled() -> dict[str, FleetExchangeView] | None:
            # Whichever host enrols first takes an exchange nobody holds (no failback, as after any
            # restart): every placement runs, one host active and the other its standby.
            views = {v.exchange: v for v in await fleet_status(client, catalog, store)}
            mine = [views.get(exchange), views.get(other)]
            ok = all(
                v is not None
                and v.active_state == "active"
                and [v.active_host, *v.standbys] in ([a, b], [b, a])
                and not [d for d in v.drift if "not enrolled" in d or "no active" in d]
                for v in mine
            )
            return views if ok else None

        await wait_for(enrolled, ENROLLED_AFTER_OUTAGE_S)
        assert time.monotonic() - back < ENROLLED_AFTER_OUTAGE_S
        for proc in procs:
            assert "done after" in proc.log.read_text()  # the wait's end is one line too
    finally:
        await asyncio.gather(shutdown_all(client, exchange, a, b), shutdown_all(client, other, b, a))
        await catalog.store_placements([], forget=[exchange, other])
        await proxy.close()


async def test_a_worker_started_while_temporal_is_down_enrols_once_it_answers(
    servers: Servers,
    client: Client,
    store: RedisStore,
    catalog: db.Catalog,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """The same restart with Temporal down: the worker waits for it (one line, no exit and no
    trace), then polls and enrols its placement."""
    a = host_name("ftp")
    await catalog.store_placements(await placements_of(catalog, table(exchange, a)), forget=[])
    ex_id = await exchange_id(servers, exchange)
    proxy = await StallableProxy(int(servers.temporal_address.rsplit(":", 1)[1])).start()
    await proxy.down()
    try:
        proc = WorkerProcess(servers, a, shared=True, TEMPORAL_ADDRESS=f"127.0.0.1:{proxy.port}")
        worker_processes.append(proc)
        await wait_for(lambda: said_waiting(proc), timeout=60)  # however slowly it starts ...
        await asyncio.sleep(4)  # ... then several attempts (0.5 s, 1 s, 2 s apart), said once
        assert proc.proc.poll() is None, proc.log.read_text()
        lines = proc.log.read_text().splitlines()
        waiting = [line for line in lines if "waiting:" in line]
        assert len(waiting) == 1 and "Temporal unreachable" in waiting[0], lines
        assert not any("Traceback" in line or "worker ready" in line for line in lines), lines

        await proxy.up()
        back = time.monotonic()
        await proc.ready()
        await wait_for(lambda: active_on(store, ex_id, a), ENROLLED_AFTER_OUTAGE_S)
        assert time.monotonic() - back < ENROLLED_AFTER_OUTAGE_S
    finally:
        await shutdown_all(client, exchange, a)
        await catalog.store_placements([], forget=[exchange])
        await proxy.close()


def test_the_fleet_views_need_no_payload_key_as_status_does_and_apply_still_does(
    servers: Servers, exchange: str, tmp_path: Path
) -> None:
    """Run outside the checkout (no data dir, so no dev key) and with no key set: `fleet diff` and
    `fleet status` answer as `status` does; `fleet apply`, which writes to Temporal, is refused."""
    path = fleet_file(tmp_path, table(exchange, "nokey-host"))
    nowhere = str(tmp_path / "nowhere")
    for args in (("status",), ("fleet", "status"), ("fleet", "diff", path)):
        result = perseus(servers, *args, PERSEUS_PAYLOAD_PLAINTEXT="0", PERSEUS_DATA_DIR=nowhere)
        assert result.returncode == 0, (args, result.stderr)
        assert "PERSEUS_PAYLOAD_KEY" not in result.stderr
    assert (
        exchange
        in perseus(
            servers, "fleet", "diff", path, PERSEUS_PAYLOAD_PLAINTEXT="0", PERSEUS_DATA_DIR=nowhere
        ).stdout
    )
    applied = perseus(
        servers, "fleet", "apply", path, PERSEUS_PAYLOAD_PLAINTEXT="0", PERSEUS_DATA_DIR=nowhere
    )
    assert applied.returncode == 2 and applied.stderr.startswith("error: PERSEUS_PAYLOAD_KEY is not set"), (
        applied
    )
    assert applied.stderr.count("\n") == 1
