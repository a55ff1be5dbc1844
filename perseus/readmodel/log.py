"""The activity log read side: cursor pages over the network streams, uptime and the state timeline.

Pagination is a k-way merge over one stream per exchange, newest first. Stream IDs are ordered
numerically as ``(milliseconds, sequence)`` — Livermore sorted them as strings, which puts
``…-10`` before ``…-9`` — and two exchanges' streams can hold the *same* ID, so the global order
breaks ties by exchange name: ``(ms, seq, exchange)`` descending. A cursor names the last entry a
page covered; the next page starts strictly after it in that order, so pages never repeat or skip an
entry, even when a page boundary falls inside a same-millisecond run shared by several streams.

The merge itself (:func:`merge_page`) and the timeline arithmetic are pure: Redis is reached only
through the ``fetch`` callable the caller injects (one pipelined round trip per call).

The stream is the live feed; PostgreSQL keeps a durable copy of every entry (``network_events``) and
a state ledger (``exchange_state_intervals``). A page is read from the stream and completed from the
durable copy where the stream runs short (Redis lost its data, or trimmed it); uptime and the
timeline read the ledger, whose cost does not grow with the stream, and fall back to the stream only
for exchanges the ledger has never seen (history written before the ledger existed).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from pydantic import BaseModel

from perseus.core.lifecycle import State
from perseus.errors import InvalidQuery, PerseusError
from perseus.keys import RETENTION, parse_iso
from perseus.models import EventKind, Exchange, InstanceStatus, Wire
from perseus.readmodel.ledger_fold import LedgerFold
from perseus.readmodel.network import format_duration, judge, running_for_s
from perseus.store.db import Catalog, LedgerView, LogRead
from perseus.store.redis_store import RedisStore

MAX_COUNT: Final = 200
DEFAULT_COUNT: Final = 50
#: A filtered page stops after examining this many entries even if it is not full yet; its
#: ``nextCursor`` then marks how far it looked, so a rare filter costs several short pages rather
#: than one request that reads 90 days of every stream.
SCAN_LIMIT: Final = 5000
#: Batch cap for a filtered scan (unfiltered scans never need more than ``count + 1`` per stream).
FILTERED_BATCH: Final = 500
#: Timeline reads stop after this many entries per exchange (the newest are kept).
TIMELINE_LIMIT: Final = 20_000
#: At most this many intervals in one timeline answer (the newest; ``truncated`` says so).
TIMELINE_POINTS: Final = 500
#: An activity page stops early (with a ``nextCursor``) once its entries reach this many bytes of JSON.
MAX_PAGE_BYTES: Final = 256 * 1024
UNKNOWN: Final = "unknown"
#: Stream entries an uptime or timeline read folds itself before it reads the ledger; a stream
#: further behind than this is answered from the stream while the API's reader catches up.
INLINE_FOLD: Final = 1000

log = logging.getLogger(__name__)


# --- stream IDs and cursors ------------------------------------------------------------------------

_ID_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_CURSOR_RE = re.compile(r"^(\d{1,20}-\d{1,20})(?:@(.{1,200}))?$")
_U64: Final = 2**64 - 1


@dataclass(frozen=True, order=True)
class StreamId:
    """A stream entry ID, compared as numbers."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> StreamId:
        match = _ID_RE.match(text)
        if not match or int(match[1]) > _U64 or int(match[2]) > _U64:
            raise InvalidQuery(f"invalid stream id {text!r}: expected <milliseconds>-<sequence>")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


@dataclass(frozen=True)
class Cursor:
    """Where a page ended. ``exchange`` is set in all-exchanges mode to break ties between streams
    holding the same ID; a bare ID means "strictly older than this ID in every stream"."""

    id: StreamId
    exchange: str | None = None

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR_RE.match(text.strip())
        if not match:
            raise InvalidQuery(f"invalid cursor {text!r}: expected <ms>-<seq> or <ms>-<seq>@<exchange>")
        return cls(StreamId.parse(match[1]), match[2].lower() if match[2] else None)

    def __str__(self) -> str:
        return f"{self.id}@{self.exchange}" if self.exchange else str(self.id)


@dataclass(frozen=True)
class Entry:
    id: StreamId
    exchange: str  # lower-case exchange name: the stream's suffix
    fields: dict[str, str]

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.id.ms, self.id.seq, self.exchange)

    def wire(self) -> dict[str, str]:
        return {"id": str(self.id), **self.fields}


@dataclass(frozen=True)
class Read:
    """One XREVRANGE: entries of ``exchange``'s stream at or below (``inclusive``) / strictly below
    ``upper`` (``None``: from the newest), at most ``count``."""

    exchange: str
    upper: StreamId | None
    inclusive: bool
    count: int

    def newest_bound(self) -> str:
        if self.upper is None:
            return "+"
        return str(self.upper) if self.inclusive else f"({self.upper}"


Rows = list[tuple[str, dict[str, str]]]
Fetch = Callable[[list[Read]], Awaitable[list[Rows]]]
Match = Callable[[dict[str, str]], bool]


@dataclass
class _Source:
    exchange: str
    upper: StreamId | None
    inclusive: bool
    batch: int
    buffer: deque[Entry] = field(default_factory=deque)
    exhausted: bool = False


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_cursor: Cursor | None


def _start_bound(exchange: str, cursor: Cursor | None) -> tuple[StreamId | None, bool]:
    """The first position to read in ``exchange``'s stream for a page after ``cursor``."""
    if cursor is None:
        return None, True
    # (id, exchange) < (cursor.id, cursor.exchange): the cursor's own ID is still to come in streams
    # whose name sorts below the cursor's (they follow it in descending order), not in the others.
    inclusive = cursor.exchange is not None and exchange < cursor.exchange
    return cursor.id, inclusive


async def merge_page(
    fetch: Fetch,
    exchanges: Sequence[str],
    *,
    count: int,
    cursor: Cursor | None = None,
    match: Match | None = None,
    tag_cursor: bool = True,
    scan_limit: int = SCAN_LIMIT,
) -> Page:
    """The next ``count`` matching entries across ``exchanges``' streams after ``cursor``, newest first.

    Each stream is read in growing batches and refilled only when its buffer runs dry while it may
    still hold the next-newest entry, so a page costs a few pipelined round trips and about
    ``count + 1`` entries per *contributing* stream, not ``count`` from every stream.
    """
    if not 1 <= count <= MAX_COUNT:
        raise InvalidQuery(f"count must be between 1 and {MAX_COUNT}, got {count}")
    names = sorted({e.lower() for e in exchanges})
    cap = count + 1 if match is None else max(count + 1, FILTERED_BATCH)
    first = min(cap, max(2, math.ceil(2 * (count + 1) / max(1, len(names)))))
    sources = []
    for name in names:
        upper, inclusive = _start_bound(name, cursor)
        if upper is not None and not inclusive and upper == StreamId(0, 0):
            sources.append(_Source(name, upper, inclusive, first, exhausted=True))  # nothing is older
        else:
            sources.append(_Source(name, upper, inclusive, first))

    def cursor_of(entry: Entry) -> Cursor:
        return Cursor(entry.id, entry.exchange if tag_cursor else None)

    result: list[Entry] = []
    scanned = 0
    # The buffered heads, newest first: (-ms, -seq, -i) orders as (ms, seq, exchange) descending,
    # since ``sources`` are sorted by name. A heap, not a scan of every source per entry: with 100
    # streams the scan was most of the page's own CPU.
    heads: list[tuple[int, int, int]] = []
    dry = [i for i, s in enumerate(sources) if not s.exhausted]
    while True:
        if dry:
            replies = await fetch(
                [
                    Read(sources[i].exchange, sources[i].upper, sources[i].inclusive, sources[i].batch)
                    for i in dry
                ]
            )
            for i, rows in zip(dry, replies, strict=True):
                source = sources[i]
                for raw_id, fields in rows:
                    source.buffer.append(Entry(StreamId.parse(raw_id), source.exchange, fields))
                if len(rows) < source.batch:
                    source.exhausted = True
                if source.buffer:
                    source.upper, source.inclusive = source.buffer[-1].id, False
                    first_id = source.buffer[0].id
                    heapq.heappush(heads, (-first_id.ms, -first_id.seq, -i))
                source.batch = min(cap, source.batch * 2)
            dry = []
        if not heads:
            return Page(result, None)
        i = -heapq.heappop(heads)[2]
        source = sources[i]
        head = source.buffer.popleft()
        if source.buffer:
            next_id = source.buffer[0].id
            heapq.heappush(heads, (-next_id.ms, -next_id.seq, -i))
        elif not source.exhausted:
            dry = [i]  # it may hold the next-newest entry: read it before choosing again
        scanned += 1
        if match is None or match(head.fields):
            if len(result) == count:  # a (count + 1)-th entry exists: there is a next page
                return Page(result, cursor_of(result[-1]))
            result.append(head)
        if scanned >= scan_limit:  # everything up to `head` has been examined
            return Page(result, cursor_of(head))


def entry_filter(
    events: Iterable[str] = (), admin: str | None = None, actor: str | None = None
) -> Match | None:
    """A predicate for event types, the admin's e-mail (only transitions carry one) and/or the
    actor (``api:ops`` or just ``ops``; only entries caused by a command carry one)."""
    wanted: set[str] = set()
    for event in events:
        try:
            wanted.add(EventKind(event).value)
        except ValueError:
            known = ", ".join(k.value for k in EventKind)
            raise InvalidQuery(f"unknown event type {event!r}; known: {known}") from None
    email = admin.strip().lower() if admin else None
    who = actor.strip() if actor else None
    if not wanted and not email and not who:
        return None

    def match(fields: dict[str, str]) -> bool:
        if wanted and fields.get("event") not in wanted:
            return False
        if who and who not in (fields.get("actor", ""), fields.get("actor", "").partition(":")[2]):
            return False
        return not email or fields.get("adminEmail", "").lower() == email

    return match


# --- the activity page, read through Redis ---------------------------------------------------------


class ActivityPage(Wire):
    """``GET /api/network/activity``: Livermore's ``{entries, nextCursor}`` plus the server's clock."""

    entries: list[dict[str, str]]
    next_cursor: str | None
    server_time: datetime


def store_fetch(store: RedisStore) -> Fetch:
    async def fetch(reads: list[Read]) -> list[Rows]:
        return await store.events_many([(r.exchange, r.newest_bound(), r.count) for r in reads])

    return fetch


def durable_fetch(store: RedisStore, catalog: Catalog) -> Fetch:
    """Read the streams first; a stream that returns fewer entries than asked is continued from the
    durable copy, strictly below the oldest entry it returned (so nothing appears twice)."""
    live = store_fetch(store)

    async def fetch(reads: list[Read]) -> list[Rows]:
        replies = await live(reads)
        short = [i for i, (r, rows) in enumerate(zip(reads, replies, strict=True)) if len(rows) < r.count]
        if not short:
            return replies
        more: list[LogRead] = []
        for i in short:
            read, rows = reads[i], replies[i]
            if rows:
                bound: StreamId | None = StreamId.parse(rows[-1][0])
                inclusive = False
            else:
                bound, inclusive = read.upper, read.inclusive
            more.append(
                LogRead(
                    read.exchange,
                    bound.ms if bound else None,
                    bound.seq if bound else 0,
                    inclusive,
                    read.count - len(rows),
                )
            )
        for i, rows in zip(short, await catalog.log_rows(more), strict=True):
            replies[i] = replies[i] + rows
        return replies

    return fetch


def _within_budget(entries: list[Entry], budget: int) -> int:
    """How many of ``entries`` fit in ``budget`` bytes of JSON (always at least one)."""
    used = 0
    for n, entry in enumerate(entries):
        used += len(json.dumps(entry.wire())) + 1
        if used > budget and n > 0:
            return n
    return len(entries)


async def read_activity(
    store: RedisStore,
    catalog: Catalog,
    *,
    exchange: str | None = None,
    count: int = DEFAULT_COUNT,
    cursor: str | None = None,
    events: Sequence[str] = (),
    admin: str | None = None,
    actor: str | None = None,
) -> ActivityPage:
    """One page of one exchange's stream, or of every active exchange's streams merged."""
    if not 1 <= count <= MAX_COUNT:
        raise InvalidQuery(f"count must be between 1 and {MAX_COUNT}, got {count}")
    match = entry_filter(events, admin, actor)
    parsed = Cursor.parse(cursor) if cursor else None
    if exchange:
        names = [(await catalog.exchange(exchange)).name]
    else:
        names = [e.name for e in await catalog.exchanges(active_only=True)]
    # A single exchange keeps Livermore's plain-ID cursor; only the merge needs the tie-breaker.
    page = await merge_page(
        durable_fetch(store, catalog), names, count=count, cursor=parsed, match=match, tag_cursor=not exchange
    )
    entries, next_cursor = page.entries, page.next_cursor
    fits = _within_budget(entries, MAX_PAGE_BYTES)
    if fits < len(entries):  # the rest comes on the next page: the cursor is the last entry sent
        entries = entries[:fits]
        next_cursor = Cursor(entries[-1].id, entries[-1].exchange if not exchange else None)
    return ActivityPage(
        entries=[e.wire() for e in entries],
        next_cursor=str(next_cursor) if next_cursor else None,
        server_time=datetime.now(UTC),
    )


# --- timeline and uptime (pure) --------------------------------------------------------------------

_WINDOW_RE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
UPTIME_WINDOWS: Final = ("24h", "7d", "30d")


def parse_window(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``: positive and at most the stream's 90-day retention."""
    match = _WINDOW_RE.match(text.strip().lower())
    if not match:
        raise InvalidQuery(f"invalid window {text!r}: use a number and a unit s/m/h/d, e.g. 24h or 7d")
    window = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if not timedelta(0) < window <= RETENTION:
        raise InvalidQuery(f"window {text!r} must be longer than 0 and at most {RETENTION.days}d")
    return window


@dataclass(frozen=True)
class Transition:
    at: datetime
    from_state: str
    to_state: str


_STATES: Final = frozenset(s.value for s in State)


def transitions_of(rows: Rows) -> list[Transition]:
    """The ``state_transition`` entries of newest-first stream rows, oldest first.

    The entry's own ``timestamp`` (when the workflow made the transition) is used; a retried write
    may reach Redis later than that, so the stream ID's milliseconds are only the fallback. An entry
    whose ``toState`` is not one of the six states is left out.
    """
    out: list[Transition] = []
    for raw_id, fields in reversed(rows):
        if fields.get("event") != EventKind.STATE_TRANSITION.value or fields.get("toState") not in _STATES:
            continue  # not a transition, or one no reader can place (the ledger fold skips it too)
        try:
            at = _aware(parse_iso(fields["timestamp"]))
        except (KeyError, ValueError):
            at = datetime.fromtimestamp(StreamId.parse(raw_id).ms / 1000, UTC)
        out.append(Transition(at, fields.get("fromState") or UNKNOWN, fields["toState"]))
    return out


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Interval(Wire):
    state: str
    start: datetime
    end: datetime
    duration_s: float


def timeline(
    transitions: Sequence[Transition], start: datetime, end: datetime, fallback: str | None = None
) -> list[Interval]:
    """Intervals per state covering ``[start, end]``, from transitions (oldest first).

    The state at ``start`` is the last earlier transition's target, else the first transition's
    source, else ``fallback`` (e.g. the live status key), else ``unknown``.
    """
    ordered = sorted(transitions, key=lambda t: t.at)  # stable: same-instant entries keep stream order
    before = [t for t in ordered if t.at < start]
    inside = [t for t in ordered if start <= t.at <= end]
    if before:
        state = before[-1].to_state
    elif inside:
        state = inside[0].from_state
    else:
        state = fallback or UNKNOWN
    out: list[Interval] = []
    at = start

    def add(state: str, lo: datetime, hi: datetime) -> None:
        if hi <= lo:
            return
        if out and out[-1].state == state and out[-1].end == lo:
            out[-1] = _interval(state, out[-1].start, hi)
        else:
            out.append(_interval(state, lo, hi))

    for t in inside:
        add(state, at, t.at)
        state, at = t.to_state, max(at, t.at)
    add(state, at, end)
    return out


def _interval(state: str, start: datetime, end: datetime) -> Interval:
    return Interval(state=state, start=start, end=end, duration_s=round((end - start).total_seconds(), 3))


def seconds_in(intervals: Sequence[Interval], state: str, start: datetime, end: datetime) -> float:
    """Seconds spent in ``state`` within ``[start, end]``."""
    total = 0.0
    for i in intervals:
        if i.state == state:
            lo, hi = max(i.start, start), min(i.end, end)
            total += max(0.0, (hi - lo).total_seconds())
    return total


def totals(intervals: Sequence[Interval]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in intervals:
        out[i.state] = round(out.get(i.state, 0.0) + i.duration_s, 3)
    return out


class UptimeWindow(Wire):
    window: str
    seconds: int
    active_s: float
    #: Time ``active`` as a share of the time the exchange was *observed* within the window (from
    #: ``observedSince``: its first recorded transition); 0 when it was not observed at all. Time
    #: before the exchange existed is not counted as down.
    active_pct: float
    #: Share of the window the log knows the state for (the observed part).
    known_pct: float
    #: Seconds of the window the exchange was observed (the denominator of ``activePct``).
    observed_s: float = 0.0
    #: Where the observed part of the window begins (None: not observed in this window).
    observed_since: datetime | None = None
    #: Time ``active`` as a share of the whole window, unobserved time counting as not active.
    window_active_pct: float = 0.0


def _window(
    name: str, seconds: float, active: float, observed: float, since: datetime | None
) -> UptimeWindow:
    observed = min(max(0.0, observed), seconds)
    return UptimeWindow(
        window=name,
        seconds=int(seconds),
        active_s=round(active, 3),
        active_pct=round(min(100.0, 100 * active / observed), 3) if observed > 0 else 0.0,
        known_pct=round(100 * observed / seconds, 3),
        observed_s=round(observed, 3),
        observed_since=since if observed > 0 else None,
        window_active_pct=round(100 * active / seconds, 3),
    )


def uptime_windows(
    intervals: Sequence[Interval],
    now: datetime,
    names: Sequence[str],
    observed_since: datetime | None = None,
) -> list[UptimeWindow]:
    """Per window: time active over the time observed. The observed time is the known (not
    ``unknown``) part of ``intervals`` at or after ``observed_since`` (when given)."""
    out = []
    for name in names:
        length = parse_window(name)
        start = now - length
        lo = max(start, observed_since) if observed_since else start
        known = [i for i in intervals if i.state != UNKNOWN and min(i.end, now) > max(i.start, lo)]
        observed = sum((min(i.end, now) - max(i.start, lo)).total_seconds() for i in known)
        active = seconds_in(intervals, State.ACTIVE.value, lo, now) if lo < now else 0.0
        since = max(known[0].start, lo) if known else None
        out.append(_window(name, length.total_seconds(), active, observed, since))
    return out


def ledger_window(
    name: str, first: datetime | None, totals_s: dict[str, float], now: datetime
) -> UptimeWindow:
    """One uptime window from the state ledger's seconds per state inside it."""
    length = parse_window(name)
    since = max(now - length, first) if first else None
    active = totals_s.get(State.ACTIVE.value, 0.0)
    return _window(name, length.total_seconds(), active, sum(totals_s.values()), since)


def ledger_timeline(
    view: LedgerView, start: datetime, end: datetime
) -> tuple[list[Interval], dict[str, float]]:
    """Timeline intervals and per-state totals from the ledger; time before the ledger's first
    interval is ``unknown``."""
    out: list[Interval] = []
    totals = {state: round(seconds, 3) for state, seconds in view.totals_s.items() if seconds > 0}
    if view.intervals and not view.truncated and view.intervals[0].start > start:
        out.append(_interval(UNKNOWN, start, view.intervals[0].start))
    elif not view.intervals:
        out.append(_interval(UNKNOWN, start, end))
    for i in view.intervals:
        lo, hi = max(i.start, start), min(i.end or end, end)
        if hi <= lo:
            continue
        if out and out[-1].state == i.state and out[-1].end == lo:
            # Two writers (or a late entry) can enter the state it is already in: one interval, as
            # the stream path gives it.
            out[-1] = _interval(i.state, out[-1].start, hi)
        else:
            out.append(_interval(i.state, lo, hi))
    unknown = sum(i.duration_s for i in out if i.state == UNKNOWN)
    if unknown:
        totals[UNKNOWN] = round(unknown, 3)
    return out, totals


# --- timeline and uptime, read through the ledger (or the stream for exchanges it has not seen) ----


class Timeline(Wire):
    exchange_id: int
    exchange_name: str
    window: str
    start: datetime
    end: datetime
    intervals: list[Interval]
    totals_s: dict[str, float]
    #: True when the window held more than the answer may carry (TIMELINE_POINTS intervals) and only
    #: the newest are given; ``totalsS`` still covers the whole window.
    truncated: bool
    server_time: datetime
    #: When the exchange was first observed (its first recorded transition), if known.
    observed_since: datetime | None = None
    #: Where the intervals come from: ``ledger`` or ``stream`` (as for uptime).
    source: str = "ledger"


class Uptime(Wire):
    exchange_id: int
    exchange_name: str
    online: bool
    state: str
    connected_at: str | None
    running_for_s: float | None
    #: "4h 23m" while active, from ``connectedAt`` on the server's clock.
    running_for: str | None
    windows: list[UptimeWindow]
    server_time: datetime
    #: When the exchange was first observed (its first recorded transition), if known.
    observed_since: datetime | None = None
    #: Where the figures come from: ``ledger`` (PostgreSQL: every writer's transitions, Perseus'
    #: own and those folded from the stream) or ``stream`` (the ledger has not seen the exchange, or
    #: its fold is still catching up with a long history).
    source: str = "ledger"


class _History(BaseModel):
    exchange: Exchange
    status: InstanceStatus | None
    online: bool
    intervals: list[Interval]
    truncated: bool
    now: datetime
    observed_since: datetime | None


async def _stream_history(store: RedisStore, catalog: Catalog, ex: Exchange, window: timedelta) -> _History:
    """The pre-ledger path: transitions read from the stream (cost grows with the stream)."""
    read = await store.status(ex.id)
    now = datetime.now(UTC)
    view = judge(ex, read, now)
    start = now - window
    start_ms = int(start.timestamp() * 1000)
    # Entries are selected by stream ID; a transition's own timestamp can be a little older than its
    # ID, so read a minute further back and let `timeline` place it by timestamp.
    rows = (
        await store.events_many([(ex.name, "+", TIMELINE_LIMIT)], oldest=f"{max(0, start_ms - 60_000)}-0")
    )[0]
    truncated = len(rows) >= TIMELINE_LIMIT
    found = transitions_of(rows)
    fallback: str | None = view.status.connection_state.value if view.status else None
    older = transitions_of(await store.events(ex.name, newest=f"({max(0, start_ms - 60_000)}-0", count=200))
    if not found and fallback is None:
        # Nothing changed inside the window and nobody holds the key: the last transition before it says.
        fallback = older[-1].to_state if older else None
    if truncated and found:
        start = max(start, found[0].at)
    # Observed from the first transition the stream holds (the state before it was not watched).
    first = older[0].at if older else (found[0].at if found else None)
    return _History(
        exchange=ex,
        status=view.status,
        online=view.online,
        intervals=timeline(found, start, now, fallback),
        truncated=truncated,
        now=now,
        observed_since=first,
    )


async def _ledger_is_current(fold: LedgerFold | None, ex: Exchange) -> bool:
    """Whether the ledger may answer for ``ex``: the fold has taken in what its stream holds (a few
    entries at most, usually none: the API's reader folds them as they arrive). Without a fold (a
    process that runs none) the ledger answers as it stands."""
    if fold is None:
        return True
    try:
        return await fold.catch_up(ex, budget=INLINE_FOLD)
    except PerseusError as exc:
        log.info("%s read from the stream: the ledger fold failed: %s", ex.name, exc)
        return False


async def read_timeline(
    store: RedisStore, catalog: Catalog, exchange: str, window: str = "24h", fold: LedgerFold | None = None
) -> Timeline:
    length = parse_window(window)
    ex = await catalog.exchange(exchange)
    current = await _ledger_is_current(fold, ex)
    now = datetime.now(UTC)
    start = now - length
    view = await catalog.ledger(ex.id, start, now, TIMELINE_POINTS) if current else None
    observed: datetime | None
    if view is not None and view.observed_since is not None:
        intervals, totals_s = ledger_timeline(view, start, now)
        truncated, observed, source = view.truncated, view.observed_since, "ledger"
    else:
        source = "stream"
        h = await _stream_history(store, catalog, ex, length)
        now, start = h.now, h.now - length
        intervals, truncated, observed = h.intervals, h.truncated, h.observed_since
        if len(intervals) > TIMELINE_POINTS:
            intervals, truncated = intervals[-TIMELINE_POINTS:], True
        totals_s = totals(h.intervals)
    return Timeline(
        exchange_id=ex.id,
        exchange_name=ex.name,
        window=window,
        start=start,
        end=now,
        intervals=intervals,
        totals_s=totals_s,
        truncated=truncated,
        server_time=now,
        observed_since=observed,
        source=source,
    )


async def read_uptime(
    store: RedisStore, catalog: Catalog, exchange: str, fold: LedgerFold | None = None
) -> Uptime:
    ex = await catalog.exchange(exchange)
    current = await _ledger_is_current(fold, ex)
    read = await store.status(ex.id)
    now = datetime.now(UTC)
    status = judge(ex, read, now)
    first: datetime | None = None
    last: str | None = None
    spent: list[dict[str, float]] = []
    if current:
        first, last, spent = await catalog.ledger_windows(
            ex.id, now, [now - parse_window(w) for w in UPTIME_WINDOWS]
        )
    observed: datetime | None
    if first is not None:
        windows = [ledger_window(w, first, s, now) for w, s in zip(UPTIME_WINDOWS, spent, strict=True)]
        observed, source = first, "ledger"
    else:
        h = await _stream_history(store, catalog, ex, parse_window(UPTIME_WINDOWS[-1]))
        now, observed, source = h.now, h.observed_since, "stream"
        windows = uptime_windows(h.intervals, now, UPTIME_WINDOWS, observed)
        last = h.intervals[-1].state if h.intervals else None
    record = status.status
    running = running_for_s(record, now) if record else None
    return Uptime(
        exchange_id=ex.id,
        exchange_name=ex.name,
        online=status.online,
        state=record.connection_state.value if record else (last or UNKNOWN),
        connected_at=record.connected_at if record else None,
        running_for_s=running,
        running_for=format_duration(running) if running is not None else None,
        windows=windows,
        server_time=now,
        observed_since=observed,
        source=source,
    )
