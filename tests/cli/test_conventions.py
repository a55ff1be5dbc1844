"""The command line's conventions, through the real ``perseus`` app: version, completion, help that
shows flags as flags, exit codes (0 ok, 1 refused, 2 usage, 3 unreachable, 4 not found), JSON errors,
data never read as markup, hints checked against the catalog, and list filters that data cannot
break out of."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from temporalio.client import Client
from typer.main import get_command
from typer.testing import CliRunner

from perseus.cli.app import app
from perseus.core.lifecycle import State
from perseus.errors import ConfigError
from perseus.keys import iso, status_key
from perseus.models import InstanceStatus
from perseus.store import db
from perseus.store.redis_store import RedisStore
from perseus.temporal import filter_literal, instances_filter
from tests.conftest import PERSEUS, ROOT, Servers, exchange_id, perseus

pytestmark = pytest.mark.integration

runner = CliRunner()


def one_line_error(stderr: str) -> str:
    """The stderr of a refusal: exactly one line starting with ``error:``, no traceback."""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    return stderr


def json_error(stdout: str, code: int, type_name: str) -> str:
    body = json.loads(stdout)
    assert body["exitCode"] == code and body["type"] == type_name, body
    assert isinstance(body["error"], str) and "\n" not in body["error"]
    return str(body["error"])


def commands(group: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the app (``("db", "init")``, ``("start",)``, …)."""
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.unit
def test_version_completion_and_help_show_flags_as_flags() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("perseus ") and result.stdout.count("\n") == 1

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout
    script = runner.invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0 and "complete" in script.stdout and "perseus" in script.stdout

    paths = list(commands(get_command(app)))
    assert {("start",), ("stop",), ("shutdown",), ("handoff",), ("log",), ("db", "init")} <= set(paths)
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.stderr)
        assert "<bool>" not in shown.stdout, (path, shown.stdout)  # a flag takes no value
    start = runner.invoke(app, ["start", "--help"]).stdout
    assert "--wait / --no-wait" in start and "--timeout SECONDS" in start and "--json " in start
    for waiting in ("register", "stop", "shutdown", "handoff"):
        assert "--timeout SECONDS" in runner.invoke(app, [waiting, "--help"]).stdout, waiting


@pytest.mark.unit
def test_usage_errors_exit_2_and_answer_in_json_too() -> None:
    result = runner.invoke(app, ["start"])
    assert result.exit_code == 2 and "Missing argument 'EXCHANGE'" in result.stderr

    # Through the real entry point, so that the usage error is handled where the process exits.
    missing = subprocess.run(
        [PERSEUS, "start", "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert missing.returncode == 2
    assert "Missing argument" in json_error(missing.stdout, 2, "MissingParameter")

    # A value Perseus itself refuses is usage too, before any server is asked.
    result = runner.invoke(
        app, ["stop", "anything", "--timeout", "0", "--json"], env={"TEMPORAL_ADDRESS": "127.0.0.1:1"}
    )
    assert result.exit_code == 2
    assert json_error(result.stdout, 2, "ConfigError") == (
        "--timeout must be greater than 0 and at most 86400 seconds, got 0"
    )
    one_line_error(result.stderr)


def test_unreachable_servers_exit_3_naming_the_server_and_the_way_to_reach_it(servers: Servers) -> None:
    # Temporal down: one line, never the SDK's tonic::transport dump.
    result = perseus(servers, "start", "coinbase", "--host", "h1", TEMPORAL_ADDRESS="127.0.0.1:1")
    assert result.returncode == 3 and result.stdout == ""
    line = one_line_error(result.stderr)
    assert "Temporal unreachable at 127.0.0.1:1 (connection refused)" in line
    assert "`perseus dev`" in line and "TEMPORAL_ADDRESS" in line and "tonic" not in line

    # Redis down: the handoff reads the status key to find the active instance.
    result = perseus(
        servers, "handoff", "coinbase", "--to", "h2", "--json", PERSEUS_REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert result.returncode == 3
    message = json_error(result.stdout, 3, "ServiceUnavailable")
    assert message.startswith("Redis unreachable") and "PERSEUS_REDIS_URL" in message
    assert message in one_line_error(result.stderr)

    invoked = runner.invoke(
        app, ["exchanges", "--json"], env={"PERSEUS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    )
    assert invoked.exit_code == 3
    message = json_error(invoked.stdout, 3, "ServiceUnavailable")
    assert message.startswith("PostgreSQL unreachable") and "PERSEUS_DATABASE_URL" in message


def test_not_found_exits_4_and_hints_only_name_catalog_exchanges(servers: Servers, exchange: str) -> None:
    env = servers.env()
    for args in (["start", "nope"], ["stop", "nope", "--no-wait"], ["handoff", "nope", "--to", "h"]):
        invoked = runner.invoke(app, args, env=env)
        assert invoked.exit_code == 4, (args, invoked.stderr)
        line = one_line_error(invoked.stderr)
        assert "unknown exchange 'nope'; known exchanges: coinbase" in line
        assert "register" not in line  # no hint to register what cannot be registered

    # A known exchange that nothing runs: now the hint to register it is right.
    result = perseus(servers, "start", exchange, "--host", "h-none", "--json")
    assert result.returncode == 4
    message = json_error(result.stdout, 4, "NotRegistered")
    assert message == (
        f"{exchange} is not registered on host h-none: run perseus register {exchange} --host h-none"
    )
    invoked = runner.invoke(app, ["handoff", exchange, "--to", "h-none"], env=env)
    assert invoked.exit_code == 4 and "no instance holds" in one_line_error(invoked.stderr)


def test_data_is_never_read_as_markup(servers: Servers) -> None:
    # None of these can be an exchange name: refused as usage (2) before any lookup, printed as is.
    for name in ("foo[/b]", "[bold]x[/bold]", "o'neil"):
        invoked = runner.invoke(app, ["start", name], env=servers.env())
        assert invoked.exit_code == 2, (name, invoked.stderr, invoked.exception)
        assert f"invalid exchange name {name!r}" in one_line_error(invoked.stderr)
    result = perseus(servers, "start", "foo[/b]")
    assert result.returncode == 2 and "'foo[/b]'" in one_line_error(result.stderr)


async def test_list_filters_escape_data_and_refuse_odd_names(servers: Servers, client: Client) -> None:
    # The literal survives the server's parser whatever it holds, and matches nothing.
    for nasty in ("o'neil", "x' OR ExchangeName != '", "back\\slash\\", "''"):
        query = f"ExchangeName = {filter_literal(nasty)} AND ExecutionStatus = 'Running'"
        assert [wf.id async for wf in client.list_workflows(query, limit=5)] == []
    with pytest.raises(ConfigError, match="invalid exchange name"):
        instances_filter("x' OR '1'='1")

    # A catalog name with a quote is refused in one line before any list filter is sent.
    name = f"q'{uuid.uuid4().hex[:6]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("INSERT INTO exchanges (name, display_name) VALUES (%s, %s)", (name, "Q"))
        try:
            result = await asyncio.to_thread(perseus, servers, "stop", name, "--json")
        finally:
            await conn.execute("DELETE FROM exchanges WHERE name = %s", (name,))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert json_error(result.stdout, 2, "ConfigError").startswith(f"invalid exchange name {name!r}")
    one_line_error(result.stderr)


async def test_a_stored_error_with_markup_is_shown_as_it_is(
    servers: Servers, store: RedisStore, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    now = iso(datetime.now(UTC))
    record = InstanceStatus(
        exchange_id=ex_id,
        exchange_name=exchange,
        hostname="h-markup",
        connection_state=State.IDLE,
        last_heartbeat=now,
        last_state_change=now,
        registered_at=now,
        last_error="child said [/bold] and [red]",
        instance_id="i-markup",
        epoch=1,
        workflow_id=f"instance-{exchange}-h-markup",
        heartbeat_interval_ms=10_000,
        ttl_ms=30_000,
    )
    await store.client.set(status_key(ex_id), json.dumps(record.wire()), px=30_000)
    try:
        result = await asyncio.to_thread(perseus, servers, "status", exchange, COLUMNS="250")
    finally:
        await store.client.delete(status_key(ex_id))
    assert result.returncode == 0, result.stderr
    assert "child said [/bold] and [red]" in result.stdout and "Traceback" not in result.stderr
