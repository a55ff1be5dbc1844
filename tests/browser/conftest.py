"""Browser fixtures: the real API over a socket, and Debian's Chromium driven by Playwright.

Playwright's own browser download is never used (``executable_path`` points at the system
Chromium, which ``make test`` installs with apt when it is missing).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from perseus.api.server import build_server
from perseus.config import Settings
from perseus.devstack.services import free_port
from perseus.store import db
from tests.conftest import ROOT, Servers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


@dataclass
class Api:
    url: str
    key: str
    server: object

    def page_url(self, refresh: float | None = None) -> str:
        return f"{self.url}/network" + (f"?refresh={refresh}" if refresh else "")


async def start_api(
    settings: Settings, port: int | None = None, temporal_address: str | None = None
) -> tuple[Api, asyncio.Task[None]]:
    pool = db.make_pool(settings.database_url)
    await pool.open(wait=True)
    try:
        key = await db.Catalog(pool).create_api_key("browser-tests")
    finally:
        await pool.close()
    port = port or free_port()
    server = build_server(settings, port, temporal_address)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("the API stopped before it started")
        await asyncio.sleep(0.02)
    return Api(f"http://127.0.0.1:{port}", key, server), task


async def stop_api(api: Api, task: asyncio.Task[None]) -> None:
    api.server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 30)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' pictures go: a temporary folder, or docs/screenshots when
    ``PERSEUS_UPDATE_SCREENSHOTS=1`` (so an ordinary test run never rewrites tracked files)."""
    if os.environ.get("PERSEUS_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest_asyncio.fixture(scope="module")
async def api(servers: Servers, settings: Settings) -> AsyncIterator[Api]:
    """``perseus api`` in-process on a free port, over the harness' Redis and PostgreSQL."""
    started, task = await start_api(settings)
    yield started
    await stop_api(started, task)


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture
async def page(context: BrowserContext) -> Page:
    page = await context.new_page()
    page.set_default_timeout(15_000)
    return page


async def sign_in(page: Page, api: Api, refresh: float | None = None) -> None:
    """Open the page and type the key the way a person would (it is then kept in localStorage)."""
    await page.goto(api.page_url(refresh))
    await page.fill("#key-input", api.key)
    await page.click("#key-form button[type=submit]")
    await page.wait_for_selector("#cards .card")
