"""The activity read side without I/O: IDs, cursors, the k-way merge, timeline and uptime arithmetic."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from perseus.errors import InvalidQuery
from perseus.models import Exchange
from perseus.readmodel.log import (
    Cursor,
    Match,
    Read,
    Rows,
    StreamId,
    Transition,
    entry_filter,
    merge_page,
    parse_window,
    seconds_in,
    timeline,
    transitions_of,
    uptime_windows,
)
from perseus.readmodel.network import format_duration, judge, last_known
from perseus.store.redis_store import StatusRead

pytestmark = pytest.mark.unit


class Streams:
    """In-memory streams answering :class:`Read` exactly as XREVRANGE does (for the pure merge)."""

    def __init__(self) -> None:
        self.data: dict[str, list[tuple[StreamId, dict[str, str]]]] = {}
        self.round_trips = 0
        self.entries_read = 0

    def add(self, name: str, entry_id: StreamId, **fields: str) -> None:
        self.data.setdefault(name, []).append((entry_id, fields))
        self.data[name].sort(key=lambda e: e[0])

    async def fetch(self, reads: list[Read]) -> list[Rows]:
        self.round_trips += 1
        out: list[Rows] = []
        for r in reads:
            rows = [
                (str(i), f)
                for i, f in reversed(self.data.get(r.exchange, []))
                if r.upper is None or (i <= r.upper if r.inclusive else i < r.upper)
            ]
            out.append(rows[: r.count])
            self.entries_read += len(out[-1])
        return out

    def expected(self, match: Match | None = None) -> list[tuple[int, int, str]]:
        everything = [
            (i.ms, i.seq, name)
            for name, rows in self.data.items()
            for i, f in rows
            if match is None or match(f)
        ]
        return sorted(everything, reverse=True)


def shared_ms_streams() -> Streams:
    """Three streams holding the very same IDs, with same-millisecond sequences past 10."""
    s = Streams()
    for name in ("alpha", "beta", "gamma"):
        for ms in range(1_700_000_000_000, 1_700_000_000_012):
            for seq in range(16):
                kind = "error" if seq % 5 == 0 else "state_transition"
                admin = "a@x.io" if seq % 3 == 0 else ""
                s.add(name, StreamId(ms, seq), event=kind, adminEmail=admin)
    s.add("beta", StreamId(1_700_000_000_100, 0), event="error", adminEmail="")
    return s


async def walk(s: Streams, names: list[str], count: int, **kw: object) -> list[tuple[int, int, str]]:
    seen: list[tuple[int, int, str]] = []
    cursor: Cursor | None = None
    for _ in range(10_000):
        page = await merge_page(s.fetch, names, count=count, cursor=cursor, **kw)  # type: ignore[arg-type]
        assert len(page.entries) <= count
        seen += [e.key for e in page.entries]
        if page.next_cursor is None:
            return seen
        # The cursor goes over the wire as text.
        cursor = Cursor.parse(str(page.next_cursor))
    raise AssertionError("pagination did not end")


def test_stream_ids_order_numerically_not_as_strings() -> None:
    ids = [StreamId.parse(t) for t in ("5-9", "5-10", "10-0", "9-99")]
    assert sorted(ids) == [StreamId(5, 9), StreamId(5, 10), StreamId(9, 99), StreamId(10, 0)]
    assert sorted(["5-9", "5-10"]) == ["5-10", "5-9"]  # what a string sort (Livermore) gets wrong


@pytest.mark.parametrize("text", ["", "12", "a-1", "1-2-3", "-1-2", "1-", "99999999999999999999-0"])
def test_bad_ids_and_cursors_are_invalid_queries(text: str) -> None:
    with pytest.raises(InvalidQuery):
        Cursor.parse(text)


def test_cursor_round_trip() -> None:
    assert str(Cursor.parse("1700000000000-12")) == "1700000000000-12"
    assert Cursor.parse("1700000000000-12@Binance_US") == Cursor(StreamId(1700000000000, 12), "binance_us")


@pytest.mark.parametrize("count", [1, 7, 15, 16, 50, 200])
async def test_global_walk_never_repeats_or_skips(count: int) -> None:
    s = shared_ms_streams()
    seen = await walk(s, ["alpha", "beta", "gamma"], count)
    assert seen == s.expected()  # every entry once, in (ms, seq, exchange) descending order
    assert len(seen) == 3 * 12 * 16 + 1


@pytest.mark.parametrize("count", [1, 16, 50])
async def test_single_stream_walk_with_plain_cursors(count: int) -> None:
    s = shared_ms_streams()
    seen = await walk(s, ["beta"], count, tag_cursor=False)
    assert seen == [k for k in s.expected() if k[2] == "beta"]


async def test_a_full_page_costs_about_count_entries_not_count_per_stream() -> None:
    s = Streams()
    for n in range(100):
        for i in range(60):
            s.add(f"ex{n:03d}", StreamId(1_000_000 + i * 100 + n, 0))
    page = await merge_page(s.fetch, list(s.data), count=50)
    assert [e.key for e in page.entries] == s.expected()[:50]
    assert s.entries_read < 100 * 51 / 4  # Livermore's approach reads count from every stream
    assert s.round_trips <= 4


async def test_filters_with_a_small_scan_limit_still_cover_everything_once() -> None:
    s = shared_ms_streams()
    match = entry_filter(["error"], "A@X.io")
    assert match is not None
    seen = await walk(s, ["alpha", "beta", "gamma"], 5, match=match, scan_limit=37)
    assert seen == s.expected(match)
    assert seen  # seq 0 and 15 are errors with an admin


async def test_cursor_at_the_very_first_id_gives_an_empty_last_page() -> None:
    s = Streams()
    s.add("a", StreamId(0, 1))
    s.add("a", StreamId(0, 0))
    page = await merge_page(s.fetch, ["a"], count=1, cursor=Cursor(StreamId(0, 0)))
    assert page.entries == [] and page.next_cursor is None


async def test_count_and_filter_validation() -> None:
    s = Streams()
    for bad in (0, 201):
        with pytest.raises(InvalidQuery, match="count must be between 1 and 200"):
            await merge_page(s.fetch, ["a"], count=bad)
    with pytest.raises(InvalidQuery, match="unknown event type 'heartbeat'"):
        entry_filter(["heartbeat"])
    assert entry_filter([], None) is None


# --- timeline and uptime ---------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


def history() -> list[Transition]:
    """Active from 48 h to 20 h ago and again from 6 h ago until now (with short ramps)."""
    return [
        Transition(at(50), "idle", "starting"),
        Transition(at(49), "starting", "warming"),
        Transition(at(48), "warming", "active"),
        Transition(at(20), "active", "stopping"),
        Transition(at(20) + timedelta(seconds=30), "stopping", "stopped"),
        Transition(at(19), "stopped", "idle"),
        Transition(at(7), "idle", "starting"),
        Transition(at(6.5), "starting", "warming"),
        Transition(at(6), "warming", "active"),
    ]


def test_timeline_covers_the_window_with_one_interval_per_stretch() -> None:
    intervals = timeline(history(), at(24), NOW)
    assert [i.state for i in intervals] == [
        "active",
        "stopping",
        "stopped",
        "idle",
        "starting",
        "warming",
        "active",
    ]
    assert intervals[0].start == at(24) and intervals[-1].end == NOW
    assert all(a.end == b.start for a, b in zip(intervals, intervals[1:], strict=False))
    assert sum(i.duration_s for i in intervals) == pytest.approx(24 * 3600)
    assert seconds_in(intervals, "active", at(24), NOW) == pytest.approx((4 + 6) * 3600)


def test_uptime_percentages_by_hand() -> None:
    intervals = timeline(history(), NOW - timedelta(days=30), NOW)
    windows = {w.window: w for w in uptime_windows(intervals, NOW, ["24h", "7d", "30d"])}
    assert windows["24h"].active_pct == pytest.approx(100 * 10 / 24, abs=1e-3)
    assert windows["7d"].active_pct == pytest.approx(100 * (28 + 6) / (7 * 24), abs=1e-3)
    assert windows["30d"].active_pct == pytest.approx(100 * 34 / (30 * 24), abs=1e-3)
    # Before the first transition the state is its source (idle): known, but not active.
    assert windows["30d"].known_pct == pytest.approx(100.0)


def test_uptime_counts_only_the_time_observed() -> None:
    # First seen 50 h ago: the 7-day window was observed for 50 h, 34 of them active.
    intervals = timeline(history(), NOW - timedelta(days=7), NOW)
    (week,) = uptime_windows(intervals, NOW, ["7d"], observed_since=at(50))
    assert week.observed_s == pytest.approx(50 * 3600)
    assert week.observed_since == at(50)
    assert week.active_pct == pytest.approx(100 * 34 / 50, abs=1e-3)
    assert week.window_active_pct == pytest.approx(100 * 34 / (7 * 24), abs=1e-3)
    assert week.known_pct == pytest.approx(100 * 50 / (7 * 24), abs=1e-3)
    (day,) = uptime_windows(intervals, NOW, ["24h"], observed_since=at(50))
    assert day.observed_s == pytest.approx(24 * 3600) and day.observed_since == at(24)


def test_state_before_the_window_and_unknown_time() -> None:
    only_old = [Transition(at(100), "warming", "active")]
    assert [(i.state, i.duration_s) for i in timeline(only_old, at(1), NOW)] == [("active", 3600.0)]
    assert [i.state for i in timeline([], at(1), NOW)] == ["unknown"]
    assert [i.state for i in timeline([], at(1), NOW, fallback="idle")] == ["idle"]
    windows = uptime_windows(timeline([], at(24), NOW), NOW, ["24h"])
    assert windows[0].active_pct == 0 and windows[0].known_pct == 0


def test_transitions_read_from_stream_rows() -> None:
    rows: Rows = [
        ("1740830400000-1", {"event": "error", "error": "boom", "state": "warming"}),
        (
            "1740830400000-0",
            {
                "event": "state_transition",
                "fromState": "starting",
                "toState": "warming",
                "timestamp": "2025-03-01T12:00:00.000Z",
            },
        ),
        (
            "1740830399000-0",
            {
                "event": "state_transition",
                "fromState": "idle",
                "toState": "starting",
                "timestamp": "not a time",
            },
        ),
    ]
    got = transitions_of(rows)
    assert [(t.from_state, t.to_state) for t in got] == [("idle", "starting"), ("starting", "warming")]
    assert got[0].at == datetime.fromtimestamp(1740830399, UTC)  # falls back to the ID's milliseconds


@pytest.mark.parametrize(
    ("text", "ok"),
    [("24h", True), ("90d", True), ("91d", False), ("0h", False), ("15m", True), ("1w", False), ("", False)],
)
def test_windows(text: str, ok: bool) -> None:
    if ok:
        assert parse_window(text) > timedelta(0)
    else:
        with pytest.raises(InvalidQuery):
            parse_window(text)


def test_durations_read_like_the_web_page() -> None:
    assert format_duration(4 * 3600 + 23 * 60 + 5) == "4h 23m"
    assert format_duration(2 * 86400 + 3 * 3600) == "2d 3h"
    assert format_duration(65) == "1m 5s"
    assert format_duration(7.9) == "7s"


def test_last_known_takes_identity_from_the_newest_entry_and_searches_for_state_and_error() -> None:
    rows: Rows = [
        ("3-0", {"event": "instance_lost", "timestamp": "t3", "hostname": "h2", "ip": "", "detail": "gone"}),
        ("2-0", {"event": "state_transition", "toState": "idle", "adminEmail": "a@x.io", "hostname": "h1"}),
        ("1-0", {"event": "error", "error": "boom", "state": "warming", "timestamp": "t1"}),
    ]
    known = last_known(rows)
    assert known is not None
    assert (known.hostname, known.ip, known.state, known.at) == ("h2", None, "idle", "t3")
    assert (known.last_error, known.last_error_at, known.admin_email) == ("boom", "t1", "a@x.io")
    assert last_known([]) is None


def test_malformed_records_are_offline_with_a_reason_never_an_exception() -> None:
    ex = Exchange(id=1, name="x", display_name="X", is_active=True)
    good = {
        "exchangeId": 1,
        "exchangeName": "x",
        "hostname": "h",
        "connectionState": "active",
        "lastHeartbeat": "2025-03-01T11:59:58.000Z",
        "lastStateChange": "2025-03-01T10:00:00.000Z",
        "registeredAt": "2025-03-01T09:00:00.000Z",
        "connectedAt": "2025-03-01T07:37:00.000Z",
        "instanceId": "i",
        "epoch": 1,
        "workflowId": "w",
        "heartbeatIntervalMs": 1000,
        "ttlMs": 3000,
    }
    view = judge(ex, StatusRead.parse(json.dumps(good), 2500), NOW)
    # 2 s since the last renewal at a 1 s interval: late (past 1.5 intervals), not yet stale (past 2,
    # the deadline of a record that declares none)...
    assert view.online and view.heartbeat == "late" and view.late and view.running_for == "4h 23m"
    assert view.up
    # ...but stale for a holder that declares its deadline of 1.7 s: its connector has stopped.
    declared = judge(ex, StatusRead.parse(json.dumps({**good, "renewDeadlineMs": 1700}), 2500), NOW)
    assert declared.online and declared.heartbeat == "stale"
    # A claim held in any other state runs no connector: online, but the exchange is not up.
    for state in ("idle", "starting", "warming", "stopping", "stopped"):
        held = judge(ex, StatusRead.parse(json.dumps({**good, "connectionState": state}), 2500), NOW)
        assert held.online and not held.up, state
    for raw in (
        "{",
        "[]",
        json.dumps({**good, "lastHeartbeat": "yesterday"}),
        json.dumps({**good, "connectionState": "flying"}),
        json.dumps({"exchangeId": 1}),
    ):
        bad = judge(ex, StatusRead.parse(raw, 1000), NOW)
        assert not bad.online and bad.status is None
        assert bad.offline_reason and bad.offline_reason.startswith("malformed status record")


async def test_random_pages_match_a_full_sort() -> None:
    rng = random.Random(7)
    s = Streams()
    for n in range(5):
        ms, seq = 1_000, 0
        for _ in range(rng.randint(0, 60)):
            step = rng.choice([0, 0, 1, 2])
            ms, seq = ms + step, (seq + 1 if step == 0 else 0)
            s.add(f"s{n}", StreamId(ms, seq))
    for count in (1, 3, 9):
        assert await walk(s, [*s.data, "empty"], count) == s.expected()
