"""The status key as the store hands it out: one model for every writer's record, nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from perseus.core.lifecycle import State
from perseus.models import Claim, ConnectorHealth, Exchange
from perseus.readmodel.network import judge
from perseus.store.redis_store import FenceReply, HolderEpoch, StatusRead
from tests.unit.test_models import LIVERMORE_FIELDS, status

pytestmark = pytest.mark.unit

#: What Livermore v6 writes (its 14 fields; countryCode came in v7): no Perseus additions.
LIVERMORE_V6 = {
    "exchangeId": 1,
    "exchangeName": "coinbase",
    "hostname": "livermore-1",
    "ipAddress": None,
    "adminEmail": "user_2abc",
    "adminDisplayName": "user_2abc",
    "connectionState": "active",
    "symbolCount": 25,
    "connectedAt": "2026-02-10T12:00:00.000Z",
    "lastHeartbeat": "2026-02-10T12:00:15.000Z",
    "lastStateChange": "2026-02-10T12:00:00.000Z",
    "registeredAt": "2026-02-10T11:59:00.000Z",
    "lastError": None,
    "lastErrorAt": None,
}


def test_a_livermore_v6_record_reads_without_a_claim() -> None:
    assert set(LIVERMORE_V6) == LIVERMORE_FIELDS - {"countryCode"}
    read = StatusRead.parse(json.dumps(LIVERMORE_V6), 40_000)
    record = read.record
    assert record is not None and read.malformed is None and read.exists and read.pttl_ms == 40_000
    assert record.connection_state is State.ACTIVE and record.hostname == "livermore-1"
    assert record.claim is None and record.epoch is None and record.workflow_id is None
    assert record.heartbeat_interval_s == 15.0  # Livermore's constant
    assert not record.held_by(Claim(instance_id="x", epoch=1))


def test_a_perseus_record_renewed_by_the_keeper_reads_whole() -> None:
    doc = status().wire()
    health = ConnectorHealth(healthy=True, symbol_count=12, last_error="ws closed")
    doc.update(health.status_patch())
    record = StatusRead.parse(json.dumps(doc), 1000).record
    assert record is not None and record.claim == Claim(instance_id=str(doc["instanceId"]), epoch=7)
    assert record.healthy is True and record.symbol_count == 12 and record.last_error == "ws closed"


def test_fields_the_model_does_not_know_are_kept() -> None:
    doc = {**status().wire(), "warmupStage": "candles", "countryCode": "DE"}
    record = StatusRead.parse(json.dumps(doc), 1000).record
    assert record is not None and record.country_code == "DE"
    assert record.wire() == doc  # written back: nothing lost, nothing added


def test_the_writers_record_is_unchanged_on_the_wire() -> None:
    written = json.dumps(status().wire())
    record = StatusRead.parse(written, 1).record
    assert record is not None and json.dumps(record.wire()) == written


def test_the_views_show_a_livermore_record_online() -> None:
    ex = Exchange(id=1, name="coinbase", display_name="Coinbase", is_active=True)
    now = datetime(2026, 2, 10, 12, 0, 20, tzinfo=UTC)
    view = judge(ex, StatusRead.parse(json.dumps(LIVERMORE_V6), 40_000), now)
    assert view.online and view.health == "healthy" and view.status is not None  # 5 s old at 15 s


@pytest.mark.parametrize(
    "raw",
    ["{", "[]", json.dumps({"exchangeId": 1}), json.dumps({**LIVERMORE_V6, "connectionState": "flying"})],
)
def test_an_unreadable_record_says_why(raw: str) -> None:
    read = StatusRead.parse(raw, 5)
    assert read.record is None and read.exists and read.malformed


def test_no_key_is_no_record() -> None:
    read = StatusRead.parse(None, -2)
    assert read.record is None and read.malformed is None and not read.exists


def test_a_fence_reply_parses_its_record_only_when_asked() -> None:
    reply = FenceReply("fenced", json.dumps(LIVERMORE_V6))
    assert reply._read is None  # the renewal loop never pays for a parse it does not use
    assert reply.record is not None and reply.record.hostname == "livermore-1"
    assert FenceReply("missing", None).record is None


def test_a_standby_watch_reads_only_who_holds_at_which_epoch_and_how_often() -> None:
    assert HolderEpoch.parse(None) == HolderEpoch(held=False)
    record = status().wire()
    assert HolderEpoch.parse(json.dumps(record), 900) == HolderEpoch(
        held=True,
        epoch=7,
        pttl_ms=900,
        interval_s=record["heartbeatIntervalMs"] / 1000,  # type: ignore[operator]
    )
    # Livermore's record: held, no epoch, and no interval of its own (never claimed over early).
    assert HolderEpoch.parse(json.dumps(LIVERMORE_V6)) == HolderEpoch(held=True)
    assert HolderEpoch.parse("{") == HolderEpoch(held=True)  # unreadable: held all the same
