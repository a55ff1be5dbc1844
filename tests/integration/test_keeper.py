"""The lease keeper against the real Redis: renewals never wait for Temporal, and only a definite
"the workflow has closed" ends a loop nobody is attached to."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from perseus import keeper as keeper_module
from perseus.connectors.base import ConnectorHost
from perseus.keeper import LeaseKeeper
from perseus.keys import status_key
from perseus.models import Claim, LeaseRequest
from perseus.store.redis_store import RedisStore

pytestmark = pytest.mark.integration

INTERVAL = 0.5


async def claimed(store: RedisStore) -> LeaseRequest:
    """A status key held by a fresh claim, as a registration would leave it."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    claim = Claim(instance_id=str(uuid.uuid4()), epoch=7)
    doc = {"instanceId": claim.instance_id, "epoch": claim.epoch, "hostname": "k"}
    await store.client.set(status_key(exchange_id), json.dumps(doc), px=int(3 * INTERVAL * 1000))
    return LeaseRequest(
        workflow_id=f"instance-k{exchange_id}-h",
        exchange_id=exchange_id,
        claim=claim,
        heartbeat_interval_s=INTERVAL,
        term_s=3600,
    )


@pytest.fixture
def quick_orphan_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "DETACHED_FLOOR_S", 0.0)
    monkeypatch.setattr(keeper_module, "DETACHED_INTERVALS", 1.0)


@pytest.mark.usefixtures("quick_orphan_checks")
async def test_a_temporal_that_never_answers_holds_up_no_renewal(store: RedisStore) -> None:
    asked = 0

    async def never_answers(workflow_id: str) -> bool | None:
        nonlocal asked
        asked += 1
        await asyncio.sleep(3600)  # a frozen server: the call just hangs
        return None

    keeper = LeaseKeeper(store, ConnectorHost(), workflow_closed=never_answers)
    req = await claimed(store)
    try:
        held = keeper.hold(req)  # nobody attached: the orphan question is asked, and hangs
        await asyncio.sleep(12 * INTERVAL)
        assert asked >= 2 and held.ended is None
        assert held.renewals >= 9  # one per interval, unhindered
        assert await store.client.pttl(status_key(req.exchange_id)) > 0
    finally:
        await keeper.close()


@pytest.mark.usefixtures("quick_orphan_checks")
async def test_only_a_closed_workflow_ends_a_detached_loop(store: RedisStore) -> None:
    verdicts: list[bool | None] = [None, False, True]

    async def answers(workflow_id: str) -> bool | None:
        return verdicts.pop(0) if verdicts else True

    keeper = LeaseKeeper(store, ConnectorHost(), workflow_closed=answers)
    req = await claimed(store)
    try:
        held = keeper.hold(req)
        for _ in range(100):
            if held.ended is not None:
                break
            await asyncio.sleep(0.1)
        assert held.ended is not None and "has ended" in str(held.ended)
        assert verdicts == []  # "unknown" and "running" kept it renewing; "closed" ended it
        assert await store.client.get(status_key(req.exchange_id)) is None  # released
    finally:
        await keeper.close()
