"""The infrastructure namespace's servers: run inside it (``ip netns exec <lab>-infra``).

    python -m tests.lab.infra --dir DIR --out FILE [--profile single|sentinel|cluster]

Temporal (dev server), Redis and PostgreSQL from the pinned wheels (perseus.devstack.services, as
the test harness starts them) on the namespace's loopback, the sink, and one relay per server from
its lab address (tests/lab/netns.SERVICES) to it. FILE gets the ports and URLs as JSON once all
answer. Redis by profile: ``single``, one server; ``sentinel``, a primary, one replica and three
Sentinels (tests/redis_ha.py, as the Sentinel tests start them); ``cluster``, three masters with a
replica each (the cluster tests' start_cluster_nodes). Every Redis port (data nodes and Sentinels)
is relayed at the Redis address, so the addresses Sentinel and CLUSTER SLOTS hand out
(127.0.0.1:<port>) work on every host through its own relay. Runs until killed; the lab's
tear-down kills it with everything else in the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from perseus.devstack import services
from perseus.store import db
from tests.lab.netns import SERVICES
from tests.redis_ha import start_sentinel_group

PROFILES = ("single", "sentinel", "cluster")
#: What the infrastructure prints each time it restarted the single Redis empty (on SIGUSR1).
RESTARTED = "redis restarted empty"

ROOT = Path(__file__).resolve().parents[2]


async def start_redis(base: Path, profile: str, children: list[services.Service]) -> dict[str, object]:
    """The profile's Redis, its processes appended to ``children``: its URL (as seen from the
    namespace's loopback), every port to relay, and each data node's pid by port (the lab's
    Redis faults signal them)."""
    if profile == "single":
        password = services.new_password()
        children.append(redis := await services.start_redis(base / "redis", None, password=password))
        url = f"redis://:{password}@127.0.0.1:{redis.port}/0"
        data = [redis]
        relayed = [redis.port]
    elif profile == "sentinel":
        group = await start_sentinel_group(base / "redis", replicas=1)
        children.extend(group.children())
        password, url, data = group.password, group.url, group.data
        relayed = [s.port for s in group.children()]
        sentinels = [s.port for s in group.sentinels]
    elif profile == "cluster":
        # Imported here: the cluster tests' module, needed by this profile only.
        from tests.integration.test_redis_cluster import start_cluster_nodes

        password = ""
        first = len(children)
        ports = await start_cluster_nodes(
            base / "cluster", 6, replicas=1, node_timeout_ms=3000, children=children
        )
        data = children[first:]
        await _cluster_settled(ports)
        url = f"redis+cluster://127.0.0.1:{ports[0]}/0?wait_replicas=1"
        relayed = ports
    else:
        raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
    return {
        "redis_url": url,
        "redis_password": password,
        "redis_ports": relayed,
        "redis_pids": {str(s.port): s.proc.pid for s in data if s.proc is not None},
        "sentinel_ports": sentinels if profile == "sentinel" else [],
    }


async def _cluster_settled(ports: list[int], timeout: float = 60) -> None:
    from tests.redis_ha import cli

    async def ask(port: int, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            cli(), "-p", str(port), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        infos = [await ask(p, "cluster", "info") for p in ports]
        roles = [await ask(p, "info", "replication") for p in ports]
        if (
            all("cluster_state:ok" in i for i in infos)
            and sum("role:slave" in r and "master_link_status:up" in r for r in roles) == len(ports) // 2
        ):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the cluster did not reach cluster_state:ok with a replica per master")


async def start(base: Path, profile: str) -> tuple[list[services.Service], dict[str, object]]:
    children: list[services.Service] = []
    children.append(temporal := await services.start_temporal(base / "temporal", None, None))
    redis = await start_redis(base, profile, children)
    children.append(postgres := await services.start_postgres(base / "postgres", None, scratch=True))
    database_url = await services.ensure_database(postgres, "perseus_lab")
    await db.apply_schema(database_url)
    await db.apply_sql(database_url, db.DEMO_DATA_PATH)
    ports = {"temporal": temporal.port, "postgres": postgres.port}
    info: dict[str, object] = {"ports": ports, "profile": profile, "database_url": database_url, **redis}
    # As root, PostgreSQL's data lives outside the lab's folder (services._postgres_home): the lab
    # checks that it went with the server.
    info["postgres_home"] = str(postgres.remove_on_stop) if postgres.remove_on_stop else None
    return children, info


async def restart_redis_empty(children: list[services.Service], info: dict[str, object]) -> None:
    """The single profile's Redis killed (as a crash), its data files removed and started again on
    the same port with the same password: it comes back empty. Started by this process, whose child
    it must be (it dies with its parent, services._die_with_parent)."""
    assert info["profile"] == "single", "restarted empty on the single profile only"
    ports: list[int] = info["redis_ports"]  # type: ignore[assignment]
    (port,) = ports
    at = next(n for n, s in enumerate(children) if s.name == "redis" and s.port == port)
    old = children[at]
    old.kill()
    data = old.log_path.parent
    for name in ("appendonlydir", "dump.rdb"):
        path = data / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    children[at] = await services.start_redis(data, port, password=old.password)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", choices=PROFILES, default="single")
    args = parser.parse_args()
    # Blocked before anything starts, so that sigwait (not the default action) takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
    children, info = asyncio.run(start(args.dir, args.profile))
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
    redis_ports: list[int] = info["redis_ports"]  # type: ignore[assignment]
    relays += [f"{SERVICES['redis']}:{port}=127.0.0.1:{port}" for port in redis_ports]
    relay = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.proxy", *relays], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert relay.stdout is not None and b"proxy ready" in relay.stdout.readline()
    args.out.write_text(json.dumps({**info, "sink_log": str(base / "sink.jsonl"), "infra_pid": os.getpid()}))
    print("infra ready", flush=True)
    try:
        # SIGUSR1: the lab's "Redis back empty" fault (tests/lab/faults.py).
        while signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}) == signal.SIGUSR1:
            asyncio.run(restart_redis_empty(children, info))
            print(RESTARTED, flush=True)
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    main()
