"""PostgreSQL access: the pool factory, schema application and the catalog queries.

The only module that imports psycopg. Queries are parameterised, never formatted.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from perseus.errors import ServiceUnavailable, UnknownAdmin, UnknownExchange
from perseus.models import Admin, EventKind, Exchange, NetworkEvent

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"
DEMO_DATA_PATH = Path(__file__).resolve().parents[1] / "demo_data.sql"

DatabaseError = psycopg.Error

#: Network log rows and state intervals older than this are deleted (the stream's retention).
LOG_RETENTION_DAYS = 90
#: A process prunes old rows at most this often, as part of a write (no cron, no extra task).
PRUNE_EVERY_S = 3600.0
#: Namespace of the per-exchange advisory lock that serialises ledger updates.
_LEDGER_LOCK = 0x5045_5253  # "PERS"

#: Rows of one stream as the read side sees them: ``(stream id, fields)``, newest first.
LogRows = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class LogRead:
    """Durable log rows of ``exchange`` strictly below ``(ms, seq)`` (or at it, when ``inclusive``;
    from the newest when ``ms`` is None), at most ``count``, newest first."""

    exchange: str
    ms: int | None
    seq: int
    inclusive: bool
    count: int


@dataclass(frozen=True)
class LedgerInterval:
    state: str
    start: datetime
    end: datetime | None  # None: the current state


@dataclass(frozen=True)
class LedgerView:
    """What the state ledger says about ``[start, end]`` of one exchange."""

    #: When the ledger's first interval began (None: the ledger knows nothing of the exchange).
    observed_since: datetime | None
    #: The newest intervals overlapping the window, oldest first (at most the requested limit).
    intervals: list[LedgerInterval]
    #: More intervals overlapped the window than were returned.
    truncated: bool
    #: Seconds per state inside the window, over every interval (not only the returned ones).
    totals_s: dict[str, float]


def make_pool(url: str, *, max_size: int = 5) -> AsyncConnectionPool[Any]:
    """A pool that is not open yet: the composition root opens and closes it."""
    return AsyncConnectionPool(
        url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True, "row_factory": dict_row}
    )


async def connect(url: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from None


async def apply_sql(url: str, path: Path) -> None:
    conn = await connect(url)
    async with conn:
        await conn.execute(path.read_text())  # our own file, not user input


async def apply_schema(url: str) -> None:
    await apply_sql(url, SCHEMA_PATH)


class OneConnection:
    """A single connection shaped like a pool: for short-lived commands, which should fail fast
    (one connect attempt with a timeout) rather than wait for a pool to fill."""

    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        yield self._conn


class Catalog:
    """Read and write the catalog through a pool (or a :class:`OneConnection`)."""

    def __init__(self, pool: AsyncConnectionPool[Any] | OneConnection) -> None:
        self._pool = pool
        self._next_prune = 0.0

    async def _fetch(
        self, query: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, params)  # literal queries only
                return await cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from None

    async def exchanges(self, *, active_only: bool = False) -> list[Exchange]:
        rows = await self._fetch(
            "SELECT id, name, display_name, is_active FROM exchanges"
            + (" WHERE is_active" if active_only else "")
            + " ORDER BY id"
        )
        return [Exchange.model_validate(r) for r in rows]

    async def exchange(self, wanted: str) -> Exchange:
        """Resolve a name (case-insensitive) or numeric id among *active* exchanges; never a default."""
        active = await self.exchanges(active_only=True)
        for ex in active:
            if ex.name == wanted.lower() or str(ex.id) == wanted.strip():
                return ex
        raise UnknownExchange(wanted, [e.name for e in active])

    async def admin(self, email: str) -> Admin:
        rows = await self._fetch(
            "SELECT email, display_name FROM users WHERE lower(email) = lower(%s) AND is_active", (email,)
        )
        if not rows:
            raise UnknownAdmin(f"unknown admin {email!r}: no active user has that e-mail")
        return Admin(email=rows[0]["email"], display_name=rows[0]["display_name"])

    async def active_symbols(self, exchange_id: int) -> list[str]:
        rows = await self._fetch(
            "SELECT symbol FROM exchange_symbols WHERE exchange_id = %s AND is_active ORDER BY symbol",
            (exchange_id,),
        )
        return [r["symbol"] for r in rows]

    async def create_api_key(self, name: str) -> str:
        key = str(uuid.uuid4())
        await self._fetch("INSERT INTO api_keys (name, key) VALUES (%s, %s)", (name, key))
        return key

    async def first_active_api_key(self, name: str) -> str | None:
        rows = await self._fetch(
            "SELECT key::text AS key FROM api_keys WHERE name = %s AND is_active ORDER BY id LIMIT 1", (name,)
        )
        return rows[0]["key"] if rows else None

    async def check_api_key(self, key: str) -> tuple[str, str] | None:
        """``(stored key, name)`` of the active key ``key`` (a canonical UUID string), or None; marks
        it used.

        One round trip: the lookup and the ``last_used_at`` touch share a statement. The touch is
        skipped when the key was used within the last minute, so a busy client does not turn every
        read into a row write (WAL and row-lock churn) while ``last_used_at`` stays accurate to a
        minute. The caller compares the returned key in constant time.
        """
        rows = await self._fetch(
            "WITH hit AS (SELECT id, name, key::text AS key, last_used_at FROM api_keys"
            " WHERE key = %s::uuid AND is_active),"
            " touched AS (UPDATE api_keys a SET last_used_at = now() FROM hit WHERE a.id = hit.id"
            " AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '60 seconds')"
            " RETURNING a.id)"
            " SELECT hit.name, hit.key FROM hit",
            (key,),
        )
        return (rows[0]["key"], rows[0]["name"]) if rows else None

    async def revoke_api_keys(self, name_or_key: str) -> int:
        """Deactivate the active key with that value, or every active key with that name; how many."""
        rows = await self._fetch(
            "UPDATE api_keys SET is_active = false, updated_at = now()"
            " WHERE is_active AND (name = %s OR key::text = lower(%s)) RETURNING id",
            (name_or_key, name_or_key),
        )
        return len(rows)

    async def epoch_floor(self, exchange_id: int) -> int:
        """The highest epoch ever handed out for the exchange (0 if none)."""
        rows = await self._fetch("SELECT epoch FROM exchange_epochs WHERE exchange_id = %s", (exchange_id,))
        return int(rows[0]["epoch"]) if rows else 0

    async def raise_epoch(self, exchange_id: int, epoch: int) -> None:
        """Record ``epoch`` as handed out; the mark only ever moves up."""
        await self._fetch(
            "INSERT INTO exchange_epochs (exchange_id, epoch) VALUES (%s, %s) "
            "ON CONFLICT (exchange_id) DO UPDATE "
            "SET epoch = GREATEST(exchange_epochs.epoch, EXCLUDED.epoch), updated_at = now()",
            (exchange_id, epoch),
        )

    # --- the durable network log and the state ledger -----------------------------------------------

    async def record_event(self, event: NetworkEvent, stream_id: str, fields: dict[str, str]) -> bool:
        """Append ``event`` (already in the stream as ``stream_id``) to the durable log, exactly once
        by ``eventId``; a state transition also moves the exchange's state ledger, in the same
        transaction, so the two never disagree. True if this call wrote it (False: a retry).
        """
        ms, _, seq = stream_id.partition("-")
        transition = event.event is EventKind.STATE_TRANSITION and event.to_state is not None
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if transition:
                    # One writer per exchange at a time: the ledger's neighbours must not move under us.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)", (_LEDGER_LOCK, event.exchange_id)
                    )
                cur = await conn.execute(
                    "INSERT INTO network_events (event_id, exchange_id, exchange_name, event, occurred_at,"
                    " stream_ms, stream_seq, fields) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    (
                        event.event_id,
                        event.exchange_id,
                        event.exchange_name.lower(),
                        event.event.value,
                        event.timestamp,
                        int(ms),
                        int(seq or 0),
                        Jsonb(fields),
                    ),
                )
                inserted = await cur.fetchone() is not None
                if inserted and transition:
                    assert event.to_state is not None
                    await _ledger_insert(
                        conn, event.exchange_id, event.to_state.value, event.timestamp, event.event_id
                    )
                if inserted:
                    await self._maybe_prune(conn)
                return inserted
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from None

    async def _maybe_prune(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Delete what aged out of the retention, at most once per PRUNE_EVERY_S in this process."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        await conn.execute(
            "DELETE FROM network_events WHERE occurred_at < now() - make_interval(days => %s)",
            (LOG_RETENTION_DAYS,),
        )
        await conn.execute(
            "DELETE FROM exchange_state_intervals WHERE ended_at < now() - make_interval(days => %s)",
            (LOG_RETENTION_DAYS,),
        )

    async def log_rows(self, reads: Sequence[LogRead]) -> list[LogRows]:
        """Several newest-first slices of the durable log in one statement (one slice per read)."""
        if not reads:
            return []
        rows = await self._fetch(
            "SELECT r.n, e.stream_ms, e.stream_seq, e.fields"
            " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bool[], %s::int[])"
            "   WITH ORDINALITY AS r(name, ms, seq, incl, cnt, n)"
            " CROSS JOIN LATERAL (SELECT stream_ms, stream_seq, fields FROM network_events"
            "   WHERE exchange_name = r.name AND (r.ms IS NULL OR (stream_ms, stream_seq) < (r.ms, r.seq)"
            "     OR (r.incl AND stream_ms = r.ms AND stream_seq = r.seq))"
            "   ORDER BY stream_ms DESC, stream_seq DESC LIMIT r.cnt) e"
            " ORDER BY r.n, e.stream_ms DESC, e.stream_seq DESC",
            (
                [r.exchange.lower() for r in reads],
                [r.ms for r in reads],
                [r.seq for r in reads],
                [r.inclusive for r in reads],
                [r.count for r in reads],
            ),
        )
        out: list[LogRows] = [[] for _ in reads]
        for row in rows:
            fields = {str(k): str(v) for k, v in row["fields"].items()}
            out[int(row["n"]) - 1].append((f"{row['stream_ms']}-{row['stream_seq']}", fields))
        return out

    async def ledger(self, exchange_id: int, start: datetime, end: datetime, limit: int) -> LedgerView:
        """The state ledger over ``[start, end]``: three statements, each an index range over the
        window's intervals (never the exchange's whole history, never the stream)."""
        # The ledger's first interval, and the one in force at `start`: the window's rows lie between
        # it and `end`, so every statement below is an index range over the window alone.
        (bounds,) = await self._fetch(
            "SELECT (SELECT started_at FROM exchange_state_intervals WHERE exchange_id = %(ex)s"
            "   ORDER BY started_at, id LIMIT 1) AS first,"
            " (SELECT started_at FROM exchange_state_intervals WHERE exchange_id = %(ex)s"
            "   AND started_at <= %(start)s ORDER BY started_at DESC, id DESC LIMIT 1) AS lo",
            {"ex": exchange_id, "start": start},
        )
        if bounds["first"] is None:
            return LedgerView(observed_since=None, intervals=[], truncated=False, totals_s={})
        window = (
            " FROM exchange_state_intervals WHERE exchange_id = %(ex)s AND started_at >= %(lo)s"
            " AND started_at < %(end)s AND (ended_at IS NULL OR ended_at > %(start)s)"
        )
        lo = bounds["lo"] or start
        params: dict[str, object] = {
            "ex": exchange_id,
            "start": start,
            "end": end,
            "lo": lo,
            "limit": limit + 1,
        }
        rows = await self._fetch(
            "SELECT state, started_at, ended_at"
            + window
            + " ORDER BY started_at DESC, id DESC LIMIT %(limit)s",
            params,
        )
        totals = await self._fetch(
            "SELECT state, sum(extract(epoch FROM least(coalesce(ended_at, %(end)s), %(end)s)"
            " - greatest(started_at, %(start)s)))::float8 AS seconds" + window + " GROUP BY state",
            params,
        )
        kept = rows[:limit]
        return LedgerView(
            observed_since=bounds["first"],
            intervals=[LedgerInterval(r["state"], r["started_at"], r["ended_at"]) for r in reversed(kept)],
            truncated=len(rows) > limit,
            totals_s={r["state"]: max(0.0, float(r["seconds"] or 0.0)) for r in totals},
        )


async def _ledger_insert(
    conn: psycopg.AsyncConnection[Any], exchange_id: int, state: str, at: datetime, event_id: str
) -> None:
    """Put the interval that ``event_id`` opened into the ledger, in time order.

    Usually it is the newest and closes the current interval. A transition recorded late (a retried
    activity, a second instance of the exchange) is slotted between its neighbours instead: the one
    before it ends where it starts, and it ends where the next one starts.
    """
    prev = await (
        await conn.execute(
            "SELECT id FROM exchange_state_intervals WHERE exchange_id = %s AND started_at <= %s"
            " ORDER BY started_at DESC, id DESC LIMIT 1",
            (exchange_id, at),
        )
    ).fetchone()
    nxt = await (
        await conn.execute(
            "SELECT started_at FROM exchange_state_intervals WHERE exchange_id = %s AND started_at > %s"
            " ORDER BY started_at, id LIMIT 1",
            (exchange_id, at),
        )
    ).fetchone()
    if prev is not None:
        await conn.execute(
            "UPDATE exchange_state_intervals SET ended_at = %s WHERE id = %s", (at, prev["id"])
        )
    await conn.execute(
        "INSERT INTO exchange_state_intervals (exchange_id, state, started_at, ended_at, event_id)"
        " VALUES (%s, %s, %s, %s, %s)",
        (exchange_id, state, at, nxt["started_at"] if nxt else None, event_id),
    )
