"""The API's graceful shutdown ends even when a client keeps a connection busy that uvicorn's single
"please close" pass missed (one accepted just as the listener closed): the server tells it too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx
import pytest

from perseus.api.server import build_server
from perseus.config import Settings
from perseus.devstack.services import free_port
from tests.conftest import Servers

pytestmark = pytest.mark.integration


async def poll(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> int:
    """Ask every 50 ms over one keep-alive connection, like the network page at a short refresh."""
    answered = 0
    while not stop.is_set():
        try:
            response = await http.get(url)
        except httpx.HTTPError:
            return answered  # the server closed the connection
        answered += response.status_code == 200
        await asyncio.sleep(0.05)
    return answered


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_shutdown_reaches_a_connection_uvicorn_missed(servers: Servers, settings: Settings) -> None:
    port = free_port()
    server = build_server(settings, port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done()
        await asyncio.sleep(0.02)
    stop = asyncio.Event()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as http:
        poller = asyncio.create_task(poll(http, f"http://127.0.0.1:{port}/healthz", stop))
        await until(lambda: bool(server.server_state.connections))
        # Hide the connection from uvicorn's own pass, as if its protocol was created just after it.
        (late,) = server.server_state.connections
        server.server_state.connections.discard(late)
        server.should_exit = True
        await until(lambda: not server.servers[0].is_serving())  # the pass is over: nobody was told
        server.server_state.connections.add(late)
        try:
            await asyncio.wait_for(asyncio.shield(serving), 15)  # bounded: it must end, not wait forever
        finally:
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(poller, 5)
            if not serving.done():
                server.force_exit = True
                await serving
        assert poller.done() and poller.result() > 0
