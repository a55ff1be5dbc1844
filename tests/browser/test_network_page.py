"""The network page in real headless Chromium against a live stack: real API over a socket, real
worker, Redis, PostgreSQL and Temporal; lifecycles driven through the ``perseus`` CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Page, Route

from perseus.config import Settings
from perseus.core.lifecycle import State
from perseus.keys import retention_min_id
from perseus.models import EventKind, NetworkEvent
from perseus.store.redis_store import RedisStore
from tests.browser.conftest import Api, sign_in, start_api, stop_api
from tests.conftest import Servers, WorkerProcess, perseus

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REFRESH_S = 5.0  # the page's default polling interval


async def cli(servers: Servers, *args: str) -> str:
    result = await asyncio.to_thread(perseus, servers, *args)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def card(exchange: str) -> str:
    return f'.card[data-exchange="{exchange}"]'


async def card_state(page: Page, exchange: str) -> tuple[str | None, str | None]:
    found = await page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
                      return c ? [c.dataset.state, c.dataset.heartbeat || null] : [null, null]; }""",
        card(exchange),
    )
    return found[0], found[1]


async def wait_state(page: Page, exchange: str, state: str, timeout_s: float) -> float:
    """Wait until the card shows ``state``; returns how long it took."""
    started = time.monotonic()
    await page.wait_for_function(
        "([sel, state]) => document.querySelector(sel)?.dataset.state === state",
        arg=[card(exchange), state],
        timeout=timeout_s * 1000,
    )
    return time.monotonic() - started


async def field(page: Page, exchange: str, name: str) -> str:
    return (await page.locator(f'{card(exchange)} [data-field="{name}"]').first.inner_text()).strip()


async def shoot(page: Page, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / name), full_page=True)


async def test_live_cards_and_a_cli_transition_within_one_refresh(
    screenshots: Path, servers: Servers, shared_worker: str, api: Api, page: Page, exchange: str
) -> None:
    out = await cli(
        servers,
        "register",
        exchange,
        "--host",
        shared_worker,
        "--admin-email",
        "admin@perseus.local",
        "--heartbeat-interval",
        "0.5",
        "--start",
        "--json",
    )
    registered = json.loads(out)
    try:
        await sign_in(page, api)
        await wait_state(page, exchange, "active", 15)
        assert await page.locator(f"{card(exchange)} [data-role=badge]").text_content() == "active"
        assert await field(page, exchange, "hostname") == registered["hostname"]
        assert await field(page, exchange, "ip") == (registered["ipAddress"] or "N/A")
        assert await field(page, exchange, "admin") == "Perseus Admin"
        assert await field(page, exchange, "symbols") == "3 symbols"
        assert await field(page, exchange, "epoch") == str(registered["epoch"])
        assert await field(page, exchange, "running") in ("<1m", "1m")
        heartbeat = page.locator(f'{card(exchange)} [data-field="heartbeat"]')
        assert (await heartbeat.inner_text()).endswith("s ago")
        assert await heartbeat.get_attribute("class") == "hb-fresh"
        board = await page.evaluate("() => document.getElementById('online-count').textContent")
        counts, online = board.split(" up, ")
        up, total = counts.split(" of ")
        assert 1 <= int(up) <= int(online.removesuffix(" online")) <= int(total)
        assert int(total) >= 7  # six demo exchanges + ours
        assert await page.locator("nav a[aria-current=page]").inner_text() == "Network"
        await shoot(page, screenshots, "network-live.png")

        # A transition made through the CLI shows within one refresh.
        await cli(servers, "stop", exchange, "--host", shared_worker)
        took = await wait_state(page, exchange, "idle", REFRESH_S + 3)
        assert took <= REFRESH_S + 1.5, f"idle appeared after {took:.1f}s"
        assert await field(page, exchange, "running") == "N/A"

        # The feed, filtered to this exchange: newest first, every transition once.
        await page.select_option("#filter-exchange", exchange)
        await page.wait_for_function(
            "() => document.querySelectorAll('#feed li').length === 6 && "
            "[...document.querySelectorAll('#feed li')].every(li => li.dataset.id.endsWith('@' + "
            f"{json.dumps(exchange)}))"
        )
        texts = await page.locator("#feed li .what").all_inner_texts()
        name = exchange.upper()  # the display name the catalog row got
        assert texts == [
            f"{name}: stopped → idle",
            f"{name}: stopping → stopped",
            f"{name}: active → stopping",
            f"{name}: warming → active",
            f"{name}: starting → warming",
            f"{name}: idle → starting",
        ]
        assert "admin@perseus.local" in await page.locator("#feed li .who").first.inner_text()

        # A pause shows on the card (and on its standbys' lines) until it is resumed.
        await cli(servers, "pause", exchange, "--for", "5m")
        await page.wait_for_function(
            "(sel) => document.querySelector(sel)?.dataset.paused === 'true'",
            arg=card(exchange),
            timeout=15_000,
        )
        note = await page.locator(f"{card(exchange)} [data-role=paused]").inner_text()
        assert (
            note.startswith("Paused until ") and "by cli:" in note and note.endswith("no automatic failover")
        )
        await cli(servers, "resume", exchange)
        await page.wait_for_function(
            "(sel) => document.querySelector(sel) && !document.querySelector(sel).dataset.paused",
            arg=card(exchange),
            timeout=15_000,
        )
    finally:
        await cli(servers, "shutdown", exchange, "--host", shared_worker)

    # Shut down: offline, with what the stream last said about it.
    await wait_state(page, exchange, "offline", REFRESH_S + 3)
    assert await page.locator(f"{card(exchange)} [data-role=badge]").text_content() == "offline"
    assert await field(page, exchange, "hostname") == registered["hostname"]
    assert await field(page, exchange, "last-state") == "idle"
    assert (await field(page, exchange, "last-seen")).startswith("No active connection · last seen")


async def test_a_cli_transition_is_pushed_to_an_open_page_without_polling(
    screenshots: Path, servers: Servers, shared_worker: str, api: Api, page: Page, exchange: str
) -> None:
    beat = ("--heartbeat-interval", "0.5")
    await cli(servers, "register", exchange, "--host", shared_worker, "--start", *beat)
    try:
        # The API's single reader picks a new exchange up within its catalog refresh (2 s).
        live = api.server.config.app.state.live  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while exchange not in live.streams:
            assert time.monotonic() < deadline, "no stream reader for the new exchange"
            await asyncio.sleep(0.05)
        # Polling practically off (once an hour): whatever changes from here on came by push.
        await sign_in(page, api, refresh=3600)
        await page.wait_for_function(
            "() => document.body.dataset.live === 'push' && Number(document.body.dataset.polls) >= 2"
        )
        await wait_state(page, exchange, "active", 15)
        assert await page.locator("#connection").inner_text() == "live · push"
        polls = await page.evaluate("() => document.body.dataset.polls")
        reads: list[str] = []
        page.on("request", lambda r: reads.append(r.url) if "/api/network/instances" in r.url else None)

        await cli(servers, "stop", exchange, "--host", shared_worker)
        done = time.monotonic()
        await wait_state(page, exchange, "idle", 3)
        print(f"pushed transition shown {time.monotonic() - done:.3f}s after the CLI returned")
        assert reads == [] and await page.evaluate("() => document.body.dataset.polls") == polls
        pushed = await page.locator(card(exchange)).get_attribute("data-pushed")
        assert pushed and "-" in pushed  # the card came from a pushed stream entry
        first = page.locator("#feed li").first
        assert (await first.get_attribute("data-id")) == f"{pushed}@{exchange}"
        assert await first.locator(".what").inner_text() == f"{exchange.upper()}: stopped → idle"
        assert await page.locator(f"{card(exchange)} [data-role=standbys]").inner_text() == "no standby"
        await shoot(page, screenshots, "network-pushed.png")
    finally:
        await cli(servers, "shutdown", exchange, "--host", shared_worker)


async def test_an_exchange_with_the_failsafe_on_says_so_quietly_on_its_card(
    servers: Servers, settings: Settings, shared_worker: str, page: Page, exchange: str
) -> None:
    """The failsafe's line comes from Temporal (/api/network/failsafe), not from the board: "failsafe
    on" while nothing holds, only on the cards of exchanges that have it, gone once nobody has it."""
    # An API that reaches Temporal (the module's `api` reads Redis and PostgreSQL only).
    plain = settings.model_copy(update={"payload_plaintext": True})
    api, task = await start_api(plain, temporal_address=servers.temporal_address)
    # A short interval: the keeper binds itself for a promise (3 intervals) from its start.
    await cli(
        servers,
        "register",
        exchange,
        "--host",
        shared_worker,
        "--start",
        "--failsafe",
        "--heartbeat-interval",
        "1",
    )
    running = True
    try:
        await sign_in(page, api, refresh=1)
        await wait_state(page, exchange, "active", 15)
        line = page.locator(f"{card(exchange)} [data-role=failsafe]")
        await line.wait_for(timeout=10_000)
        assert await line.inner_text() == "failsafe on"
        assert await line.get_attribute("data-holding") == "false"
        assert await line.get_attribute("title") == "1 in the roster"
        # The demo exchanges run without it: no line on their cards.
        cards = await page.locator(".card").count()
        assert 1 <= await page.locator(".card [data-role=failsafe]").count() < cards
        await cli(servers, "shutdown", exchange, "--host", shared_worker)
        running = False
        # The roster stays, empty: no running instance has the failsafe, so no line.
        await page.wait_for_function(
            "(sel) => !document.querySelector(sel)",
            arg=f"{card(exchange)} [data-role=failsafe]",
            timeout=10_000,
        )
    finally:
        if running:
            await cli(servers, "shutdown", exchange, "--host", shared_worker)
        await stop_api(api, task)


async def test_a_poll_read_before_a_pushed_transition_does_not_turn_the_card_back(
    servers: Servers, shared_worker: str, api: Api, page: Page, exchange: str
) -> None:
    """A poll is read by the server, a transition is pushed, then the poll's answer arrives: the
    card keeps the pushed state (a CI run saw 'active' turn back into 'warming' this way)."""
    await cli(
        servers, "register", exchange, "--host", shared_worker, "--start", "--heartbeat-interval", "0.5"
    )
    try:
        live = api.server.config.app.state.live  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while exchange not in live.streams:  # the API's reader picks the exchange up (catalog refresh)
            assert time.monotonic() < deadline, "no stream reader for the new exchange"
            await asyncio.sleep(0.05)
        await sign_in(page, api, refresh=1)
        await page.wait_for_function("() => document.body.dataset.live === 'push'")
        await wait_state(page, exchange, "active", 15)

        read, deliver = asyncio.Event(), asyncio.Event()

        async def held(route: Route) -> None:
            answer = await route.fetch()  # read by the server now, while the exchange is active
            read.set()
            await deliver.wait()
            await route.fulfill(response=answer)

        await page.route("**/api/network/instances", held)
        await asyncio.wait_for(read.wait(), 10)
        await cli(servers, "stop", exchange, "--host", shared_worker)
        await wait_state(page, exchange, "idle", 5)  # pushed while the poll is held
        polls = int(await page.evaluate("() => document.body.dataset.polls"))
        deliver.set()
        await page.wait_for_function(f"() => Number(document.body.dataset.polls) > {polls}")
        await page.unroute("**/api/network/instances", held)
        assert (await card_state(page, exchange))[0] == "idle"
        assert await page.locator(f"{card(exchange)} [data-role=badge]").text_content() == "idle"
    finally:
        await cli(servers, "shutdown", exchange, "--host", shared_worker)


@pytest.mark.slow
async def test_killed_worker_turns_late_then_offline_with_last_known_info(
    screenshots: Path,
    servers: Servers,
    shared_worker: str,
    api: Api,
    page: Page,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    host = f"page-kill-{uuid.uuid4().hex[:6]}"
    proc = WorkerProcess(servers, host)
    worker_processes.append(proc)
    await proc.ready()
    # 3 s heartbeats: "late" (1.5 intervals) comes seconds before the key expires (TTL 9 s; the
    # workflow hears of the dead host only at its heartbeat timeout, 18.75 s). At 0.5 s the key is
    # gone 1.5 s after the kill: too short a window to watch.
    await cli(servers, "register", exchange, "--host", host, "--heartbeat-interval", "3", "--start")
    await sign_in(page, api, refresh=0.5)
    await wait_state(page, exchange, "active", 15)
    assert await field(page, exchange, "hostname") == host

    proc.signal(signal.SIGKILL)
    proc.wait(10)
    seen: list[tuple[str | None, str | None]] = []
    shot = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = await card_state(page, exchange)
        if not seen or seen[-1] != now:
            seen.append(now)
        if now[1] in ("late", "stale") and not shot:
            await shoot(page, screenshots, "network-late.png")
            shot = True
        if now[0] == "offline":
            break
        await asyncio.sleep(0.1)
    assert seen[-1][0] == "offline", seen
    late_at = next(i for i, (_, hb) in enumerate(seen) if hb in ("late", "stale"))
    assert seen[late_at][0] != "offline" and late_at < len(seen) - 1, seen

    # Offline with its last-known info from the stream: the host that died and the state it was left in.
    await page.wait_for_function(
        "(sel) => document.querySelector(sel + ' [data-field=\"last-state\"]')?.textContent === 'idle'",
        arg=card(exchange),
        timeout=40_000,  # the workflow's walk down to idle follows its heartbeat timeout (18.75 s)
    )
    assert await field(page, exchange, "hostname") == host
    await page.select_option("#filter-exchange", exchange)
    # Other tests' hosts were lost too, and the filter applies on the next refresh: find ours by name.
    ours = page.locator("#feed li[data-event=instance_lost]", has_text=host)
    await ours.wait_for()
    lost = await ours.locator(".what").inner_text()
    assert "instance lost" in lost and host in lost
    await shoot(page, screenshots, "network-instance-lost.png")


async def test_feed_pages_back_and_filters(api: Api, page: Page, exchange: str, store: RedisStore) -> None:
    # 120 entries written by the real stream writer: every 10th is an error.
    written: list[str] = []
    for n in range(120):
        kind = EventKind.ERROR if n % 10 == 9 else EventKind.STATE_TRANSITION
        event = NetworkEvent(
            event=kind,
            event_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            exchange_id=0,
            exchange_name=exchange,
            hostname="feed-host",
            instance_id="i",
            epoch=n,
            from_state=State.IDLE if kind is EventKind.STATE_TRANSITION else None,
            to_state=State.STARTING if kind is EventKind.STATE_TRANSITION else None,
            error=f"failure {n}" if kind is EventKind.ERROR else None,
            state=State.WARMING if kind is EventKind.ERROR else None,
        )
        min_id = retention_min_id(datetime.now(UTC))
        written.append(await store.append_event(exchange, event.event_id, min_id, event.fields()))
    newest_first = [f"{entry_id}@{exchange}" for entry_id in reversed(written)]

    await sign_in(page, api)
    await page.select_option("#filter-exchange", exchange)
    ids = "() => [...document.querySelectorAll('#feed li')].map(li => li.dataset.id)"
    await page.wait_for_selector(f'#feed[data-exchange="{exchange}"]', state="attached")
    await page.wait_for_function("() => document.querySelectorAll('#feed li').length === 50")
    assert await page.evaluate(ids) == newest_first[:50]
    await page.click("#load-more")
    await page.wait_for_function("() => document.querySelectorAll('#feed li').length === 100")
    assert await page.evaluate(ids) == newest_first[:100]
    await page.click("#load-more")
    await page.wait_for_function("() => document.querySelectorAll('#feed li').length === 120")
    assert await page.evaluate(ids) == newest_first
    assert await page.locator("#load-more").is_hidden()
    assert "the end of the log" in await page.locator("#feed-status").inner_text()
    # A refresh keeps the pages loaded so far.
    await asyncio.sleep(REFRESH_S + 0.5)
    assert await page.evaluate(ids) == newest_first

    await page.select_option("#filter-event", "error")
    await page.wait_for_selector('#feed[data-event="error"]', state="attached")
    await page.wait_for_function("() => document.querySelectorAll('#feed li').length === 12")
    assert await page.evaluate(ids) == [i for n, i in enumerate(newest_first) if (119 - n) % 10 == 9]
    assert (await page.locator("#feed li .what").first.inner_text()) == f"{exchange.upper()}: failure 119"


async def test_bad_key_shows_an_error_and_no_data(screenshots: Path, api: Api, page: Page) -> None:
    await page.goto(api.page_url())
    assert await page.locator("#key-panel").is_visible()
    assert await page.locator("#cards .card").count() == 0
    await page.fill("#key-input", str(uuid.uuid4()))
    await page.click("#key-form button[type=submit]")
    banner = page.locator("#banner.error")
    await banner.wait_for()
    assert "API key rejected (401)" in await banner.inner_text()
    assert await page.locator("#key-panel").is_visible()
    assert await page.locator("#network").is_hidden()
    assert await page.evaluate("() => localStorage.getItem('perseus.apiKey')") is None
    await shoot(page, screenshots, "network-bad-key.png")

    # The HTML itself carries no data, and the API refuses a request without the key.
    served = await page.request.get(f"{api.url}/network")
    html = await served.text()
    assert "exchangeId" not in html and "coinbase" not in html.lower()
    assert "default-src 'none'" in served.headers["content-security-policy"]
    assert (await page.request.head(f"{api.url}/network")).status == 200
    assert (await page.request.get(f"{api.url}/api/network/instances")).status == 401

    # A good key, entered once, is kept for the next visit.
    await page.fill("#key-input", api.key)
    await page.click("#key-form button[type=submit]")
    await page.wait_for_selector("#cards .card")
    assert await page.locator("#banner").is_hidden()
    await page.reload()
    await page.wait_for_selector("#cards .card")
    assert await page.locator("#key-panel").is_hidden()


async def test_api_offline_shows_retrying_then_recovers(
    screenshots: Path, settings: Settings, page: Page
) -> None:
    own, task = await start_api(settings)
    port = int(own.url.rsplit(":", 1)[1])
    await sign_in(page, own, refresh=1)
    await stop_api(own, task)
    banner = page.locator("#banner.offline")
    await banner.wait_for(timeout=10_000)
    assert "API offline — retrying every 1s" in await banner.inner_text()
    assert await page.locator("#connection").inner_text() == "API offline"
    assert await page.locator("#cards .card").count() > 0  # the last data stays, dimmed
    await shoot(page, screenshots, "network-api-offline.png")

    back, task = await start_api(settings, port)
    try:
        await page.wait_for_selector("#banner", state="hidden", timeout=10_000)
        assert (await page.locator("#connection").inner_text()).startswith("live")
    finally:
        await stop_api(back, task)
