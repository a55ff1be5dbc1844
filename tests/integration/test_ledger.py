"""The durable network log and the state ledger, through the real read API.

Events are recorded by ``record_event``, the ``record`` activity's own code (stream first, then
PostgreSQL), into a private Redis server, so this test may FLUSHALL it without disturbing anyone
else's keys.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.registry import DURABLE_ATTEMPTS, RegistryActivities
from perseus.config import Settings, load_settings
from perseus.core.lifecycle import State
from perseus.devstack import services
from perseus.errors import ServiceUnavailable
from perseus.models import EventKind, EventRequest, NetworkEvent
from perseus.readmodel.log import MAX_PAGE_BYTES, TIMELINE_POINTS, Transition, seconds_in, timeline
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from tests.conftest import Servers
from tests.integration.conftest_api import bearer, entry_fields, in_process, new_exchanges, xadd

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """A private Redis, the shared PostgreSQL, the API in-process over both, and the registry."""

    store: RedisStore
    catalog: db.Catalog
    registry: RegistryActivities
    http: httpx.AsyncClient


@pytest_asyncio.fixture
async def stack(servers: Servers, tmp_path: Path) -> AsyncIterator[Stack]:
    redis_server = await services.start_redis(tmp_path / "redis", None)
    port = redis_server.port
    url = f"redis://127.0.0.1:{port}/0"
    settings: Settings = load_settings(
        redis_url=url, database_url=servers.database_url, heartbeat_interval=1.0, data_dir=tmp_path / "p"
    )
    redis = make_client(url)
    pool = db.make_pool(servers.database_url)
    await pool.open(wait=True)
    try:
        store, catalog = RedisStore(redis), db.Catalog(pool)
        key = await catalog.create_api_key(f"ledger-{uuid.uuid4().hex[:6]}")
        async with in_process(settings) as http:
            http.headers.update(bearer(key))
            yield Stack(store, catalog, RegistryActivities(store, catalog, notifications=False), http)
    finally:
        await pool.close()
        await redis.aclose()
        redis_server.stop()


def transition(ex_id: int, name: str, when: datetime, src: State, dst: State) -> NetworkEvent:
    return NetworkEvent(
        event=EventKind.STATE_TRANSITION,
        event_id=str(uuid.uuid4()),
        timestamp=when,
        exchange_id=ex_id,
        exchange_name=name,
        hostname="node-a",
        ip="192.0.2.10",
        instance_id=str(uuid.uuid4()),
        epoch=1,
        from_state=src,
        to_state=dst,
    )


def failure(ex_id: int, name: str, when: datetime, text: str) -> NetworkEvent:
    return transition(ex_id, name, when, State.WARMING, State.WARMING).model_copy(
        update={
            "event": EventKind.ERROR,
            "from_state": None,
            "to_state": None,
            "error": text,
            "state": State.WARMING,
        }
    )


async def record(stack: Stack, *events: NetworkEvent) -> None:
    for event in events:
        await stack.registry.record_event(EventRequest(event=event))


async def activity(stack: Stack, name: str, count: int = 50) -> list[dict[str, Any]]:
    """Every entry of the exchange's log, following the cursor page by page."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"exchange": name, "count": count}
        if cursor:
            params["cursor"] = cursor
        reply = await stack.http.get("/api/network/activity", params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        out += body["entries"]
        cursor = body["nextCursor"]
        if not cursor:
            return out


async def last_known(stack: Stack, ex_id: int) -> dict[str, Any]:
    reply = await stack.http.get("/api/network/instances")
    assert reply.status_code == 200, reply.text
    (view,) = [v for v in reply.json()["instances"] if v["exchangeId"] == ex_id]
    assert view["online"] is False
    known: dict[str, Any] = view["lastKnown"]
    return known


async def test_the_log_survives_flushall_exactly_once(servers: Servers, stack: Stack) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="flush")
    t0 = datetime.now(UTC) - timedelta(hours=2)

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    seven = [
        transition(ex_id, name, at(0), State.IDLE, State.STARTING),
        transition(ex_id, name, at(1), State.STARTING, State.WARMING),
        failure(ex_id, name, at(2), "warm-up failed: timeout"),
        transition(ex_id, name, at(2), State.WARMING, State.IDLE),
        transition(ex_id, name, at(3), State.IDLE, State.STARTING),
        transition(ex_id, name, at(4), State.STARTING, State.WARMING),
        transition(ex_id, name, at(5), State.WARMING, State.ACTIVE),
    ]
    await record(stack, *seven)
    await record(stack, seven[2], seven[6])  # retried activities: still one entry each
    before = await activity(stack, name)
    assert [e["eventId"] for e in before] == [e.event_id for e in reversed(seven)]
    known_before = await last_known(stack, ex_id)
    assert known_before["state"] == "active" and known_before["lastError"] == "warm-up failed: timeout"

    assert await stack.store.client.flushall()
    assert await stack.store.events(name) == []
    after = await activity(stack, name)
    assert after == before  # same ids, fields and order: served from PostgreSQL
    assert await activity(stack, name, count=3) == before  # cursor pages through the durable copy
    assert await last_known(stack, ex_id) == known_before

    # New events go to the (empty) stream again; the page joins them with the durable history.
    late = transition(ex_id, name, at(6), State.ACTIVE, State.STOPPING)
    await record(stack, late)
    merged = await activity(stack, name, count=4)
    assert [e["eventId"] for e in merged] == [late.event_id] + [e["eventId"] for e in before]
    assert len(await stack.store.events(name)) == 1

    uptime = (await stack.http.get(f"/api/network/exchanges/{ex_id}/uptime")).json()
    assert uptime["source"] == "ledger" and uptime["state"] == "stopping"
    assert datetime.fromisoformat(uptime["observedSince"].replace("Z", "+00:00")) == t0


async def test_uptime_counts_only_the_observed_time(servers: Servers, stack: Stack) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="obs")
    now = datetime.now(UTC)
    first = now - timedelta(minutes=60)
    ramp = [
        transition(ex_id, name, first, State.IDLE, State.STARTING),
        transition(ex_id, name, now - timedelta(minutes=50), State.STARTING, State.WARMING),
        transition(ex_id, name, now - timedelta(minutes=40), State.WARMING, State.ACTIVE),
    ]
    await record(stack, ramp[0], ramp[2], ramp[1])  # the middle one arrives late: slotted in by time

    reply = await stack.http.get(f"/api/network/exchanges/{ex_id}/uptime")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["source"] == "ledger" and body["state"] == "active"
    day = {w["window"]: w for w in body["windows"]}["24h"]
    assert day["observedS"] == pytest.approx(3600, abs=5)
    assert day["activePct"] == pytest.approx(100 * 40 / 60, abs=0.2)  # not 2.8 %: the rest was unobserved
    assert day["windowActivePct"] == pytest.approx(100 * 40 / (24 * 60), abs=0.05)
    assert day["knownPct"] == pytest.approx(100 / 24, abs=0.05)
    assert datetime.fromisoformat(day["observedSince"].replace("Z", "+00:00")) == first

    reply = await stack.http.get(f"/api/network/exchanges/{ex_id}/timeline", params={"window": "2h"})
    timeline = reply.json()
    assert [i["state"] for i in timeline["intervals"]] == ["unknown", "starting", "warming", "active"]
    assert [round(i["durationS"] / 60) for i in timeline["intervals"]] == [60, 10, 10, 40]
    assert timeline["totalsS"]["starting"] == pytest.approx(600, abs=1)
    assert timeline["truncated"] is False


async def test_timeline_answer_is_capped(servers: Servers, stack: Stack) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="cap")
    intervals = TIMELINE_POINTS * 2
    conn = await db.connect(servers.database_url)
    async with conn:
        # A long flapping history, written straight into the ledger: one minute per state.
        await conn.execute(
            "INSERT INTO exchange_state_intervals"
            " (exchange_id, state, started_at, ended_at, event_id, before_s)"
            " SELECT %s, CASE WHEN n %% 2 = 0 THEN 'active' ELSE 'idle' END,"
            " now() - make_interval(mins => %s - n), now() - make_interval(mins => %s - n - 1),"
            " gen_random_uuid()::text,"
            " jsonb_build_object('active', 60 * ((n + 1) / 2), 'idle', 60 * (n / 2))"
            " FROM generate_series(0, %s - 1) AS n",
            (ex_id, intervals, intervals, intervals),
        )
    reply = await stack.http.get(f"/api/network/exchanges/{ex_id}/timeline", params={"window": "1d"})
    body = reply.json()
    assert body["truncated"] is True and len(body["intervals"]) == TIMELINE_POINTS
    # The totals still cover every interval in the window, not only the ones in the answer.
    assert body["totalsS"]["active"] == pytest.approx(intervals / 2 * 60, abs=2)
    assert body["totalsS"]["idle"] == pytest.approx(intervals / 2 * 60, abs=2)


async def test_activity_page_is_capped_in_bytes(servers: Servers, stack: Stack) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="big")
    now = datetime.now(UTC)
    big = "x" * 4000
    count = 2 * MAX_PAGE_BYTES // len(big)  # two pages' worth of bytes, fewer entries than one count
    for n in range(count):
        fields = entry_fields(ex_id, name, "error", now, error=big, state="warming")
        await xadd(stack.store, name, f"{int(now.timestamp() * 1000)}-{n}", fields)
    reply = await stack.http.get("/api/network/activity", params={"exchange": name, "count": 200})
    first = reply.json()
    assert len(reply.content) <= MAX_PAGE_BYTES + 1024
    assert 0 < len(first["entries"]) < count and first["nextCursor"]
    assert len(await activity(stack, name, count=200)) == count  # nothing skipped, nothing repeated


async def test_old_rows_are_pruned_on_write(servers: Servers) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="old")
    fresh = transition(ex_id, name, datetime.now(UTC), State.STARTING, State.WARMING)
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute(
            "INSERT INTO network_events (event_id, exchange_id, exchange_name, event, occurred_at,"
            " stream_ms, stream_seq, fields) VALUES (%s, %s, %s, 'error', now() - make_interval(days => %s),"
            " 1, 0, '{}')",
            (str(uuid.uuid4()), ex_id, name, db.LOG_RETENTION_DAYS + 5),
        )
        # A process prunes on its first write (then at most hourly): the old row goes, the new one stays.
        assert await db.Catalog(db.OneConnection(conn)).record_event(fresh, "2-0", fresh.fields())
        rows = await (
            await conn.execute("SELECT event_id FROM network_events WHERE exchange_id = %s", (ex_id,))
        ).fetchall()
    assert [r["event_id"] for r in rows] == [fresh.event_id]


async def test_postgres_down_delays_the_event_then_lets_it_through(servers: Servers, stack: Stack) -> None:
    """PostgreSQL unreachable: early attempts fail (Temporal retries them), the last ones return once
    the stream has the event, so the workflow still sends its notification."""

    class Unreachable(db.Catalog):
        async def record_event(self, event: NetworkEvent, stream_id: str, fields: dict[str, str]) -> bool:
            raise ServiceUnavailable("PostgreSQL unreachable: injected")

    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="pgdown")
    registry = RegistryActivities(stack.store, Unreachable(stack.catalog._pool), notifications=False)
    req = EventRequest(event=transition(ex_id, name, datetime.now(UTC), State.IDLE, State.STARTING))
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError, match="PostgreSQL unreachable"):
        await env.run(registry.record_event, req)
    env.info = dataclasses.replace(env.info, attempt=DURABLE_ATTEMPTS)
    stream_id = await env.run(registry.record_event, req)
    assert [i for i, _ in await stack.store.events(name)] == [stream_id]  # once, despite two attempts


async def test_running_sums_match_the_intervals_whatever_the_arrival_order(servers: Servers) -> None:
    """Transitions recorded in a scrambled order (late retries, two instances): the ledger's totals
    per window, read from two running sums, equal the time per state computed from scratch."""
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="sums")
    rng = random.Random(16)
    now = datetime.now(UTC).replace(microsecond=0)
    states = list(State)
    moments = sorted(now - timedelta(minutes=rng.randrange(1, 3000)) for _ in range(40))
    events = [
        transition(ex_id, name, at, states[n % len(states)], states[(n + 1) % len(states)])
        for n, at in enumerate(moments)
    ]
    order = events[:]
    rng.shuffle(order)
    conn = await db.connect(servers.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        for n, event in enumerate(order):
            await catalog.record_event(event, f"{n + 1}-0", event.fields())
        expected = [Transition(e.timestamp, "unknown", e.to_state.value) for e in events if e.to_state]
        for start in (now - timedelta(days=3), now - timedelta(hours=20), now - timedelta(hours=1)):
            view = await catalog.ledger(ex_id, start, now, 1000)
            truth = timeline(expected, start, now)
            for state in states:
                assert view.totals_s.get(state.value, 0.0) == pytest.approx(
                    seconds_in(truth, state.value, start, now), abs=0.01
                ), (start, state)
            assert [i.state for i in view.intervals] == [i.state for i in truth if i.state != "unknown"]
