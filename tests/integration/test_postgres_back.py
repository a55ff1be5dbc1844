"""PostgreSQL back after an outage: a process's pool answers again at once, whatever its
reconnection backoff had grown to while the server was away.

A claim reads and raises the exchange's epoch high-water mark in PostgreSQL, so a pool still waiting
out its backoff when PostgreSQL returns delays the next failover on that host (the chaos suite: a
standby host restarted while PostgreSQL was down took 6.1 s over a 5.4 s bound once the holder died).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from perseus.errors import ServiceUnavailable
from perseus.store import db
from tests.conftest import Servers, exchange_id
from tests.integration.proxy import StallableProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("opened_while_down", [False, True])
async def test_a_pool_answers_within_a_second_of_postgres_coming_back(
    servers: Servers, exchange: str, opened_while_down: bool
) -> None:
    ex_id = await exchange_id(servers, exchange)
    proxy = await StallableProxy(servers.postgres_port).start()
    url = servers.database_url.replace(f":{servers.postgres_port}/", f":{proxy.port}/")
    if opened_while_down:  # a worker started while PostgreSQL was away (worker.py)
        await proxy.down()
        pool, down = await db.open_pool_eventually(url)
        assert down is not None
    else:
        pool, down = await db.open_pool_eventually(url)
        assert down is None
    catalog = db.Catalog(pool)
    try:
        if not opened_while_down:
            await catalog.epoch_floor(ex_id)
            await proxy.down()
        # Requests meanwhile fail, and the pool's reconnection attempts back off (1, 2, 4 s…).
        away_until = time.monotonic() + 9.0
        while time.monotonic() < away_until:
            with pytest.raises(ServiceUnavailable):
                await catalog.epoch_floor(ex_id)
            await asyncio.sleep(0.5)
        await proxy.up()
        back = time.monotonic()
        await catalog.epoch_floor(ex_id)
        took = time.monotonic() - back
        print(f"first query after PostgreSQL came back: {took:.2f}s")
        assert took < 1.5
    finally:
        await pool.close()
        await proxy.close()
