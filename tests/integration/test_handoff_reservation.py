"""A planned handoff's reservation against real Redis and PostgreSQL: the release reserves the
exchange for its target before it deletes the claim, and until the target (or anyone) claims, or
the reservation runs out, no other host's automatic race for the vacancy may take it. What an
operator asks for, and a claim over a silent holder's key, go ahead."""

from __future__ import annotations

import asyncio
import json

import pytest

from activities.registry import RegistryActivities, take_claim
from perseus.keys import handoff_key, status_key
from perseus.models import Claim, ClaimRequest, HandoffReservation, ReleaseRequest
from perseus.store import db
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, exchange_id
from tests.integration.helpers import claim_record

pytestmark = pytest.mark.integration


async def claim(
    store: RedisStore, catalog: db.Catalog, ex_id: int, exchange: str, host: str, **how: bool
) -> tuple[bool, str | None, float | None]:
    result = await take_claim(
        store, catalog, ClaimRequest(status=claim_record(ex_id, exchange, host), highest_epoch=0, **how)
    )
    return result.claimed, result.message, result.held_back_ms


async def handed_over(store: RedisStore, catalog: db.Catalog, ex_id: int, exchange: str, to: str) -> None:
    """``a`` holds the exchange and hands it to ``to``: its release reserves it first."""
    status = claim_record(ex_id, exchange, "a")
    won = await take_claim(store, catalog, ClaimRequest(status=status, highest_epoch=0))
    assert won.claimed
    held = Claim(instance_id=str(status.instance_id), epoch=won.epoch)
    registry = RegistryActivities(store, catalog, notifications=False)
    reserve = HandoffReservation(to_host=to, from_host="a", epoch=won.epoch)
    released = await registry.release_claim(
        ReleaseRequest(exchange_id=ex_id, claim=held, reserve=reserve, reserve_ms=30_000)
    )
    assert released.applied
    assert (await store.raw_status(ex_id))[0] is None


async def test_a_handed_over_exchange_is_left_to_its_target(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    await handed_over(store, catalog, ex_id, exchange, to="c")
    gates = await store.claim_gates(ex_id)
    assert gates.handoff is not None and gates.handoff.to_host == "c" and 0 < gates.handoff_pttl_ms <= 30_000
    # Another host's race for the vacancy is held back, with the reason and how long; nothing changes.
    claimed, message, held_back_ms = await claim(store, catalog, ex_id, exchange, "b", automatic=True)
    assert not claimed and held_back_ms is not None and 0 < held_back_ms <= 30_000
    assert message == f"{exchange} was handed over to c by a: its claim goes first"
    assert (await store.raw_status(ex_id))[0] is None
    # The target's own race (its watch may look before the promote signal arrives) is not.
    claimed, _, _ = await claim(store, catalog, ex_id, exchange, "c", automatic=True)
    assert claimed
    # Its claim ended the reservation: a vacancy it leaves later is anybody's again.
    assert await store.client.get(handoff_key(ex_id)) is None


async def test_a_claim_over_takes_a_silent_holders_key_but_never_the_reserved_vacancy(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    """A standby that saw a holder go silent may claim late, after a handoff released the key (a
    chaos run: it took the vacancy reserved for the lower standby). It finds the key gone and
    leaves it; a silent holder's key that is still there it takes over, reservation or not."""
    ex_id = await exchange_id(servers, exchange)
    await handed_over(store, catalog, ex_id, exchange, to="c")
    claimed, message, _ = await claim(store, catalog, ex_id, exchange, "b", automatic=True, take_lapsed=True)
    assert not claimed and message == f"{exchange} was handed over to c by a: its claim goes first"
    assert (await store.raw_status(ex_id))[0] is None
    # The target claimed and went silent (its key unrenewed for 10 s at a 1 s interval), and the
    # reservation is still there (its removal failed): the claim-over goes ahead.
    silent = claim_record(ex_id, exchange, "c").wire()
    await store.client.set(status_key(ex_id), json.dumps(silent), px=20_000)  # its TTL is 30 s
    claimed, _, _ = await claim(store, catalog, ex_id, exchange, "b", automatic=True, take_lapsed=True)
    assert claimed
    assert await store.client.get(handoff_key(ex_id)) is None


async def test_what_an_operator_asks_for_goes_ahead(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    await handed_over(store, catalog, ex_id, exchange, to="c")
    claimed, _, _ = await claim(store, catalog, ex_id, exchange, "b")  # a start, or the take-back
    assert claimed
    assert await store.client.get(handoff_key(ex_id)) is None


async def test_a_reservation_ends_by_itself(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    await store.reserve_handoff(ex_id, HandoffReservation(to_host="c", from_host="a", epoch=1), 300)
    assert not (await claim(store, catalog, ex_id, exchange, "b", automatic=True))[0]
    await asyncio.sleep(0.4)
    assert (await claim(store, catalog, ex_id, exchange, "b", automatic=True))[0]


async def test_a_release_of_a_claim_lost_meanwhile_reserves_nothing(
    servers: Servers, store: RedisStore, catalog: db.Catalog, exchange: str
) -> None:
    ex_id = await exchange_id(servers, exchange)
    status = claim_record(ex_id, exchange, "b")
    won = await take_claim(store, catalog, ClaimRequest(status=status, highest_epoch=0))
    assert won.claimed
    stale = Claim(instance_id="i-gone", epoch=won.epoch - 1)  # a's claim, taken over by b meanwhile
    registry = RegistryActivities(store, catalog, notifications=False)
    reserve = HandoffReservation(to_host="c", from_host="a", epoch=stale.epoch)
    released = await registry.release_claim(
        ReleaseRequest(exchange_id=ex_id, claim=stale, reserve=reserve, reserve_ms=30_000)
    )
    assert not released.applied and released.reason == "fenced"
    assert await store.client.get(handoff_key(ex_id)) is None
    assert (await store.raw_status(ex_id))[0] is not None  # b's claim is untouched
