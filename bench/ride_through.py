"""Control-plane outage benchmark (issue 11): Temporal frozen under active instances.

For each configuration (heartbeat interval × outage length) this starts its own scratch servers
(Temporal dev server, Valkey, PostgreSQL), one workflow worker and one host worker as real
processes, and two active instances on that host: a simulated connector and a process connector
(a real child). Then it freezes the Temporal server with SIGSTOP for the outage, lets it go, and
reports what the data plane did meanwhile, sampled every 50 ms from Redis and /proc:

* status-key lapses (samples where a key was missing or held another epoch) per instance,
* connector restarts (the child's pid changed or it died) and `instance_lost` / `error` events,
* the time from the server answering again until every instance's lease heartbeats again
  (re-attached), in seconds and in heartbeat intervals.

    .venv/bin/python -m bench.ride_through                    # 15 s and 2 s × 60 s and 300 s
    .venv/bin/python -m bench.ride_through --interval 2 --outage 60

Figures go to stdout and, as JSON, to docs/ride-through.json; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client

from perseus.client import control
from perseus.devstack import services
from perseus.keys import status_key
from perseus.models import ConnectorSpec
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter, register_search_attributes

ROOT = Path(__file__).resolve().parents[1]
PERSEUS = str(Path(sys.executable).with_name("perseus"))
CHILD = str(ROOT / "tests" / "connectors" / "child.py")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("condition not met in time")


async def run(interval: float, outage: float, base: Path) -> dict[str, Any]:
    # Each port is taken just before its server starts: the dev server opens a metrics port of its own.
    temporal = await services.start_temporal(base / "temporal", None, None)
    redis_server = await services.start_redis(base / "redis", None)
    postgres = await services.start_postgres(base / "postgres", None)
    tp, rp = temporal.port, redis_server.port
    procs: list[subprocess.Popen[bytes]] = []
    store = RedisStore(make_client(f"redis://127.0.0.1:{rp}/0"))
    try:
        url = await services.ensure_database(postgres, "perseus_bench")
        await db.apply_schema(url)
        await db.apply_sql(url, db.DEMO_DATA_PATH)
        client = await Client.connect(f"127.0.0.1:{tp}", data_converter=converter)
        await register_search_attributes(client)
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{tp}",
            "PERSEUS_REDIS_URL": f"redis://127.0.0.1:{rp}/0",
            "PERSEUS_DATABASE_URL": url,
            "PERSEUS_DATA_DIR": str(base / "data"),
            "PERSEUS_IP_SERVICES": "[]",
            # This run's client uses the plain converter: payloads stay unencrypted here.
            "PERSEUS_PAYLOAD_PLAINTEXT": "1",
        }
        host = f"bench-{uuid.uuid4().hex[:4]}"
        for args in (["--host", "core"], ["--host", host, "--no-shared"]):
            log = (base / f"worker-{args[1]}.log").open("w")
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
                    [PERSEUS, "worker", *args], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        await asyncio.sleep(3)
        journal = base / "child.jsonl"
        child = ConnectorSpec.model_validate(
            {"kind": "process", "command": [sys.executable, "-u", CHILD, "--journal", str(journal)]}
        )
        instances = {"coinbase": ConnectorSpec(), "kraken": child}
        catalog = db.Catalog(db.OneConnection(await db.connect(url)))
        ids = {name: (await catalog.exchange(name)).id for name in instances}
        for name, spec in instances.items():
            await control.register(
                client,
                exchange=name,
                host=host,
                admin_email=None,
                heartbeat_interval_s=interval,
                start=True,
                connector=spec,
            )

        async def all_active() -> bool:
            for ex_id in ids.values():
                raw, _ = await store.raw_status(ex_id)
                if not raw or json.loads(raw)["connectionState"] != "active":
                    return False
            return True

        await wait_until(all_active, 60)
        epochs = {n: json.loads((await store.raw_status(i))[0] or "{}")["epoch"] for n, i in ids.items()}
        pid = json.loads(journal.read_text().splitlines()[0])["pid"]
        lapses = {name: 0 for name in ids}
        samples = 0
        child_died = False
        stop_sampling = asyncio.Event()

        async def sample() -> None:
            nonlocal samples, child_died
            while not stop_sampling.is_set():
                for name, ex_id in ids.items():
                    raw = await store.client.get(status_key(ex_id))
                    if raw is None or json.loads(raw)["epoch"] != epochs[name]:
                        lapses[name] += 1
                child_died = child_died or not alive(pid)
                samples += 1
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        assert temporal.proc
        print(f"  interval {interval:g}s: freezing Temporal for {outage:g}s", flush=True)
        temporal.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(outage)
        temporal.proc.send_signal(signal.SIGCONT)
        resumed = time.time()
        back = time.monotonic()

        async def reattached() -> bool:
            for name in ids:
                described = await client.get_workflow_handle(f"instance-{name}-{host}").describe()
                beats = [
                    p.last_heartbeat_time.ToDatetime().timestamp()
                    for p in described.raw_description.pending_activities
                    if p.activity_type.name == "hold_lease" and p.HasField("last_heartbeat_time")
                ]
                if not beats or max(beats) <= resumed:
                    return False
            return True

        await wait_until(reattached, 120)
        reattach_s = time.monotonic() - back
        await asyncio.sleep(2 * interval)
        stop_sampling.set()
        await sampler
        events: list[str] = []
        for name in ids:
            events += [f["event"] for _, f in await store.events(name)]
        starts = sum(1 for line in journal.read_text().splitlines() if json.loads(line)["event"] == "start")
        return {
            "intervalS": interval,
            "outageS": outage,
            "samples": samples,
            "keyLapseSamples": lapses,
            "childRestarts": starts - 1,
            "childDied": child_died,
            "instanceLost": events.count("instance_lost"),
            "errors": events.count("error"),
            "reattachS": round(reattach_s, 2),
            "reattachIntervals": round(reattach_s / interval, 2),
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        await store.client.aclose()
        for service in (temporal, redis_server, postgres):
            service.stop()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, action="append", help="heartbeat interval (repeatable)")
    p.add_argument("--outage", type=float, action="append", help="seconds Temporal is frozen (repeatable)")
    p.add_argument("--json", default=str(ROOT / "docs" / "ride-through.json"))
    args = p.parse_args()
    results = []
    for interval in args.interval or [15.0, 2.0]:
        for outage in args.outage or [60.0, 300.0]:
            with tempfile.TemporaryDirectory(prefix="perseus-ride-") as tmp:
                result = await run(interval, outage, Path(tmp))
            print("  " + json.dumps(result), flush=True)
            results.append(result)
    load = os.getloadavg()
    Path(args.json).write_text(json.dumps({"loadAvg": load, "runs": results}, indent=2) + "\n")
    print(f"\nload average {load[0]:.1f}; written to {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
