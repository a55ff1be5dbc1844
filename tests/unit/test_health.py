"""The worker's readiness judgement and its systemd notifications, over plain values."""

from __future__ import annotations

import socket
from pathlib import Path

from perseus.host.health import Check, keeper_check, readiness, watchdog_check
from perseus.host.systemd import notify, watchdog_period_s


def test_a_claim_is_late_past_one_and_a_half_intervals_and_the_worst_is_named() -> None:
    assert keeper_check([]).ok
    on_time = keeper_check([("a", 1.4, 1.0), ("b", 20.0, 15.0)])
    assert on_time.ok and on_time.seconds == 1.4  # the worst in intervals, not in seconds
    late = keeper_check([("a", 1.0, 1.0), ("b", 1.6, 1.0), ("c", 25.0, 15.0)])
    assert not late.ok
    assert late.detail.startswith("2 of 3 claim(s)") and "c: 25.0s at a 15s interval" in late.detail
    assert late.seconds == 25.0


def test_readiness_lists_every_failed_check() -> None:
    checks = [Check(name="redis", ok=False, detail="x"), Check(name="keeper", ok=True, detail="y")]
    report = readiness(checks)
    assert report.status == "unready" and report.failed == ["redis"]
    assert readiness(checks[1:]).status == "ready"


def test_a_dead_watchdog_is_unready_an_unstarted_one_is_not() -> None:
    assert watchdog_check("idle").ok and watchdog_check("running").ok
    dead = watchdog_check("exited with status -9")
    assert not dead.ok and dead.detail == "exited with status -9"


def test_the_watchdog_is_pinged_at_half_its_period_and_only_for_this_process() -> None:
    assert watchdog_period_s(20_000_000, None, 42) == 10.0
    assert watchdog_period_s(20_000_000, 42, 42) == 10.0
    assert watchdog_period_s(20_000_000, 7, 42) is None
    assert watchdog_period_s(None, None, 42) is None
    assert watchdog_period_s(0, None, 42) is None


def test_notify_sends_one_datagram_and_never_raises(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert notify(path, "READY=1")
        assert listener.recv(64) == b"READY=1"
    assert not notify(None, "READY=1")
    assert not notify(str(tmp_path / "nobody-listens.sock"), "WATCHDOG=1")
