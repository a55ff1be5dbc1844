"""The composition root of a worker: opens Redis, PostgreSQL, HTTP and Temporal clients, builds the
activity classes around them, runs the shared-queue and host-queue workers, and closes everything.

On SIGTERM/SIGINT the worker shuts down gracefully: every instance workflow whose lease runs here is
told that the host is going away, so it stops its connector, writes ``stopping → stopped`` and
releases its claim *before* the worker stops polling.

Run it as ``python -m worker [--host H] [--no-shared]``; ``perseus worker`` execs exactly that and
``perseus dev`` starts it as a child process, so nothing in ``perseus/`` imports this module (or
``workflows/`` and ``activities/``): the dependency points one way, from here into the package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.catalog import CatalogActivities
from activities.failsafe import FailsafeCalls
from activities.host import HostActivities
from activities.notify import NotifyActivities
from activities.presence import PresenceActivities
from activities.registry import RegistryActivities
from perseus import tracing
from perseus import version as release
from perseus.config import Settings, SystemdEnv, load_otel_env, load_settings, load_systemd_env
from perseus.connectors.allow import ExecAllowList, load_allow_list
from perseus.connectors.base import ConnectorHost
from perseus.connectors.process import output_dir
from perseus.errors import ConfigError, PerseusError, ServiceUnavailable
from perseus.fleet.enrol import enrolment
from perseus.fleet.file import RetryWait, retry_after, retry_over
from perseus.host.health import WorkerHealth
from perseus.host.keeper import HeadsUpSender, LeaseKeeper, WorkflowClosed
from perseus.host.systemd import keep_alive, notify, watchdog_period_s
from perseus.host.watchdog import Watchdog
from perseus.host.workers import announcing, find_shared_queue_peers
from perseus.keys import SHARED_TASK_QUEUE, host_task_queue, valid_host
from perseus.logs import configure_logging, install_temporal_runtime
from perseus.metrics import MetricsServer, free_loopback_address
from perseus.models import EventRequest, HeadsUp, HostRestarted
from perseus.notify import notifications
from perseus.store.db import Catalog, open_pool_eventually
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import INSTANCE_HOST, RPC_TIMEOUT, connect
from perseus.timing import (
    CLOSED_LOOKUP_TIMEOUT_S,
    GRACEFUL_RELEASE_S,
    HANDOVER_STALL_S,
    HEARTBEAT_THROTTLE_CAP_S,
    RELEASE_LOOK_S,
    SHARED_STOP_WAIT_S,
    WORKER_SHUTDOWN_GRACE_S,
)
from workflows.instance import InstanceWorkflow
from workflows.roster import RosterWorkflow

log = logging.getLogger("perseus.worker")

#: Activity slots kept beside ``Settings.host_capacity`` for the short steps (identity, claims,
#: connector steps, probes): registrations that arrive together each need a few at once.
STEP_SLOTS = 500


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
    # Read before anything opens: a file that cannot be read stops the worker with one line.
    exec_allow = exec_allow_list(settings)
    redis = make_client(str(settings.redis_url))
    store = RedisStore(redis)
    try:
        # Redis answers before anything polls (claims need it): a start-up failure is one line.
        await store.check_reachable()
        # Which code serves this host, before anything else it does: in a mixed-version fleet (an
        # upgrade under way) the log says which release made each of the lines that follow. Not
        # before Redis answered: a worker that cannot start says so in one line, and nothing else.
        log.info("worker for host %s starting: perseus %s", host, release.describe())
        announce_exec_allow(exec_allow, host)
        # Without PostgreSQL the queues are still worth serving: the catalog's activities fail (and
        # Temporal retries them) and the enrolment waits until it answers. A restart during a
        # database outage must not leave this host's placements behind.
        pool, down = await open_pool_eventually(settings.database_url)
        if down is not None:
            log.warning("%s; serving anyway, the catalog's steps wait for it", down)
    except BaseException:
        await redis.aclose()
        raise
    http = httpx.AsyncClient(follow_redirects=True)
    catalog = Catalog(pool)
    connectors = ConnectorHost(settings.connector_journal)
    watchdog = Watchdog()
    notifier = notifications(settings, http, store)  # None: no channel configured, off
    registry = RegistryActivities(store, catalog, notifications=notifier is not None)
    failsafe = FailsafeCalls(client)
    keeper = LeaseKeeper(
        store,
        connectors,
        watchdog=watchdog,
        workflow_closed=workflow_closed(client),
        failsafe=failsafe,
        heads_up=heads_up_sender(client),
        # The errors a connector reports itself reach the stream the way the workflow's do.
        record_event=lambda event: registry.record_event(EventRequest(event=event)),
    )
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
        exec_allow=exec_allow,
        enrol=failsafe.enrol,
    )
    if metrics_server is not None:
        metrics_server.health = WorkerHealth(
            host=host, client=client, store=store, keeper=keeper, watchdog=watchdog
        )
    notify_activities = NotifyActivities(notifier)
    catalog_activities = CatalogActivities(catalog)
    workers = [
        Worker(
            client,
            task_queue=host_task_queue(host),
            # A transition's record too: when the worker running an instance's workflow task cannot
            # reach Redis, the write is handed to the instance's own host (core/record.py). And the
            # standby steps of a takeover, which go to the standby's own host first
            # (core.host.on_host_first): any worker of the shared queue may be the cut-off holder's.
            activities=[
                *host_activities.all(),
                registry.record,
                registry.list_standbys,
                registry.drop_standby,
            ],
            # Every held claim and standby watch keeps a slot for as long as it lasts: the steps of
            # new registrations and connectors need free ones beside them.
            max_concurrent_activities=settings.host_capacity + STEP_SLOTS,
            # The lease and the watch set their own cadence (a heartbeat at every k-th renewal, at
            # least 5 s apart, the heartbeat timeout 1.25 such periods: decisions.heartbeat_beats).
            # The SDK would throttle on top to 0.8 × that timeout — the same period, so each
            # heartbeat would wait for the window and drift up to a grid slot later. Cap the throttle
            # so each goes out when sent: the server's last heartbeat is a renewal, and connector
            # steps (a heartbeat a second, timeout 5 s) hear a cancellation within a second.
            max_heartbeat_throttle_interval=timedelta(seconds=HEARTBEAT_THROTTLE_CAP_S),
            graceful_shutdown_timeout=timedelta(seconds=WORKER_SHUTDOWN_GRACE_S),
        )
    ]

    def shared_queue_worker() -> Worker:
        """The worker of the shared queue (the workflows and the steps any worker may take)."""
        return Worker(
            client,
            task_queue=SHARED_TASK_QUEUE,
            workflows=[InstanceWorkflow, RosterWorkflow],
            activities=[
                catalog_activities.resolve_instance,
                PresenceActivities(client).host_polled,
                *registry.all(),
                notify_activities.notify_event,
            ],
            graceful_shutdown_timeout=timedelta(seconds=WORKER_SHUTDOWN_GRACE_S),
            # A workflow's next task goes to the worker that ran its last one (its cache). If
            # that worker died, the task waits this long before any worker may take it — the
            # SDK's 10 s held a standby's promotion on a dead host's queue; a live but busy
            # worker that misses a short one costs one replay elsewhere, not a failover.
            # perseus.timing.STICKY_TIMEOUT_S (which says why that figure) unless a benchmark
            # set PERSEUS_STICKY_TIMEOUT to compare another.
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout),
            # No sandbox: a worker that takes over a dead worker's workflows replays each whole
            # history first, and under the sandbox that took twice as long on an idle machine and
            # five times as long on a busy one (a 245-event golden history: 79 ms against 37 ms;
            # 208 ms against 44 ms beside a test suite), which a handoff right after the kill
            # waits for twice (docs/benchmarks.md, "Killed workflow worker: replay without the
            # sandbox"). What the sandbox guarded stays guarded: the workflow and core sources
            # are checked for clocks, randomness and OS access (tests/unit/
            # test_import_fences.py), the drivers cannot be imported from them, and every golden
            # history replays under the sandbox in the tests (tests/unit/test_replay.py).
            workflow_runner=UnsandboxedWorkflowRunner(),
        )

    shared = shared_queue_worker() if shared_queue else None
    if shared is not None:
        workers.append(shared)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if metrics_server is not None:
                await metrics_server.start()
                stack.push_async_callback(metrics_server.stop)
            for worker in workers:
                await stack.enter_async_context(worker)
            await stack.enter_async_context(enrolment(client, catalog, store, host, settings))
            presence = await stack.enter_async_context(
                announcing(
                    store,
                    host=host,
                    worker_id=client.identity,
                    capacity=settings.host_capacity,
                    shared_queue=shared_queue,
                    metrics_url=lambda: metrics_server.url if metrics_server is not None else None,
                    held=keeper.held,
                )
            )
            log.info("worker for host %s polling %s", host, ", ".join(w.task_queue for w in workers))
            told = asyncio.create_task(tell_host_restarted(client, host), name="host restarted")
            stack.push_async_callback(_cancelled, told)
            if ready is not None:
                ready.set()
            await stop.wait()
            # Said before this worker looks for peers: a worker stopping at the same moment must
            # not hand the shared queue to this one, nor this one to it.
            await presence.say_stopping()
            stalled = None
            if shared is not None and await hand_over_shared_queue(client, store, host, shared):

                async def serve_again() -> None:
                    log.warning(
                        "host %s: instances not released %gs after it handed the shared queue over "
                        "(its peers may have gone): serving it again to finish",
                        host,
                        HANDOVER_STALL_S,
                    )
                    await stack.enter_async_context(shared_queue_worker())

                stalled = serve_again
            await release_instances(client, host_activities, stalled=stalled)
    finally:
        await keeper.close()
        watchdog.close()
        await http.aclose()
        await pool.close()
        await redis.aclose()


def exec_allow_list(settings: Settings) -> ExecAllowList | None:
    """This host's exec allow-list (``PERSEUS_EXEC_ALLOW``), or None when it has none. A file that
    cannot be read or parsed raises (one line, before anything opens)."""
    if settings.exec_allow is None:
        return None
    return load_allow_list(settings.exec_allow)


def announce_exec_allow(allowed: ExecAllowList | None, host: str) -> None:
    """Say which commands this host runs — a warning without a list, since then a workflow's input
    decides (docs/security.md). Said once the worker's stores answer, so that a start-up that fails
    on them stays one line."""
    if allowed is None:
        log.warning(
            "PERSEUS_EXEC_ALLOW is unset: host %s runs any connector command a workflow asks for; "
            "set it to a file of permitted commands (docs/security.md)",
            host,
        )
    else:
        log.info("host %s runs only the %d command rule(s) of %s", host, len(allowed.rules), allowed.source)


async def connect_when_up(settings: Settings) -> Client:
    """A Temporal client, once Temporal answers: a worker started during an outage waits (one line
    per change of reason) instead of exiting, and enrols its host as soon as it can."""
    wait = RetryWait()
    while True:
        try:
            client = await connect(settings)
        except ServiceUnavailable as exc:
            wait, delay, line = retry_after(wait, str(exc.server), str(exc))
            if line is not None:
                log.warning("worker %s", line)
            await asyncio.sleep(delay)
            continue
        wait, line = retry_over(wait)
        if line is not None:
            log.info("worker connected to Temporal: %s", line)
        return client


async def hand_over_shared_queue(client: Client, store: RedisStore, host: str, shared: Worker) -> bool:
    """Stop serving the shared queue if another worker serves it (True: stopped). A workflow task the
    server hands a worker as it shuts down is lost until the task's timeout; once the release has
    woken a standby, that task may be the standby's promotion (its run cached here). So it stops
    taking them first, while every connector still runs, and the peers take its cached runs over.
    What it took gets :data:`SHARED_STOP_WAIT_S` to finish; the rest finishes during the release
    (the exit stack waits for it)."""
    peers = await find_shared_queue_peers(store, client, me=client.identity)
    if not peers:
        return False
    log.info("host %s hands the shared queue to %s before it releases its instances", host, ", ".join(peers))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(shared.shutdown()), SHARED_STOP_WAIT_S)
    return True


async def release_instances(
    client: Client,
    host_activities: HostActivities,
    *,
    stalled: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Tell this host's instances to step down, and wait (bounded) until their workflows are done.
    ``stalled`` is awaited once if some are still running :data:`HANDOVER_STALL_S` after the signals
    (the worker serves the shared queue again)."""
    workflow_ids = host_activities.keeper.workflow_ids() | set(host_activities.connectors.workflow_ids())
    for workflow_id in workflow_ids:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).signal(
                InstanceWorkflow.host_shutting_down, rpc_timeout=RPC_TIMEOUT
            )
    signalled = time.monotonic()
    deadline = signalled + GRACEFUL_RELEASE_S
    pending = set(workflow_ids)
    while pending and time.monotonic() < deadline:
        if stalled is not None and time.monotonic() - signalled >= HANDOVER_STALL_S:
            await stalled()
            stalled = None
        for workflow_id in list(pending):
            try:
                described = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=RPC_TIMEOUT)
            except RPCError:
                pending.discard(workflow_id)
                continue
            if described.status != WorkflowExecutionStatus.RUNNING:
                pending.discard(workflow_id)
        if pending:
            await asyncio.sleep(RELEASE_LOOK_S)
    if pending:
        log.warning("instances not released in time (their TTL frees them): %s", ", ".join(sorted(pending)))
    await host_activities.connectors.stop_all("worker shutting down")


async def tell_host_restarted(client: Client, host: str) -> int:
    """Tell every running instance of ``host`` that its worker started: a standby whose watch ran
    on a previous process starts it again here at once, rather than when Temporal times the old
    activity out (its heartbeat timeout, 18.75 s at short intervals) — all that time the standby is
    missing from Redis and cannot take over. Best effort: Temporal's visibility may lag or be down;
    the heartbeat timeout remains the fallback. Returns how many were told."""
    query = f"{INSTANCE_HOST.name} = '{host}' AND ExecutionStatus = 'Running'"
    told = 0
    try:
        async for found in client.list_workflows(query, rpc_timeout=RPC_TIMEOUT):
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(found.id).signal(
                    InstanceWorkflow.host_restarted,
                    HostRestarted(host=host, identity=client.identity),
                    rpc_timeout=RPC_TIMEOUT,
                )
                told += 1
    except (RPCError, RuntimeError) as exc:
        log.warning("could not tell host %s's instances that its worker started: %s", host, exc)
        return told
    if told:
        log.info("told %d instance(s) of host %s that its worker started", told, host)
    return told


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def heads_up_sender(client: Client) -> HeadsUpSender:
    """How the keeper tells an instance workflow that its next task is near (``InstanceWorkflow.
    heads_up``, which changes nothing there)."""

    async def send(workflow_id: str, reason: str) -> None:
        await client.get_workflow_handle(workflow_id).signal(
            InstanceWorkflow.heads_up, HeadsUp(reason=reason), rpc_timeout=RPC_TIMEOUT
        )

    return send


def workflow_closed(client: Client) -> WorkflowClosed:
    """How the keeper asks whether an instance workflow has closed: True/False, or None when
    Temporal does not answer (then the keeper keeps renewing: that is the outage it rides through)."""

    async def closed(workflow_id: str) -> bool | None:
        try:
            described = await client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=timedelta(seconds=CLOSED_LOOKUP_TIMEOUT_S)
            )
        except RPCError as exc:
            return True if exc.status == RPCStatusCode.NOT_FOUND else None
        except Exception:  # the core SDK reports an unreachable server as RuntimeError
            return None
        return described.status != WorkflowExecutionStatus.RUNNING

    return closed


#: Allocations (net of frees) between two passes of the collector over young objects; Python's
#: default is 700. A worker at 1,000 instances allocates fast enough that at 700 nearly everything
#: that lives a second — a renewal's reply, a pending future — is soon counted long-lived, and a
#: full pass over the whole heap then came every 5–11 s and took 0.5–0.6 s, during which nothing
#: in the process runs: not the keeper, not its renewals (docs/benchmarks.md, "The collector").
COLLECTOR_YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """Make the garbage collector's full passes rare in a worker process: what start-up built
    (modules, the SDK's runtime) is set aside for good (``gc.freeze``), and young objects get many
    more allocations to die in before they are counted long-lived. Call once, in a process's entry
    point, after the imports: never in a test run, whose collector must stay as Python has it."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(COLLECTOR_YOUNG_THRESHOLD, middle, old)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


#: What ``--ready-file`` receives once both workers poll (``perseus dev`` waits for it).
READY_LINE = "worker ready: host {host}"


async def serve(
    settings: Settings,
    host: str | None,
    *,
    shared: bool,
    ready_file: str | None,
    metrics: MetricsServer | None = None,
    systemd: SystemdEnv | None = None,
) -> None:
    """Connect, serve until SIGINT/SIGTERM, release this host's instances, close everything. Under
    systemd (``Type=notify``) say READY/STOPPING, and ping its watchdog while the loop runs."""
    name = host or settings.host_name()
    if not valid_host(name):
        raise ConfigError(f"invalid host name {name!r}: use letters, digits, '.', '_' or '-'")
    client = await connect_when_up(settings)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    sd = systemd or SystemdEnv.model_construct()  # outside `perseus worker`: no systemd
    ping_every = watchdog_period_s(sd.watchdog_usec, sd.watchdog_pid, os.getpid())
    pinging = (
        asyncio.create_task(keep_alive(sd.notify_socket, ping_every), name="systemd watchdog")
        if sd.notify_socket and ping_every
        else None
    )
    ready = asyncio.Event()
    task = asyncio.create_task(
        run_worker(settings, client, name, stop, shared_queue=shared, ready=ready, metrics_server=metrics)
    )
    await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        line = READY_LINE.format(host=name)
        # On stderr whatever the log level: scripts and the test harness wait for this line.
        print(line, file=sys.stderr, flush=True)
        if ready_file:
            Path(ready_file).write_text(line + "\n")
        notify(sd.notify_socket, "READY=1")
        await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            notify(sd.notify_socket, "STOPPING=1")
    try:
        await task
    finally:
        if pinging is not None:
            pinging.cancel()
    log.info("worker for host %s stopped", name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="perseus worker", description="Run a worker for the shared queue and this host's queue."
    )
    parser.add_argument("--host", default=None, help="Instance host (default: this machine).")
    parser.add_argument(
        "--shared",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also serve the shared queue (workflows).",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Serve /metrics (Perseus' and the Temporal SDK's), /healthz and /readyz on this port.",
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="Address for --metrics-port.")
    # perseus dev: where to write the ready line (a file it can wait on without parsing our stderr).
    parser.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m worker``: settings once, logging, serve; errors as one line.

    Leaves through ``os._exit`` once output is flushed: the Temporal SDK's native runtime can abort a
    process during interpreter shutdown (sdk-python#300).
    """
    args = parse_args(argv)
    code = 0
    provider = None
    try:
        settings = load_settings()
        systemd = load_systemd_env()
        configure_logging(settings.log_level, settings.log_format)
        tune_collector()
        # Off unless OTEL_* or PERSEUS_TRACE_FILE (perseus dev --trace) say otherwise.
        provider = tracing.install(
            "perseus-worker", tracing.tracing_mode(load_otel_env(), settings.trace_file), settings.trace_file
        )
        metrics = None
        if args.metrics_port is not None:
            # The SDK's own metrics on a private loopback port; the exporter appends them to ours.
            address = free_loopback_address()
            install_temporal_runtime(metrics_address=address)
            metrics = MetricsServer(args.metrics_host, args.metrics_port, f"http://{address}/metrics")
        else:
            install_temporal_runtime()
        asyncio.run(
            serve(
                settings,
                args.host,
                shared=args.shared,
                ready_file=args.ready_file,
                metrics=metrics,
                systemd=systemd,
            )
        )
    except PerseusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    tracing.shutdown(provider)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
