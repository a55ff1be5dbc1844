"""systemd's service notifications (``sd_notify``) without libsystemd: one datagram per message to
the socket systemd names in ``NOTIFY_SOCKET`` (read once, by :class:`perseus.config.SystemdEnv`).

A worker in a ``Type=notify`` unit says ``READY=1`` once it polls, ``STOPPING=1`` when it starts its
graceful release, and — under ``WatchdogSec`` — ``WATCHDOG=1`` every half period from its event
loop. Those pings are liveness, like ``/healthz``: a worker whose loop is stuck stops sending them
and systemd restarts it; a worker that merely cannot reach Redis keeps them going (a restart would
not bring Redis back, and would drop this host's standbys as well). Outside systemd every call here
does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger(__name__)


def notify(socket_path: str | None, message: str) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``…); False when there is nowhere to send it or
    systemd did not take it (never an exception: a notification is not worth a worker)."""
    if not socket_path:
        return False
    # "@name" is a socket in the abstract namespace.
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notification %s not sent: %s", message.split("=")[0], exc)
        return False
    return True


def watchdog_period_s(watchdog_usec: int | None, watchdog_pid: int | None, pid: int) -> float | None:
    """How often to send ``WATCHDOG=1``: half systemd's ``WatchdogSec``, or None when it is off or
    meant for another process (``WATCHDOG_PID``)."""
    if not watchdog_usec or watchdog_usec <= 0:
        return None
    if watchdog_pid is not None and watchdog_pid != pid:
        return None
    return watchdog_usec / 1_000_000 / 2


async def keep_alive(socket_path: str, period_s: float) -> None:
    """``WATCHDOG=1`` every ``period_s`` for as long as this task (and the loop it runs on) runs."""
    while True:
        notify(socket_path, "WATCHDOG=1")
        await asyncio.sleep(period_s)
