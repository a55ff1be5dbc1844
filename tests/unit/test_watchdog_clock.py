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
