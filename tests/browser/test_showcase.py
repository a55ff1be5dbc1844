"""The screenshot for the docs: the six demo exchanges in a stack of their own, in every kind of state.

A separate database, Redis database and Temporal namespace keep the test exchanges other tests create
off the picture; the states are reached through the real workflows (a simulated connector that fails
its warm-up gives the error), then the page is checked and photographed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from playwright.async_api import Page
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.models import ConnectorSpec
from perseus.store import db
from perseus.temporal import converter, register_search_attributes
from tests.browser.conftest import Api, sign_in, start_api, stop_api
from tests.conftest import Servers

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

NAMESPACE = "perseus-showcase"
HOSTS = ("alpha", "bravo")
INTERVAL = 2.0


async def namespace_client(servers: Servers, namespace: str) -> Client:
    base = await Client.connect(servers.temporal_address, data_converter=converter)
    with contextlib.suppress(RPCError):  # already registered by an earlier session on this server
        await base.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
            )
        )
    client = await Client.connect(servers.temporal_address, namespace=namespace, data_converter=converter)
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
            await register_search_attributes(client)
            return client
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


@dataclass
class Showcase:
    client: Client
    api: Api


@pytest_asyncio.fixture
async def showcase(servers: Servers, settings: Settings) -> AsyncIterator[Showcase]:
    url = await services.ensure_database(servers.postgres, "perseus_showcase")
    await db.apply_schema(url)
    await db.apply_sql(url, db.DEMO_DATA_PATH)
    own = settings.model_copy(
        update={"database_url": url, "redis_url": servers.redis_url.rsplit("/", 1)[0] + "/3"}
    )
    client = await namespace_client(servers, NAMESPACE)

    from worker import run_worker

    stop = asyncio.Event()
    tasks = []
    for host, shared in zip(HOSTS, (True, False), strict=True):
        ready = asyncio.Event()
        task = asyncio.create_task(run_worker(own, client, host, stop, shared_queue=shared, ready=ready))
        await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        tasks.append(task)
    api, api_task = await start_api(own)
    try:
        yield Showcase(client, api)
    finally:
        await stop_api(api, api_task)
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)


async def register(
    client: Client,
    exchange: str,
    host: str,
    *,
    admin: bool = False,
    start: bool = False,
    fail_steps: list[str] | None = None,
    standby: bool = False,
    priority: int = 0,
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=host,
        admin_email="admin@perseus.local" if admin else None,
        heartbeat_interval_s=INTERVAL,
        start=start,
        connector=ConnectorSpec(fail_steps=fail_steps) if fail_steps else None,
        standby=standby,
        priority=priority,
    )


async def command(client: Client, exchange: str, host: str, which: Command) -> None:
    await control.command(client, exchange=exchange, host=host, default_host=host, command=which)


async def test_every_state_on_one_page(showcase: Showcase, page: Page, screenshots: Path) -> None:
    client = showcase.client
    alpha, bravo = HOSTS
    try:
        await asyncio.gather(
            register(client, "coinbase", alpha, admin=True, start=True),
            register(client, "binance", bravo, start=True),
            register(client, "kraken", alpha, admin=True),
            register(client, "kucoin", bravo, start=True, fail_steps=["warm_up"]),
            register(client, "mexc", alpha, start=True),
        )
        # Failover readiness on the cards: coinbase and binance each have a standby on the other host.
        await asyncio.gather(
            register(client, "coinbase", bravo, standby=True, priority=5),
            register(client, "binance", alpha, standby=True, priority=1),
        )
        await sign_in(page, showcase.api, refresh=1)
        await page.wait_for_function(
            "() => document.querySelector('.card[data-exchange=\"mexc\"]')?.dataset.state === 'active'"
        )
        await command(client, "mexc", alpha, Command.SHUTDOWN)
        expected = {
            "coinbase": "active",
            "binance": "active",
            "kraken": "idle",
            "kucoin": "idle",
            "mexc": "offline",
            "binance_us": "not-running",  # never registered: a neutral card, not an alarm
        }
        await page.wait_for_function(
            """(expected) => Object.entries(expected).every(([name, state]) =>
                   document.querySelector(`.card[data-exchange="${name}"]`)?.dataset.state === state)
               && document.querySelector('.card[data-exchange="kucoin"] [data-field="last-error"]')
               && document.querySelector('.card[data-exchange="mexc"] [data-field="last-state"]')
               && document.querySelector('.card[data-exchange="coinbase"] [data-field="standby"]')
               && document.querySelector('.card[data-exchange="binance"] [data-field="standby"]')""",
            arg=expected,
            timeout=30_000,
        )
        # Only the active holders count as up; the idle ones hold a claim but run no connector.
        assert await page.locator("#online-count").inner_text() == "2 of 6 up, 4 online"
        kucoin_error = await page.locator(
            '.card[data-exchange="kucoin"] [data-field="last-error"]'
        ).inner_text()
        assert kucoin_error.startswith("Last error:") and "warm" in kucoin_error
        assert await page.locator('.card[data-exchange="mexc"] [data-field="hostname"]').inner_text() == alpha
        assert await page.locator('.card[data-exchange="coinbase"] [data-role="timeline"] rect').count() >= 1
        coinbase_standby = await page.locator(
            '.card[data-exchange="coinbase"] [data-field="standby"]'
        ).inner_text()
        assert coinbase_standby.startswith(bravo) and "priority 5" in coinbase_standby
        assert (
            await page.locator('.card[data-exchange="kraken"] [data-role="standbys"]').inner_text()
            == "no standby"
        )
        assert (
            await page.locator('.card[data-exchange="binance_us"] [data-role="badge"]').text_content()
            == "not running"
        )
        await page.wait_for_selector('.card[data-exchange="coinbase"] [data-role="uptime"]')
        await asyncio.sleep(1.5)  # let the heartbeat ages settle into a normal-looking picture
        await page.screenshot(path=str(screenshots / "network.png"), full_page=True)
    finally:
        for exchange, host in (
            ("coinbase", bravo),
            ("binance", alpha),
            ("coinbase", alpha),
            ("binance", bravo),
            ("kraken", alpha),
            ("kucoin", bravo),
        ):
            with contextlib.suppress(Exception):
                await command(client, exchange, host, Command.SHUTDOWN)
