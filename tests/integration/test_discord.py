"""Discord notifications against a fake webhook on loopback, with real Redis, Temporal and workers.

The fake stands in for Discord's "execute webhook" endpoint (no network leaves this machine): it
records every accepted message, answers with Discord's rate-limit headers, and can be scripted to
answer 429/5xx. The lifecycle tests run in a Temporal namespace of their own so that the session's
shared worker (which has notifications off) never picks up their activities.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from activities.notify import NotifyActivities
from perseus.config import Settings
from perseus.core.lifecycle import State
from perseus.devstack.services import free_port
from perseus.errors import NotifyRetry, ServiceUnavailable, WebhookRejected
from perseus.models import EventKind, NetworkEvent, NotifyRequest
from perseus.notify.discord import (
    COLOURS,
    SENT,
    DiscordNotifier,
    RateLimiter,
    discord_limiter,
    discord_notifier,
    marker_key,
    rate_key,
    render,
)
from perseus.store.redis_store import RedisStore
from perseus.temporal import converter, register_search_attributes
from tests.conftest import ROOT, Servers, WorkerProcess, perseus

pytestmark = pytest.mark.integration

NAMESPACE = "perseus-discord-test"
INTERVAL = 0.5


# --- the fake webhook ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass
class Hit:
    at: float
    status: int
    payload: dict[str, Any]


class FakeDiscord:
    """Discord's execute-webhook endpoint, as far as Perseus uses it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._hooks = 1233
        self.reset()

    def reset(
        self, *, limit: int | None = None, window_s: float = 1.0, channel: tuple[int, float] | None = None
    ) -> None:
        """Forget everything; a new webhook URL (so no rate window of an earlier test applies).

        ``limit`` per ``window_s`` is the webhook's bucket, announced in X-RateLimit-* headers like
        Discord's; ``channel`` = (N, seconds) is a second, sliding limit that only shows as a 429.
        """
        self._hooks += 1
        self.url = f"http://127.0.0.1:{self.port}/api/webhooks/{self._hooks}/secret-token"
        self.hits: list[Hit] = []
        self.script: list[Reply] = []
        self.limit = limit
        self.window_s = window_s
        self.channel = channel
        self._window_end = 0.0
        self._used = 0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [h.payload for h in self.hits if 200 <= h.status < 300]

    def count(self, status: int) -> int:
        return sum(1 for h in self.hits if h.status == status)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/webhooks/{hook_id}/{token}")
        async def execute(hook_id: str, token: str, request: Request, wait: bool = False) -> JSONResponse:
            payload = await request.json()
            now = time.monotonic()
            reply = self._answer(now)
            self.hits.append(Hit(now, reply.status, payload))
            body = reply.body if reply.body is not None else {"id": str(len(self.hits)), **payload}
            return JSONResponse(body, status_code=reply.status, headers=reply.headers)

        return app

    def _answer(self, now: float) -> Reply:
        if self.script:
            return self.script.pop(0)
        if self.channel is not None:
            most, per_s = self.channel
            recent = [h.at for h in self.hits if 200 <= h.status < 300 and h.at > now - per_s]
            if len(recent) >= most:
                retry = f"{recent[-most] + per_s - now:.3f}"
                return Reply(429, {"Retry-After": retry}, {"retry_after": float(retry), "global": False})
        if self.limit is None:
            return Reply(200)
        if now >= self._window_end:
            self._window_end, self._used = now + self.window_s, 0
        reset_after = f"{self._window_end - now:.3f}"
        if self._used >= self.limit:
            return Reply(
                429,
                {
                    "Retry-After": reset_after,
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": reset_after,
                },
                {
                    "message": "You are being rate limited.",
                    "retry_after": float(reset_after),
                    "global": False,
                },
            )
        self._used += 1
        return Reply(
            200,
            {
                "X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(self.limit - self._used),
                "X-RateLimit-Reset-After": reset_after,
            },
        )


@pytest_asyncio.fixture(scope="module")
async def discord_server() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=fake.port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "fake webhook did not start"
        await asyncio.sleep(0.02)
    yield fake
    server.should_exit = True
    await task


@pytest.fixture
def fake(discord_server: FakeDiscord) -> FakeDiscord:
    discord_server.reset()
    return discord_server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def event(kind: EventKind = EventKind.STATE_TRANSITION, **fields: Any) -> NetworkEvent:
    base: dict[str, Any] = dict(
        event=kind,
        event_id=str(uuid.uuid4()),
        timestamp=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        exchange_id=7,
        exchange_name="kraken",
        hostname="host-a",
        ip="203.0.113.9",
        instance_id=str(uuid.uuid4()),
        epoch=42,
    )
    if kind is EventKind.STATE_TRANSITION:
        base.update(from_state=State.WARMING, to_state=State.ACTIVE, admin_email="admin@perseus.local")
    base.update(fields)
    return NetworkEvent(**base)


async def eventually(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- the message ---------------------------------------------------------------------------------


def test_embed_names_the_exchange_and_colours_the_kind() -> None:
    payload = render(event())
    embed = payload["embeds"][0]
    assert embed["title"] == "kraken: warming → active"
    assert embed["color"] == COLOURS[EventKind.STATE_TRANSITION]
    assert embed["description"].splitlines() == [
        "State changed: **warming** → **active**",
        "Host **host-a** (203.0.113.9) · epoch **42**",
        "Admin: admin@perseus.local",
    ]
    assert embed["timestamp"] == "2026-03-01T12:00:00.000Z"
    assert payload["allowed_mentions"] == {"parse": []}

    err = render(event(EventKind.ERROR, error="feed down @everyone *boom*", state=State.WARMING, ip=None))
    embed = err["embeds"][0]
    assert embed["title"] == "kraken: error" and embed["color"] == 0xE74C3C
    assert embed["description"].splitlines()[:2] == [
        "Error while **warming**: feed down @everyone \\*boom\\*",
        "Host **host-a** (IP unknown) · epoch **42**",
    ]
    lost = render(event(EventKind.INSTANCE_LOST, detail="host host-a stopped heartbeating"))["embeds"][0]
    assert lost["title"] == "kraken: instance lost" and lost["color"] == COLOURS[EventKind.INSTANCE_LOST]
    assert lost["description"].startswith("host host-a stopped heartbeating\n")
    refused = render(
        event(EventKind.COMMAND_REFUSED, command="stop", reason="cannot stop: idle", actor="api:ops")
    )
    assert refused["embeds"][0]["title"] == "kraken: stop refused"
    assert refused["embeds"][0]["description"].splitlines()[-1] == "By: api:ops"
    colours = {render(event(kind))["embeds"][0]["color"] for kind in EventKind}
    assert len(colours) == len(EventKind)


# --- delivery ------------------------------------------------------------------------------------


async def test_no_url_means_notifications_off(http: httpx.AsyncClient, store: RedisStore) -> None:
    assert discord_notifier(None, http, store) is None
    assert await NotifyActivities(None).notify_event(NotifyRequest(event=event())) == "disabled"


async def test_a_standby_registering_is_not_notified(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    notifier = DiscordNotifier(fake.url, http, store)
    standby = NotifyRequest(event=event(EventKind.STANDBY_REGISTERED, detail="standby on host-b"))
    assert await notifier.send(standby) == "not notified: standby_registered"
    assert fake.hits == []


async def test_retried_activity_sends_one_message(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    activity = NotifyActivities(DiscordNotifier(fake.url, http, store))
    req = NotifyRequest(event=event())
    assert await activity.notify_event(req) == "sent"
    assert await activity.notify_event(req) == "already sent"
    # A fresh process (no memory) relies on the Redis marker alone.
    again = NotifyActivities(DiscordNotifier(fake.url, http, store))
    assert await again.notify_event(req) == "already sent"
    assert len(fake.messages) == 1 and fake.messages[0] == render(req.event)
    assert await store.marker(marker_key(req.event.event_id)) == SENT

    # Two attempts at the same moment: one posts, the other waits for it (or sees it sent).
    req = NotifyRequest(event=event())
    results = await asyncio.gather(
        DiscordNotifier(fake.url, http, store).send(req),
        DiscordNotifier(fake.url, http, store).send(req),
        return_exceptions=True,
    )
    assert sorted(map(str, results)) in (
        ["already sent", "sent"],
        [f"event {req.event.event_id} is being sent by another attempt", "sent"],
    )
    assert len(fake.messages) == 2


async def test_failed_post_is_retried_and_delivered_once(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    notifier = DiscordNotifier(fake.url, http, store)
    req = NotifyRequest(event=event(EventKind.CLAIM_CONFLICT, detail="held by host-b"))
    fake.script = [Reply(503)]
    with pytest.raises(NotifyRetry, match="503"):
        await notifier.send(req)
    assert await store.marker(marker_key(req.event.event_id)) is None  # the lease was given back
    assert await notifier.send(req) == "sent"
    assert len(fake.messages) == 1 and fake.count(503) == 1

    # A refused webhook (deleted, wrong token) is permanent: no retry can fix it.
    fake.script = [Reply(404, body={"message": "Unknown Webhook", "code": 10015})]
    with pytest.raises(WebhookRejected, match="404"):
        await notifier.send(NotifyRequest(event=event()))


async def test_redis_failing_after_the_post_does_not_resend(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    class FlakyStore(RedisStore):
        fail_next_set = True

        async def set_marker(self, key: str, value: str, ttl_ms: int) -> None:
            if self.fail_next_set:
                self.fail_next_set = False
                raise ServiceUnavailable("Redis unreachable: injected")
            await super().set_marker(key, value, ttl_ms)

    notifier = DiscordNotifier(fake.url, http, FlakyStore(store.client))
    req = NotifyRequest(event=event(EventKind.HANDOFF, detail="handoff to host-b"))
    with pytest.raises(ServiceUnavailable):
        await notifier.send(req)
    assert len(fake.messages) == 1
    assert await notifier.send(req) == "already sent"
    assert len(fake.messages) == 1
    assert await store.marker(marker_key(req.event.event_id)) == SENT


async def test_429_waits_retry_after_and_loses_nothing(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    notifier = DiscordNotifier(fake.url, http, store)
    fake.script = [
        Reply(
            429,
            {"Retry-After": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.000"},
            {"message": "You are being rate limited.", "retry_after": 1.0, "global": False},
        )
    ]
    reqs = [NotifyRequest(event=event(to_state=state)) for state in (State.ACTIVE, State.STOPPING)]
    started = time.monotonic()
    results = await asyncio.gather(*(notifier.send(r) for r in reqs))
    assert results == ["sent", "sent"]
    assert fake.count(429) == 1
    first_429 = next(h.at for h in fake.hits if h.status == 429)
    accepted = [h.at for h in fake.hits if h.status == 200]
    assert len(accepted) == 2 and min(accepted) - first_429 >= 1.0
    assert time.monotonic() - started >= 1.0
    assert sorted(m["embeds"][0]["footer"]["text"] for m in fake.messages) == sorted(
        render(r.event)["embeds"][0]["footer"]["text"] for r in reqs
    )


async def test_concurrent_sends_follow_the_bucket_without_429s(
    fake: FakeDiscord, http: httpx.AsyncClient, store: RedisStore
) -> None:
    fake.reset(limit=2, window_s=0.6)
    notifier = DiscordNotifier(fake.url, http, store)
    reqs = [NotifyRequest(event=event(epoch=n)) for n in range(6)]
    results = await asyncio.gather(*(notifier.send(r) for r in reqs))
    assert results == ["sent"] * 6
    assert fake.count(429) == 0, "the limiter must wait for X-RateLimit-Reset-After, not hit 429"
    assert len(fake.messages) == 6
    assert notifier.limiter.waited_s > 0.6 * 2 - 0.2


async def test_two_processes_share_the_webhook_limits_without_429s(
    fake: FakeDiscord, servers: Servers
) -> None:
    """Two notifier processes post at once to one webhook that enforces Discord's limits (a 5-per-2 s
    bucket announced in headers, and a sliding per-channel limit that only shows as 429): the shared
    limiter in Redis keeps them both inside, so nothing is refused and nothing is lost."""
    bucket, bucket_s, channel, channel_s = 5, 2.0, 12, 6.0
    fake.reset(limit=bucket, window_s=bucket_s, channel=(channel, channel_s))
    each = 8
    args = [servers.redis_url, fake.url, str(each)]
    limits = [str(bucket), str(bucket_s), str(channel), str(channel_s)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.discord_sender",
            *args,
            label,
            *limits,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for label in ("alpha", "bravo")
    ]
    outputs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    results: dict[str, str] = {}
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        results.update(json.loads(out.decode().strip().splitlines()[-1]))
    assert list(results.values()) == ["sent"] * (2 * each)
    assert fake.count(429) == 0, "the shared limiter must keep both processes inside the webhook's limits"
    delivered = [m["embeds"][0]["footer"]["text"].rsplit(" · ", 1)[1] for m in fake.messages]
    assert sorted(delivered) == sorted(results)  # each event exactly once
    accepted = sorted(h.at for h in fake.hits if h.status == 200)
    print(f"2 processes × {each} messages: 0 × 429, delivered in {accepted[-1] - accepted[0]:.2f} s")


async def test_shared_window_is_fenced_and_pauses_every_sender(store: RedisStore) -> None:
    url = f"http://127.0.0.1:9/api/webhooks/{uuid.uuid4().hex}/token"
    key = rate_key(url)
    assert "token" not in key
    windows = [(2, 60_000)]
    fence, wait = await store.rate_acquire(key, "a", 30_000, windows)
    assert fence > 0 and wait == 0
    # While A's send is in flight nobody else starts one; a stale release cannot clear A's mark.
    assert (await store.rate_acquire(key, "b", 30_000, windows))[0] == 0
    await store.rate_release(key, fence - 1, 0)
    assert (await store.rate_acquire(key, "b", 30_000, windows))[0] == 0
    await store.rate_release(key, fence, 0)
    second, _ = await store.rate_acquire(key, "b", 30_000, windows)
    assert second == fence + 1
    await store.rate_release(key, second, 0)
    full, wait = await store.rate_acquire(key, "c", 30_000, windows)  # 2 per minute: the window is full
    assert full == 0 and 50_000 < wait <= 60_001

    # A 429 seen by one process pauses the others (limiters on the same key, as in two workers).
    url = f"http://127.0.0.1:9/api/webhooks/{uuid.uuid4().hex}/token"
    first, other = discord_limiter(store, url), discord_limiter(store, url)
    async with first.slot():
        first.observe(429, {"retry-after": "0.3"})
    async with other.slot():
        pass
    assert other.waited_s > 0 and first.waited_s == 0


def test_rate_limiter_reads_discord_headers() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0], wall=lambda: 1_700_000_000.0)
    assert limiter.observe(200, {"x-ratelimit-remaining": "3", "x-ratelimit-reset-after": "9"}) == 0.0
    assert limiter.observe(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset-after": "1.5"}) == 1.5
    assert limiter.observe(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000002.25"}) == 2.25
    assert limiter.observe(429, {"retry-after": "4"}) == 4.0
    assert limiter.observe(429, {}, {"retry_after": 0.75}) == 0.75
    assert limiter.observe(429, {"retry-after": "999999"}) == 300.0


# --- through the real worker ---------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def ns_client(servers: Servers) -> AsyncIterator[Client]:
    """A client of a namespace of our own: only this module's workers poll its task queues."""
    base = await Client.connect(servers.temporal_address, data_converter=converter)
    try:
        await base.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=NAMESPACE, workflow_execution_retention_period=Duration(seconds=86400)
            )
        )
    except RPCError as exc:
        if "already" not in str(exc).lower():
            raise
    client = await Client.connect(servers.temporal_address, namespace=NAMESPACE, data_converter=converter)
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=NAMESPACE))
            await register_search_attributes(client)
            break
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
    yield client


@dataclass
class DiscordStack:
    hosts: tuple[str, str]
    fake: FakeDiscord


@pytest_asyncio.fixture(scope="module")
async def discord_stack(
    servers: Servers, settings: Settings, ns_client: Client, discord_server: FakeDiscord
) -> AsyncIterator[DiscordStack]:
    """Two in-process workers with Discord wired: one also serving the shared queue."""
    from worker import run_worker

    wired = settings.model_copy(update={"discord_webhook_url": discord_server.url})
    hosts = ("dc-host-a", "dc-host-b")
    stop = asyncio.Event()
    tasks = []
    for host, shared in zip(hosts, (True, False), strict=True):
        ready = asyncio.Event()
        task = asyncio.create_task(run_worker(wired, ns_client, host, stop, shared_queue=shared, ready=ready))
        await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        tasks.append(task)
    yield DiscordStack(hosts, discord_server)
    stop.set()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)


async def cli(servers: Servers, *args: str) -> str:
    result = await asyncio.to_thread(perseus, servers, *args, TEMPORAL_NAMESPACE=NAMESPACE)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def about(messages: list[dict[str, Any]], exchange: str) -> list[dict[str, Any]]:
    """The embeds of the messages about one exchange, in arrival order."""
    return [m["embeds"][0] for m in messages if m["embeds"][0]["title"].startswith(exchange + ":")]


def titles(messages: list[dict[str, Any]], exchange: str) -> list[str]:
    return [embed["title"] for embed in about(messages, exchange)]


async def test_scripted_lifecycle_sends_exactly_its_messages(
    servers: Servers, discord_stack: DiscordStack, exchange: str
) -> None:
    fake = discord_stack.fake
    fake.reset()
    fake.script = [Reply(503)]  # the first POST fails: the activity's retry must deliver it, once
    host_a, host_b = discord_stack.hosts
    registered = await asyncio.to_thread(
        perseus,
        servers,
        "register",
        exchange,
        "--host",
        host_a,
        "--heartbeat-interval",
        str(INTERVAL),
        TEMPORAL_NAMESPACE=NAMESPACE,
    )
    assert registered.returncode == 0, registered.stderr
    conflict = await asyncio.to_thread(
        perseus, servers, "register", exchange, "--host", host_b, TEMPORAL_NAMESPACE=NAMESPACE
    )
    assert conflict.returncode != 0 and host_a in conflict.stderr
    await cli(servers, "start", exchange, "--host", host_a)
    await cli(servers, "stop", exchange, "--host", host_a)
    await cli(servers, "shutdown", exchange, "--host", host_a)

    expected = [
        f"{exchange}: claim refused",
        f"{exchange}: idle → starting",
        f"{exchange}: starting → warming",
        f"{exchange}: warming → active",
        f"{exchange}: active → stopping",
        f"{exchange}: stopping → stopped",
        f"{exchange}: stopped → idle",
    ]
    await eventually(lambda: len(about(fake.messages, exchange)) >= len(expected), what="7 messages")
    await asyncio.sleep(1.0)  # nothing more may arrive
    got = about(fake.messages, exchange)
    assert fake.count(503) == 1
    # Notifications are concurrent activities: they may arrive in any order, but each exactly once,
    # and in event order by their timestamps.
    assert [e["title"] for e in sorted(got, key=lambda e: e["timestamp"])] == expected
    for embed in got:
        lines = embed["description"].splitlines()
        if embed["title"] == f"{exchange}: claim refused":
            assert embed["color"] == COLOURS[EventKind.CLAIM_CONFLICT]
            assert host_a in lines[0]  # the holder's hostname
            assert lines[1].startswith(f"Host **{host_b}** (") and "· epoch **" in lines[1]
        else:
            from_state, to_state = embed["title"].split(": ", 1)[1].split(" → ")
            assert embed["color"] == COLOURS[EventKind.STATE_TRANSITION]
            assert lines[0] == f"State changed: **{from_state}** → **{to_state}**"
            assert lines[1].startswith(f"Host **{host_a}** (") and "· epoch **" in lines[1]


@pytest.mark.slow
async def test_killed_host_is_reported_lost(
    servers: Servers, discord_stack: DiscordStack, exchange: str, worker_processes: list[WorkerProcess]
) -> None:
    fake = discord_stack.fake
    fake.reset()
    host = f"dc-kill-{uuid.uuid4().hex[:6]}"
    proc = WorkerProcess(servers, host, TEMPORAL_NAMESPACE=NAMESPACE)
    worker_processes.append(proc)
    await proc.ready()
    await cli(servers, "register", exchange, "--host", host, "--heartbeat-interval", str(INTERVAL), "--start")
    await eventually(
        lambda: f"{exchange}: warming → active" in titles(fake.messages, exchange), what="active"
    )
    proc.signal(signal.SIGKILL)
    proc.wait(10)
    await eventually(
        lambda: f"{exchange}: instance lost" in titles(fake.messages, exchange), timeout=30, what="lost"
    )
    lost = next(e for e in about(fake.messages, exchange) if e["title"] == f"{exchange}: instance lost")
    assert lost["color"] == COLOURS[EventKind.INSTANCE_LOST]
    assert host in lost["description"] and "heartbeat" in lost["description"]
    await eventually(
        lambda: f"{exchange}: stopped → idle" in titles(fake.messages, exchange), what="the walk down to idle"
    )
    await asyncio.sleep(0.5)
    seen = titles(fake.messages, exchange)
    assert len(seen) == len(set(seen)), seen
