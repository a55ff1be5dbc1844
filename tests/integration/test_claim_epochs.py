"""The claim step's epochs against real Redis and PostgreSQL: a refused claim answers with the
holder's epoch, not the one it drew from the counter and never held. A workflow remembers the
answer as an epoch it has seen, and a failsafe granter refuses every holder older than what it has
seen: with the drawn epoch, a standby that lost a race for a vacancy refused the winner its
promises, and a Redis outage for every host then stopped the holder at its renew deadline (the
lab's failsafe-redis-all: "epoch 2 is older than epoch 5 seen here")."""

from __future__ import annotations

import pytest

from activities.registry import take_claim
from perseus.core.decisions.failsafe import grant_verdict
from perseus.models import ClaimRequest
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, exchange_id
from tests.integration.helpers import claim_record

pytestmark = pytest.mark.integration


async def test_a_refused_claim_answers_the_holders_epoch_and_the_loser_still_grants(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    first = claim_record(ex_id, exchange, "a")
    won = await take_claim(store, catalog, ClaimRequest(status=first, highest_epoch=0))
    assert won.claimed
    # Two standbys losing the race (and one of them trying again): each draws an epoch and loses.
    losers = [
        await take_claim(
            store, catalog, ClaimRequest(status=claim_record(ex_id, exchange, h), highest_epoch=0)
        )
        for h in ("b", "c", "c")
    ]
    assert [r.claimed for r in losers] == [False, False, False]
    assert [r.epoch for r in losers] == [won.epoch] * 3
    assert all(r.holder is not None and r.holder.hostname == "a" for r in losers)
    # What the losers now remember does not refuse the holder a promise when Redis is gone.
    seen = max(r.epoch for r in losers)
    verdict = grant_verdict(
        failsafe=True, holds_claim=False, redis_answers=False, asker_epoch=won.epoch, highest_epoch_seen=seen
    )
    assert verdict.grant, verdict.reason
    # A claimant that remembers a newer epoch (a holder it saw before) keeps it.
    newer = await take_claim(
        store, catalog, ClaimRequest(status=claim_record(ex_id, exchange, "d"), highest_epoch=won.epoch + 5)
    )
    assert (newer.claimed, newer.epoch) == (False, won.epoch + 5)
    # The counter is past every drawn epoch: the next claim after the holder let go is above them.
    assert first.instance_id is not None
    assert (await store.fenced(ex_id, first.instance_id, won.epoch, mode="delete")).outcome == "ok"
    after = await take_claim(
        store, catalog, ClaimRequest(status=claim_record(ex_id, exchange, "b"), highest_epoch=seen)
    )
    assert after.claimed and after.epoch > won.epoch + len(losers) + 1
