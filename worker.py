"""The composition root of a worker: opens Redis, PostgreSQL, HTTP and Temporal clients, builds the
activity classes around them, runs the shared-queue and host-queue workers, and closes everything.

On SIGTERM/SIGINT the worker shuts down gracefully: every instance workflow whose lease runs here is
told that the host is going away, so it stops its connector, writes ``stopping → stopped`` and
releases its claim *before* the worker stops polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import timedelta

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.catalog import CatalogActivities
from activities.host import HostActivities
from activities.notify import NotifyActivities
from activities.registry import RegistryActivities
from perseus.config import Settings
from perseus.connectors.base import ConnectorHost
from perseus.connectors.process import output_dir
from perseus.connectors.watchdog import Watchdog
from perseus.enrol import enrolment
from perseus.keeper import LeaseKeeper, WorkflowClosed
from perseus.keys import SHARED_TASK_QUEUE, host_task_queue
from perseus.metrics import MetricsServer
from perseus.notify import discord_notifier
from perseus.store.db import Catalog, make_pool, open_pool
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import RPC_TIMEOUT
from workflows.instance import InstanceWorkflow

log = logging.getLogger("perseus.worker")

GRACEFUL_RELEASE_S = 30.0


async def run_worker(
    settings: Settings,
    client: Client,
    host: str,
    stop: asyncio.Event,
    *,
    shared_queue: bool = True,
    ready: asyncio.Event | None = None,
    metrics_server: MetricsServer | None = None,
) -> None:
    """Serve ``host``'s queue (and the shared queue) until ``stop`` is set, then release gracefully.
    ``metrics_server`` (``--metrics-port``) serves ``/metrics`` while the worker runs."""
    redis = make_client(str(settings.redis_url))
    store = RedisStore(redis)
    pool = make_pool(settings.database_url)
    try:
        # Both servers answer before anything polls: a start-up failure is one line, not a trace.
        await store.check_reachable()
        await open_pool(pool)
    except BaseException:
        await redis.aclose()
        raise
    http = httpx.AsyncClient(follow_redirects=True)
    catalog = Catalog(pool)
    connectors = ConnectorHost(settings.connector_journal)
    watchdog = Watchdog()
    keeper = LeaseKeeper(store, connectors, watchdog=watchdog, workflow_closed=workflow_closed(client))
    host_activities = HostActivities(
        hostname=host,
        store=store,
        catalog=catalog,
        http=http,
        ip_services=[str(u) for u in settings.ip_services],
        ip_timeout_s=settings.ip_timeout,
        connectors=connectors,
        keeper=keeper,
        connector_output=output_dir(settings.data_dir),
    )
    registry = RegistryActivities(store, catalog)
    notify = NotifyActivities(discord_notifier(settings.discord_webhook_url, http, store))  # None: off
    catalog_activities = CatalogActivities(catalog)
    workers = [
        Worker(
            client,
            task_queue=host_task_queue(host),
            activities=host_activities.all(),
            max_concurrent_activities=2000,
            # Send each lease heartbeat at once (not throttled to 0.8 × timeout), so the server's
            # last heartbeat is the last renewal: the workflow's "host is dead" is then safe to act on.
            max_heartbeat_throttle_interval=timedelta(milliseconds=100),
            graceful_shutdown_timeout=timedelta(seconds=5),
        )
    ]
    if shared_queue:
        workers.append(
            Worker(
                client,
                task_queue=SHARED_TASK_QUEUE,
                workflows=[InstanceWorkflow],
                activities=[
                    catalog_activities.resolve_instance,
                    *registry.all(),
                    notify.notify_event,
                ],
                graceful_shutdown_timeout=timedelta(seconds=5),
            )
        )
    try:
        async with contextlib.AsyncExitStack() as stack:
            if metrics_server is not None:
                await metrics_server.start()
                stack.push_async_callback(metrics_server.stop)
            for worker in workers:
                await stack.enter_async_context(worker)
            await stack.enter_async_context(enrolment(client, catalog, store, host, settings))
            log.info("worker for host %s polling %s", host, ", ".join(w.task_queue for w in workers))
            if ready is not None:
                ready.set()
            await stop.wait()
            await release_instances(client, host_activities)
    finally:
        await keeper.close()
        watchdog.close()
        await http.aclose()
        await pool.close()
        await redis.aclose()


async def release_instances(client: Client, host_activities: HostActivities) -> None:
    """Tell this host's instances to step down, and wait (bounded) until their workflows are done."""
    workflow_ids = host_activities.keeper.workflow_ids() | set(host_activities.connectors.workflow_ids())
    for workflow_id in workflow_ids:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).signal(
                InstanceWorkflow.host_shutting_down, rpc_timeout=RPC_TIMEOUT
            )
    deadline = time.monotonic() + GRACEFUL_RELEASE_S
    pending = set(workflow_ids)
    while pending and time.monotonic() < deadline:
        for workflow_id in list(pending):
            try:
                described = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=RPC_TIMEOUT)
            except RPCError:
                pending.discard(workflow_id)
                continue
            if described.status != WorkflowExecutionStatus.RUNNING:
                pending.discard(workflow_id)
        if pending:
            await asyncio.sleep(0.2)
    if pending:
        log.warning("instances not released in time (their TTL frees them): %s", ", ".join(sorted(pending)))
    await host_activities.connectors.stop_all("worker shutting down")


def workflow_closed(client: Client) -> WorkflowClosed:
    """How the keeper asks whether an instance workflow has closed: True/False, or None when
    Temporal does not answer (then the keeper keeps renewing: that is the outage it rides through)."""

    async def closed(workflow_id: str) -> bool | None:
        try:
            described = await client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=timedelta(seconds=2)
            )
        except RPCError as exc:
            return True if exc.status == RPCStatusCode.NOT_FOUND else None
        except Exception:  # the core SDK reports an unreachable server as RuntimeError
            return None
        return described.status != WorkflowExecutionStatus.RUNNING

    return closed


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
