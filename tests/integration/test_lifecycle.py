"""A full lifecycle through the real CLI against a real worker, Redis, PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import json

import pytest

from perseus.keys import status_key, stream_key
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, perseus
from tests.unit.test_models import LIVERMORE_FIELDS, PERSEUS_FIELDS

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # seconds; TTL 1.5 s


async def status_of(store: RedisStore, exchange_id: int) -> tuple[dict[str, object] | None, int]:
    raw, pttl = await store.raw_status(exchange_id)
    return (json.loads(raw) if raw else None), pttl


async def transitions(store: RedisStore, name: str) -> list[tuple[str, str]]:
    entries = await store.events(name)
    return [(f["fromState"], f["toState"]) for _, f in reversed(entries) if f["event"] == "state_transition"]


async def run_cli(servers: Servers, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(perseus, servers, *args)
    return result.returncode, result.stdout, result.stderr


async def test_full_lifecycle_through_the_cli(
    servers: Servers, shared_worker: str, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    code, out, err = await run_cli(
        servers,
        "register",
        exchange,
        "--host",
        host,
        "--admin-email",
        "admin@perseus.local",
        "--heartbeat-interval",
        str(INTERVAL),
        "--json",
    )
    assert code == 0, err
    registered = json.loads(out)
    assert registered["state"] == "idle" and registered["epoch"] >= 1
    exchange_id = registered["exchangeId"]

    doc, pttl = await status_of(store, exchange_id)
    assert doc is not None and set(doc) >= LIVERMORE_FIELDS | PERSEUS_FIELDS
    assert doc["connectionState"] == "idle" and doc["adminDisplayName"] == "Perseus Admin"
    assert doc["workflowId"] == f"instance-{exchange}-{host}" and doc["ttlMs"] == 1500

    code, out, err = await run_cli(servers, "start", exchange, "--host", host, "--json")
    assert code == 0, err
    assert json.loads(out)["transitions"] == ["starting", "warming", "active"]

    # The key lives with a TTL within (0, 3 × interval] all along, and the heartbeat advances.
    beats = set()
    for _ in range(12):
        doc, pttl = await status_of(store, exchange_id)
        assert doc is not None and 0 < pttl <= 1500
        beats.add(doc["lastHeartbeat"])
        await asyncio.sleep(0.25)
    assert len(beats) >= 3
    assert doc["connectionState"] == "active" and doc["symbolCount"] == 3 and doc["connectedAt"]

    code, out, err = await run_cli(servers, "status", exchange, "--json")
    assert code == 0, err
    view = json.loads(out)
    assert view["online"] is True and view["status"]["connectionState"] == "active"

    code, out, err = await run_cli(servers, "stop", exchange, "--host", host)
    assert code == 0, err
    doc, _ = await status_of(store, exchange_id)
    assert doc is not None and doc["connectionState"] == "idle" and doc["connectedAt"] is None

    code, out, err = await run_cli(servers, "shutdown", exchange, "--host", host)
    assert code == 0, err
    assert (await status_of(store, exchange_id))[0] is None

    assert await transitions(store, exchange) == [
        ("idle", "starting"),
        ("starting", "warming"),
        ("warming", "active"),
        ("active", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "idle"),
    ]
    # Heartbeats are never logged; every entry has Perseus' fields.
    for _, fields in await store.events(exchange):
        assert fields["event"] == "state_transition"
        assert fields["instanceId"] == registered["instanceId"] and fields["epoch"] == str(
            registered["epoch"]
        )


async def test_bad_input_is_refused_and_changes_nothing(
    servers: Servers, shared_worker: str, store: RedisStore, exchange: str
) -> None:
    host = shared_worker
    cases = [
        (
            ("register", "nosuchexchange", "--host", host),
            "unknown exchange 'nosuchexchange'; known exchanges: coinbase",
        ),
        (("register", exchange, "--host", host, "--admin-email", "ghost@x"), "unknown admin 'ghost@x'"),
        (("register", exchange, "--host", host, "--heartbeat-interval", "0"), "must be between 0.5 and 3600"),
        (("register", exchange, "--host", host, "--heartbeat-interval", "soon"), "Invalid value"),
        (("start", exchange, "--host", host), f"{exchange} is not registered on host {host}"),
        (("stop", exchange, "--host", host), "is not registered"),
    ]
    for args, message in cases:
        code, out, err = await run_cli(servers, *args)
        assert code != 0, args
        assert message in err, (args, err)
        assert out == ""
    exchange_id = await asyncio.to_thread(perseus, servers, "status", exchange, "--json")
    assert json.loads(exchange_id.stdout)["online"] is False
    # Nothing changed; the two refused commands are in the audit trail, with reason and actor.
    refused = [f for _, f in reversed(await store.events(exchange))]
    assert [(f["event"], f["command"]) for f in refused] == [
        ("command_refused", "start"),
        ("command_refused", "stop"),
    ], refused
    assert all(f["actor"].startswith("cli:") and "is not registered" in f["reason"] for f in refused)

    code, out, err = await run_cli(
        servers, "register", exchange, "--host", host, "--heartbeat-interval", str(INTERVAL)
    )
    assert code == 0, err
    try:
        for args, message in [
            (("stop", exchange, "--host", host), "cannot stop: the instance is idle; nothing is running"),
            (("register", exchange, "--host", host), f"{exchange} is already registered on host {host}"),
        ]:
            code, out, err = await run_cli(servers, *args)
            assert code == 1 and message in err and err.count("\n") == 1, err
        assert await transitions(store, exchange) == []
    finally:
        await run_cli(servers, "shutdown", exchange, "--host", host)


async def test_stream_key_is_lowercase_name(exchange: str) -> None:
    assert stream_key(exchange.upper()) == f"logs:network:{exchange}"
    assert status_key(1) == "exchange:1:status"
