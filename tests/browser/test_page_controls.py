"""The page's controls in headless Chromium: an operate key stops an exchange from its card (behind
a confirmation naming the exchange and the host) and watches it walk down through the live stream;
a read key sees no controls, and a POST forged with it is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from playwright.async_api import Dialog, Page
from temporalio.client import Client

from perseus.api.server import build_server
from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.devstack.services import free_port
from perseus.keys import iso
from perseus.models import Scope, StandbyRecord
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.browser.conftest import Api, sign_in
from tests.conftest import Servers, exchange_id
from tests.integration.helpers import active_on, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest_asyncio.fixture(scope="module")
async def keys(servers: Servers) -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    pool = db.make_pool(servers.database_url)
    await pool.open(wait=True)
    try:
        catalog = db.Catalog(pool)
        return {
            "read": await catalog.create_api_key(f"page-read-{tag}"),
            "operate": await catalog.create_api_key(f"page-op-{tag}", scope=Scope.OPERATE),
            "operate-name": f"page-op-{tag}",
        }
    finally:
        await pool.close()


@pytest_asyncio.fixture(scope="module")
async def writable_api(servers: Servers, settings: Settings, keys: dict[str, str]) -> AsyncIterator[Api]:
    """The API with a Temporal client for its write routes (plain payloads, like the test worker)."""
    port = free_port()
    server = build_server(
        settings.model_copy(update={"payload_plaintext": True}), port, servers.temporal_address
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield Api(f"http://127.0.0.1:{port}", keys["read"], server)
    server.should_exit = True
    await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture
async def running(
    client: Client, servers: Servers, store: RedisStore, shared_worker: str, exchange: str
) -> AsyncIterator[str]:
    await control.register(
        client, exchange=exchange, host=shared_worker, admin_email=None, heartbeat_interval_s=1.0, start=True
    )
    # Active before the test looks: a start still walking would add transitions under its feet.
    ex_id = await exchange_id(servers, exchange)
    await wait_for(lambda: active_on(store, ex_id, shared_worker), timeout=60)
    yield exchange
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


def card(exchange: str) -> str:
    return f'.card[data-exchange="{exchange}"]'


async def test_an_operate_key_stops_an_exchange_from_its_card(
    writable_api: Api, keys: dict[str, str], page: Page, running: str, store: RedisStore
) -> None:
    asked: list[str] = []

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", answer)
    await sign_in(page, dataclasses.replace(writable_api, key=keys["operate"]))
    stop = page.locator(f'{card(running)} [data-action="stop"]')
    await stop.wait_for(timeout=20_000)
    hostname = (await page.locator(f'{card(running)} [data-field="hostname"]').inner_text()).strip()
    await stop.click()
    # The card walks down on the live stream; the feed shows who asked.
    await page.wait_for_function(
        "(sel) => ['stopped', 'idle'].includes(document.querySelector(sel)?.dataset.state)",
        arg=card(running),
        timeout=30_000,
    )
    assert asked == [f"Stop {running} on {hostname}?"]
    actor = f"api:{keys['operate-name']}"
    stopped = [f for _, f in await store.events(running) if f.get("toState") == "stopped"]
    assert stopped and stopped[0]["actor"] == actor
    await page.select_option("#filter-exchange", running)
    await page.wait_for_function(
        "(who) => [...document.querySelectorAll('#feed li .who')].some(n => n.textContent.includes(who))",
        arg=f"by {actor}",
        timeout=15_000,
    )
    # Stopped (idle again): the card now offers a start instead.
    await page.locator(f'{card(running)} [data-action="start"]').wait_for(timeout=15_000)


async def test_a_read_key_sees_no_controls_and_a_forged_post_is_refused(
    writable_api: Api, page: Page, running: str, store: RedisStore
) -> None:
    await sign_in(page, writable_api)
    await page.wait_for_function(
        "(sel) => document.querySelector(sel)?.dataset.state === 'active'", arg=card(running), timeout=20_000
    )
    assert await page.locator("[data-action]").count() == 0
    before = await store.events(running)
    status = await page.evaluate(
        """async ([exchange, key]) => (await fetch(`/api/network/exchanges/${exchange}/commands`, {
             method: "POST", body: JSON.stringify({command: "stop"}),
             headers: {Authorization: `Bearer ${key}`, "Content-Type": "application/json"}})).status""",
        [running, writable_api.key],
    )
    assert status == 403
    assert await store.events(running) == before


async def test_a_handoff_button_per_listed_standby_asks_first_and_a_no_sends_nothing(
    writable_api: Api, keys: dict[str, str], page: Page, running: str, store: RedisStore, servers: Servers
) -> None:
    """A listed standby gets its button; the confirmation names the exchange, the active host and
    the target; answering no sends nothing and changes nothing. (The POST itself is the stop's,
    above, and the route's matrix in tests/integration/test_write_routes.py.)"""
    ex_id = await exchange_id(servers, running)
    now = iso(datetime.now(UTC))
    listed = StandbyRecord(
        exchange_id=ex_id,
        exchange_name=running,
        host="spare-host",
        hostname="spare-machine",
        instance_id=str(uuid.uuid4()),
        workflow_id=f"instance-{running}-spare-host",
        registered_at=now,
        last_heartbeat=now,
        ttl_ms=120_000,
        heartbeat_interval_ms=40_000,
    )
    await store.put_standby(ex_id, listed.instance_id, listed.wire(), listed.ttl_ms, 1)
    asked: list[str] = []
    posted: list[str] = []

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", answer)
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    await sign_in(page, dataclasses.replace(writable_api, key=keys["operate"]))
    button = page.locator(f'{card(running)} [data-action="handoff"][data-target="spare-host"]')
    await button.wait_for(timeout=20_000)
    assert (await button.inner_text()).strip() == "Hand off to spare-host"
    hostname = (await page.locator(f'{card(running)} [data-field="hostname"]').inner_text()).strip()
    before = await store.events(running)
    await button.click()
    await page.wait_for_function("() => true")  # the click's handler has run by the next task
    assert asked == [f"Hand {running} over from {hostname} to spare-host (spare-machine)?"]
    assert posted == [] and await store.events(running) == before
