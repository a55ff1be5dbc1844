"""Read API latency: ``.venv/bin/python -m bench.read_api [--requests N] [--no-write]``.

Starts its own Redis-compatible server and PostgreSQL on free ports (like the test harness), seeds
100 active exchanges (80 online with status records, 20 offline; every stream holds 200 entries),
serves the API from a separate process (uvicorn, as ``perseus api`` does, without access logs) and
measures sequential request latency over one keep-alive connection:

* ``GET /api/network/instances`` (100 exchanges; the 20 offline ones also get last-known info),
* ``GET /api/network/activity?count=50`` for one exchange and for all 100 merged,
* ``GET /api/network/exchanges/{id}/status``.

Same-run baselines measure what the routes cannot avoid, from this process: the raw pipelined
GET+PTTL for 100 keys, one ``XREVRANGE COUNT 51``, Livermore's global read (``XREVRANGE COUNT 50``
on every stream, then a sort), and the API-key lookup. The figures go to the "Read API" section of
``docs/benchmarks.md`` (replaced on each run; other sections are left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from perseus.config import load_settings
from perseus.devstack import services
from perseus.keys import iso, status_key, stream_key
from perseus.readmodel.log import merge_page, store_fetch
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Read API"
EXCHANGES = 100
OFFLINE = 20
ENTRIES = 200


def serve(port: int, fold: bool = True) -> None:
    """The server side (a child process): the API on ``port``, settings from the environment.
    ``fold=False``: without the ledger fold (bench.ledger's "before")."""
    from perseus.api.server import build_server

    asyncio.run(build_server(load_settings(), port, fold=fold).serve())


async def seed(database_url: str, store: RedisStore) -> tuple[list[tuple[int, str]], str]:
    conn = await db.connect(database_url)
    async with conn:
        # Exactly EXCHANGES active rows: the seeded catalog steps aside for the benchmark's own.
        await conn.execute("UPDATE exchanges SET is_active = false")
        rows: list[tuple[int, str]] = []
        for n in range(EXCHANGES):
            row = await (
                await conn.execute(
                    "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id",
                    (f"bench_{n:03d}", f"Bench {n:03d}"),
                )
            ).fetchone()
            assert row is not None
            rows.append((int(row["id"]), f"bench_{n:03d}"))
        key = await db.Catalog(db.OneConnection(conn)).create_api_key("bench")
    now = datetime.now(UTC)
    async with store.client.pipeline(transaction=False) as pipe:
        for n, (ex_id, name) in enumerate(rows):
            if n >= OFFLINE:
                pipe.set(status_key(ex_id), _record(ex_id, name, now), px=600_000)
            base = int((now - timedelta(hours=12)).timestamp() * 1000)
            for i in range(ENTRIES):
                fields = {
                    "event": "state_transition",
                    "timestamp": iso(now),
                    "fromState": "idle",
                    "toState": "starting",
                    "exchangeId": str(ex_id),
                    "exchangeName": name,
                    "hostname": f"node-{n % 7}",
                    "ip": "192.0.2.10",
                    "adminEmail": "admin@perseus.local",
                    "instanceId": str(uuid.uuid4()),
                    "epoch": "1",
                    "eventId": str(uuid.uuid4()),
                }
                # Interleaved milliseconds with repeats, so the merge meets same-ms runs across streams.
                pipe.xadd(stream_key(name), fields, id=f"{base + i * 37 + n % 5}-{n}")  # type: ignore[arg-type]
        await pipe.execute()
    return rows, key


def _record(ex_id: int, name: str, now: datetime) -> str:
    import json

    return json.dumps(
        {
            "exchangeId": ex_id,
            "exchangeName": name,
            "hostname": "node-a",
            "ipAddress": "192.0.2.10",
            "countryCode": "US",
            "adminEmail": "admin@perseus.local",
            "adminDisplayName": "Perseus Admin",
            "connectionState": "active",
            "symbolCount": 250,
            "connectedAt": iso(now - timedelta(hours=4)),
            "lastHeartbeat": iso(now),
            "lastStateChange": iso(now - timedelta(hours=4)),
            "registeredAt": iso(now - timedelta(hours=5)),
            "lastError": None,
            "lastErrorAt": None,
            "instanceId": str(uuid.uuid4()),
            "epoch": 3,
            "workflowId": f"instance-{name}-node-a",
            "heartbeatIntervalMs": 15000,
            "ttlMs": 45000,
        }
    )


async def timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 30) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[Any]]], n: int, warmup: int = 30
) -> dict[str, list[float]]:
    """``n`` timed rounds of one call each, after ``warmup`` untimed rounds: milliseconds per call."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + n):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            await fn()
            if round_ >= warmup:
                out[name].append((time.perf_counter() - t0) * 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
        "mean": statistics.fmean(ordered),
    }


async def run(requests: int, write: bool, section: str) -> str:
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="perseus-bench-read-"))
    children: list[services.Service] = []
    api: subprocess.Popen[bytes] | None = None
    try:
        api_port = services.free_port()
        children.append(await services.start_redis(base / "redis", None))
        children.append(await services.start_postgres(base / "postgres", None, scratch=True))
        redis_port = children[0].port
        database_url = await services.ensure_database(children[1], "perseus_bench")
        await db.apply_schema(database_url)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis = make_client(redis_url)
        store = RedisStore(redis)
        rows, key = await seed(database_url, store)

        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSEUS_")}
        env.update(PERSEUS_REDIS_URL=redis_url, PERSEUS_DATABASE_URL=database_url, PERSEUS_DATA_DIR=str(base))
        api = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, "-m", "bench.read_api", "--serve", str(api_port)], cwd=ROOT, env=env
        )
        await services.wait_tcp(api_port, "the API", api, timeout=30)

        results: dict[str, dict[str, float]] = {}
        one_id, one_name = rows[-1]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key}"}
        ) as http:

            def get(path: str, **params: Any) -> Callable[[], Awaitable[Any]]:
                async def call() -> None:
                    reply = await http.get(path, params=params)
                    assert reply.status_code == 200, reply.text

                return call

            first = await http.get("/api/network/instances")
            assert first.status_code == 200, first.text
            body = first.json()
            assert len(body["instances"]) == EXCHANGES
            assert sum(1 for v in body["instances"] if not v["online"] and v["lastKnown"]) == OFFLINE
            page = (await http.get("/api/network/activity", params={"count": 50})).json()
            assert len(page["entries"]) == 50 and page["nextCursor"]

            ids = [i for i, _ in rows]
            names = [n for _, n in rows]
            pool = db.make_pool(database_url)
            await pool.open(wait=True)
            catalog = db.Catalog(pool)
            # Round-robin, one call of each row per round: a burst of other work on the shared
            # machine then lands on every row alike, so each stays comparable with its baselines.
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "API GET /instances (100 exchanges, 20 offline)": get("/api/network/instances"),
                "API GET /activity?exchange=X&count=50": get(
                    "/api/network/activity", exchange=one_name, count=50
                ),
                "API GET /activity?count=50 (100 streams merged)": get("/api/network/activity", count=50),
                "API GET /exchanges/{id}/status": get(f"/api/network/exchanges/{one_id}/status"),
                "API GET /healthz (no auth, no I/O: HTTP floor)": get("/healthz"),
                "baseline: Redis pipeline GET+PTTL x100": lambda: store.raw_statuses(ids),
                "baseline: Redis XREVRANGE COUNT 51 (one stream)": lambda: store.events_many(
                    [(one_name, "+", 51)]
                ),
                "in-process: merge_page count=50 over 100 streams": lambda: merge_page(
                    store_fetch(store), names, count=50
                ),
                "baseline: API-key lookup (PostgreSQL)": lambda: catalog.check_api_key(key),
            }
            for name, samples in (await interleaved(calls, requests)).items():
                results[name] = summary(samples)

        async def livermore_global() -> None:
            streams = await store.events_many([(n, "+", 50) for n in names])
            flat = [e for s in streams for e in s]
            flat.sort(key=lambda e: e[0], reverse=True)  # Livermore's string order, for the cost only

        # Slow (5,000 entries a call): fewer samples keep the run short; p99 is then a rough figure.
        results["baseline: Livermore-style global read (100 x COUNT 50 + sort)"] = summary(
            await timed(livermore_global, max(20, requests // 10), warmup=3)
        )
        await pool.close()
        await redis.aclose()
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        for child in reversed(children):
            child.stop()

    report = render(section, results, requests, (load_before, os.getloadavg()[0]))
    if write:
        write_section(section, report)
    return report


def _parser() -> str:
    import importlib.util

    return "hiredis" if importlib.util.find_spec("hiredis") else "redis-py's pure-Python parser"


def render(
    section: str, results: dict[str, dict[str, float]], requests: int, load: tuple[float, float]
) -> str:
    lines = [
        section,
        "",
        f"`.venv/bin/python -m bench.read_api` — {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.machine()}; {requests} sequential requests per row "
        "after 30 warm-up rounds, the rows taken in turn (round-robin), one keep-alive connection; "
        "the API runs in its own process "
        "(uvicorn, one worker, no access log). 100 active exchanges (80 online, 20 offline), "
        f"{ENTRIES} entries per stream. RESP parser: {_parser()}. Load average (1 min) "
        f"{load[0]:.1f} before, {load[1]:.1f} after: other work shared the machine, so read the figures "
        "as relative to the same-run baselines rather than as absolutes.",
        "",
        "| what | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in results.items():
        lines.append(f"| {name} | {s['p50']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |")
    lines += [
        "",
        "Reading it: every API row pays the HTTP floor (`/healthz`) plus one PostgreSQL round trip for "
        "the key (which also reads the catalog's version: the list of active exchanges comes from memory "
        "while it stands), then its own reads. `/instances` reads all status keys and standby indexes "
        "in one round trip, and the offline exchanges' newest entries with the standbys' records in a "
        "second one; on a single server each batch is one script. The merged activity page reads a "
        "few small batches per stream instead of Livermore's 50 entries from every stream, orders "
        "stream IDs numerically and picks each next entry from a heap of stream heads. With redis-py's "
        "own parser most Redis-side time is RESP parsing in Python (about 0.1 ms per stream entry); "
        "`hiredis` (a dependency) does it in C.",
        "",
    ]
    return "\n".join(lines)


def write_section(title: str, section: str) -> None:
    """Replace (or append) this benchmark's section; other sections stay as they are."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find(title + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    DOC.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave docs/benchmarks.md.")
    parser.add_argument("--section", default=SECTION, help="Heading of the section to write.")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-fold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, fold=not args.no_fold)
        return
    print(asyncio.run(run(args.requests, not args.no_write, args.section)))


if __name__ == "__main__":
    main()
