"""The write routes against the real stack: every route × every kind of key gives its documented
status, and only the cells that are allowed change anything (read back from Redis: the exchange's
stream and status key, not only the status code). One app, one worker and one instance per module."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.models import Scope
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from tests.conftest import Servers
from tests.integration.conftest_api import bearer, in_process
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

INTERVAL = 1.0


@dataclass
class Stack:
    http: httpx.AsyncClient
    store: RedisStore
    exchange: str
    other: str
    host: str
    keys: dict[str, str | None]
    #: who -> the key's name (its actor is ``api:<name>``).
    names: dict[str, str]


async def _new_exchange(servers: Servers) -> str:
    name = f"wr_{uuid.uuid4().hex[:10]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("INSERT INTO exchanges (name, display_name) VALUES (%s, %s)", (name, name.upper()))
    return name


@pytest_asyncio.fixture(scope="module")
async def stack(
    servers: Servers, settings: Settings, client: Client, shared_worker: str
) -> AsyncIterator[Stack]:
    exchange, other = await _new_exchange(servers), await _new_exchange(servers)
    tag = uuid.uuid4().hex[:6]
    conn = await db.connect(servers.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        keys: dict[str, str | None] = {
            "none": None,
            "read": await catalog.create_api_key(f"read-{tag}"),
            "other": await catalog.create_api_key(f"other-{tag}", scope=Scope.OPERATE, exchanges=[other]),
            "operate": await catalog.create_api_key(f"op-{tag}", scope=Scope.OPERATE, exchanges=[exchange]),
            "admin": await catalog.create_api_key(f"admin-{tag}", scope=Scope.ADMIN),
            # For the drain: the shared worker's host may hold other tests' exchanges too.
            "operate-any": await catalog.create_api_key(f"any-{tag}", scope=Scope.OPERATE),
            "expired": await catalog.create_api_key(
                f"expired-{tag}", scope=Scope.ADMIN, expires_at=datetime.now(UTC) - timedelta(seconds=1)
            ),
            "revoked": await catalog.create_api_key(f"revoked-{tag}", scope=Scope.ADMIN),
        }
        # Revoked just before the requests: nothing may remember it as valid.
        assert await catalog.revoke_api_keys(f"revoked-{tag}") == 1
    await control.register(
        client,
        exchange=exchange,
        host=shared_worker,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=False,
    )
    redis = make_client(servers.redis_url)
    api_settings = settings.model_copy(update={"payload_plaintext": True})
    try:
        async with in_process(api_settings, temporal_address=servers.temporal_address) as http:
            names = {who: f"{prefix}-{tag}" for who, prefix in NAMES.items()}
            yield Stack(http, RedisStore(redis), exchange, other, shared_worker, keys, names)
    finally:
        await control.command(
            client,
            exchange=exchange,
            host=shared_worker,
            default_host=shared_worker,
            command=Command.SHUTDOWN,
        )
        await redis.aclose()


NAMES = {"read": "read", "other": "other", "operate": "op", "admin": "admin", "operate-any": "any"}
DENIED = {"none": 401, "read": 403, "other": 403, "expired": 401, "revoked": 401}


async def _post(stack: Stack, who: str, path: str, **kw: Any) -> httpx.Response:
    return await _send(stack, who, "POST", path, **kw)


async def _send(stack: Stack, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
    key = stack.keys[who]
    headers = {**kw.pop("headers", {}), **(bearer(key) if key else {})}
    return await stack.http.request(method, path, headers=headers, **kw)


async def _entries(stack: Stack) -> list[dict[str, str]]:
    return [fields for _, fields in reversed(await stack.store.events(stack.exchange))]


async def _state(stack: Stack) -> str | None:
    raw = await stack.store.client.get(f"exchange:{await _id(stack)}:status")
    return json.loads(raw)["connectionState"] if raw else None


async def _id(stack: Stack) -> int:
    response = await stack.http.get("/api/network/instances", headers=bearer(str(stack.keys["admin"])))
    return int(
        next(i["exchangeId"] for i in response.json()["instances"] if i["exchangeName"] == stack.exchange)
    )


async def _denied_cells(stack: Stack, path: str, method: str = "POST", **kw: Any) -> None:
    """Every key that may not do this gets its status, and neither the stream nor the status key
    of the exchange moves."""
    before, state = await _entries(stack), await _state(stack)
    for who, status in DENIED.items():
        response = await _send(stack, who, method, path, **kw)
        assert response.status_code == status, (who, path, response.text)
        body = response.json()
        assert body["type"] == ("Unauthorized" if status == 401 else "Forbidden") and body["error"], body
    assert await _entries(stack) == before
    assert await _state(stack) == state


def _mine(entries: list[dict[str, str]], since: int, actor: str) -> list[dict[str, str]]:
    return [e for e in entries[since:] if e.get("actor") == actor]


async def test_commands_route_matrix(stack: Stack) -> None:
    path = f"/api/network/exchanges/{stack.exchange}/commands"
    await _denied_cells(stack, path, json={"command": "start", "wait": False})

    # operate (limited to this exchange) starts it and waits: the answer is the path it took.
    since = len(await _entries(stack))
    response = await _post(stack, "operate", path, json={"command": "start", "timeoutS": 60})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == ["idle", "starting", "warming", "active"] and body["to"] == "active", body
    actor = f"api:{stack.names['operate']}"
    moves = [(e["fromState"], e["toState"]) for e in _mine(await _entries(stack), since, body["actor"])]
    assert body["actor"] == actor and moves == [
        ("idle", "starting"),
        ("starting", "warming"),
        ("warming", "active"),
    ]

    # A refusal by a rule: 409, the same message as the CLI's, nothing changed, and it is recorded.
    since = len(await _entries(stack))
    response = await _post(stack, "admin", path, json={"command": "start", "wait": False})
    assert response.status_code == 409 and "cannot start" in response.json()["error"], response.text
    entries = await _entries(stack)
    assert [(e["event"], e["command"], e["actor"]) for e in entries[since:]] == [
        ("command_refused", "start", f"api:{stack.names['admin']}")
    ]
    assert await _state(stack) == "active"

    # admin stops it without waiting: 202 at once, and the instance walks down by itself.
    since = len(entries)
    response = await _post(stack, "admin", path, json={"command": "stop", "wait": False})
    assert response.status_code == 202 and response.json()["done"] is False, response.text
    await wait_for(lambda: _is(stack, "idle"), timeout=60)
    moves = [
        (e["fromState"], e["toState"])
        for e in _mine(await _entries(stack), since, f"api:{stack.names['admin']}")
    ]
    assert moves[0] == ("active", "stopping") and moves[-1] == ("stopped", "idle"), moves


async def _is(stack: Stack, state: str) -> bool:
    return await _state(stack) == state


async def test_unknown_exchange_and_malformed_bodies(stack: Stack) -> None:
    response = await _post(stack, "admin", "/api/network/exchanges/nosuch/commands", json={"command": "stop"})
    assert response.status_code == 404 and "known exchanges" in response.json()["error"]
    path = f"/api/network/exchanges/{stack.exchange}/commands"
    for bad in ({"command": "explode"}, {"command": "stop", "timeoutS": -1}, {}):
        response = await _post(stack, "admin", path, json=bad)
        assert response.status_code == 422, (bad, response.text)
    response = await _post(stack, "operate", path, json={"command": "stop", "actor": "someone-else"})
    assert response.status_code == 403 and "admin" in response.json()["error"]


async def test_handoff_drain_and_fleet_matrix(stack: Stack) -> None:
    handoff = f"/api/network/exchanges/{stack.exchange}/handoff"
    await _denied_cells(stack, handoff, json={"to": "nowhere"})
    for who in ("operate", "admin"):
        # Allowed through, refused by the rule (the instance is idle, nobody stands by there).
        since = len(await _entries(stack))
        response = await _post(stack, who, handoff, json={"to": "nowhere", "from": stack.host})
        assert response.status_code == 409, (who, response.text)
        refused = (await _entries(stack))[since:]
        assert [e["event"] for e in refused] == ["command_refused"] and refused[0]["reason"], refused

    # A drain needs every exchange active on the host: with ours active there, the key limited to
    # the other exchange is refused; the allowed ones reach the rule (no standby: nothing moves).
    # (An unlimited operate key: other tests' instances may be active on the shared worker's host.)
    if not await _is(stack, "active"):
        commands = f"/api/network/exchanges/{stack.exchange}/commands"
        response = await _post(stack, "admin", commands, json={"command": "start", "timeoutS": 60})
        assert response.status_code == 200, response.text
    drain = f"/api/network/hosts/{stack.host}/drain"
    await _denied_cells(stack, drain, json={})
    before = await _entries(stack)
    for who in ("operate-any", "admin"):
        response = await _post(stack, who, drain, json={})
        assert response.status_code == 409 and "standby" in response.json()["error"], response.text
    assert await _entries(stack) == before and await _is(stack, "active")

    fleet = "/api/fleet?dryRun=true"
    toml = f'[exchanges.{stack.exchange}]\nhosts = ["{stack.host}"]\nconnector = "simulated"\n'
    kw = {"content": toml, "headers": {"Content-Type": "application/toml"}}
    before = await _entries(stack)
    for who, status in {**DENIED, "operate": 403}.items():
        response = await _post(stack, who, fleet, **kw)
        assert response.status_code == status, (who, response.text)
    response = await _post(stack, "admin", fleet, **kw)
    assert response.status_code == 200 and response.json()["actions"], response.text
    assert await _entries(stack) == before


async def test_idempotency_key_acts_once(stack: Stack) -> None:
    path = f"/api/network/exchanges/{stack.exchange}/commands"
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    # Whichever state the module's earlier tests left: a command that is allowed once, not twice.
    command, first_step, settled = (
        ("stop", "stopping", "idle")
        if await _is(stack, "active")
        else (
            "start",
            "starting",
            "active",
        )
    )
    since = len(await _entries(stack))
    body = {"command": command, "wait": False}
    first = await _post(stack, "admin", path, json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = await _post(stack, "admin", path, json=body, headers=headers)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    await wait_for(lambda: _is(stack, settled), timeout=60)
    entries = (await _entries(stack))[since:]
    assert [e["toState"] for e in entries if e["event"] == "state_transition"].count(first_step) == 1
    assert not [e for e in entries if e["event"] == "command_refused"]


async def test_pause_and_resume_route_matrix(stack: Stack) -> None:
    """Pause and resume, like the commands: only an operate key for the exchange (or admin) acts;
    the pause is the Redis key the keepers read, and each change is an event with its actor."""
    pause_key = f"exchange:{await _id(stack)}:pause"
    pause = f"/api/network/exchanges/{stack.exchange}/pause"
    await _denied_cells(stack, pause, json={"forS": 60})
    assert await stack.store.client.get(pause_key) is None

    since = len(await _entries(stack))
    response = await _post(stack, "operate", pause, json={"forS": 120})
    assert response.status_code == 200, response.text
    body = response.json()
    actor = f"api:{stack.names['operate']}"
    assert body["paused"] is True and body["actor"] == actor and body["pausedUntil"], body
    assert 0 < await stack.store.client.pttl(pause_key) <= 120_000  # its TTL is the deadline
    assert [e["event"] for e in _mine(await _entries(stack), since, actor)] == ["paused"]

    await _denied_cells(stack, pause, method="DELETE")
    assert await stack.store.client.get(pause_key) is not None
    for bad in ({"forS": 0}, {"forS": 8 * 86_400}, {"forS": "soon"}):
        response = await _post(stack, "admin", pause, json=bad)
        assert response.status_code == 422, (bad, response.text)

    response = await _send(stack, "operate", "DELETE", pause)
    assert response.status_code == 200 and response.json()["paused"] is False, response.text
    assert await stack.store.client.get(pause_key) is None
    # Not paused any more: a second resume is refused (409) and writes nothing.
    before = await _entries(stack)
    response = await _send(stack, "operate", "DELETE", pause)
    assert response.status_code == 409 and "not paused" in response.json()["error"], response.text
    assert await _entries(stack) == before
