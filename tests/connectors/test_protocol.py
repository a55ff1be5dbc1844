"""Connectors that prove they work (DESIGN §2.9), with real children: health probed while active,
the child's ``PERSEUS`` report lines, warm standby ACTIVATE / ACTIVE / DEACTIVATE; and the simulated
connector's same modes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from perseus.connectors.factory import ConnectorContext, build_connector
from perseus.connectors.process import ProcessConnector
from perseus.connectors.simulated import SimulatedConnector
from perseus.core.lifecycle import Role
from perseus.errors import ConnectorError, ConnectorNotActive
from perseus.models import Claim, ConnectorSpec
from tests.connectors.support import alive, child_command, free_port, journal

T = TypeVar("T")


def make(
    tmp_path: Path, *args: str, role: Role = Role.ACTIVE, interval: float = 15.0, **spec: object
) -> ProcessConnector:
    full = ConnectorSpec.model_validate({"kind": "process", "command": child_command(*args), **spec})
    claim = (
        Claim(instance_id="standby-1", epoch=0)
        if role is Role.STANDBY
        else Claim(instance_id="inst-1", epoch=7)
    )
    context = ConnectorContext(
        workflow_id="instance-tx_demo-h1",
        exchange_id=42,
        exchange_name="tx_demo",
        claim=claim,
        log_dir=tmp_path / "connectors",
        role=role,
        heartbeat_interval_s=interval,
    )
    connector = build_connector("tx_demo", full, context)
    assert isinstance(connector, ProcessConnector)
    return connector


async def until(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_a_health_url_that_stops_answering_makes_it_unhealthy_with_its_policy(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "journal"
    connector = make(
        tmp_path,
        *("--http", str(port), "--hang-health-after", "1.0", "--journal", str(log)),
        interval=0.2,
        ready_line="READY",
        health_url=f"http://127.0.0.1:{port}/health",
        health_failures=3,
        on_unhealthy="failover",
    )
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    assert connector.fault() is None
    # Probes pass first (healthy), then the child stops answering: three timeouts in a row.
    await until(lambda: connector.health().healthy)
    await asyncio.wait_for(connector.faulted.wait(), 10)  # what the lease can wait on between beats
    fault = connector.fault()
    assert fault is not None and fault.kind == "unhealthy" and fault.policy == "failover"
    assert "3 health checks failed in a row" in fault.reason and "ReadTimeout" in fault.reason
    assert connector.failure() == fault.reason  # the text-only view the lease used so far
    health = connector.health()
    assert health.healthy is False and health.last_health_at is not None
    assert any(e["event"] == "health_hangs" for e in journal(log))
    await connector.disconnect(fault.reason)
    assert connector._health_task is None  # the probe task went with the connector
    assert connector.fault() is None  # stopped on purpose now


@pytest.mark.integration
async def test_a_child_killed_by_sigkill_says_when_and_one_that_exits_does_not(tmp_path: Path) -> None:
    """The keeper tells the watchdog's kill at a claim's deadline from a crash by when the child was
    seen dead of SIGKILL; a child that exits on its own carries no such time."""
    killed = make(tmp_path / "killed")
    await killed.prepare([])
    await killed.warm_up()
    await killed.connect()
    pgid = killed.process_group()
    assert pgid is not None
    before = time.monotonic()
    os.killpg(pgid, signal.SIGKILL)  # what the watchdog does at a deadline
    fault = await until(killed.fault)
    assert fault.kind == "crashed" and "SIGKILL" in fault.reason
    assert fault.killed_at is not None and before <= fault.killed_at <= time.monotonic()
    await killed.disconnect(fault.reason)

    exits = make(tmp_path / "exits", "--exit-after", "0.3")
    await exits.prepare([])
    await exits.warm_up()
    await exits.connect()
    fault = await until(exits.fault)
    assert "exited with code 3" in fault.reason and fault.killed_at is None
    await exits.disconnect(fault.reason)


@pytest.mark.integration
async def test_the_ready_url_is_the_default_health_url_and_a_healthy_child_stays_fine(tmp_path: Path) -> None:
    port = free_port()
    connector = make(tmp_path, "--http", str(port), interval=0.1, ready_url=f"http://127.0.0.1:{port}/health")
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    first = await until(lambda: connector.health().last_health_at)
    await until(lambda: (h := connector.health().last_health_at) is not None and h > first)
    assert connector.health().healthy is True and connector.fault() is None
    await connector.disconnect("stop requested")


@pytest.mark.integration
async def test_report_lines_are_reflected_in_health(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    says = [
        "PERSEUS symbols=3",
        "PERSEUS error=lost the websocket\x07 to wss://stream",
        "PERSEUS health=degraded slow candles",
        "PERSEUS bogus",  # malformed: logged once ...
        "PERSEUS symbols=many",  # ... this one silently
        "plain PERSEUS symbols=9 output",  # not at the start of the line: plain output
        "last line",
    ]
    connector = make(tmp_path, *(arg for line in says for arg in ("--say", line)), ready_line="READY")
    assert connector.health().healthy is None  # nothing known yet
    with caplog.at_level(logging.WARNING, logger="perseus.connectors.process"):
        await connector.prepare(["A", "B", "C", "D"])
        await connector.warm_up()
        await connector.connect()
        await until(lambda: "last line" in connector.tail())
    health = connector.health()
    assert health.symbol_count == 3
    assert health.last_error == "lost the websocket  to wss://stream"  # control characters blanked
    assert health.last_error_at is not None
    assert health.healthy is True and health.degraded_reason == "slow candles"
    assert health.status_patch() == {
        "healthy": True,
        "lastHealthAt": health.status_patch()["lastHealthAt"],
        "symbolCount": 3,
        "lastError": "lost the websocket  to wss://stream",
        "lastErrorAt": health.status_patch()["lastErrorAt"],
    }
    again = connector.health()
    assert again.last_error is None and again.symbol_count == 3  # an error is reported once
    assert "lastError" not in again.status_patch()
    malformed = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed) == 1 and "PERSEUS bogus" in malformed[0].getMessage()
    assert connector.fault() is None
    await connector.disconnect("stop requested")


@pytest.mark.integration
async def test_health_failed_lines_in_a_row_make_it_unhealthy(tmp_path: Path) -> None:
    says = ["PERSEUS health=failed feed stalled", "PERSEUS health=failed feed stalled"]
    connector = make(
        tmp_path, *(arg for line in says for arg in ("--say", line)), ready_line="READY", health_failures=2
    )
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    fault = await until(connector.fault)
    assert fault.kind == "unhealthy" and fault.policy == "restart"  # the default policy
    assert "reported health=failed 2 times in a row (feed stalled)" in fault.reason
    assert connector.health().healthy is False
    await connector.disconnect(fault.reason)


@pytest.mark.integration
async def test_a_warm_standby_is_activated_and_deactivated(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    connector = make(
        tmp_path,
        "--commands",
        "--journal",
        str(log),
        "--active-delay",
        "0.2",
        role=Role.STANDBY,
        ready_line="READY",
    )
    with pytest.raises(ConnectorError, match="was not started"):
        await connector.activate(8, "inst-8")
    await connector.prepare(["A"])
    await connector.warm_up()
    assert connector.warm_ready and not connector.connected and connector.health().warm_ready
    (start,) = journal(log)
    env = start["env"]
    assert isinstance(env, dict)
    assert env["PERSEUS_ROLE"] == "standby" and env["PERSEUS_EPOCH"] == "0"
    with pytest.raises(ConnectorError, match="warm standby: it becomes active by activate"):
        await connector.connect()

    await connector.activate(8, "inst-8")
    assert connector.connected and connector.role is Role.ACTIVE
    assert connector.claim == Claim(instance_id="inst-8", epoch=8)
    assert [e.get("epoch") for e in journal(log) if e["event"] == "activate"] == ["8"]
    with pytest.raises(ConnectorError, match="already active"):
        await connector.activate(9, "inst-9")

    await connector.deactivate()
    await until(lambda: any(e["event"] == "deactivate" for e in journal(log)))
    assert not connector.connected and connector.warm_ready and connector.role is Role.STANDBY
    await connector.deactivate()  # idempotent: nothing more is sent
    await connector.activate(9, "inst-9")  # promoted again, warm
    assert connector.connected
    assert [e.get("epoch") for e in journal(log) if e["event"] == "activate"] == ["8", "9"]
    pid = connector.pid
    assert pid is not None
    await connector.disconnect("stop requested")
    assert not alive(pid) and not connector.warm_ready


@pytest.mark.integration
async def test_activation_not_confirmed_in_time_stops_the_child(tmp_path: Path) -> None:
    connector = make(
        tmp_path,
        "--commands",
        "--active-delay",
        "-1",
        role=Role.STANDBY,
        ready_line="READY",
        active_timeout_s=0.5,
    )
    await connector.prepare([])
    await connector.warm_up()
    pid = connector.pid
    assert pid is not None
    with pytest.raises(ConnectorNotActive, match="did not answer ACTIVATE 8 with ACTIVE within 0.5s") as info:
        await connector.activate(8, "inst-8")
    assert "last output:" in str(info.value) and not info.value.retryable
    assert not alive(pid) and not connector.connected and not connector.warm_ready


@pytest.mark.integration
async def test_a_warm_standby_that_dies_is_a_crash_and_not_warm(tmp_path: Path) -> None:
    connector = make(tmp_path, "--exit-after", "0.3", role=Role.STANDBY, ready_line="READY")
    await connector.prepare([])
    await connector.warm_up()
    fault = await until(connector.fault)
    assert fault.kind == "crashed" and fault.policy is None and "exited with code 3" in fault.reason
    assert not connector.warm_ready
    with pytest.raises(ConnectorError, match="not a warm standby"):
        await connector.activate(8, "inst-8")
    await connector.disconnect("cleanup")


@pytest.mark.integration
async def test_an_active_warm_spec_gets_a_command_pipe_and_can_be_demoted(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    connector = make(tmp_path, "--commands", "--journal", str(log), ready_line="READY", warm=True)
    await connector.prepare([])
    await connector.warm_up()
    await connector.connect()
    await connector.deactivate()
    await until(lambda: any(e["event"] == "deactivate" for e in journal(log)))
    assert journal(log)[0]["env"]["PERSEUS_ROLE"] == "active"  # type: ignore[index]
    await connector.disconnect("stop requested")

    cold = make(tmp_path, ready_line="READY")  # not warm: stdin is /dev/null as before
    await cold.prepare([])
    await cold.warm_up()
    await cold.connect()
    with pytest.raises(ConnectorError, match="without a command pipe"):
        await cold.deactivate()
    await cold.disconnect("stop requested")


# --- the simulated connector ----------------------------------------------------------------------


def simulated(role: Role = Role.ACTIVE, **spec: object) -> SimulatedConnector:
    fast = {"prepare_delay_s": 0, "warmup_delay_s": 0, "connect_delay_s": 0, **spec}
    context = ConnectorContext(workflow_id="w", exchange_id=1, exchange_name="sim", role=role)
    connector = build_connector("sim", ConnectorSpec.model_validate(fast), context)
    assert isinstance(connector, SimulatedConnector)
    return connector


@pytest.mark.unit
async def test_the_simulated_connector_has_the_warm_standby_modes() -> None:
    connector = simulated(Role.STANDBY)
    assert await connector.prepare(["A", "B"]) == 2
    assert not connector.warm_ready
    await connector.warm_up()
    assert connector.warm_ready and not connector.connected
    with pytest.raises(ConnectorError, match="warm standby: activate it"):
        await connector.connect()
    await connector.activate(5, "inst-5")
    assert connector.connected and connector.epoch == 5 and connector.role is Role.ACTIVE
    health = connector.health()
    assert health.healthy is True and health.symbol_count == 2 and health.warm_ready
    await connector.deactivate()
    assert not connector.connected and connector.warm_ready
    await connector.disconnect("stop requested")
    assert not connector.warm_ready

    failing = simulated(Role.STANDBY, fail_steps=["activate"])
    await failing.prepare([])
    await failing.warm_up()
    with pytest.raises(ConnectorNotActive, match="simulated activate failure"):
        await failing.activate(6, "inst-6")


@pytest.mark.unit
async def test_a_simulated_health_failure_carries_the_policy() -> None:
    connector = simulated(fail_steps=["health"], on_unhealthy="failover")
    await connector.prepare([])
    await connector.warm_up()
    assert connector.fault() is None  # not active yet
    await connector.connect()
    assert connector.faulted.is_set()
    fault = connector.fault()
    assert fault is not None and fault.kind == "unhealthy" and fault.policy == "failover"
    assert connector.failure() == "simulated health failure on sim"
    assert connector.health().healthy is False


# --- the register options ------------------------------------------------------------------------


@pytest.mark.unit
def test_register_options_become_the_spec_with_one_line_errors() -> None:
    from perseus.cli.connector_output import connector_spec
    from perseus.errors import ConfigError

    base: dict[str, Any] = dict(
        ready_line=None, ready_url=None, ready_timeout=None, stop_grace=None, restart=None
    )
    spec = connector_spec(
        exec_command="collector --fast",
        **base,
        health_url="http://127.0.0.1:9101/health",
        health_failures=2,
        on_unhealthy="failover",
        warm=True,
        active_timeout=5,
    )
    assert spec is not None and spec.kind == "process"
    assert (spec.health_url, spec.health_failures, spec.on_unhealthy, spec.warm, spec.active_timeout_s) == (
        "http://127.0.0.1:9101/health",
        2,
        "failover",
        True,
        5.0,
    )
    simulated = connector_spec(exec_command=None, **base, warm=True, on_unhealthy="failover")
    assert simulated is not None and simulated.kind == "simulated" and simulated.warm
    assert connector_spec(exec_command=None, **base) is None
    refusals: dict[str, dict[str, Any]] = {
        "--on-unhealthy must be one of restart, failover": dict(exec_command="x", on_unhealthy="reboot"),
        "--health-url, --active-timeout: only with --exec": dict(
            exec_command=None, health_url="http://h/", active_timeout=3
        ),
        "--health-url: not an http\\(s\\) URL": dict(exec_command="x", health_url="h:80/health"),
        "--health-failures: Input should be greater than or equal to 1": dict(
            exec_command="x", health_failures=0
        ),
        "--active-timeout: Input should be less than or equal to 60": dict(
            exec_command="x", active_timeout=61
        ),
        "--env: expected NAME=VALUE with a variable name, got 'NOEQUALS'": dict(
            exec_command="x", env=["NOEQUALS"]
        ),
        "--env: expected NAME=VALUE with a variable name, got '1X=y'": dict(exec_command="x", env=["1X=y"]),
        "--env: only with --exec": dict(exec_command=None, env=["A=b"]),
    }
    for expected, options in refusals.items():
        with pytest.raises(ConfigError, match=expected):
            connector_spec(**base, **options)
    with_env = connector_spec(exec_command="x", **base, env=["URL=redis://h:1/0?a=b", "EMPTY="])
    assert with_env is not None and with_env.env == {"URL": "redis://h:1/0?a=b", "EMPTY": ""}


@pytest.mark.unit
async def test_the_connector_host_journals_a_warm_promotion_as_acting(tmp_path: Path) -> None:
    """What the chaos invariant checker reads: acting from ACTIVATE until deactivate or stop."""
    from perseus.connectors.base import ConnectorHost
    from perseus.errors import ConnectorGone
    from tests.chaos.invariants import acting_intervals, load_journal

    host = ConnectorHost(journal=tmp_path / "journal")
    connector = simulated(Role.STANDBY)
    host.put("wf-1", connector)
    await connector.prepare(["A"])
    await connector.warm_up()
    health = host.health("wf-1")
    assert health is not None and health.warm_ready and host.health("nope") is None
    with pytest.raises(ConnectorGone):
        await host.activate("nope", 3, "inst-3")
    host.record("valid_until", "wf-1", until=time.monotonic() + 600, epoch=3)  # the new claim's lease
    assert (await host.activate("wf-1", 3, "inst-3")) is connector and connector.connected
    assert await host.deactivate("wf-1") and not connector.connected
    await host.activate("wf-1", 4, "inst-4")
    await host.stop("wf-1", "stop requested")
    journal = load_journal(tmp_path / "journal")
    assert [(line["kind"], line.get("epoch")) for line in journal] == [
        ("valid_until", 3),
        ("connect", 3),
        ("disconnect", None),
        ("connect", 4),
        ("disconnect", None),
    ]
    (intervals,) = acting_intervals(journal, now=float("inf")).values()
    assert len(intervals) == 2  # two acting spells: promoted, demoted, promoted again, stopped

    failing = simulated(Role.STANDBY, fail_steps=["activate"])
    host.put("wf-2", failing)
    await failing.prepare([])
    await failing.warm_up()
    with pytest.raises(ConnectorNotActive):
        await host.activate("wf-2", 5, "inst-5")
    assert [line["kind"] for line in load_journal(tmp_path / "journal")][-2:] == ["connect", "disconnect"]
