"""Counting network events: which events count as what, and how durations are measured."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from perseus import metrics

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def entry(event: str, at: str, detail: str = "", exchange: str = "mx") -> dict[str, str]:
    return {"event": event, "timestamp": at, "exchangeName": exchange, "detail": detail}


def test_failovers_count_promotions_but_not_handoffs_and_measure_from_the_loss() -> None:
    ex = "mx_failover"
    failovers = value("perseus_failovers_total", exchange=ex)
    durations = value("perseus_failover_duration_seconds_count")
    total = value("perseus_failover_duration_seconds_sum")
    lost = entry("instance_lost", "2026-01-01T00:00:00.000Z", exchange=ex)
    promoted = entry("promoted", "2026-01-01T00:00:02.500Z", "the holder's claim expired (TTL)", ex)
    assert metrics.needs_history(promoted)
    metrics.count_event(promoted, [entry("state_transition", "2026-01-01T00:00:01.000Z", exchange=ex), lost])
    assert value("perseus_failovers_total", exchange=ex) == failovers + 1
    assert value("perseus_failover_duration_seconds_count") == durations + 1
    assert value("perseus_failover_duration_seconds_sum") == pytest.approx(total + 2.5)
    # A promotion by handoff is no failover; a promotion with no recorded loss has no duration.
    metrics.count_event(entry("promoted", "2026-01-01T00:00:03.000Z", "handoff from a", ex), [lost])
    metrics.count_event(entry("promoted", "2026-01-01T00:00:03.000Z", "", ex), [])
    assert value("perseus_failovers_total", exchange=ex) == failovers + 2
    assert value("perseus_failover_duration_seconds_count") == durations + 1


def test_handoffs_count_once_when_they_finish_with_their_duration() -> None:
    ex = "mx_handoff"
    notify = entry("handoff", "2026-01-01T00:00:00.000Z", "notify: handing over to b", ex)
    takeover = entry("handoff", "2026-01-01T00:00:01.000Z", "takeover: released epoch 3 to b", ex)
    assert not metrics.needs_history(notify) and not metrics.needs_history(takeover)
    count = value("perseus_handoff_duration_seconds_count")
    metrics.count_event(notify)
    metrics.count_event(takeover, [notify])
    assert value("perseus_handoffs_total", exchange=ex, outcome="confirmed") == 0
    metrics.count_event(
        entry("handoff", "2026-01-01T00:00:04.000Z", "confirm: b active at epoch 4", ex), [takeover, notify]
    )
    metrics.count_event(
        entry("handoff", "2026-01-01T00:20:00.000Z", "aborted: no confirmation", ex), [notify]
    )
    assert value("perseus_handoffs_total", exchange=ex, outcome="confirmed") == 1
    assert value("perseus_handoffs_total", exchange=ex, outcome="aborted") == 1
    # The abort's notify is 20 minutes old: another incident, so no duration for it.
    assert value("perseus_handoff_duration_seconds_count") == count + 1


def test_fenced_writes_count_renewals_and_refusals() -> None:
    ok, fenced = (
        value("perseus_renewals_total", outcome="ok"),
        value("perseus_fencing_refusals_total", mode="merge"),
    )
    metrics.fenced_write("renew", "ok")
    metrics.fenced_write("merge", "fenced")
    metrics.fenced_write("merge", "ok")
    assert value("perseus_renewals_total", outcome="ok") == ok + 1
    assert value("perseus_fencing_refusals_total", mode="merge") == fenced + 1
    count = value("perseus_renewal_lateness_seconds_count")
    metrics.observe_renewal(-0.2)  # early counts as on time
    assert value("perseus_renewal_lateness_seconds_bucket", le="0.01") >= 1
    assert value("perseus_renewal_lateness_seconds_count") == count + 1


def test_the_board_names_the_holder_its_epoch_and_how_long_it_has_held() -> None:
    from datetime import UTC, datetime

    from prometheus_client.parser import text_string_to_metric_families

    from perseus.core.lifecycle import State
    from perseus.models import InstanceStatus
    from perseus.readmodel.network import InstanceView, StatusBoard

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    record = InstanceStatus(
        exchange_id=1,
        exchange_name="held",
        hostname="host-a",
        connection_state=State.ACTIVE,
        connected_at="2026-01-01T11:59:00.000Z",
        last_heartbeat="2026-01-01T12:00:00.000Z",
        last_state_change="2026-01-01T11:59:00.000Z",
        registered_at="2026-01-01T11:58:00.000Z",
        epoch=7,
        heartbeat_interval_ms=15000,
    )
    views = [
        InstanceView(
            exchange_id=1,
            exchange_name="held",
            display_name="Held",
            online=True,
            up=True,
            status=record,
            heartbeat_age_s=0.5,
            running_for_s=60.0,
        ),
        InstanceView(exchange_id=2, exchange_name="vacant", display_name="Vacant", online=False, status=None),
    ]
    text = metrics.board_metrics(StatusBoard(instances=views, server_time=now)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    holder = ("exchange", "held"), ("host", "host-a"), ("epoch", "7")
    assert samples["perseus_exchange_holder", tuple(sorted(holder))] == 1
    assert samples["perseus_exchange_epoch", (("exchange", "held"),)] == 7
    assert samples["perseus_exchange_holder_seconds", (("exchange", "held"),)] == 60.0
    # Nobody holds "vacant": no holder series at all (alerts use `unless on(exchange)`), standbys 0.
    assert not [
        k for k in samples if k[0].startswith("perseus_exchange_holder") and ("exchange", "vacant") in k[1]
    ]
    assert samples["perseus_exchange_standbys", (("exchange", "vacant"),)] == 0
