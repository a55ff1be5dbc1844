"""Wire formats: the status JSON and the stream fields are Livermore's, plus Perseus' additions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from perseus.core.lifecycle import State
from perseus.keys import epoch_key, iso, retention_min_id, status_key, stream_key
from perseus.models import EventKind, InstanceStatus, NetworkEvent
from perseus.timing import renew_deadline_s, ttl_ms

pytestmark = pytest.mark.unit

LIVERMORE_FIELDS = {
    "exchangeId",
    "exchangeName",
    "hostname",
    "ipAddress",
    "countryCode",
    "adminEmail",
    "adminDisplayName",
    "connectionState",
    "symbolCount",
    "connectedAt",
    "lastHeartbeat",
    "lastStateChange",
    "registeredAt",
    "lastError",
    "lastErrorAt",
}
PERSEUS_FIELDS = {
    "instanceId",
    "epoch",
    "workflowId",
    "heartbeatIntervalMs",
    "ttlMs",
    "healthy",
    "perseusVersion",
    "renewDeadlineMs",
    "lastHealthAt",
}
NOW = datetime(2026, 2, 10, 12, 0, 0, 123456, tzinfo=UTC)


def status() -> InstanceStatus:
    return InstanceStatus(
        exchange_id=4,
        exchange_name="kraken",
        hostname="h1",
        connection_state=State.IDLE,
        last_heartbeat=iso(NOW),
        last_state_change=iso(NOW),
        registered_at=iso(NOW),
        instance_id="i-1",
        epoch=7,
        workflow_id="instance-kraken-h1",
        heartbeat_interval_ms=15000,
        ttl_ms=45000,
    )


def test_status_wire_has_every_field_in_camel_case() -> None:
    wire = status().wire()
    assert set(wire) == LIVERMORE_FIELDS | PERSEUS_FIELDS
    assert wire["connectionState"] == "idle" and wire["epoch"] == 7 and wire["ipAddress"] is None


def test_iso_matches_javascript_to_iso_string() -> None:
    assert iso(NOW) == "2026-02-10T12:00:00.123Z"


def test_keys_and_timing() -> None:
    assert status_key(4) == "exchange:4:status"
    assert epoch_key(4) == "exchange:4:epoch"
    assert stream_key("Binance_US") == "logs:network:binance_us"
    assert ttl_ms(15) == 45000
    assert renew_deadline_s(15) < ttl_ms(15) / 1000
    assert retention_min_id(NOW) == f"{int(NOW.timestamp() * 1000) - 90 * 86400 * 1000}-0"


def base_event(kind: EventKind, **extra: object) -> NetworkEvent:
    return NetworkEvent(
        event=kind,
        event_id="e-1",
        timestamp=NOW,
        exchange_id=4,
        exchange_name="kraken",
        hostname="h1",
        ip=None,
        instance_id="i-1",
        epoch=7,
        **extra,
    )


def test_transition_fields_in_livermore_order_plus_perseus() -> None:
    fields = base_event(
        EventKind.STATE_TRANSITION, from_state=State.IDLE, to_state=State.STARTING, admin_email="a@x"
    ).fields()
    assert list(fields) == [
        "event",
        "timestamp",
        "fromState",
        "toState",
        "exchangeId",
        "exchangeName",
        "hostname",
        "ip",
        "adminEmail",
        "instanceId",
        "epoch",
        "eventId",
    ]
    assert fields["ip"] == "" and fields["exchangeId"] == "4" and fields["epoch"] == "7"
    assert all(isinstance(v, str) for v in fields.values())


def test_error_fields_in_livermore_order_plus_perseus() -> None:
    fields = base_event(EventKind.ERROR, error="boom", state=State.WARMING).fields()
    assert list(fields) == [
        "event",
        "timestamp",
        "error",
        "exchangeId",
        "exchangeName",
        "hostname",
        "ip",
        "state",
        "instanceId",
        "epoch",
        "eventId",
    ]
    assert fields["state"] == "warming"


def test_perseus_events_carry_base_fields_and_detail() -> None:
    fields = base_event(EventKind.CLAIM_CONFLICT, detail="held by h2").fields()
    assert fields["event"] == "claim_conflict" and fields["detail"] == "held by h2"
    assert {
        "timestamp",
        "exchangeId",
        "exchangeName",
        "hostname",
        "ip",
        "instanceId",
        "epoch",
        "eventId",
    } <= set(fields)
