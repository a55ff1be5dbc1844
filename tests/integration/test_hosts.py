"""``perseus hosts`` and ``GET /api/network/hosts``: live host workers as they announce themselves."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from temporalio.client import Client

from perseus import timing
from perseus import version as release
from perseus.api.app import create_app
from perseus.client import control
from perseus.config import Settings
from perseus.core.lifecycle import Command
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id, perseus
from tests.integration.conftest_api import bearer
from tests.integration.helpers import active_on, host_name, wait_for

pytestmark = pytest.mark.integration


async def test_hosts_show_each_worker_and_what_it_holds(
    servers: Servers,
    settings: Settings,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    host = host_name("hosts")
    proc = WorkerProcess(servers, host, args=("--metrics-port", "0"))
    worker_processes.append(proc)
    await proc.ready()
    ex_id = await exchange_id(servers, exchange)
    await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=1.0, start=True
    )
    await wait_for(lambda: active_on(store, ex_id, host))

    async def listed() -> dict[str, object] | None:
        result = await asyncio.to_thread(perseus, servers, "hosts", "--json")
        assert result.returncode == 0, result.stderr
        rows = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
        row = rows.get(host)
        return row if row is not None and row["claims"] == 1 else None

    # The worker announces every few seconds: its claim shows at the next announcement.
    row = await wait_for(listed, timeout=30)
    assert row["watches"] == 0 and row["sharedQueue"] is False and row["workers"] == 1
    # The worker runs from this checkout: its release and commit, announced, logged at its start,
    # and stamped on the claim it took.
    assert (row["version"], row["build"], row["outdated"]) == (release.version(), release.build(), False)
    assert f"worker for host {host} starting: perseus {release.describe()}" in proc.log.read_text()
    holder = (await store.status(ex_id)).record
    assert holder is not None and holder.perseus_version == release.version()
    # ...and the renew deadline that host's keeper enforces, from which standbys draw their line.
    assert holder.renew_deadline_ms == int(timing.renew_deadline_s(1.0) * 1000) == 1700
    assert row["capacity"] == Settings.model_fields["host_capacity"].default
    assert str(row["metricsUrl"]).startswith("http://127.0.0.1:") and str(row["metricsUrl"]).endswith(
        "/metrics"
    )
    assert row["lastPollAt"] is not None  # from Temporal: its host queue's poller
    assert (await asyncio.to_thread(perseus, servers, "hosts")).returncode == 0

    conn = await db.connect(servers.database_url)
    async with conn:
        key = await db.Catalog(db.OneConnection(conn)).create_api_key(f"test-{uuid.uuid4().hex[:6]}")
    app = create_app(settings, temporal_address=servers.temporal_address)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perseus") as http,
    ):
        assert (await http.get("/api/network/hosts")).status_code == 401
        answer = (await http.get("/api/network/hosts", headers=bearer(key))).json()
        served = {h["host"]: h for h in answer["hosts"]}
        assert served[host]["claims"] == 1 and served[host]["lastPollAt"] is not None
        assert served[shared_worker]["sharedQueue"] is True  # the in-process worker serves it
        assert "serverTime" in answer

    await control.command(client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN)
    proc.signal(15)  # SIGTERM: a graceful stop withdraws the announcement at once

    async def gone() -> bool | None:
        return True if host not in {r.host for r in await store.workers()} else None

    await wait_for(gone, timeout=30)
