"""The kill deadline that does not depend on the worker: a small process that SIGKILLs a connector's
process group once the claim it runs under may have expired.

Why a separate process: the worker renews claims and stops connectors on its own clock, but a worker
that is frozen (SIGSTOP, a stalled VM thread, a debugger) or whose event loop is stuck cannot stop
anything, while its child keeps running. The watchdog is told, after every renewal, until when each
child may act; past that moment it kills the child's whole process group itself. The worker reckons
``valid_until`` on CLOCK_MONOTONIC; the watchdog counts on CLOCK_BOOTTIME (one clock for every
process on a machine, like the other, but it also counts a suspended machine's sleep): a host
resumed after a suspend past its claims' deadlines — while Redis' TTLs ran on and a standby may
have claimed — kills their children at once, instead of granting them the sleep's length again.
It needs neither Redis nor Temporal nor the worker to be alive. If the worker dies, the watchdog's
stdin closes and it kills every child it still guards (``PR_SET_PDEATHSIG`` in the child does the
same; two brakes are better than one).

Protocol, one line per message on the watchdog's stdin::

    arm <pgid> <valid_until>      # (re)arm: kill group <pgid> at CLOCK_BOOTTIME <valid_until>
    disarm <pgid>                 # the connector stopped on purpose: forget it

The watchdog itself imports only the standard library and starts in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from perseus.timing import WATCHDOG_CLOCK_SLACK_S, WATCHDOG_IDLE_WAKE_S, WATCHDOG_NOTICE_S

log = logging.getLogger(__name__)


def _kill_group(pgid: int, why: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        print(f"perseus-watchdog: killed process group {pgid}: {why}", file=sys.stderr, flush=True)


def boottime() -> float:
    """CLOCK_BOOTTIME, the watchdog's clock (see the module's docstring)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Term:
    """One deadline the worker handed the watchdog for a child: kill at ``until``, sent at
    ``given_at`` (both CLOCK_MONOTONIC, the worker's clock)."""

    until: float
    given_at: float


def killed_at_deadline(terms: Sequence[Term], killed_at: float) -> bool:
    """Whether a child seen dead of SIGKILL at ``killed_at`` died of its watchdog: a deadline the
    watchdog held for it had passed by then, before it could have heard of the next one.

    ``terms`` are the latest deadlines handed over for that child, oldest first. The case this tells
    apart: a renewal answered a hair before the old deadline re-arms the watchdog a hair after it,
    and the watchdog has already killed the child. The claim was renewed, so the keeper sees a dead
    connector under a live claim — which is the deadline (take the exchange again at once), not a
    connector that crashed (its restart policy, which may leave it down).
    """
    for i, term in enumerate(terms):
        later = terms[i + 1] if i + 1 < len(terms) else None
        passed = term.until <= killed_at + WATCHDOG_CLOCK_SLACK_S
        if passed and (later is None or killed_at <= later.given_at + WATCHDOG_NOTICE_S):
            return True
    return False


def serve(stream: int = 0) -> None:
    """The watchdog's loop: read ``arm``/``disarm`` lines from ``stream`` and enforce deadlines."""
    armed: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    pending = b""
    while True:
        now = boottime()
        for pgid, until in list(armed.items()):
            if now >= until:
                del armed[pgid]
                _kill_group(pgid, f"claim deadline passed {now - until:.3f}s ago")
        wake = min(armed.values(), default=now + WATCHDOG_IDLE_WAKE_S)
        if not selector.select(timeout=max(0.0, min(wake - now, WATCHDOG_IDLE_WAKE_S))):
            continue
        chunk = os.read(stream, 65536)
        if not chunk:  # the worker is gone: nobody renews any of these claims any more
            for pgid in armed:
                _kill_group(pgid, "the worker went away")
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split()
            try:
                if parts[0] == "arm":
                    armed[int(parts[1])] = float(parts[2])
                elif parts[0] == "disarm":
                    armed.pop(int(parts[1]), None)
            except (IndexError, ValueError):
                print(f"perseus-watchdog: ignored malformed line {line!r}", file=sys.stderr, flush=True)


class Watchdog:
    """The worker's handle on its watchdog process, started on first use and restarted if it died.

    Writes are a few bytes to a pipe the watchdog drains continuously, so they do not block.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def arm(self, pgid: int, valid_until: float) -> None:
        """Kill group ``pgid`` at ``valid_until`` (CLOCK_MONOTONIC), sent as the same moment on the
        watchdog's CLOCK_BOOTTIME."""
        self._send(f"arm {pgid} {valid_until - time.monotonic() + boottime():.6f}\n")

    def disarm(self, pgid: int) -> None:
        if self._proc is not None:
            self._send(f"disarm {pgid}\n")

    def state(self) -> str:
        """``idle`` (not started: no process connector has needed it yet), ``running``, or why it
        is not: a watchdog that died leaves its children unguarded until the next renewal restarts it."""
        proc = self._proc
        if proc is None:
            return "idle"
        code = proc.poll()
        return "running" if code is None else f"exited with status {code}"

    def close(self) -> None:
        """Stop the watchdog without killing anything it guards (the worker stops its connectors)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()  # SIGKILL: EOF-handling would kill the children, which is not what a close means
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()

    def _send(self, line: str) -> None:
        with self._lock:
            for _ in range(2):
                proc = self._ensure()
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(line.encode())
                    proc.stdin.flush()
                    return
                except (BrokenPipeError, OSError):
                    log.warning("the connector watchdog died; starting a new one")
                    self._proc = None

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "perseus.host.watchdog"],
                stdin=subprocess.PIPE,
                # Its own group: a Ctrl-C on the worker's terminal must not reach it before the
                # worker has stopped its connectors; it ends with the worker (EOF) instead.
                start_new_session=True,
            )
        return self._proc


if __name__ == "__main__":
    serve()
