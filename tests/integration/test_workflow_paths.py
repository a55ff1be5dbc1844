"""The instance workflow's paths on the time-skipping test server, activities stood in by name.

Every path also leaves a golden history (written when PERSEUS_RECORD_HISTORIES=1) that
tests/unit/test_replay.py replays against the current code, so a change that breaks running
workflows fails CI.

Heartbeats themselves live inside the long-running lease activity and add nothing to history; the
test server cannot skip time while an activity runs (measured: a 10 s activity took 10 s), so the
virtual clock is used here for the workflow's own timers (host pickup windows, schedule-to-start).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from perseus.core.decisions import act_after_vacancy_s, lease_heartbeat_timeout_s
from perseus.core.lifecycle import Command, Role, State
from perseus.keys import host_task_queue, iso
from perseus.models import (
    ClaimProbe,
    ClaimProbeRequest,
    ClaimResult,
    CommandRequest,
    ConnectorPreflight,
    ConnectorReport,
    ConnectorRequest,
    ConnectorSpec,
    DropStandbyRequest,
    Exchange,
    FailsafeHolding,
    HandoffRequest,
    HostClaimRequest,
    HostPresence,
    Identity,
    IdentityRequest,
    InstanceInput,
    InstanceSnapshot,
    LeaseOutcome,
    LeaseRequest,
    NotifyRequest,
    PatchResult,
    PromoteRequest,
    Recorded,
    RecordRequest,
    RegistrationResult,
    ReleaseRequest,
    Resolved,
    ResolveRequest,
    StandbyLeaseRequest,
    StandbyList,
    StandbyOutcome,
    StandbyQuery,
    StandbyRecord,
)
from perseus.temporal import converter
from perseus.timing import PICKUP_FACTOR, workflow_task_timeout_s
from workflows.instance import InstanceWorkflow

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
#: A standby promoted and started cold, then shut down: its events, and its connector's steps.
PROMOTED_COLD_THEN_SHUT_DOWN = [
    ("standby_registered", None, None),
    ("promoted", None, None),
    ("state_transition", "idle", "starting"),
    ("state_transition", "starting", "warming"),
    ("state_transition", "warming", "active"),
    ("state_transition", "active", "stopping"),
    ("state_transition", "stopping", "stopped"),
]
COLD_START_THEN_STOP = [
    ("connector_prepare", "active"),
    ("connector_warm_up", "active"),
    ("connector_connect", "active"),
    ("connector_disconnect", "active"),
]
HOST = "ts-host"
#: The standby's host in the handoff test.
OTHER_HOST = "ts-host-b"


@dataclass
class Stand:
    """Stand-in activities that record what the workflow asked for."""

    epochs: int = 0
    conflict: bool = False
    events: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    patches: list[dict[str, object]] = field(default_factory=list)
    released: int = 0
    lease_calls: int = 0
    lease_behaviour: Callable[[int], Any] | None = None
    fail_warm_up: bool = False
    #: What ``host_polled`` answers (a busy host's worker polls; a missing one does not), and how
    #: often it was asked.
    host_polled: bool = False
    presence_asked: int = 0
    asked_twice: asyncio.Event = field(default_factory=asyncio.Event)
    #: (activity, role) of every connector step asked for.
    connector_calls: list[tuple[str, str]] = field(default_factory=list)
    standby_records: int = 0
    #: What ``list_standbys`` answers (the live standbys of the exchange, as Redis would list them).
    standbys: list[StandbyRecord] = field(default_factory=list)
    #: The ``detail`` and ``error`` of every event recorded, in order (beside ``events``).
    details: list[str | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    #: Claims that asked to take a lapsed holder's key over (``ClaimRequest.take_lapsed``).
    took_over: int = 0
    #: What ``probe_claim`` answers (the key as Redis shows it), and how often it was asked.
    probe: ClaimProbe = field(default_factory=lambda: ClaimProbe(held_by_us=True, renewed_ms_ago=500))
    probes: int = 0
    #: The lease term (by call number) that stops heartbeating to Temporal once ``silence`` is set:
    #: its host lost Temporal while its keeper renews on (what ``probe`` then shows).
    silent_lease: int | None = None
    silence: asyncio.Event = field(default_factory=asyncio.Event)
    #: Every term from ``silent_lease`` on is silent once ``silence`` is set (the host never comes
    #: back to Temporal), not only that one.
    silent_after: bool = False
    #: What the lease's heartbeats carry as details (its holder's failsafe state), None: nothing.
    beat_details: FailsafeHolding | None = None
    #: When each probe was answered and each release asked (monotonic seconds).
    probed_at: list[float] = field(default_factory=list)
    released_at: list[float] = field(default_factory=list)
    #: What the standby's watch returns once ``vacate`` is set (the exchange falling vacant, as the
    #: host's watch reports it); it is returned once, and every other watch stays quiet. None: quiet.
    vacancy: StandbyOutcome | None = None
    vacate: asyncio.Event = field(default_factory=asyncio.Event)
    watches: int = 0

    def activities(self) -> list[Callable[..., Any]]:
        stand = self

        @activity.defn(name="resolve_instance")
        async def resolve(req: ResolveRequest) -> Resolved:
            return Resolved(
                exchange=Exchange(id=42, name=req.exchange, display_name="TS", is_active=True), admin=None
            )

        @activity.defn(name="detect_identity")
        async def identity(req: IdentityRequest) -> Identity:
            return Identity(hostname=req.host, ip_address="192.0.2.7")

        @activity.defn(name="claim_and_hold")
        async def claim(host_req: HostClaimRequest) -> ClaimResult:
            req = host_req.claim
            stand.epochs = max(stand.epochs, req.highest_epoch) + 1
            if stand.conflict:
                return ClaimResult(
                    claimed=False, epoch=stand.epochs, message="exchange 42 (x) is already claimed by other"
                )
            stand.took_over += int(req.take_lapsed)
            over = f"old-host (epoch {req.highest_epoch})" if req.take_lapsed else None
            return ClaimResult(claimed=True, epoch=stand.epochs, took_over=over)

        @activity.defn(name="release_claim")
        async def release(req: ReleaseRequest) -> PatchResult:
            stand.released += 1
            stand.released_at.append(time.monotonic())
            return PatchResult(applied=True)

        @activity.defn(name="record")
        async def record(req: RecordRequest) -> Recorded:
            e = req.event
            if req.patch is not None:
                stand.patches.append(req.patch.fields)
            stand.events.append(
                (
                    e.event.value,
                    e.from_state.value if e.from_state else None,
                    e.to_state.value if e.to_state else None,
                )
            )
            stand.details.append(e.detail)
            stand.errors.append(e.error)
            return Recorded(
                stream_id=f"{len(stand.events)}-0",
                patch=PatchResult(applied=True) if req.patch is not None else None,
                notify=True,
            )

        @activity.defn(name="host_polled")
        async def polled(req: IdentityRequest) -> HostPresence:
            stand.presence_asked += 1
            if stand.presence_asked >= 2:
                stand.asked_twice.set()
            return HostPresence(polled=stand.host_polled, pollers=1 if stand.host_polled else 0)

        @activity.defn(name="notify_event")
        async def notify(req: NotifyRequest) -> str:
            return "disabled"

        @activity.defn(name="hold_lease")
        async def lease(req: LeaseRequest) -> LeaseOutcome:
            stand.lease_calls += 1
            call = stand.lease_calls
            if stand.lease_behaviour is not None:
                result = stand.lease_behaviour(call)
                if result is not None:
                    return result  # type: ignore[no-any-return]
            silent = stand.silent_lease is not None and (
                call == stand.silent_lease or stand.silent_after and call > stand.silent_lease
            )
            while True:  # a healthy lease: heartbeats until cancelled
                if silent and stand.silence.is_set():
                    # Silent from here on; the worker's shutdown cancels it at the end of the test.
                    await asyncio.Event().wait()
                if stand.beat_details is not None:
                    activity.heartbeat(stand.beat_details)
                else:
                    activity.heartbeat()
                await asyncio.sleep(0.05)

        @activity.defn(name="probe_claim")
        async def probe(req: ClaimProbeRequest) -> ClaimProbe:
            stand.probes += 1
            stand.probed_at.append(time.monotonic())
            return stand.probe

        def connector(name: str) -> Callable[..., Any]:
            @activity.defn(name=name)
            async def step(req: ConnectorRequest) -> ConnectorReport:
                stand.connector_calls.append((name, req.role))
                if name == "connector_warm_up" and stand.fail_warm_up:
                    raise ApplicationError(
                        "simulated warm_up failure", type="ConnectorError", non_retryable=True
                    )
                return ConnectorReport(symbol_count=3 if name == "connector_prepare" else 0, running=True)

            return step

        connectors = [
            connector(n)
            for n in (
                "connector_prepare",
                "connector_warm_up",
                "connector_connect",
                "connector_disconnect",
                "connector_check",
                "connector_activate",
            )
        ]

        @activity.defn(name="connector_preflight")
        async def preflight(req: ConnectorRequest) -> ConnectorPreflight:
            stand.connector_calls.append(("connector_preflight", req.role))
            return ConnectorPreflight(hostname="target")

        connectors.append(preflight)

        @activity.defn(name="put_standby")
        async def put_standby(record: StandbyRecord) -> None:
            stand.standby_records += 1

        @activity.defn(name="drop_standby")
        async def drop_standby(req: DropStandbyRequest) -> None:
            stand.standby_records -= 1

        @activity.defn(name="list_standbys")
        async def list_standbys(req: StandbyQuery) -> StandbyList:
            return StandbyList(standbys=stand.standbys)

        @activity.defn(name="hold_standby")
        async def hold_standby(req: StandbyLeaseRequest) -> StandbyOutcome:
            stand.watches += 1
            while True:  # a quiet watch: heartbeats until cancelled (or the vacancy, once)
                if stand.vacancy is not None and stand.vacate.is_set():
                    outcome, stand.vacancy = stand.vacancy, None
                    return outcome
                activity.heartbeat()
                await asyncio.sleep(0.05)

        standby: list[Callable[..., Any]] = [put_standby, drop_standby, list_standbys, hold_standby]
        return [
            resolve,
            identity,
            claim,
            release,
            record,
            polled,
            notify,
            lease,
            probe,
            *connectors,
            *standby,
        ]


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """Keep a golden history for the replay test (only when asked to: they are committed files)."""
    if os.environ.get("PERSEUS_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


def instance_workers(
    env: WorkflowEnvironment, stand: Stand, inp: InstanceInput, *, host_worker: bool = True
) -> tuple[str, list[Worker]]:
    """The workers one instance needs: its workflow and shared activities on a queue of its own
    (returned), its host steps on its host's queue — so two instances keep separate stand-ins."""
    queue = f"ts-{uuid.uuid4().hex[:8]}"
    activities = stand.activities()
    host_acts = [
        a
        for a in activities
        if getattr(a, "__temporal_activity_definition").name
        in ("detect_identity", "claim_and_hold", "hold_lease", "hold_standby")
        or "connector" in getattr(a, "__temporal_activity_definition").name
    ]
    shared_acts = [a for a in activities if a not in host_acts]
    # As worker.py: a host's worker also takes the steps an instance sends to its own host first.
    also_on_host = [
        a
        for a in shared_acts
        if getattr(a, "__temporal_activity_definition").name in ("record", "list_standbys", "drop_standby")
    ]
    workers = [Worker(env.client, task_queue=queue, workflows=[InstanceWorkflow], activities=shared_acts)]
    if host_worker:
        workers.append(
            Worker(env.client, task_queue=host_task_queue(inp.host), activities=[*host_acts, *also_on_host])
        )
    return queue, workers


async def run_paths(
    env: WorkflowEnvironment,
    stand: Stand,
    inp: InstanceInput,
    body: Callable[[WorkflowHandle[Any, Any]], Any],
    *,
    host_worker: bool = True,
) -> Any:
    queue, workers = instance_workers(env, stand, inp, host_worker=host_worker)
    async with contextlib_stack(workers):
        handle = await env.client.start_workflow(
            InstanceWorkflow.run, inp, id=f"instance-{inp.exchange}-{inp.host}", task_queue=queue
        )
        return await body(handle)


class contextlib_stack:  # noqa: N801 - reads like the contextlib helper it wraps
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def __aenter__(self) -> None:
        for w in self.workers:
            await w.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        for w in reversed(self.workers):
            await w.__aexit__(None, None, None)


def instance(name: str, **kw: Any) -> InstanceInput:
    kw.setdefault("heartbeat_interval_s", 2.0)
    return InstanceInput(exchange=f"{name}{uuid.uuid4().hex[:6]}", host=HOST, **kw)


async def command(handle: WorkflowHandle[Any, Any], cmd: Command) -> Any:
    return await handle.execute_update(InstanceWorkflow.command, CommandRequest(command=cmd))


async def snapshot_across_runs(handle: WorkflowHandle[Any, Any]) -> InstanceSnapshot:
    """The current run's snapshot while the chain may be continuing as new. The time-skipping test
    server can leave a query unanswered that reaches it just as the run it was meant for closes
    (seen once in CI: "Timeout expired", beside "workflow execution already completed" for that
    run's last task): ask again, each time with a bound, rather than wait on one call forever."""
    for attempt in range(1, 6):
        try:
            snap: InstanceSnapshot = await handle.query(
                InstanceWorkflow.snapshot, rpc_timeout=timedelta(seconds=5)
            )
            return snap
        except RPCError:
            if attempt == 5:
                raise
    raise AssertionError("unreachable")


async def test_lifecycle_path(ts_env: WorkflowEnvironment) -> None:
    stand = Stand()

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registered = await handle.execute_update(InstanceWorkflow.wait_registered)
        assert (
            registered.epoch == 1 and registered.state is State.IDLE and registered.ip_address == "192.0.2.7"
        )
        assert (await command(handle, Command.START)).transitions == [
            State.STARTING,
            State.WARMING,
            State.ACTIVE,
        ]
        snap = await handle.query(InstanceWorkflow.snapshot)
        assert snap.state is State.ACTIVE and snap.symbol_count == 3
        await command(handle, Command.STOP)
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        await record_history(handle, "lifecycle")

    await run_paths(ts_env, stand, instance("life"), body)
    assert [e for e in stand.events] == [
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
        ("state_transition", "stopped", "idle"),
    ]
    assert stand.released == 1
    assert any(p.get("connectedAt") for p in stand.patches)


async def test_warm_standby_warms_while_waiting_and_is_activated_on_promotion(
    ts_env: WorkflowEnvironment,
) -> None:
    stand = Stand()

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registered = await handle.execute_update(InstanceWorkflow.wait_registered)
        assert registered.role == "standby" and registered.epoch == 0
        for _ in range(200):  # the warm-up runs in the background of the watch
            if ("connector_warm_up", "standby") in stand.connector_calls:
                break
            await asyncio.sleep(0.05)
        assert stand.connector_calls == [
            ("connector_check", "standby"),  # nothing warm here yet (the stand-in says not ready)
            ("connector_prepare", "standby"),
            ("connector_warm_up", "standby"),
        ]
        await handle.signal(InstanceWorkflow.promote, PromoteRequest(reason="test promotion", min_epoch=4))
        for _ in range(200):
            snap = await handle.query(InstanceWorkflow.snapshot)
            if snap.state is State.ACTIVE:
                break
            await asyncio.sleep(0.05)
        assert snap.state is State.ACTIVE and snap.claim is not None and snap.claim.epoch == 5
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        await record_history(handle, "warm-promotion")

    await run_paths(ts_env, stand, instance("warm", standby=True, connector=ConnectorSpec(warm=True)), body)
    # Activated under the new claim: no prepare, warm-up or connect as an active connector.
    assert [c for c in stand.connector_calls if c[1] == "active"] == [
        ("connector_activate", "active"),
        ("connector_disconnect", "active"),
    ]
    assert [e for e in stand.events if e[0] != "standby_registered"] == [
        ("promoted", None, None),
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
    ]
    assert stand.standby_records == 0


async def reaching(handle: WorkflowHandle[Any, Any], state: State, limit_s: float = 10.0) -> InstanceSnapshot:
    """The instance's snapshot once it reads ``state``; fails the test after ``limit_s``."""
    for _ in range(int(limit_s / 0.05)):
        snap: InstanceSnapshot = await handle.query(InstanceWorkflow.snapshot)
        if snap.state is state:
            return snap
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} never reached {state.value}: {snap}")


async def test_cold_standby_registers_without_a_claim_and_starts_cold_when_promoted(
    ts_env: WorkflowEnvironment,
) -> None:
    stand = Stand()

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registered = await handle.execute_update(InstanceWorkflow.wait_registered)
        # Visible as a standby (its own id, epoch 0), holding nothing: no claim was even asked for.
        assert registered.role is Role.STANDBY and registered.epoch == 0 and registered.instance_id
        assert registered.state is State.IDLE
        assert stand.epochs == 0 and stand.standby_records == 1
        snap = await handle.query(InstanceWorkflow.snapshot)
        assert snap.role is Role.STANDBY and snap.claim is None
        # What a dying holder's workflow sends: claim above the highest epoch it saw, then start.
        await handle.signal(InstanceWorkflow.promote, PromoteRequest(reason="test promotion", min_epoch=4))
        snap = await reaching(handle, State.ACTIVE)
        assert snap.role is Role.ACTIVE and snap.claim is not None and snap.claim.epoch == 5
        assert snap.claim.instance_id != registered.instance_id  # a fresh claim, not the standby's id
        assert snap.symbol_count == 3
        assert stand.standby_records == 0  # the record is dropped once the claim is held
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        await record_history(handle, "standby-promotion")

    await run_paths(ts_env, stand, instance("cold", standby=True), body)
    # A cold standby runs nothing while it waits; promoted, it starts from scratch under the claim.
    assert stand.connector_calls == COLD_START_THEN_STOP
    assert stand.events == PROMOTED_COLD_THEN_SHUT_DOWN
    assert stand.details[1] == "test promotion"  # cold: no "(warm: …)" note
    assert stand.epochs == 5 and stand.released == 1


async def test_a_promotion_whose_connector_cannot_start_moves_on_to_the_next_standby(
    ts_env: WorkflowEnvironment,
) -> None:
    now = datetime.now(UTC).isoformat()
    stand = Stand(fail_warm_up=True)
    stand.standbys = [
        StandbyRecord(
            exchange_id=42,
            exchange_name="next",
            host=OTHER_HOST,
            hostname=OTHER_HOST,
            instance_id="next-standby",
            workflow_id=f"instance-next-{OTHER_HOST}",  # no such run: the signal cannot be delivered
            registered_at=now,
            last_heartbeat=now,
            ttl_ms=6000,
            heartbeat_interval_ms=2000,
        )
    ]

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        await handle.signal(InstanceWorkflow.promote, PromoteRequest(reason="test promotion", min_epoch=4))
        # It took the claim, could not start, released it and waits as a standby again.
        for _ in range(200):
            snap = await handle.query(InstanceWorkflow.snapshot)
            if snap.role is Role.STANDBY and stand.released:
                break
            await asyncio.sleep(0.05)
        assert snap.role is Role.STANDBY and snap.claim is None and stand.released == 1
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        await record_history(handle, "promotion-start-failed")

    await run_paths(ts_env, stand, instance("failprom", standby=True), body)
    assert stand.epochs == 5
    assert any("released the exchange for the next standby" in (e or "") for e in stand.errors), stand.errors
    assert [kind for kind, _, _ in stand.events].count("standby_registered") == 2  # before and after


#: The epoch the holder whose key fell vacant held, as the standby's watch last saw it in the key.
VACANT_EPOCH = 6


def commands(history: WorkflowHistory) -> list[str]:
    """What a run asked for, in order: activities by type, local ones (``record``) by summary, timers
    by summary and when they fired, signals to other workflows by name, patches by id."""
    out: list[str] = []
    for e in history.events:
        summary = (
            converter.payload_converter.from_payload(e.user_metadata.summary, str)
            if e.HasField("user_metadata") and e.user_metadata.HasField("summary")
            else None
        )
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            out.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            out.append(f"timer: {summary}")
        elif e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            out.append("timer fired")
        elif e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            signal = e.signal_external_workflow_execution_initiated_event_attributes
            out.append(f"signal: {signal.signal_name}")
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                data = converter.payload_converter.from_payload(marker.details["patch-data"].payloads[0])
                out.append(f"patch: {data['id']}")
            elif summary is not None:
                out.append(summary)
    return out


def timers(history: WorkflowHistory) -> list[tuple[str, timedelta]]:
    """Every timer the run started: its summary and how long it was set for."""
    return [
        (
            converter.payload_converter.from_payload(e.user_metadata.summary, str),
            e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta(),
        )
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]


async def promoted_by_vacancy(
    ts_env: WorkflowEnvironment, *, lapsed: bool, name: str, silent: bool = False
) -> tuple[Stand, WorkflowHistory]:
    """A cold standby whose watch reports the exchange vacant (nobody signalled it: the holder's
    workflow is gone too) — or, ``silent``, its holder's key still there but unrenewed past the
    holder's renew deadline — takes it by itself, then shuts down. The stand-ins and the history."""
    stand = Stand(
        vacancy=StandbyOutcome(vacant=True, last_epoch=VACANT_EPOCH, lapsed=lapsed, holder_silent=silent)
    )
    histories: list[WorkflowHistory] = []

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registered = await handle.execute_update(InstanceWorkflow.wait_registered)
        assert registered.role is Role.STANDBY and registered.epoch == 0
        assert stand.standby_records == 1 and stand.epochs == 0
        stand.vacate.set()  # the holder's key is gone: the watch ends with the vacancy
        snap = await reaching(handle, State.ACTIVE)
        # Claimed above the epoch the watch last saw in the key, under a fresh claim.
        assert snap.role is Role.ACTIVE and snap.claim is not None and snap.claim.epoch == VACANT_EPOCH + 1
        assert snap.claim.instance_id != registered.instance_id
        assert snap.symbol_count == 3
        assert stand.standby_records == 0  # no longer listed as a standby of the exchange
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        histories.append(await handle.fetch_history())
        await record_history(handle, name)

    # The shortest interval the timings allow: the test server keeps real time while the new
    # claim's lease runs, so the not-lapsed path waits its 2.1 intervals in real seconds.
    await run_paths(ts_env, stand, instance("vac", standby=True, heartbeat_interval_s=1.0), body)
    assert stand.watches == 1  # one watch, ended by the vacancy; promoted, the instance watches no more
    assert stand.events == PROMOTED_COLD_THEN_SHUT_DOWN
    assert stand.took_over == int(silent)  # only a silent holder's key is claimed over
    assert stand.details[1] == (  # cold: no "(warm: …)" note
        "the holder stopped renewing its claim (past its renew deadline); "
        f"claimed over old-host (epoch {VACANT_EPOCH})"
        if silent
        else "the holder's claim expired (TTL)"
    )
    assert stand.connector_calls == COLD_START_THEN_STOP
    assert stand.epochs == VACANT_EPOCH + 1 and stand.released == 1 and stand.standby_records == 0
    return stand, histories[0]


def after_the_watch(history: WorkflowHistory) -> list[str]:
    """The run's commands from the vacancy on, through the first connector step (leaving out the
    notifications each event fans out)."""
    done = [c for c in commands(history) if c != "notify_event"]
    return done[done.index("hold_standby") + 1 : done.index("connector_prepare") + 1]


def timer_ran(history: WorkflowHistory) -> timedelta:
    """How long the run's one timer took from start to fire, on the server's clock."""
    (started,) = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    (fired,) = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
    return fired.event_time.ToDatetime() - started.event_time.ToDatetime()


async def test_standby_takes_a_lapsed_vacant_exchange_and_acts_at_once(ts_env: WorkflowEnvironment) -> None:
    """The watch saw the holder's key unrenewed past its renew deadline before it vanished: the key
    ran out by its TTL, its holder's connector has stopped, and there is nothing to wait for: claim,
    drop the record, ``promoted``, start."""
    _, history = await promoted_by_vacancy(ts_env, lapsed=True, name="vacancy-lapsed")
    assert timers(history) == []
    assert after_the_watch(history) == [
        "list_standbys",  # who is ahead (nobody: no head start to give)
        "claim_and_hold",
        "hold_lease",  # the fresh claim renewed at once, and nothing waited for
        "drop_standby",
        "record promoted",
        "record state_transition",  # idle → starting
        "connector_prepare",
    ]


async def test_standby_claims_over_a_silent_holder_and_acts_at_once(ts_env: WorkflowEnvironment) -> None:
    """The watch saw the holder's key, still there, unrenewed past the holder's renew deadline plus
    the margin: the claim takes it over (``take_lapsed``), and the run is the lapsed vacancy's."""
    _, history = await promoted_by_vacancy(ts_env, lapsed=True, silent=True, name="vacancy-claimed-over")
    assert timers(history) == []
    assert after_the_watch(history) == [
        "list_standbys",
        "claim_and_hold",
        "hold_lease",
        "drop_standby",
        "record promoted",
        "record state_transition",
        "connector_prepare",
    ]


async def test_standby_takes_a_vacant_exchange_redis_lost_and_waits_out_the_old_deadline(
    ts_env: WorkflowEnvironment,
) -> None:
    """The key vanished while fresh (Redis lost it): its holder may act until its renew deadline,
    so the standby claims (fenced, and in priority order) but its connector waits that out."""
    _, history = await promoted_by_vacancy(ts_env, lapsed=False, name="vacancy-not-lapsed")
    assert timers(history) == [("wait out the old deadline", timedelta(seconds=act_after_vacancy_s(1.0)))]
    assert act_after_vacancy_s(1.0) == pytest.approx(2.1)
    assert after_the_watch(history) == [
        "list_standbys",
        "claim_and_hold",
        "hold_lease",  # the fresh claim is renewed meanwhile
        "timer: wait out the old deadline",
        "timer fired",  # only then does anything act
        "drop_standby",
        "record promoted",
        "record state_transition",  # idle → starting
        "connector_prepare",
    ]
    assert timer_ran(history) >= timedelta(seconds=act_after_vacancy_s(1.0))


async def test_a_release_by_the_holder_ends_the_deadline_wait_and_is_what_promoted_says(
    ts_env: WorkflowEnvironment,
) -> None:
    """The watch saw the key gone before the holder's wake arrived (the usual order under load: the
    release deletes the key at once): the standby claims and starts waiting out the old deadline;
    the holder's word that it stopped and released ends the wait, and the ``promoted`` event quotes
    it rather than the vacancy (which would read like a key lost by its TTL)."""
    stand = Stand(vacancy=StandbyOutcome(vacant=True, last_epoch=VACANT_EPOCH))
    interval = 15.0  # a 31.5 s wait to end early: no race with the signal on a loaded machine

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        stand.vacate.set()
        for _ in range(400):  # claimed, and waiting out the old deadline
            snap: InstanceSnapshot = await handle.query(InstanceWorkflow.snapshot)
            if snap.claim is not None and snap.claim.epoch == VACANT_EPOCH + 1:
                break
            await asyncio.sleep(0.05)
        assert snap.claim is not None and snap.state is State.IDLE, snap
        await handle.signal(
            InstanceWorkflow.promote,
            PromoteRequest(reason="x on old-host released: its worker shut down", min_epoch=VACANT_EPOCH),
        )
        await reaching(handle, State.ACTIVE)
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"

    await run_paths(ts_env, stand, instance("rel", standby=True, heartbeat_interval_s=interval), body)
    assert stand.details[1] == "x on old-host released: its worker shut down (its key was seen gone first)"
    assert stand.epochs == VACANT_EPOCH + 1  # one claim: the wake did not claim again


async def test_planned_handoff_moves_the_claim_and_the_old_instance_stays_as_standby(
    ts_env: WorkflowEnvironment,
) -> None:
    """Both sides of ``handoff EX --to HOST``, each with its own workers and stand-ins (as two hosts
    would have), talking by signals only: notify → stop → release → takeover → confirm."""
    old, new = Stand(), Stand()
    exchange = f"hand{uuid.uuid4().hex[:6]}"
    active = InstanceInput(exchange=exchange, host=HOST, heartbeat_interval_s=2.0)
    standby = InstanceInput(exchange=exchange, host=OTHER_HOST, heartbeat_interval_s=2.0, standby=True)
    queue_a, workers_a = instance_workers(ts_env, old, active)
    queue_b, workers_b = instance_workers(ts_env, new, standby)
    async with contextlib_stack(workers_a + workers_b):
        handing = await ts_env.client.start_workflow(
            InstanceWorkflow.run, active, id=f"instance-{exchange}-{HOST}", task_queue=queue_a
        )
        taking = await ts_env.client.start_workflow(
            InstanceWorkflow.run, standby, id=f"instance-{exchange}-{OTHER_HOST}", task_queue=queue_b
        )
        assert (await handing.execute_update(InstanceWorkflow.wait_registered)).epoch == 1
        await command(handing, Command.START)
        target = await taking.execute_update(InstanceWorkflow.wait_registered)
        assert target.role is Role.STANDBY
        # What Redis lists for the handing-over side: the target's live standby record.
        now = iso(datetime.now(UTC))
        old.standbys = [
            StandbyRecord(
                exchange_id=42,
                exchange_name=exchange,
                host=OTHER_HOST,
                hostname=OTHER_HOST,
                instance_id=target.instance_id,
                workflow_id=taking.id,
                registered_at=now,
                last_heartbeat=now,
                ttl_ms=6000,
                heartbeat_interval_ms=2000,
            )
        ]

        result = await handing.execute_update(InstanceWorkflow.handoff, HandoffRequest(to_host=OTHER_HOST))
        assert result.error is None
        assert result.transitions == [State.STOPPING, State.STOPPED, State.IDLE]
        assert (
            result.detail == f"{OTHER_HOST} active at epoch 2 (was epoch 1 here); this instance is a standby"
        )
        was = await handing.query(InstanceWorkflow.snapshot)
        assert was.role is Role.STANDBY and was.claim is None and was.state is State.IDLE
        assert old.standby_records == 1  # visible again, as a standby of the exchange it handed over
        now_active = await taking.query(InstanceWorkflow.snapshot)
        assert now_active.role is Role.ACTIVE and now_active.state is State.ACTIVE
        assert now_active.claim is not None and now_active.claim.epoch == 2

        await command(handing, Command.SHUTDOWN)
        await command(taking, Command.SHUTDOWN)
        assert await handing.result() == "shut down"
        assert await taking.result() == "shut down"
        await record_history(handing, "handoff-handing-over")
        await record_history(taking, "handoff-taking-over")

    assert old.events == [
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("handoff", None, None),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
        ("state_transition", "stopped", "idle"),
        ("handoff", None, None),
        ("handoff", None, None),
        ("standby_registered", None, None),
    ]
    steps = [d for (kind, _, _), d in zip(old.events, old.details, strict=True) if kind == "handoff"]
    assert [d.split(":")[0] if d else None for d in steps] == ["notify", "takeover", "confirm"]
    assert steps[1] == f"takeover: released epoch 1 to {OTHER_HOST}"
    assert steps[2] == f"confirm: {OTHER_HOST} active at epoch 2"
    # The old connector stopped before the claim was released (once: the standby's shutdown has
    # nothing to stop), and nothing is left registered on either side.
    assert old.connector_calls[-1] == ("connector_disconnect", "active")
    assert old.released == 1 and old.standby_records == 0 and old.epochs == 1
    assert new.events == PROMOTED_COLD_THEN_SHUT_DOWN
    assert new.details[1] == f"handoff from {HOST}"
    assert new.epochs == 2 and new.released == 1 and new.standby_records == 0


def standby_listing(
    exchange: str, target: RegistrationResult, workflow_id: str, *, warm: bool = False
) -> list[StandbyRecord]:
    """What Redis lists for the handing-over side: the target's live standby record (``warm``: its
    connector warm and ready, as its keeper writes at every renewal)."""
    now = iso(datetime.now(UTC))
    return [
        StandbyRecord(
            exchange_id=42,
            exchange_name=exchange,
            host=OTHER_HOST,
            hostname=OTHER_HOST,
            instance_id=target.instance_id,
            workflow_id=workflow_id,
            registered_at=now,
            last_heartbeat=now,
            ttl_ms=6000,
            heartbeat_interval_ms=2000,
            warm=warm,
            warm_ready=warm,
        )
    ]


async def test_handoff_whose_target_cannot_claim_takes_the_exchange_back(
    ts_env: WorkflowEnvironment,
) -> None:
    """The old side has walked down and released when the target answers ok=False (its claim was
    refused: the exchange was not free to claim). The exchange must not be left with nobody: the
    old side records ``aborted``, claims again at a new epoch, starts again, and the handoff fails
    saying it kept the exchange; the target stays a standby, its record untouched."""
    old, new = Stand(), Stand(conflict=True)  # the target's claim is refused
    exchange = f"back{uuid.uuid4().hex[:6]}"
    active = InstanceInput(exchange=exchange, host=HOST, heartbeat_interval_s=2.0)
    standby = InstanceInput(exchange=exchange, host=OTHER_HOST, heartbeat_interval_s=2.0, standby=True)
    queue_a, workers_a = instance_workers(ts_env, old, active)
    queue_b, workers_b = instance_workers(ts_env, new, standby)
    async with contextlib_stack(workers_a + workers_b):
        handing = await ts_env.client.start_workflow(
            InstanceWorkflow.run, active, id=f"instance-{exchange}-{HOST}", task_queue=queue_a
        )
        taking = await ts_env.client.start_workflow(
            InstanceWorkflow.run, standby, id=f"instance-{exchange}-{OTHER_HOST}", task_queue=queue_b
        )
        registered = await handing.execute_update(InstanceWorkflow.wait_registered)
        assert registered.epoch == 1
        await command(handing, Command.START)
        target = await taking.execute_update(InstanceWorkflow.wait_registered)
        assert target.role is Role.STANDBY and new.epochs == 0  # a standby claims nothing to register
        old.standbys = standby_listing(exchange, target, taking.id)

        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handing.execute_update(InstanceWorkflow.handoff, HandoffRequest(to_host=OTHER_HOST))
        failure = info.value.__cause__
        assert isinstance(failure, ApplicationError) and failure.type == "CommandFailed"
        assert failure.message == (
            f"handoff to {OTHER_HOST} failed (the exchange was not free to claim); kept {exchange} here"
        )
        # Taken back: claimed again above the released epoch, under a fresh claim, and started again
        # (it was active when the handoff began).
        back = await reaching(handing, State.ACTIVE)
        assert back.role is Role.ACTIVE and back.outcome is None
        assert back.claim is not None and back.claim.epoch == 2
        assert back.claim.instance_id != registered.instance_id
        # The target tried (one refused claim, above the epoch it was told) and stays a standby.
        stays = await taking.query(InstanceWorkflow.snapshot)
        assert stays.role is Role.STANDBY and stays.claim is None and stays.state is State.IDLE
        assert new.epochs == 2 and new.standby_records == 1

        await command(handing, Command.SHUTDOWN)
        await command(taking, Command.SHUTDOWN)
        assert await handing.result() == "shut down"
        assert await taking.result() == "shut down"
        await record_history(handing, "handoff-taken-back")

    assert old.events == [
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("handoff", None, None),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
        ("state_transition", "stopped", "idle"),
        ("handoff", None, None),
        ("handoff", None, None),
        # claimed again (quietly: no event), then the start it was in before the handoff
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
    ]
    steps = [d for (kind, _, _), d in zip(old.events, old.details, strict=True) if kind == "handoff"]
    assert steps == [
        f"notify: handing over to {OTHER_HOST} (standby {target.instance_id})",
        f"takeover: released epoch 1 to {OTHER_HOST}",
        f"aborted: the exchange was not free to claim; taking {exchange} back",
    ]
    # Stopped for the handoff, started cold again, stopped at shutdown; released twice (for the
    # target, then at shutdown); claimed twice; never registered as a standby.
    assert old.connector_calls == COLD_START_THEN_STOP + COLD_START_THEN_STOP
    assert old.epochs == 2 and old.released == 2 and old.standby_records == 0
    # The target's refused claim left nothing to release and nothing ran there (its host was only
    # asked whether the connector could start); its record was dropped only by its own shutdown.
    assert new.events == [("standby_registered", None, None)]
    assert new.connector_calls == [("connector_preflight", "standby")]
    assert new.released == 0 and new.standby_records == 0


async def test_handoff_to_a_warm_target_activates_its_connector_signalled_first(
    ts_env: WorkflowEnvironment,
) -> None:
    """``handoff EX --to HOST`` whose target keeps its connector warm (the old side cold): the
    target's record says it is warm and ready, so the old side signals it before writing the
    takeover event, and the target activates its warm connector instead of starting one."""
    old, new = Stand(), Stand()
    exchange = f"warmh{uuid.uuid4().hex[:6]}"
    active = InstanceInput(exchange=exchange, host=HOST, heartbeat_interval_s=2.0)
    standby = InstanceInput(
        exchange=exchange,
        host=OTHER_HOST,
        heartbeat_interval_s=2.0,
        standby=True,
        connector=ConnectorSpec(warm=True),
    )
    queue_a, workers_a = instance_workers(ts_env, old, active)
    queue_b, workers_b = instance_workers(ts_env, new, standby)
    async with contextlib_stack(workers_a + workers_b):
        handing = await ts_env.client.start_workflow(
            InstanceWorkflow.run, active, id=f"instance-{exchange}-{HOST}", task_queue=queue_a
        )
        taking = await ts_env.client.start_workflow(
            InstanceWorkflow.run, standby, id=f"instance-{exchange}-{OTHER_HOST}", task_queue=queue_b
        )
        assert (await handing.execute_update(InstanceWorkflow.wait_registered)).epoch == 1
        await command(handing, Command.START)
        target = await taking.execute_update(InstanceWorkflow.wait_registered)
        assert target.role is Role.STANDBY
        for _ in range(200):  # the target warms up in the background of its watch
            if ("connector_warm_up", "standby") in new.connector_calls:
                break
            await asyncio.sleep(0.05)
        assert ("connector_warm_up", "standby") in new.connector_calls
        old.standbys = standby_listing(exchange, target, taking.id, warm=True)

        result = await handing.execute_update(InstanceWorkflow.handoff, HandoffRequest(to_host=OTHER_HOST))
        assert result.error is None
        assert result.transitions == [State.STOPPING, State.STOPPED, State.IDLE]
        assert (
            result.detail == f"{OTHER_HOST} active at epoch 2 (was epoch 1 here); this instance is a standby"
        )
        was = await handing.query(InstanceWorkflow.snapshot)
        assert was.role is Role.STANDBY and was.claim is None and was.state is State.IDLE
        now_active = await taking.query(InstanceWorkflow.snapshot)
        assert now_active.role is Role.ACTIVE and now_active.state is State.ACTIVE
        assert now_active.claim is not None and now_active.claim.epoch == 2
        assert new.standby_records == 0  # no longer listed as a standby once it holds the claim
        # The warm order of commands: the target is signalled before the takeover event is written
        # (nobody is active until it is), after the notify event.
        done = commands(await handing.fetch_history())
        handoff_steps = [c for c in done if c in ("record handoff", "signal: promote")]
        assert handoff_steps[:3] == ["record handoff", "signal: promote", "record handoff"]

        await command(handing, Command.SHUTDOWN)
        await command(taking, Command.SHUTDOWN)
        assert await handing.result() == "shut down"
        assert await taking.result() == "shut down"
        await record_history(handing, "handoff-warm-target")

    assert old.events == [
        ("state_transition", "idle", "starting"),
        ("state_transition", "starting", "warming"),
        ("state_transition", "warming", "active"),
        ("handoff", None, None),
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
        ("state_transition", "stopped", "idle"),
        ("handoff", None, None),
        ("handoff", None, None),
        ("standby_registered", None, None),
    ]
    steps = [d for (kind, _, _), d in zip(old.events, old.details, strict=True) if kind == "handoff"]
    assert steps == [
        f"notify: handing over to {OTHER_HOST} (standby {target.instance_id}, warm)",
        f"takeover: released epoch 1 to {OTHER_HOST}",
        f"confirm: {OTHER_HOST} active at epoch 2",
    ]
    # The old side is cold: its connector was stopped, not demoted, and nothing warms there.
    assert old.connector_calls == COLD_START_THEN_STOP
    assert old.released == 1 and old.standby_records == 0 and old.epochs == 1
    # The target activated the connector it had warmed: no prepare, warm-up or connect as active.
    assert new.connector_calls == [
        ("connector_check", "standby"),
        ("connector_prepare", "standby"),
        ("connector_warm_up", "standby"),
        ("connector_preflight", "standby"),  # the handoff asked first whether it could start here
        ("connector_activate", "active"),
        ("connector_disconnect", "active"),
    ]
    assert new.events == PROMOTED_COLD_THEN_SHUT_DOWN
    assert new.details[1] == f"handoff from {HOST} (warm: activated)"
    assert new.epochs == 2 and new.released == 1 and new.standby_records == 0


async def test_silent_lease_whose_claim_redis_shows_renewed_is_reattached(
    ts_env: WorkflowEnvironment,
) -> None:
    """The host stops heartbeating to Temporal (a partition, an outage) while its keeper renews on:
    the workflow re-issues the lease, Redis shows the key renewed, a worker picks the lease up, and
    the instance goes on under the same claim — no transition, no event, no new epoch."""
    stand = Stand(silent_lease=1)

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registered = await handle.execute_update(InstanceWorkflow.wait_registered)
        await command(handle, Command.START)
        events_before = list(stand.events)
        stand.silence.set()
        # Re-attached: the connector is checked (the claim is ours, but is the connector still
        # running?) once the re-issued lease has run past the pickup window.
        for _ in range(900):  # the heartbeat timeout (18.75 s) and the pickup window (4 s), with room
            if ("connector_check", "active") in stand.connector_calls:
                break
            await asyncio.sleep(0.05)
        assert ("connector_check", "active") in stand.connector_calls
        snap = await handle.query(InstanceWorkflow.snapshot)
        assert snap.state is State.ACTIVE and snap.outcome is None
        assert snap.claim is not None and snap.claim.instance_id == registered.instance_id
        assert snap.claim.epoch == registered.epoch == 1
        assert stand.events == events_before  # no transition, no error, no instance_lost
        assert stand.lease_calls == 2 and stand.released == 0
        # Redis was asked at once and again when the claim would have gone stale, before the pickup
        # window ran out (timers firing late can only add probes).
        assert stand.probes >= 2

        history = await handle.fetch_history()
        timed_out = [
            e.activity_task_timed_out_event_attributes.failure.timeout_failure_info.timeout_type
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
        ]
        assert timed_out == [TimeoutType.TIMEOUT_TYPE_HEARTBEAT]  # the first term, and only it
        await command(handle, Command.SHUTDOWN)
        assert await handle.result() == "shut down"
        await record_history(handle, "reattach")

    # The shortest interval the timings allow: the test server keeps real time while an activity
    # runs (and a lease always does), so this path costs the heartbeat timeout (18.75 s at any
    # interval up to 15 s) plus the pickup window (1 interval + 3 s) in real seconds.
    await run_paths(ts_env, stand, instance("reat", heartbeat_interval_s=1.0), body)
    assert [e for e in stand.events if e[0] != "state_transition"] == []
    assert stand.events[-2:] == [
        ("state_transition", "active", "stopping"),
        ("state_transition", "stopping", "stopped"),
    ]
    assert stand.epochs == 1 and stand.released == 1


async def test_silent_holder_holding_on_failsafe_promises_is_lost_only_after_its_horizon(
    ts_env: WorkflowEnvironment,
) -> None:
    """The holder's host loses Temporal while it holds through a Redis outage (its lease's last
    heartbeat said so, with a horizon), and Redis — as the workflow's probe reaches it — shows the
    key unrenewed past the deadline: the workflow records `instance_lost` only once the horizon has
    passed, behind its patch (the golden history of that path)."""
    # Within the re-issued lease's pickup window (1 interval + 3 s): the workflow looks again when
    # the horizon has passed, while the re-issued lease (its host still silent) has not answered.
    horizon_s = 2.5
    stand = Stand(
        silent_lease=1,
        silent_after=True,
        beat_details=FailsafeHolding(holding=True, horizon_s=horizon_s, promised=2, members=2),
        probe=ClaimProbe(held_by_us=True, renewed_ms_ago=30_000, holder=HOST),
    )

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        await command(handle, Command.START)
        stand.silence.set()
        outcome = await handle.result()
        assert outcome.startswith("instance lost") and "stopped heartbeating" in outcome
        history = await handle.fetch_history()
        assert "patch: lost-waits-for-failsafe-horizon" in commands(history)
        await record_history(handle, "failsafe-horizon-lost")

    await run_paths(ts_env, stand, instance("fshz", heartbeat_interval_s=1.0), body)
    assert [e[0] for e in stand.events].count("instance_lost") == 1
    # Redis was asked at once (the claim already stale) and judged only when the horizon had passed.
    assert stand.released_at and stand.probed_at
    waited = stand.released_at[0] - stand.probed_at[0]
    print(f"lost judged {waited:.2f}s after the first look (reported horizon {horizon_s}s)")
    assert waited >= horizon_s
    assert stand.lease_calls == 2  # judged within the re-issued lease's window, not after its timeout


async def test_start_failure_recovers_to_idle(ts_env: WorkflowEnvironment) -> None:
    stand = Stand(fail_warm_up=True)

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        with pytest.raises(WorkflowUpdateFailedError):
            await command(handle, Command.START)
        snap = await handle.query(InstanceWorkflow.snapshot)
        assert snap.state is State.IDLE and "warm_up" in (snap.last_error or "")
        await command(handle, Command.SHUTDOWN)
        await handle.result()
        await record_history(handle, "start-failure")

    await run_paths(ts_env, stand, instance("fail"), body)
    assert [e[0] for e in stand.events] == [
        "state_transition",
        "state_transition",
        "error",
        "state_transition",
    ]
    assert stand.events[-1] == ("state_transition", "warming", "idle")
    assert any("lastErrorAt" in p for p in stand.patches)


async def test_claim_conflict_ends_the_run(ts_env: WorkflowEnvironment) -> None:
    stand = Stand(conflict=True)

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update(InstanceWorkflow.wait_registered)
        assert "already claimed by other" in str(info.value.__cause__)
        assert "already claimed" in await handle.result()
        await record_history(handle, "claim-conflict")

    await run_paths(ts_env, stand, instance("conf"), body)
    assert stand.events == [("claim_conflict", None, None)]


async def test_claim_lost_walks_down_and_ends(ts_env: WorkflowEnvironment) -> None:
    stand = Stand()

    def lease(call: int) -> None:
        if call == 2:  # the second term (after start) loses the claim
            raise ApplicationError(
                "the claim is now held by h2: claim lost", type="ClaimLost", non_retryable=True
            )

    stand.lease_behaviour = lease

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        await command(handle, Command.START)
        outcome = await handle.result()
        assert outcome.startswith("instance lost") and "claim lost" in outcome
        await record_history(handle, "claim-lost")

    # The first lease term returns normally at once, so the workflow issues a second one.
    stand.lease_behaviour = lambda call: (
        LeaseOutcome(renewals=1, last_renewed=None) if call == 1 else lease(call)
    )
    await run_paths(ts_env, stand, instance("lost"), body)
    kinds = [e[0] for e in stand.events]
    assert "instance_lost" in kinds
    assert (
        stand.events[-3:]
        == [
            ("state_transition", "active", "stopping"),
            ("state_transition", "stopping", "stopped"),
            ("state_transition", "stopped", "idle"),
        ]
        or stand.events[-1][0] == "instance_lost"
    )


async def test_host_without_worker_fails_registration(ts_env: WorkflowEnvironment) -> None:
    stand = Stand()

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        result = asyncio.ensure_future(handle.result())
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update(InstanceWorkflow.wait_registered)
        assert "no worker is serving host" in str(info.value.__cause__)
        assert "no worker is serving host" in await result
        await record_history(handle, "no-host-worker")

    await run_paths(ts_env, stand, instance("nohost"), body, host_worker=False)
    assert stand.events == []


async def test_a_busy_host_is_asked_again_not_reported_missing(ts_env: WorkflowEnvironment) -> None:
    """A step not picked up in time while the host's queue is polled waits for the worker; only a
    queue nobody polls is reported as a missing worker (the test above)."""
    stand = Stand(host_polled=True)
    inp = instance("busy")

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        registering = asyncio.ensure_future(handle.execute_update(InstanceWorkflow.wait_registered))
        await asyncio.wait_for(stand.asked_twice.wait(), 60)  # two timeouts, each answered "busy"
        assert not registering.done()
        host_acts = [
            a
            for a in stand.activities()
            if getattr(a, "__temporal_activity_definition").name in ("detect_identity", "claim_and_hold")
        ]
        async with Worker(ts_env.client, task_queue=host_task_queue(inp.host), activities=host_acts):
            registered = await registering
        assert registered.epoch == 1

    await run_paths(ts_env, stand, inp, body, host_worker=False)


async def test_continue_as_new_keeps_state_and_bounds_history(ts_env: WorkflowEnvironment) -> None:
    stand = Stand()
    limit = 80

    async def body(first: WorkflowHandle[Any, Any]) -> None:
        registered = await first.execute_update(InstanceWorkflow.wait_registered)
        handle = ts_env.client.get_workflow_handle(first.id)  # follows the chain of runs, as the CLI does
        for _ in range(6):
            await command(handle, Command.START)
            await command(handle, Command.STOP)
        await command(handle, Command.START)
        snap = await snapshot_across_runs(handle)
        assert snap.runs >= 2, snap
        assert snap.claim is not None and snap.claim.instance_id == registered.instance_id
        assert snap.claim.epoch == registered.epoch and snap.state is State.ACTIVE and snap.symbol_count == 3
        first_run = ts_env.client.get_workflow_handle(first.id, run_id=first.result_run_id)
        history = await first_run.fetch_history()
        assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        assert len(history.events) <= limit + 40  # bounded: the last command may finish past the limit
        await record_history(first_run, "continue-as-new")
        # The next run takes the task timeout its interval asks for, whatever the first was given.
        later = await handle.fetch_history()
        started = later.events[0].workflow_execution_started_event_attributes
        assert started.workflow_task_timeout.ToTimedelta() == timedelta(
            seconds=workflow_task_timeout_s(2.0)
        ), started.workflow_task_timeout
        await command(handle, Command.SHUTDOWN)

    await run_paths(ts_env, stand, instance("can", history_limit=limit), body)
    assert stand.epochs == 1  # never re-claimed: the claim crossed the continue-as-new
    assert stand.lease_calls >= 2  # the lease was restarted in the new run
    assert [e[2] for e in stand.events if e[0] == "state_transition"].count("active") == 7


async def test_invalid_commands_are_refused_without_history(ts_env: WorkflowEnvironment) -> None:
    stand = Stand()

    async def updates(handle: WorkflowHandle[Any, Any]) -> int:
        history = await handle.fetch_history()
        return sum(
            1
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        )

    async def body(handle: WorkflowHandle[Any, Any]) -> None:
        await handle.execute_update(InstanceWorkflow.wait_registered)
        await command(handle, Command.START)
        accepted = await updates(handle)
        events_before = len(stand.events)
        for cmd, message in [(Command.START, "cannot start: the instance is active")]:
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await command(handle, cmd)
            assert message in str(info.value.__cause__)
        await command(handle, Command.STOP)
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await command(handle, Command.STOP)
        assert "cannot stop: the instance is idle; nothing is running" in str(info.value.__cause__)
        assert await updates(handle) == accepted + 1  # only the valid STOP reached history
        assert len(stand.events) == events_before + 3  # and only its transitions were written
        await command(handle, Command.SHUTDOWN)

    await run_paths(ts_env, stand, instance("inv"), body)


def test_default_timings_notice_a_dead_host_before_the_ttl() -> None:
    inp = InstanceInput(exchange="x", host="h")
    heartbeat_timeout = lease_heartbeat_timeout_s(inp.heartbeat_interval_s)
    pickup = inp.heartbeat_interval_s * PICKUP_FACTOR
    assert heartbeat_timeout + pickup < 3 * inp.heartbeat_interval_s
    assert timedelta(seconds=heartbeat_timeout) < timedelta(seconds=45)
