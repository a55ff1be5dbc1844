"""The ledger fold: entries other writers put in the network streams, folded into the state ledger.

Perseus writes every event through ``record_event``, which keeps the durable log and the state
ledger in PostgreSQL beside the stream. A mixed fleet also has Livermore v6 services writing their
transitions straight into ``logs:network:{name}`` (DESIGN §2.1's compatibility): without the fold,
those reach neither table, and uptime and the timeline of such an exchange had to be computed from
the stream, at a cost that grows with the history.

The fold reads each exchange's stream forward from a mark kept in PostgreSQL (``ledger_folds``) and
hands each batch to :meth:`~perseus.store.db.Catalog.fold_entries`, which in one transaction under
the ledger's per-exchange lock copies the entries past the mark into ``network_events`` (by event
id: Perseus' own entries are there already and are left alone), adds the transitions it copied to
the ledger, and moves the mark. So:

* several API processes folding the same stream never count an entry twice (the second one finds
  the mark past it), and a restarted process resumes at the mark;
* an entry whose timestamp is older than what the ledger holds (another host's clock) is slotted in
  by its timestamp, as the stream path orders transitions;
* an entry that cannot be read (no ``event``, a transition without a known ``toState``) is skipped
  with one log line — by the process whose transaction moved the mark past it — and never stops the
  fold.

The API's stream reader (:class:`perseus.api.live.LiveFeed`) runs the fold as entries arrive and
catches up from the mark when it starts; the uptime and timeline reads top it up before they read
the ledger, so an answer never misses an entry the reader has not folded yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from perseus import metrics
from perseus.core.lifecycle import State
from perseus.keys import parse_iso
from perseus.models import EventKind, Exchange
from perseus.store.db import Catalog, FoldEntry, FoldOutcome
from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)
#: A fold of at least this many transitions at once is a catch-up, worth a line at INFO.
CATCH_UP_LINE = 50

#: Entries read from a stream and folded in one transaction.
BATCH: Final = 500
#: The ``event`` column's width in ``network_events``.
EVENT_WIDTH: Final = 40
#: A longer ``eventId`` is not used as the durable log's key (an index entry; Perseus' are UUIDs):
#: the entry is kept under its stream position instead.
EVENT_ID_WIDTH: Final = 200
_STATES: Final = frozenset(s.value for s in State)

Rows = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class Skipped:
    stream_id: tuple[int, int]
    reason: str


def _position(raw_id: str) -> tuple[int, int]:
    ms, _, seq = raw_id.partition("-")
    return int(ms), int(seq or 0)


def fold_entries(exchange_name: str, rows: Rows) -> tuple[list[FoldEntry], list[Skipped]]:
    """The stream rows (oldest first) as entries to fold, and those that cannot be read, with why.

    Pure. Times are read as the stream path reads them (:func:`perseus.network_log.transitions_of`):
    the entry's own ``timestamp``, or its stream ID's milliseconds when that does not parse. An
    entry without ``eventId`` (another writer's) is kept under ``stream:{exchange}:{stream id}``.
    """
    out: list[FoldEntry] = []
    skipped: list[Skipped] = []
    for raw_id, fields in rows:
        ms, seq = _position(raw_id)
        event = fields.get("event", "")
        if not event:
            skipped.append(Skipped((ms, seq), "no event field"))
            continue
        if len(event) > EVENT_WIDTH:
            skipped.append(Skipped((ms, seq), f"event name longer than {EVENT_WIDTH} characters"))
            continue
        to_state: str | None = None
        if event == EventKind.STATE_TRANSITION.value:
            target = fields.get("toState", "")
            if target not in _STATES:
                why = f"unknown toState {target[:40]!r}" if target else "a state_transition without toState"
                skipped.append(Skipped((ms, seq), why))
                continue
            to_state = target
        try:
            at = parse_iso(fields["timestamp"])
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
        except (KeyError, ValueError):
            at = datetime.fromtimestamp(ms / 1000, UTC)
        event_id = fields.get("eventId", "")
        if not event_id or len(event_id) > EVENT_ID_WIDTH:
            event_id = f"stream:{exchange_name.lower()}:{raw_id}"
        out.append(FoldEntry(ms, seq, event_id, event, at, to_state, _storable(fields)))
    return out, skipped


def _storable(fields: dict[str, str]) -> dict[str, str]:
    """The fields as PostgreSQL's jsonb can hold them: it refuses a NUL character, and one such entry
    would fail its batch and so stop the fold at it (U+FFFD stands in; the stream keeps the original)."""
    if not any("\x00" in k or "\x00" in v for k, v in fields.items()):
        return dict(fields)
    return {k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd") for k, v in fields.items()}


class LedgerFold:
    """Folds exchanges' streams into the ledger; safe to run in several processes at once."""

    def __init__(self, store: RedisStore, catalog: Catalog, *, batch: int = BATCH) -> None:
        self._store = store
        self._catalog = catalog
        self._batch = batch
        #: The marks this process last saw, by exchange id. A mark only moves forward, so a cached
        #: one is never ahead of the truth: at worst entries past it were folded by another process,
        #: and the fold's transaction finds that and hands back the real mark. A read whose reader
        #: is keeping up therefore costs one XRANGE, not a database round trip as well.
        self._marks: dict[int, tuple[int, int]] = {}

    async def catch_up(
        self, exchange: Exchange, *, budget: int | None = None, gate: asyncio.Semaphore | None = None
    ) -> bool:
        """Fold what ``exchange``'s stream holds past the mark. True once the stream's end was
        reached; False when ``budget`` entries were read and more remain (the caller answers from
        the stream meanwhile). ``gate`` bounds how many folds of this process hold a connection."""
        mark = self._marks.get(exchange.id)
        if mark is None:
            async with gate or contextlib.nullcontext():
                mark = await self._catalog.fold_mark(exchange.id) or (0, 0)  # (0, 0): from the start
            self._marks[exchange.id] = mark
        read = 0
        while True:
            after = f"{mark[0]}-{mark[1]}"
            rows = await self._store.entries_after(exchange.name, after, count=self._batch)
            if not rows:
                return True
            entries, skipped = fold_entries(exchange.name, rows)
            through = _position(rows[-1][0])
            async with gate or contextlib.nullcontext():
                outcome = await self._catalog.fold_entries(exchange.id, exchange.name, entries, through)
            self._report(exchange, outcome, skipped)
            mark = self._marks[exchange.id] = outcome.mark
            read += len(rows)
            if len(rows) < self._batch:
                return True
            if budget is not None and read >= budget:
                return False

    @staticmethod
    def _report(exchange: Exchange, outcome: FoldOutcome, skipped: list[Skipped]) -> None:
        """One line per decision, by the process whose transaction made it."""
        mine = [s for s in skipped if outcome.was is None or s.stream_id > outcome.was]
        if outcome.was == outcome.mark:
            return  # another process folded these entries first
        metrics.LEDGER_FOLDED.labels("copied").inc(outcome.copied)
        metrics.LEDGER_FOLDED.labels("transitions").inc(outcome.folded)
        metrics.LEDGER_FOLDED.labels("skipped").inc(len(mine))
        for s in mine:
            log.warning(
                "ledger fold: %s entry %d-%d skipped: %s",
                exchange.name,
                s.stream_id[0],
                s.stream_id[1],
                s.reason,
            )
        if outcome.folded:
            # One line for a catch-up; the steady trickle (a transition at a time, and Perseus' own
            # whenever the fold reads one before its writer's PostgreSQL row lands) is counted in
            # perseus_ledger_folded_total and logged at DEBUG, not once per transition.
            log.log(
                logging.INFO if outcome.folded >= CATCH_UP_LINE else logging.DEBUG,
                "ledger fold: %s: %d transitions folded into the ledger (%d older than its newest "
                "interval, slotted in by time), %d entries copied to the durable log",
                exchange.name,
                outcome.folded,
                outcome.late,
                outcome.copied,
            )
