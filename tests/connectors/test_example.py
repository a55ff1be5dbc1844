"""The example connector (examples/ticker_connector.py) under the process connector, writing to the
harness' real Redis: warm standby, ACTIVATE with a new epoch, fenced ticks, fenced out by a newer
claim."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from perseus.connectors.factory import ConnectorContext, build_connector
from perseus.connectors.process import ProcessConnector
from perseus.core.lifecycle import Role
from perseus.fencing import fenced_key
from perseus.keys import status_key
from perseus.models import Claim, ConnectorSpec
from tests.conftest import Servers

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "ticker_connector.py")
T = TypeVar("T")


@pytest_asyncio.fixture
async def rds(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(servers.redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def claim_record(instance_id: str, epoch: int) -> str:
    return json.dumps({"instanceId": instance_id, "epoch": epoch, "hostname": "h"})


@pytest.mark.integration
async def test_the_example_connector_writes_only_under_its_epoch(
    servers: Servers, rds: aioredis.Redis, tmp_path: Path
) -> None:
    ex = random.randrange(20_000_000, 30_000_000)  # no catalog row: nobody else's keys
    stream = fenced_key(ex, "ticks")
    spec = ConnectorSpec(
        kind="process",
        command=[sys.executable, "-u", EXAMPLE, "--warmup", "0.2", "--every", "0.05"],
        ready_line="READY",
        env={"TICKER_REDIS_URL": servers.redis_url},
        active_timeout_s=10,
    )
    context = ConnectorContext(
        workflow_id="instance-ticker-h1",
        exchange_id=ex,
        exchange_name="ticker",
        claim=Claim(instance_id="standby-1", epoch=0),
        log_dir=tmp_path,
        role=Role.STANDBY,
        heartbeat_interval_s=0.5,
    )
    connector = build_connector("ticker", spec, context)
    assert isinstance(connector, ProcessConnector)
    try:
        await connector.prepare(["BTC-USD", "ETH-USD"])
        await connector.warm_up()
        assert connector.warm_ready and not connector.connected

        async def symbols() -> int | None:
            return connector.health().symbol_count

        assert await until(symbols) == 2

        # The promotion: the new claim (epoch 8) is in the status key before ACTIVATE 8 is sent.
        await rds.set(status_key(ex), claim_record("inst-8", 8), px=60_000)
        await connector.activate(8, "inst-8")
        assert connector.connected

        async def ticks() -> int | None:
            return n if (n := await rds.xlen(stream)) >= 3 else None

        await until(ticks)

        # A newer claim takes the exchange (epoch 9): the example's next write is refused, it says
        # so on the protocol and exits; nothing it wrote carries any epoch but its own.
        await rds.set(status_key(ex), claim_record("inst-9", 9), px=60_000)

        async def fault() -> object:
            return connector.fault()

        await until(fault)
        failure = connector.fault()
        assert failure is not None and failure.kind == "crashed" and "exited with code 1" in failure.reason
        assert "FENCED epoch 8 is stale" in failure.reason
        health = connector.health()
        assert health.healthy is False
        assert health.last_error is not None and "names epoch 9, instance inst-9" in health.last_error
        entries = await rds.xrange(stream)
        assert entries and {fields["epoch"] for _, fields in entries} == {"8"}
    finally:
        await connector.disconnect("stop requested")
        await rds.delete(stream, status_key(ex))
