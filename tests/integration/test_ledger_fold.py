"""A mixed fleet: transitions Livermore v6 services write straight into the streams, folded into the
state ledger (perseus/readmodel/ledger_fold.py) so uptime and the timeline read the ledger whoever wrote them.

Entries are written the way v6 writes them (its nine / eight string fields, in its order, no
``eventId``) into a private Redis server; the ledger is the shared PostgreSQL. The stream path — the
API with the fold off, for an exchange the ledger never saw — is the reference the folded answers
must equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from activities.registry import RegistryActivities
from perseus.api.app import create_app
from perseus.config import Settings, load_settings
from perseus.core.lifecycle import State
from perseus.devstack import services
from perseus.models import EventKind, EventRequest, Exchange, NetworkEvent
from perseus.readmodel.ledger_fold import LedgerFold
from perseus.readmodel.log import Transition, seconds_in, timeline
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from tests.conftest import Servers
from tests.integration.conftest_api import bearer, new_exchanges, xadd
from tests.integration.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: A v6 service's lifecycle, over and over: the transitions of start and stop (DESIGN §2.2).
CYCLE = [
    (State.IDLE, State.STARTING),
    (State.STARTING, State.WARMING),
    (State.WARMING, State.ACTIVE),
    (State.ACTIVE, State.STOPPING),
    (State.STOPPING, State.STOPPED),
    (State.STOPPED, State.IDLE),
]


@dataclass
class Mixed:
    """A private Redis, the shared PostgreSQL and an API key; apps are made per test."""

    settings: Settings
    store: RedisStore
    database_url: str
    key: str


@pytest_asyncio.fixture
async def mixed(servers: Servers, tmp_path: Path) -> AsyncIterator[Mixed]:
    redis_server = await services.start_redis(tmp_path / "redis", None)
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = load_settings(
        redis_url=url, database_url=servers.database_url, heartbeat_interval=1.0, data_dir=tmp_path / "p"
    )
    redis = make_client(url)
    conn = await db.connect(servers.database_url)
    try:
        async with conn:
            key = await db.Catalog(db.OneConnection(conn)).create_api_key(f"fold-{uuid.uuid4().hex[:6]}")
        yield Mixed(settings, RedisStore(redis), servers.database_url, key)
    finally:
        await redis.aclose()
        redis_server.stop()


@contextlib.asynccontextmanager
async def api(m: Mixed, *, fold: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """One API process (its lifespan, its pools, its stream reader), driven in-process."""
    app = create_app(m.settings, fold=fold)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://perseus", headers=bearer(m.key)
        ) as http,
    ):
        yield http


@contextlib.asynccontextmanager
async def catalog_of_its_own(database_url: str) -> AsyncIterator[db.Catalog]:
    """A pool of its own, as another process would have."""
    pool = db.make_pool(database_url)
    await pool.open(wait=True)
    try:
        yield db.Catalog(pool)
    finally:
        await pool.close()


def v6_time(when: datetime) -> str:
    """JavaScript's ``toISOString()``: milliseconds and a ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def v6_transition(ex_id: int, name: str, when: datetime, src: State, dst: State) -> dict[str, str]:
    """A v6 ``state_transition`` entry: its nine fields in its order (livermore-v6.md §2)."""
    return {
        "event": "state_transition",
        "timestamp": v6_time(when),
        "fromState": src.value,
        "toState": dst.value,
        "exchangeId": str(ex_id),
        "exchangeName": name,
        "hostname": "v6-host",
        "ip": "",
        "adminEmail": "",
    }


def v6_error(ex_id: int, name: str, when: datetime, state: State) -> dict[str, str]:
    return {
        "event": "error",
        "timestamp": v6_time(when),
        "error": "websocket closed",
        "exchangeId": str(ex_id),
        "exchangeName": name,
        "hostname": "v6-host",
        "ip": "",
        "state": state.value,
    }


async def write_v6_history(
    store: RedisStore, ex_id: int, name: str, start: datetime, step: timedelta, count: int
) -> list[Transition]:
    """``count`` transitions (and an error every sixth), oldest first, with the stream IDs a v6
    service's clock gives them; returns the transitions as the stream path reads them."""
    out: list[Transition] = []
    for chunk in range(0, count, 1000):
        async with store.client.pipeline(transaction=False) as pipe:
            for n in range(chunk, min(count, chunk + 1000)):
                when = start + n * step
                src, dst = CYCLE[n % len(CYCLE)]
                ms = int(when.timestamp() * 1000)
                pipe.xadd("logs:network:" + name, v6_transition(ex_id, name, when, src, dst), id=f"{ms}-1")  # type: ignore[arg-type]
                if n % 6 == 2:
                    pipe.xadd("logs:network:" + name, v6_error(ex_id, name, when, dst), id=f"{ms}-2")  # type: ignore[arg-type]
                out.append(
                    Transition(
                        when.replace(microsecond=when.microsecond // 1000 * 1000), src.value, dst.value
                    )
                )
            await pipe.execute()
    return out


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    reply = await http.get(path, params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def ledger_rows(database_url: str, ex_id: int) -> tuple[int, int, tuple[int, int] | None]:
    """(durable log rows, ledger intervals, fold mark) of one exchange."""
    conn = await db.connect(database_url)
    async with conn:
        events = await (
            await conn.execute("SELECT count(*) AS n FROM network_events WHERE exchange_id = %s", (ex_id,))
        ).fetchone()
        intervals = await (
            await conn.execute(
                "SELECT count(*) AS n FROM exchange_state_intervals WHERE exchange_id = %s", (ex_id,)
            )
        ).fetchone()
        assert events is not None and intervals is not None
        mark = await db.Catalog(db.OneConnection(conn)).fold_mark(ex_id)
    return int(events["n"]), int(intervals["n"]), mark


def folded_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("perseus_ledger_folded_total", {"outcome": outcome}) or 0.0


def windows(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["window"]: w for w in body["windows"]}


def assert_same_uptime(folded: dict[str, Any], stream: dict[str, Any]) -> None:
    """The ledger's answer equals the stream path's. The two reads are apart in time: the time
    observed grows with the clock between them (each answer's ``serverTime`` says by how much); the
    history does not end active, so the time active does not."""
    assert folded["source"] == "ledger" and stream["source"] == "stream"
    assert folded["observedSince"] == stream["observedSince"]
    apart = (
        datetime.fromisoformat(folded["serverTime"].replace("Z", "+00:00"))
        - datetime.fromisoformat(stream["serverTime"].replace("Z", "+00:00"))
    ).total_seconds()
    f, s = windows(folded), windows(stream)
    for name in ("24h", "7d", "30d"):
        assert f[name]["activeS"] == pytest.approx(s[name]["activeS"], abs=0.01), name
        assert f[name]["observedS"] - apart == pytest.approx(s[name]["observedS"], abs=0.01), name
        assert f[name]["activePct"] == pytest.approx(s[name]["activePct"], abs=0.05), name
        assert f[name]["observedSince"] == s[name]["observedSince"], name


def assert_same_timeline(folded: dict[str, Any], stream: dict[str, Any]) -> None:
    assert folded["source"] == "ledger" and stream["source"] == "stream"
    fi, si = folded["intervals"], stream["intervals"]
    assert [(i["state"], i["start"]) for i in fi[1:]] == [(i["state"], i["start"]) for i in si[1:]]
    # Every interval but the first (it starts at the window's start, a moment apart) and the last
    # (it ends now) is the same to the millisecond.
    assert [i["durationS"] for i in fi[1:-1]] == [i["durationS"] for i in si[1:-1]]
    for state in ("starting", "warming", "active", "stopping", "stopped"):
        assert folded["totalsS"].get(state, 0) == pytest.approx(stream["totalsS"].get(state, 0), abs=0.01)


async def test_v6_entries_are_folded_and_read_as_the_stream_path_reads_them(
    servers: Servers, mixed: Mixed, caplog: pytest.LogCaptureFixture
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="v6")
    now = datetime.now(UTC)
    start = now - timedelta(hours=20)
    await write_v6_history(mixed.store, ex_id, name, start, timedelta(minutes=20), 48)
    # One transition out of order (a v6 host whose clock is behind): its timestamp is older than the
    # entry before it in the stream; both paths place it by its timestamp.
    late_at = start + timedelta(minutes=20 * 30 + 10)
    await xadd(mixed.store, name, "*", v6_transition(ex_id, name, late_at, State.IDLE, State.STARTING))
    # Stored in the durable log all the same: a NUL character (jsonb refuses it) and an eventId too
    # long to be its key.
    await xadd(
        mixed.store,
        name,
        "*",
        {
            **v6_transition(ex_id, name, late_at + timedelta(minutes=1), State.STARTING, State.IDLE),
            "adminEmail": "nul\x00byte",
            "eventId": "x" * 500,
        },
    )
    # Entries no reader can use: skipped with one line each, nothing else changes.
    await xadd(mixed.store, name, "*", {"timestamp": v6_time(now), "exchangeId": str(ex_id)})
    bad = v6_transition(ex_id, name, now, State.IDLE, State.STARTING)
    await xadd(mixed.store, name, "*", {k: v for k, v in bad.items() if k != "toState"})
    await xadd(mixed.store, name, "*", {**bad, "toState": "connected"})

    async with api(mixed, fold=False) as slow:
        stream_uptime = await get(slow, f"/api/network/exchanges/{ex_id}/uptime")
        stream_timeline = await get(slow, f"/api/network/exchanges/{ex_id}/timeline", window="24h")
    assert await ledger_rows(mixed.database_url, ex_id) == (0, 0, None)  # the fold was off

    caplog.set_level(logging.INFO, logger="perseus.readmodel.ledger_fold")
    counted = {k: folded_count(k) for k in ("copied", "transitions", "skipped")}
    async with api(mixed) as http:
        folded_uptime = await get(http, f"/api/network/exchanges/{ex_id}/uptime")
        folded_timeline = await get(http, f"/api/network/exchanges/{ex_id}/timeline", window="24h")
        again = await get(http, f"/api/network/exchanges/{ex_id}/uptime")
    assert_same_uptime(folded_uptime, stream_uptime)
    assert_same_timeline(folded_timeline, stream_timeline)
    assert windows(again)["30d"]["activeS"] == windows(folded_uptime)["30d"]["activeS"]  # nothing twice

    entries = len(await mixed.store.events(name))
    events, intervals, mark = await ledger_rows(mixed.database_url, ex_id)
    assert (events, intervals) == (entries - 3, 48 + 2)  # every readable entry once; transitions once
    newest = (await mixed.store.events(name, count=1))[0][0]
    assert mark is not None and f"{mark[0]}-{mark[1]}" == newest
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3, skipped
    assert any("no event field" in s for s in skipped)
    assert any("without toState" in s for s in skipped)
    assert any("unknown toState 'connected'" in s for s in skipped)
    assert {k: folded_count(k) - v for k, v in counted.items()} == {
        "copied": entries - 3,
        "transitions": 50,
        "skipped": 3,
    }


async def test_a_mixed_exchange_counts_perseus_and_v6_transitions_once_each(
    servers: Servers, mixed: Mixed
) -> None:
    """Perseus' own entries are in the ledger already (record_event); the fold adds only v6's. One
    Perseus entry reached the stream but not PostgreSQL (its write was given up): the fold adds it,
    and a late retry of its write then changes nothing."""
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="mix")
    async with catalog_of_its_own(mixed.database_url) as catalog:
        registry = RegistryActivities(mixed.store, catalog, notifications=False)
        now = datetime.now(UTC).replace(microsecond=0)
        t0 = now - timedelta(hours=3)

        def perseus(minutes: int, src: State, dst: State) -> NetworkEvent:
            return NetworkEvent(
                event=EventKind.STATE_TRANSITION,
                event_id=str(uuid.uuid4()),
                timestamp=t0 + timedelta(minutes=minutes),
                exchange_id=ex_id,
                exchange_name=name,
                hostname="perseus-host",
                ip="192.0.2.10",
                instance_id=str(uuid.uuid4()),
                epoch=1,
                from_state=src,
                to_state=dst,
            )

        async def v6(minutes: int, src: State, dst: State) -> None:
            await xadd(
                mixed.store, name, "*", v6_transition(ex_id, name, t0 + timedelta(minutes=minutes), src, dst)
            )

        # v6 ran the exchange first, then Perseus took over, then it went back to a v6 host.
        await v6(0, State.IDLE, State.STARTING)
        await v6(5, State.STARTING, State.WARMING)
        await v6(10, State.WARMING, State.ACTIVE)
        await v6(40, State.ACTIVE, State.STOPPING)
        await v6(41, State.STOPPING, State.STOPPED)
        for event in (
            perseus(50, State.IDLE, State.STARTING),
            perseus(51, State.STARTING, State.WARMING),
            perseus(52, State.WARMING, State.ACTIVE),
        ):
            await registry.record_event(EventRequest(event=event))
        lost = perseus(100, State.ACTIVE, State.STOPPING)
        await mixed.store.append_event(name, lost.event_id, "0-0", lost.fields())  # the stream only
        await registry.record_event(EventRequest(event=perseus(101, State.STOPPING, State.STOPPED)))
        await v6(110, State.IDLE, State.STARTING)
        await v6(111, State.STARTING, State.IDLE)

        fold = LedgerFold(mixed.store, catalog)
        async with asyncio.timeout(60):
            assert await fold.catch_up(Exchange(id=ex_id, name=name, display_name=name, is_active=True))
        assert not await catalog.record_event(lost, "1-0", lost.fields())  # the retry: already there
        view = await catalog.ledger(ex_id, t0 - timedelta(minutes=1), now, 100)
    states = [(i.state, round((i.start - t0).total_seconds() / 60)) for i in view.intervals]
    assert states == [
        ("starting", 0),
        ("warming", 5),
        ("active", 10),
        ("stopping", 40),
        ("stopped", 41),
        ("starting", 50),
        ("warming", 51),
        ("active", 52),
        ("stopping", 100),
        ("stopped", 101),
        ("starting", 110),
        ("idle", 111),
    ]
    assert view.totals_s["active"] == pytest.approx((30 + 48) * 60, abs=0.01)
    async with api(mixed) as http:
        body = await get(http, f"/api/network/exchanges/{ex_id}/uptime")
    assert body["source"] == "ledger"
    assert windows(body)["24h"]["activeS"] == pytest.approx((30 + 48) * 60, abs=0.01)


async def test_two_api_processes_fold_concurrently_without_counting_twice(
    servers: Servers, mixed: Mixed
) -> None:
    """Two API processes (each its own pools and stream reader) start on the same streams while a v6
    service keeps writing; then two more folders race over a second history in small batches."""
    (ex_a, name_a), (ex_b, name_b) = await new_exchanges(servers.database_url, 2, prefix="two")
    now = datetime.now(UTC)
    start = now - timedelta(hours=10)
    history = await write_v6_history(mixed.store, ex_a, name_a, start, timedelta(seconds=10), 2400)
    async with api(mixed) as first, api(mixed) as second:
        # More entries while both readers run: folded as they arrive, by whichever process is first.
        more_at = start + timedelta(seconds=10 * 2400)
        for n in range(12):
            src, dst = CYCLE[(2400 + n) % len(CYCLE)]
            when = more_at + timedelta(seconds=n)
            await xadd(mixed.store, name_a, "*", v6_transition(ex_a, name_a, when, src, dst))
            history.append(
                Transition(when.replace(microsecond=when.microsecond // 1000 * 1000), src.value, dst.value)
            )
        newest = (await mixed.store.events(name_a, count=1))[0][0]

        async def caught_up() -> bool:
            mark = (await ledger_rows(mixed.database_url, ex_a))[2]
            return mark is not None and f"{mark[0]}-{mark[1]}" == newest

        await wait_for(caught_up, timeout=180)
        one = await get(first, f"/api/network/exchanges/{ex_a}/uptime")
        two = await get(second, f"/api/network/exchanges/{ex_a}/uptime")
    entries = len(await mixed.store.events(name_a))
    assert (await ledger_rows(mixed.database_url, ex_a))[:2] == (entries, len(history))
    truth = timeline(history, now - timedelta(days=1), datetime.now(UTC))
    for body in (one, two):
        assert body["source"] == "ledger"
        assert windows(body)["24h"]["activeS"] == pytest.approx(
            seconds_in(truth, "active", now - timedelta(days=1), now), abs=0.01
        )

    # Two bare folders, batches of 50, racing over the same 1,200 entries from the start.
    second_history = await write_v6_history(mixed.store, ex_b, name_b, start, timedelta(seconds=30), 1000)
    exchange = Exchange(id=ex_b, name=name_b, display_name=name_b, is_active=True)
    async with catalog_of_its_own(mixed.database_url) as c1, catalog_of_its_own(mixed.database_url) as c2:
        async with asyncio.timeout(120):
            done = await asyncio.gather(
                LedgerFold(mixed.store, c1, batch=50).catch_up(exchange),
                LedgerFold(mixed.store, c2, batch=50).catch_up(exchange),
            )
        assert all(done)
        view = await c1.ledger(ex_b, start - timedelta(minutes=1), datetime.now(UTC), 2000)
    assert (await ledger_rows(mixed.database_url, ex_b))[:2] == (
        len(await mixed.store.events(name_b)),
        len(second_history),
    )
    assert [i.state for i in view.intervals] == [t.to_state for t in second_history]


async def test_a_restarted_fold_resumes_where_it_stopped(servers: Servers, mixed: Mixed) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="resume")
    start = datetime.now(UTC) - timedelta(hours=5)
    history = await write_v6_history(mixed.store, ex_id, name, start, timedelta(seconds=10), 1500)
    exchange = Exchange(id=ex_id, name=name, display_name=name, is_active=True)
    async with catalog_of_its_own(mixed.database_url) as catalog:
        # The first process folds two batches of 400 and stops (its budget; as if it was stopped).
        assert not await LedgerFold(mixed.store, catalog, batch=400).catch_up(exchange, budget=800)
    events, intervals, mark = await ledger_rows(mixed.database_url, ex_id)
    stream = await mixed.store.entries_after(name, "0-0", count=800)
    assert mark is not None and f"{mark[0]}-{mark[1]}" == stream[-1][0]
    assert events == 800 and 0 < intervals < len(history)
    async with catalog_of_its_own(mixed.database_url) as catalog:
        assert await LedgerFold(mixed.store, catalog, batch=400).catch_up(exchange)  # the restarted one
        view = await catalog.ledger(ex_id, start - timedelta(minutes=1), datetime.now(UTC), 2000)
    events, intervals, mark = await ledger_rows(mixed.database_url, ex_id)
    assert (events, intervals) == (len(await mixed.store.events(name)), len(history))
    assert [(i.state, i.start) for i in view.intervals] == [(t.to_state, t.at) for t in history]


async def test_a_reader_that_starts_on_20000_entries_catches_up(servers: Servers, mixed: Mixed) -> None:
    """The API starts on a 20,000-entry v6 history: a read answers from the stream (and says so)
    until the reader's catch-up has folded it, then from the ledger, with the stream path's figures."""
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="big")
    now = datetime.now(UTC)
    start = now - timedelta(hours=20)
    # 17,143 transitions and 2,857 errors: 20,000 entries over the last 20 hours.
    await write_v6_history(mixed.store, ex_id, name, start, timedelta(seconds=4.2), 17_143)
    assert len(await mixed.store.events(name)) == 20_000
    async with api(mixed, fold=False) as slow:
        stream_uptime = await get(slow, f"/api/network/exchanges/{ex_id}/uptime")
    async with api(mixed) as http:

        async def from_the_ledger() -> dict[str, Any] | None:
            body = await get(http, f"/api/network/exchanges/{ex_id}/uptime")
            assert body["source"] in ("ledger", "stream")
            return body if body["source"] == "ledger" else None

        folded = await wait_for(from_the_ledger, timeout=240)
    assert_same_uptime(folded, stream_uptime)
    events, intervals, _ = await ledger_rows(mixed.database_url, ex_id)
    assert (events, intervals) == (20_000, 17_143)
