"""Failover timings: ``.venv/bin/python -m bench.failover [--intervals 15,1] [--trials 10]``.

Starts its own servers (Temporal dev server, Redis-compatible server, PostgreSQL) on free ports,
a shared-queue worker and two host workers as real ``perseus worker`` processes, and one exchange
with an active instance on one host and a standby on the other. For each heartbeat interval:

* **crash**: SIGKILL the active host's worker; time until the standby's instance is ``active`` in
  the status key (polled every 20 ms). The killed worker is restarted and re-registered as the
  standby for the next trial, so roles alternate.
* **handoff**: ``perseus handoff`` to the standby (as ``control.handoff``); time until the call
  returns with the standby active.

The figures (p50/p99/max beside the TTL) replace the "Failover" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client

from perseus import control
from perseus.devstack import services
from perseus.errors import AlreadyRegistered
from perseus.lifecycle import Command
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter, register_search_attributes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Failover"
PERSEUS = str(Path(sys.executable).parent / "perseus")


class Worker:
    def __init__(self, env: dict[str, str], host: str, log_dir: Path, *, shared: bool = False) -> None:
        self.host = host
        self.log = log_dir / f"{host}-{uuid.uuid4().hex[:4]}.log"
        args = [PERSEUS, "worker", "--host", host] + ([] if shared else ["--no-shared"])
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )

    async def ready(self) -> None:
        for _ in range(300):
            if "worker ready" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker {self.host} not ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def trial_set(
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    interval: float,
    trials: int,
    log_dir: Path,
) -> dict[str, list[float]]:
    conn = await db.connect(database_url)
    name = f"fo_{uuid.uuid4().hex[:8]}"
    async with conn:
        row = await (
            await conn.execute(
                "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id", (name, name)
            )
        ).fetchone()
    assert row is not None
    ex_id = int(row["id"])
    tag = uuid.uuid4().hex[:4]
    hosts = [f"fa-{tag}", f"fb-{tag}"]
    workers = {h: Worker(env, h, log_dir) for h in hosts}
    await asyncio.gather(*(w.ready() for w in workers.values()))

    async def register(host: str, standby: bool) -> None:
        await control.register(
            client,
            exchange=name,
            host=host,
            admin_email=None,
            heartbeat_interval_s=interval,
            start=not standby,
            standby=standby,
        )

    async def active_host(not_host: str | None = None, timeout: float = 10 * interval + 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw, _ = await store.status(ex_id)
            if raw:
                doc = json.loads(raw)
                if doc["connectionState"] == "active" and doc["hostname"] != not_host:
                    return str(doc["hostname"])
            await asyncio.sleep(0.02)
        raise RuntimeError("no active instance in time")

    await register(hosts[0], False)
    await register(hosts[1], True)
    await active_host()
    results: dict[str, list[float]] = {"crash": [], "handoff": []}
    for i in range(trials):
        active = await active_host()
        await asyncio.sleep(interval / 2)  # a renewal or so since the last change
        started = time.monotonic()
        workers[active].kill()
        await active_host(not_host=active)
        results["crash"].append(time.monotonic() - started)
        print(f"  interval {interval:g}s crash {i + 1}/{trials}: {results['crash'][-1]:.2f}s", flush=True)
        workers[active] = Worker(env, active, log_dir)
        await workers[active].ready()
        for _ in range(50):
            try:
                await register(active, True)
                break
            except AlreadyRegistered:
                await asyncio.sleep(0.5)  # the lost instance's workflow is still closing
    for i in range(trials):
        active = await active_host()
        target = hosts[1] if active == hosts[0] else hosts[0]
        await asyncio.sleep(interval)
        started = time.monotonic()
        await control.handoff(
            client, exchange=name, to_host=target, from_host=active, default_host=target, shutdown=False
        )
        await active_host(not_host=active)
        results["handoff"].append(time.monotonic() - started)
        print(f"  interval {interval:g}s handoff {i + 1}/{trials}: {results['handoff'][-1]:.2f}s", flush=True)
    for host in hosts:
        try:
            await control.command(
                client, exchange=name, host=host, default_host=host, command=Command.SHUTDOWN
            )
        except Exception as exc:  # noqa: BLE001 - best-effort cleanup of a scratch exchange
            print(f"  cleanup {host}: {exc}")
    for worker in workers.values():
        worker.kill()
    return results


def markdown(rows: list[tuple[float, str, list[float]]], trials: int) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m bench.failover` on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {trials} trials each; simulated connector "
        "(its prepare 0.2 s + warm-up 0.3 s + connect 0.2 s are in every figure).",
        "",
        "| interval | TTL | what | p50 | p99 | max | vs TTL (p50) |",
        "|---|---|---|---|---|---|---|",
    ]
    for interval, what, values in rows:
        ttl = 3 * interval
        lines.append(
            f"| {interval:g} s | {ttl:g} s | {what} | {statistics.median(values):.2f} s | "
            f"{pct(values, 0.99):.2f} s | {max(values):.2f} s | {statistics.median(values) / ttl:.0%} |"
        )
    lines += [
        "",
        "Crash: SIGKILL of the active host's worker until the standby is `active` in the status key. "
        "The dead host is known after 1.25 intervals without a heartbeat; the release waits one more "
        "interval (the pickup window for a restarted worker, which also guarantees a paused holder has "
        "stopped itself); then the standby claims and walks starting → warming → active. "
        "Handoff: `perseus handoff` until it returns with the target active.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if SECTION in doc:
        start = doc.index(SECTION)
        nxt = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + (doc[nxt + 1 :] if nxt != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="perseus-failover-"))
    tp, rp, pp = services.free_port(), services.free_port(), services.free_port()
    children = [
        await services.start_temporal(base / "temporal", tp, None),
        await services.start_redis(base / "redis", rp),
        await services.start_postgres(base / "postgres", pp, scratch=True),
    ]
    core: Worker | None = None
    try:
        database_url = await services.ensure_database(pp, "perseus")
        await db.apply_schema(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEUS_", "TEMPORAL_"))}
        env.update(
            TEMPORAL_ADDRESS=f"127.0.0.1:{tp}",
            PERSEUS_REDIS_URL=f"redis://127.0.0.1:{rp}/0",
            PERSEUS_DATABASE_URL=database_url,
            PERSEUS_DATA_DIR=str(base / "data"),
            PERSEUS_PAYLOAD_PLAINTEXT="1",  # the bench's own client uses the plain converter
        )
        client = await Client.connect(f"127.0.0.1:{tp}", data_converter=converter)
        await register_search_attributes(client)
        core = Worker(env, "core", base, shared=True)
        await core.ready()
        store = RedisStore(make_client(f"redis://127.0.0.1:{rp}/0"))
        rows: list[tuple[float, str, list[float]]] = []
        for interval in args.intervals:
            results = await trial_set(client, store, env, database_url, interval, args.trials, base)
            rows += [
                (interval, "crash → standby active", results["crash"]),
                (interval, "planned handoff", results["handoff"]),
            ]
        await store.client.aclose()
        text = markdown(rows, args.trials)
        print(text)
        if not args.no_write:
            write_section(text)
    finally:
        if core:
            core.kill()
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=lambda s: [float(x) for x in s.split(",")], default=[15.0, 1.0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main(parser.parse_args()))
