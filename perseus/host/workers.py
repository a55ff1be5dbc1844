"""Host workers, as an operator sees them: ``perseus hosts`` and ``GET /api/network/hosts``.

Perseus reaches hosts through Temporal (no host has an inbound port), so what an admin needs is to
see them. Two sources, each saying what only it knows:

* **Redis**: each worker announces itself every :data:`ANNOUNCE_EVERY_S` — a record with a TTL,
  ``perseus:worker:{host}:{worker id}``, listed in the ``perseus:workers`` index (scored by when it
  expires, so a listing needs no SCAN): its version, capacity, whether it serves the shared queue,
  its metrics URL, and the claims and standby watches its keeper holds right now. A killed worker's
  record lapses within :data:`ANNOUNCE_TTL_S`.
* **Temporal**: when each worker last polled its host's task queue (the same poller list that
  tells a missing host from a busy one, ``perseus.fleet.enrol``). Optional: without Temporal the view
  still answers, with ``lastPollAt`` null.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import Field
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.service import RPCError

from perseus import errors
from perseus import version as release
from perseus.errors import ServiceUnavailable
from perseus.keys import SHARED_TASK_QUEUE, host_task_queue, iso, parse_iso
from perseus.models import Wire
from perseus.timing import (
    ANNOUNCE_EVERY_S,
    ANNOUNCE_TTL_S,
    DESCRIBE_QUEUE_TIMEOUT_S,
    LIVE_POLL_WINDOW_S,
    PEER_FRESH_S,
    PEER_LOOKUP_S,
    POLL_LOOKUP_CONNECT_S,
    POLL_LOOKUP_S,
)

if TYPE_CHECKING:
    from temporalio.client import Client

    from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)


class WorkerRecord(Wire):
    """What one worker process says of itself (the JSON of its presence key)."""

    host: str
    #: The worker's Temporal identity (``pid@machine``): matches it to the pollers Temporal lists.
    worker_id: str
    #: Its release and build (perseus.version); records of workers older than these fields read
    #: as "unknown".
    version: str = release.UNKNOWN
    build: str = release.UNKNOWN
    machine: str
    pid: int
    started_at: str
    seen_at: str
    capacity: int
    shared_queue: bool
    metrics_url: str | None = None
    claims: int = 0
    watches: int = 0
    #: It is stopping gracefully: no stopping worker hands the shared queue to it.
    stopping: bool = False


class HostView(Wire):
    """One host (DESIGN §2.5): its live workers summed up."""

    host: str
    version: str
    build: str = release.UNKNOWN
    #: Its version is an older release than the newest any live host runs (an upgrade not done).
    outdated: bool = False
    #: When a worker last polled the host's task queue, as Temporal saw it (None: unknown).
    last_poll_at: str | None = None
    claims: int
    watches: int
    capacity: int
    shared_queue: bool
    metrics_url: str | None = None
    #: Live worker processes for this host (more than one: each takes a share of its steps).
    workers: int = 1
    #: The newest announcement of any of them.
    seen_at: str
    machines: list[str] = Field(default_factory=list)


class HostsBoard(Wire):
    hosts: list[HostView]
    server_time: datetime


def summarise(records: Iterable[WorkerRecord], polls: dict[str, datetime | None]) -> list[HostView]:
    """Pure: one view per host, by name; several workers of a host add up (claims, watches,
    capacity) and the newest version, announcement and poll stand for them. A host whose version
    is an older release than the newest of all is ``outdated``."""
    by_host: dict[str, list[WorkerRecord]] = {}
    for record in records:
        by_host.setdefault(record.host, []).append(record)
    views = []
    newest_seen = release.newest([r.version for r in records_of(by_host)])
    for host in sorted(by_host):
        group = sorted(by_host[host], key=lambda r: r.seen_at)
        newest = group[-1]
        poll = polls.get(host)
        views.append(
            HostView(
                host=host,
                version=newest.version,
                build=newest.build,
                outdated=release.is_older(newest.version, newest_seen),
                last_poll_at=iso(poll) if poll is not None else None,
                claims=sum(r.claims for r in group),
                watches=sum(r.watches for r in group),
                capacity=sum(r.capacity for r in group),
                shared_queue=any(r.shared_queue for r in group),
                metrics_url=next((r.metrics_url for r in reversed(group) if r.metrics_url), None),
                workers=len(group),
                seen_at=newest.seen_at,
                machines=sorted({r.machine for r in group}),
            )
        )
    return views


def records_of(by_host: dict[str, list[WorkerRecord]]) -> list[WorkerRecord]:
    """The record that speaks for each host: its newest announcement."""
    return [max(group, key=lambda r: r.seen_at) for group in by_host.values()]


def outdated_hosts(views: Iterable[HostView]) -> dict[str, str]:
    """Host → its version, for the hosts behind the newest release any live host runs."""
    return {v.host: v.version for v in views if v.outdated}


async def last_polls(client: Client | None, hosts: Iterable[str]) -> dict[str, datetime | None]:
    """When a worker last polled each host's activity queue (None where Temporal did not say)."""
    names = sorted(set(hosts))
    if client is None or not names:
        return dict.fromkeys(names)
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    async def one(host: str) -> datetime | None:
        try:
            # Bounded as a whole: a lazy client's first call also connects, which the RPC's own
            # timeout does not cover.
            async with asyncio.timeout(POLL_LOOKUP_S + POLL_LOOKUP_CONNECT_S):
                reply = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=host_task_queue(host)),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                    ),
                    timeout=timedelta(seconds=POLL_LOOKUP_S),
                )
        except Exception as exc:  # noqa: BLE001 - the view answers without Temporal's part
            log.info("last poll of %s unknown: %s", host, str(exc) or type(exc).__name__)
            return None
        seen = [
            p.last_access_time.ToDatetime(tzinfo=UTC) for p in reply.pollers if p.HasField("last_access_time")
        ]
        return max(seen, default=None)

    answers = await asyncio.gather(*(one(h) for h in names))
    return dict(zip(names, answers, strict=True))


async def read_hosts(store: RedisStore, client: Client | None) -> HostsBoard:
    records = await store.workers()
    polls = await last_polls(client, (r.host for r in records))
    return HostsBoard(hosts=summarise(records, polls), server_time=datetime.now(UTC))


class Announcement:
    """What a worker says of itself beyond its record's regular renewal."""

    def __init__(self, announce: Callable[[], Awaitable[None]]) -> None:
        self.stopping = False
        self._announce = announce

    async def say_stopping(self) -> None:
        """Announce at once that this worker is stopping (best effort: Redis may be away), so that
        no other stopping worker hands the shared queue to it."""
        self.stopping = True
        with contextlib.suppress(ServiceUnavailable):
            await self._announce()


@contextlib.asynccontextmanager
async def announcing(
    store: RedisStore,
    *,
    host: str,
    worker_id: str,
    capacity: int,
    shared_queue: bool,
    metrics_url: Callable[[], str | None],
    held: Callable[[], tuple[int, int]],
) -> AsyncIterator[Announcement]:
    """Announce this worker every :data:`ANNOUNCE_EVERY_S` while the block runs; withdraw it after.

    ``held`` says how many claims and standby watches the keeper holds now. A failed announcement
    (Redis away) is logged and tried again at the next one: it never stops the worker. The block
    gets the :class:`Announcement`, to say at once that the worker is stopping.
    """
    started = iso(datetime.now(UTC))

    def record() -> WorkerRecord:
        claims, watches = held()
        return WorkerRecord(
            host=host,
            worker_id=worker_id,
            version=release.version(),
            build=release.build(),
            machine=socket.gethostname(),
            pid=os.getpid(),
            started_at=started,
            seen_at=iso(datetime.now(UTC)),
            capacity=capacity,
            shared_queue=shared_queue,
            metrics_url=metrics_url(),
            claims=claims,
            watches=watches,
            stopping=said.stopping,
        )

    async def announce() -> None:
        await store.announce_worker(record(), int(ANNOUNCE_TTL_S * 1000))

    async def loop() -> None:
        failing = False
        while True:
            try:
                await announce()
            except ServiceUnavailable as exc:
                if not failing:
                    log.warning("could not announce host %s in Redis: %s", host, exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    said = Announcement(announce)
    task = asyncio.create_task(loop(), name=f"announce {host}")
    try:
        yield said
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(ServiceUnavailable):
            await store.withdraw_worker(host, worker_id)


#: A host counts as live when a worker polled its queue this recently (perseus.timing says why).
LIVE_POLL_WINDOW = timedelta(seconds=LIVE_POLL_WINDOW_S)


async def pollers_within(client: Client, host: str, window: timedelta, *, identity: str | None = None) -> int:
    """How many workers polled ``host``'s queue for activities within ``window`` (Temporal lists a
    poller for minutes after it stopped, so the window decides what counts as live); with
    ``identity``, only that worker's pollers count (a worker asking about itself)."""
    try:
        reply = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=host_task_queue(host)),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            ),
            timeout=timedelta(seconds=DESCRIBE_QUEUE_TIMEOUT_S),
        )
    except RPCError as exc:
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    since = datetime.now(UTC) - window
    return sum(
        1
        for p in reply.pollers
        if p.HasField("last_access_time")
        and p.last_access_time.ToDatetime(tzinfo=UTC) >= since
        and (identity is None or p.identity == identity)
    )


def shared_queue_peers(
    records: Iterable[WorkerRecord], pollers: dict[str, datetime], *, me: str, now: datetime
) -> list[str]:
    """The other workers that serve the shared queue now, by identity. Each must say so in a fresh
    announcement (within :data:`PEER_FRESH_S`: a killed worker's record outlives it by up to its
    TTL) and not be stopping itself, *and* be among the pollers this Temporal lists for the shared
    queue (``pollers``: identity → last poll) — a record alone may come from a worker of another
    Temporal sharing the Redis. An idle poller's last poll can be a long poll old, so the poll only
    has to fall within :data:`LIVE_POLL_WINDOW`."""
    fresh_since = now - timedelta(seconds=PEER_FRESH_S)
    polled_since = now - LIVE_POLL_WINDOW
    return sorted(
        {
            r.worker_id
            for r in records
            if r.shared_queue
            and not r.stopping
            and r.worker_id != me
            and parse_iso(r.seen_at) >= fresh_since
            and pollers.get(r.worker_id, datetime.min.replace(tzinfo=UTC)) >= polled_since
        }
    )


async def shared_queue_pollers(client: Client) -> dict[str, datetime]:
    """Who polled the shared workflow queue, and when last (as this Temporal lists them). Asked
    within :data:`PEER_LOOKUP_S`: a worker stopping during a Temporal outage must not wait longer
    to learn that nobody answers."""
    try:
        reply = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=SHARED_TASK_QUEUE),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=PEER_LOOKUP_S),
        )
    except RPCError as exc:
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    return {
        p.identity: p.last_access_time.ToDatetime(tzinfo=UTC)
        for p in reply.pollers
        if p.HasField("last_access_time")
    }


async def find_shared_queue_peers(store: RedisStore, client: Client, *, me: str) -> list[str]:
    """:func:`shared_queue_peers` as Redis and Temporal show them now; none when either does not
    answer (the caller then goes on serving the queue itself)."""
    try:
        records = await store.workers()
        pollers = await shared_queue_pollers(client)
    except ServiceUnavailable as exc:
        log.info("could not tell whether another worker serves the shared queue: %s", exc)
        return []
    return shared_queue_peers(records, pollers, me=me, now=datetime.now(UTC))
