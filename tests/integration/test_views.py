"""The terminal read views through the real CLI: ``status``, ``network``, ``log`` and ``apikey``."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from perseus.store import db
from tests.conftest import Servers, perseus

pytestmark = pytest.mark.integration

INTERVAL = 0.5


async def cli(servers: Servers, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(perseus, servers, *args)
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


async def test_apikey_create_and_revoke(servers: Servers) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    first = await cli_json(servers, "apikey", "create", name)
    assert isinstance(first, dict) and first["name"] == name and str(uuid.UUID(first["key"])) == first["key"]
    code, second, err = await cli(servers, "apikey", "create", name)
    assert code == 0 and str(uuid.UUID(second.strip())) == second.strip()

    conn = await db.connect(servers.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        assert await catalog.check_api_key(first["key"]) == (first["key"], name)
        code, _, err = await cli(servers, "apikey", "revoke", first["key"])
        assert code == 0 and "revoked 1 key(s)" in err
        assert await catalog.check_api_key(first["key"]) is None
        assert await catalog.check_api_key(second.strip()) is not None
        code, _, err = await cli(servers, "apikey", "revoke", name)
        assert code == 0 and "revoked 1 key(s)" in err
        assert await catalog.check_api_key(second.strip()) is None
    code, _, err = await cli(servers, "apikey", "revoke", name)
    assert code == 1 and "no active API key" in err
