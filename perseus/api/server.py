"""Run the API inside an existing event loop (``perseus dev``, tests) or on its own (``perseus api``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Generator

import uvicorn

from perseus.api.app import create_app
from perseus.config import Settings, SystemdEnv
from perseus.host.systemd import keep_alive, notify, watchdog_period_s

#: How often a shutting-down server looks for connections it has not yet told to close.
SWEEP_S = 0.05


class Server(uvicorn.Server):
    """A uvicorn server whose graceful shutdown also reaches connections accepted at the last moment.

    uvicorn tells each open connection to close once, right after it stops listening. A connection
    the listener accepted just before that, but whose protocol the loop creates just after, is missed:
    a page polling every second then keeps it alive forever and the shutdown never ends. While the
    shutdown runs, every connection not yet told is told too.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        told: set[object] = set(self.server_state.connections)  # uvicorn's own pass covers these
        sweeper = asyncio.create_task(self._close_late_connections(told))
        try:
            await super().shutdown(sockets)
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _close_late_connections(self, told: set[object]) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            for connection in list(self.server_state.connections):
                if connection not in told:
                    told.add(connection)
                    connection.shutdown()


class StreamingServer(Server):
    """A server that ends the live event streams first when it shuts down. uvicorn waits for open
    responses to finish before it runs the lifespan's shutdown, and an event stream never finishes
    by itself; without this a single open page would hold the shutdown.

    Under systemd (``Type=notify``, ``systemd`` given) it says READY once it listens, STOPPING when
    it shuts down, and pings ``WatchdogSec`` from its event loop meanwhile (:mod:`perseus.host.systemd`).
    """

    def __init__(self, config: uvicorn.Config, *, systemd: SystemdEnv | None = None) -> None:
        super().__init__(config)
        self._systemd = systemd
        self._pinging: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        sd = self._systemd
        if self.started and sd is not None and sd.notify_socket:
            notify(sd.notify_socket, "READY=1")
            period = watchdog_period_s(sd.watchdog_usec, sd.watchdog_pid, os.getpid())
            if period:
                self._pinging = asyncio.create_task(keep_alive(sd.notify_socket, period))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._systemd is not None:
            notify(self._systemd.notify_socket, "STOPPING=1")
        if self._pinging is not None:
            self._pinging.cancel()
        live = getattr(getattr(self.config.app, "state", None), "live", None)
        if live is not None:
            live.close_streams()
        await super().shutdown(sockets)


class EmbeddedServer(StreamingServer):
    """A server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_server(
    settings: Settings, port: int | None = None, temporal_address: str | None = None, *, fold: bool = True
) -> EmbeddedServer:
    config = uvicorn.Config(
        create_app(settings, temporal_address, fold=fold),
        host=settings.api_host,
        port=port or settings.api_port,
        log_level="warning",
        log_config=None,  # the owner's logging (perseus.logs), not uvicorn's own handlers
        lifespan="on",
        # A last resort: responses still open this long after shutdown began are cancelled.
        timeout_graceful_shutdown=5,
    )
    return EmbeddedServer(config)
