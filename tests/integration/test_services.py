"""Starting the embedded servers when another program takes their port first: a CI run's Redis found
its port held by a web server, the start passed (the port answered), and every later test on that
process talked to the web server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from perseus.devstack import services
from perseus.errors import PortInUse

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def squatter() -> AsyncIterator[int]:
    """A web server on a free port: it answers anything with an HTTP error, as the intruder did."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_server_whose_port_is_taken_fails_to_start_instead_of_passing_for_it(
    squatter: int, tmp_path: Path, kind: str
) -> None:
    with pytest.raises(PortInUse, match="already in use"):
        if kind == "redis":
            await services.start_redis(tmp_path / kind, squatter)
        else:  # scratch: as root its data would otherwise stay under /var/lib/perseus
            await services.start_postgres(tmp_path / kind, squatter, scratch=True)
    assert (
        not (tmp_path / kind / "LOCATION").exists()
        or not Path((tmp_path / kind / "LOCATION").read_text().strip()).exists()
    )


async def test_a_free_port_taken_in_between_is_given_up_for_another(
    squatter: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = services.free_port
    offered = iter([squatter])
    monkeypatch.setattr(services, "free_port", lambda: next(offered, None) or real())
    redis = await services.start_redis(tmp_path / "redis", None)
    try:
        assert redis.port != squatter
        reader, writer = await asyncio.open_connection("127.0.0.1", redis.port)
        writer.write(b"PING\r\n")
        assert await reader.read(7) == b"+PONG\r\n"
        writer.close()
    finally:
        redis.stop()


def test_free_ports_come_from_below_the_kernels_ephemeral_range() -> None:
    """Ports the kernel hands out by itself (outgoing connections, binds to port 0) never collide
    with one chosen for a server."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {services.free_port() for _ in range(20)}
    assert all(
        services.QUIET_PORTS_FROM <= port < first_ephemeral and services.port_free(port) for port in ports
    )
    assert services.QUIET_PORTS_FROM > 10080  # the last port Chromium refuses to load a page from
    assert len(ports) > 1  # chosen at random, so two callers rarely meet
