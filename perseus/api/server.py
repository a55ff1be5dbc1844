"""Run the API inside an existing event loop (``perseus dev``) or on its own (``perseus api``)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator

import uvicorn

from perseus.api.app import create_app
from perseus.config import Settings


class StreamingServer(uvicorn.Server):
    """uvicorn that ends the live event streams first when it shuts down. uvicorn waits for open
    responses to finish before it runs the lifespan's shutdown, and an event stream never finishes
    by itself; without this a single open page would hold the shutdown."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        live = getattr(getattr(self.config.app, "state", None), "live", None)
        if live is not None:
            live.close_streams()
        await super().shutdown(sockets)


class EmbeddedServer(StreamingServer):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_server(
    settings: Settings, port: int | None = None, temporal_address: str | None = None
) -> EmbeddedServer:
    config = uvicorn.Config(
        create_app(settings, temporal_address),
        host=settings.api_host,
        port=port or settings.api_port,
        log_level="warning",
        lifespan="on",
        # A last resort: responses still open this long after shutdown began are cancelled.
        timeout_graceful_shutdown=5,
    )
    return EmbeddedServer(config)
