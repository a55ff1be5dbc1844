"""schema.sql, the seeded catalog and `perseus exchanges`/`db init` against a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from perseus.errors import UnknownAdmin, UnknownExchange
from perseus.store import db
from tests.conftest import Servers, perseus

pytestmark = pytest.mark.integration

SEEDED = ["coinbase", "binance", "binance_us", "kraken", "kucoin", "mexc"]


async def counts(url: str) -> dict[str, int]:
    """What schema.sql and the demo data own (other tests add their own exchanges and keys)."""
    conn = await db.connect(url)
    queries = {
        "exchanges": "SELECT count(*) AS n FROM exchanges WHERE name = ANY(%s)",
        "symbols": "SELECT count(*) AS n FROM exchange_symbols s JOIN exchanges e ON e.id = s.exchange_id "
        "WHERE e.name = ANY(%s)",
        "admin": "SELECT count(*) AS n FROM users "
        "WHERE email = 'admin@perseus.local' AND %s::text[] IS NOT NULL",
    }
    async with conn:
        out = {}
        for name, query in queries.items():
            row = await (await conn.execute(query, (SEEDED,))).fetchone()
            assert row is not None
            out[name] = row["n"]
        return out


async def test_schema_applied_twice_changes_nothing(servers: Servers) -> None:
    before = await counts(servers.database_url)
    assert before == {"exchanges": 6, "symbols": 30, "admin": 1}
    await db.apply_schema(servers.database_url)
    await db.apply_schema(servers.database_url)
    await db.apply_sql(servers.database_url, db.DEMO_DATA_PATH)
    assert await counts(servers.database_url) == before


async def test_seeded_catalog(catalog: db.Catalog) -> None:
    names = [e.name for e in await catalog.exchanges()]
    assert names[:6] == SEEDED
    kraken = await catalog.exchange("KRAKEN")
    assert (kraken.name, kraken.display_name) == ("kraken", "Kraken")
    assert (await catalog.exchange(str(kraken.id))).name == "kraken"


async def test_unknown_exchange_lists_known_ones(catalog: db.Catalog) -> None:
    with pytest.raises(UnknownExchange) as info:
        await catalog.exchange("bitfinex")
    assert "unknown exchange 'bitfinex'; known exchanges: coinbase, binance, binance_us, kraken" in str(
        info.value
    )


async def test_inactive_exchange_is_unknown(servers: Servers, catalog: db.Catalog, exchange: str) -> None:
    conn = await db.connect(servers.database_url)
    async with conn:
        await conn.execute("UPDATE exchanges SET is_active = false WHERE name = %s", (exchange,))
    with pytest.raises(UnknownExchange):
        await catalog.exchange(exchange)


async def test_admin_lookup(catalog: db.Catalog) -> None:
    admin = await catalog.admin("ADMIN@perseus.local")
    assert admin.display_name == "Perseus Admin"
    with pytest.raises(UnknownAdmin, match="nobody@x"):
        await catalog.admin("nobody@x")


def test_cli_exchanges_json(servers: Servers) -> None:
    result = perseus(servers, "exchanges", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows][:6] == SEEDED
    assert {"id", "name", "displayName", "isActive"} <= set(rows[0])
    assert rows[0]["isActive"] is True


def test_cli_db_init_is_idempotent(servers: Servers) -> None:
    for _ in range(2):
        result = perseus(servers, "db", "init")
        assert result.returncode == 0, result.stderr
        assert "schema applied" in result.stderr


def test_cli_database_down_is_one_line(servers: Servers) -> None:
    result = perseus(servers, "exchanges", PERSEUS_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    assert result.returncode == 3  # a server unreachable
    assert result.stderr.count("\n") == 1 and "PostgreSQL unreachable" in result.stderr


def test_cli_remote_database_without_tls_is_refused(servers: Servers) -> None:
    result = perseus(servers, "exchanges", PERSEUS_DATABASE_URL="postgresql://u@db.example.com/x")
    assert result.returncode == 2  # settings must change
    assert "add sslmode=verify-full" in result.stderr and result.stderr.count("\n") == 1
