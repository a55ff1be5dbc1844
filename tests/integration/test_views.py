"""The terminal read views through the real CLI: ``status``, ``network``, ``log`` and ``apikey``."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import pytest

from perseus.config import Settings
from perseus.devstack.services import free_port
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.conftest_api import bearer, in_process
from tests.integration.helpers import active_on, host_name, start_workers, wait_for

# Each check runs the real CLI as a process (a second or more apiece on a busy machine, dozens per
# test): the timeout is a hang guard and leaves room for that.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

INTERVAL = 0.5


async def cli(servers: Servers, *args: str, columns: str | None = None) -> tuple[int, str, str]:
    if columns is None:
        result = await asyncio.to_thread(perseus, servers, *args)
    else:
        result = await asyncio.to_thread(lambda: perseus(servers, *args, COLUMNS=columns))
    return result.returncode, result.stdout, result.stderr


async def cli_json(servers: Servers, *args: str) -> object:
    code, out, err = await cli(servers, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def view_of(board: object, name: str) -> dict[str, object]:
    assert isinstance(board, dict)
    (view,) = [v for v in board["instances"] if v["exchangeName"] == name]
    assert isinstance(view, dict)
    return view


async def test_views_follow_a_real_instance(servers: Servers, shared_worker: str, exchange: str) -> None:
    host = shared_worker
    code, _, err = await cli(
        servers,
        "register",
        exchange,
        "--host",
        host,
        "--admin-email",
        "admin@perseus.local",
        "--heartbeat-interval",
        str(INTERVAL),
    )
    assert code == 0, err
    try:
        code, _, err = await cli(servers, "start", exchange, "--host", host)
        assert code == 0, err

        status = await cli_json(servers, "status", exchange)
        assert isinstance(status, dict) and status["online"] is True
        hostname = status["status"]["connectionState"] == "active" and status["status"]["hostname"]
        assert hostname

        board = await cli_json(servers, "network")
        assert isinstance(board, dict) and board["serverTime"]
        live = view_of(board, exchange)
        assert live["online"] is True and live["heartbeat"] == "fresh" and live["late"] is False
        assert isinstance(live["runningFor"], str) and live["runningFor"].endswith("s")
        assert live["status"]["adminEmail"] == "admin@perseus.local"  # type: ignore[index]

        code, out, err = await cli(servers, "network")
        assert code == 0, err
        card = out[out.index(exchange.upper()) :]
        for text in (" active ", hostname, "Perseus Admin", "symbols", "3", "s ago", "Running for"):
            assert text in card, (text, out)

        # --watch refreshes; on a pipe every refresh is printed as its own frame.
        code, out, err = await cli(servers, "network", "--watch", "--interval", "0.2", "--times", "3")
        assert code == 0, err
        assert out.count(exchange.upper()) == 3

        # The log, newest first, followed page by page with the printed cursor.
        entries: list[dict[str, str]] = []
        cursor: list[str] = []
        for _ in range(10):
            page = await cli_json(servers, "log", exchange, "--count", "2", *cursor)
            assert isinstance(page, dict) and page["serverTime"] and len(page["entries"]) <= 2
            entries += page["entries"]
            if page["nextCursor"] is None:
                break
            cursor = ["--cursor", page["nextCursor"]]
        assert [(e["fromState"], e["toState"]) for e in entries] == [
            ("warming", "active"),
            ("starting", "warming"),
            ("idle", "starting"),
        ]
        assert all(e["id"] and e["adminEmail"] == "admin@perseus.local" for e in entries)
        code, out, err = await cli(servers, "log", exchange, "--count", "1")
        assert code == 0 and "warming -> active" in out and "older entries: --cursor" in err
    finally:
        code, _, err = await cli(servers, "shutdown", exchange, "--host", host)
        assert code == 0, err

    # Gone: offline, with what the stream last said about it.
    offline = view_of(await cli_json(servers, "network"), exchange)
    assert offline["online"] is False and offline["status"] is None
    known = offline["lastKnown"]
    assert isinstance(known, dict) and known["state"] == "stopped" and known["hostname"] == hostname
    code, out, err = await cli(servers, "network")
    card = out[out.index(exchange.upper()) :]
    assert code == 0 and " offline " in card and "last state" in card and "stopped" in card
    wide = await asyncio.to_thread(perseus, servers, "status", exchange, COLUMNS="250")
    assert wide.returncode == 0 and "offline" in wide.stdout and "last stopped" in wide.stdout
    single = await cli_json(servers, "status", exchange)
    assert isinstance(single, dict) and single["lastKnown"]["state"] == "stopped"


async def test_read_views_refuse_bad_input_in_one_line(servers: Servers, exchange: str) -> None:
    cases = [
        (("log", "nosuchexchange"), "unknown exchange 'nosuchexchange'; known exchanges: coinbase"),
        (("log", "--count", "0"), "count must be between 1 and 200, got 0"),
        (("log", "--count", "201"), "count must be between 1 and 200, got 201"),
        (("log", exchange, "--cursor", "yesterday"), "invalid cursor 'yesterday'"),
        (("log", "--event", "heartbeat"), "unknown event type 'heartbeat'"),
        (("status", "nosuchexchange"), "unknown exchange 'nosuchexchange'"),
        (("network", "--interval", "0"), "--interval must be greater than 0"),
        (("apikey", "revoke", f"nobody-{uuid.uuid4().hex[:6]}"), "no active API key named or equal to"),
    ]
    for args, message in cases:
        code, out, err = await cli(servers, *args)
        # Exit codes of DESIGN §2.4: 4 not found, 2 a malformed request, 1 refused.
        expected = 4 if "unknown exchange" in message else 1 if args[0] in ("network", "apikey") else 2
        assert code == expected, (args, err)
        assert message in err and err.count("\n") == 1 and out == "", (args, err)
    page = await cli_json(servers, "log", exchange)
    assert page == {"entries": [], "nextCursor": None, "serverTime": page["serverTime"]}  # type: ignore[index]


async def test_apikey_create_list_and_revoke(servers: Servers, exchange: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    first = await cli_json(
        servers, "apikey", "create", name, "--scope", "operate", "--exchange", exchange, "--expires-in", "30d"
    )
    assert isinstance(first, dict) and first["name"] == name and str(uuid.UUID(first["key"])) == first["key"]
    assert first["scope"] == "operate" and first["exchanges"] == [exchange] and first["expiresAt"]
    # Names are actors: a second live key may not take the same one.
    code, _, err = await cli(servers, "apikey", "create", name)
    assert code == 1 and "exists" in err and err.count("\n") == 1
    for bad, message in [
        (("--scope", "root"), "Invalid value"),
        (("--expires-in", "soon"), "invalid --expires-in"),
        (("--exchange", "nosuchexchange"), "unknown exchange"),
    ]:
        code, out, err = await cli(servers, "apikey", "create", f"{name}-bad", *bad)
        assert code != 0 and message in err and out == "", (bad, err)

    listed = await cli_json(servers, "apikey", "list")
    assert isinstance(listed, dict)
    (mine,) = [k for k in listed["keys"] if k["name"] == name]
    assert mine["scope"] == "operate" and mine["exchanges"] == [exchange] and mine["revoked"] is False
    assert first["key"] not in json.dumps(listed) and not [
        k for k in listed["keys"] if k["name"] == f"{name}-bad"
    ]

    conn = await db.connect(servers.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        caller = await catalog.check_api_key(first["key"])
        assert caller is not None and caller.name == name and caller.exchanges == [exchange]
        code, _, err = await cli(servers, "apikey", "revoke", name)
        assert code == 0 and "revoked 1 key(s)" in err
        assert await catalog.check_api_key(first["key"]) is None
    code, _, err = await cli(servers, "apikey", "revoke", name)
    assert code == 1 and "no active API key" in err
    listed = await cli_json(servers, "apikey", "list")
    assert [k["revoked"] for k in listed["keys"] if k["name"] == name] == [True]  # type: ignore[index]


async def test_db_init_hashes_the_clear_keys_of_an_older_database_and_they_still_work(
    servers: Servers, settings: Settings
) -> None:
    """A database written by the version before hashed keys: a clear UUID in ``key``."""
    clear = str(uuid.uuid4())
    name = f"old-{uuid.uuid4().hex[:6]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("INSERT INTO api_keys (name, key) VALUES (%s, %s)", (name, clear))
    code, _, err = await cli(servers, "db", "init")
    assert code == 0 and "clear API key(s) now stored as keyed hashes" in err, err
    conn = await db.connect(servers.database_url)
    async with conn:
        left = await (
            await conn.execute("SELECT count(*) AS n FROM api_keys WHERE key IS NOT NULL")
        ).fetchone()
        assert left is not None and left["n"] == 0
        row = await (
            await conn.execute("SELECT key_hash, scope FROM api_keys WHERE name = %s", (name,))
        ).fetchone()
        assert row is not None and clear not in row["key_hash"] and row["scope"] == "read"
    async with in_process(settings) as http:
        response = await http.get("/api/network/instances", headers=bearer(clear))
        assert response.status_code == 200, response.text
        # Read is what an old key may do.
        response = await http.post(
            "/api/network/exchanges/1/commands", json={"command": "stop"}, headers=bearer(clear)
        )
        assert response.status_code == 403, response.text


# --- standbys in the read views -----------------------------------------------------------------


async def test_status_shows_the_active_then_its_standbys_until_they_go(
    servers: Servers, shared_worker: str, exchange: str, worker_processes: list[WorkerProcess]
) -> None:
    spare = host_name("view-sb")
    await start_workers(servers, worker_processes, spare)
    beat = ("--heartbeat-interval", str(INTERVAL))
    code, _, err = await cli(servers, "register", exchange, "--host", shared_worker, "--start", *beat)
    assert code == 0, err
    try:
        # None yet: the card says so (the API test checks the contract's empty list).
        # Cards one under another, as the slices below read them (piped output is 1,000 wide).
        code, out, _ = await cli(servers, "network", columns="80")
        assert "no standby" in out[out.index(exchange.upper()) :]

        code, _, err = await cli(
            servers, "register", exchange, "--host", spare, "--standby", "--priority", "2", *beat
        )
        assert code == 0, err

        async def listed() -> list[dict[str, object]] | None:
            view = await cli_json(servers, "status", exchange)
            assert isinstance(view, dict)
            return view["standbys"] or None

        (standby,) = await wait_for(listed, timeout=20)
        assert standby["host"] == spare and standby["hostname"] == spare and standby["priority"] == 2
        assert standby["warm"] is False and isinstance(standby["instanceId"], str)
        assert 0 < int(str(standby["ttlMs"])) <= 3 * INTERVAL * 1000
        assert 0 <= float(str(standby["heartbeatAgeS"])) < 3 * INTERVAL

        # One row per instance, the active one first: patronictl's leader-and-replicas table.
        wide = await asyncio.to_thread(perseus, servers, "status", exchange, COLUMNS="250")
        assert wide.returncode == 0, wide.stderr
        rows = [line for line in wide.stdout.splitlines() if exchange in line]
        assert len(rows) == 2 and "active" in rows[0] and shared_worker in rows[0]
        assert "standby (priority 2)" in rows[1] and spare in rows[1]
        code, out, _ = await cli(servers, "network", columns="80")
        card = out[out.index(exchange.upper()) :]
        assert spare in card and "priority 2" in card and "no standby" not in card

        code, _, err = await cli(servers, "shutdown", exchange, "--host", spare)
        assert code == 0, err

        async def gone() -> bool:
            view = await cli_json(servers, "status", exchange)
            return isinstance(view, dict) and view["standbys"] == []

        await wait_for(gone, timeout=10)  # dropped by the shutdown, or at worst expired (TTL 1.5 s)
    finally:
        code, _, err = await cli(servers, "shutdown", exchange, "--host", shared_worker)
        assert code == 0, err


async def test_status_of_an_exchange_that_never_ran_is_neutral(servers: Servers, exchange: str) -> None:
    view = await cli_json(servers, "status", exchange)
    assert isinstance(view, dict)
    assert view["health"] == "not_running" and view["offlineReason"] is None and view["lastKnown"] is None
    wide = await asyncio.to_thread(perseus, servers, "status", exchange, COLUMNS="250")
    (row,) = [line for line in wide.stdout.splitlines() if exchange in line]
    assert "not running" in row and "offline" not in row and "no status key" not in row


# --- metrics ------------------------------------------------------------------------------------


def sample(text: str, series: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def holders(text: str, exchange: str) -> list[tuple[str, int]]:
    """(host, epoch) of every ``perseus_exchange_holder`` series of ``exchange`` set to 1."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.labels["host"], int(s.labels["epoch"]))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "perseus_exchange_holder" and s.labels["exchange"] == exchange and s.value == 1
    ]


async def scrape(port: int) -> str:
    import httpx

    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert reply.status_code == 200
    return reply.text


async def test_metrics_show_renewals_rising_and_a_failover_after_kill_9(
    servers: Servers,
    settings: Settings,
    shared_worker: str,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """The standby's worker serves /metrics on its own port (Perseus' and the Temporal SDK's); the
    promoted event is recorded on the shared queue, served in this process, and so counted here."""
    doomed, spare = host_name("view-kill"), host_name("view-spare")
    port = free_port()
    procs = [
        WorkerProcess(servers, doomed),
        WorkerProcess(servers, spare, args=("--metrics-port", str(port))),
    ]
    worker_processes.extend(procs)
    await asyncio.gather(*(p.ready() for p in procs))
    ex_id = await exchange_id(servers, exchange)
    beat = ("--heartbeat-interval", str(INTERVAL))
    code, _, err = await cli(servers, "register", exchange, "--host", doomed, "--start", *beat)
    assert code == 0, err
    code, _, err = await cli(servers, "register", exchange, "--host", spare, "--standby", *beat)
    assert code == 0, err
    await wait_for(lambda: active_on(store, ex_id, doomed))

    text = await scrape(port)
    temporal = sorted(
        {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("temporal_")}
    )
    assert temporal, text  # the SDK runtime's own metrics, through the same port
    print("Temporal SDK series on the worker's port:", ", ".join(temporal))
    assert "# TYPE perseus_renewals_total counter" in text
    failovers = f'perseus_failovers_total{{exchange="{exchange}"}}'
    conn = await db.connect(servers.database_url)
    async with conn:
        api_key = await db.Catalog(db.OneConnection(conn)).create_api_key("metrics-test")
    async with in_process(settings) as api:
        api.headers.update(bearer(api_key))
        standbys = f'perseus_exchange_standbys{{exchange="{exchange}"}}'

        async def standing_by() -> str | None:
            text = (await api.get("/metrics")).text
            return text if sample(text, standbys) == 1 else None

        board = await wait_for(standing_by, timeout=30)
        before = sample(board, failovers)
        (held,) = holders(board, exchange)
        assert held[0] == doomed
        procs[0].signal(signal.SIGKILL)
        await wait_for(lambda: active_on(store, ex_id, spare), timeout=30)

        async def counted() -> float | None:
            value = sample((await api.get("/metrics")).text, failovers)
            return value if value > before else None

        assert await wait_for(counted, timeout=10) == before + 1
        # Who holds it follows the failover: the spare, at a higher epoch, and nobody else.
        board = (await api.get("/metrics")).text
        (now_held,) = holders(board, exchange)
        assert now_held[0] == spare and now_held[1] > held[1], (held, now_held)
        assert sample(board, f'perseus_exchange_epoch{{exchange="{exchange}"}}') == now_held[1]
        assert sample(board, standbys) == 0

    renewed = 'perseus_renewals_total{outcome="ok"}'
    first = sample(await scrape(port), renewed)

    async def rising() -> float | None:
        value = sample(await scrape(port), renewed)
        return value if value > first > 0 or (first == 0 and value > 1) else None

    await wait_for(rising, timeout=10)
    code, _, err = await cli(servers, "shutdown", exchange, "--host", spare)
    assert code == 0, err


async def test_a_request_catalog_reads_the_active_exchanges_again_once_the_catalog_changed(
    servers: Servers,
) -> None:
    conn = await db.connect(servers.database_url)
    async with conn:
        shared = db.Catalog(db.OneConnection(conn))
        key = await shared.create_api_key(f"cache-{uuid.uuid4().hex[:6]}")

        async def request() -> db.RequestCatalog:
            view = db.RequestCatalog(shared)
            assert await view.check_api_key(key) is not None
            return view

        first = await request()
        listed = await first.exchanges(active_only=True)
        assert shared.active_cache is not None and shared.active_cache[0] == first.seen_version
        again = await request()
        assert again.seen_version == first.seen_version and await again.exchanges(active_only=True) == listed

        name = f"cache_{uuid.uuid4().hex[:6]}"
        await conn.execute("INSERT INTO exchanges (name, display_name) VALUES (%s, %s)", (name, name))
        added = await request()
        assert added.seen_version != first.seen_version  # the trigger bumped it in the insert's transaction
        assert name in [e.name for e in await added.exchanges(active_only=True)]
        await conn.execute("UPDATE exchanges SET is_active = false WHERE name = %s", (name,))
        assert name not in [e.name for e in await (await request()).exchanges(active_only=True)]
