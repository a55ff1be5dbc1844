"""The watchdog counts CLOCK_BOOTTIME, which includes a suspended machine's sleep: a connector whose
claim's deadline passed while the host was suspended (Redis' TTL ran on, a standby may have claimed)
is killed as soon as the host resumes, not the sleep's length later. A suspend is simulated by a
BOOTTIME that runs ahead of CLOCK_MONOTONIC; the processes, pipes and signals are real."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from perseus.host import watchdog
from perseus.host.watchdog import Watchdog, serve

pytestmark = pytest.mark.unit

SLEPT_S = 1000.0  # the suspend: BOOTTIME ahead of MONOTONIC by this much


@pytest.fixture
def suspended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "boottime", lambda: time.monotonic() + SLEPT_S)


@pytest.mark.usefixtures("suspended")
def test_a_deadline_is_handed_over_as_the_same_moment_on_boottime(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    dog = Watchdog()
    monkeypatch.setattr(dog, "_send", sent.append)
    dog.arm(4242, time.monotonic() + 2.0)
    (line,) = sent
    verb, pgid, until = line.split()
    assert (verb, pgid) == ("arm", "4242")
    assert abs(float(until) - (time.monotonic() + SLEPT_S + 2.0)) < 0.5


@pytest.mark.usefixtures("suspended")
def test_a_deadline_that_passed_during_a_suspend_kills_at_once() -> None:
    """Armed on the monotonic reckoning a minute ahead — as a worker that last renewed before the
    suspend left it — the group dies as soon as the watchdog looks, on its own clock."""
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    read, write = os.pipe()
    loop = threading.Thread(target=serve, args=(read,), daemon=True)
    loop.start()
    try:
        os.write(write, f"arm {child.pid} {time.monotonic() + 60:.6f}\n".encode())
        assert child.wait(10) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        os.close(write)
        loop.join(10)
        os.close(read)
    assert not loop.is_alive()


# --- whose SIGKILL: the watchdog's at a deadline, or another's ---------------------------------------


def test_a_kill_at_a_deadline_the_watchdog_held_is_its_own() -> None:
    old = watchdog.Term(until=10.0, given_at=9.0)
    late = watchdog.Term(until=12.0, given_at=10.002)  # the renewal's answer re-armed it too late
    assert watchdog.killed_at_deadline([old, late], 10.001)
    assert watchdog.killed_at_deadline([old, late], 10.5)  # seen dead a little later (exit poll)
    assert watchdog.killed_at_deadline([late], 12.0)  # the current deadline passed: its own too
    # Seen a renewal or two later: deadlines handed over since do not hide it.
    later = [watchdog.Term(until=13.0, given_at=11.0), watchdog.Term(until=14.0, given_at=12.0)]
    assert watchdog.killed_at_deadline([old, late, *later], 10.1)


def test_a_kill_before_any_deadline_passed_or_long_after_the_next_arrived_is_a_crash() -> None:
    old = watchdog.Term(until=10.0, given_at=9.0)
    early = watchdog.Term(until=11.5, given_at=9.5)  # renewed in good time: the old one never ruled
    assert not watchdog.killed_at_deadline([old, early], 9.8)  # nothing had passed yet
    assert not watchdog.killed_at_deadline([old, early], 11.0)  # past the old, but long after the new
    assert not watchdog.killed_at_deadline([], 11.0)  # never armed: not the watchdog
