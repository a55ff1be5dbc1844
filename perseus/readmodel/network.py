"""The read side: what every exchange's status key says, judged on this server's clock.

One pipelined round trip reads all status keys (one GET + PTTL per key: cluster-safe) and every
standby index (a ZREVRANGE per exchange; DESIGN §2.8); the list of exchanges comes from PostgreSQL,
never from SCAN/KEYS. A malformed value reads as offline with a reason instead of failing the whole
view. A second pipelined round trip reads the offline exchanges' last-known info (the newest
entries of their streams) and every listed standby's record (a GET per member).

Health is judged the same way for the API, the CLI and the page (they all read ``health`` and
``heartbeat`` from here), against the instance's *own* heartbeat interval, not fixed seconds:

* ``fresh``: the last renewal is at most 1.5 intervals old (one renewal may be a little late);
* ``late``: older than 1.5 intervals: a renewal was missed;
* ``stale``: older than the renew deadline its record declares (1.7 intervals; 2 for a record
  that declares none): the holder has stopped its connector by now, and the key expires at 3
  intervals (the TTL). At the 15 s default these are 22.5 s and 25.5 s.

``health`` is then ``healthy`` / ``late`` / ``stale`` for a live record, ``offline`` for an exchange
whose stream shows it ran before, and ``not_running`` for one that never ran (no status key and
nothing in its stream): a neutral state, not an alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import Field

from perseus.core.decisions import seconds_until
from perseus.core.lifecycle import State, legacy_state
from perseus.core.pause import paused_for_ms
from perseus.keys import parse_iso
from perseus.models import (
    EventKind,
    Exchange,
    FailsafeView,
    InstanceStatus,
    StandbyRecord,
    Wire,
)
from perseus.store.db import Catalog, LogRead
from perseus.store.redis_store import RedisStore, StatusRead
from perseus.timing import DEFAULT_INTERVAL_S, LATE_FACTOR, STALE_FACTOR

#: How many of an offline exchange's newest stream entries are searched for its last state and error.
#: A failure writes its error and then at most three recovery transitions, so five entries find it;
#: reading more costs every offline exchange on every poll (about 0.1 ms per entry in redis-py).
LAST_KNOWN_DEPTH = 5


class LastKnown(Wire):
    """What the stream last said about an exchange that has no live status record."""

    entry_id: str
    event: str
    at: str
    hostname: str | None = None
    ip: str | None = None
    #: The state the newest transition (or error) entry left it in.
    state: str | None = None
    admin_email: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None


class StandbyView(Wire):
    """One live standby of an exchange (DESIGN §2.8), as the read views show it."""

    host: str
    hostname: str
    instance_id: str
    priority: int
    heartbeat_age_s: float
    #: Milliseconds before the standby's record expires unless renewed (like the item's ``ttlMs``).
    ttl_ms: int
    #: Whether it keeps its connector warm (DESIGN §2.9).
    warm: bool = False
    #: Its warm connector is prepared and warmed now: a promotion activates it instead of starting it.
    warm_ready: bool = False
    #: A warm standby whose warm-up failed: why (the child's last output included), and in how many
    #: seconds its workflow tries again (None: it does not). None while it is ready or warming.
    warm_error: str | None = None
    warm_retry_in_s: float | None = None
    #: Its connector could not start when it was last promoted: why, and for how many more seconds
    #: it is woken (or races for a vacancy) only after every other standby (0 once that has passed).
    start_error: str | None = None
    start_retry_in_s: float | None = None
    ip_address: str | None = None
    heartbeat: str = "fresh"
    #: Its host's Perseus release (None: a release before the field).
    version: str | None = None


class InstanceView(Wire):
    exchange_id: int
    exchange_name: str
    display_name: str
    online: bool
    #: The exchange is served: its holder is ``active``. An online holder in any other state (idle
    #: after a failed start, walking up or down) runs no connector, so it is online but not up.
    up: bool = False
    status: InstanceStatus | None
    legacy_state: str | None = None
    ttl_ms: int | None = None
    heartbeat_age_s: float | None = None
    heartbeat: str | None = None  # fresh / late / stale, against the instance's own interval
    late: bool = False
    #: healthy / late / stale (a live record), offline (ran before), not_running (never ran).
    health: str = "not_running"
    #: Why an exchange reads offline although something is there (a malformed record); None otherwise.
    offline_reason: str | None = None
    #: Seconds since ``connectedAt`` while active, and the same as "4h 23m".
    running_for_s: float | None = None
    running_for: str | None = None
    last_known: LastKnown | None = None
    #: Live standbys, highest priority first (DESIGN §2.8); empty: no standby.
    standbys: list[StandbyView] = Field(default_factory=list)
    #: Maintenance mode (``perseus pause``): no automatic promotion or claim-over until
    #: ``pausedUntil`` (None: until resumed, for a pause key without a deadline), asked by ``pausedBy``.
    paused: bool = False
    paused_until: str | None = None
    paused_by: str | None = None
    #: The exchange's failsafe (docs/design.md, "Failsafe"), read from Temporal by the views that
    #: connect to it (``perseus status EXCHANGE``, the API's exchange view); None: off, or not read.
    failsafe: FailsafeView | None = None


def heartbeat_colour(
    age_s: float, interval_s: float = DEFAULT_INTERVAL_S, renew_deadline_s: float | None = None
) -> str:
    """fresh / late / stale for a renewal ``age_s`` old, judged against the holder's own interval
    and the renew deadline its record declares (None: it declares none — two intervals)."""
    if age_s > (renew_deadline_s if renew_deadline_s is not None else STALE_FACTOR * interval_s):
        return "stale"
    return "late" if age_s > LATE_FACTOR * interval_s else "fresh"


def _interval_s(interval_ms: int) -> float:
    return interval_ms / 1000 if interval_ms > 0 else DEFAULT_INTERVAL_S


def _when(text: str) -> datetime:
    moment = parse_iso(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """``4h 23m`` (and ``2d 3h``, ``5m 10s``, ``42s``): the two largest units, like the web page."""
    s = int(max(0.0, seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def running_for_s(status: InstanceStatus, now: datetime) -> float | None:
    """Seconds active since ``connectedAt`` (None unless active with a parseable ``connectedAt``)."""
    if status.connection_state is not State.ACTIVE or not status.connected_at:
        return None
    try:
        return round(max(0.0, (now - _when(status.connected_at)).total_seconds()), 3)
    except (ValueError, TypeError):
        return None


def judge(exchange: Exchange, read: StatusRead, now: datetime) -> InstanceView:
    """Pure: turn one status key, as the store read it, into a view. Never raises on bad data."""
    base = dict(exchange_id=exchange.id, exchange_name=exchange.name, display_name=exchange.display_name)
    pttl_ms = read.pttl_ms
    status = read.record
    reason = read.malformed
    age = 0.0
    if status is not None:
        try:  # a record that validates but carries an unparseable time is malformed too
            age = max(0.0, (now - _when(status.last_heartbeat)).total_seconds())
        except (ValueError, TypeError) as exc:
            reason = f"lastHeartbeat: {str(exc).splitlines()[0][:140]}"
    if reason is not None:
        return InstanceView(
            **base,
            online=False,
            status=None,
            health="offline",
            offline_reason=f"malformed status record: {reason}",
        )
    if status is None:
        # Offline or never ran: read_board tells them apart by the stream (last_known).
        return InstanceView(**base, online=False, status=None)
    interval_s = status.heartbeat_interval_s
    colour = heartbeat_colour(age, interval_s, status.renew_deadline_s)
    running = running_for_s(status, now)
    return InstanceView(
        **base,
        online=True,
        up=status.connection_state is State.ACTIVE,
        status=status,
        legacy_state=legacy_state(status.connection_state),
        ttl_ms=pttl_ms,
        heartbeat_age_s=round(age, 3),
        heartbeat=colour,
        late=colour != "fresh",
        health="healthy" if colour == "fresh" else colour,
        running_for_s=running,
        running_for=format_duration(running) if running is not None else None,
    )


def last_known(rows: Sequence[tuple[str, dict[str, str]]]) -> LastKnown | None:
    """Pure: the newest entry's identity, plus the newest state and error among ``rows`` (newest first)."""
    if not rows:
        return None
    entry_id, newest = rows[0]
    state: str | None = None
    admin: str | None = None
    error: tuple[str, str] | None = None
    for _, fields in rows:
        event = fields.get("event")
        if state is None and event == EventKind.STATE_TRANSITION.value and fields.get("toState"):
            state, admin = fields["toState"], fields.get("adminEmail") or None
        if state is None and event == EventKind.ERROR.value and fields.get("state"):
            state = fields["state"]
        if error is None and event == EventKind.ERROR.value:
            error = (fields.get("error", ""), fields.get("timestamp", ""))
        if state is not None and error is not None:
            break
    return LastKnown(
        entry_id=entry_id,
        event=newest.get("event", ""),
        at=newest.get("timestamp", ""),
        hostname=newest.get("hostname") or None,
        ip=newest.get("ip") or None,
        state=state,
        admin_email=admin,
        last_error=error[0] if error else None,
        last_error_at=error[1] if error else None,
    )


def judge_standby(record: StandbyRecord, now: datetime) -> StandbyView | None:
    """Pure: one standby record as the views show it; None when its time is unreadable (skipped)."""
    try:
        age = max(0.0, (now - _when(record.last_heartbeat)).total_seconds())
    except (ValueError, TypeError):
        return None
    # Each renewal rewrites the record with PX ttlMs, so what is left is the TTL minus the age.
    left = max(0, record.ttl_ms - int(age * 1000))
    return StandbyView(
        host=record.host,
        hostname=record.hostname,
        instance_id=record.instance_id,
        priority=record.priority,
        heartbeat_age_s=round(age, 3),
        ttl_ms=left,
        warm=record.warm,
        warm_ready=record.warm and record.warm_ready,
        warm_error=record.warm_error if record.warm and not record.warm_ready else None,
        warm_retry_in_s=_retry_in(record, now),
        start_error=record.start_error,
        start_retry_in_s=_seconds_until(record.start_retry_at, now) if record.start_error else None,
        ip_address=record.ip_address,
        heartbeat=heartbeat_colour(age, _interval_s(record.heartbeat_interval_ms)),
        version=record.version,
    )


#: A warm-up failure's reason is cut to this many characters in one-line views (the event has it all).
WARM_ERROR_CHARS = 160


def warmth(standby: StandbyView) -> str:
    """How a standby's warmth reads in one line: nothing for a cold one; ``warm``; ``warm (not
    ready)`` while it warms up; ``warm (failed, retry in 40s: <reason>)`` after a failed warm-up."""
    if not standby.warm:
        return ""
    if standby.warm_ready:
        return "warm"
    if standby.warm_error is None:
        return "warm (not ready)"
    reason = standby.warm_error
    if len(reason) > WARM_ERROR_CHARS:
        reason = reason[: WARM_ERROR_CHARS - 1] + "…"
    retry = f", retry in {standby.warm_retry_in_s:.0f}s" if standby.warm_retry_in_s is not None else ""
    return f"warm (failed{retry}: {reason})"


def readiness(standby: StandbyView) -> str:
    """What a standby's line says of its connector besides priority: its warmth, and a start that
    failed when it was last promoted (``could not start, behind the others for 40s: <reason>``)."""
    parts = [warmth(standby)] if standby.warm else []
    if standby.start_error is not None:
        reason = standby.start_error
        if len(reason) > WARM_ERROR_CHARS:
            reason = reason[: WARM_ERROR_CHARS - 1] + "…"
        left = standby.start_retry_in_s
        behind = f", behind the others for {left:.0f}s" if left else ""
        parts.append(f"could not start{behind}: {reason}")
    return ", ".join(parts)


def _seconds_until(moment: str | None, now: datetime) -> float | None:
    """Seconds until a time a record carries, to a tenth, judged on the server's clock."""
    left = seconds_until(moment, now)
    return None if left is None else round(left, 1)


def _retry_in(record: StandbyRecord, now: datetime) -> float | None:
    """Seconds until a failed warm-up is tried again, or None."""
    if not record.warm or record.warm_ready:
        return None
    return _seconds_until(record.warm_retry_at, now)


def standby_views(records: Sequence[StandbyRecord], now: datetime) -> list[StandbyView]:
    """Readable records, highest priority first (the index's order; ties keep it)."""
    views = [v for v in (judge_standby(record, now) for record in records) if v is not None]
    return sorted(views, key=lambda v: -v.priority)


class StatusBoard(Wire):
    instances: list[InstanceView]
    server_time: datetime


async def read_board(
    store: RedisStore, catalog: Catalog, exchange: str | None = None, *, with_last_known: bool = True
) -> StatusBoard:
    """Every active exchange (or just one, resolved strictly) with its judged status."""
    exchanges = [await catalog.exchange(exchange)] if exchange else await catalog.exchanges(active_only=True)
    # Two pipelined round trips in all: every status key and standby index, then the offline
    # exchanges' newest stream entries together with every listed standby's record.
    reads, indexes = await store.board([e.id for e in exchanges])
    now = datetime.now(UTC)
    views = [judge(e, read, now) for e, read in zip(exchanges, reads, strict=True)]
    offline = [v for v in views if not v.online] if with_last_known else []
    members = [(i, member) for i, listed in enumerate(indexes) for member in listed]
    streams, records, pauses = await store.board_details(
        [(v.exchange_name, "+", LAST_KNOWN_DEPTH) for v in offline],
        [(exchanges[i].id, member) for i, member in members],
        [e.id for e in exchanges],
    )
    if offline:
        # An empty stream (Redis lost its data) is answered from the durable copy of the log.
        empty = [i for i, rows in enumerate(streams) if not rows]
        durable = await catalog.log_rows(
            [LogRead(offline[i].exchange_name, None, 0, False, LAST_KNOWN_DEPTH) for i in empty]
        )
        for i, rows in zip(empty, durable, strict=True):
            streams[i] = rows
        for view, rows in zip(offline, streams, strict=True):
            view.last_known = last_known(rows)
            if view.health == "not_running" and view.last_known is not None:
                view.health = "offline"
    standby_records: list[list[StandbyRecord]] = [[] for _ in exchanges]
    for (i, _), record in zip(members, records, strict=True):
        if record is not None:
            standby_records[i].append(record)
    for view, listed, (pause, pttl) in zip(views, standby_records, pauses, strict=True):
        view.standbys = standby_views(listed, now)
        if paused_for_ms(pttl) is not None:
            view.paused = True
            view.paused_until = pause.until if pause is not None else None
            view.paused_by = pause.actor if pause is not None else None
    return StatusBoard(instances=views, server_time=now)
