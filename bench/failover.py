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
``--kinds crash`` (or ``graceful``, ``handoff``, ``failed``, comma-separated) runs only those
trials: many of one kind, to see a rare slow one, in less time.

Cold vs warm: ``.venv/bin/python -m bench.failover --warmup 30 [--intervals 15,2]`` runs a process
connector (bench/warm_child.py) whose warm-up takes 30 s instead, once cold and once with warm
standbys, and measures the "no connector active" gap from the children's own notes (when each
started and stopped acting, on the one monotonic clock of the machine):

* **crash**: from the SIGKILL of the active host's worker (its child dies with it) until the
  standby's child acts; its *detection* part ends when the standby's claim is in the status key.
* **handoff**: ``perseus handoff`` to the standby, from the moment the old child stops acting
  (SIGTERM cold, ``DEACTIVATE`` warm) until the new one acts.

Both in each ``--topologies`` (default both: ``hosts``, the README's, and ``dedicated``). Those
figures replace the "Warm failover" section of docs/benchmarks.md and docs/warm-failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from temporalio.client import Client

from bench import add_temporal_config
from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.errors import AlreadyRegistered
from perseus.models import ConnectorSpec
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter, register_search_attributes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Failover"
WARM_SECTION = "## Warm failover"
WARM_JSON = ROOT / "docs" / "warm-failover.json"
WARM_CHILD = ROOT / "bench" / "warm_child.py"
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

    def terminate(self) -> None:
        """SIGTERM: the worker's graceful stop (it releases its claims, then exits on its own)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout: float = 60) -> None:
        self.proc.wait(timeout)


async def register_again(
    client: Client,
    exchange: str,
    host: str,
    interval: float,
    *,
    standby: bool,
    priority: int = 0,
    connector: ConnectorSpec | None = None,
    failsafe: bool = False,
) -> None:
    """Register ``host`` (active and started, or a standby), waiting while the instance that just
    lost or handed over there is still closing its workflow (50 s at most)."""
    for _ in range(100):
        try:
            await control.register(
                client,
                exchange=exchange,
                host=host,
                admin_email=None,
                heartbeat_interval_s=interval,
                start=not standby,
                standby=standby,
                priority=priority,
                connector=connector,
                failsafe=failsafe,
            )
            return
        except AlreadyRegistered:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{host} could not register again")


async def scratch_exchange(database_url: str, prefix: str) -> tuple[str, int]:
    """A new exchange in the catalog, named ``prefix`` + a random tag: its name and id."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    conn = await db.connect(database_url)
    async with conn:
        row = await (
            await conn.execute(
                "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id", (name, name)
            )
        ).fetchone()
    assert row is not None
    return name, int(row["id"])


class Board:
    """One exchange as Redis shows it, polled: who is active, who stands by."""

    def __init__(self, store: RedisStore, ex_id: int, interval: float) -> None:
        self.store, self.ex_id, self.interval = store, ex_id, interval

    async def active_host(self, not_host: str | None = None, timeout: float | None = None) -> str:
        """The host of the active holder (other than ``not_host``), once there is one."""
        deadline = time.monotonic() + (10 * self.interval + 60 if timeout is None else timeout)
        while time.monotonic() < deadline:
            raw, _ = await self.store.raw_status(self.ex_id)
            if raw:
                doc = json.loads(raw)
                if doc["connectionState"] == "active" and doc["hostname"] != not_host:
                    return str(doc["hostname"])
            await asyncio.sleep(0.02)
        raise RuntimeError("no active instance in time")

    async def standbys_visible(self, expected: set[str]) -> None:
        for _ in range(600):
            if {r.host for r in await self.store.standbys(self.ex_id)} >= expected:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"standbys {sorted(expected)} not visible in time")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


#: The two ways to run workers (both measured in one run, since a favourable one hides delays):
#: ``hosts`` is the README's — every host's ``perseus worker --host H`` also serves the shared
#: workflow queue, so a killed host takes whatever workflows it had cached with it; ``dedicated``
#: runs the workflows on a separate shared worker that is never killed (``--no-shared`` hosts).
TOPOLOGIES = ("hosts", "dedicated")
#: Three hosts, each with a fixed standby priority: the highest live one must win every failover.
PRIORITIES = (3, 2, 1)
FAILED_PROMOTION = "crash, best standby cannot start → next active"


async def trial_set(
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    interval: float,
    trials: int,
    log_dir: Path,
    *,
    topology: str,
    kinds: tuple[str, ...] = ("crash", "graceful", "handoff", "failed"),
) -> dict[str, list[float]]:
    """One exchange on three hosts (one active, two standbys of different priorities): crashes
    (SIGKILL of the active host's worker), graceful stops (SIGTERM of it) and handoffs. A stopped
    worker is restarted and its host re-registered as a standby, so roles rotate. Each promotion
    also records whether the highest-priority live standby won (1) or not (0)."""
    name, ex_id = await scratch_exchange(database_url, "fo_")
    tag = uuid.uuid4().hex[:4]
    rng = random.Random(f"{topology}-{interval}")  # the same phases on every run of the bench
    hosts = [f"fa-{tag}", f"fb-{tag}", f"fc-{tag}"]
    priority = dict(zip(hosts, PRIORITIES, strict=True))
    shared = topology == "hosts"
    workers = {h: Worker(env, h, log_dir, shared=shared) for h in hosts}
    await asyncio.gather(*(w.ready() for w in workers.values()))

    async def register(host: str, standby: bool) -> None:
        await register_again(client, name, host, interval, standby=standby, priority=priority[host])

    board = Board(store, ex_id, interval)
    active_host, standbys_visible = board.active_host, board.standbys_visible

    await register(hosts[0], False)
    await register(hosts[1], True)
    await register(hosts[2], True)
    await active_host()
    results: dict[str, list[float]] = {"crash": [], "graceful": [], "handoff": [], "priority": []}
    for kind in [k for k in ("crash", "graceful") if k in kinds]:
        for i in range(trials):
            active = await active_host()
            others = [h for h in hosts if h != active]
            await standbys_visible(set(others))
            best = max(others, key=priority.__getitem__)
            # Anywhere in the holder's renewal cycle, at least half an interval after the last
            # change: a crash's time depends on how long before it the holder last renewed (its
            # claim-over line is 2.1 intervals after that renewal), and a fixed wait made every
            # trial of a run fall at nearly the same point of the cycle.
            await asyncio.sleep(interval * (0.5 + rng.random()))
            phase = await renewed_before(store, ex_id, interval)
            started, stopped_at = time.monotonic(), time.time()
            if kind == "crash":
                workers[active].kill()
            else:
                workers[active].terminate()
            winner = await active_host(not_host=active)
            results[kind].append(time.monotonic() - started)
            results["priority"].append(1.0 if winner == best else 0.0)
            print(
                f"  {topology} interval {interval:g}s {kind} {i + 1}/{trials}: {results[kind][-1]:.2f}s"
                f" (holder renewed {phase:.2f}s before)"
                f" -> {winner}{'' if winner == best else f' (NOT the best standby {best})'}"
                f" ({await crash_breakdown(store, name, stopped_at)})",
                flush=True,
            )
            workers[active].wait()
            workers[active] = Worker(env, active, log_dir, shared=shared)
            await workers[active].ready()
            await register(active, True)
    for i in range(trials if "handoff" in kinds else 0):
        active = await active_host()
        target = max((h for h in hosts if h != active), key=priority.__getitem__)
        await standbys_visible({target})
        await asyncio.sleep(interval)
        started, asked_at = time.monotonic(), time.time()
        await control.handoff(
            client, exchange=name, to_host=target, from_host=active, default_host=target, shutdown=False
        )
        await active_host(not_host=active)
        results["handoff"].append(time.monotonic() - started)
        print(
            f"  {topology} interval {interval:g}s handoff {i + 1}/{trials}: {results['handoff'][-1]:.2f}s"
            f" ({await handoff_breakdown(store, name, asked_at)})",
            flush=True,
        )
    # Failed promotion: a fourth host, the highest priority, whose connector cannot start there (its
    # executable is missing). Registered afresh before each crash, so it is promoted first every
    # time; the figure is the crash until a host that can run the connector is active.
    broken = f"fx-{tag}"
    workers[broken] = Worker(env, broken, log_dir, shared=shared)
    await workers[broken].ready()
    results["failed promotion"] = []
    missing = ConnectorSpec(kind="process", command=[str(log_dir / "no-such-connector")])
    for i in range(trials if "failed" in kinds else 0):
        active = await active_host()
        await register_again(client, name, broken, interval, standby=True, priority=9, connector=missing)
        await standbys_visible({h for h in hosts if h != active} | {broken})
        await asyncio.sleep(interval * (0.5 + rng.random()))
        started, stopped_at = time.monotonic(), time.time()
        workers[active].kill()
        winner = await active_host(not_host=active)
        results["failed promotion"].append(time.monotonic() - started)
        print(
            f"  {topology} interval {interval:g}s failed promotion {i + 1}/{trials}: "
            f"{results['failed promotion'][-1]:.2f}s -> {winner}"
            f" ({await crash_breakdown(store, name, stopped_at)})",
            flush=True,
        )
        await control.command(
            client, exchange=name, host=broken, default_host=broken, command=Command.SHUTDOWN
        )
        workers[active].wait()
        workers[active] = Worker(env, active, log_dir, shared=shared)
        await workers[active].ready()
        await register(active, True)
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


async def renewed_before(store: RedisStore, ex_id: int, interval: float) -> float:
    """Seconds since the holder's key was last renewed (its PTTL against a TTL of 3 intervals)."""
    _, pttl = await store.raw_status(ex_id)
    return max(0.0, 3 * interval - pttl / 1000)


async def crash_breakdown(store: RedisStore, exchange: str, killed_at: float) -> str:
    """Where a crash's time went, from the stream: when the dead holder's workflow recorded the loss,
    when the standby was promoted and by which path (woken by that workflow, claimed over the silent
    holder's key by the standby's own watch, or after the key's TTL), and
    when it went active — seconds after the kill, on the machine's one clock."""
    marks: list[str] = []
    for _, entry in reversed(await store.events(exchange, count=30)):
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - killed_at
        if at < 0:
            continue
        kind = entry["event"]
        if kind == "instance_lost":
            marks.append(f"lost +{at:.2f}")
        elif kind == "promoted":
            detail = entry.get("detail", "")
            path = (
                "TTL"
                if detail.startswith("the holder's claim expired")
                else "claimed over"
                if detail.startswith("the holder stopped renewing")
                else "woken"
            )
            marks.append(f"promoted ({path}) {entry.get('hostname')} +{at:.2f}")
        elif kind == "state_transition" and entry.get("toState") == "active":
            marks.append(f"active +{at:.2f}")
        elif kind == "error" and "could not start" in entry.get("error", ""):
            marks.append(f"start failed on {entry.get('hostname')} +{at:.2f}")
    return ", ".join(marks)


async def handoff_breakdown(store: RedisStore, exchange: str, asked_at: float) -> str:
    """Where a handoff's time went: seconds after the request until each step the stream shows."""
    marks: list[str] = []
    for _, entry in reversed(await store.events(exchange, count=30)):
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - asked_at
        if at < 0:
            continue
        kind, detail = entry["event"], entry.get("detail", "")
        if kind == "handoff":
            marks.append(f"{detail.split(':')[0]} +{at:.2f}")
        elif kind == "promoted":
            marks.append(f"promoted +{at:.2f}")
        elif kind == "state_transition":
            marks.append(f"{entry.get('toState')} +{at:.2f}")
    return ", ".join(marks)


def markdown(rows: list[tuple[str, float, str, list[float]]], trials: int, load: list[str]) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m bench.failover` on {platform.node()} ({os.cpu_count()} cores, load average "
        f"before/after {load[0]} → {load[1]}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{trials} trials each; simulated connector (its prepare 0.2 s + warm-up 0.3 s + connect 0.2 s "
        "are in every figure). Three hosts, one active and two standbys of priorities 3, 2, 1 by host.",
        "",
        "| topology | interval | TTL | what | p50 | p99 | max | vs TTL (p50) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for topology, interval, what, values in rows:
        ttl = 3 * interval
        if not values:  # a kind left out (``--kinds``)
            continue
        if what == "best standby won":
            lines.append(
                f"| {topology} | {interval:g} s | {ttl:g} s | {what} | "
                f"{sum(values):.0f} of {len(values)} | | | |"
            )
            continue
        lines.append(
            f"| {topology} | {interval:g} s | {ttl:g} s | {what} | {statistics.median(values):.2f} s | "
            f"{pct(values, 0.99):.2f} s | {max(values):.2f} s | {statistics.median(values) / ttl:.0%} |"
        )
    lines += [
        "",
        "Topologies: `hosts` is the one the README gives users — each host runs `perseus worker --host "
        "H`, which also serves the shared workflow queue, so the worker that dies may hold other "
        "instances' workflows in its cache; `dedicated` runs the workflows on a separate "
        "`perseus worker` that is never stopped, and the hosts with `--no-shared`.",
        "",
        "Crash: SIGKILL of the active host's worker, at a point of the holder's renewal cycle drawn at "
        "random (the same draws on every run), "
        "until the standby is `active` in the status key. The claim may change hands once the dead "
        "host's key has gone unrenewed past its renew deadline plus the margin (1.8 intervals after "
        "its last renewal, as its record declares: its connector has stopped by then). "
        "The standby's watch looks at that moment and claims over the key (`claimed over`); "
        "the dead host's workflow, once its lease "
        "missed the heartbeat timeout, asks Redis and records the loss, releases and wakes the best "
        "standby (`woken`), whichever comes first; a key that runs out first is taken by the watch "
        "too (`TTL`). The standby then walks starting → warming → active (0.7 s of simulated "
        "connector). Graceful stop: SIGTERM of the active host's worker, which stops its connector, "
        "releases the claim and wakes the best standby before it stops polling. Handoff: `perseus "
        'handoff` to the best standby until it returns with the target active. "best standby won" '
        "counts the crashes and graceful stops won by the highest-priority live standby. "
        f'"{FAILED_PROMOTION}": a fourth host of the highest priority whose connector\'s executable '
        "is missing is promoted first; it releases and wakes the next standby, whose start ends the "
        "figure.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, section: str = SECTION) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if section in doc:
        start = doc.index(section)
        nxt = doc.find("\n## ", start + len(section))
        # One blank line before the next section, however the text ends.
        doc = doc[:start] + text.rstrip("\n") + "\n" + ("\n" + doc[nxt + 1 :] if nxt != -1 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


# --- cold vs warm: a process connector with a long warm-up -----------------------------------------


def gap_notes(path: Path) -> list[tuple[str, int, float]]:
    """(active|inactive, epoch, monotonic time) lines the benchmark's children wrote, in order."""
    if not path.exists():
        return []
    notes = []
    for line in path.read_text().splitlines():
        kind, _pid, epoch, t = line.split()
        notes.append((kind, int(epoch), float(t)))
    return notes


async def note_after(path: Path, kind: str, after: float, timeout: float) -> tuple[int, float]:
    """The first ``kind`` note after ``after``: (epoch, time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k, epoch, t in gap_notes(path):
            if k == kind and t > after:
                return epoch, t
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no {kind!r} note after {after:.1f} within {timeout:.0f}s")


async def warm_set(
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    interval: float,
    *,
    warm: bool,
    warmup: float,
    crash_trials: int,
    handoff_trials: int,
    log_dir: Path,
    topology: str,
) -> dict[str, list[float]]:
    """One exchange on two hosts, cold or warm: handoffs back and forth, then crashes of the active
    host's worker (restarted and re-registered as the standby after each). In the hosts topology
    the host workers also serve the workflows, so a crash takes cached workflows with it."""
    name, ex_id = await scratch_exchange(database_url, "wf_")
    notes = log_dir / f"gaps-{name}.txt"
    spec = ConnectorSpec(
        kind="process",
        command=[sys.executable, "-u", str(WARM_CHILD), "--warmup", f"{warmup:g}"],
        ready_line="READY",
        ready_timeout_s=min(110.0, warmup + 60),
        stop_grace_s=2.0,
        warm=warm,
        env={"BENCH_GAP_FILE": str(notes)},
    )
    tag = uuid.uuid4().hex[:4]
    hosts = [f"wa-{tag}", f"wb-{tag}"]
    shared = topology == "hosts"
    workers = {h: Worker(env, h, log_dir, shared=shared) for h in hosts}
    await asyncio.gather(*(w.ready() for w in workers.values()))
    slow = 4 * interval + warmup + 90  # the longest a step here may take

    async def register(host: str, standby: bool) -> None:
        await register_again(client, name, host, interval, standby=standby, connector=spec)

    async def holder() -> dict[str, object]:
        raw, _ = await store.raw_status(ex_id)
        return json.loads(raw) if raw else {}

    async def active() -> dict[str, object]:
        deadline = time.monotonic() + slow
        while time.monotonic() < deadline:
            doc = await holder()
            if doc.get("connectionState") == "active":
                return doc
            await asyncio.sleep(0.05)
        raise RuntimeError("no active instance in time")

    async def standby_ready(host: str) -> None:
        """The standby on ``host`` is visible — and, warm, its connector is warmed up."""
        deadline = time.monotonic() + slow
        while time.monotonic() < deadline:
            for record in await store.standbys(ex_id):
                if record.host == host and (record.warm_ready or not warm):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the standby on {host} is not ready in time")

    mode = "warm" if warm else "cold"
    await register(hosts[0], False)
    await register(hosts[1], True)
    results: dict[str, list[float]] = {"crash": [], "detect": [], "handoff": []}
    for i in range(handoff_trials):
        doc = await active()
        source = str(doc["hostname"])
        target = hosts[1] if source == hosts[0] else hosts[0]
        await standby_ready(target)
        await asyncio.sleep(interval / 2)
        mark = time.monotonic()
        await control.handoff(
            client, exchange=name, to_host=target, from_host=source, default_host=target, shutdown=False
        )
        _, off = await note_after(notes, "inactive", mark, slow)
        _, on = await note_after(notes, "active", off, slow)
        results["handoff"].append(on - off)
        print(
            f"  {topology} {interval:g}s {mode} handoff {i + 1}/{handoff_trials}: gap {on - off:.3f}s",
            flush=True,
        )
    for i in range(crash_trials):
        doc = await active()
        victim = str(doc["hostname"])
        survivor = hosts[1] if victim == hosts[0] else hosts[0]
        await standby_ready(survivor)
        await asyncio.sleep(interval / 2)
        epoch = int(str(doc["epoch"]))
        killed = time.monotonic()
        workers[victim].kill()  # its child dies with it (parent-death signal): nobody acts from here
        claimed = None
        deadline = killed + slow
        while claimed is None and time.monotonic() < deadline:
            now = await holder()
            if now and int(str(now["epoch"])) > epoch:
                claimed = time.monotonic()
            else:
                await asyncio.sleep(0.02)
        if claimed is None:
            raise RuntimeError("the standby did not claim in time")
        _, on = await note_after(notes, "active", killed, slow)
        results["crash"].append(on - killed)
        results["detect"].append(claimed - killed)
        print(
            f"  {topology} {interval:g}s {mode} crash {i + 1}/{crash_trials}: gap {on - killed:.2f}s "
            f"(claimed after {claimed - killed:.2f}s)",
            flush=True,
        )
        workers[victim] = Worker(env, victim, log_dir, shared=shared)
        await workers[victim].ready()
        await register(victim, True)
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


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def warm_markdown(runs: list[dict[str, object]], args: argparse.Namespace, load: list[str]) -> str:
    med = statistics.median
    lines = [
        WARM_SECTION,
        "",
        f"`python -m bench.failover --warmup {args.warmup:g}` on {platform.node()} ({os.cpu_count()} cores, "
        f"shared with other work: load average before/after {load[0]} → {load[1]}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. A process connector "
        f"(bench/warm_child.py) whose warm-up takes {args.warmup:g} s; cold standbys against warm ones in "
        f"the same run; {args.crash_trials} crashes and {args.handoff_trials} handoffs per row. The gap is "
        '"no connector active", from the children\'s own notes (crash: from the SIGKILL of the active '
        "host's worker, whose child dies with it; handoff: from the moment the old child stops acting). "
        "Topology *hosts* is the README's (each host's worker also serves the workflows, no other "
        "worker); *dedicated* adds a shared workflow worker and the host workers serve only their "
        "hosts' activities.",
        "",
        "| topology | interval | standby | crash gap p50 (max) | of which detection p50 "
        "| handoff gap p50 (max) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        crash, detect, handoff = (list(run[k]) for k in ("crash", "detect", "handoff"))  # type: ignore[call-overload]
        lines.append(
            f"| {run['topology']} | {run['interval']:g} s | {run['mode']} | {med(crash):.2f} s "
            f"({max(crash):.2f} s) | {med(detect):.2f} s | {med(handoff):.3f} s ({max(handoff):.3f} s) |"
        )
    lines.append("")
    cases = sorted({(str(r["topology"]), float(r["interval"])) for r in runs}, key=lambda c: (c[0], -c[1]))  # type: ignore[arg-type]
    for topology, interval in cases:
        cold = next(
            r for r in runs if (r["topology"], r["interval"]) == (topology, interval) and r["mode"] == "cold"
        )
        warm = next(
            r for r in runs if (r["topology"], r["interval"]) == (topology, interval) and r["mode"] == "warm"
        )
        over = med(warm["crash"]) - med(warm["detect"])  # type: ignore[arg-type]
        lines.append(
            f"- {topology}, {interval:g} s: warm crash gap p50 {med(warm['crash']):.2f} s = its detection "  # type: ignore[arg-type]
            f"{med(warm['detect']):.2f} s + {over:.2f} s (target ≤ detection + 0.3 s: "  # type: ignore[arg-type]
            f"{'met' if over <= 0.3 else 'NOT met'}); cold crash gap p50 {med(cold['crash']):.2f} s; "  # type: ignore[arg-type]
            f"warm handoff gap p50 {med(warm['handoff']):.3f} s (≤ 1 s: "  # type: ignore[arg-type]
            f"{'met' if med(warm['handoff']) <= 1.0 else 'NOT met'}), cold {med(cold['handoff']):.2f} s."  # type: ignore[arg-type]
        )
    lines += [
        "",
        "Detection is the same for both (the standby's watch sees the dead holder's key pass its renew "
        "deadline plus the margin and claims over it, or the dead host's workflow — its heartbeat "
        "timeout (1.25 heartbeat periods of at least 15 s) plus a probe — releases and wakes it, "
        "whichever comes first); what "
        "follows it differs: a cold "
        "standby spawns its connector and waits out the whole warm-up, a warm one is sent "
        "`ACTIVATE <epoch>` once its claim is in the status key and acts on `ACTIVE`. A warm handoff "
        "demotes the old connector (`DEACTIVATE`) and promotes the warmed target, so the gap is the old "
        "side's two status writes, the release, and the target's claim → ACTIVATE → ACTIVE.",
        "",
    ]
    return "\n".join(lines)


async def warm_main(
    args: argparse.Namespace,
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    base: Path,
) -> None:
    load = [loadavg()]
    runs: list[dict[str, object]] = []
    for topology in args.topologies:
        # As in main(): only the dedicated topology has a workflow worker of its own.
        core = Worker(env, "core", base, shared=True) if topology == "dedicated" else None
        if core is not None:
            await core.ready()
        try:
            for interval in args.intervals:
                for warm in (False, True):
                    results = await warm_set(
                        client,
                        store,
                        env,
                        database_url,
                        interval,
                        warm=warm,
                        warmup=args.warmup,
                        crash_trials=args.crash_trials,
                        handoff_trials=args.handoff_trials,
                        log_dir=base,
                        topology=topology,
                    )
                    mode = "warm" if warm else "cold"
                    runs.append({"topology": topology, "interval": interval, "mode": mode, **results})
        finally:
            if core is not None:
                core.kill()
    load.append(loadavg())
    text = warm_markdown(runs, args, load)
    print(text)
    if not args.no_write:
        write_section(text, WARM_SECTION)
        WARM_JSON.write_text(
            json.dumps(
                {
                    "warmupS": args.warmup,
                    "cores": os.cpu_count(),
                    "loadAverage": load,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "runs": runs,
                },
                indent=2,
            )
            + "\n"
        )


async def scratch_servers(
    base: Path, children: list[services.Service], temporal_config: list[tuple[str, str]] | None = None
) -> tuple[dict[str, str], str, Client, RedisStore]:
    """Temporal, Redis and PostgreSQL of a bench's own under ``base`` (appended to ``children``,
    which the caller stops): the workers' environment, the database URL, a client and a store.
    ``temporal_config``: dev-server settings instead of Perseus' own (``--temporal-config``)."""
    settings = dict(temporal_config or [])
    children.append(await services.start_temporal(base / "temporal", None, None, dynamic_config=settings))
    children.append(await services.start_redis(base / "redis", None))
    children.append(await services.start_postgres(base / "postgres", None, scratch=True))
    tp, rp = children[0].port, children[1].port
    database_url = await services.ensure_database(children[2], "perseus")
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
    return env, database_url, client, RedisStore(make_client(f"redis://127.0.0.1:{rp}/0"))


#: The trial kinds of a set (``--kinds``), in the order they run.
KINDS = ("crash", "graceful", "handoff", "failed")


def kinds(text: str) -> list[str]:
    """``--kinds``: names from KINDS, comma-separated; anything else is refused."""
    names = [k for k in text.split(",") if k]
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown)!r}: use {', '.join(KINDS)}")
    return names


def topologies(text: str) -> list[str]:
    """``--topologies``: names from TOPOLOGIES, comma-separated; anything else is refused (a name the
    bench did not know once ran every host with ``--no-shared``, and no worker served the workflows)."""
    names = [t for t in text.split(",") if t]
    unknown = [t for t in names if t not in TOPOLOGIES]
    if unknown or not names:
        known = ", ".join(TOPOLOGIES)
        raise argparse.ArgumentTypeError(f"unknown topology {', '.join(unknown)!r}: use {known}")
    return names


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="perseus-failover-"))
    children: list[services.Service] = []
    core: Worker | None = None
    try:
        env, database_url, client, store = await scratch_servers(base, children, args.temporal_config)
        if args.warmup is not None:
            await warm_main(args, client, store, env, database_url, base)
            await store.client.aclose()
            return
        rows: list[tuple[str, float, str, list[float]]] = []
        load = [loadavg()]
        for topology in args.topologies:
            # Only the dedicated topology has a workflow worker of its own; the hosts topology must
            # have none, or the workflows would never sit on a host worker that dies.
            if topology == "dedicated":
                core = Worker(env, "core", base, shared=True)
                await core.ready()
            for interval in args.intervals:
                results = await trial_set(
                    client,
                    store,
                    env,
                    database_url,
                    interval,
                    args.trials,
                    base,
                    topology=topology,
                    kinds=tuple(args.kinds),
                )
                rows += [
                    (topology, interval, "crash → standby active", results["crash"]),
                    (topology, interval, "graceful stop → standby active", results["graceful"]),
                    (topology, interval, "best standby won", results["priority"]),
                    (topology, interval, "planned handoff", results["handoff"]),
                    (
                        topology,
                        interval,
                        "crash, best standby cannot start → next active",
                        results["failed promotion"],
                    ),
                ]
            if core is not None:
                core.kill()
                core = None
        load.append(loadavg())
        await store.client.aclose()
        text = markdown(rows, args.trials, load)
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
    parser.add_argument(
        "--topologies",
        type=topologies,
        default=list(TOPOLOGIES),
        help="hosts (the README's: host workers serve the workflows too), dedicated, or both",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--kinds",
        type=kinds,
        default=list(KINDS),
        help="which trials: crash, graceful, handoff, failed (a failed promotion); all by default",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="cold vs warm with a process connector warming up this long",
    )
    parser.add_argument("--crash-trials", type=int, default=3)
    parser.add_argument("--handoff-trials", type=int, default=5)
    add_temporal_config(parser)
    asyncio.run(main(parser.parse_args()))
