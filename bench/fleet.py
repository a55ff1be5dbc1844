"""Fleet benchmark (issue 8): how far one worker carries Perseus' heartbeats, against the floor.

``make bench`` (= ``python -m bench.fleet``) starts its own scratch servers (Temporal dev server,
Valkey, PostgreSQL, in a temporary folder), and for each configuration (N instances, heartbeat
interval, measured duration) runs three designs one after the other, each on fresh Temporal and
Redis servers and in its own measured worker process (:mod:`bench.fleet_worker`):

* ``perseus``  — the real thing: N synthetic exchanges in a scratch database, each registered and
  started (simulated connector) through :func:`perseus.client.control.register` against one worker
  (:func:`worker.run_worker`, shared + host queue); the heartbeat is the long-running lease activity;
* ``timer``    — the alternative design, a workflow timer + one activity per beat
  (:mod:`bench.timer_design`), same renewal, same worker layout;
* ``baseline`` — N plain asyncio loops doing the same Lua renewal with redis-py: the floor;
* ``perseus-split`` (optional) — as ``perseus``, but the measured worker serves only the host queue
  and a second process runs the workflows (the production layout in docs/deploy.md);
* ``lease`` (optional) — Perseus' steady state only: the measured process is the real host worker
  (host queue only), each claim is taken by the driver and held by the real ``hold_lease`` under a
  minimal workflow run by the driver (:mod:`bench.lease_design`). Comes up in a minute instead of
  registering every instance through its lifecycle; measures what a beat costs once all are active.

After a warm-up, one measured window of ``duration`` seconds yields: heartbeat lateness (renewal
call time − due time on the fixed schedule) p50/p99/max, renew round trip p50/p99, false expirations
(Redis ``expired`` keyspace events for a fleet key, plus failed renewals and keys missing at the end),
Redis commands per heartbeat (``INFO commandstats`` deltas), Temporal history events per
instance-hour (``DescribeWorkflowExecution`` history length on a sample), workflow/activity tasks per
second (the worker's own SDK metrics), CPU of the worker, the Temporal server and Redis, and worker
memory per instance. Results: JSON (``--json``), a markdown section in ``docs/benchmarks.md`` between
``<!-- fleet:begin -->``/``<!-- fleet:end -->`` (replaced on every run) and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.client import Client

from bench import add_temporal_config
from perseus import errors
from perseus.client import control
from perseus.devstack import services
from perseus.keys import SHARED_TASK_QUEUE, status_key, workflow_id
from perseus.models import ConnectorSpec
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter, register_search_attributes
from perseus.timing import ttl_ms

ROOT = Path(__file__).resolve().parents[1]
DESIGNS = ("perseus", "timer", "baseline")
OPTIONAL_DESIGNS = ("perseus-split", "lease")
HOST = "bench-host"
MARK_BEGIN, MARK_END = "<!-- fleet:begin -->", "<!-- fleet:end -->"
HISTORY_SAMPLE = 100
#: The lease design's claims live this long until the keeper's first renewal (see start_lease_fleet).
LEASE_CLAIM_TTL_MS = 600_000
FAST_CONNECTOR = ConnectorSpec(prepare_delay_s=0.05, warmup_delay_s=0.05, connect_delay_s=0.05)


@dataclass(frozen=True)
class FleetConfig:
    n: int
    interval: float
    duration: float

    @property
    def label(self) -> str:
        return f"N={self.n} @ {self.interval:g}s"

    @staticmethod
    def parse(text: str) -> FleetConfig:
        n, interval, duration = text.split(":")
        return FleetConfig(int(n), float(interval), float(duration))


DEFAULT_CONFIGS = [FleetConfig(1000, 15.0, 300.0), FleetConfig(200, 1.0, 120.0)]


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# --- servers --------------------------------------------------------------------------------------


@dataclass
class Stack:
    """Scratch servers for one design run (Temporal + Redis) and the shared PostgreSQL."""

    base: Path
    temporal: services.Service | None = None
    redis: services.Service | None = None
    worker: services.Service | None = None
    children: list[services.Service] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.kill() if child.name == "worker" else child.stop()
        self.children.clear()


async def start_design_servers(base: Path, temporal_config: list[tuple[str, str]] | None = None) -> Stack:
    stack = Stack(base)
    try:
        stack.temporal = await services.start_temporal(
            base / "temporal", None, None, dynamic_config=dict(temporal_config or [])
        )
        stack.children.append(stack.temporal)
        stack.redis = await services.start_redis(
            base / "redis", None, extra_args=["--notify-keyspace-events", "Ex"]
        )
        stack.children.append(stack.redis)
    except BaseException:
        stack.stop()
        raise
    return stack


def spawn_worker(
    stack: Stack, args: list[str], code: Path, name: str = "worker"
) -> tuple[services.Service, Path, Path]:
    """A bench process, run from ``code`` (a snapshot of the committed tree, see ``snapshot_code``)."""
    ready, samples = stack.base / f"{name}.ready", stack.base / f"{name}-samples.json"
    service = services.Service("worker", 0, stack.base / f"{name}.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [
        sys.executable,
        "-m",
        "bench.fleet_worker",
        *args,
        "--ready-file",
        str(ready),
        "--samples",
        str(samples),
    ]
    with open(service.log_path, "ab") as log_file:
        service.proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=code,  # ``python -m`` puts the working directory first on sys.path
            env=env,
            preexec_fn=services._die_with_parent,
            start_new_session=True,
        )
    if name == "worker":
        stack.worker = service
    stack.children.append(service)
    return service, ready, samples


async def wait_file(path: Path, service: services.Service, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if service.proc and service.proc.poll() is not None:
            raise RuntimeError(f"{what}: worker exited: {service.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out after {timeout:.0f}s")
        await asyncio.sleep(0.1)


# --- observations -------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    rss: dict[str, int]
    commandstats: dict[str, int]
    metrics: dict[str, float]
    history: dict[str, int]
    machine_busy: float = 0.0  # CPU seconds the whole machine spent not idle (all processes)
    load: float = 0.0


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def commandstats(redis: Any) -> dict[str, int]:
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


async def sdk_metrics(port: int | None) -> dict[str, float]:
    """Counters from the worker's Prometheus endpoint, summed over labels."""
    if not port:
        return {}
    out: dict[str, float] = {}
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name.endswith(("_count", "_total")) or "{" not in name_labels or name.endswith("_sum"):
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(value)
    return out


async def history_lengths(client: Client | None, ids: list[str]) -> dict[str, int]:
    if client is None or not ids:
        return {}
    sem = asyncio.Semaphore(20)

    async def one(wid: str) -> tuple[str, int]:
        async with sem:
            desc = await client.get_workflow_handle(wid).describe()
            return wid, desc.history_length

    return dict(await asyncio.gather(*(one(w) for w in ids)))


async def snapshot(
    pids: dict[str, int], redis: Any, metrics_port: int | None, client: Client | None, sample: list[str]
) -> Snapshot:
    at = time.time()
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["bench driver"] = cpu_seconds(os.getpid())
    rss = {name: int(psutil.Process(pid).memory_info().rss) for name, pid in pids.items()}
    total = psutil.cpu_times()
    busy = float(total.user + total.nice + total.system + total.irq + total.softirq + total.steal)
    return Snapshot(
        at,
        cpu,
        rss,
        await commandstats(redis),
        await sdk_metrics(metrics_port),
        await history_lengths(client, sample),
        busy,
        os.getloadavg()[0],
    )


class ExpiryWatch:
    """Counts Redis ``expired`` keyspace events for status keys (any of them is a false expiration:
    every holder in the fleet is alive for the whole run)."""

    def __init__(self, redis: Any) -> None:
        self.pubsub = redis.pubsub()
        self.expired: list[tuple[float, str]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.psubscribe("__keyevent@*__:expired")
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg and str(msg.get("data", "")).endswith(":status"):
                self.expired.append((time.time(), str(msg["data"])))

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pubsub.aclose()


# --- fleets ---------------------------------------------------------------------------------------


async def create_exchanges(database_url: str, prefix: str, n: int) -> list[tuple[str, int]]:
    conn = await db.connect(database_url)
    rows: list[tuple[str, int]] = []
    async with conn:
        for i in range(n):
            name = f"{prefix}{i:05d}"
            row = await (
                await conn.execute(
                    "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id",
                    (name, name.upper()),
                )
            ).fetchone()
            assert row is not None
            rows.append((name, int(row["id"])))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO exchange_symbols (exchange_id, symbol, base_currency, quote_currency) "
                "VALUES (%s, %s, %s, 'USD')",
                [(xid, f"{b}-USD", b) for _, xid in rows for b in ("BTC", "ETH", "SOL")],
            )
    return rows


async def register_perseus_fleet(
    client: Client,
    store: RedisStore,
    fleet: list[tuple[str, int]],
    cfg: FleetConfig,
    concurrency: int,
    host: str = HOST,
) -> dict[str, Any]:
    """Register (and start) every instance; returns what happened. A registration that fails is
    counted and reported, not fatal: the fleet is measured with the instances that became active."""
    sem = asyncio.Semaphore(concurrency)
    done = 0
    failures: dict[str, str] = {}

    async def one(name: str) -> None:
        nonlocal done
        async with sem:
            for attempt in range(3):
                try:
                    await control.register(
                        client,
                        exchange=name,
                        host=host,
                        admin_email=None,
                        heartbeat_interval_s=cfg.interval,
                        start=True,
                        connector=FAST_CONNECTOR,
                    )
                    break
                except errors.AlreadyRegistered:
                    break  # an earlier attempt started it; whether it got active is checked below
                except Exception as exc:  # noqa: BLE001 - report and retry a slow registration
                    log(f"  register {name} attempt {attempt + 1} failed: {exc}")
                    if attempt == 2:
                        failures[name] = str(exc)
                        return
            done += 1
            if done % max(1, len(fleet) // 10) == 0:
                log(f"  registered {done}/{len(fleet)}")

    await asyncio.gather(*(one(name) for name, _ in fleet))
    ids = [xid for _, xid in fleet]
    deadline = time.monotonic() + 300
    while True:  # start ran asynchronously in each workflow: wait until every instance is active
        board = await store.raw_statuses(ids)
        active = sum(1 for raw, _ in board if raw and json.loads(raw).get("connectionState") == "active")
        if active == len(ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    if active < len(ids):
        log(f"  only {active}/{len(ids)} instances became active; measuring those")
    return {
        "active": active,
        "registration_failures": len(failures),
        "failure_examples": list(failures.items())[:5],
    }


async def start_timer_fleet(
    client: Client, store: RedisStore, ids: list[int], cfg: FleetConfig, concurrency: int
) -> list[str]:
    from bench.timer_design import TIMER_QUEUE, TimerHeartbeatWorkflow, TimerInput

    sem = asyncio.Semaphore(concurrency)
    wids: list[str] = []

    async def one(xid: int) -> None:
        async with sem:
            epoch = await store.next_epoch(xid, 0)
            instance = str(uuid.uuid4())
            payload: dict[str, object] = {"exchangeId": xid, "instanceId": instance, "epoch": epoch}
            reply = await store.claim(xid, payload, ttl_ms(cfg.interval))
            assert reply.outcome == "claimed", reply
            wid = f"bench-timer-{xid}"
            await client.start_workflow(
                TimerHeartbeatWorkflow.run,
                TimerInput(
                    exchange_id=xid,
                    instance_id=instance,
                    epoch=epoch,
                    heartbeat_interval_s=cfg.interval,
                    ttl_ms=ttl_ms(cfg.interval),
                    host=HOST,
                ),
                id=wid,
                task_queue=TIMER_QUEUE,
            )
            wids.append(wid)

    await asyncio.gather(*(one(x) for x in ids))
    return wids


async def start_lease_fleet(
    client: Client, store: RedisStore, ids: list[int], cfg: FleetConfig, concurrency: int, host: str = HOST
) -> list[str]:
    from bench.lease_design import LEASE_QUEUE, LeaseInput, LeaseOnlyWorkflow

    sem = asyncio.Semaphore(concurrency)
    wids: list[str] = []

    async def one(xid: int) -> None:
        async with sem:
            epoch = await store.next_epoch(xid, 0)
            instance = str(uuid.uuid4())
            payload: dict[str, object] = {
                "exchangeId": xid,
                "instanceId": instance,
                "epoch": epoch,
                "connectionState": "active",
            }
            # A long first TTL: a thousand lease activities take the dev server a minute or more to
            # dispatch, and what is measured here is the beat, not that ramp. The keeper's first
            # renewal sets the real TTL.
            reply = await store.claim(xid, payload, LEASE_CLAIM_TTL_MS)
            assert reply.outcome == "claimed", reply
            wid = f"bench-lease-{xid}"
            await client.start_workflow(
                LeaseOnlyWorkflow.run,
                LeaseInput(
                    exchange_id=xid,
                    instance_id=instance,
                    epoch=epoch,
                    heartbeat_interval_s=cfg.interval,
                    host=host,
                ),
                id=wid,
                task_queue=LEASE_QUEUE,
            )
            wids.append(wid)

    await asyncio.gather(*(one(x) for x in ids))
    # Until every claim has had its first renewal, or a minute without progress (a lease the
    # loaded dev server never dispatches must not hold the run for long).
    renewed, stalled_since = -1, time.monotonic()
    while time.monotonic() - stalled_since < 60:
        board = await store.raw_statuses(ids)
        now_renewed = sum(1 for raw, pttl in board if raw and 0 < pttl <= ttl_ms(cfg.interval))
        if now_renewed == len(ids):
            renewed = now_renewed
            break
        if now_renewed > renewed:
            renewed, stalled_since = now_renewed, time.monotonic()
        await asyncio.sleep(1)
    if renewed < len(ids):
        log(f"  only {renewed}/{len(ids)} leases renewed; measuring those")
    return wids


# --- one design run -------------------------------------------------------------------------------


def snapshot_code(dest: Path) -> str:
    """Export the committed tree (``git archive HEAD``) to ``dest`` and return the commit.

    The measured workers run from this copy: the checkout may be edited while a long run goes on
    (Temporal's sandbox re-imports the workflow module for every new workflow run, so a half-edited
    working tree would otherwise leak into the benchmark).
    """
    dest.mkdir(parents=True)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return commit


async def run_design(
    design: str, cfg: FleetConfig, base: Path, database_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    base.mkdir(parents=True)
    stack = await start_design_servers(base, args.temporal_config)
    assert stack.temporal and stack.redis
    redis_url = f"redis://127.0.0.1:{stack.redis.port}/0"
    redis = make_client(redis_url)
    store = RedisStore(redis)
    watch = ExpiryWatch(redis)
    client: Client | None = None
    drivers = contextlib.AsyncExitStack()
    result: dict[str, Any] = {
        "design": design,
        "n": cfg.n,
        "interval_s": cfg.interval,
        "duration_s": cfg.duration,
    }
    try:
        await watch.start()
        metrics_port = services.free_port() if design != "baseline" else None
        temporal_address = f"127.0.0.1:{stack.temporal.port}"
        if design != "baseline":
            client = await Client.connect(temporal_address, data_converter=converter)
            await register_search_attributes(client)
        base_id = 50_000_000
        mode = "perseus" if design in ("perseus-split", "lease") else design
        worker_args = [
            "--mode",
            mode,
            "--temporal",
            temporal_address,
            "--redis-url",
            redis_url,
            "--database-url",
            database_url,
            "--host",
            HOST,
            "--interval",
            str(cfg.interval),
            "--n",
            str(cfg.n),
            "--base-id",
            str(base_id),
            "--metrics-port",
            str(metrics_port or 0),
        ]
        shared_worker: services.Service | None = None
        if design == "perseus-split":
            # The production layout: this host's worker serves only its host queue (leases,
            # connectors); workflows and shared activities run in another process.
            shared_args = [*worker_args, "--no-shared-mode"]
            shared_args[shared_args.index("--host") + 1] = "bench-shared"
            shared_args[shared_args.index("--metrics-port") + 1] = "0"
            shared_worker, shared_ready, _ = spawn_worker(stack, shared_args, args.code, name="shared")
            worker_args.append("--host-only")
        if design == "lease":
            worker_args.append("--host-only")
        worker, ready, samples_path = spawn_worker(stack, worker_args, args.code)
        assert worker.proc
        if shared_worker is not None:
            await wait_file(shared_ready, shared_worker, 60, "shared worker")
        # Idle footprint first (the baseline claims its keys before it is ready: no idle figure).
        await wait_file(ready, worker, 300 if design == "baseline" else 60, f"{design} worker")
        idle_rss = psutil.Process(worker.proc.pid).memory_info().rss
        t_reg = time.monotonic()
        sample: list[str] = []
        if design in ("perseus", "perseus-split"):
            assert client
            prefix = f"bx{uuid.uuid4().hex[:6]}_"
            fleet = await create_exchanges(database_url, prefix, cfg.n)
            ids = [xid for _, xid in fleet]
            log(f"  registering {cfg.n} instances (concurrency {args.concurrency}) ...")
            result.update(await register_perseus_fleet(client, store, fleet, cfg, args.concurrency))
            wids = [workflow_id(name, HOST) for name, _ in fleet]
        elif design == "lease":
            assert client
            from temporalio.worker import Worker

            from bench.lease_design import LEASE_QUEUE, LeaseOnlyWorkflow

            # The minimal workflows run here, in the driver: the measured process is the host worker.
            lease_worker = Worker(client, task_queue=LEASE_QUEUE, workflows=[LeaseOnlyWorkflow])
            await drivers.enter_async_context(lease_worker)
            ids = [base_id + i for i in range(cfg.n)]
            log(f"  starting {cfg.n} leases ...")
            wids = await start_lease_fleet(client, store, ids, cfg, args.concurrency)
        elif design == "timer":
            assert client
            ids = [base_id + i for i in range(cfg.n)]
            log(f"  starting {cfg.n} timer workflows ...")
            wids = await start_timer_fleet(client, store, ids, cfg, args.concurrency)
        else:
            ids = [base_id + i for i in range(cfg.n)]
            wids = []
        result["setup_s"] = round(time.monotonic() - t_reg, 1)
        log(f"  fleet up in {result['setup_s']}s")
        sample = random.Random(1).sample(wids, min(HISTORY_SAMPLE, len(wids))) if wids else []
        warmup = args.warmup if args.warmup is not None else max(10.0, 2 * cfg.interval + 5)
        log(f"  warm-up {warmup:.0f}s")
        await asyncio.sleep(warmup)
        pids = {"worker": worker.proc.pid, "redis": stack.redis.pid() or 0}
        if design != "baseline":
            pids["temporal"] = stack.temporal.pid() or 0
        if shared_worker is not None and shared_worker.proc:
            pids["shared worker"] = shared_worker.proc.pid
        first = await snapshot(pids, redis, metrics_port, client, sample)
        log(f"  measuring {cfg.duration:.0f}s")
        await asyncio.sleep(cfg.duration)
        last = await snapshot(pids, redis, metrics_port, client, sample)
        # A renewal missed inside the window shows as an expiry up to a TTL after it; the sample
        # dump that follows may hold the worker's loop past the renew deadline on a slow machine
        # (1,000 × 1 s, 2026-12-07: every key expired 2 s after the window), which is the bench's
        # doing, not the fleet's. So the expiries counted are those seen a TTL after the window.
        await asyncio.sleep(ttl_ms(cfg.interval) / 1000 + 0.5)
        expired = list(watch.expired)
        board = await store.raw_statuses(ids)
        missing_at_end = [status_key(xid) for xid, (raw, _) in zip(ids, board, strict=True) if raw is None]
        worker.proc.send_signal(signal.SIGUSR1)
        await wait_file(samples_path, worker, 60, "samples")
        breakdown, timer_delays = await event_breakdown(client, sample[:3], first.at, last.at)
        result.update(
            analyse(
                design,
                cfg,
                json.loads(samples_path.read_text()),
                first,
                last,
                idle_rss,
                expired,
                missing_at_end,
            )
        )
        result["history_event_types_per_instance_hour"] = breakdown
        if timer_delays:
            result["server_timer_fire_delay_ms"] = {
                "p50": ms(pct(timer_delays, 50)),
                "p99": ms(pct(timer_delays, 99)),
                "max": ms(max(timer_delays)),
                "timers": len(timer_delays),
            }
        return result
    except BaseException:
        # Keep the logs of a failed run next to the JSON for a post-mortem.
        keep = Path(tempfile.gettempdir()) / "perseus-bench-failed" / base.name
        keep.mkdir(parents=True, exist_ok=True)
        for log_file in base.rglob("*.log"):
            shutil.copy(log_file, keep / f"{log_file.parent.name}-{log_file.name}")
        log(f"  {design} failed; logs in {keep}")
        raise
    finally:
        await watch.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drivers.aclose(), 15)
        await redis.aclose()
        stack.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


async def event_breakdown(
    client: Client | None, wids: list[str], t0: float, t1: float
) -> tuple[dict[str, float], list[float]]:
    """History events by type inside the window, per instance-hour (from a few full histories), and
    how late the server fired each durable timer (TimerFired time − TimerStarted time − duration)."""
    if client is None or not wids:
        return {}, []
    counts: dict[str, int] = {}
    timer_delays: list[float] = []
    for wid in wids:
        history = await client.get_workflow_handle(wid).fetch_history()
        timers: dict[str, float] = {}
        for event in history.events:
            at = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
            kind = event.WhichOneof("attributes") or str(event.event_type)
            if kind == "timer_started_event_attributes":
                attrs = event.timer_started_event_attributes
                timers[attrs.timer_id] = at + attrs.start_to_fire_timeout.ToTimedelta().total_seconds()
            elif kind == "timer_fired_event_attributes":
                due = timers.pop(event.timer_fired_event_attributes.timer_id, None)
                if due is not None and t0 <= at <= t1:
                    timer_delays.append(at - due)
            if t0 <= at <= t1:
                name = kind.removesuffix("_event_attributes")
                counts[name] = counts.get(name, 0) + 1
    hours = len(wids) * (t1 - t0) / 3600
    return {k: round(v / hours, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}, timer_delays


def analyse(
    design: str,
    cfg: FleetConfig,
    samples: dict[str, Any],
    first: Snapshot,
    last: Snapshot,
    idle_rss: int,
    expired: list[tuple[float, str]],
    missing_at_end: list[str],
) -> dict[str, Any]:
    window = last.at - first.at
    offset = samples["mono_minus_wall"]
    m0, m1 = first.at + offset, last.at + offset
    # Lateness: for the lease and the baseline, the schedule is anchored at a key's first renewal
    # (the loop's own start) and advances one interval per slot; the timer design carries its due
    # time (wall clock) with each activity. A renewal is measured against its own slot: the slot
    # after the previous renewal's, or as many slots on as the gap spans when renewals are missing
    # (a batch cut short at its bound records no sample). Counting samples instead would read every
    # later renewal of that key one interval late; the missing ones are counted as skipped slots.
    per_key: dict[int, list[int]] = {}
    for i, key in enumerate(samples["key"]):
        per_key.setdefault(key, []).append(i)
    lateness: list[float] = []
    gaps: list[float] = []
    skipped = 0
    for idx in per_key.values():
        idx.sort(key=lambda i: samples["mono"][i])
        start = samples["mono"][idx[0]]
        slot = 0
        for k, i in enumerate(idx):
            mono = samples["mono"][i]
            if k:
                gap = mono - samples["mono"][idx[k - 1]]
                # The nearest slot, never the previous one's: lateness past half an interval would
                # read as the next slot's earliness, but the longest gap (below) still shows it.
                step = max(1, round((mono - start) / cfg.interval) - slot)
                slot += step
                if m0 <= mono <= m1:
                    gaps.append(gap)
                    skipped += step - 1
            if not m0 <= mono <= m1:
                continue
            due = samples["due"][i]
            if due is not None:
                lateness.append(samples["wall"][i] - due)
            else:
                lateness.append(mono - (start + slot * cfg.interval))
    in_window = [i for i, mono in enumerate(samples["mono"]) if m0 <= mono <= m1]
    rtts = [samples["rtt"][i] for i in in_window]
    failed = sum(1 for i in in_window if not samples["ok"][i])
    renewals = len(in_window)
    calls = {
        k: last.commandstats.get(k, 0) - first.commandstats.get(k, 0)
        for k in set(last.commandstats) | set(first.commandstats)
    }
    calls = {k: v for k, v in calls.items() if v and k not in ("info", "psubscribe", "subscribe")}
    cpu = {k: last.cpu[k] - first.cpu[k] for k in last.cpu}
    history_delta = [last.history[w] - first.history[w] for w in first.history if w in last.history]

    def metric(*needles: str) -> float | None:
        names = [n for n in last.metrics if all(s in n for s in needles) and n.endswith("_count")]
        if not names:
            return None
        return sum(last.metrics[n] - first.metrics.get(n, 0.0) for n in names) / window

    instance_hours = cfg.n * window / 3600
    worker_rss = last.rss.get("worker", 0)
    return {
        "window_s": round(window, 1),
        "renewals": renewals,
        "expected_renewals": round(cfg.n * window / cfg.interval),
        "lateness_ms": {
            "p50": ms(pct(lateness, 50)),
            "p99": ms(pct(lateness, 99)),
            "max": ms(max(lateness, default=0)),
        },
        "renew_rtt_ms": {"p50": ms(pct(rtts, 50)), "p99": ms(pct(rtts, 99)), "max": ms(max(rtts, default=0))},
        "max_gap_between_renewals_s": round(max(gaps, default=0.0), 3),
        "skipped_slots": skipped,
        "ttl_s": 3 * cfg.interval,
        # Distinct status keys that expired (keyspace event) or were gone at the end.
        "false_expirations": len({key for _, key in expired} | set(missing_at_end)),
        "expired_events": len(expired),
        # Where they happened: while the fleet was enrolled and warming up, or in the measured window.
        "expired_before_window": len({key for at, key in expired if at < first.at}),
        "expired_in_window": len({key for at, key in expired if at >= first.at}),
        "keys_missing_at_end": len(missing_at_end),
        "failed_renewals": failed,
        "redis_calls_per_heartbeat": {k: round(v / renewals, 3) for k, v in sorted(calls.items())}
        if renewals
        else {},
        "redis_client_round_trips_per_heartbeat": round(
            (calls.get("evalsha", 0) + calls.get("eval", 0) + calls.get("ping", 0)) / renewals, 3
        )
        if renewals
        else None,
        "history_events_per_instance_hour": round(sum(history_delta) / len(history_delta) * 3600 / window, 1)
        if history_delta
        else None,
        "history_events_per_beat": round(sum(history_delta) / len(history_delta) / (window / cfg.interval), 2)
        if history_delta
        else None,
        "workflow_tasks_per_s": round(v, 2)
        if (v := metric("workflow_task_execution_latency")) is not None
        else None,
        "activity_tasks_per_s": round(v, 2)
        if (v := metric("activity_execution_latency")) is not None
        else None,
        "cpu_cores": {k: round(v / window, 4) for k, v in cpu.items()},
        # Everything else on the machine in the window (other users' jobs skew a shared machine).
        "other_processes_cores": round(
            (last.machine_busy - first.machine_busy - sum(cpu.values())) / window, 3
        ),
        "load_average_1m": [round(first.load, 2), round(last.load, 2)],
        "worker_cpu_ms_per_heartbeat": round(cpu["worker"] / renewals * 1000, 4) if renewals else None,
        "worker_cpu_us_per_instance_s": round(cpu["worker"] / (cfg.n * window) * 1e6, 2),
        "worker_rss_mb": round(worker_rss / 2**20, 1),
        "worker_rss_kb_per_instance": round(
            (worker_rss - (samples.get("idle_rss") or idle_rss)) / cfg.n / 1024, 1
        ),
        "instance_hours_measured": round(instance_hours, 2),
    }


# --- report ---------------------------------------------------------------------------------------


def targets(by: dict[str, dict[str, Any]], cfg: FleetConfig) -> list[tuple[str, str, bool | None]]:
    p, b = by.get("perseus") or by.get("lease"), by.get("baseline")
    out: list[tuple[str, str, bool | None]] = []
    if not p:
        return out
    out.append(("lateness p99 < 250 ms", f"{p['lateness_ms']['p99']} ms", p["lateness_ms"]["p99"] < 250))
    out.append(("zero false expirations", str(p["false_expirations"]), p["false_expirations"] == 0))
    out.append(("worker < 0.5 core", f"{p['cpu_cores']['worker']:.3f} cores", p["cpu_cores"]["worker"] < 0.5))
    rt = p["redis_client_round_trips_per_heartbeat"]
    out.append(("1 Redis round trip per heartbeat", f"{rt}", rt is not None and abs(rt - 1) < 0.05))
    h = p["history_events_per_instance_hour"]
    out.append(("history << 100 events/instance-hour", f"{h}", h is not None and h < 100))
    if b:
        ratio = p["cpu_cores"]["worker"] / max(b["cpu_cores"]["worker"], 1e-9)
        out.append(("heartbeat CPU <= 2x baseline (issue 18)", f"{ratio:.2f}x", ratio <= 2))
    return out


def dash(value: object) -> str:
    return "–" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        MARK_BEGIN,
        "## Fleet",
        "",
        f"`make bench` (`python -m bench.fleet`), run {report['started']} on {report['machine']}. "
        "Each design ran on fresh Temporal dev server + Valkey processes with one measured worker process; "
        "lateness = renewal call time − due time on the fixed schedule; CPU in cores (1.0 = one core busy). "
        "`perseus` = long-running lease activity (DESIGN §3), `timer` = workflow timer + one activity per "
        "beat, `baseline` = plain asyncio + redis-py loops doing the same Lua renewal.",
        "",
    ]
    for run in report["runs"]:
        cfg = FleetConfig(run["n"], run["interval_s"], run["duration_s"])
        lines += [
            f"### {cfg.label}, {cfg.duration:g} s measured{', ' + run['label'] if run.get('label') else ''} "
            f"(run {run.get('started', '?')}, code {str(run.get('code', '?'))[:10]})",
            "",
        ]
        lines += [
            "| design | lateness p50 / p99 / max (ms) | renew RTT p50 / p99 (ms) | false exp. "
            "| Redis calls / beat (client round trips) | history ev. / inst-h | wf tasks/s "
            "| worker CPU (cores) | Temporal CPU | Redis CPU | worker RSS (KiB/inst) | CPU vs baseline "
            "| other load (cores) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by = {d["design"]: d for d in run["designs"]}
        base_cpu = by["baseline"]["cpu_cores"]["worker"] if "baseline" in by else None
        for d in run["designs"]:
            lat, rtt, cpu = d["lateness_ms"], d["renew_rtt_ms"], d["cpu_cores"]
            calls = sum(d["redis_calls_per_heartbeat"].values())
            ratio = f"{cpu['worker'] / base_cpu:.1f}×" if base_cpu else "–"
            lines.append(
                f"| {d['design']} | {lat['p50']} / {lat['p99']} / {lat['max']} "
                f"| {rtt['p50']} / {rtt['p99']} | "
                f"{d['false_expirations']} | {calls:.2f} ({d['redis_client_round_trips_per_heartbeat']}) | "
                f"{dash(d['history_events_per_instance_hour'])} | {dash(d['workflow_tasks_per_s'])} | "
                f"{cpu['worker']:.3f} | {cpu.get('temporal', 0):.3f} | {cpu['redis']:.3f} | "
                f"{d['worker_rss_kb_per_instance']} | {ratio} | {dash(d.get('other_processes_cores'))} |"
            )
        lines.append("")
        checks = [] if run.get("label") else targets(by, cfg)
        if checks:
            lines.append(
                "Against the issue's targets (set for N=1,000 at 15 s): "
                + "; ".join(f"{name}: **{value}** {'✅' if ok else '❌'}" for name, value, ok in checks)
            )
            lines.append("")
    lines += [f"![fleet benchmark]({report['plot']})", "", f"Raw figures: `{report['json']}`.", "", MARK_END]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def draw(report: dict[str, Any], path: Path) -> None:
    from bench.plot import Canvas, bar_panel

    runs = [r for r in report["runs"] if not r.get("label")] or report["runs"]
    width, panel_h = 1100, 330
    canvas = Canvas(width, panel_h * 2 + 20)
    half = width // 2
    for col, run in enumerate(runs[:2]):
        cfg = FleetConfig(run["n"], run["interval_s"], run["duration_s"])
        designs = [d["design"] for d in run["designs"]]
        bar_panel(
            canvas,
            (col * half + 10, 10, (col + 1) * half - 10, panel_h),
            f"LATENESS {cfg.label}",
            designs,
            ["p50", "p99", "max"],
            [[max(d["lateness_ms"][k] or 0.0, 0.01) for k in ("p50", "p99", "max")] for d in run["designs"]],
            log=True,
            unit="ms (log)",
            reference=250.0,
        )
        bar_panel(
            canvas,
            (col * half + 10, panel_h + 20, (col + 1) * half - 10, 2 * panel_h + 10),
            f"CPU {cfg.label}",
            designs,
            ["worker", "temporal", "redis"],
            [
                [d["cpu_cores"].get(k, 0.0) * 100 for k in ("worker", "temporal", "redis")]
                for d in run["designs"]
            ],
            log=False,
            unit="% of a core",
            reference=50.0,
        )
    canvas.save(path)


# --- main -----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configs = [FleetConfig.parse(c) for c in args.config] if args.config else DEFAULT_CONFIGS
    if args.n or args.interval or args.duration:
        d = DEFAULT_CONFIGS[0]
        configs = [FleetConfig(args.n or d.n, args.interval or d.interval, args.duration or d.duration)]
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    for d in designs:
        if d not in DESIGNS + OPTIONAL_DESIGNS:
            raise SystemExit(f"unknown design {d!r}: choose from {', '.join(DESIGNS + OPTIONAL_DESIGNS)}")
    base = Path(tempfile.mkdtemp(prefix="perseus-bench-"))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "shared_task_queue": SHARED_TASK_QUEUE,
        "runs": [],
        "json": os.path.relpath(args.json, ROOT),
        "plot": os.path.relpath(args.plot, Path(args.markdown).parent) if args.plot else "",
    }
    previous = Path(args.json)
    if args.merge and previous.exists():
        with contextlib.suppress(ValueError, KeyError):
            report["runs"] = [r for r in json.loads(previous.read_text())["runs"] if r.get("designs")]
    if args.live_code:
        args.code = ROOT
        report["code"] = "working tree"
    else:
        args.code = base / "code"
        report["code"] = snapshot_code(args.code)
    pg = await services.start_postgres(base / "postgres", None, scratch=True)
    try:
        database_url = await services.ensure_database(pg, "perseus_bench")
        await db.apply_schema(database_url)
        for cfg in configs:
            run: dict[str, Any] = {
                "n": cfg.n,
                "interval_s": cfg.interval,
                "duration_s": cfg.duration,
                "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "code": report["code"],
                "label": args.label,
                "registration_concurrency": args.concurrency,
                "designs": [],
            }
            # A configuration measured again replaces its previous figures; others are kept.
            report["runs"] = [
                r
                for r in report["runs"]
                if (r["n"], r["interval_s"], r.get("label", "")) != (cfg.n, cfg.interval, args.label)
            ] + [run]
            for design in designs:
                log(f"{cfg.label}, {cfg.duration:g}s: {design}")
                result = await run_design(
                    design, cfg, base / f"{cfg.n}-{cfg.interval:g}-{design}", database_url, args
                )
                run["designs"].append(result)
                log(
                    f"  lateness p50/p99/max {result['lateness_ms']} ms; "
                    f"worker {result['cpu_cores']['worker']:.3f} cores; "
                    f"false expirations {result['false_expirations']}; "
                    f"history/inst-h {result['history_events_per_instance_hour']}"
                )
                Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        draw(report, Path(args.plot))
    if args.markdown and not args.no_markdown:
        write_markdown(Path(args.markdown), markdown(report))
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        action="append",
        metavar="N:INTERVAL:DURATION",
        help="a fleet configuration (repeatable); default 1000:15:300 and 200:1:120",
    )
    p.add_argument("--n", type=int, help="instances (single configuration)")
    p.add_argument("--interval", type=float, help="heartbeat interval in seconds (single configuration)")
    p.add_argument("--duration", type=float, help="measured seconds (single configuration)")
    p.add_argument(
        "--designs",
        default=",".join(DESIGNS),
        help="comma-separated, from perseus,timer,baseline (default), perseus-split "
        "(host worker alone, workflows in a second process) and lease (the steady state only)",
    )
    p.add_argument(
        "--warmup", type=float, help="seconds between fleet start and the window (default 2×interval+5)"
    )
    p.add_argument("--concurrency", type=int, default=32, help="concurrent registrations")
    p.add_argument(
        "--label", default="", help="names an extra run of a configuration (kept beside the plain one)"
    )
    p.add_argument("--json", default=str(ROOT / "docs" / "fleet-benchmark.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "fleet-benchmark.png"))
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-markdown", action="store_true", help="don't touch docs/benchmarks.md")
    p.add_argument("--render-only", action="store_true", help="only redraw markdown + plot from --json")
    p.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="drop the other configurations' figures found in --json (default: keep them)",
    )
    p.add_argument(
        "--live-code",
        action="store_true",
        help="run the workers from the working tree instead of a snapshot of HEAD",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, databases)")
    add_temporal_config(p)
    return p.parse_args(argv)


def render(args: argparse.Namespace) -> None:
    """Rewrite the markdown section and the plot from the JSON of earlier runs (no measuring)."""
    report = json.loads(Path(args.json).read_text())
    report["plot"] = os.path.relpath(args.plot, Path(args.markdown).parent)
    draw(report, Path(args.plot))
    write_markdown(Path(args.markdown), markdown(report))


if __name__ == "__main__":
    arguments = parse()
    if arguments.render_only:
        render(arguments)
    else:
        print(json.dumps(asyncio.run(main(arguments)), indent=2))
