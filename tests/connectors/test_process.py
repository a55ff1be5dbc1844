"""The process connector on its own, with real child processes (no servers): readiness by line and
by URL, timeouts, crashes, SIGTERM then SIGKILL, the emergency brake, process groups, output files."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from perseus.connectors.factory import ConnectorContext, build_connector
from perseus.connectors.process import (
    OutputLog,
    ProcessConnector,
    output_path,
    read_output,
)
from perseus.errors import ConnectorNotReady
from perseus.models import Claim, ConnectorSpec
from tests.connectors.support import alive, child_command, free_port, gone_within, journal


def make(tmp_path: Path, *args: str, **spec: object) -> ProcessConnector:
    full = ConnectorSpec.model_validate({"kind": "process", "command": child_command(*args), **spec})
    context = ConnectorContext(
        workflow_id="instance-tx_demo-h1",
        exchange_id=42,
        exchange_name="tx_demo",
        claim=Claim(instance_id="inst-1", epoch=7),
        log_dir=tmp_path / "connectors",
    )
    connector = build_connector("tx_demo", full, context)
    assert isinstance(connector, ProcessConnector)
    return connector


@pytest.mark.unit
def test_spec_validation_gives_clear_errors() -> None:
    ok = ConnectorSpec(kind="process", command="python -u 'my connector.py' --fast")
    assert ok.command == ["python", "-u", "my connector.py", "--fast"]
    cases = {
        "needs a command": dict(kind="process", command=""),
        "not a regular expression": dict(kind="process", command="x", ready_line="(unclosed"),
        "not an http(s) URL": dict(kind="process", command="x", ready_url="localhost:8080/health"),
        "exclude each other": dict(kind="process", command="x", ready_line="up", ready_url="http://h/"),
        "No closing quotation": dict(kind="process", command="x 'y"),
        "need kind 'process'": dict(command="x"),
        "less than or equal to 10": dict(kind="process", command="x", stop_grace_s=60),
    }
    for expected, fields in cases.items():
        with pytest.raises(ValidationError, match=re.escape(expected)):
            ConnectorSpec.model_validate(fields)


@pytest.mark.integration
async def test_ready_by_line_with_the_environment_and_output_file(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    connector = make(
        tmp_path, "--ready-after", "0.3", "--journal", str(log), ready_line=r"READY\b", stop_grace_s=2
    )
    assert await connector.prepare(["BTC-USD", "ETH-USD"]) == 2
    await connector.warm_up()
    await connector.connect()
    assert connector.connected and connector.failure() is None
    (start,) = journal(log)
    assert start["env"] == {
        "PERSEUS_EXCHANGE": "tx_demo",
        "PERSEUS_EXCHANGE_ID": "42",
        "PERSEUS_EPOCH": "7",
        "PERSEUS_INSTANCE_ID": "inst-1",
        "PERSEUS_WORKFLOW_ID": "instance-tx_demo-h1",
        "PERSEUS_SYMBOLS": "BTC-USD,ETH-USD",
        "PERSEUS_ROLE": "active",
    }
    pid = connector.pid
    assert pid is not None and alive(pid)
    await connector.disconnect("stop requested")
    assert not alive(pid) and not connector.connected
    assert [e["event"] for e in journal(log)] == ["start", "term"]  # SIGTERM first, and it obeyed
    assert connector.failure() is None  # a stop we asked for is no failure
    await connector.disconnect("stop requested")  # idempotent
    assert connector.output_path is not None
    text = connector.output_path.read_text()
    assert "connector READY to serve" in text and "got SIGTERM, bye" in text
    assert "[perseus " in text and "exited with code 0" in text


@pytest.mark.integration
async def test_ready_by_url(tmp_path: Path) -> None:
    port = free_port()
    connector = make(
        tmp_path, "--http", str(port), "--ready-after", "0.5", ready_url=f"http://127.0.0.1:{port}/health"
    )
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    assert connector.connected
    await connector.disconnect("stop requested")


@pytest.mark.integration
@pytest.mark.parametrize("by", ["line", "url"])
async def test_not_ready_in_time_stops_the_child(tmp_path: Path, by: str) -> None:
    port = free_port()
    how: dict[str, object] = (
        {"ready_line": "READY"} if by == "line" else {"ready_url": f"http://127.0.0.1:{port}/health"}
    )
    connector = make(tmp_path, "--http", str(port), "--ready-after", "-1", ready_timeout_s=0.8, **how)
    await connector.prepare([])
    pid = connector.pid
    assert pid is not None
    with pytest.raises(ConnectorNotReady, match=r"not ready within 0.8s") as info:
        await connector.warm_up()
    assert ("/READY/" if by == "line" else "HTTP 503") in str(info.value)
    assert "last output: child" in str(info.value)
    assert not info.value.retryable
    assert not alive(pid)


@pytest.mark.integration
async def test_exit_before_ready_is_reported_with_code_and_output(tmp_path: Path) -> None:
    args = ("--ready-after", "-1", "--exit-after", "0.1", "--code", "2")
    connector = make(tmp_path, *args, ready_line="READY")
    await connector.prepare([])
    with pytest.raises(ConnectorNotReady, match="exited with code 2 before it was ready") as info:
        await connector.warm_up()
    assert "lost the exchange websocket" in str(info.value) and "traceback: boom" in str(info.value)


@pytest.mark.integration
async def test_crash_while_active_is_a_failure_with_code_and_tail(tmp_path: Path) -> None:
    connector = make(tmp_path, "--exit-after", "0.5", "--code", "3", ready_line="READY")
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    for _ in range(200):
        if connector.failure():
            break
        await asyncio.sleep(0.02)
    why = connector.failure()
    assert why is not None and "exited with code 3" in why
    assert "fatal: lost the exchange websocket, exiting with 3 | traceback: boom" in why
    assert not connector.connected
    await connector.disconnect(why)


@pytest.mark.integration
async def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    connector = make(tmp_path, "--ignore-term", "--journal", str(log), ready_line="READY", stop_grace_s=0.5)
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    pid = connector.pid
    assert pid is not None
    await connector.disconnect("stop requested")
    assert not alive(pid)  # disconnect returned only once it was gone
    assert [e["event"] for e in journal(log)] == ["start", "term"]  # it saw SIGTERM, ignored it
    assert connector.output_path is not None
    text = connector.output_path.read_text()
    assert "got SIGTERM, ignoring it" in text and "SIGKILL" in text and "killed by signal SIGKILL" in text


@pytest.mark.integration
@pytest.mark.parametrize("reason", ["claim lost", "renew deadline passed"])
async def test_claim_lost_kills_at_once_without_grace(tmp_path: Path, reason: str) -> None:
    log = tmp_path / "journal"
    connector = make(tmp_path, "--journal", str(log), ready_line="READY", stop_grace_s=10)
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    pid = connector.pid
    assert pid is not None
    await asyncio.wait_for(connector.disconnect(reason, at_once=True), 1.0)  # not the 10 s grace
    assert not alive(pid)
    assert [e["event"] for e in journal(log)] == ["start"]  # no SIGTERM: killed outright


@pytest.mark.integration
async def test_whatever_it_forked_goes_with_its_process_group(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    connector = make(tmp_path, "--spawn-grandchild", "--journal", str(log), ready_line="READY")
    await connector.prepare([])
    await connector.warm_up()
    grandchild = next(e for e in journal(log) if e["event"] == "grandchild")["grandchild"]
    assert isinstance(grandchild, int) and alive(grandchild)
    await connector.disconnect("stop requested")
    assert await gone_within(grandchild, 2.0)


@pytest.mark.integration
async def test_a_missing_program_is_a_clear_non_retryable_error(tmp_path: Path) -> None:
    spec = ConnectorSpec(kind="process", command="/nonexistent/connector --flag")
    connector = build_connector(
        "tx_demo", spec, ConnectorContext(workflow_id="w", exchange_id=1, exchange_name="tx_demo")
    )
    with pytest.raises(ConnectorNotReady, match="cannot start the tx_demo connector '/nonexistent/conn"):
        await connector.prepare([])
    await connector.disconnect("cleanup")


@pytest.mark.integration
async def test_output_rotates_and_the_last_lines_read_across_files(tmp_path: Path) -> None:
    connector = make(tmp_path, "--spam", "400", ready_line="READY", log_max_bytes=8192, log_backups=2)
    await connector.prepare([])
    await connector.warm_up()
    await connector.disconnect("stop requested")
    path = connector.output_path
    assert path is not None
    assert path.with_name(path.name + ".1").exists() and path.with_name(path.name + ".2").exists()
    assert not path.with_name(path.name + ".3").exists()
    assert all(p.stat().st_size <= 8192 for p in path.parent.iterdir())
    last = read_output(path, 150)
    assert len(last) == 150
    assert last[-1].startswith("[perseus ") and "exited with code 0" in last[-1]
    spam = [line for line in last if line.startswith("spam line")]
    numbers = [int(line.split()[2]) for line in spam]
    assert numbers == list(range(numbers[0], 400))  # contiguous, newest last


@pytest.mark.unit
def test_output_log_without_backups_truncates(tmp_path: Path) -> None:
    path = output_path(tmp_path, "instance-x-h")
    out = OutputLog(path, max_bytes=4096, backups=0)
    for n in range(100):
        out.write(f"line {n} {'y' * 100}\n".encode())
    out.close()
    assert list(tmp_path.iterdir()) == [path] and path.stat().st_size <= 4096
    assert read_output(path, 1) == [f"line 99 {'y' * 100}"]


@pytest.mark.integration
async def test_pdeathsig_kills_the_child_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor process (the role the worker plays) is SIGKILLed: its child dies with it."""
    log = tmp_path / "journal"
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.connectors.test_process import make
from pathlib import Path
async def main():
    c = make(Path({str(tmp_path)!r}), "--journal", {str(log)!r}, ready_line="READY")
    await c.prepare([])
    await c.warm_up()
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert supervisor.stdout is not None
    assert await asyncio.wait_for(supervisor.stdout.readline(), 20) == b"up\n"
    child = journal(log)[0]["pid"]
    assert isinstance(child, int) and alive(child)
    os.kill(supervisor.pid, signal.SIGKILL)
    await supervisor.wait()
    assert await gone_within(child, 1.0)


@pytest.mark.integration
async def test_pipes_close_when_a_detached_grandchild_keeps_the_output_open(tmp_path: Path) -> None:
    """The child exits but left a process in its own session holding stdout: the pipe never reaches
    end-of-file, so the connector closes it itself (else the output task and transport live forever)."""
    spec = ConnectorSpec(kind="process", command=["sh", "-c", "setsid sleep 30 & echo held by $!"])
    context = ConnectorContext(workflow_id="instance-tx_pipe-h1", exchange_id=43, exchange_name="tx_pipe")
    connector = build_connector("tx_pipe", spec, context)
    assert isinstance(connector, ProcessConnector)
    await connector.prepare([])
    held_by = 0
    try:
        await asyncio.wait_for(connector._exited.wait(), 10)
        held_by = int(connector.tail()[0].split()[-1])
        assert alive(held_by)  # the pipe's other end is still open
        assert connector._pump_task is not None
        await asyncio.wait_for(asyncio.shield(connector._pump_task), 5)  # the read saw end-of-file
        assert connector._proc is not None and connector._proc._transport.is_closing()  # type: ignore[attr-defined]
    finally:
        await connector.disconnect("test over")
        if held_by:
            os.kill(held_by, signal.SIGKILL)
