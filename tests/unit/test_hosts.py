"""The hosts view's assembly (perseus.host.workers.summarise): pure, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from perseus.host.workers import WorkerRecord, outdated_hosts, shared_queue_peers, summarise


def record(host: str, worker_id: str, seen: str, **over: object) -> WorkerRecord:
    fields: dict[str, object] = {
        "host": host,
        "worker_id": worker_id,
        "version": "0.1.0",
        "machine": f"m-{worker_id}",
        "pid": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "seen_at": seen,
        "capacity": 100,
        "shared_queue": False,
        **over,
    }
    return WorkerRecord.model_validate(fields)


def test_one_row_per_host_its_workers_added_up() -> None:
    records = [
        record("b", "w1", "2026-01-01T00:00:05.000Z", claims=2, watches=1, version="0.1.0"),
        record("a", "w2", "2026-01-01T00:00:01.000Z", shared_queue=True, metrics_url="http://a:9464/metrics"),
        record("b", "w3", "2026-01-01T00:00:09.000Z", claims=1, watches=4, version="0.2.0"),
    ]
    polled = datetime(2026, 1, 1, 0, 0, 8, tzinfo=UTC)
    a, b = summarise(records, {"a": None, "b": polled})
    assert (a.host, a.shared_queue, a.metrics_url, a.last_poll_at, a.workers) == (
        "a",
        True,
        "http://a:9464/metrics",
        None,
        1,
    )
    assert (b.claims, b.watches, b.capacity, b.workers) == (3, 5, 200, 2)
    # The newest announcement stands for the host: its version, and when it was seen.
    assert (b.version, b.seen_at, b.last_poll_at) == (
        "0.2.0",
        "2026-01-01T00:00:09.000Z",
        "2026-01-01T00:00:08.000Z",
    )
    assert not b.shared_queue and b.metrics_url is None and b.machines == ["m-w1", "m-w3"]


def test_no_workers_no_rows() -> None:
    assert summarise([], {}) == []


def test_a_host_behind_the_newest_release_is_outdated() -> None:
    records = [
        record("a", "w1", "2026-01-01T00:00:01.000Z", version="0.1.0"),
        record("b", "w2", "2026-01-01T00:00:01.000Z", version="0.2.0"),
        # b's older worker, replaced: the newest announcement speaks for the host.
        record("b", "w0", "2026-01-01T00:00:00.000Z", version="0.1.0"),
        record("c", "w3", "2026-01-01T00:00:01.000Z", version="unknown"),
    ]
    views = summarise(records, {})
    assert [(v.host, v.outdated) for v in views] == [("a", True), ("b", False), ("c", False)]
    assert outdated_hosts(views) == {"a": "0.1.0"}
    # All on one release: nobody is behind.
    assert outdated_hosts(summarise([record("a", "w1", "2026-01-01T00:00:01.000Z")], {})) == {}


def test_a_shared_queue_peer_is_announced_lately_and_polls_this_temporal() -> None:
    """Who a stopping worker may hand the shared queue to: a fresh announcement of serving it, and
    a poll of it on this Temporal — neither alone (a dead worker's record outlives it; a record may
    come from a worker of another Temporal sharing the Redis) — never one that is stopping too, and
    never the worker itself."""
    now = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
    fresh, stale = "2026-01-01T00:00:55.000Z", "2026-01-01T00:00:45.000Z"
    polled = {
        "me": now,
        "peer": now - timedelta(seconds=50),  # an idle worker's long poll
        "stale": now,
        "host-only": now,
        "old-poll": now - timedelta(minutes=5),
        "stopping-too": now,
    }
    records = [
        record("h0", "me", fresh, shared_queue=True),
        record("h1", "peer", fresh, shared_queue=True),
        record("h2", "stale", stale, shared_queue=True),
        record("h3", "host-only", fresh, shared_queue=False),
        record("h4", "old-poll", fresh, shared_queue=True),
        record("h5", "other-temporal", fresh, shared_queue=True),
        record("h6", "stopping-too", fresh, shared_queue=True, stopping=True),
    ]
    assert shared_queue_peers(records, polled, me="me", now=now) == ["peer"]
    assert shared_queue_peers(records[:1], polled, me="me", now=now) == []
