"""Public-IP detection: services tried in order, each with a timeout, falling through to None.

The IP-lookup services are the outside world, so they are faked here by a small HTTP server on
loopback that can answer plain text, JSON, garbage, an error status, or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from activities import host as host_module
from activities.host import HostActivities, parse_ip_answer
from perseus.connectors.base import ConnectorHost
from perseus.host.keeper import LeaseKeeper

pytestmark = pytest.mark.integration

ROUTES = {
    "/plain": (200, "203.0.113.7\n"),
    "/json": (200, '{"ip": "2001:db8::5"}'),
    "/garbage": (200, "<html>hello</html>"),
    "/error": (503, "busy"),
}


#: Requests the fake service received, by path.
HITS: dict[str, int] = {}


@pytest_asyncio.fixture
async def fake_ip_service() -> AsyncIterator[str]:
    HITS.clear()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = request.split(" ")[1]
        HITS[path] = HITS.get(path, 0) + 1
        if path == "/hang":
            await asyncio.sleep(30)  # never answers in time
        status, body = ROUTES.get(path, (404, "no"))
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


def host_activities(services: list[str], http: httpx.AsyncClient) -> HostActivities:
    return HostActivities(
        hostname="h",
        store=None,  # type: ignore[arg-type]  # identity needs neither Redis nor PostgreSQL
        catalog=None,  # type: ignore[arg-type]
        http=http,
        ip_services=services,
        # Each service's bound: under a loaded CI machine a loopback answer took longer than 0.3 s
        # (the plain service read as no answer); /hang still shows the bound at 1 s.
        ip_timeout_s=1.0,
        connectors=ConnectorHost(),
        keeper=LeaseKeeper(None, ConnectorHost()),  # type: ignore[arg-type]  # no leases here
    )


@pytest.mark.parametrize(
    ("body", "ip"),
    [
        ("198.51.100.1", "198.51.100.1"),
        (" 198.51.100.1\n", "198.51.100.1"),
        ('{"ip": "::1"}', "::1"),
        ('{"ip": 5}', None),
        ("not an ip", None),
        ("{broken", None),
        ("", None),
    ],
)
def test_parse_ip_answer(body: str, ip: str | None) -> None:
    assert parse_ip_answer(body) == ip


async def test_services_fall_through_to_the_first_good_answer(fake_ip_service: str) -> None:
    base = fake_ip_service
    async with httpx.AsyncClient() as http:
        acts = host_activities(
            [f"{base}/hang", f"{base}/error", f"{base}/garbage", f"{base}/json", f"{base}/plain"], http
        )
        assert await acts.public_ip() == "2001:db8::5"
        acts = host_activities([f"{base}/plain"], http)
        assert await acts.public_ip() == "203.0.113.7"


async def test_no_answer_is_none_and_bounded(fake_ip_service: str) -> None:
    base = fake_ip_service
    async with httpx.AsyncClient() as http:
        acts = host_activities([f"{base}/hang", f"{base}/error", "http://127.0.0.1:9/refused"], http)
        assert await asyncio.wait_for(acts.public_ip(), 5) is None  # each service bounded by its timeout
        assert await host_activities([], http).public_ip() is None


async def test_an_answer_is_reused_and_concurrent_lookups_share_one(fake_ip_service: str) -> None:
    base = fake_ip_service
    async with httpx.AsyncClient() as http:
        acts = host_activities([f"{base}/error", f"{base}/plain"], http)
        answers = await asyncio.gather(*(acts.public_ip() for _ in range(20)))
        assert answers == ["203.0.113.7"] * 20
        assert await acts.public_ip() == "203.0.113.7"
        # One lookup for 21 registrations: the failing service was asked once, the good one once.
        assert HITS == {"/error": 1, "/plain": 1}


async def test_no_answer_is_remembered_only_briefly(
    fake_ip_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = fake_ip_service
    async with httpx.AsyncClient() as http:
        acts = host_activities([f"{base}/error"], http)
        assert await acts.public_ip() is None
        assert await acts.public_ip() is None
        assert HITS == {"/error": 1}
        monkeypatch.setattr(host_module, "IP_NO_ANSWER_REUSE_S", 0.0)
        assert await acts.public_ip() is None
        assert HITS == {"/error": 2}
