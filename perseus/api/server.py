"""Run the API inside an existing event loop (``perseus dev``) or on its own (``perseus api``)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn

from perseus.api.app import create_app
from perseus.config import Settings


class EmbeddedServer(uvicorn.Server):
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
    )
    return EmbeddedServer(config)
