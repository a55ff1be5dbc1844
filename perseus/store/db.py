"""PostgreSQL access: the pool factory, schema application and the catalog queries.

The only module that imports psycopg. Queries are parameterised, never formatted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from perseus.errors import ConfigError, Server, ServiceUnavailable, UnknownAdmin, UnknownExchange
from perseus.fleet.file import Placement
from perseus.models import Admin, ApiKey, CallerKey, EventKind, Exchange, NetworkEvent, Scope

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema.sql"  # package data (a link in a checkout)
DEMO_DATA_PATH = Path(__file__).resolve().parents[1] / "demo_data.sql"

DatabaseError = psycopg.Error
T = TypeVar("T")


def conninfo_params(url: str) -> dict[str, str]:
    """The connection parameters written in ``url`` as libpq reads them (``host``, ``hostaddr``,
    ``sslmode``, ``service``…); ValueError when libpq cannot parse it. Environment defaults
    (``PGHOST``…) are not applied here: :func:`perseus.config.check_database_url` does that."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a valid PostgreSQL URL: {str(exc).strip().splitlines()[0]}") from None


#: Bounds on every PostgreSQL call: opening a connection, waiting for one from the pool, and one
#: statement (client side, so a frozen server cannot hold a request; the server also stops a
#: statement that runs longer, so a slow query does not outlive the answer that gave up on it).
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 5.0
_OPTIONS = f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}"

#: Statements given up on: their task still cancels the query and drops the connection (psycopg
#: does that, bounded by its own timeouts); kept referenced so they are not garbage collected.
_abandoned: set[asyncio.Task[Any]] = set()

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


@dataclass(frozen=True)
class FoldEntry:
    """One stream entry for the ledger fold (:mod:`perseus.readmodel.ledger_fold`): its stream position, the
    id it is kept under in the durable log, and, for a state transition, the state it entered."""

    ms: int
    seq: int
    event_id: str
    event: str
    at: datetime
    to_state: str | None
    fields: dict[str, str]


@dataclass(frozen=True)
class FoldOutcome:
    """What one fold transaction did."""

    #: The fold's mark when the transaction took the lock (entries up to it were folded before).
    was: tuple[int, int] | None
    #: The mark now.
    mark: tuple[int, int]
    #: Entries new to the durable log (the rest were there: Perseus' own, or folded before).
    copied: int
    #: State transitions added to the ledger, and how many of them were older than its newest interval.
    folded: int
    late: int


#: The channel ``fleet apply`` notifies after it changed placements; workers LISTEN on it.
FLEET_CHANNEL = "perseus_fleet"


#: How long the pool tries to reconnect before it gives up (a second try a second after the first).
RECONNECT_TRIES_S = 1.0


async def _reconnect_if_waited_for(pool: AsyncConnectionPool[Any]) -> None:
    """The pool gave up reconnecting: if a request is still waiting for a connection, start again at
    once (``check`` grows the pool), so that it is served as soon as PostgreSQL answers, not at the
    end of its own timeout. With nobody waiting, the next request starts the attempts itself."""
    if pool.get_stats().get("requests_waiting", 0):
        await pool.check()


def make_pool(url: str, *, max_size: int = 5) -> AsyncConnectionPool[Any]:
    """A pool that is not open yet: the composition root opens and closes it."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        # A connection cut while it sat idle (PostgreSQL restarted, a partition) is found out at
        # checkout and replaced, not handed to the first query after the outage — which would fail
        # and wait out its step's retry (a claim after a PostgreSQL outage, one second later).
        check=AsyncConnectionPool.check_connection,
        timeout=POOL_TIMEOUT_S,
        # The pool retries a failed connection after 1 s, then 2, 4, 8… until reconnect_timeout:
        # with 60 s, PostgreSQL back after an outage was found up to half the outage later (3.4 s
        # after 9 s away; a claim, which reads the epoch floor here, waited as long). One retry,
        # then it gives up and the next request starts again at once (_reconnect_if_waited_for).
        reconnect_timeout=RECONNECT_TRIES_S,
        reconnect_failed=_reconnect_if_waited_for,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": _OPTIONS,
        },
    )


async def open_pool(pool: AsyncConnectionPool[Any], timeout: float = 15.0) -> None:
    """Open ``pool`` and wait for its first connection; ServiceUnavailable in one line if none comes.

    One direct attempt first: a server that is down fails at once with the driver's reason, instead
    of the pool retrying quietly until ``timeout``."""
    if isinstance(pool.conninfo, str):
        probe = await connect(pool.conninfo)
        await probe.close()
    try:
        await pool.open(wait=True, timeout=timeout)
    except PoolTimeout:
        await pool.close()
        raise ServiceUnavailable(
            f"PostgreSQL unreachable: no connection within {timeout:g}s", server=Server.POSTGRESQL
        ) from None


async def open_pool_eventually(url: str) -> tuple[AsyncConnectionPool[Any], ServiceUnavailable | None]:
    """A pool for ``url``, open, and None — or, when PostgreSQL does not answer, a pool that connects
    in the background once it does, and why it is not connected yet. For a process that has other
    work while the database is down (a worker); its queries fail as ServiceUnavailable until then."""
    pool = make_pool(url)
    try:
        await open_pool(pool)
    except ServiceUnavailable as exc:
        pool = make_pool(url)  # one that timed out opening is closed for good
        await pool.open(wait=False)
        return pool, exc
    return pool, None


async def connect(url: str) -> psycopg.AsyncConnection[dict[str, Any]]:
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S, options=_OPTIONS
        )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
        ) from None


async def bounded(call: Awaitable[T], seconds: float = STATEMENT_TIMEOUT_S) -> T:
    """``call``'s result, or ServiceUnavailable once ``seconds`` have passed. The answer does not wait
    for the cancelled query to be cleaned up (that can take psycopg several seconds against a
    frozen server): the caller hears at once, the clean-up goes on in the background."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_settle)
        raise ServiceUnavailable(f"PostgreSQL did not answer within {seconds:g}s", server=Server.POSTGRESQL)
    return task.result()


def _settle(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned statement's error is not news


async def apply_sql(url: str, path: Path) -> None:
    conn = await connect(url)
    async with conn:
        await conn.execute(path.read_text())  # our own file, not user input


async def apply_schema(url: str) -> int:
    """Apply schema.sql, then hash the clear API keys an older version stored; how many were."""
    await apply_sql(url, SCHEMA_PATH)
    conn = await connect(url)
    async with conn:
        return await Catalog(OneConnection(conn)).migrate_clear_keys()


#: Hands an older database's objects (made by the superuser, before the application role existed)
#: to the application role: it must own what the schema file alters and replaces.
_ADOPT: LiteralString = """
DO $$
DECLARE item record;
BEGIN
    FOR item IN
        SELECT c.oid::regclass AS name FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relowner = 'postgres'::regrole
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          -- a sequence that belongs to a column follows its table
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {role}', item.name);
    END LOOP;
    FOR item IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = 'postgres'::regrole
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO {role}', item.name);
    END LOOP;
    FOR item IN
        SELECT t.oid::regtype AS name FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typowner = 'postgres'::regrole
          AND t.typtype IN ('e', 'd')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO {role}', item.name);
    END LOOP;
END $$;
"""


async def provision(admin_url: str, database_admin_url: str, role: str, password: str, name: str) -> None:
    """As the superuser (``admin_url``): the login ``role`` (no superuser) with ``password``, and the
    database ``name`` it owns, each made if missing; then, in that database
    (``database_admin_url``), what an older version made as the superuser handed to ``role``."""
    admin = await connect(admin_url)
    ident = sql.Identifier(role)
    async with admin:
        found = await (await admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))).fetchone()
        # The password is set every time: the file that holds it is the truth (a lost file, a new one).
        await admin.execute(
            sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.SQL("ALTER" if found else "CREATE"), ident, sql.Literal(password)
            )
        )
        found = await (
            await admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        ).fetchone()
        template = "ALTER DATABASE {} OWNER TO {}" if found else "CREATE DATABASE {} OWNER {}"
        await admin.execute(sql.SQL(template).format(sql.Identifier(name), ident))
    owner = await connect(database_admin_url)
    async with owner:
        await owner.execute(sql.SQL(_ADOPT).format(role=ident))


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
        #: The catalog version the last API-key check read (see :class:`RequestCatalog`).
        self.seen_version: int | None = None
        #: The active exchanges as of a catalog version, kept for :class:`RequestCatalog` views.
        self.active_cache: tuple[int, list[Exchange]] | None = None
        #: The keyed hash's secret once read; views keep it on the shared catalog (``_root``).
        self.key_secret: bytes | None = None
        self._root: Catalog = self

    async def _fetch(
        self, query: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> list[dict[str, Any]]:
        return await bounded(self._fetch_unbounded(query, params))

    async def _fetch_unbounded(
        self, query: str, params: tuple[object, ...] | dict[str, object]
    ) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, params)  # literal queries only
                return await cur.fetchall() if cur.description else []
        except PoolTimeout:
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: no free connection within {POOL_TIMEOUT_S:g}s",
                server=Server.POSTGRESQL,
            ) from None
        except psycopg.errors.QueryCanceled:
            raise ServiceUnavailable(
                f"PostgreSQL: statement took longer than {STATEMENT_TIMEOUT_S:g}s", server=Server.POSTGRESQL
            ) from None
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
            ) from None

    async def ping(self) -> None:
        """One round trip (readiness): ServiceUnavailable when the server does not answer in time."""
        await self._fetch("SELECT 1")

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

    async def _key_secret(self) -> bytes:
        """The server secret of the keyed hash (made by schema.sql, never changes): read once per
        process (a :class:`RequestCatalog` asks the shared catalog)."""
        root = self._root
        if root.key_secret is None:
            rows = await self._fetch("SELECT secret FROM api_key_secret")
            if not rows:
                raise ConfigError("api_key_secret is empty: run perseus db init")
            root.key_secret = rows[0]["secret"].encode()
        return root.key_secret

    async def key_hash(self, key: str) -> str:
        """HMAC-SHA-256 of ``key`` under the server secret, hex: what ``api_keys.key_hash`` holds."""
        return hmac.new(await self._key_secret(), key.encode(), hashlib.sha256).hexdigest()

    async def create_api_key(
        self,
        name: str,
        *,
        scope: Scope = Scope.READ,
        exchanges: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> str:
        """A new key (a random UUID: 122 bits) stored only as its keyed hash; returned once."""
        key = str(uuid.uuid4())
        await self._fetch(
            "INSERT INTO api_keys (name, key_hash, scope, exchanges, expires_at) VALUES (%s, %s, %s, %s, %s)",
            (name, await self.key_hash(key), scope.value, list(exchanges), expires_at),
        )
        return key

    async def api_key_exists(self, name: str) -> bool:
        rows = await self._fetch("SELECT 1 FROM api_keys WHERE name = %s AND is_active", (name,))
        return bool(rows)

    async def api_keys(self) -> list[ApiKey]:
        """Every key, newest first, without the key itself."""
        rows = await self._fetch(
            "SELECT name, scope, exchanges, created_at, expires_at, last_used_at, NOT is_active AS revoked"
            " FROM api_keys ORDER BY created_at DESC, id DESC"
        )
        return [ApiKey.model_validate(r) for r in rows]

    async def migrate_clear_keys(self) -> int:
        """Replace every clear ``key`` (written before keys were hashed) by its keyed hash; how many.
        The same key still works: only its stored form changes."""
        rows = await self._fetch("SELECT id, key::text AS key FROM api_keys WHERE key IS NOT NULL")
        for row in rows:
            await self._fetch(
                "UPDATE api_keys SET key_hash = %s, key = NULL, updated_at = now() WHERE id = %s",
                (await self.key_hash(row["key"]), row["id"]),
            )
        return len(rows)

    async def check_api_key(self, key: str) -> CallerKey | None:
        """The active, unexpired key ``key`` (a canonical UUID string), or None; marks it used.

        Looked up by its keyed hash, then the stored hash is compared in constant time. One round
        trip: the lookup and the ``last_used_at`` touch share a statement. The touch is skipped
        when the key was used within the last minute, so a busy client does not turn every read
        into a row write while ``last_used_at`` stays accurate to a minute. Nothing is cached: a
        revoke or an expiry holds from the next request on.
        """
        digest = await self.key_hash(key)
        rows = await self._fetch(
            "WITH hit AS (SELECT id, name, key_hash, scope, exchanges, last_used_at FROM api_keys"
            " WHERE key_hash = %s AND is_active AND (expires_at IS NULL OR expires_at > now())),"
            " touched AS (UPDATE api_keys a SET last_used_at = now() FROM hit WHERE a.id = hit.id"
            " AND (hit.last_used_at IS NULL OR hit.last_used_at < now() - interval '60 seconds')"
            " RETURNING a.id)"
            " SELECT hit.name, hit.key_hash, hit.scope, hit.exchanges,"
            " (SELECT version FROM catalog_version) AS catalog_version FROM hit",
            (digest,),
        )
        if not rows or not hmac.compare_digest(rows[0]["key_hash"].encode(), digest.encode()):
            return None
        self.seen_version = rows[0]["catalog_version"]
        return CallerKey(name=rows[0]["name"], scope=Scope(rows[0]["scope"]), exchanges=rows[0]["exchanges"])

    async def revoke_api_keys(self, name_or_key: str) -> int:
        """Deactivate the active key with that value, or every active key with that name; how many."""
        digest = await self.key_hash(name_or_key.strip().lower())
        rows = await self._fetch(
            "UPDATE api_keys SET is_active = false, updated_at = now()"
            " WHERE is_active AND (name = %s OR key_hash = %s) RETURNING id",
            (name_or_key, digest),
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
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
            ) from None
        except psycopg.Error as exc:
            # E.g. a database whose schema predates the log (`perseus db init` adds the tables):
            # retryable like an outage, so record_event's last attempts still let the event through.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(
                f"PostgreSQL refused the network log write: {first}", server=Server.POSTGRESQL
            ) from None

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

    async def _running_sums(
        self, exchange_id: int, instants: Sequence[datetime]
    ) -> tuple[datetime | None, list[tuple[str | None, datetime | None, dict[str, float]]]]:
        """The ledger's first instant, and per instant the interval in force then (its state and
        start) and the seconds per state from the ledger's start up to the instant: one statement,
        one index lookup per instant."""
        rows = await self._fetch(
            "SELECT t.n, i.state, i.started_at, i.before_s,"
            " (SELECT started_at FROM exchange_state_intervals WHERE exchange_id = %(ex)s"
            "   ORDER BY started_at, id LIMIT 1) AS first"
            " FROM unnest(%(at)s::timestamptz[]) WITH ORDINALITY AS t(at, n)"
            " LEFT JOIN LATERAL (SELECT state, started_at, before_s FROM exchange_state_intervals"
            "   WHERE exchange_id = %(ex)s AND started_at <= t.at"
            "   ORDER BY started_at DESC, id DESC LIMIT 1) i ON true"
            " ORDER BY t.n",
            {"ex": exchange_id, "at": list(instants)},
        )
        out: list[tuple[str | None, datetime | None, dict[str, float]]] = []
        for at, row in zip(instants, rows, strict=True):
            if row["state"] is None:  # before the ledger's first interval
                out.append((None, None, {}))
            else:
                spent = (at - row["started_at"]).total_seconds()
                out.append((row["state"], row["started_at"], _plus(row["before_s"], row["state"], spent)))
        return (rows[0]["first"] if rows else None), out

    async def ledger_windows(
        self, exchange_id: int, end: datetime, starts: Sequence[datetime]
    ) -> tuple[datetime | None, str | None, list[dict[str, float]]]:
        """``(first instant, state at end, seconds per state in [start, end] for each start)``.

        A difference of running sums: the cost does not depend on how many intervals lie inside.
        """
        first, sums = await self._running_sums(exchange_id, [end, *starts])
        state, _, at_end = sums[0]
        return first, state, [_minus(at_end, at_start) for _, _, at_start in sums[1:]]

    async def ledger(self, exchange_id: int, start: datetime, end: datetime, limit: int) -> LedgerView:
        """The state ledger over ``[start, end]``: the totals from two running sums, and at most
        ``limit`` intervals read backwards from ``end`` through the index."""
        first, sums = await self._running_sums(exchange_id, [start, end])
        if first is None:
            return LedgerView(observed_since=None, intervals=[], truncated=False, totals_s={})
        rows = await self._fetch(
            "SELECT state, started_at, ended_at FROM exchange_state_intervals"
            " WHERE exchange_id = %(ex)s AND started_at >= %(lo)s AND started_at < %(end)s"
            " AND (ended_at IS NULL OR ended_at > %(start)s)"
            " ORDER BY started_at DESC, id DESC LIMIT %(limit)s",
            # From the interval in force at `start` (or the first one): never older rows.
            {"ex": exchange_id, "start": start, "end": end, "lo": sums[0][1] or first, "limit": limit + 1},
        )
        kept = rows[:limit]
        return LedgerView(
            observed_since=first,
            intervals=[LedgerInterval(r["state"], r["started_at"], r["ended_at"]) for r in reversed(kept)],
            truncated=len(rows) > limit,
            totals_s=_minus(sums[1][2], sums[0][2]),
        )

    # --- the ledger fold: entries other writers put in the streams --------------------------------------

    async def fold_mark(self, exchange_id: int) -> tuple[int, int] | None:
        """Where the fold of the exchange's stream stands (None: it never ran)."""
        rows = await self._fold_call(
            self._fetch(
                "SELECT stream_ms, stream_seq FROM ledger_folds WHERE exchange_id = %s", (exchange_id,)
            )
        )
        return (int(rows[0]["stream_ms"]), int(rows[0]["stream_seq"])) if rows else None

    async def fold_entries(
        self, exchange_id: int, exchange_name: str, entries: Sequence[FoldEntry], through: tuple[int, int]
    ) -> FoldOutcome:
        """Fold stream entries up to ``through`` (oldest first) into the durable log and the ledger.

        One transaction under the ledger's per-exchange lock (the one ``record_event`` takes): the
        entries past the fold's mark are copied to ``network_events`` by event id — an entry already
        there (Perseus' own, written by ``record_event``) is left alone — the transitions copied now
        enter the ledger, and the mark moves to ``through``. A second folder that read the same
        entries waits for the lock, then finds the mark past them and does nothing.
        """

        async def fold() -> FoldOutcome:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LEDGER_LOCK, exchange_id))
                row = await (
                    await conn.execute(
                        "SELECT stream_ms, stream_seq FROM ledger_folds WHERE exchange_id = %s",
                        (exchange_id,),
                    )
                ).fetchone()
                was = (int(row["stream_ms"]), int(row["stream_seq"])) if row else None
                if was is not None and through <= was:
                    return FoldOutcome(was, was, 0, 0, 0)
                fresh: dict[str, FoldEntry] = {}
                for e in entries:  # an event id twice (a retried write XADDed again): the first counts
                    if (was is None or (e.ms, e.seq) > was) and (e.ms, e.seq) <= through:
                        fresh.setdefault(e.event_id, e)
                copied: set[str] = set()
                if fresh:
                    rows = list(fresh.values())
                    cur = await conn.execute(
                        "INSERT INTO network_events (event_id, exchange_id, exchange_name, event,"
                        " occurred_at, stream_ms, stream_seq, fields)"
                        " SELECT u.event_id, %s, %s, u.event, u.at, u.ms, u.seq, u.fields"
                        " FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::bigint[],"
                        "   %s::bigint[], %s::jsonb[]) AS u(event_id, event, at, ms, seq, fields)"
                        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                        (
                            exchange_id,
                            exchange_name.lower(),
                            [e.event_id for e in rows],
                            [e.event for e in rows],
                            [e.at for e in rows],
                            [e.ms for e in rows],
                            [e.seq for e in rows],
                            [Jsonb(e.fields) for e in rows],
                        ),
                    )
                    copied = {str(r["event_id"]) for r in await cur.fetchall()}
                moves = [
                    (e.to_state, e.at, e.event_id)
                    for e in fresh.values()
                    if e.to_state and e.event_id in copied
                ]
                late = await _ledger_insert_many(conn, exchange_id, moves) if moves else 0
                await conn.execute(
                    "INSERT INTO ledger_folds (exchange_id, stream_ms, stream_seq) VALUES (%s, %s, %s)"
                    " ON CONFLICT (exchange_id) DO UPDATE"
                    " SET stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq,"
                    " folded_at = now()",
                    (exchange_id, *through),
                )
                return FoldOutcome(was, through, len(copied), len(moves), late)

        return await self._fold_call(fold())

    async def _fold_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except psycopg.errors.UndefinedTable:
            raise ConfigError("the database has no ledger_folds table: run `perseus db init`") from None
        except PoolTimeout:
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: no free connection within {POOL_TIMEOUT_S:g}s",
                server=Server.POSTGRESQL,
            ) from None
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
            ) from None
        except psycopg.Error as exc:
            # Anything else PostgreSQL refused: the fold is retried later and reads answer from the
            # stream meanwhile (never a failed request).
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(
                f"PostgreSQL refused the ledger fold: {first}", server=Server.POSTGRESQL
            ) from None

    async def placements(self, host: str | None = None) -> list[Placement]:
        """Stored placements by exchange name; with ``host``, only those that name it."""
        try:
            rows = await self._fetch(
                "SELECT placement FROM fleet_placements"
                " WHERE %s::text IS NULL OR placement->'hosts' ? %s::text ORDER BY exchange",
                (host, host),
            )
        except psycopg.errors.UndefinedTable:
            raise ConfigError("the database has no fleet_placements table: run `perseus db init`") from None
        return [Placement.model_validate(r["placement"]) for r in rows]

    async def store_placements(self, placements: list[Placement], *, forget: Sequence[str] = ()) -> None:
        """Write ``placements`` (insert or replace per exchange) and delete ``forget``, in one
        transaction: a failed apply leaves the stored fleet as it was."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for p in placements:
                    await conn.execute(
                        "INSERT INTO fleet_placements (exchange, placement) VALUES (%s, %s)"
                        " ON CONFLICT (exchange) DO UPDATE"
                        " SET placement = EXCLUDED.placement, updated_at = now()",
                        (p.exchange, Jsonb(p.model_dump(mode="json"))),
                    )
                for exchange in forget:
                    await conn.execute("DELETE FROM fleet_placements WHERE exchange = %s", (exchange,))
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
            ) from None

    async def notify_fleet(self, payload: str) -> None:
        """Tell every listening worker that placements changed (NOTIFY; delivered on commit)."""
        await self._fetch("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))

    async def seed_placements(self, placements: list[Placement]) -> list[str]:
        """Store each placement whose exchange has none yet (the operator's own edits win); the
        exchanges seeded."""
        seeded: list[str] = []
        for p in placements:
            rows = await self._fetch(
                "INSERT INTO fleet_placements (exchange, placement) VALUES (%s, %s)"
                " ON CONFLICT (exchange) DO NOTHING RETURNING exchange",
                (p.exchange, Jsonb(p.model_dump(mode="json"))),
            )
            seeded.extend(r["exchange"] for r in rows)
        return seeded


def _minus(later: dict[str, float], earlier: dict[str, float]) -> dict[str, float]:
    """Seconds per state between two running sums (states with no time left out)."""
    out = {}
    for state, seconds in later.items():
        spent = seconds - earlier.get(state, 0.0)
        if spent > 1e-6:
            out[state] = spent
    return out


def _plus(totals: dict[str, Any], state: str, seconds: float) -> dict[str, float]:
    out = {k: float(v) for k, v in totals.items()}
    out[state] = out.get(state, 0.0) + seconds
    return out


@dataclass
class _Slot:
    """An interval in the ledger's order while a batch is merged in: an existing row (``id`` set) or
    a new one."""

    state: str
    at: datetime
    id: int | None = None
    event_id: str = ""
    ended: datetime | None = None
    before: dict[str, float] = field(default_factory=dict)


async def _ledger_insert_many(
    conn: psycopg.AsyncConnection[Any], exchange_id: int, moves: Sequence[tuple[str, datetime, str]]
) -> int:
    """Put the intervals ``moves`` opened (``(state, at, event id)``) into the ledger, in time order;
    returns how many were older than the ledger's newest interval.

    :func:`_ledger_insert` for a batch, at the cost of the batch plus the intervals after its oldest
    move: usually there are none (the batch is newer than everything), so a long history folds in
    batches of inserts rather than one read-modify-write per entry. A batch that reaches back
    (another writer's clock, entries folded late) is merged with the rows after it and their running
    sums are recomputed from the row before it, once per batch instead of once per entry.
    """
    ordered = sorted(moves, key=lambda m: m[1])  # stable: same-instant moves keep stream order
    lo = ordered[0][1]
    anchor = await (
        await conn.execute(
            "SELECT id, state, started_at, ended_at, before_s FROM exchange_state_intervals"
            " WHERE exchange_id = %s AND started_at <= %s ORDER BY started_at DESC, id DESC LIMIT 1",
            (exchange_id, lo),
        )
    ).fetchone()
    tail = await (
        await conn.execute(
            "SELECT id, state, started_at, ended_at, before_s FROM exchange_state_intervals"
            " WHERE exchange_id = %s AND started_at > %s ORDER BY started_at, id",
            (exchange_id, lo),
        )
    ).fetchall()
    old = [
        _Slot(r["state"], r["started_at"], r["id"], "", r["ended_at"], _floats(r["before_s"])) for r in tail
    ]
    new = [_Slot(state, at, None, event_id) for state, at, event_id in ordered]
    # Existing rows first among equal instants: new rows get larger ids, and the ledger orders
    # intervals by (started_at, id).
    merged = list(heapq.merge(old, new, key=lambda s: (s.at, s.id is None)))
    newest_old = max((n for n, s in enumerate(merged) if s.id is not None), default=-1)
    late = sum(1 for s in merged[: max(newest_old, 0)] if s.id is None)
    changed: list[_Slot] = []
    prev: _Slot | None = None
    before: dict[str, float] = {}
    if anchor is not None:
        before = _floats(anchor["before_s"])
        prev = _Slot(anchor["state"], anchor["started_at"], anchor["id"], "", anchor["ended_at"], before)
        if prev.ended != merged[0].at:
            prev.ended = merged[0].at
            changed.append(prev)
    for n, slot in enumerate(merged):
        if prev is not None:
            before = _plus(before, prev.state, (slot.at - prev.at).total_seconds())
        ended = merged[n + 1].at if n + 1 < len(merged) else None
        if slot.id is None:
            slot.ended, slot.before = ended, before
        elif slot.ended != ended or not _same(slot.before, before):
            slot.ended, slot.before = ended, before
            changed.append(slot)
        prev = slot
    fresh = [s for s in merged if s.id is None]
    await conn.execute(
        "INSERT INTO exchange_state_intervals (exchange_id, state, started_at, ended_at, event_id, before_s)"
        " SELECT %s, u.state, u.at, u.ended, u.event_id, u.before"
        " FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::jsonb[])"
        "   WITH ORDINALITY AS u(state, at, ended, event_id, before, n)"
        " ORDER BY u.n",
        (
            exchange_id,
            [s.state for s in fresh],
            [s.at for s in fresh],
            [s.ended for s in fresh],
            [s.event_id for s in fresh],
            [Jsonb(s.before) for s in fresh],
        ),
    )
    if changed:
        await conn.execute(
            "UPDATE exchange_state_intervals i SET ended_at = u.ended, before_s = u.before"
            " FROM unnest(%s::bigint[], %s::timestamptz[], %s::jsonb[]) AS u(id, ended, before)"
            " WHERE i.id = u.id",
            ([s.id for s in changed], [s.ended for s in changed], [Jsonb(s.before) for s in changed]),
        )
    return late


def _floats(totals: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in totals.items()}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Two running sums equal up to float noise (recomputing one must not rewrite every row)."""
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-6 for k in a.keys() | b.keys())


async def _ledger_insert(
    conn: psycopg.AsyncConnection[Any], exchange_id: int, state: str, at: datetime, event_id: str
) -> None:
    """Put the interval that ``event_id`` opened into the ledger, in time order.

    Each interval carries ``before_s``: seconds per state from the ledger's start to its own start
    (a running sum), so the time per state between any two instants is a difference of two rows.
    Usually the new interval is the newest: it closes the current one and adds that one's time to
    the sum. A transition recorded late (a retried activity, a second instance of the exchange) is
    slotted between its neighbours instead, and the sums of the intervals after it are shifted.
    """
    prev = await (
        await conn.execute(
            "SELECT id, state, started_at, before_s FROM exchange_state_intervals"
            " WHERE exchange_id = %s AND started_at <= %s ORDER BY started_at DESC, id DESC LIMIT 1",
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
    before: dict[str, float] = {}
    if prev is not None:
        before = _plus(prev["before_s"], prev["state"], (at - prev["started_at"]).total_seconds())
        await conn.execute(
            "UPDATE exchange_state_intervals SET ended_at = %s WHERE id = %s", (at, prev["id"])
        )
    await conn.execute(
        "INSERT INTO exchange_state_intervals (exchange_id, state, started_at, ended_at, event_id, before_s)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (exchange_id, state, at, nxt["started_at"] if nxt else None, event_id, Jsonb(before)),
    )
    if nxt is None:
        return
    # [at, next start) used to count as the previous state (or as nothing, before the first
    # interval); it now counts as `state`. Every later running sum moves by that much.
    moved = (nxt["started_at"] - at).total_seconds()
    old_state = prev["state"] if prev is not None else None
    if old_state == state or moved <= 0:
        return
    shift: dict[str, float] = {state: moved}
    if old_state is not None:
        shift[old_state] = -moved
    await conn.execute(
        "UPDATE exchange_state_intervals i SET before_s = ("
        "   SELECT jsonb_object_agg(k, coalesce((i.before_s ->> k)::float8, 0)"
        "     + coalesce((%s::jsonb ->> k)::float8, 0))"
        "   FROM (SELECT jsonb_object_keys(i.before_s || %s::jsonb) AS k) keys)"
        " WHERE exchange_id = %s AND started_at >= %s",
        (Jsonb(shift), Jsonb(shift), exchange_id, nxt["started_at"]),
    )
    # --- the declared fleet ----------------------------------------------------------------------


class RequestCatalog(Catalog):
    """One API request's catalog, sharing the process' pool and its cache of active exchanges.

    Its API-key check also reads the catalog's version (bumped by a trigger in the transaction of
    every change to ``exchanges``), so the active exchanges come from memory while that version
    stands and from PostgreSQL once it moved: never older than what the request's own key check
    saw, and one query fewer per request.
    """

    def __init__(self, shared: Catalog) -> None:
        super().__init__(shared._pool)
        self._shared = shared
        self._root = shared

    async def exchanges(self, *, active_only: bool = False) -> list[Exchange]:
        version = self.seen_version
        if not active_only or version is None:
            return await super().exchanges(active_only=active_only)
        cached = self._shared.active_cache
        if cached is not None and cached[0] == version:
            return list(cached[1])
        # A change committed after the key check may already be in this list: it is then newer
        # than its label, and the next request with the newer version reads again.
        fresh = await super().exchanges(active_only=True)
        self._shared.active_cache = (version, fresh)
        return list(fresh)


class FleetListener:
    """A dedicated connection that LISTENs for fleet changes: how a running worker learns of an
    apply without polling. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    async def open(self) -> None:
        self._conn = await connect(self._url)
        await self._conn.execute(f"LISTEN {FLEET_CHANNEL}")  # a constant identifier, not input

    async def changed(self) -> str:
        """Wait for the next notification; its payload."""
        assert self._conn is not None, "open() first"
        notifies = self._conn.notifies(stop_after=1)
        try:
            async for note in notifies:
                return note.payload
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"PostgreSQL: {str(exc).strip().splitlines()[0]}", server=Server.POSTGRESQL
            ) from None
        finally:
            await notifies.aclose()
        raise ServiceUnavailable("PostgreSQL closed the fleet notification channel", server=Server.POSTGRESQL)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
