"""The infrastructure namespace's servers: run inside it (``ip netns exec <lab>-infra``).

    python -m tests.lab.infra --dir DIR --out FILE

Temporal (dev server), Redis and PostgreSQL from the pinned wheels (perseus.devstack.services, as
the test harness starts them) on the namespace's loopback, the sink, and one relay per server from
its lab address (tests/lab/netns.SERVICES) to it. FILE gets the ports and URLs as JSON once all
answer. Runs until killed; the lab's tear-down kills it with everything else in the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from perseus.devstack import services
from perseus.store import db
from tests.lab.netns import SERVICES

ROOT = Path(__file__).resolve().parents[2]


async def start(base: Path) -> tuple[list[services.Service], dict[str, object]]:
    children: list[services.Service] = []
    children.append(temporal := await services.start_temporal(base / "temporal", None, None))
    password = services.new_password()
    children.append(redis := await services.start_redis(base / "redis", None, password=password))
    children.append(postgres := await services.start_postgres(base / "postgres", None, scratch=True))
    database_url = await services.ensure_database(postgres, "perseus_lab")
    await db.apply_schema(database_url)
    await db.apply_sql(database_url, db.DEMO_DATA_PATH)
    ports = {"temporal": temporal.port, "redis": redis.port, "postgres": postgres.port}
    info: dict[str, object] = {"ports": ports, "redis_password": password, "database_url": database_url}
    return children, info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    # Blocked before anything starts, so that sigwait (not the default action) takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    children, info = asyncio.run(start(args.dir))
    ports: dict[str, int] = info["ports"]  # type: ignore[assignment]
    base = args.dir
    sink_port = services.free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.sink", "--port", str(sink_port), "--log", str(base / "sink.jsonl")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert sink.stdout is not None and b"listening" in sink.stdout.readline()
    ports["sink"] = sink_port
    relays = [f"{SERVICES[name]}:{port}=127.0.0.1:{port}" for name, port in ports.items()]
    relay = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.proxy", *relays], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert relay.stdout is not None and b"proxy ready" in relay.stdout.readline()
    args.out.write_text(json.dumps({**info, "sink_log": str(base / "sink.jsonl")}))
    print("infra ready", flush=True)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    main()
