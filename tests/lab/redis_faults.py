"""The lab's Redis HA faults, run inside the infrastructure namespace (where the servers listen):

    python -m tests.lab.redis_faults KIND --info INFRA_JSON [--hold S]

``sentinel-failover``
    Sentinel's own failover (``SENTINEL FAILOVER``): the replica promoted, the old primary made its
    replica; done once every Sentinel names the new primary and the old one follows it in sync.
``failover-lagging``
    A failover to a replica that lags: the replica's link to the primary is cut (a wrong
    ``masterauth``, its link dropped) while holders go on renewing on the primary; after half of
    ``--hold`` s the primary freezes (SIGSTOP), so what it took since the cut never reaches the
    replica; the Sentinels find the primary down and promote the replica, which lacks those writes;
    then the old primary thaws and is made a replica of the new one (its extra writes dropped by the
    full resync). Prints how many bytes of the stream the promoted replica missed.
``cluster-failover``
    Every Cluster master replaced by its replica (``CLUSTER FAILOVER`` on each replica: the manual,
    coordinated failover), so the exchange's keys change master whichever slot they hash to.

Each exits 0 once the servers settled again (the lab's next fault starts from a whole group), and
prints one line saying what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from perseus.devstack import services
from tests.redis_ha import SentinelGroup

KINDS = ("sentinel-failover", "failover-lagging", "cluster-failover")


def _group(info: dict[str, object]) -> SentinelGroup:
    pids: dict[str, int] = info["redis_pids"]  # type: ignore[assignment]
    sentinels: list[int] = info["sentinel_ports"]  # type: ignore[assignment]
    password = str(info["redis_password"])
    log = Path(os.devnull)
    return SentinelGroup(
        password=password,
        data=[services.Service("redis", int(port), log, password=password) for port in pids],
        sentinels=[services.Service("sentinel", port, log) for port in sentinels],
    )


async def _offset(group: SentinelGroup, port: int, field: str) -> int:
    for line in (await group.run(port, "info", "replication")).splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split(":", 1)[1])
    return -1


async def failover_lagging(info: dict[str, object], hold: float) -> str:
    group = _group(info)
    pids: dict[str, int] = info["redis_pids"]  # type: ignore[assignment]
    primary = await group.settled()
    (replica,) = await group.replica_ports()
    # The replica cut off from its primary's stream: a wrong password, then its link dropped, so it
    # keeps reconnecting and failing to authenticate. (Pausing it is not enough: the stream piles up
    # in its socket and is applied when it wakes.) Sentinel never touches masterauth.
    assert await group.run(replica, "config", "set", "masterauth", "lab-wrong") == "OK"
    await group.run(replica, "client", "kill", "type", "master")
    await asyncio.sleep(hold / 2)
    written = await _offset(group, primary, "master_repl_offset")
    os.kill(pids[str(primary)], signal.SIGSTOP)
    try:
        had = await _offset(group, replica, "master_repl_offset")
        assert await group.run(replica, "config", "set", "masterauth", group.password) == "OK"
        await asyncio.sleep(hold / 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await group.named() == {replica} and await group.role(replica) == "master":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the Sentinels did not promote the lagging replica")
    finally:
        os.kill(pids[str(primary)], signal.SIGCONT)
    await group.settled(60)
    return f"promoted {replica}, {written - had} bytes of the stream behind {primary} (cut {hold / 2:.1f}s)"


async def cluster_failover(info: dict[str, object]) -> str:
    from tests.redis_ha import cli

    ports: list[int] = info["redis_ports"]  # type: ignore[assignment]

    async def ask(port: int, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            cli(), "-p", str(port), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    replicas = [p for p in ports if "role:slave" in await ask(p, "info", "replication")]
    for port in replicas:
        assert (await ask(port, "cluster", "failover")).strip() == "OK", port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        roles = {p: await ask(p, "info", "replication") for p in ports}
        states = [await ask(p, "cluster", "info") for p in ports]
        if all("role:master" in roles[p] for p in replicas) and all("cluster_state:ok" in s for s in states):
            if sum("master_link_status:up" in r for r in roles.values()) == len(replicas):
                return f"masters now {sorted(replicas)}"
        await asyncio.sleep(0.2)
    raise AssertionError("the cluster did not settle after CLUSTER FAILOVER")


async def run(kind: str, info: dict[str, object], hold: float) -> str:
    if kind == "sentinel-failover":
        old, new = await _group(info).failover()
        await _group(info).settled(60)
        return f"primary {old} -> {new}"
    if kind == "failover-lagging":
        return await failover_lagging(info, hold)
    if kind == "cluster-failover":
        return await cluster_failover(info)
    raise ValueError(f"unknown Redis fault {kind!r}: one of {', '.join(KINDS)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--info", type=Path, required=True)
    parser.add_argument("--hold", type=float, default=4.0)
    args = parser.parse_args()
    print(args.kind, asyncio.run(run(args.kind, json.loads(args.info.read_text()), args.hold)), flush=True)


if __name__ == "__main__":
    main()
