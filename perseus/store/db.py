"""PostgreSQL access: the pool factory, schema application and the catalog queries.

The only module that imports psycopg. Queries are parameterised, never formatted.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from perseus.errors import ServiceUnavailable, UnknownAdmin, UnknownExchange
from perseus.models import Admin, Exchange

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema.sql"  # package data (a link in a checkout)
DEMO_DATA_PATH = Path(__file__).resolve().parents[1] / "demo_data.sql"

DatabaseError = psycopg.Error


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

    async def _fetch(self, query: str, params: tuple[object, ...] = ()) -> list[dict[str, Any]]:
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
