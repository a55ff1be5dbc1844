"""Uptime and timeline cost against a long history: ``.venv/bin/python -m bench.ledger [--entries N]``.

Starts its own Redis-compatible server and PostgreSQL on free ports, serves the API from a separate
process (as ``bench.read_api`` does) and builds exchanges with the same history of ``--entries``
network entries over the last 30 days (six transitions and one error per cycle):

* **stream** — Perseus-written entries only in the stream (XADD with their own timestamps as IDs):
  history from before the ledger existed;
* **v6** — the same history as a Livermore v6 service writes it into the stream beside Perseus (its
  nine and eight string fields, no ``eventId``): a mixed fleet;
* **ledger** — the same events as ``record_event`` writes them (stream + durable log + state ledger
  in PostgreSQL): the newest 1,000 through that very code path (their mean write cost is reported),
  the older ones bulk-loaded into the same tables; and a ten times shorter one.

It times ``/uptime``, ``/timeline?window=30d`` and an activity page for each, first against the API
without the ledger fold (:mod:`perseus.readmodel.ledger_fold`; the read path other writers' history had until
now), then against the API with it — after timing how long its reader takes to catch up with the
streams it starts on — and the activity page and uptime again after ``FLUSHALL`` (served from
PostgreSQL). Figures go to the "Uptime and timeline" section of ``docs/benchmarks.md`` (replaced on
each run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from bench.read_api import summary, write_section
from perseus.core.lifecycle import State
from perseus.devstack import services
from perseus.keys import stream_key
from perseus.models import EventKind, NetworkEvent
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Uptime and timeline"
CYCLE = [
    (State.IDLE, State.STARTING),
    (State.STARTING, State.WARMING),
    (State.WARMING, State.ACTIVE),
    None,  # an error while active
    (State.ACTIVE, State.STOPPING),
    (State.STOPPING, State.STOPPED),
    (State.STOPPED, State.IDLE),
]


def history(ex_id: int, name: str, entries: int, now: datetime) -> list[NetworkEvent]:
    step = timedelta(days=30) / entries
    start = now - timedelta(days=30)
    out = []
    instance = str(uuid.uuid4())
    for n in range(entries):
        kind = CYCLE[n % len(CYCLE)]
        base: dict[str, Any] = dict(
            event_id=str(uuid.uuid4()),
            timestamp=start + n * step,
            exchange_id=ex_id,
            exchange_name=name,
            hostname="node-a",
            ip="192.0.2.10",
            instance_id=instance,
            epoch=1,
        )
        if kind is None:
            out.append(NetworkEvent(event=EventKind.ERROR, error="feed stalled", state=State.ACTIVE, **base))
        else:
            out.append(
                NetworkEvent(event=EventKind.STATE_TRANSITION, from_state=kind[0], to_state=kind[1], **base)
            )
    return out


#: The newest events go through the real record_event path (and give the write cost); the older
#: ones are bulk-loaded into the same tables, which takes seconds instead of minutes.
RECORDED = 1000


async def bulk_load(database_url: str, store: RedisStore, events: list[NetworkEvent]) -> None:
    """What ``record_event`` would have written for ``events`` (oldest first), in bulk."""
    if not events:
        return
    name = events[0].exchange_name
    ids = []
    for chunk in range(0, len(events), 1000):
        async with store.client.pipeline(transaction=False) as pipe:
            for e in events[chunk : chunk + 1000]:
                pipe.xadd(stream_key(name), e.fields())  # type: ignore[arg-type]
            ids += await pipe.execute()
    transitions = [e for e in events if e.to_state is not None]
    ends: list[datetime | None] = [t.timestamp for t in transitions[1:]] + [None]
    running: list[dict[str, float]] = [{}]  # seconds per state before each interval (the ledger's sums)
    for t, end in zip(transitions[:-1], ends[:-1], strict=True):
        assert t.to_state is not None and end is not None
        step = dict(running[-1])
        step[t.to_state.value] = step.get(t.to_state.value, 0.0) + (end - t.timestamp).total_seconds()
        running.append(step)
    conn = await db.connect(database_url)
    async with conn, conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO network_events (event_id, exchange_id, exchange_name, event, occurred_at,"
            " stream_ms, stream_seq, fields) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    e.event_id,
                    e.exchange_id,
                    name,
                    e.event.value,
                    e.timestamp,
                    *map(int, i.split("-")),
                    Jsonb(e.fields()),
                )
                for e, i in zip(events, ids, strict=True)
            ],
        )
        await cur.executemany(
            "INSERT INTO exchange_state_intervals"
            " (exchange_id, state, started_at, ended_at, event_id, before_s) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    t.exchange_id,
                    t.to_state.value if t.to_state else "",
                    t.timestamp,
                    end,
                    t.event_id,
                    Jsonb(b),
                )
                for t, end, b in zip(transitions, ends, running, strict=True)
            ],
        )


async def new_exchange(conn: Any, name: str) -> int:
    row = await (
        await conn.execute(
            "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id", (name, name)
        )
    ).fetchone()
    return int(row["id"])


async def timed(
    http: httpx.AsyncClient, path: str, n: int, **params: Any
) -> tuple[dict[str, float], int, str]:
    """Latency of one warm-up and ``n`` sequential requests, the response size, and the failures
    (the stream path can run past Redis' 5 s socket timeout: the API then answers 503)."""
    samples, failures, size = [], [], 0
    for i in range(n + 1):
        t0 = time.perf_counter()
        reply = await http.get(path, params=params, timeout=120)
        if i:
            samples.append((time.perf_counter() - t0) * 1000)
        if reply.status_code == 200:
            size = size or len(reply.content)
        else:
            failures.append(f"{reply.status_code} {reply.json().get('error', '')[:60]}")
    note = f"{len(failures)} of {n + 1} failed: {failures[0]}" if failures else ""
    return summary(samples), size, note


def v6_fields(e: NetworkEvent) -> dict[str, str]:
    """The entry a Livermore v6 service writes for ``e``: its fields in its order, no ``eventId``."""
    ts = e.timestamp.astimezone(UTC)
    when = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    if e.to_state is not None:
        return {
            "event": "state_transition",
            "timestamp": when,
            "fromState": e.from_state.value if e.from_state else "",
            "toState": e.to_state.value,
            "exchangeId": str(e.exchange_id),
            "exchangeName": e.exchange_name,
            "hostname": e.hostname,
            "ip": "",
            "adminEmail": "",
        }
    return {
        "event": "error",
        "timestamp": when,
        "error": e.error or "",
        "exchangeId": str(e.exchange_id),
        "exchangeName": e.exchange_name,
        "hostname": e.hostname,
        "ip": "",
        "state": e.state.value if e.state else "",
    }


async def write_stream(redis: Any, name: str, events: list[NetworkEvent], v6: bool) -> None:
    """``events`` straight into the stream, each at its own time as its ID (a long-running stream)."""
    for chunk in range(0, len(events), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for n, e in enumerate(events[chunk : chunk + 1000], start=chunk):
                ms = int(e.timestamp.timestamp() * 1000)
                pipe.xadd(stream_key(name), v6_fields(e) if v6 else e.fields(), id=f"{ms}-{n}")
            await pipe.execute()


async def start_api(port: int, env: dict[str, str], fold: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.read_api", "--serve", str(port)] + ([] if fold else ["--no-fold"])
    api = subprocess.Popen(argv, cwd=ROOT, env=env)  # noqa: ASYNC220 - started before anything is measured
    await services.wait_tcp(port, "the API", api, timeout=30)
    return api


def stop_api(api: subprocess.Popen[bytes] | None) -> None:
    if api is not None and api.poll() is None:
        api.terminate()
        api.wait(10)


async def run(entries: int, requests: int, write: bool) -> str:
    base = Path(tempfile.mkdtemp(prefix="perseus-bench-ledger-"))
    children: list[services.Service] = []
    api: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, dict[str, float], int, str]] = []
    try:
        children.append(await services.start_redis(base / "redis", None))
        children.append(await services.start_postgres(base / "postgres", None))
        redis_port = children[0].port
        database_url = await services.ensure_database(children[1], "perseus_bench")
        await db.apply_schema(database_url)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis = make_client(redis_url)
        store = RedisStore(redis)
        conn = await db.connect(database_url)
        async with conn:
            before_id = await new_exchange(conn, "bench_stream")
            after_id = await new_exchange(conn, "bench_ledger")
            small_id = await new_exchange(conn, "bench_small")
            v6_id = await new_exchange(conn, "bench_v6")
            key = await db.Catalog(db.OneConnection(conn)).create_api_key("bench")
        now = datetime.now(UTC)

        # Perseus-written, only in the stream: history from before the ledger existed.
        await write_stream(redis, "bench_stream", history(before_id, "bench_stream", entries, now), v6=False)
        # Written by a Livermore v6 service beside Perseus: its nine/eight fields, no eventId.
        await write_stream(redis, "bench_v6", history(v6_id, "bench_v6", entries, now), v6=True)

        # The ledger exchange: the record_event path (activities/registry.py) for every event.
        pool = db.make_pool(database_url)
        await pool.open(wait=True)
        catalog = db.Catalog(pool)
        from activities.registry import RegistryActivities
        from perseus.models import EventRequest

        registry = RegistryActivities(store, catalog, notifications=False)
        recorded = history(after_id, "bench_ledger", entries, now)
        sample = min(entries, RECORDED)
        await bulk_load(database_url, store, recorded[: entries - sample])
        t0 = time.perf_counter()
        for e in recorded[entries - sample :]:
            await registry.record_event(EventRequest(event=e))
        write_ms = (time.perf_counter() - t0) * 1000 / sample
        # The same shape of history, ten times shorter: the ledger's cost should not change.
        await bulk_load(database_url, store, history(small_id, "bench_small", entries // 10, now))

        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSEUS_")}
        env.update(PERSEUS_REDIS_URL=redis_url, PERSEUS_DATABASE_URL=database_url, PERSEUS_DATA_DIR=str(base))
        slow = max(3, requests // 10)

        async def measure(http: httpx.AsyncClient, subjects: list[tuple[str, int, str]], n: int) -> None:
            """Per kind of request, the subjects' requests taken in turn (round-robin), so a load
            spike on the shared machine falls on every row alike."""
            kinds: list[tuple[str, str, dict[str, Any]]] = [
                ("GET /uptime", "/api/network/exchanges/{id}/uptime", {}),
                ("GET /timeline?window=30d", "/api/network/exchanges/{id}/timeline", {"window": "30d"}),
                ("GET /activity?exchange=X&count=50", "/api/network/activity", {"count": 50}),
            ]
            for kind, template, params in kinds:
                samples: dict[str, list[float]] = {label: [] for label, _, _ in subjects}
                sizes: dict[str, int] = {}
                failures: dict[str, list[str]] = {label: [] for label, _, _ in subjects}
                sources: dict[str, str] = {}
                for i in range(n + 1):
                    for label, ex_id, name in subjects:
                        path = template.format(id=ex_id)
                        query = {**params, "exchange": name} if "activity" in path else params
                        t0 = time.perf_counter()
                        reply = await http.get(path, params=query, timeout=120)
                        if i:
                            samples[label].append((time.perf_counter() - t0) * 1000)
                        if reply.status_code == 200:
                            sizes[label] = sizes.get(label) or len(reply.content)
                            if "uptime" in path:
                                sources[label] = reply.json().get("source", "?")
                        else:
                            failures[label].append(
                                f"{reply.status_code} {reply.json().get('error', '')[:60]}"
                            )
                for label, _, _ in subjects:
                    fails = failures[label]
                    note = f"{len(fails)} of {n + 1} failed: {fails[0]}" if fails else ""
                    where = f" (`source`: {sources[label]})" if label in sources else ""
                    rows.append(
                        (f"{label}: {kind}{where}", summary(samples[label]), sizes.get(label, 0), note)
                    )

        headers = {"Authorization": f"Bearer {key}"}
        # Before: the API without the fold, as it read other writers' history until now.
        port = services.free_port()
        api = await start_api(port, env, fold=False)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            await measure(
                http,
                [
                    ("before (Perseus-written, stream only)", before_id, "bench_stream"),
                    ("before the fold (v6-written, stream)", v6_id, "bench_v6"),
                ],
                slow,
            )
            await measure(
                http,
                [
                    ("Perseus-written (ledger)", after_id, "bench_ledger"),
                    (f"Perseus-written (ledger, {entries // 10:,}-entry history)", small_id, "bench_small"),
                ],
                requests,
            )
        stop_api(api)

        # After: the API with the fold starts on these streams and catches up, then the same reads.
        port = services.free_port()
        t0 = time.perf_counter()
        api = await start_api(port, env, fold=True)
        ends = {
            xid: (await store.events(name, count=1))[0][0]
            for xid, name in ((v6_id, "bench_v6"), (before_id, "bench_stream"))
        }
        caught_up: dict[int, float] = {}
        while len(caught_up) < len(ends):
            for xid, newest in ends.items():
                mark = await catalog.fold_mark(xid)
                if xid not in caught_up and mark is not None and f"{mark[0]}-{mark[1]}" == newest:
                    caught_up[xid] = time.perf_counter() - t0
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            await measure(
                http,
                [
                    ("after the fold (v6-written, ledger)", v6_id, "bench_v6"),
                    ("Perseus-written (ledger), same API", after_id, "bench_ledger"),
                    ("after the fold (Perseus-written, stream only before)", before_id, "bench_stream"),
                ],
                requests,
            )
            await redis.flushall()
            page = await timed(http, "/api/network/activity", requests, exchange="bench_ledger", count=50)
            rows.append(("after FLUSHALL: GET /activity?exchange=X&count=50 (PostgreSQL)", *page))
            up = await timed(http, f"/api/network/exchanges/{after_id}/uptime", requests)
            rows.append(("after FLUSHALL: GET /uptime (ledger)", *up))
            up = await timed(http, f"/api/network/exchanges/{v6_id}/uptime", requests)
            rows.append(("after FLUSHALL: GET /uptime (v6-written, folded)", *up))
        await pool.close()
        await redis.aclose()
    finally:
        stop_api(api)
        for child in reversed(children):
            child.stop()

    lines = [
        SECTION,
        "",
        f"`.venv/bin/python -m bench.ledger` (`make bench-ledger`) — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}; one exchange "
        f"history of {entries:,} entries over 30 days ({entries * 6 // 7:,} state transitions, the rest "
        "errors), four times: written by Perseus only into the stream (history from before the ledger), "
        "written by a Livermore v6 service into the stream (its nine and eight string fields, no "
        "`eventId`: a mixed fleet), and as `record_event` writes it (stream + PostgreSQL; the "
        f"newest {min(entries, RECORDED):,} through that code path, the older ones bulk-loaded), plus "
        f"that last one ten times shorter. Sequential requests over one keep-alive connection after one "
        f"warm-up round ({requests} per ledger row, {slow} per stream row), the rows of a group taken in "
        "turn (round-robin) so the machine's load falls on them alike; the API runs in its own process: "
        "first without the ledger fold (the read path until now), then with it, in the same run. "
        f"Other helpers' work shared the machine (load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| what | p50 ms | p99 ms | response bytes | failures |",
        "|---|---:|---:|---:|---|",
    ]
    for name, stats, size, note in rows:
        lines.append(f"| {name} | {stats['p50']:.1f} | {stats['p99']:.1f} | {size:,} | {note or '0'} |")
    lines += [
        "",
        f"Recording one event (stream XADD, then durable row + ledger update in one transaction): "
        f"{write_ms:.2f} ms "
        f"mean over the {min(entries, RECORDED):,} recorded through `record_event` (fsync per commit, "
        "on the loaded machine).",
        "",
        f"The fold's catch-up: the API with the fold, started on these streams, had folded the v6 "
        f"history ({entries:,} entries) {caught_up[v6_id]:.1f} s after it was started and the "
        f"Perseus-written stream-only one {caught_up[before_id]:.1f} s after (its entries carry "
        "`eventId`s PostgreSQL never saw, so they are folded too; the `record_event` histories' "
        "entries are all there and only move the mark). Until a stream is caught up, its reads "
        "answer from the stream and say `source: stream`.",
        "",
        "Reading it: the stream path reads every entry of the window and parses it in Python, so its "
        "cost grows with the stream"
        + (
            " (here past Redis' 5 s socket timeout: the API answered 503)"
            if any(note for name, _, _, note in rows if name.startswith("before"))
            else ""
        )
        + "; while it reads, Redis serves nobody else. The ledger path never touches the stream's "
        "history: uptime is one statement of four index lookups (the interval in force at now and at "
        "each window's start; every interval carries the running seconds per state since the ledger "
        "began, so a window's time per state is a difference of two rows), and the timeline adds one "
        "index range that stops after 500 intervals (the answer's cap; `truncated` says so, the totals "
        "still cover the whole window). With the fold each read first asks where the fold stands (one "
        "primary-key lookup) and for the stream's entries past it (one XRANGE, empty when the API's "
        "reader has folded them already): two round trips more, whoever wrote the history. The row with "
        "a ten times shorter history shows the cost does not follow the length. Activity pages are "
        "capped at 256 KiB; after `FLUSHALL` they come from PostgreSQL at about the stream's cost, the "
        "v6-written history's as well (the fold copied it into the durable log).",
        "",
    ]
    report = "\n".join(lines)
    if write:
        write_section(SECTION, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave docs/benchmarks.md.")
    args = parser.parse_args()
    print(asyncio.run(run(args.entries, args.requests, not args.no_write)))


if __name__ == "__main__":
    main()
