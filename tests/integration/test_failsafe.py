"""The failsafe (issue 29; docs/design.md, "Failsafe: holding through a Redis outage") with real
worker processes per host, each reaching Redis through a proxy of its own so that Redis can be cut
from every host or from one: the holder keeps its connector through an outage for all, stops by its
deadline when only it lost Redis, and without the failsafe nothing changes. "Never two" is judged
on the connector journal by the chaos suite's checker."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.errors import ConfigError, PerseusError
from perseus.keys import ROSTER_MEMBERS, roster_workflow_id
from perseus.models import RosterAnswer
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.chaos.invariants import acting_intervals, check, load_journal
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.conftest_api import bearer, in_process
from tests.integration.helpers import active_on, events, holder, wait_for
from tests.integration.proxy import StallableProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 1.0
#: The outage: a dozen intervals, six times the renew deadline.
OUTAGE_S = 12 * INTERVAL


class Fleet:
    """Worker processes whose Redis runs through a proxy each (or directly), writing one journal."""

    def __init__(self, servers: Servers, procs: list[WorkerProcess], journal: Path) -> None:
        self.servers, self.procs, self.journal = servers, procs, journal
        self.proxies: dict[str, StallableProxy] = {}

    async def worker(self, host: str, *, proxied: bool) -> None:
        env = {"PERSEUS_CONNECTOR_JOURNAL": str(self.journal)}
        if proxied:
            proxy = await StallableProxy(self.servers.redis_port).start()
            self.proxies[host] = proxy
            port = self.servers.redis_port
            env["PERSEUS_REDIS_URL"] = self.servers.redis_url.replace(f":{port}/", f":{proxy.port}/")
        proc = WorkerProcess(self.servers, host, extra_env=env)
        self.procs.append(proc)
        await proc.ready()

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.close()


@pytest.fixture
async def fleet(servers: Servers, worker_processes: list[WorkerProcess], tmp_path: Path):
    made = Fleet(servers, worker_processes, tmp_path / "journal.jsonl")
    try:
        yield made
    finally:
        await made.close()


def hosts(n: int, prefix: str) -> list[str]:
    tag = uuid.uuid4().hex[:5]
    return [f"{prefix}{i}-{tag}" for i in range(n)]


async def register(
    client: Client, exchange: str, host: str, *, failsafe: bool, standby: bool = False
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=not standby,
        standby=standby,
        failsafe=failsafe,
    )


async def setup(
    client: Client,
    store: RedisStore,
    servers: Servers,
    exchange: str,
    a: str,
    standbys: list[str],
    *,
    failsafe: bool,
) -> int:
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, a, failsafe=failsafe)
    for b in standbys:
        await register(client, exchange, b, failsafe=failsafe, standby=True)
    await wait_for(lambda: active_on(store, ex_id, a))

    async def visible() -> bool:
        return len(await store.standbys(ex_id)) == len(standbys)

    await wait_for(visible)
    return ex_id


def judged(fleet: Fleet, exchange: str) -> dict[str, list[tuple[float, float, str]]]:
    """The acting intervals by connector, after the checker found no two acting at once."""
    journal = load_journal(fleet.journal)
    now = time.monotonic()
    report = check(journal, [], now)
    overlaps = [v for v in report.violations if "acting" in v or "two" in v or "overlap" in v]
    assert overlaps == [], report.violations
    return acting_intervals(journal, now)


async def shutdown(client: Client, exchange: str, *hosts: str) -> None:
    for h in hosts:
        with contextlib.suppress(PerseusError):
            await control.command(client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN)


async def api_key(servers: Servers) -> str:
    conn = await db.connect(servers.database_url)
    async with conn:
        return await db.Catalog(db.OneConnection(conn)).create_api_key(f"fs-read-{uuid.uuid4().hex[:6]}")


async def test_failsafe_holds_the_connector_through_a_redis_outage_for_every_host(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    settings: Settings,
    exchange: str,
    fleet: Fleet,
) -> None:
    """(a) Redis unreachable from every host for a dozen intervals: the holder's connector keeps
    acting past its renew deadline on its standbys' promises, no standby acts, and when Redis
    answers again the same host holds the same epoch (its key re-established), no flapping."""
    a, b, c = hosts(3, "fsall")
    for h in (a, b, c):
        await fleet.worker(h, proxied=True)
    ex_id = await setup(client, store, servers, exchange, a, [b], failsafe=True)
    registered = await asyncio.to_thread(
        perseus,
        servers,
        "register",
        exchange,
        "--host",
        c,
        "--standby",
        "--failsafe",
        "--heartbeat-interval",
        str(INTERVAL),
    )
    assert registered.returncode == 0, registered.stderr
    roster = await client.get_workflow_handle(roster_workflow_id(exchange)).query(
        ROSTER_MEMBERS, result_type=RosterAnswer
    )
    assert len(roster.members) == 3

    async def visible() -> bool:
        return len(await store.standbys(ex_id)) == 2

    await wait_for(visible)
    # Every instance of an exchange has the failsafe, or none: one without it is refused at the door.
    (late,) = hosts(1, "fsnot")
    with pytest.raises(ConfigError, match="has its failsafe on"):
        await register(client, exchange, late, failsafe=False, standby=True)
    before = await holder(store, ex_id)
    assert before is not None
    await asyncio.sleep(2 * INTERVAL)
    for proxy in fleet.proxies.values():
        await proxy.down()
    cut = time.monotonic()
    await asyncio.sleep(OUTAGE_S / 2)
    # The views read it from Temporal (the holder's lease), since Redis cannot carry it.
    view = await control.failsafe_view(client, exchange)
    assert view is not None and (view.holding, view.promised, view.standbys, view.enrolled) == (True, 2, 2, 3)
    shown = await asyncio.to_thread(perseus, servers, "status", exchange)
    assert "failsafe: holding through a Redis outage, promises from 2 of 2 standbys" in shown.stdout, shown
    # So does the network page's route, which reads Temporal alone (Redis is what is down).
    api_settings = settings.model_copy(update={"payload_plaintext": True})
    async with in_process(api_settings, temporal_address=servers.temporal_address) as http:
        board = (await http.get("/api/network/failsafe", headers=bearer(await api_key(servers)))).json()
    (line,) = [e for e in board["exchanges"] if e["exchangeName"] == exchange]
    assert line["line"] == "failsafe: holding through a Redis outage, promises from 2 of 2 standbys"
    assert line["failsafe"]["holding"] and line["failsafe"]["horizonS"] > 0
    await asyncio.sleep(OUTAGE_S / 2)
    for proxy in fleet.proxies.values():
        await proxy.up()
    back = time.monotonic()
    after = await wait_for(lambda: active_on(store, ex_id, a), timeout=10 * INTERVAL)
    print(f"Redis back: {a} active again at epoch {after['epoch']} in {time.monotonic() - back:.2f}s")
    assert after["epoch"] == before["epoch"]

    async def settled() -> bool:
        found = await control.failsafe_view(client, exchange)
        return found is not None and not found.holding

    await wait_for(settled, timeout=5 * INTERVAL)  # the holder's lease said so at once
    await asyncio.sleep(5 * INTERVAL)  # every promise has run out: nobody moves
    still = await holder(store, ex_id)
    assert still is not None and (still["hostname"], still["epoch"]) == (a, before["epoch"])
    kinds = [(e["event"], e.get("detail")) for e in await events(store, exchange) if "failsafe" in e["event"]]
    assert kinds == [
        ("failsafe_holding", "holding through a Redis outage, promises from 2 of 2 standbys"),
        ("failsafe_ended", "no longer holding on promises: Redis answers again"),
    ]
    acting = judged(fleet, exchange)
    mine = [(s, e) for s, e, who in acting.get(exchange, []) if who.startswith(f"instance-{exchange}-{a}")]
    others = [who for _, _, who in acting.get(exchange, []) if not who.startswith(f"instance-{exchange}-{a}")]
    assert others == []  # no standby acted
    # One stretch of acting covers the whole outage: the connector never stopped.
    assert any(s < cut and e > back for s, e in mine), (mine, cut, back)
    await shutdown(client, exchange, a, b, c)


@pytest.mark.parametrize("failsafe", [True, False], ids=["failsafe", "without"])
async def test_failsafe_holder_alone_without_redis_gives_way_to_a_standby_that_has_it(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    fleet: Fleet,
    failsafe: bool,
) -> None:
    """(b) Redis unreachable from the holder only: the standby still reaches Redis and refuses to
    promise, so the holder stops by its renew deadline and the standby takes over — never two; as
    it does without the failsafe (the same run without it, for the figure beside it)."""
    a, b = hosts(2, "fsone")
    await fleet.worker(a, proxied=True)
    await fleet.worker(b, proxied=False)
    ex_id = await setup(client, store, servers, exchange, a, [b], failsafe=failsafe)
    await asyncio.sleep(2 * INTERVAL)
    await fleet.proxies[a].down()
    cut = time.monotonic()
    doc = await wait_for(lambda: active_on(store, ex_id, b), timeout=20 * INTERVAL)
    took = time.monotonic() - cut
    print(f"Redis lost to the holder only (failsafe {failsafe}) → standby active in {took:.2f}s")
    assert doc["hostname"] == b
    acting = judged(fleet, exchange)
    held = [e for _, e, who in acting.get(exchange, []) if who.startswith(f"instance-{exchange}-{a}")]
    assert held and max(held) <= cut + 2.2 * INTERVAL, (held, cut)  # stopped by its deadline
    await fleet.proxies[a].up()
    await asyncio.sleep(2 * INTERVAL)  # a holding event would be written now
    assert not [e for e in await events(store, exchange) if e["event"] == "failsafe_holding"]
    await shutdown(client, exchange, b, a)


async def test_without_the_failsafe_a_redis_outage_stops_the_holder_at_its_deadline(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, fleet: Fleet
) -> None:
    """(c) Failsafe off: today's behaviour — the holder's connector stops at its renew deadline."""
    a, b = hosts(2, "fsoff")
    for h in (a, b):
        await fleet.worker(h, proxied=True)
    await setup(client, store, servers, exchange, a, [b], failsafe=False)
    await asyncio.sleep(2 * INTERVAL)
    for proxy in fleet.proxies.values():
        await proxy.down()
    cut = time.monotonic()
    await asyncio.sleep(4 * INTERVAL)
    acting = judged(fleet, exchange)
    held = [e for _, e, who in acting.get(exchange, []) if who.startswith(f"instance-{exchange}-{a}")]
    assert held and max(held) <= cut + 2.2 * INTERVAL, (held, cut)
    with pytest.raises(Exception):  # noqa: B017, PT011 - no roster was ever started
        await client.get_workflow_handle(roster_workflow_id(exchange)).describe()
    for proxy in fleet.proxies.values():
        await proxy.up()
    await shutdown(client, exchange, a, b)


async def test_failsafe_holder_stops_once_its_standbys_reach_redis_again_and_one_takes_over(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, fleet: Fleet
) -> None:
    """Redis back for the standby before the holder: from its return the standby refuses, so the
    holder's horizon ends within a promise's count of the last round it granted; the standby then
    claims once its own bound has run out — never two (the journal's judge)."""
    a, b = hosts(2, "fsback")
    for h in (a, b):
        await fleet.worker(h, proxied=True)
    ex_id = await setup(client, store, servers, exchange, a, [b], failsafe=True)
    await asyncio.sleep(2 * INTERVAL)
    for proxy in fleet.proxies.values():
        await proxy.down()
    await asyncio.sleep(5 * INTERVAL)  # past the renew deadline: held on promises
    await fleet.proxies[b].up()
    returned = time.monotonic()
    doc = await wait_for(lambda: active_on(store, ex_id, b), timeout=30 * INTERVAL)
    print(f"standby's Redis back → standby active in {time.monotonic() - returned:.2f}s")
    assert doc["hostname"] == b
    acting = judged(fleet, exchange)
    held = [e for _, e, who in acting.get(exchange, []) if who.startswith(f"instance-{exchange}-{a}")]
    # The holder acted past its deadline (the outage began 5 intervals before) and stopped within a
    # promise's count (2.84 intervals) of the standby's return, plus a round's ask.
    assert held and returned < max(held) <= returned + 3.5 * INTERVAL, (held, returned)
    took = [s for s, _, who in acting.get(exchange, []) if who.startswith(f"instance-{exchange}-{b}")]
    print(f"holder stopped {max(held) - returned:.2f}s after; no connector for {min(took) - max(held):.2f}s")
    await fleet.proxies[a].up()
    await shutdown(client, exchange, b, a)


async def test_the_exchange_view_shows_the_failsafe_when_asked_and_leaving_empties_the_roster(
    servers: Servers, shared_worker: str, client: Client, settings: Settings, exchange: str
) -> None:
    """The API's exchange view reads the failsafe from Temporal only when asked (the read API needs
    no Temporal otherwise); an instance's shutdown takes it out of the roster."""
    ex_id = await exchange_id(servers, exchange)
    await register(client, exchange, shared_worker, failsafe=True)
    conn = await db.connect(servers.database_url)
    async with conn:
        key = await db.Catalog(db.OneConnection(conn)).create_api_key(f"fs-read-{uuid.uuid4().hex[:6]}")
    api_settings = settings.model_copy(update={"payload_plaintext": True})
    async with in_process(api_settings, temporal_address=servers.temporal_address) as http:
        route = f"/api/network/exchanges/{ex_id}/status"
        plain = (await http.get(route, headers=bearer(key))).json()
        assert plain["failsafe"] is None
        asked = (await http.get(route, params={"failsafe": "true"}, headers=bearer(key))).json()
        assert asked["failsafe"] == {
            "enrolled": 1,
            "holding": False,
            "promised": 0,
            "standbys": 0,
            "horizonS": None,
        }

        # The page's lines: read from Temporal alone, listing only the exchanges with the failsafe on.
        async def line() -> dict[str, Any] | None:
            board = (await http.get("/api/network/failsafe", headers=bearer(key))).json()
            assert board["answered"] is True
            return next((e for e in board["exchanges"] if e["exchangeName"] == exchange), None)

        shown = await wait_for(line)  # the list of rosters is Temporal's visibility: a moment behind
        assert shown is not None and shown["line"] == "failsafe: on (1 in the roster)"
        assert not shown["failsafe"]["holding"]
        await shutdown(client, exchange, shared_worker)

        async def gone() -> bool:
            return await line() is None

        await wait_for(gone)  # an empty roster is no failsafe line
    roster = await client.get_workflow_handle(roster_workflow_id(exchange)).query(
        ROSTER_MEMBERS, result_type=RosterAnswer
    )
    assert roster.members == []
