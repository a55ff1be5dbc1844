"""A worker's /healthz and /readyz, probed the way Kubernetes or a load balancer would.

The worker runs as `perseus worker --metrics-port` against a private Temporal and a Redis of this
test's own, so the Redis can be paused and frozen without touching anyone else: with its writes
paused (`CLIENT PAUSE … WRITE`: PING still answers, renewals hang) the keeper stalls and /readyz
must say so before the renew deadline stops the connector; with the process stopped (SIGSTOP) the
Redis check fails. /healthz answers throughout: the worker's own loop is fine in both.
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from perseus.client import control
from perseus.devstack import services
from perseus.devstack.services import free_port
from perseus.store.redis_store import RedisStore, make_client
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import PrivateTemporal, active_on, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: Long enough that the half interval between "not ready" and the renew deadline is a wide margin
#: for a probe on a loaded machine.
INTERVAL = 3.0


async def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{port}{path}", timeout=15)
    return reply.status_code, reply.json()


def failed(body: dict[str, object]) -> list[str]:
    names = body["failed"]
    assert isinstance(names, list)
    return [str(n) for n in names]


def checks(body: dict[str, object]) -> list[dict[str, object]]:
    value = body["checks"]
    assert isinstance(value, list)
    return value


def check(body: dict[str, object], name: str) -> dict[str, object]:
    return next(c for c in checks(body) if c["name"] == name)


async def test_readyz_sees_a_stalled_keeper_and_a_frozen_redis_while_healthz_stays_up(
    servers: Servers,
    temporal: PrivateTemporal,
    own_redis: services.Service,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.port}", "PERSEUS_REDIS_URL": redis_url}
    host, port = host_name("health"), free_port()
    worker = WorkerProcess(servers, host, shared=True, extra_env=env, args=("--metrics-port", str(port)))
    worker_processes.append(worker)
    await worker.ready()
    redis = make_client(redis_url)
    store = RedisStore(redis)
    watching: asyncio.Task[None] | None = None
    try:
        ex_id = await exchange_id(servers, exchange)
        await control.register(
            temporal.client,
            exchange=exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=True,
            standby=False,
        )
        await wait_for(lambda: active_on(store, ex_id, host), timeout=60)

        async def ready() -> dict[str, object] | None:
            code, body = await probe(port, "/readyz")
            return body if code == 200 else None

        body = await wait_for(ready, timeout=60)
        assert body["status"] == "ready" and failed(body) == []
        assert {c["name"] for c in checks(body)} == {"temporal", "redis", "keeper", "watchdog"}
        assert "1 claim(s) renewed on time" in str(check(body, "keeper")["detail"])

        # /healthz, asked all along beside the readiness probes: it must answer 200 every time.
        live: list[int] = []

        async def liveness() -> None:
            while True:
                live.append((await probe(port, "/healthz"))[0])
                await asyncio.sleep(0.2)

        watching = asyncio.create_task(liveness())

        # 1. The keeper stalls: Redis answers PING, but no renewal gets through.
        await redis.execute_command("CLIENT", "PAUSE", int(2.5 * INTERVAL * 1000), "WRITE")

        async def keeper_unready() -> dict[str, object] | None:
            code, body = await probe(port, "/readyz")
            return body if code == 503 else None

        body = await wait_for(keeper_unready, timeout=4 * INTERVAL)
        assert failed(body) == ["keeper"], body
        assert check(body, "redis")["ok"] is True
        # Said before the renew deadline (2 intervals), which is when the connector is stopped and
        # the claim may be lost: the probe warns while there is still something to save.
        age = check(body, "keeper")["seconds"]
        assert isinstance(age, float) and 1.5 * INTERVAL < age < 2 * INTERVAL, body

        await wait_for(ready, timeout=60)  # the pause ends; renewals (or a reclaim) resume

        # 2. Redis freezes: the process is stopped, so nothing answers at all.
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:

            async def redis_unready() -> dict[str, object] | None:
                code, body = await probe(port, "/readyz")
                return body if code == 503 and "redis" in failed(body) else None

            body = await wait_for(redis_unready, timeout=4 * INTERVAL)
            assert "no answer within" in str(check(body, "redis")["detail"]), body
            assert check(body, "temporal")["ok"] is True
            healthz_code, alive = await probe(port, "/healthz")
            assert healthz_code == 200 and alive["status"] == "ok"
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await wait_for(ready, timeout=60)
        assert len(live) > 10 and set(live) == {200}, live
    finally:
        if watching is not None:
            watching.cancel()
        await redis.aclose()
