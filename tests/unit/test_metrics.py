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
