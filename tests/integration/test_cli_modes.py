"""The CLI's commands, once talking to Temporal, Redis and PostgreSQL directly and once through the
HTTP API (``PERSEUS_API_URL`` + ``PERSEUS_API_KEY``, nothing else): the same output, ``--json`` and
exit codes, and the actor each mode writes into the events it causes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.models import Scope
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import PERSEUS, ROOT, Servers, exchange_id
from tests.integration.conftest_api import over_socket

pytestmark = pytest.mark.integration


@dataclass
class Mode:
    name: str
    env: dict[str, str]
    #: How the actor of this mode's commands starts.
    actor: str


@pytest_asyncio.fixture(scope="module", params=["direct", "api"])
async def mode(request: pytest.FixtureRequest, servers: Servers, settings: Settings) -> AsyncIterator[Mode]:
    if request.param == "direct":
        yield Mode("direct", servers.env(), "cli:")
        return
    name = f"laptop-{uuid.uuid4().hex[:6]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        key = await db.Catalog(db.OneConnection(conn)).create_api_key(name, scope=Scope.OPERATE)
    api_settings = settings.model_copy(update={"payload_plaintext": True})
    async with over_socket(api_settings, servers.temporal_address) as http:
        # Only the API's address and a key: no Temporal, Redis or PostgreSQL to reach (the
        # addresses below lead nowhere, so a command that tried them would fail).
        env = servers.env(
            PERSEUS_API_URL=str(http.base_url),
            PERSEUS_API_KEY=key,
            TEMPORAL_ADDRESS="127.0.0.1:1",
            PERSEUS_REDIS_URL="redis://127.0.0.1:1/0",
            PERSEUS_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        )
        yield Mode("api", env, f"api:{name}")


async def run(mode: Mode, *args: str) -> tuple[int, str, str]:
    done = await asyncio.to_thread(
        subprocess.run, [PERSEUS, *args], capture_output=True, text=True, timeout=120, env=mode.env, cwd=ROOT
    )
    return done.returncode, done.stdout, done.stderr


@pytest_asyncio.fixture
async def registered(client: Client, shared_worker: str, exchange: str) -> AsyncIterator[str]:
    await control.register(
        client, exchange=exchange, host=shared_worker, admin_email=None, heartbeat_interval_s=1.0, start=False
    )
    yield exchange
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


async def test_commands_answer_alike_in_both_modes(
    mode: Mode, registered: str, shared_worker: str, store: RedisStore
) -> None:
    ex, host = registered, shared_worker
    code, out, err = await run(mode, "start", ex, "--host", host, "--json")
    assert code == 0, err
    started = json.loads(out)
    assert started["fromState"] == "idle" and started["transitions"] == ["starting", "warming", "active"]
    assert started["workflowId"]

    code, out, err = await run(mode, "stop", ex, "--host", host)
    assert code == 0, err
    assert out.strip() == f"{ex}: stop done (active -> stopping -> stopped -> idle)"

    code, out, err = await run(mode, "start", ex, "--host", host, "--no-wait")
    assert code == 0, err
    assert out.startswith(f"{ex}: start sent to ") and "from idle" in out, out

    # Every transition those commands caused names this mode's actor.
    fields = [f for _, f in await store.events(ex) if f["event"] == "state_transition"]
    assert fields and all(f.get("actor", "").startswith(mode.actor) for f in fields), fields


async def test_refusals_are_one_line_with_the_same_exit_code_in_both_modes(
    mode: Mode, registered: str, shared_worker: str, store: RedisStore
) -> None:
    ex, host = registered, shared_worker
    cases = [
        (("stop", ex, "--host", host), 1, "cannot stop: the instance is idle"),
        (("start", "nosuchexchange", "--host", host), 4, "unknown exchange 'nosuchexchange'"),
        (("shutdown", ex, "--host", "no-such-host"), 4, f"{ex} is not registered on host no-such-host"),
        (("handoff", ex, "--to", "nowhere", "--from", host), 1, ""),
    ]
    for n, (args, exit_code, message) in enumerate(cases):
        code, out, err = await run(mode, *args)
        assert code == exit_code and message in err and err.count("\n") == 1 and out == "", (args, code, err)
        if n < 2:  # --json carries the same code (the rest take the same path)
            code, out, _ = await run(mode, *args, "--json")
            assert code == exit_code and json.loads(out)["exitCode"] == exit_code, (args, out)
    refused = [f for _, f in await store.events(ex) if f["event"] == "command_refused"]
    assert refused and all(f["actor"].startswith(mode.actor) and f["reason"] for f in refused), refused
    assert not [f for _, f in await store.events(ex) if f["event"] == "state_transition"]


async def test_actor_is_named_only_by_an_admin_key(mode: Mode, registered: str, shared_worker: str) -> None:
    code, out, err = await run(mode, "start", registered, "--host", shared_worker, "--actor", "someone-else")
    if mode.name == "direct":
        assert code == 2 and "--actor needs API mode with an admin key" in err, err
    else:  # the mode's key is an operate key
        assert code == 1 and "only an admin key may name another actor" in err, err
    assert out == "" and err.count("\n") == 1


async def test_fleet_diff_answers_alike_in_both_modes(
    mode: Mode, registered: str, shared_worker: str, servers: Servers, tmp_path: Path
) -> None:
    env = mode.env
    if mode.name == "api":
        # The fleet file is an admin's: the mode's operate key is refused, an admin key is not.
        code, _, err = await run(mode, "fleet", "diff", str(tmp_path / "none.toml"))
        assert code == 1 and "cannot read the fleet file" in err, err  # read locally first
        conn = await db.connect(servers.database_url)
        async with conn:
            catalog = db.Catalog(db.OneConnection(conn))
            admin = await catalog.create_api_key(f"fleet-{uuid.uuid4().hex[:6]}", scope=Scope.ADMIN)
        good = tmp_path / "ok.toml"
        good.write_text(f'[exchanges.{registered}]\nhosts = ["{shared_worker}"]\nconnector = "simulated"\n')
        code, _, err = await run(mode, "fleet", "diff", str(good))
        assert code == 1 and "needs admin" in err, err
        env = {**mode.env, "PERSEUS_API_KEY": admin}
    as_admin = Mode(mode.name, env, mode.actor)
    good = tmp_path / "fleet.toml"
    good.write_text(f'[exchanges.{registered}]\nhosts = ["{shared_worker}"]\nconnector = "simulated"\n')
    code, out, err = await run(as_admin, "fleet", "diff", str(good), "--json")
    assert code == 0, err
    # A step names the failsafe it differs by (None: it does not: a step of another kind).
    expected = {"kind": "store", "exchange": registered, "host": None, "priority": 0, "failsafe": None}
    assert expected in json.loads(out)
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[exchanges.{registered}]\nhosts = 3\n")
    code, out, err = await run(as_admin, "fleet", "diff", str(bad))
    assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err


async def test_pause_and_resume_answer_alike_in_both_modes(
    mode: Mode, registered: str, store: RedisStore, servers: Servers
) -> None:
    ex = registered
    code, out, err = await run(mode, "pause", ex, "--for", "10m", "--json")
    assert code == 0, err
    paused = json.loads(out)
    assert paused["paused"] is True and paused["actor"].startswith(mode.actor) and paused["pausedUntil"]
    ex_id = await exchange_id(servers, ex)
    assert await store.client.get(f"exchange:{ex_id}:pause") is not None

    code, out, err = await run(mode, "resume", ex)
    assert code == 0, err
    assert out.strip() == f"{ex} resumed: automatic failover is back"
    # Nothing to resume: one line, exit 1 (a refused transition), nothing written.
    before = await store.events(ex)
    code, out, err = await run(mode, "resume", ex)
    assert code == 1 and err.strip() == f"error: {ex} is not paused", err
    assert await store.events(ex) == before
    kinds = [
        (f["event"], f.get("actor", ""))
        for _, f in await store.events(ex)
        if f["event"] in ("paused", "resumed")
    ]
    assert [k for k, _ in kinds] == ["resumed", "paused"] and all(a.startswith(mode.actor) for _, a in kinds)
