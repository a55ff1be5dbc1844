"""Fault injection against a private stack: no split brain, epochs only go up, nothing lost, and
never longer than the liveness bound B without a connector while one could run.

One exchange, three hosts (one active, two standbys; two of the three warm), real worker processes,
a private Temporal dev server and a private Redis so both can be paused, killed and restarted. After
every fault the suite heals what a real operator's process supervisor would (restarts killed
workers, re-registers ended instances as standbys) and waits for exactly one active holder again.
At the end the invariant checker reads the connector journal and the network stream, with the fault
schedule: when each fault ran, when Redis or Temporal was away (no instance could start then), and
which worker processes were killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from perseus.client import control
from perseus.core.decisions import lease_heartbeat_timeout_s
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.errors import AlreadyRegistered, PerseusError
from perseus.keys import workflow_id
from perseus.models import ConnectorSpec, StandbyRecord
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter
from tests.chaos.invariants import Gap, Liveness, Recovery, Timing, Window, check, load_journal
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.proxy import StallableProxy

INTERVAL = 1.0  # TTL 3 s, renew deadline 1.7 s, heartbeat timeout 18.75 s (a heartbeat per 15 renewals)
#: ``make soak`` sets PERSEUS_CHAOS_SOAK=1: control-plane outages of 30–120 s instead of CI's mix
#: (:func:`outage_s`): a third of them past the heartbeat timeout, so the leases are timed out and
#: the re-attach path is tried, the rest past the TTL and the renew deadline only, so the leases
#: ride them out attached.
SOAK = os.environ.get("PERSEUS_CHAOS_SOAK") == "1"
#: ``make chaos`` (and ``make soak``) run every fault kind as often as the plan below says; ``make
#: test`` runs each a third as often (at least once; about 8 minutes less on a 2-core machine, and the
#: suite's longest test no longer the rest of the suite's pace-setter).
FULL = SOAK or os.environ.get("PERSEUS_CHAOS_FULL") == "1"
#: PERSEUS_CHAOS_SHARED_HOSTS=1: each host's worker also serves the shared workflow queue, as the
#: README's ``perseus worker --host H`` does, beside the dedicated shared worker. Instance workflows
#: then run (and are cached, sticky) on the workers the faults kill and stop — the topology in which
#: issue 24 saw a killed worker hold a standby's promotion for Temporal's 10 s sticky timeout.
SHARED_HOSTS = os.environ.get("PERSEUS_CHAOS_SHARED_HOSTS") == "1"


pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(7200 if SOAK else 900),
]


def outage_s(i: int) -> float:
    """How long the i-th control-plane outage lasts: spread over its range, repeatable."""
    if SOAK:
        low, high = 30.0, 120.0
    elif i % 3 == 0:
        low = lease_heartbeat_timeout_s(INTERVAL) + 1.0  # past the heartbeat timeout: leases re-attach
        high = low + 2.0
    else:
        low = 3 * INTERVAL + 1.0  # past the TTL: a holder that stopped renewing would have lost its key
        high = low + 2.0
    return low + (high - low) * ((i * 37) % 10) / 9


def runs(full: int) -> int:
    """How often a fault kind the full plan runs ``full`` times runs in this one."""
    return full if FULL else max(1, math.ceil(full / 3))


def cold_walk_s(spec: ConnectorSpec) -> float:
    """A simulated connector's way from claimed to acting: prepare, warm up, connect."""
    return spec.prepare_delay_s + spec.warmup_delay_s + spec.connect_delay_s


#: The walk in the liveness bound: a cold one (the third host starts cold; a warm activation takes
#: only the connect).
WALK_S = cold_walk_s(ConnectorSpec())
#: How the exchange gets an active instance back after each kind of fault, for its bound: planned
#: paths are held to tighter ones, Redis outages to the wait a vanished key imposes; the rest are
#: crashes.
RECOVERY = {
    "planned handoff": Recovery.HANDOFF,
    "handoff target killed midway": Recovery.HANDOFF_TARGET_LOST,
    "SIGTERM active worker": Recovery.GRACEFUL,
    "promoted standby cannot start its connector": Recovery.FAILED_PROMOTION,
    "handoff to a standby that is not ready": Recovery.HANDOFF,
    "handoff to a lower standby whose host is late": Recovery.HANDOFF_LATE_TARGET,
    "Redis paused past the TTL": Recovery.REDIS_BACK,
    "Redis restarted empty": Recovery.REDIS_BACK,
    "Redis frozen past the deadline while Temporal is frozen": Recovery.REDIS_BACK,
}

#: How a standby's promoted event begins when it acted on a vacancy its own watch saw, and on
#: nothing a holder told it (perseus.core.watch).
VACANCY_REASONS = ("the holder stopped renewing its claim", "the holder's claim expired")

PRIORITY = {0: 3, 1: 2, 2: 1}
#: The first two hosts keep their connector warm as standbys, the third starts cold: failovers and
#: handoffs run both paths under the same faults, and the checker holds warm activations to their epoch.
WARM = {0: True, 1: True, 2: False}


@dataclass
class Stack:
    base: Path
    temporal_port: int
    redis_port: int
    temporal: services.Service
    redis: services.Service
    journal: Path
    servers: Servers
    faults: Counter[str] = field(default_factory=Counter)
    survived: Counter[str] = field(default_factory=Counter)
    #: The fault schedule, for the liveness check: each fault from injection to healed ...
    windows: list[Window] = field(default_factory=list)
    #: ... when Redis or Temporal was away, so that no instance could start its connector ...
    cannot_run: list[Window] = field(default_factory=list)
    #: ... and which worker processes were SIGKILLed, when (their connectors died with them).
    killed: dict[int, float] = field(default_factory=dict)
    #: The workers reach PostgreSQL through this proxy: its outage is theirs, not the other tests'.
    postgres: StallableProxy | None = None
    _down_since: dict[str, float] = field(default_factory=dict)

    def _away(self, plane: str, away: bool) -> None:
        """Note that ``plane`` (Redis, Temporal) went away or came back: one window from the first
        going to the return (a second resume, from a ``finally``, changes nothing)."""
        if away:
            self._down_since.setdefault(plane, time.monotonic())
        elif plane in self._down_since:
            since = self._down_since.pop(plane)
            back = Recovery.REDIS_BACK if plane == "Redis" else Recovery.CRASH
            self.cannot_run.append(Window(since, time.monotonic(), f"{plane} away", back))

    def env(self) -> dict[str, str]:
        env = {
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
            "PERSEUS_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PERSEUS_CONNECTOR_JOURNAL": str(self.journal),
        }
        if self.postgres is not None:
            port = self.servers.postgres_port
            env["PERSEUS_DATABASE_URL"] = self.servers.database_url.replace(
                f":{port}/", f":{self.postgres.port}/"
            )
        return env

    async def postgres_away(self, away: bool) -> None:
        """PostgreSQL out of the workers' reach (connections refused, open ones cut), or back.
        Not a window in which no instance could run: a holder renews without it."""
        assert self.postgres is not None
        await (self.postgres.down() if away else self.postgres.up())

    async def restart_temporal(self) -> None:
        self._away("Temporal", True)
        self.temporal.kill()
        self.temporal = await services.start_temporal(self.base / "temporal", self.temporal_port, None)
        self._away("Temporal", False)

    async def restart_redis(self, *, wipe: bool) -> None:
        self._away("Redis", True)
        self.redis.kill()
        if wipe:
            shutil.rmtree(self.base / "redis")
        self.redis = await services.start_redis(self.base / "redis", self.redis_port)
        self._away("Redis", False)

    def pause_redis(self, paused: bool) -> None:
        assert self.redis.proc
        self.redis.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        self._away("Redis", paused)

    def freeze_temporal(self, frozen: bool) -> None:
        assert self.temporal.proc
        self.temporal.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
        self._away("Temporal", frozen)


@pytest_asyncio.fixture(scope="module")
async def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    base = tmp_path_factory.mktemp("chaos")
    temporal = await services.start_temporal(base / "temporal", None, None)
    redis = await services.start_redis(base / "redis", None)
    made = Stack(base, temporal.port, redis.port, temporal, redis, base / "journal.jsonl", servers)
    made.postgres = await StallableProxy(servers.postgres_port).start()
    assert made.env()["PERSEUS_DATABASE_URL"] != servers.database_url
    yield made
    await made.postgres.close()
    made.pause_redis(False)
    made.freeze_temporal(False)
    made.temporal.stop()
    made.redis.stop()


class Cluster:
    """The workers and instances of the one exchange under test."""

    def __init__(self, stack: Stack, exchange: str) -> None:
        self.stack = stack
        self.exchange = exchange
        tag = uuid.uuid4().hex[:5]
        self.hosts = [f"ch{i}-{tag}" for i in range(3)]
        self.workers: dict[str, WorkerProcess] = {}
        #: Each host's worker reaches Temporal through a proxy of its own, to partition it alone.
        self.proxies: dict[str, StallableProxy] = {}
        self.all_workers: list[WorkerProcess] = []
        self.core: WorkerProcess | None = None
        self.client: Client | None = None
        self.store = RedisStore(make_client(f"redis://127.0.0.1:{stack.redis_port}/0"))
        self.ex_id = 0
        #: (instanceId, epoch) of each holder seen in the status key, in the order seen.
        self.holders: list[tuple[str, int]] = []

    async def connect(self) -> Client:
        for _ in range(100):
            try:
                self.client = await Client.connect(
                    f"127.0.0.1:{self.stack.temporal_port}", data_converter=converter
                )
                return self.client
            except RuntimeError:
                await asyncio.sleep(0.2)
        raise AssertionError("Temporal did not come back")

    async def start_worker(self, host: str) -> None:
        if host not in self.proxies:
            self.proxies[host] = await StallableProxy(self.stack.temporal_port).start()
        env = {**self.stack.env(), "TEMPORAL_ADDRESS": f"127.0.0.1:{self.proxies[host].port}"}
        proc = WorkerProcess(self.stack.servers, host, shared=SHARED_HOSTS, extra_env=env)
        self.all_workers.append(proc)
        await proc.ready()
        self.workers[host] = proc

    async def start(self) -> None:
        await self.connect()
        self.ex_id = await exchange_id(self.stack.servers, self.exchange)
        self.core = WorkerProcess(
            self.stack.servers, f"core-{uuid.uuid4().hex[:4]}", shared=True, extra_env=self.stack.env()
        )
        self.all_workers.append(self.core)
        await self.core.ready()
        for host in self.hosts:
            await self.start_worker(host)
        await self.register(self.hosts[0], standby=False)
        for host in self.hosts[1:]:
            await self.register(host, standby=True)
        await self.wait_active()

    async def register(self, host: str, *, standby: bool, connector: ConnectorSpec | None = None) -> None:
        assert self.client
        await control.register(
            self.client,
            exchange=self.exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=not standby,
            standby=standby,
            priority=PRIORITY[self.hosts.index(host)],
            connector=connector or ConnectorSpec(warm=WARM[self.hosts.index(host)]),
        )

    async def replace_standby(self, host: str, connector: ConnectorSpec) -> None:
        """Shut ``host``'s standby down and register it again with ``connector`` (a broken one, for
        a fault); :meth:`heal` puts the usual one back once it is shut down again."""
        assert self.client
        await control.command(
            self.client, exchange=self.exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )
        for _ in range(200):
            if not await self.running(host):
                break
            await asyncio.sleep(0.1)
        await self.register(host, standby=True, connector=connector)

    async def retire(self, host: str) -> None:
        """Shut ``host``'s instance down and wait until it has ended (heal registers it again)."""
        assert self.client
        await control.command(
            self.client, exchange=self.exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )
        for _ in range(200):
            if not await self.running(host):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{host}'s instance did not end")

    async def standby_record(self, host: str) -> StandbyRecord | None:
        return next((r for r in await self.store.standbys(self.ex_id) if r.host == host), None)

    async def best_standby(
        self, not_host: object, timeout: float = 30, *, workflow_running: bool = False, lowest: bool = False
    ) -> str:
        """The live standby a crash of ``not_host`` promotes first (the highest priority). Waited
        for: right after Redis came back empty, the standbys' records are written again only once
        their watches have seen them gone (a few seconds), and healing does not wait for that.

        ``workflow_running``: its workflow must run too (a handoff's target). A running workflow
        alone proves nothing: a holder whose worker was killed runs on until its restarted worker
        tells it, then ends (lost) — a handoff's target picked that way was shut down under the
        suite's feet (a CI run). ``lowest``: the live standby of the lowest priority instead."""
        ranked = sorted(
            (h for h in self.hosts if h != not_host),
            key=lambda h: PRIORITY[self.hosts.index(h)] * (1 if lowest else -1),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for host in ranked:
                if await self.standby_record(host) is not None and (
                    not workflow_running or await self.running(host)
                ):
                    return host
            await asyncio.sleep(0.25)
        raise AssertionError(f"no standby visible within {timeout}s")

    async def handoff(self, from_host: object, to_host: str) -> object:
        """``perseus handoff`` of the exchange from ``from_host`` to ``to_host`` (the old one stays
        as a standby); PerseusError when it is refused or fails."""
        assert self.client
        return await control.handoff(
            self.client,
            exchange=self.exchange,
            to_host=to_host,
            from_host=str(from_host),
            default_host=to_host,
            shutdown=False,
        )

    async def holder(self) -> dict[str, object] | None:
        try:
            raw, _ = await self.store.raw_status(self.ex_id)
        except PerseusError:
            return None
        doc = json.loads(raw) if raw else None
        if doc and (not self.holders or self.holders[-1][0] != doc["instanceId"]):
            self.holders.append((str(doc["instanceId"]), int(doc["epoch"])))
        return doc

    async def wait_active(self, *, not_host: str | None = None, timeout: float = 90) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = await self.holder()
            if doc and doc["connectionState"] == "active" and doc["hostname"] != not_host:
                return doc
            await asyncio.sleep(0.1)
        raise AssertionError(f"no active holder within {timeout}s (last: {await self.holder()})")

    async def promotion(self, host: str, epoch: str) -> dict[str, str]:
        """The ``promoted`` event of ``host``'s claim at ``epoch`` (the holder's status shows it
        active only after the event is written)."""
        for _, fields in await self.store.events(self.exchange, count=200):
            if (
                fields.get("event") == "promoted"
                and fields.get("hostname") == host
                and fields.get("epoch") == epoch
            ):
                return fields
        raise AssertionError(f"no promoted event of {host} at epoch {epoch}")

    def kill(self, host: object) -> None:
        """SIGKILL ``host``'s worker, noting when (its connectors stop acting at that moment)."""
        proc = self.workers[str(host)]
        self.stack.killed[proc.proc.pid] = time.monotonic()
        proc.signal(signal.SIGKILL)

    async def running(self, host: str) -> bool:
        assert self.client
        try:
            described = await self.client.get_workflow_handle(workflow_id(self.exchange, host)).describe()
        except RPCError:
            return False
        return described.status == WorkflowExecutionStatus.RUNNING

    async def heal(self, timeout: float = 90) -> dict[str, object]:
        """What a supervisor would do, until one instance is active and every host has its
        instance again: restart dead workers, re-register ended instances as standbys (an instance
        may take a moment to finish, so this is retried, not done once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for host in self.hosts:
                if self.workers[host].proc.poll() is not None:
                    await self.start_worker(host)
            all_running = True
            for host in self.hosts:
                if not await self.running(host):
                    all_running = False
                    try:
                        await self.register(host, standby=True)
                    except PerseusError as exc:  # still closing, or its new worker not polling yet
                        print(f"    heal: {host} not registered yet ({type(exc).__name__})")
            doc = await self.holder()
            if all_running and doc and doc["connectionState"] == "active":
                return doc
            await asyncio.sleep(0.25)
        raise AssertionError(f"not healed within {timeout}s (holder: {await self.holder()})")

    async def close(self) -> None:
        for proc in self.all_workers:
            proc.stop()
        for proxy in self.proxies.values():
            await proxy.close()
        await self.store.client.aclose()


async def redis_state(stack: Stack) -> str:
    """The private Redis as a failed fault finds it: its process state (``T``: stopped by a signal)
    and whether a new connection gets a PING answered, to tell a server that is away from clients
    that cannot reach one that answers."""
    assert stack.redis.proc
    try:
        state = Path(f"/proc/{stack.redis.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    probe = make_client(f"redis://127.0.0.1:{stack.redis_port}/0")
    try:
        async with asyncio.timeout(2):
            answered = f"PING answered {await probe.ping()!r}"
    except Exception as exc:  # noqa: BLE001 - what the probe met is the diagnosis
        answered = f"PING failed: {type(exc).__name__} {exc}"
    finally:
        await probe.aclose()
    return f"Redis pid {stack.redis.proc.pid} state {state}, {answered}"


async def fault(stack: Stack, cluster: Cluster, name: str, action: Callable[[], Awaitable[None]]) -> None:
    stack.faults[name] += 1
    started = time.monotonic()
    what = f"{name} #{stack.faults[name]}"
    try:
        await action()
        await cluster.heal()
    except BaseException:
        redis = await redis_state(stack)
        print(f"\nfault {name!r} #{stack.faults[name]} not survived; {redis}; newest events:")
        for _, entry in reversed(await cluster.store.events(cluster.exchange, count=25)):
            print("  ", event_line(entry))
        for host, proc in cluster.workers.items():
            print(f"  worker {host}: exit {proc.proc.poll()}; log tail: {proc.log.read_text()[-2500:]!r}")
        if cluster.core is not None:
            # Printed, not only named: the file is gone with the test's temporary folder, and a
            # failure in CI is read from its output alone.
            print(f"  core worker log {cluster.core.log}, tail: {cluster.core.log.read_text()[-3000:]!r}")
        if cluster.client is not None:
            for host in cluster.hosts:
                try:
                    history = await cluster.client.get_workflow_handle(
                        workflow_id(cluster.exchange, host)
                    ).fetch_history()
                except RPCError:
                    continue
                print(f"  history of {host}:")
                for ev in history.events[-40:]:
                    print(
                        "    ",
                        ev.event_time.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
                        ev.event_type,
                        ev.activity_task_scheduled_event_attributes.activity_type.name or "",
                        ev.workflow_execution_signaled_event_attributes.signal_name or "",
                        ev.activity_task_timed_out_event_attributes.failure.message or "",
                        ev.activity_task_failed_event_attributes.failure.message or "",
                    )
        raise
    stack.survived[name] += 1
    stack.windows.append(Window(started, time.monotonic(), what, RECOVERY.get(name, Recovery.CRASH)))
    print(f"  {name}: survived in {time.monotonic() - started:.1f}s")


async def test_no_split_brain_under_faults(stack: Stack, exchange: str) -> None:
    cluster = Cluster(stack, exchange)
    lost_stream: list[tuple[str, dict[str, str]]] = []
    try:
        await cluster.start()
        #: The journal's clock (CLOCK_MONOTONIC) to the stream's (wall clock), for a gap's events.
        wall_offset = time.time() - time.monotonic()

        async def kill_active() -> None:
            doc = await cluster.wait_active()
            cluster.kill(doc["hostname"])
            await cluster.wait_active(not_host=str(doc["hostname"]))

        async def stop_active_worker() -> None:  # what a supervisor's stop (or a deploy) does
            doc = await cluster.wait_active()
            proc = cluster.workers[str(doc["hostname"])]
            proc.signal(signal.SIGTERM)
            after = await cluster.wait_active(not_host=str(doc["hostname"]))
            # The path, apart from its time (which B can only bound at some machine's pace): the
            # new holder acted on a holder's word — woken by the release, or told while it waited
            # out a vacancy it saw first (or woken by the previous fault's lost holder, which may
            # come first) — never on a vacancy alone, which would wait out the old renew deadline.
            promoted = await cluster.promotion(str(after["hostname"]), str(after["epoch"]))
            assert not promoted.get("detail", "").startswith(VACANCY_REASONS), promoted
            await asyncio.to_thread(proc.wait, 60)  # then the supervisor starts it again (heal)

        async def pause_active_past_ttl() -> None:  # the zombie
            doc = await cluster.wait_active()
            proc = cluster.workers[str(doc["hostname"])]
            proc.signal(signal.SIGSTOP)
            await asyncio.sleep(3 * INTERVAL + 1.0)
            proc.signal(signal.SIGCONT)
            # A standby takes over, or — if the zombie's key expired before anyone claimed it — the
            # resumed holder re-claims above its old epoch; the invariant checker judges the overlap.
            await cluster.wait_active()

        async def redis_short_pause() -> None:
            before = await cluster.wait_active()
            stack.pause_redis(True)
            await asyncio.sleep(0.4 * INTERVAL)  # well inside the 2-interval renew deadline
            stack.pause_redis(False)
            await asyncio.sleep(2 * INTERVAL)
            after = await cluster.wait_active()
            assert (after["hostname"], after["epoch"]) == (before["hostname"], before["epoch"])

        async def redis_long_pause() -> None:
            stack.pause_redis(True)
            await asyncio.sleep(3 * INTERVAL + 1.0)
            stack.pause_redis(False)

        async def redis_restart_empty() -> None:
            before = await cluster.wait_active()
            # The stream goes with the data: keep what it held for the invariant checker.
            lost_stream.extend(reversed(await cluster.store.events(exchange)))
            await stack.restart_redis(wipe=True)
            after = await cluster.wait_active(timeout=60)
            assert int(after["epoch"]) > int(before["epoch"])  # type: ignore[call-overload]

        async def temporal_restart() -> None:
            await stack.restart_temporal()
            await cluster.connect()

        outages = iter(range(1000))

        async def temporal_frozen() -> None:
            before = await cluster.wait_active()
            stack.freeze_temporal(True)
            try:
                await asyncio.sleep(outage_s(next(outages)))
            finally:
                stack.freeze_temporal(False)
            await asyncio.sleep(INTERVAL)  # re-attached by now (it takes well under a second)
            after = await cluster.wait_active()
            assert (after["hostname"], after["epoch"]) == (before["hostname"], before["epoch"])

        async def active_host_partitioned() -> None:
            before = await cluster.wait_active()
            proxy = cluster.proxies[str(before["hostname"])]
            proxy.stall()
            try:
                await asyncio.sleep(outage_s(next(outages)))
            finally:
                proxy.resume()
            await asyncio.sleep(INTERVAL)
            after = await cluster.wait_active()
            assert (after["hostname"], after["epoch"]) == (before["hostname"], before["epoch"])

        async def active_killed_while_temporal_frozen() -> None:
            doc = await cluster.wait_active()
            stack.freeze_temporal(True)
            try:
                cluster.kill(doc["hostname"])
                await asyncio.sleep(max(outage_s(next(outages)), 3 * INTERVAL + 1.0))
            finally:
                stack.freeze_temporal(False)
            await cluster.wait_active(not_host=str(doc["hostname"]))

        async def redis_and_temporal_frozen() -> None:
            stack.freeze_temporal(True)
            try:
                stack.pause_redis(True)
                await asyncio.sleep(3 * INTERVAL + 1.0)  # past the renew deadline and the TTL
                stack.pause_redis(False)
                await asyncio.sleep(INTERVAL)
            finally:
                stack.pause_redis(False)
                stack.freeze_temporal(False)

        async def same_host_twice() -> None:
            doc = await cluster.wait_active()
            with pytest.raises(AlreadyRegistered):
                await cluster.register(str(doc["hostname"]), standby=False)

        async def handoff_target_killed() -> None:
            doc = await cluster.wait_active()
            target = await cluster.best_standby(doc["hostname"], workflow_running=True)
            attempt = asyncio.ensure_future(cluster.handoff(str(doc["hostname"]), target))
            await asyncio.sleep(0.2)
            cluster.kill(target)
            try:
                await attempt
            except PerseusError:
                pass  # refused or aborted: either way someone must be active again below

        async def planned_handoff() -> None:
            for _ in range(40):  # the previous fault may still be settling (e.g. a reclaim walking down)
                doc = await cluster.wait_active()
                target = await cluster.best_standby(doc["hostname"], workflow_running=True)
                try:
                    await cluster.handoff(str(doc["hostname"]), target)
                except PerseusError:  # busy, settling, or the standby not visible yet: try again
                    await asyncio.sleep(0.5)
                    continue
                assert (await cluster.wait_active())["hostname"] == target
                return
            raise AssertionError("no settled moment for a planned handoff")

        async def handoff_to_a_late_lower_standby() -> None:
            """A handoff to the lower standby, whose host answers late: its worker is stopped for an
            interval and a half right after the old connector stopped, so the best standby's watch
            sees the vacancy meanwhile — with nobody ahead of it to yield to. The release reserved
            the exchange for the target, which must be the one active afterwards."""
            for _ in range(40):  # the previous fault may still be settling
                doc = await cluster.wait_active()
                active = str(doc["hostname"])
                best = await cluster.best_standby(active, workflow_running=True)
                target = await cluster.best_standby(active, workflow_running=True, lowest=True)
                if target == best:  # one live standby only: an instance the last fault left lost
                    await cluster.heal()  # is registered again
                    await asyncio.sleep(0.25)
                    continue
                newest = await cluster.store.events(exchange, count=1)
                after = stream_order(newest[0][0]) if newest else (0, 0)
                attempt = asyncio.ensure_future(cluster.handoff(active, target))
                notified = False
                while not notified and not attempt.done():
                    notified = any(
                        stream_order(entry_id) > after
                        and fields.get("event") == "handoff"
                        and fields.get("detail", "").startswith(f"notify: handing over to {target}")
                        for entry_id, fields in await cluster.store.events(exchange, count=10)
                    )
                    await asyncio.sleep(0.02)
                if not notified:
                    with contextlib.suppress(PerseusError):  # busy or settling: try again
                        await attempt
                    await asyncio.sleep(0.5)
                    continue
                late = cluster.workers[target]
                late.signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(1.5 * INTERVAL)  # past the best standby's next look
                finally:
                    late.signal(signal.SIGCONT)
                await attempt  # confirmed: the target claimed, and it is active
                assert (await cluster.wait_active())["hostname"] == target
                return
            raise AssertionError("no settled moment for a handoff to the lower standby")

        async def promoted_cannot_start() -> None:
            """A claim is held only by an instance that runs its connector: the best standby's
            connector cannot connect, so its promotion releases and the next standby takes over."""
            doc = await cluster.wait_active()
            active = str(doc["hostname"])
            best = await cluster.best_standby(active)
            await cluster.replace_standby(best, ConnectorSpec(fail_steps=["connect"]))
            # Both standbys visible, the broken one and the one that must take over after it (a
            # host restarted by the previous fault's healing may still be coming back).
            others = [h for h in cluster.hosts if h != active]
            for _ in range(240):
                if all([await cluster.standby_record(h) is not None for h in others]):
                    break
                await cluster.heal()  # an instance the last fault left lost is registered again
                await asyncio.sleep(0.25)
            else:
                raise AssertionError(f"the standbys {others} never both showed")
            cluster.kill(active)
            after = await cluster.wait_active(not_host=active)
            assert after["hostname"] != best, after
            await cluster.retire(best)  # heal registers it again with its usual connector

        async def handoff_to_unready() -> None:
            """A handoff to a warm standby whose warm-up fails is refused before anything stops."""
            doc = await cluster.wait_active()
            active = str(doc["hostname"])
            target = await cluster.best_standby(active, workflow_running=True)
            await cluster.replace_standby(target, ConnectorSpec(warm=True, fail_steps=["warm_up"]))
            for _ in range(200):
                record = await cluster.standby_record(target)
                if record is not None and record.warm_error:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{target}'s warm-up failure never showed in its record")
            with pytest.raises(PerseusError, match="refused"):
                await cluster.handoff(active, target)
            after = await cluster.wait_active()
            assert (after["hostname"], after["epoch"]) == (doc["hostname"], doc["epoch"])
            await cluster.retire(target)

        async def standby_restarted_while_postgres_is_down() -> None:
            """A standby host's worker dies and its supervisor starts it again while PostgreSQL is
            out of reach: the holder rides the outage out (renewals need only Redis), and once
            PostgreSQL answers the restarted standby watches again and is the one promoted when
            the holder dies."""
            doc = await cluster.wait_active()
            active = str(doc["hostname"])
            best = await cluster.best_standby(active)
            await stack.postgres_away(True)
            try:
                cluster.kill(best)
                await asyncio.to_thread(cluster.workers[best].wait, 30)
                await cluster.start_worker(best)  # serving, although PostgreSQL is down
                await asyncio.sleep(2 * INTERVAL)
                during = await cluster.wait_active()
                assert (during["hostname"], during["epoch"]) == (doc["hostname"], doc["epoch"])
            finally:
                await stack.postgres_away(False)
            for _ in range(300):
                if await cluster.standby_record(best) is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{best}'s standby record never came back after PostgreSQL did")
            # The restarted standby's own steps that waited for PostgreSQL (its registration's
            # records) finish first: the crash below is judged as a crash, not as the outage's tail.
            await asyncio.sleep(2 * INTERVAL)
            cluster.kill(active)
            after = await cluster.wait_active(not_host=active)
            promoted = await cluster.promotion(str(after["hostname"]), str(after["epoch"]))
            print(f"    promoted {promoted.get('timestamp')}: {promoted.get('detail')}")
            assert after["hostname"] == best, after

        # Four of the crashes are graceful stops instead: the same worker gone, by the other path
        # (a deploy, a supervisor's stop), at the same cost in time.
        kinds: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
            ("SIGKILL active worker", kill_active, 10),
            ("SIGTERM active worker", stop_active_worker, 4),
            ("SIGSTOP active worker past the TTL", pause_active_past_ttl, 6),
            ("Redis paused briefly", redis_short_pause, 6),
            ("Redis paused past the TTL", redis_long_pause, 4),
            ("Redis restarted empty", redis_restart_empty, 3),
            ("Temporal killed and restarted", temporal_restart, 2),
            ("same host registered twice", same_host_twice, 13),
            ("handoff target killed midway", handoff_target_killed, 2),
            ("planned handoff", planned_handoff, 2),
            ("handoff to a lower standby whose host is late", handoff_to_a_late_lower_standby, 2),
            ("promoted standby cannot start its connector", promoted_cannot_start, 3),
            ("handoff to a standby that is not ready", handoff_to_unready, 2),
            ("standby restarted while PostgreSQL is down", standby_restarted_while_postgres_is_down, 2),
            ("Temporal frozen", temporal_frozen, 6),
            ("active host partitioned from Temporal", active_host_partitioned, 6),
            ("active host killed while Temporal is frozen", active_killed_while_temporal_frozen, 5),
            ("Redis frozen past the deadline while Temporal is frozen", redis_and_temporal_frozen, 8),
        ]
        plan = [(name, action) for name, action, full in kinds for _ in range(runs(full))]
        only = os.environ.get("PERSEUS_CHAOS_ONLY")  # to study one kind of fault
        if only:
            plan = [p for p in plan if p[0] in only.split(",")]
        expected = sum(1 for name, _ in plan if name != "planned handoff")
        order = sorted(range(len(plan)), key=lambda i: (i * 7919) % len(plan))  # interleaved, repeatable
        for i in order:
            name, action = plan[i]
            await fault(stack, cluster, name, action)

        await asyncio.sleep(INTERVAL)
        stream = await whole_stream(
            lost_stream + list(reversed(await cluster.store.events(exchange))), stack, exchange
        )
        journal = load_journal(stack.journal)
        liveness = Liveness(
            timing={exchange: Timing(INTERVAL, WALK_S)},
            faults=stack.windows,
            cannot_run=stack.cannot_run,
            killed=stack.killed,
        )
        now = time.monotonic()
        # Beside the journal, so that a run can be judged again after a change to the checker.
        (stack.base / "liveness.json").write_text(
            json.dumps({"now": now, **dataclasses.asdict(liveness)}, default=str, indent=1)
        )
        report = check(journal, stream, now=now, holders=cluster.holders, liveness=liveness)
        warm = sum(1 for line in journal if line["kind"] == "connect" and line.get("warm"))
        injected = sum(v for k, v in stack.faults.items() if k != "planned handoff")
        survived = sum(v for k, v in stack.survived.items() if k != "planned handoff")
        print(
            f"\nchaos: faults injected {injected}, survived {survived}, violations {len(report.violations)}; "
            f"{report.acting_intervals} acting intervals ({warm} warm activations), "
            f"{report.transitions} transitions checked"
        )
        for name in stack.faults:
            print(f"  {name}: {stack.survived[name]}/{stack.faults[name]}")
        print_gaps(report.gaps)
        for violation in report.violations:
            print("  VIOLATION", violation)
        for gap in report.gaps:
            if gap.violates:  # what happened, from the stream: the run's own files go with its folder
                print_events_around(gap, stream, wall_offset)
        assert report.violations == []
        assert injected == expected and survived == injected
        assert report.acting_intervals >= injected // 3  # the checker saw the connectors it judged
        assert warm >= 1 or only  # ...and warm standbys among them
    finally:
        await cluster.close()


def stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def whole_stream(
    seen: list[tuple[str, dict[str, str]]], stack: Stack, exchange: str
) -> list[dict[str, str]]:
    """The exchange's stream as written, oldest first: what the suite read from Redis, and what
    only the durable log in PostgreSQL kept — the entries written between the suite's last read and
    a "Redis restarted empty" (the stream goes with the data; every event is also a row there, with
    its stream id). Entry ids are times, so the restarted stream's come after the lost ones."""
    entries = {fields["eventId"]: (stream_order(entry_id), fields) for entry_id, fields in seen}
    async with await psycopg.AsyncConnection.connect(stack.servers.database_url) as conn:
        rows = await conn.execute(
            "SELECT stream_ms, stream_seq, fields FROM network_events WHERE exchange_name = %s", (exchange,)
        )
        for ms, seq, fields in await rows.fetchall():
            flat = {k: "" if v is None else str(v) for k, v in fields.items()}
            entries.setdefault(flat.get("eventId", ""), ((ms, seq), flat))
    return [fields for _, fields in sorted(entries.values(), key=lambda e: e[0])]


def print_gaps(gaps: list[Gap]) -> None:
    """The liveness measurements, per fault kind: how many stretches without a connector, the
    longest in all and the longest counted against B (outside Redis and Temporal outages)."""
    by_kind: dict[str, list[Gap]] = {}
    for gap in gaps:
        kind = "before any fault" if gap.fault is None else gap.fault.kind
        by_kind.setdefault(("after " if gap.after_fault else "") + kind, []).append(gap)
    print("liveness: gaps without an acting connector, per fault kind (seconds)")
    print(f"  {'fault':<58} {'gaps':>4} {'median':>7} {'longest':>8} {'counted':>8} {'B':>6} {'over B':>6}")
    for kind, found in sorted(by_kind.items()):
        print(
            f"  {kind:<58} {len(found):>4} {statistics.median(g.length for g in found):>7.3f} "
            f"{max(g.length for g in found):>8.3f} "
            f"{max(g.counted for g in found):>8.3f} {max(g.bound for g in found):>6.2f} "
            f"{sum(g.violates for g in found):>6}"
        )


def print_events_around(gap: Gap, stream: list[dict[str, str]], wall_offset: float) -> None:
    """The stream's events from a few seconds before a gap over its bound until just after it."""
    start, end = gap.start + wall_offset - 5.0, gap.end + wall_offset + 1.0
    print(f"  events around the gap of {gap.length:.3f}s (from {gap.start + wall_offset:.3f}):")
    for fields in stream:
        stamp = fields.get("timestamp")
        if stamp and start <= datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() <= end:
            print("    ", event_line(fields))


def event_line(fields: dict[str, str]) -> str:
    """One stream event as a line of a failure's report."""
    keys = ("timestamp", "event", "hostname", "epoch", "fromState", "toState", "detail", "error")
    return " ".join(str(fields.get(key, "")) for key in keys)
