"""The declared fleet's I/O side: observe what runs, carry out :mod:`perseus.fleet.file`'s plans.

Everything here is driven by an event — ``perseus fleet apply``, ``perseus drain``, a worker's start,
an instance of the worker's host ending as lost — never by a timer: no cron, no polling loop.

* :func:`apply_fleet` — store the file's placements, then register what can run now.
* :func:`enrol_host` — what ``perseus worker --host H`` does at start: register H's placements
  (active when nobody holds the exchange, else a standby with its priority).
* :func:`enrolment` — the worker's context manager: enrols, then waits on the host's instance
  workflows and enrols again when one ends as lost (a standby once more, normally) or when Temporal
  answers again after an outage; an apply's NOTIFY tells it which instances to watch.
* :func:`drain_host` — hand every exchange the host holds to its best live standby.
* :func:`fleet_status` — desired against actual, with the drift spelled out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from perseus import errors
from perseus import version as release
from perseus.client import control
from perseus.client.actors import fleet_actor
from perseus.config import Settings
from perseus.core.lifecycle import Command, Role
from perseus.core.state import Ending, ending_of
from perseus.fleet.file import (
    Change,
    ChangeKind,
    DrainStep,
    Instance,
    Observed,
    Placement,
    RetryWait,
    Standby,
    drain_plan,
    enrol_plan,
    reconcile,
    retry_after,
    retry_over,
)
from perseus.host.workers import LIVE_POLL_WINDOW, outdated_hosts, pollers_within, summarise
from perseus.keys import workflow_id
from perseus.models import InstanceStatus, Wire
from perseus.store.db import Catalog, FleetListener
from perseus.store.redis_store import RedisStore
from perseus.temporal import EXCHANGE_NAME, INSTANCE_HOST, INSTANCE_ROLE, INSTANCE_WORKFLOW

log = logging.getLogger(__name__)


#: How an instance run ends when it should come back by itself (the worker enrols it again).
_LOST = (Ending.INSTANCE_LOST, Ending.STANDBY_LOST)
#: What the watch of an instance reports when Temporal was unreachable and answers again.
RECONNECTED = "reconnected to Temporal"
RECONNECT_MAX_DELAY_S = 10.0


class EnrolReport(BaseModel):
    """What one enrolment (a worker's start, or an apply) did."""

    host: str | None = None
    done: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    waiting: list[str] = Field(default_factory=list)
    #: Those of ``failed`` that failed because a server did not answer: the worker's enrolment
    #: tries them again until it does.
    unavailable: list[str] = Field(default_factory=list)


# --- observing -----------------------------------------------------------------------------------


async def live_hosts(client: Client, hosts: Iterable[str]) -> frozenset[str]:
    """The hosts among ``hosts`` whose queue a worker polled within :data:`LIVE_POLL_WINDOW`."""

    async def live(host: str) -> bool:
        return await pollers_within(client, host, LIVE_POLL_WINDOW) > 0

    names = sorted(set(hosts))
    answers = await asyncio.gather(*(live(h) for h in names))
    return frozenset(h for h, ok in zip(names, answers, strict=True) if ok)


async def _running(client: Client, exchange: str, host: str) -> bool:
    try:
        described = await client.get_workflow_handle(workflow_id(exchange, host)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    return described.status == WorkflowExecutionStatus.RUNNING


def _holder_host(exchange: str, status: InstanceStatus | None) -> str | None:
    """The host named by a live status record (its workflow id is ``instance-{exchange}-{host}``)."""
    if status is None:
        return None
    wf_id, prefix = status.workflow_id or "", workflow_id(exchange, "")
    return wf_id.removeprefix(prefix) if wf_id.startswith(prefix) else status.hostname


async def _holders(store: RedisStore, ids: dict[str, int], exchanges: Iterable[str]) -> dict[str, str]:
    names = sorted(set(exchanges))
    replies = await store.statuses([ids[n] for n in names])
    return {
        n: h
        for n, read in zip(names, replies, strict=True)
        if (h := _holder_host(n, read.record)) is not None
    }


async def observe(
    client: Client,
    store: RedisStore,
    ids: dict[str, int],
    pairs: Iterable[tuple[str, str]],
    *,
    stored: list[Placement],
    hosts: Iterable[str],
    failsafe: bool = False,
) -> Observed:
    """One snapshot for :func:`perseus.fleet.file.reconcile`: which of ``pairs`` (exchange, host) run, who
    holds each exchange, which of ``hosts`` are live, and with ``failsafe`` which of the running
    instances have the failsafe (one roster query per exchange that runs any). Reads only; strongly
    consistent (by workflow id, not through the visibility index)."""
    wanted = sorted(set(pairs))
    running = await asyncio.gather(*(_running(client, e, h) for e, h in wanted))
    up = [(e, h) for (e, h), ok in zip(wanted, running, strict=True) if ok]
    enrolled: dict[str, frozenset[str]] = {}
    if failsafe:
        names = sorted({e for e, _ in up})
        rosters = await asyncio.gather(*(control.failsafe_members(client, e) for e in names))
        enrolled = dict(zip(names, rosters, strict=True))
    return Observed(
        stored=stored,
        instances=[
            Instance(
                exchange=e,
                host=h,
                failsafe=workflow_id(e, h) in enrolled[e] if failsafe else None,
            )
            for e, h in up
        ],
        holders=await _holders(store, ids, (e for e, _ in wanted)),
        live_hosts=await live_hosts(client, hosts),
    )


async def _exchange_ids(catalog: Catalog) -> dict[str, int]:
    return {e.name: e.id for e in await catalog.exchanges(active_only=True)}


def _pairs(placements: Iterable[Placement]) -> list[tuple[str, str]]:
    return [(p.exchange, h) for p in placements for h in p.hosts]


# --- carrying out ----------------------------------------------------------------------------------


async def _register(client: Client, placement: Placement, action: Change, actor: str | None = None) -> str:
    """Register as the action says; an active registration that meets a holder becomes a standby."""
    assert action.host is not None
    standby = action.kind is ChangeKind.REGISTER_STANDBY
    try:
        result = await control.register(
            client,
            exchange=placement.exchange,
            host=action.host,
            admin_email=placement.admin_email,
            heartbeat_interval_s=placement.heartbeat_interval_s,
            start=not standby,
            standby=standby,
            priority=placement.priority(action.host),
            # ``warm = true`` is the connector's: an active one keeps a command pipe for its handback.
            connector=placement.connector.model_copy(
                update={"warm": placement.warm or placement.connector.warm}
            ),
            actor=actor,
            failsafe=placement.failsafe,
        )
    except errors.ClaimConflict:
        # Someone took the exchange since we looked: stand by behind them instead.
        log.info("%s on %s: the exchange was taken meanwhile; registering as a standby", *_names(action))
        return await _register(
            client, placement, action.model_copy(update={"kind": ChangeKind.REGISTER_STANDBY}), actor
        )
    except errors.AlreadyRegistered:
        return f"{placement.exchange}: already registered on {action.host}"
    if result.role is Role.STANDBY:
        return f"{placement.exchange}: standby on {action.host} (priority {placement.priority(action.host)})"
    return f"{placement.exchange}: active on {action.host} (epoch {result.epoch}), starting"


def _names(action: Change) -> tuple[str, str | None]:
    return action.exchange, action.host


#: How many exchanges an enrolment works on at once. Each registration spends most of its time
#: waiting (for the host's worker, the connector's walk), so one at a time took a 1,000-exchange
#: fleet tens of minutes to restore; the actions of one exchange still run in their planned order.
ENROL_CONCURRENCY = 64


async def carry_out(
    client: Client,
    placements: dict[str, Placement],
    actions: list[Change],
    report: EnrolReport,
    actor: str | None = None,
) -> None:
    """Run the registrations and shutdowns of ``actions`` (STORE/FORGET are done by the caller,
    before): each exchange's in their planned order (its active before its standbys), up to
    :data:`ENROL_CONCURRENCY` exchanges at once. A failure is reported and the rest still runs; the
    report lists everything in the plan's order, whatever order it finished in."""
    outcomes: dict[int, tuple[str, str]] = {}  # action index → (which list, line)
    by_exchange: dict[str, list[int]] = {}
    for i, action in enumerate(actions):
        by_exchange.setdefault(action.exchange, []).append(i)
    slots = asyncio.Semaphore(ENROL_CONCURRENCY)

    async def one_exchange(indices: list[int]) -> None:
        async with slots:
            for i in indices:
                outcome = await _carry_out_one(client, placements, actions[i], actor)
                if outcome is not None:
                    outcomes[i] = outcome

    await asyncio.gather(*(one_exchange(indices) for indices in by_exchange.values()))
    for i in sorted(outcomes):
        kind, line = outcomes[i]
        if kind == "unavailable":
            report.unavailable.append(line)
            kind = "failed"
        getattr(report, kind).append(line)


async def _carry_out_one(
    client: Client, placements: dict[str, Placement], action: Change, actor: str | None = None
) -> tuple[str, str] | None:
    """One action: which report list its line goes to, and the line (None: nothing to report)."""
    try:
        if action.kind in (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY):
            line = await _register(client, placements[action.exchange], action, actor)
        elif action.kind is ChangeKind.SHUTDOWN:
            assert action.host is not None
            await control.command(
                client,
                exchange=action.exchange,
                host=action.host,
                default_host=action.host,
                command=Command.SHUTDOWN,
                actor=actor,
            )
            line = f"{action.exchange}: shut down on {action.host}"
        elif action.kind in (ChangeKind.WAIT, ChangeKind.FAILSAFE_DIFFERS):
            log.info("fleet: %s", action.describe())
            return "waiting", action.describe()
        else:
            return None
    except errors.ServiceUnavailable as exc:
        return "unavailable", f"{action.exchange} on {action.host}: {exc}"
    except errors.PerseusError as exc:
        return "failed", f"{action.exchange} on {action.host}: {exc}"
    log.info("fleet: %s", line)
    return "done", line


async def check_admins(catalog: Catalog, placements: list[Placement]) -> None:
    """Every admin the file names is a user (part of validating the file before anything changes)."""
    for p in placements:
        if p.admin_email is not None:
            try:
                await catalog.admin(p.admin_email)
            except errors.UnknownAdmin as exc:
                raise errors.InvalidFleet(f"exchanges.{p.exchange}.admin_email: {exc}") from None


async def plan_fleet(
    client: Client, catalog: Catalog, store: RedisStore, placements: list[Placement], *, prune: bool
) -> tuple[list[Change], dict[str, Placement]]:
    """The actions ``fleet apply`` would take now (``fleet diff`` prints them)."""
    stored = await catalog.placements()
    ids = await _exchange_ids(catalog)
    everything = [*placements, *stored]
    observed = await observe(
        client,
        store,
        ids,
        _pairs(everything),
        stored=stored,
        hosts=(h for p in placements for h in p.hosts),
        failsafe=True,
    )
    return reconcile(placements, observed, prune=prune), {p.exchange: p for p in placements}


async def apply_fleet(
    client: Client,
    catalog: Catalog,
    store: RedisStore,
    placements: list[Placement],
    *,
    prune: bool,
    actor: str | None = None,
) -> tuple[list[Change], EnrolReport]:
    """Store the placements durably (one transaction), then register/shut down what the plan says;
    what that causes names ``fleet:<actor>``."""
    actions, by_name = await plan_fleet(client, catalog, store, placements, prune=prune)
    to_store = [by_name[a.exchange] for a in actions if a.kind is ChangeKind.STORE]
    forget = [a.exchange for a in actions if a.kind is ChangeKind.FORGET]
    if to_store or forget:
        await catalog.store_placements(to_store, forget=forget)
    report = EnrolReport()
    await carry_out(client, by_name, actions, report, fleet_actor(actor) if actor else None)
    if any(a.changes for a in actions):
        # Running workers watch their placed instances; tell them the set changed.
        await catalog.notify_fleet(",".join(sorted({a.exchange for a in actions})))
    return actions, report


async def enrol_host(
    client: Client, catalog: Catalog, store: RedisStore, host: str, settings: Settings
) -> EnrolReport:
    """Register ``host``'s stored placements that do not run there: active (and started) when
    nobody holds the exchange, else a standby with the placement's priority.

    Called by the worker once it polls its queues (its own host activities must be served for a
    registration to finish). ``settings`` is the worker's; placements carry their own interval.
    """
    del settings  # every value an enrolment needs is in the stored placement
    report = EnrolReport(host=host)
    placements = await catalog.placements(host)
    if not placements:
        return report
    ids = await _exchange_ids(catalog)
    placements = [p for p in placements if p.exchange in ids]  # a deactivated exchange is skipped
    observed = await observe(
        client, store, ids, [(p.exchange, host) for p in placements], stored=placements, hosts=[]
    )  # no liveness question: this worker is the host, and its first polls may not be seen yet
    actions = enrol_plan(placements, host, observed)
    await carry_out(client, {p.exchange: p for p in placements}, actions, report)
    return report


async def _watch_and_enrol(
    client: Client, catalog: Catalog, store: RedisStore, host: str, settings: Settings
) -> None:
    """Enrol, then wait for an event: one of the host's placed instances ends (lost: enrol again),
    Temporal answers again after an outage (enrol again), or an apply changed the placements (watch
    the new set). Each wait is a long poll — a workflow's result, a PostgreSQL LISTEN — so this
    costs nothing while all is well.

    An enrolment that cannot finish because a server does not answer (a worker started while
    PostgreSQL or Temporal was down, or a registration that timed out in the outage) is tried again
    with a capped backoff until it does: a running worker never leaves its placements unenrolled.
    Losing the LISTEN connection counts as such an outage (an apply may go unheard meanwhile)."""
    listener: FleetListener | None = None
    changed: asyncio.Task[str] | None = None
    retry: asyncio.Task[None] | None = None
    watched: list[asyncio.Task[str]] = []
    wait = RetryWait()
    enrol, refresh = True, True
    try:
        while True:
            if enrol or refresh:
                if retry is not None:
                    await _cancel([retry])
                    retry = None
                try:
                    if listener is None:
                        listener = await _listening(settings.database_url)
                    report = EnrolReport(host=host)
                    if enrol:
                        report = await enrol_host(client, catalog, store, host, settings)
                    for failure in (f for f in report.failed if f not in report.unavailable):
                        log.warning("fleet enrolment of host %s: %s", host, failure)
                    if report.done:
                        log.info("fleet enrolment of host %s: %s", host, "; ".join(report.done))
                    await _cancel(watched)
                    watched = [
                        asyncio.create_task(_outcome(client, workflow_id(p.exchange, host)), name=p.exchange)
                        for p in await catalog.placements(host)
                    ]
                    enrol, refresh = False, False
                    if report.unavailable:
                        raise errors.ServiceUnavailable("; ".join(report.unavailable))
                    wait, line = retry_over(wait)
                    if line is not None:
                        log.info("fleet enrolment of host %s: %s", host, line)
                except Exception as exc:  # noqa: BLE001 - the worker serves on; the next attempt decides
                    kind = str(getattr(exc, "server", None) or type(exc).__name__)
                    wait, delay, line = retry_after(wait, kind, str(exc) or kind)
                    if line is not None:
                        log.warning("fleet enrolment of host %s %s", host, line)
                    enrol, refresh = False, False
                    retry = asyncio.create_task(asyncio.sleep(delay))
            if listener is not None and changed is None:
                changed = asyncio.create_task(listener.changed())
            waits: list[asyncio.Task[Any]] = [
                *watched,
                *([changed] if changed is not None else []),
                *([retry] if retry is not None else []),
            ]
            if not waits:
                return
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if retry is not None and retry in done:
                retry, enrol = None, True
            if changed is not None and changed in done:
                if changed.exception() is not None:
                    log.warning(
                        "fleet: change notifications for host %s stopped: %s", host, changed.exception()
                    )
                    if listener is not None:
                        await listener.close()
                    listener = None
                    enrol = True  # reopens the channel; enrols again in case an apply went unheard
                changed, refresh = None, True
            ended = [t for t in watched if t in done]
            watched = [t for t in watched if t not in done]
            lost = [
                t.get_name() for t in ended if t.result() == RECONNECTED or ending_of(t.result()) in _LOST
            ]
            if lost:
                log.info("fleet: %s on %s lost (or Temporal back); enrolling again", ", ".join(lost), host)
                enrol = True
    finally:
        await _cancel([*watched, *(t for t in (changed, retry) if t is not None)])
        if listener is not None:
            await listener.close()


async def _listening(url: str) -> FleetListener:
    """A LISTEN on the fleet channel (ServiceUnavailable while PostgreSQL does not answer)."""
    listener = FleetListener(url)
    try:
        await listener.open()
    except BaseException:
        await listener.close()
        raise
    return listener


async def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _outcome(client: Client, wf_id: str) -> str:
    """How the workflow's current run chain ends: its result; '' when it is not running or ends
    abnormally (failed, terminated); :data:`RECONNECTED` when Temporal went away meanwhile and
    answers again (the host may have lost its instances while it could not see them)."""
    handle = client.get_workflow_handle(wf_id)
    try:
        described = await handle.describe()
        if described.status != WorkflowExecutionStatus.RUNNING:
            return ""
        return str(await handle.result())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return ""
        # Temporal is unreachable. Wait (backing off, only for the length of the outage) until it
        # answers again; that reconnection is an enrolment event of its own.
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
            with contextlib.suppress(RPCError):
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return RECONNECTED
    except Exception:  # noqa: BLE001 - failed, terminated, timed out: nothing to enrol on our side
        return ""


@contextlib.asynccontextmanager
async def enrolment(
    client: Client, catalog: Catalog, store: RedisStore, host: str, settings: Settings
) -> AsyncIterator[asyncio.Task[None]]:
    """For the worker: enrol ``host`` in the background while the worker serves its queues, and keep
    re-enrolling instances that end as lost; cancelled when the worker stops."""
    task = asyncio.create_task(_watch_and_enrol(client, catalog, store, host, settings))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# --- drain ---------------------------------------------------------------------------------------


async def exchanges_held(catalog: Catalog, store: RedisStore, host: str) -> list[str]:
    """The exchanges whose status key names ``host`` as the holder now: what a drain moves."""
    ids = await _exchange_ids(catalog)
    return sorted(e for e, h in (await _holders(store, ids, ids)).items() if h == host)


async def drain_host(
    client: Client, catalog: Catalog, store: RedisStore, host: str, *, force: bool, actor: str | None = None
) -> list[str]:
    """Hand every exchange ``host`` holds to its best live standby, one at a time (or shut it down
    with ``force`` when it has none); refuses before changing anything when one has no standby."""
    ids = await _exchange_ids(catalog)
    holders = await _holders(store, ids, ids)
    standbys: dict[str, list[Standby]] = {}
    for exchange in (e for e, h in holders.items() if h == host):
        records = await store.standbys(ids[exchange])
        standbys[exchange] = [Standby(host=r.host, priority=r.priority) for r in records]
    steps: list[DrainStep] = drain_plan(host, holders, standbys, force=force)
    done: list[str] = []
    for step in steps:
        try:
            if step.action == "handoff":
                assert step.to_host is not None
                result = await control.handoff(
                    client,
                    exchange=step.exchange,
                    to_host=step.to_host,
                    from_host=host,
                    default_host=host,
                    shutdown=False,
                    actor=actor,
                )
                done.append(f"{step.exchange}: handed over to {step.to_host} ({result.detail})")
            else:
                await control.command(
                    client,
                    exchange=step.exchange,
                    host=host,
                    default_host=host,
                    command=Command.SHUTDOWN,
                    actor=actor,
                )
                done.append(f"{step.exchange}: shut down on {host} (no standby; --force)")
        except errors.PerseusError as exc:
            finished = f" after {'; '.join(done)}" if done else ""
            raise type(exc)(f"drain of {host} stopped at {step.exchange}: {exc}{finished}") from None
        log.info("drain: %s", done[-1])
    return done


# --- status --------------------------------------------------------------------------------------


class FleetExchangeView(Wire):
    """One exchange in ``perseus fleet status`` (camelCase in JSON, like every read view)."""

    exchange: str
    in_fleet: bool
    desired_hosts: list[str]
    active_host: str | None
    active_state: str | None
    standbys: list[str]
    instances: list[str]
    warm: bool = False
    drift: list[str]
    #: Its hosts (placed, running or standing by) whose worker runs an older release than the
    #: newest any live host runs, with that version: an upgrade not finished.
    outdated: dict[str, str] = Field(default_factory=dict)


async def _running_instances(client: Client) -> list[tuple[str, str, Role]]:
    """(exchange, host, role) of every running instance workflow (visibility: eventually consistent)."""
    query = f"WorkflowType = '{INSTANCE_WORKFLOW}' AND ExecutionStatus = 'Running'"
    found: list[tuple[str, str, Role]] = []
    try:
        async for wf in client.list_workflows(query):
            attrs = wf.typed_search_attributes
            exchange, host = attrs.get(EXCHANGE_NAME), attrs.get(INSTANCE_HOST)
            if exchange and host:
                role = Role.STANDBY if attrs.get(INSTANCE_ROLE) == Role.STANDBY.value else Role.ACTIVE
                found.append((exchange, host, role))
    except RPCError as exc:
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    return found


async def _failsafe_of(client: Client, exchanges: list[str]) -> dict[str, frozenset[str]]:
    """The roster of each of ``exchanges`` (the instances running with the failsafe), best effort: an
    exchange whose roster does not answer is left out of the view's failsafe drift."""
    answers = await asyncio.gather(
        *(control.failsafe_members(client, e) for e in exchanges), return_exceptions=True
    )
    return {e: a for e, a in zip(exchanges, answers, strict=True) if isinstance(a, frozenset)}


async def fleet_status(client: Client, catalog: Catalog, store: RedisStore) -> list[FleetExchangeView]:
    """Per exchange (placed, or running without a placement): desired hosts, the active host, the
    standbys, and the drift between them."""
    placements = {p.exchange: p for p in await catalog.placements()}
    ids = await _exchange_ids(catalog)
    running: dict[str, list[str]] = {}
    for exchange, host, _ in await _running_instances(client):
        running.setdefault(exchange, []).append(host)
    # Every catalog exchange's status key in one pipelined round trip: an instance registered a
    # moment ago holds its key before the visibility index lists its workflow.
    every = sorted(ids)
    held = {
        n: r for n, r in zip(every, await store.statuses([ids[n] for n in every]), strict=True) if r.exists
    }
    names = sorted((set(placements) | set(running) | set(held)) & set(ids))
    live = await live_hosts(client, {h for p in placements.values() for h in p.hosts})
    host_views = summarise(await store.workers(), {})
    behind = outdated_hosts(host_views)
    newest_seen = release.newest([v.version for v in host_views])
    failsafe = await _failsafe_of(client, [n for n in names if n in placements and running.get(n)])
    views: list[FleetExchangeView] = []
    for name in names:
        status = read.record if (read := held.get(name)) is not None else None
        active = _holder_host(name, status)
        standbys = [r.host for r in await store.standbys(ids[name])]
        placement = placements.get(name)
        here = sorted(set(running.get(name, [])) | ({active} if active else set()))
        drift: list[str] = []
        if placement is None:
            drift.append("not in the fleet (registered by hand)")
        else:
            for host in placement.hosts:
                if host not in live:
                    drift.append(f"{host}: no worker")
                elif host not in here and host not in standbys:
                    drift.append(f"{host}: not enrolled")
            if active is None:
                drift.append("no active instance")
            elif active != placement.hosts[0]:
                drift.append(
                    f"active on {active}, preferred {placement.hosts[0]} "
                    f"(perseus handoff {name} --to {placement.hosts[0]})"
                )
            drift.extend(f"{h}: not in the fleet" for h in here if h not in placement.hosts)
            if name in failsafe:
                wanted, runs = ("on", "off") if placement.failsafe else ("off", "on")
                drift.extend(
                    f"{h}: failsafe {runs}, the file says {wanted} (perseus shutdown {name} --host {h}, "
                    "then fleet apply)"
                    for h in running.get(name, [])
                    if (workflow_id(name, h) in failsafe[name]) != placement.failsafe
                )
        involved = set(placement.hosts if placement else []) | set(here) | set(standbys)
        old = {h: behind[h] for h in sorted(involved) if h in behind}
        drift.extend(f"{h}: runs {v}, older than {newest_seen} (upgrade it)" for h, v in old.items())
        views.append(
            FleetExchangeView(
                exchange=name,
                in_fleet=placement is not None,
                desired_hosts=list(placement.hosts) if placement else [],
                active_host=active,
                active_state=status.connection_state.value if status else None,
                standbys=standbys,
                instances=here,
                warm=placement.warm if placement else False,
                drift=drift,
                outdated=old,
            )
        )
    return views
