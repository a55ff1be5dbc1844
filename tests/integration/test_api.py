"""The read API against real Redis and PostgreSQL, in-process (ASGI) and over a real socket (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from perseus.config import Settings
from perseus.keys import iso, retention_min_id, stream_key
from perseus.models import PauseRecord
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers
from tests.integration.conftest_api import (
    bearer,
    entry_fields,
    in_process,
    new_exchanges,
    over_socket,
    put_status,
    status_record,
    xadd,
)
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def api_key(servers: Servers) -> str:
    conn = await db.connect(servers.database_url)
    async with conn:
        return await db.Catalog(db.OneConnection(conn)).create_api_key(f"test-{uuid.uuid4().hex[:6]}")


@pytest_asyncio.fixture(scope="module", params=["asgi", "socket"])
async def http(
    request: pytest.FixtureRequest, settings: Settings, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The same app two ways; requests carry a valid key unless a test overrides the header."""
    opened = in_process(settings) if request.param == "asgi" else over_socket(settings)
    async with opened as client:
        client.headers.update(bearer(api_key))
        yield client


@pytest_asyncio.fixture(scope="module")
async def asgi(settings: Settings, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(settings) as client:
        client.headers.update(bearer(api_key))
        yield client


def server_time(body: dict[str, object]) -> datetime:
    moment = datetime.fromisoformat(str(body["serverTime"]).replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 30
    return moment


# --- authentication -------------------------------------------------------------------------------

DATA_ROUTES = ["/api/network/instances", "/api/network/activity", "/api/network/exchanges/1/status"]


async def test_every_data_route_refuses_missing_wrong_and_revoked_keys(
    http: httpx.AsyncClient, servers: Servers
) -> None:
    conn = await db.connect(servers.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        revoked = await catalog.create_api_key("to-revoke")
        assert await catalog.revoke_api_keys(revoked) == 1
    wrong: list[str | None] = [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-uuid",
        f"Bearer {uuid.uuid4()}",
        f"Bearer {revoked}",
    ]
    for route in DATA_ROUTES + ["/api/network/exchanges/1/uptime", "/api/network/exchanges/1/timeline"]:
        for header in wrong:
            # Invalid parameters too: authentication is decided before anything else.
            request = http.build_request("GET", route, params={"count": 0})
            del request.headers["Authorization"]
            if header is not None:
                request.headers["Authorization"] = header
            reply = await http.send(request)
            assert reply.status_code == 401, (route, header, reply.text)
            body = reply.json()
            assert set(body) == {"error", "type", "serverTime"} and body["type"] == "Unauthorized"
            assert reply.headers["www-authenticate"] == "Bearer"
            server_time(body)


async def test_a_valid_key_reads_and_is_marked_used(
    http: httpx.AsyncClient, servers: Servers, api_key: str
) -> None:
    reply = await http.get("/api/network/instances")
    assert reply.status_code == 200
    conn = await db.connect(servers.database_url)
    async with conn:
        digest = await db.Catalog(db.OneConnection(conn)).key_hash(api_key)
        row = await (
            await conn.execute("SELECT last_used_at FROM api_keys WHERE key_hash = %s", (digest,))
        ).fetchone()
    assert row is not None and row["last_used_at"] is not None
    assert datetime.now(UTC) - row["last_used_at"] < timedelta(minutes=5)
    # The key's canonical spelling is accepted in upper case and braces too (it is a UUID).
    assert (await http.get("/api/network/instances", headers=bearer(api_key.upper()))).status_code == 200


async def test_openapi_docs_are_off_unless_asked_and_then_describe_the_key(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await http.get(path)).status_code == 404
    async with in_process(settings.model_copy(update={"api_docs": True})) as docs:
        schema = (await docs.get("/openapi.json")).json()
        assert {"/api/network/instances", "/api/network/activity"} <= set(schema["paths"])
        assert "/api/network/exchanges/{exchangeId}/timeline" in schema["paths"]
        assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
        assert (await docs.get("/docs")).status_code == 200


async def test_readyz_says_only_ready_without_a_key_and_why_with_one(http: httpx.AsyncClient) -> None:
    anonymous = await http.get("/readyz", headers={"Authorization": ""})
    assert set(anonymous.json()) == {"ready", "serverTime"}, anonymous.text
    wrong = await http.get("/readyz", headers=bearer(str(uuid.uuid4())))
    assert set(wrong.json()) == {"ready", "serverTime"}, wrong.text
    keyed = await http.get("/readyz")  # the fixture's client sends a valid key
    assert {"ready", "down", "checks"} <= set(keyed.json()), keyed.text


# --- instances and one status -----------------------------------------------------------------------


async def test_instances_online_offline_and_malformed(
    http: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    (on_id, on), (off_id, off), (bad_id, bad), (odd_id, odd), (gone_id, gone) = await new_exchanges(
        servers.database_url, 5
    )
    connected = datetime.now(UTC) - timedelta(hours=4, minutes=23, seconds=5)
    await put_status(store, on_id, status_record(on_id, on, connectedAt=connected.isoformat()))
    when = datetime.now(UTC) - timedelta(minutes=3)
    await xadd(store, off, "*", entry_fields(off_id, off, "error", when, error="ws closed", state="active"))
    await xadd(
        store,
        off,
        "*",
        entry_fields(
            off_id, off, "state_transition", when, fromState="stopped", toState="idle", adminEmail="a@x.io"
        ),
    )
    await put_status(store, bad_id, "{not json")
    await put_status(store, odd_id, status_record(odd_id, odd, lastHeartbeat="yesterday"))
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("UPDATE exchanges SET is_active = false WHERE id = %s", (gone_id,))
        active = {
            r["id"] for r in await (await conn.execute("SELECT id FROM exchanges WHERE is_active")).fetchall()
        }

    reply = await http.get("/api/network/instances")
    assert reply.status_code == 200
    body = reply.json()
    server_time(body)
    views = {v["exchangeId"]: v for v in body["instances"]}
    assert set(views) == active and gone_id not in views  # every active exchange, from the DB

    online = views[on_id]
    assert online["online"] is True and online["exchangeName"] == on and online["displayName"] == on.upper()
    assert online["status"]["connectionState"] == "active" and online["status"]["hostname"] == "node-a"
    assert online["heartbeat"] == "fresh" and online["late"] is False and online["heartbeatAgeS"] < 10
    assert online["runningFor"] == "4h 23m" and 0 < online["ttlMs"] <= 60_000
    assert online["standbys"] == [] and online["lastKnown"] is None  # none registered: an empty list
    assert online["health"] == "healthy"

    offline = views[off_id]
    assert offline["online"] is False and offline["status"] is None
    known = offline["lastKnown"]
    assert known["hostname"] == "node-a" and known["ip"] == "192.0.2.10" and known["state"] == "idle"
    assert known["event"] == "state_transition" and known["adminEmail"] == "a@x.io"
    assert known["lastError"] == "ws closed" and known["at"].startswith(when.strftime("%Y-%m-%dT%H:%M"))
    assert offline["health"] == "offline" and offline["offlineReason"] is None

    for malformed in (bad_id, odd_id):
        view = views[malformed]
        assert view["online"] is False and view["status"] is None
        assert view["offlineReason"].startswith("malformed status record")


async def test_one_exchange_status_and_unknown_ids(
    http: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1)
    reply = await http.get(f"/api/network/exchanges/{ex_id}/status")
    assert reply.status_code == 200
    body = reply.json()
    assert body["online"] is False and body["status"] is None and body["lastKnown"] is None
    server_time(body)
    await put_status(store, ex_id, status_record(ex_id, name, connectionState="warming", connectedAt=None))
    body = (await http.get(f"/api/network/exchanges/{ex_id}/status")).json()
    assert body["online"] is True and body["status"]["connectionState"] == "warming"
    assert body["runningFor"] is None

    for route in ("status", "uptime", "timeline"):
        reply = await http.get(f"/api/network/exchanges/987654321/{route}")
        assert reply.status_code == 404
        missing = reply.json()
        assert (
            missing["type"] == "UnknownExchange"
            and name in missing["known"]
            and "binance" in missing["known"]
        )
        assert "known exchanges:" in missing["error"]
        server_time(missing)
    reply = await http.get("/api/network/exchanges/binance/status")
    assert reply.status_code == 422 and reply.json()["type"] == "ValidationError"


# --- the activity log -------------------------------------------------------------------------------

MS0 = 1_700_000_000_000


@pytest_asyncio.fixture(scope="module")
async def three_streams(servers: Servers) -> list[tuple[int, str]]:
    """Three exchanges whose streams hold the same IDs: 12 milliseconds × 16 sequence numbers each,
    plus a few entries of their own (600 entries in all)."""
    from perseus.store.redis_store import make_client

    exchanges = await new_exchanges(servers.database_url, 3, prefix="pg")
    redis = make_client(servers.redis_url)
    store = RedisStore(redis)
    try:
        for n, (ex_id, name) in enumerate(exchanges):
            async with redis.pipeline(transaction=False) as pipe:
                ids = [f"{MS0 + ms}-{seq}" for ms in range(12) for seq in range(16)]
                ids += [f"{MS0 + 20 + n}-{seq}" for seq in range(8)]
                for i, entry_id in enumerate(ids):
                    when = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
                    if i % 4 == 0:
                        fields = entry_fields(ex_id, name, "error", when, error=f"e{i}", state="active")
                    else:
                        admin = "ops@x.io" if i % 3 == 0 else "admin@perseus.local"
                        fields = entry_fields(
                            ex_id,
                            name,
                            "state_transition",
                            when,
                            fromState="idle",
                            toState="starting",
                            adminEmail=admin,
                        )
                    pipe.xadd(stream_key(name), fields, id=entry_id)  # type: ignore[arg-type]
                await pipe.execute()
        assert sum([len(await store.events(name)) for _, name in exchanges]) == 600
    finally:
        await redis.aclose()
    return exchanges


def order_key(entry: dict[str, str]) -> tuple[int, int, str]:
    ms, seq = entry["id"].split("-")
    return (int(ms), int(seq), entry.get("exchangeName", "").lower())


async def walk(http: httpx.AsyncClient, **params: object) -> tuple[list[dict[str, str]], int]:
    entries: list[dict[str, str]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        reply = await http.get("/api/network/activity", params=query)  # type: ignore[arg-type]
        assert reply.status_code == 200, reply.text
        body = reply.json()
        server_time(body)
        assert len(body["entries"]) <= int(params.get("count", 50))  # type: ignore[call-overload]
        entries += body["entries"]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            return entries, pages
        assert pages < 1000


async def test_single_exchange_pages_cover_the_stream_exactly_once(
    http: httpx.AsyncClient, three_streams: list[tuple[int, str]]
) -> None:
    _, name = three_streams[1]
    entries, pages = await walk(http, exchange=name, count=13)
    ids = [e["id"] for e in entries]
    assert len(ids) == 200 == len(set(ids)) and pages == 16
    assert [order_key(e) for e in entries] == sorted((order_key(e) for e in entries), reverse=True)
    # Same-millisecond runs come out in numeric order: …-15, …-14, …, …-10, …-9, not "…-9" before "…-10".
    run = [e["id"] for e in entries if e["id"].startswith(f"{MS0 + 11}-")]
    assert run == [f"{MS0 + 11}-{seq}" for seq in range(15, -1, -1)]


async def test_all_exchanges_pages_merge_numerically_without_repeats_or_gaps(
    asgi: httpx.AsyncClient, three_streams: list[tuple[int, str]]
) -> None:
    mine = {name for _, name in three_streams}
    for count in (50, 17):
        entries, _ = await walk(asgi, count=count)
        keys = [order_key(e) for e in entries]
        assert len(keys) == len(set(keys))  # no entry twice
        assert keys == sorted(keys, reverse=True)  # newest first, (ms, seq, exchange) numerically
        ours = [e for e in entries if e.get("exchangeName") in mine]
        assert len(ours) == 600  # no gaps
        expected = sorted(
            [(MS0 + ms, seq, name) for name in mine for ms in range(12) for seq in range(16)]
            + [(MS0 + 20 + n, seq, name) for n, (_, name) in enumerate(three_streams) for seq in range(8)],
            reverse=True,
        )
        assert [order_key(e) for e in ours] == expected


async def test_filters_by_event_and_admin_page_through_everything(
    http: httpx.AsyncClient, three_streams: list[tuple[int, str]]
) -> None:
    _, name = three_streams[0]
    everything, _ = await walk(http, exchange=name, count=200)
    errors, _ = await walk(http, exchange=name, count=7, event="error")
    assert [e["id"] for e in errors] == [e["id"] for e in everything if e["event"] == "error"] and errors
    ops, _ = await walk(http, exchange=name, count=9, adminEmail="OPS@x.io")
    assert [e["id"] for e in ops] == [
        e["id"] for e in everything if e.get("adminEmail") == "ops@x.io"
    ] and ops
    both, _ = await walk(
        http, exchange=name, count=5, event=["error", "state_transition"], adminEmail="ops@x.io"
    )
    assert [e["id"] for e in both] == [e["id"] for e in ops]


async def test_activity_refuses_bad_queries(
    http: httpx.AsyncClient, three_streams: list[tuple[int, str]]
) -> None:
    for params in ({"count": 0}, {"count": 201}, {"count": "x"}, {"event": "heartbeat"}, {"cursor": "10"}):
        reply = await http.get("/api/network/activity", params=params)
        assert reply.status_code == 422, (params, reply.text)
        body = reply.json()
        assert body["error"] and body["type"] in {"ValidationError", "InvalidQuery"}
        server_time(body)
    reply = await http.get("/api/network/activity", params={"exchange": "nope"})
    assert reply.status_code == 404 and "binance" in reply.json()["known"]
    default = (await http.get("/api/network/activity", params={"exchange": three_streams[2][1]})).json()
    assert len(default["entries"]) == 50 and default["nextCursor"] == default["entries"][-1]["id"]
    exact = (
        await http.get("/api/network/activity", params={"exchange": three_streams[2][1], "count": 200})
    ).json()
    assert len(exact["entries"]) == 200 and exact["nextCursor"] is None  # a full last page says so


async def test_retention_trims_entries_older_than_90_days_on_the_next_write(
    servers: Servers, store: RedisStore
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="ret")
    now = datetime.now(UTC)
    old_ms = int((now - timedelta(days=91)).timestamp() * 1000)
    for i in range(300):
        await xadd(store, name, f"{old_ms + i}-0", entry_fields(ex_id, name, "error", now, error="old"))
    recent_ms = int((now - timedelta(days=89)).timestamp() * 1000)
    for i in range(5):
        await xadd(store, name, f"{recent_ms + i}-0", entry_fields(ex_id, name, "error", now, error="recent"))
    node_max = int(str((await store.client.config_get("stream-node-max-entries"))["stream-node-max-entries"]))

    def old(rows: list[tuple[str, dict[str, str]]]) -> list[str]:
        return sorted((i for i, f in rows if f["error"] == "old"), key=lambda i: int(i.split("-")[0]))

    await store.append_event(
        name, str(uuid.uuid4()), retention_min_id(now), {"event": "error", "error": "new"}
    )
    rows = await store.events(name)
    left = old(rows)
    # `MINID ~` (DESIGN §2.1) trims whole stream nodes: what survives is at most the one node that the
    # newest old entries share with entries inside the 90 days; they go once that node ages out.
    assert len(left) < min(node_max, 300)
    assert left == [f"{old_ms + i}-0" for i in range(300 - len(left), 300)]  # the oldest went first
    assert sum(1 for _, f in rows if f["error"] == "recent") == 5  # nothing within 90 days is lost
    assert [f["error"] for _, f in rows[:1]] == ["new"]


# --- uptime and timeline ----------------------------------------------------------------------------


async def test_uptime_and_timeline_from_a_hand_made_history(
    http: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1, prefix="up")
    now = datetime.now(UTC)

    def ago(hours: float) -> datetime:
        return now - timedelta(hours=hours)

    history = [
        (ago(10 * 24), "idle", "starting"),
        (ago(10 * 24 - 0.5), "starting", "warming"),
        (ago(10 * 24 - 1), "warming", "active"),  # active 9 d 23 h … until 2 d ago
        (ago(48), "active", "stopping"),
        (ago(47.5), "stopping", "stopped"),
        (ago(47), "stopped", "idle"),
        (ago(13), "idle", "starting"),
        (ago(12.5), "starting", "warming"),
        (ago(12), "warming", "active"),  # active for the last 12 h
    ]
    for when, src, dst in history:
        ms = int(when.timestamp() * 1000)
        await xadd(
            store,
            name,
            f"{ms}-0",
            entry_fields(ex_id, name, "state_transition", when, fromState=src, toState=dst, adminEmail=""),
        )
        await xadd(store, name, f"{ms}-1", entry_fields(ex_id, name, "error", when, error="noise", state=dst))
    connected = ago(12)
    await put_status(store, ex_id, status_record(ex_id, name, connectedAt=connected.isoformat()))

    reply = await http.get(f"/api/network/exchanges/{ex_id}/uptime")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    server_time(body)
    assert body["online"] is True and body["state"] == "active" and body["runningFor"] == "12h 0m"
    windows = {w["window"]: w for w in body["windows"]}
    tolerance = 0.01  # percentage points: the clock moved a little between writing and reading
    assert windows["24h"]["activePct"] == pytest.approx(50.0, abs=tolerance)
    assert windows["7d"]["activePct"] == pytest.approx(100 * (5 * 24 + 12) / (7 * 24), abs=tolerance)
    active_30d = (10 * 24 - 1 - 48) + 12
    # Observed from the first transition 10 days ago: time before it is not counted as down.
    # Written straight to the stream (as a Livermore v6 service would): folded into the ledger.
    assert body["source"] == "ledger"
    assert windows["30d"]["observedS"] == pytest.approx(10 * 86400, abs=5)
    assert windows["30d"]["activePct"] == pytest.approx(100 * active_30d / (10 * 24), abs=tolerance)
    assert windows["30d"]["windowActivePct"] == pytest.approx(100 * active_30d / (30 * 24), abs=tolerance)
    assert windows["30d"]["knownPct"] == pytest.approx(100 / 3, abs=tolerance)

    reply = await http.get(f"/api/network/exchanges/{ex_id}/timeline", params={"window": "3d"})
    assert reply.status_code == 200
    timeline = reply.json()
    states = [i["state"] for i in timeline["intervals"]]
    assert states == ["active", "stopping", "stopped", "idle", "starting", "warming", "active"]
    assert timeline["totalsS"]["stopping"] == pytest.approx(1800, abs=1)
    assert sum(i["durationS"] for i in timeline["intervals"]) == pytest.approx(3 * 86400, abs=1)
    for bad in ("91d", "0h", "soon"):
        reply = await http.get(f"/api/network/exchanges/{ex_id}/timeline", params={"window": bad})
        assert reply.status_code == 422 and reply.json()["type"] == "InvalidQuery"


# --- standbys, health, metrics, live events --------------------------------------------------------


def standby_record(ex_id: int, name: str, host: str, priority: int, **over: Any) -> dict[str, Any]:
    now = iso(datetime.now(UTC))
    record: dict[str, Any] = {
        "exchangeId": ex_id,
        "exchangeName": name,
        "host": host,
        "hostname": host,
        "ipAddress": None,
        "instanceId": str(uuid.uuid4()),
        "workflowId": f"instance-{name}-{host}",
        "priority": priority,
        "registeredAt": now,
        "lastHeartbeat": now,
        "ttlMs": 45_000,
        "heartbeatIntervalMs": 15_000,
    }
    record.update(over)
    return record


async def test_standbys_are_listed_by_priority_and_vanish_with_their_record(
    http: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1)
    await put_status(store, ex_id, status_record(ex_id, name))
    low = standby_record(ex_id, name, "node-low", 1)
    high = standby_record(ex_id, name, "node-high", 7, warm=True)
    brief = standby_record(ex_id, name, "node-brief", 3)
    await store.put_standby(ex_id, low["instanceId"], low, 45_000, 1)
    await store.put_standby(ex_id, high["instanceId"], high, 45_000, 7)
    await store.put_standby(ex_id, brief["instanceId"], brief, 300, 3)  # expires in 0.3 s

    view = (await http.get(f"/api/network/exchanges/{ex_id}/status")).json()
    assert [s["host"] for s in view["standbys"]] == ["node-high", "node-brief", "node-low"]
    first = view["standbys"][0]
    assert set(first) >= {"host", "hostname", "instanceId", "priority", "heartbeatAgeS", "ttlMs", "warm"}
    assert first["instanceId"] == high["instanceId"] and first["priority"] == 7 and first["warm"] is True
    assert 0 < first["ttlMs"] <= 45_000 and 0 <= first["heartbeatAgeS"] < 10
    assert view["standbys"][2]["warm"] is False  # no "warm" in the record: false

    async def brief_gone() -> list[str] | None:
        body = (await http.get("/api/network/instances")).json()
        (item,) = [i for i in body["instances"] if i["exchangeId"] == ex_id]
        hosts = [s["host"] for s in item["standbys"]]
        return hosts if "node-brief" not in hosts else None

    assert await wait_for(brief_gone, timeout=10) == ["node-high", "node-low"]


async def test_health_is_judged_against_the_instances_own_interval(
    asgi: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    (slow_id, slow), (fast_id, fast), (late_id, late), (never_id, _) = await new_exchanges(
        servers.database_url, 4
    )
    twenty_ago = iso(datetime.now(UTC) - timedelta(seconds=20))
    # 20 s without a renewal: healthy at a 60 s interval, stale at 5 s (past the 2-interval deadline),
    # late at 12 s (past 1.5 intervals, not yet 2).
    await put_status(
        store, slow_id, status_record(slow_id, slow, lastHeartbeat=twenty_ago, heartbeatIntervalMs=60_000)
    )
    await put_status(
        store, fast_id, status_record(fast_id, fast, lastHeartbeat=twenty_ago, heartbeatIntervalMs=5_000)
    )
    await put_status(
        store, late_id, status_record(late_id, late, lastHeartbeat=twenty_ago, heartbeatIntervalMs=12_000)
    )
    body = (await asgi.get("/api/network/instances")).json()
    views = {v["exchangeId"]: v for v in body["instances"]}
    assert (views[slow_id]["heartbeat"], views[slow_id]["late"], views[slow_id]["health"]) == (
        "fresh",
        False,
        "healthy",
    )
    assert (views[fast_id]["heartbeat"], views[fast_id]["late"], views[fast_id]["health"]) == (
        "stale",
        True,
        "stale",
    )
    assert (views[late_id]["heartbeat"], views[late_id]["late"], views[late_id]["health"]) == (
        "late",
        True,
        "late",
    )
    never = views[never_id]  # never ran: neutral, and no made-up error
    assert never["health"] == "not_running" and never["offlineReason"] is None and never["lastKnown"] is None


async def test_metrics_need_a_key_and_show_instances_by_role_and_state(
    asgi: httpx.AsyncClient, servers: Servers, store: RedisStore
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1)
    await put_status(store, ex_id, status_record(ex_id, name))
    spare = standby_record(ex_id, name, "node-b", 1)
    await store.put_standby(ex_id, spare["instanceId"], spare, 45_000, 1)
    refused = await asgi.get("/metrics", headers={"Authorization": ""})
    assert refused.status_code == 401
    reply = await asgi.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert f'perseus_exchange_active{{exchange="{name}"}} 1.0' in text
    assert f'perseus_exchange_standbys{{exchange="{name}"}} 1.0' in text
    assert f'perseus_exchange_heartbeat_interval_seconds{{exchange="{name}"}} 15.0' in text
    assert 'perseus_instances{role="active",state="active"}' in text
    assert 'perseus_instances{role="standby",state="standby"}' in text
    assert "# TYPE perseus_renewals_total counter" in text and "perseus_live_clients" in text
    assert f'perseus_exchange_paused{{exchange="{name}"}} 0.0' in text
    # A pause (the key perseus.client.maintenance writes) shows in the gauge and in the item.
    until = "2030-01-01T00:00:00.000Z"
    await store.set_pause(ex_id, PauseRecord(until=until, since=until, actor="cli:ops@laptop"), 60_000)
    assert f'perseus_exchange_paused{{exchange="{name}"}} 1.0' in (await asgi.get("/metrics")).text
    item = (await asgi.get(f"/api/network/exchanges/{ex_id}/status")).json()
    assert (item["paused"], item["pausedUntil"], item["pausedBy"]) == (True, until, "cli:ops@laptop")


class EventReader:
    """Reads one open event stream in the background; ``next(kind)`` waits for a message of that kind."""

    def __init__(self, response: httpx.Response) -> None:
        self.messages: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(response))

    async def _pump(self, response: httpx.Response) -> None:
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                await self.messages.put((kind, json.loads(line.removeprefix("data: "))))

    async def next(self, want: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                kind, data = await self.messages.get()
                if kind == want:
                    return data

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_live_events_push_each_new_entry_to_every_client(
    settings: Settings, servers: Servers, store: RedisStore, api_key: str
) -> None:
    ((ex_id, name),) = await new_exchanges(servers.database_url, 1)
    async with over_socket(settings) as http:
        refused = await http.get("/api/network/events")
        assert refused.status_code == 401
        async with (
            http.stream("GET", "/api/network/events", headers=bearer(api_key)) as one_response,
            http.stream("GET", "/api/network/events", headers=bearer(api_key)) as two_response,
        ):
            assert one_response.status_code == 200
            assert one_response.headers["content-type"].startswith("text/event-stream")
            one, two = EventReader(one_response), EventReader(two_response)
            try:
                await one.next("hello")
                await two.next("hello")
                await put_status(
                    store, ex_id, status_record(ex_id, name, connectionState="warming", connectedAt=None)
                )
                fields = entry_fields(
                    ex_id,
                    name,
                    "state_transition",
                    datetime.now(UTC),
                    fromState="starting",
                    toState="warming",
                )

                # A new exchange gets its reader within a catalog refresh (2 s); entries written before
                # that are history, not news. So write until one arrives (each is a real new entry).
                async def pushed() -> dict[str, Any] | None:
                    await xadd(store, name, "*", fields)
                    try:
                        return await one.next("network", timeout=1.0)
                    except TimeoutError:
                        return None

                message = await wait_for(pushed, timeout=15)
                assert message["entry"]["exchangeName"] == name and message["entry"]["toState"] == "warming"
                assert message["instance"]["exchangeId"] == ex_id
                assert message["instance"]["status"]["connectionState"] == "warming"
                other = await two.next("network")
                assert (
                    other["entry"]["exchangeName"] == name and other["entry"]["id"] == message["entry"]["id"]
                )
            finally:
                await one.close()
                await two.close()
