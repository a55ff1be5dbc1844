"""The process connector under the real workflow: real child processes (tests/connectors/child.py),
real workers, Redis, PostgreSQL and Temporal. Heartbeat interval 0.5 s: renew deadline 1 s, TTL 1.5 s."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
from datetime import datetime
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from perseus.client import control
from perseus.connectors.process import output_dir, output_path
from perseus.core.lifecycle import Command
from perseus.errors import ClaimConflict, PerseusError
from perseus.keys import status_key, workflow_id
from perseus.models import ConnectorSpec
from perseus.store.redis_store import RedisStore
from perseus.timing import renew_deadline_s
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.connectors.support import alive, child_command, free_port, gone_within, journal
from tests.integration.helpers import active_on, events, host_name, start_workers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL = 0.5


def spec(*args: str, **fields: object) -> ConnectorSpec:
    return ConnectorSpec.model_validate(
        {"kind": "process", "command": child_command(*args), "ready_line": "READY", **fields}
    )


async def register(
    client: Client,
    exchange: str,
    host: str,
    connector: ConnectorSpec,
    *,
    start: bool = False,
    standby: bool = False,
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=INTERVAL,
        start=start,
        standby=standby,
        connector=connector,
    )


async def run(client: Client, exchange: str, host: str, command: Command) -> list[str]:
    result = await control.command(client, exchange=exchange, host=host, default_host=host, command=command)
    return [s.value for s in result.transitions]


async def status(store: RedisStore, ex_id: int) -> dict[str, object]:
    raw, _ = await store.raw_status(ex_id)
    return json.loads(raw) if raw else {}


def starts(path: Path) -> list[dict[str, object]]:
    return [e for e in journal(path) if e["event"] == "start"]


async def test_register_exec_from_the_cli_ready_by_line_output_and_stop(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    host = host_name("px")
    await start_workers(servers, worker_processes, host)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    command = shlex.join(child_command("--ready-after", "0.3", "--journal", str(log)))
    result = await asyncio.to_thread(
        perseus, servers, "register", exchange, "--host", host, "--heartbeat-interval", str(INTERVAL),
        "--exec", command, "--ready-line", r"READY\b", "--ready-timeout", "20", "--stop-grace", "2",
        "--start",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = await wait_for(lambda: active_on(store, ex_id, host))
    (start,) = starts(log)
    assert start["env"] == {
        "PERSEUS_EXCHANGE": exchange,
        "PERSEUS_EXCHANGE_ID": str(ex_id),
        "PERSEUS_EPOCH": str(doc["epoch"]),
        "PERSEUS_INSTANCE_ID": doc["instanceId"],
        "PERSEUS_WORKFLOW_ID": workflow_id(exchange, host),
        "PERSEUS_SYMBOLS": "BTC-USD,ETH-USD,SOL-USD",
        "PERSEUS_ROLE": "active",
    }
    assert doc["symbolCount"] == 3
    shown = await asyncio.to_thread(perseus, servers, "output", exchange, "--host", host, "--lines", "50")
    assert shown.returncode == 0, shown.stderr
    assert "connector READY to serve" in shown.stdout and f"epoch {doc['epoch']}" in shown.stdout
    as_json = await asyncio.to_thread(perseus, servers, "output", exchange, "--host", host, "--json")
    assert json.loads(as_json.stdout)["lines"][-1].endswith("active")

    stopped = await asyncio.to_thread(perseus, servers, "stop", exchange, "--host", host)
    assert stopped.returncode == 0, stopped.stderr
    pid = start["pid"]
    assert isinstance(pid, int) and not alive(pid)  # gone before `stop` answered
    assert [e["event"] for e in journal(log)] == ["start", "term"]
    assert (await status(store, ex_id))["connectionState"] == "idle"
    await run(client, exchange, host, Command.SHUTDOWN)


async def test_cli_refuses_bad_exec_options(servers: Servers, exchange: str) -> None:
    cases = {
        ("--exec", "x", "--ready-line", "up", "--ready-url", "http://127.0.0.1:1/"): "exclude each other",
        ("--exec", "x", "--ready-line", "(oops"): "--ready-line: not a regular expression",
        ("--exec", "x", "--ready-url", "127.0.0.1:8080"): "--ready-url: not an http(s) URL",
        ("--exec", "'unclosed"): "--exec: cannot split the command",
        ("--exec", "x", "--stop-grace", "60"): "--stop-grace",
        ("--ready-line", "up"): "only with --exec",
        ("--exec", "x", "--restart", "always"): "--restart must be one of no, on-failure",
    }
    for args, expected in cases.items():
        result = await asyncio.to_thread(perseus, servers, "register", exchange, "--host", "nowhere", *args)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


async def test_ready_by_url(
    shared_worker: str, client: Client, store: RedisStore, exchange: str, servers: Servers
) -> None:
    host = shared_worker
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    connector = spec("--http", str(port), "--ready-after", "0.5", ready_line=None, ready_url=url)
    await register(client, exchange, host, connector)
    assert await run(client, exchange, host, Command.START) == ["starting", "warming", "active"]
    assert await run(client, exchange, host, Command.SHUTDOWN) == ["stopping", "stopped"]


async def test_not_ready_in_time_is_recorded_once_and_the_child_stopped(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    host = shared_worker
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    never_ready = spec("--ready-after", "-1", "--journal", str(log), ready_timeout_s=1)
    await register(client, exchange, host, never_ready)
    try:
        with pytest.raises(PerseusError, match=r"start failed: .*not ready within 1s \(waited for a line"):
            await run(client, exchange, host, Command.START)
        (start,) = starts(log)  # not retried: one child, one error
        assert isinstance(start["pid"], int) and not alive(start["pid"])
        doc = await status(store, ex_id)
        assert doc["connectionState"] == "idle" and "not ready within 1s" in str(doc["lastError"])
        got = [(e["event"], e.get("toState")) for e in await events(store, exchange)]
        assert got == [
            ("state_transition", "starting"),
            ("state_transition", "warming"),
            ("error", None),
            ("state_transition", "idle"),
        ]
    finally:
        await run(client, exchange, host, Command.SHUTDOWN)


async def test_crash_while_active_is_recorded_and_restarted_on_failure(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    host = shared_worker
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    crash = spec(
        "--exit-after", "1", "--code", "3", "--crash-once", str(tmp_path / "crashed"), "--journal", str(log),
        restart="on-failure", restart_backoff_s=0.5,
    )  # fmt: skip
    await register(client, exchange, host, crash)
    try:
        assert await run(client, exchange, host, Command.START) == ["starting", "warming", "active"]

        async def restarted() -> bool:
            transitions = [e["toState"] for e in await events(store, exchange) if "toState" in e]
            return len(starts(log)) == 2 and len(transitions) == 9

        await wait_for(restarted)
        first, second = starts(log)
        assert isinstance(first["pid"], int) and not alive(first["pid"])
        assert isinstance(second["pid"], int) and alive(second["pid"])
        got = [(e["event"], e.get("toState") or e.get("error", "")) for e in await events(store, exchange)]
        error = next(detail for kind, detail in got if kind == "error")
        assert "exited with code 3" in error and "fatal: lost the exchange websocket" in error
        assert "traceback: boom" in error
        assert [d for k, d in got if k == "state_transition"] == [
            "starting", "warming", "active", "stopping", "stopped", "idle", "starting", "warming", "active",
        ]  # fmt: skip
        assert "exited with code 3" in str((await status(store, ex_id))["lastError"])
    finally:
        await run(client, exchange, host, Command.SHUTDOWN)


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_before_stopped(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    host = shared_worker
    log = tmp_path / "journal"
    await register(client, exchange, host, spec("--ignore-term", "--journal", str(log), stop_grace_s=1))
    await run(client, exchange, host, Command.START)
    (start,) = starts(log)
    pid = start["pid"]
    assert isinstance(pid, int)
    assert await run(client, exchange, host, Command.STOP) == ["stopping", "stopped", "idle"]
    assert not alive(pid)
    assert [e["event"] for e in journal(log)] == ["start", "term"]  # it was asked first
    lines = output_path(output_dir(shared_worker_data_dir(servers)), workflow_id(exchange, host)).read_text()
    killed = next(line for line in lines.splitlines() if "killed by signal SIGKILL" in line)
    killed_at = datetime.fromisoformat(killed.split("]")[0].removeprefix("[perseus ").replace("Z", "+00:00"))
    stopped = next(e for e in await events(store, exchange) if e.get("toState") == "stopped")
    assert killed_at <= datetime.fromisoformat(stopped["timestamp"].replace("Z", "+00:00"))
    await run(client, exchange, host, Command.SHUTDOWN)


def shared_worker_data_dir(servers: Servers) -> Path:
    return servers.data_dir / "perseus"  # the `settings` fixture's data dir, used by shared_worker


async def test_claim_lost_kills_the_child_within_a_second(
    servers: Servers, shared_worker: str, client: Client, store: RedisStore, exchange: str, tmp_path: Path
) -> None:
    host = shared_worker
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    await register(client, exchange, host, spec("--journal", str(log), stop_grace_s=10))
    await run(client, exchange, host, Command.START)
    (start,) = starts(log)
    pid = start["pid"]
    assert isinstance(pid, int) and alive(pid)
    doc = await status(store, ex_id)
    thief = {**doc, "instanceId": "thief", "epoch": int(str(doc["epoch"])) + 1, "hostname": "elsewhere"}
    await store.client.set(status_key(ex_id), json.dumps(thief), px=int(3 * INTERVAL * 1000))
    assert await gone_within(pid, 1.0)
    assert [e["event"] for e in journal(log)] == ["start"]  # no SIGTERM, no grace: killed outright
    handle = client.get_workflow_handle(workflow_id(exchange, host))
    assert "claim lost" in str(await asyncio.wait_for(handle.result(), 30))


async def test_worker_killed_takes_the_child_within_the_renew_deadline(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    host = host_name("pk9")
    (worker,) = await start_workers(servers, worker_processes, host)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    await register(client, exchange, host, spec("--journal", str(log)), start=True)
    await wait_for(lambda: active_on(store, ex_id, host))
    (start,) = starts(log)
    pid = start["pid"]
    assert isinstance(pid, int) and alive(pid)
    worker.signal(signal.SIGKILL)
    assert await gone_within(pid, renew_deadline_s(INTERVAL))
    assert [e["event"] for e in journal(log)] == ["start"]


async def test_never_two_children_for_one_exchange_across_two_hosts(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """Every child takes an exclusive flock on one file: a second child running at the same time
    would find it taken and journal ``double``. A conflict, then two crash failovers, A → B → A."""
    a, b = host_name("pa"), host_name("pb")
    procs = await start_workers(servers, worker_processes, a, b)
    ex_id = await exchange_id(servers, exchange)
    log = tmp_path / "journal"
    connector = spec("--journal", str(log), "--lock", str(tmp_path / "exchange.lock"), stop_grace_s=2)
    await register(client, exchange, a, connector, start=True)
    await wait_for(lambda: active_on(store, ex_id, a))
    with pytest.raises(ClaimConflict):
        await register(client, exchange, b, connector, start=True)

    def closed(host: str):
        async def check() -> bool:
            described = await client.get_workflow_handle(workflow_id(exchange, host)).describe()
            return described.status != WorkflowExecutionStatus.RUNNING

        return check

    await wait_for(closed(b))
    assert len(starts(log)) == 1  # the refused instance started nothing
    await register(client, exchange, b, connector, standby=True)

    procs[0].signal(signal.SIGKILL)  # a dies: b takes over
    await wait_for(lambda: active_on(store, ex_id, b))
    (a_again,) = await start_workers(servers, worker_processes, a)
    await wait_for(closed(a))  # a's old instance was lost and has ended
    await register(client, exchange, a, connector, standby=True)
    procs[1].signal(signal.SIGKILL)  # b dies: a, now the standby, takes over
    await wait_for(lambda: active_on(store, ex_id, a))

    entries = journal(log)
    assert not [e for e in entries if e["event"] == "double"], entries
    hosts = [str(e["env"]["PERSEUS_WORKFLOW_ID"]) for e in starts(log)]  # type: ignore[index]
    assert hosts == [workflow_id(exchange, h) for h in (a, b, a)]
    epochs = [int(e["env"]["PERSEUS_EPOCH"]) for e in starts(log)]  # type: ignore[index]
    assert epochs == sorted(epochs) and len(set(epochs)) == 3
    assert sum(alive(int(e["pid"])) for e in starts(log)) == 1  # type: ignore[call-overload]
    await run(client, exchange, a, Command.SHUTDOWN)
    assert a_again.proc.poll() is None


async def test_a_host_runs_only_what_its_exec_allow_list_permits(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """PERSEUS_EXEC_ALLOW: the host refuses a command no rule permits (nothing is spawned: an error
    event names the host and the list), and runs one its prefix rule permits."""
    allow = tmp_path / "exec.allow"
    allow.write_text(f"# this test's child, with any arguments\n{shlex.join(child_command())} *\n")
    host = host_name("allow")
    proc = WorkerProcess(servers, host, PERSEUS_EXEC_ALLOW=str(allow))
    worker_processes.append(proc)
    await proc.ready()
    assert f"host {host} runs only the 1 command rule(s) of {allow}" in proc.log.read_text()
    ex_id = await exchange_id(servers, exchange)
    marker = tmp_path / "ran"
    refused = ConnectorSpec(kind="process", command=["/usr/bin/touch", str(marker)])
    await register(client, exchange, host, refused)
    with pytest.raises(PerseusError, match=f"host {host} refuses to run /usr/bin/touch"):
        await run(client, exchange, host, Command.START)
    assert not marker.exists()  # nothing ran
    errors = [e["error"] for e in await events(store, exchange) if e["event"] == "error"]
    assert any(f"host {host} refuses to run" in e and f"exec allow-list ({allow})" in e for e in errors)
    assert (await status(store, ex_id))["connectionState"] == "idle"
    await run(client, exchange, host, Command.SHUTDOWN)

    log = tmp_path / "journal"
    await register(client, exchange, host, spec("--journal", str(log)), start=True)
    try:
        await wait_for(lambda: active_on(store, ex_id, host))
        assert len(starts(log)) == 1
    finally:
        await run(client, exchange, host, Command.SHUTDOWN)
