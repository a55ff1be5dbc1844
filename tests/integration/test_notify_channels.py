"""Slack, PagerDuty and generic-webhook notifications against fake targets on loopback, with real
Redis — and, for the last test, a real worker and Temporal.

One fake answers on every path: ``/slack/…``, ``/pagerduty/…``, ``/hook/…``. It records each request
as it arrives (so a request it never answers is seen too), can be scripted per path (429 with
Retry-After, 5xx), and can hang a path: the request is held until the test ends, like a target
that accepted the connection and died.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
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
from fastapi.responses import JSONResponse, Response

from perseus.client import control
from perseus.config import load_settings
from perseus.core.lifecycle import State
from perseus.devstack.services import free_port
from perseus.errors import NotifyRetry
from perseus.models import EventKind, NetworkEvent, NotifyChannel, NotifyRequest
from perseus.notify import notifications
from perseus.notify.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from perseus.store.redis_store import RedisStore
from tests.conftest import ROOT, Servers, WorkerProcess, exchange_id
from tests.integration.helpers import PrivateTemporal, active_on, host_name, wait_for

pytestmark = pytest.mark.integration

SECRET = "hook-secret-0123456789"
ROUTING_KEY = "pd-routing-key-abcdef"


@dataclass
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # None: not answered (yet, or ever)

    @property
    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@dataclass
class FakeTargets:
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    #: Replies to give, per path, before answering normally: (status, headers).
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path and h.status is not None and 200 <= h.status < 300]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            hit = Hit(time.monotonic(), "/" + path, dict(request.headers), await request.body())
            self.hits.append(hit)
            if hit.path in self.hang:
                await self.release.wait()
                return Response(status_code=504)
            status, headers = (
                (self.script.get(hit.path) or [(0, {})]).pop(0) if self.script.get(hit.path) else (0, {})
            )
            if not status:
                status = 202 if hit.path.startswith("/pagerduty") else 200
            hit.status = status
            body = {"status": "success"} if status < 300 else {"message": "slow down"}
            return JSONResponse(body, status_code=status, headers=headers)

        return app


@pytest_asyncio.fixture(scope="module")
async def targets() -> AsyncIterator[FakeTargets]:
    fake = FakeTargets()
    server = uvicorn.Server(
        uvicorn.Config(
            fake.app(),
            host="127.0.0.1",
            port=fake.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "fake targets did not start"
        await asyncio.sleep(0.02)
    yield fake
    fake.release.set()
    server.should_exit = True
    await task


def paths() -> dict[str, str]:
    """Fresh paths per test: each its own marker-free, rate-window-free target."""
    tag = uuid.uuid4().hex[:8]
    return {kind: f"/{kind}/{tag}" for kind in ("slack", "pagerduty", "hook")}


def channels(fake: FakeTargets, where: dict[str, str], **extra: Any) -> list[dict[str, Any]]:
    tag = where["hook"].rsplit("/", 1)[1]
    return [
        {"name": f"slack-{tag}", "kind": "slack", "url": fake.url(where["slack"]), **extra},
        {
            "name": f"pd-{tag}",
            "kind": "pagerduty",
            "url": fake.url(where["pagerduty"]),
            "secret": ROUTING_KEY,
            **extra,
        },
        {"name": f"hook-{tag}", "kind": "webhook", "url": fake.url(where["hook"]), "secret": SECRET, **extra},
    ]


def event(kind: EventKind = EventKind.INSTANCE_LOST, exchange: str = "kraken", **fields: Any) -> NetworkEvent:
    base: dict[str, Any] = dict(
        event=kind,
        event_id=str(uuid.uuid4()),
        timestamp=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        exchange_id=7,
        exchange_name=exchange,
        hostname="host-a",
        ip="203.0.113.9",
        instance_id=str(uuid.uuid4()),
        epoch=42,
        detail="no renewal for 2 intervals <!channel>",
    )
    if kind is EventKind.STATE_TRANSITION:
        base.update(from_state=State.WARMING, to_state=State.ACTIVE, detail=None)
    base.update(fields)
    return NetworkEvent(**base)


def notifier_for(configs: list[dict[str, Any]], http: httpx.AsyncClient, store: RedisStore) -> Any:
    settings = load_settings(
        notify_channels=[NotifyChannel.model_validate(c) for c in configs], discord_webhook_url=None
    )
    made = notifications(settings, http, store)
    assert made is not None
    return made


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_each_channel_gets_its_payload_once_and_the_webhook_is_signed(
    targets: FakeTargets, http: httpx.AsyncClient, store: RedisStore
) -> None:
    where = paths()
    notifier = notifier_for(channels(targets, where), http, store)
    lost = event()
    outcome = await notifier.send(NotifyRequest(event=lost))
    assert outcome.count(": sent") == 3, outcome
    # A retried activity (or another worker's attempt) sends nothing again.
    assert (await notifier.send(NotifyRequest(event=lost))).count(": already sent") == 3

    (slack,) = targets.accepted(where["slack"])
    assert "kraken: instance lost" in slack.json["text"] and "&lt;!channel&gt;" in slack.json["text"]
    assert "<!channel>" not in slack.body.decode()  # no mention reaches Slack
    assert lost.event_id in json.dumps(slack.json["blocks"])

    (pd,) = targets.accepted(where["pagerduty"])
    assert pd.json["routing_key"] == ROUTING_KEY and pd.json["event_action"] == "trigger"
    assert pd.json["dedup_key"] == f"perseus-{lost.event_id}"
    assert pd.json["payload"]["severity"] == "critical" and pd.json["payload"]["component"] == "kraken"
    assert pd.json["payload"]["custom_details"]["eventId"] == lost.event_id

    (hook,) = targets.accepted(where["hook"])
    stamp = hook.headers[TIMESTAMP_HEADER.lower()]
    expected = (
        "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + hook.body, hashlib.sha256).hexdigest()
    )
    assert hook.headers[SIGNATURE_HEADER.lower()] == expected == signature(SECRET.encode(), stamp, hook.body)
    assert abs(int(stamp) - time.time()) < 300
    assert hook.json["event"] == lost.fields() and hook.json["source"] == "perseus"
    assert hook.headers["x-perseus-event-id"] == lost.event_id


async def test_channels_take_only_the_kinds_and_exchanges_they_list(
    targets: FakeTargets, http: httpx.AsyncClient, store: RedisStore
) -> None:
    where = paths()
    configs = channels(targets, where, events=["instance_lost", "promoted"], exchanges=["Binance"])
    notifier = notifier_for(configs, http, store)
    skipped = [
        event(EventKind.STATE_TRANSITION, exchange="binance"),
        event(EventKind.INSTANCE_LOST, exchange="kraken"),
        event(EventKind.HANDOFF, exchange="binance", detail="handoff to host-b"),
    ]
    for e in skipped:
        assert (await notifier.send(NotifyRequest(event=e))).startswith("not notified"), e
    wanted = event(EventKind.PROMOTED, exchange="binance", detail="the holder's claim expired")
    assert (await notifier.send(NotifyRequest(event=wanted))).count(": sent") == 3
    for path in where.values():  # the one wanted event, nothing of the skipped ones
        assert len([h for h in targets.hits if h.path == path]) == 1, path


async def test_a_failing_channel_is_retried_alone(
    targets: FakeTargets, http: httpx.AsyncClient, store: RedisStore
) -> None:
    where = paths()
    notifier = notifier_for(channels(targets, where), http, store)
    targets.script[where["pagerduty"]] = [(503, {})]
    req = NotifyRequest(event=event())
    with pytest.raises(NotifyRetry, match="pd-.*503"):
        await notifier.send(req)
    assert len(targets.accepted(where["slack"])) == len(targets.accepted(where["hook"])) == 1
    outcome = await notifier.send(req)  # Temporal's retry
    assert outcome.count(": already sent") == 2 and outcome.count(": sent") == 1, outcome  # only PagerDuty
    assert all(len(targets.accepted(p)) == 1 for p in where.values())


async def test_two_processes_deliver_each_event_once_and_honour_retry_after(
    targets: FakeTargets, servers: Servers, http: httpx.AsyncClient, store: RedisStore
) -> None:
    """Two processes send the same events at once, as two workers running one event's retries
    would: each event reaches each channel once, and a 429's Retry-After pauses both processes."""
    where = paths()
    configs = channels(targets, where)
    for path in (where["slack"], where["hook"]):
        targets.script[path] = [(429, {"Retry-After": "1"})]
    events = [event(exchange=f"ex{n}") for n in range(4)]
    args = [servers.redis_url, json.dumps(configs), json.dumps([e.model_dump(mode="json") for e in events])]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.notify_sender",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = [await asyncio.wait_for(p.communicate(), 90) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    # What a retry would still owe (an attempt that met the other process's lease) goes out now.
    notifier = notifier_for(configs, http, store)
    for e in events:
        await notifier.send(NotifyRequest(event=e))

    ids = sorted(e.event_id for e in events)
    assert (
        sorted(h.json["dedup_key"].removeprefix("perseus-") for h in targets.accepted(where["pagerduty"]))
        == ids
    )
    assert sorted(h.headers["x-perseus-event-id"] for h in targets.accepted(where["hook"])) == ids
    slack_ids = [
        h.json["blocks"][1]["elements"][0]["text"].rsplit(" · ", 1)[1]
        for h in targets.accepted(where["slack"])
    ]
    assert sorted(slack_ids) == ids
    for path in (where["slack"], where["hook"]):
        hits = [h for h in targets.hits if h.path == path]
        (refused,) = [h for h in hits if h.status == 429]
        # Nobody, in either process, sent to that target again before Retry-After had passed.
        assert all(h.at - refused.at >= 1.0 for h in hits if h.at > refused.at), path


async def test_a_hanging_target_does_not_hold_up_a_transition(
    servers: Servers,
    temporal: PrivateTemporal,
    targets: FakeTargets,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """Every notification of this worker goes to a target that takes the request and never answers:
    the instance still walks up to active, while its notifications wait."""
    where = paths()
    targets.hang.add(where["hook"])
    hook = {"name": "stuck", "kind": "webhook", "url": targets.url(where["hook"]), "secret": SECRET}
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}", "PERSEUS_NOTIFY_CHANNELS": json.dumps([hook])}
    host = host_name("notify")
    worker = WorkerProcess(servers, host, shared=True, extra_env=env)
    worker_processes.append(worker)
    await worker.ready()
    ex_id = await exchange_id(servers, exchange)
    await control.register(
        temporal.client,
        exchange=exchange,
        host=host,
        admin_email=None,
        heartbeat_interval_s=1.0,
        start=True,
        standby=False,
    )
    await wait_for(lambda: active_on(store, ex_id, host), timeout=60)

    async def waiting() -> list[Hit] | None:
        held = [h for h in targets.hits if h.path == where["hook"]]
        return held or None

    held = await wait_for(waiting, timeout=30)  # the notifications did start...
    assert all(h.status is None for h in held)  # ...and not one was answered: nothing waited for them
    assert exchange in held[0].json["event"]["exchangeName"]
