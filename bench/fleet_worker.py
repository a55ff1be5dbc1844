"""One bench process under measurement (its CPU and memory are read from outside with psutil).

Modes:

* ``perseus``  — the real composition root (:func:`worker.run_worker`, shared queue + host queue)
  with one bench-only change: ``worker.RedisStore`` is replaced by :class:`TimedRedisStore`, a
  subclass that timestamps each renewal (call time and round trip; a batch's for each claim in it)
  and passes it on unchanged. Production code carries no instrumentation.
* ``timer``    — the alternative design (:mod:`bench.timer_design`): a workflow timer + one activity
  per beat, on the same client, store and process layout.
* ``baseline`` — the floor: N plain asyncio loops with redis-py doing the same fenced Lua renewal on
  the same fixed schedule, no Temporal at all.

The process writes ``ready`` into ``--ready-file`` when it serves; on SIGUSR1 it dumps its samples as
JSON to ``--samples``. The bench driver kills it afterwards (its servers are scratch servers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psutil
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from perseus import tracing
from perseus.host.grid import Renewal
from perseus.keys import iso
from perseus.store.redis_store import FenceReply, RedisStore, make_client
from perseus.temporal import converter
from perseus.timing import ttl_ms


class Samples:
    """Renewals as parallel columns: key index, wall time, monotonic time, round trip, ok, due (wall)."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.key: list[int] = []
        self.wall: list[float] = []
        self.mono: list[float] = []
        self.rtt: list[float] = []
        self.ok: list[bool] = []
        self.due: list[float | None] = []

    def add(self, key: str, wall: float, mono: float, rtt: float, ok: bool, due: float | None) -> None:
        self.key.append(self.keys.setdefault(key, len(self.keys)))
        self.wall.append(wall)
        self.mono.append(mono)
        self.rtt.append(rtt)
        self.ok.append(ok)
        self.due.append(due)

    def dump(self, path: Path) -> None:
        data = {
            "key": self.key,
            "wall": self.wall,
            "mono": self.mono,
            "rtt": self.rtt,
            "ok": self.ok,
            "due": self.due,
            "mono_minus_wall": time.monotonic() - time.time(),
            "idle_rss": IDLE_RSS,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


SAMPLES = Samples()
IDLE_RSS = 0  # this process' RSS once its clients are connected, before it holds any instance


class TimedRedisStore(RedisStore):
    """Observes renewals (bench only): one extra timestamp pair around the unchanged call."""

    async def fenced(
        self,
        exchange_id: int,
        instance_id: str,
        epoch: int,
        *,
        mode: Literal["merge", "renew", "delete"],
        patch: dict[str, object] | None = None,
        ttl_ms: int = 0,
    ) -> FenceReply:
        if mode != "renew":
            return await super().fenced(
                exchange_id, instance_id, epoch, mode=mode, patch=patch, ttl_ms=ttl_ms
            )
        wall, mono = time.time(), time.monotonic()
        reply = await super().fenced(exchange_id, instance_id, epoch, mode=mode, patch=patch, ttl_ms=ttl_ms)
        rtt = time.monotonic() - mono
        if activity.in_activity():
            info = activity.info()
            key = f"{info.workflow_run_id}/{info.activity_id}/{info.attempt}"
        else:
            key = f"x{exchange_id}"
        SAMPLES.add(key, wall, mono, rtt, reply.outcome == "ok", None)
        return reply

    async def renew_many(self, renewals: list[Renewal]) -> list[FenceReply | Exception]:
        # The keeper's renewals leave in batches (perseus/host/grid.py): each claim's sample carries the
        # batch's call time and round trip, keyed by its exchange (the batch runs in no activity).
        wall, mono = time.time(), time.monotonic()
        replies = await super().renew_many(renewals)
        rtt = time.monotonic() - mono
        for r, reply in zip(renewals, replies, strict=True):
            ok = isinstance(reply, FenceReply) and reply.outcome == "ok"
            SAMPLES.add(f"x{r.exchange_id}", wall, mono, rtt, ok, None)
        return replies


async def connect(address: str, metrics_port: int) -> Client:
    # With tracing on (``--trace-file``), the SDK's tracing interceptor, as perseus.temporal adds it.
    interceptors = tracing.interceptors()
    if not metrics_port:
        return await Client.connect(address, data_converter=converter, interceptors=interceptors)
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}"))
    )
    return await Client.connect(address, data_converter=converter, runtime=runtime, interceptors=interceptors)


async def run_perseus(args: argparse.Namespace, stop: asyncio.Event, ready: asyncio.Event) -> None:
    import worker
    from perseus.config import load_settings

    worker.RedisStore = TimedRedisStore  # type: ignore[attr-defined]
    worker.tune_collector()  # as `perseus worker` does
    settings = load_settings(
        redis_url=args.redis_url,
        database_url=args.database_url,
        heartbeat_interval=args.interval,
        data_dir=Path(args.ready_file).parent / "perseus-data",
    )
    client = await connect(args.temporal, args.metrics_port)
    await worker.run_worker(settings, client, args.host, stop, shared_queue=not args.host_only, ready=ready)


async def run_timer(args: argparse.Namespace, stop: asyncio.Event, ready: asyncio.Event) -> None:
    from bench.timer_design import TIMER_QUEUE, TimerActivities, TimerHeartbeatWorkflow, timer_host_queue

    client = await connect(args.temporal, args.metrics_port)
    redis = make_client(args.redis_url)
    store = RedisStore(redis)

    def record(due: float, wall: float, mono: float, rtt: float, outcome: str) -> None:
        info = activity.info()
        SAMPLES.add(info.workflow_id or "", wall, mono, rtt, outcome == "ok", due)

    acts = TimerActivities(store, record)
    workers = [
        Worker(
            client,
            task_queue=TIMER_QUEUE,
            workflows=[TimerHeartbeatWorkflow],
            graceful_shutdown_timeout=timedelta(seconds=1),
        ),
        Worker(
            client,
            task_queue=timer_host_queue(args.host),
            activities=[acts.renew_once],
            max_concurrent_activities=2000,
            graceful_shutdown_timeout=timedelta(seconds=1),
        ),
    ]
    try:
        async with workers[0], workers[1]:
            ready.set()
            await stop.wait()
    finally:
        await redis.aclose()


async def run_baseline(args: argparse.Namespace, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """N asyncio tasks, each renewing its own claimed key on a fixed schedule (phases spread)."""
    redis = make_client(args.redis_url)
    store = RedisStore(redis)
    interval, ttl = args.interval, ttl_ms(args.interval)
    claims: list[tuple[int, str, int]] = []
    sem = asyncio.Semaphore(50)

    async def claim(exchange_id: int) -> None:
        async with sem:
            epoch = await store.next_epoch(exchange_id, 0)
            instance = str(uuid.uuid4())
            payload: dict[str, object] = {
                "exchangeId": exchange_id,
                "instanceId": instance,
                "epoch": epoch,
                "lastHeartbeat": iso(datetime.now(UTC)),
            }
            reply = await store.claim(exchange_id, payload, ttl)
            assert reply.outcome == "claimed", reply
            claims.append((exchange_id, instance, epoch))

    global IDLE_RSS
    await store.ping()
    IDLE_RSS = psutil.Process().memory_info().rss
    await asyncio.gather(*(claim(args.base_id + i) for i in range(args.n)))

    async def loop(index: int, exchange_id: int, instance: str, epoch: int) -> None:
        due = time.monotonic() + index * interval / len(claims)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        while True:
            wall, mono = time.time(), time.monotonic()
            reply = await store.fenced(
                exchange_id,
                instance,
                epoch,
                mode="renew",
                patch={"lastHeartbeat": iso(datetime.now(UTC))},
                ttl_ms=ttl,
            )
            SAMPLES.add(f"x{exchange_id}", wall, mono, time.monotonic() - mono, reply.outcome == "ok", None)
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    tasks = [asyncio.create_task(loop(i, *c)) for i, c in enumerate(claims)]
    ready.set()
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    samples_path = Path(args.samples)
    loop.add_signal_handler(signal.SIGUSR1, lambda: SAMPLES.dump(samples_path))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner: Any = {"perseus": run_perseus, "timer": run_timer, "baseline": run_baseline}[args.mode]
    provider = tracing.install("perseus-worker", "file", Path(args.trace_file)) if args.trace_file else None
    task = asyncio.create_task(runner(args, stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
        return
    Path(args.ready_file).write_text("ready")
    try:
        await task
    finally:
        tracing.shutdown(provider)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["perseus", "timer", "baseline"], required=True)
    p.add_argument("--temporal", default="")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--database-url", default="")
    p.add_argument("--host", default="bench-host")
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--base-id", type=int, default=50_000_000)
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--host-only", action="store_true", help="perseus: serve only the host queue")
    p.add_argument("--no-shared-mode", action="store_true", help="perseus: the unmeasured shared worker")
    p.add_argument(
        "--trace-file", default="", help="perseus: tracing on, spans to this file (perseus dev --trace)"
    )
    p.add_argument("--samples", required=True)
    p.add_argument("--ready-file", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(parse()))
