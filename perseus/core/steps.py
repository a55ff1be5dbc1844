"""The steps every procedure of an instance is made of, free of I/O.

:class:`InstanceSteps` holds the instance's memory (:class:`~perseus.core.state.InstanceState`), its
input and its clock, and the short procedures the larger ones are built from: claim and release,
the fenced status write and event of a transition, a connector step on the host (asked again while
the host is busy), the lease and the standby's watch, the standby record, a warm connector's
activation. Each yields :mod:`actions <perseus.core.actions>` and is sent their answers
(:mod:`perseus.core.loop` says how the whole runs).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from perseus.core.actions import (
    Activity,
    ActivityRef,
    Answer,
    Call,
    CancelLease,
    CancelWarmUp,
    Details,
    Log,
    Notify,
    Patched,
    Proc,
    Retry,
    Search,
    Signal,
    StartLease,
    TakeLease,
    ask,
)
from perseus.core.state import InstanceState, Ticket
from perseus.decisions import lease_heartbeat_timeout_s, wake_order
from perseus.errors import ClaimConflict, ServiceUnavailable, StepFailed
from perseus.keys import host_task_queue, iso
from perseus.lifecycle import Command, Role, State, check_transition, recovery_path, release_path
from perseus.models import (
    Claim,
    ClaimRequest,
    ClaimResult,
    ConnectorReport,
    ConnectorRequest,
    DropStandbyRequest,
    EventKind,
    EventRequest,
    HandoffConfirm,
    HandoffRequest,
    HostClaimRequest,
    HostPresence,
    IdentityRequest,
    InstanceInput,
    InstanceStatus,
    LeaseRequest,
    NetworkEvent,
    NotifyRequest,
    PatchResult,
    PromoteRequest,
    Recorded,
    RecordRequest,
    ReleaseRequest,
    Resolved,
    StandbyLeaseRequest,
    StandbyList,
    StandbyQuery,
    StandbyRecord,
    StatusPatch,
)
from perseus.timing import LEASE_SLACK_INTERVALS, ttl_ms

R = TypeVar("R")

RUNNING_STATES = (State.STARTING, State.WARMING, State.ACTIVE)

#: How long a restarted worker has to pick the lease up again, in intervals.
PICKUP_FACTOR = 1.0
#: Connector steps heartbeat every second; silence this long means their host stopped.
CONNECTOR_HEARTBEAT_TIMEOUT_S = 5.0
#: How long a host step is asked again while the host's worker polls but does not pick it up.
HOST_BUSY_LIMIT_S = 120.0
#: How long a handoff waits for the target's confirmation (plus 4 intervals).
HANDOFF_TIMEOUT_S = 60.0


class Clock(Protocol):
    """The only sources of time and identity the core reads (the workflow's deterministic ones)."""

    def now(self) -> datetime: ...

    def uuid4(self) -> str: ...


class InstanceSteps:
    """An instance's memory and its elementary steps; the procedures are its subclasses."""

    def __init__(self, inp: InstanceInput, workflow_id: str, clock: Clock) -> None:
        self.inp = inp
        self.wf_id = workflow_id
        self.clock = clock
        self.host_queue = host_task_queue(inp.host)
        self.s = InstanceState.begin(inp)
        for command in inp.carried.pending if inp.carried else []:
            self.enqueue(command)

    def enqueue(
        self,
        command: Command,
        *,
        handoff: HandoffRequest | None = None,
        confirm_to: str | None = None,
        first: bool = False,
        internal: bool = False,
        promoted: bool = False,
        actor: str | None = None,
    ) -> Ticket:
        """Queue a command; ``internal`` ones (promotion, restart) have no caller waiting (number -1)."""
        s = self.s
        ticket = Ticket(
            -1 if internal else s.next_ticket,
            command,
            handoff=handoff,
            confirm_to=confirm_to,
            promoted=promoted,
            actor=actor,
        )
        if not internal:
            s.next_ticket += 1
        if first:
            s.queue.insert(0, ticket)
        else:
            s.queue.append(ticket)
        return ticket

    def _become_standby(self, *, required: bool = False) -> Proc:
        """Wait here as a standby. ``required`` (registering): a record Redis did not take fails it;
        otherwise (after a handoff, or stepping aside) the watch's first beat writes it anyway."""
        s = self.s
        assert s.resolved
        s.role = Role.STANDBY
        s.claim = None
        s.standby_visible = False
        s.warm_task = None  # the loop warms the connector up again unless it is still warm
        s.standby_id = self.clock.uuid4()
        try:
            yield from self._put_standby()
        except StepFailed as err:
            if required:
                raise
            yield Log(
                f"{self.wf_id}: standby record not written yet (its watch writes it): {err}", warning=True
            )
        yield Search(role=Role.STANDBY, state=s.state)
        yield from self._event(
            EventKind.STANDBY_REGISTERED,
            claim=Claim(instance_id=s.standby_id, epoch=0),
            detail=f"standby on {self.inp.host} (priority {self.inp.priority})",
        )
        s.standby_visible = True
        yield self._details()

    def _put_standby(self) -> Proc:
        yield from ask(
            Call(
                Activity.PUT_STANDBY,
                self._standby_record(),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="register standby",
            )
        )

    def _standby_record(self) -> StandbyRecord:
        s = self.s
        assert s.resolved and s.standby_id and s.registered_at
        return StandbyRecord(
            exchange_id=s.resolved.exchange.id,
            exchange_name=s.resolved.exchange.name,
            host=self.inp.host,
            hostname=s.hostname or self.inp.host,
            ip_address=s.ip_address,
            instance_id=s.standby_id,
            workflow_id=self.wf_id,
            priority=self.inp.priority,
            registered_at=iso(s.registered_at),
            last_heartbeat=iso(self.clock.now()),
            ttl_ms=ttl_ms(self.inp.heartbeat_interval_s),
            heartbeat_interval_ms=int(self.inp.heartbeat_interval_s * 1000),
            warm=self.inp.connector.warm,
            start_error=s.start_error,
            start_retry_at=iso(s.start_retry_at) if s.start_retry_at else None,
        )

    def _drop_standby(self) -> Proc:
        s = self.s
        if s.standby_id is None or s.resolved is None:
            return
        yield from self._tolerated(
            Call(
                Activity.DROP_STANDBY,
                DropStandbyRequest(exchange_id=s.resolved.exchange.id, instance_id=s.standby_id),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="drop standby record",
            ),
            "standby record not dropped (its TTL frees it)",
        )
        s.standby_id = None

    def _standbys(self, *, include_self: bool = False) -> Proc:
        """The live standbys of our exchange, best first (none if Redis cannot say)."""
        standbys, _ = yield from self._standbys_and_pause(include_self=include_self)
        return standbys

    def _standbys_and_pause(self, *, include_self: bool = False) -> Proc:
        """The live standbys of our exchange, best first, and whether it is paused (``core.pause``);
        none and not paused if Redis cannot say. One activity, as :meth:`_standbys`."""
        s = self.s
        assert s.resolved
        found: StandbyList | None = yield from self._tolerated(
            Call(
                Activity.LIST_STANDBYS,
                StandbyQuery(exchange_id=s.resolved.exchange.id),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="list standbys",
            ),
            "standbys unknown",
        )
        if found is None:
            return [], False
        return [x for x in found.standbys if include_self or x.workflow_id != self.wf_id], found.paused

    def _claim(
        self,
        *,
        quiet: bool = False,
        retry: Retry = Retry.SHARED,
        take_lapsed: bool = False,
        automatic: bool = False,
    ) -> Proc:
        """Claim with a fresh instanceId: the ClaimResult, or None (refused; why is remembered).

        ``quiet``: a standby racing for a vacancy (or an instance taking back its own exchange) is
        not a conflict worth an event when it loses. ``take_lapsed``: a standby whose watch saw the
        holder past its renew deadline may claim over its key. ``automatic``: nobody asked for this
        claim (a promotion after a vacancy or a wake-up), so a pause refuses it (``core.pause``).
        """
        s = self.s
        assert s.resolved and s.hostname and s.registered_at
        instance_id = self.clock.uuid4()
        request = ClaimRequest(
            status=self._status(instance_id),
            highest_epoch=s.highest_epoch,
            take_lapsed=take_lapsed,
            automatic=automatic,
        )
        try:
            result: ClaimResult = yield from self._claim_activity(request, retry)
        except StepFailed as err:
            if not quiet:
                s.registration_error = f"claim failed: {self._explain(err)}"
                s.registration_error_type = err.failure.error_type or ServiceUnavailable.__name__
            return None
        s.highest_epoch = max(s.highest_epoch, result.epoch)
        if not result.claimed:
            if quiet:
                return None
            s.registration_error = result.message or "exchange already claimed"
            s.registration_error_type = ClaimConflict.__name__
            yield from self._event(
                EventKind.CLAIM_CONFLICT,
                claim=Claim(instance_id=instance_id, epoch=result.epoch),
                detail=result.message,
            )
            return None
        s.claim = Claim(instance_id=instance_id, epoch=result.epoch)
        s.registration_error = None
        return result

    def _claim_activity(self, request: ClaimRequest, retry: Retry) -> Proc:
        """Claim on this instance's host, whose keeper renews from that moment on (patched
        ``claim-on-host``); runs begun before it claimed on the shared queue and replay so."""
        if not (yield Patched("claim-on-host")):
            return (
                yield from ask(
                    Call(Activity.CLAIM_EXCHANGE, request, start_to_close_s=10, retry=retry, summary="claim")
                )
            )
        held = HostClaimRequest(
            claim=request,
            workflow_id=self.wf_id,
            heartbeat_interval_s=self.inp.heartbeat_interval_s,
            term_s=self.inp.lease_term_s,
        )
        return (
            yield from self._on_host(
                Call(
                    Activity.CLAIM_AND_HOLD,
                    held,
                    queue=self.host_queue,
                    schedule_to_start_s=self._host_wait(),
                    start_to_close_s=10,
                    retry=retry,
                    summary=f"claim on {self.inp.host}",
                )
            )
        )

    def _status(self, instance_id: str) -> InstanceStatus:
        s = self.s
        assert s.resolved and s.hostname and s.registered_at
        admin = s.resolved.admin
        stamp = iso(self.clock.now())
        return InstanceStatus(
            exchange_id=s.resolved.exchange.id,
            exchange_name=s.resolved.exchange.name,
            hostname=s.hostname,
            ip_address=s.ip_address,
            admin_email=admin.email if admin else None,
            admin_display_name=admin.display_name if admin else None,
            connection_state=s.state,
            symbol_count=s.symbol_count,
            connected_at=iso(s.connected_at) if s.connected_at else None,
            last_heartbeat=stamp,
            last_state_change=stamp,
            registered_at=iso(s.registered_at),
            last_error=s.last_error,
            instance_id=instance_id,
            epoch=0,
            workflow_id=self.wf_id,
            heartbeat_interval_ms=int(self.inp.heartbeat_interval_s * 1000),
            ttl_ms=ttl_ms(self.inp.heartbeat_interval_s),
        )

    def _explain(self, err: StepFailed) -> str:
        if err.failure.not_picked_up:
            return (
                f"no worker is serving host {self.inp.host!r} (task queue {self.host_queue}); "
                f"start one with: perseus worker --host {self.inp.host}"
            )
        return err.failure.message

    def _on_host(self, call: Call[Any, R]) -> Answer[R]:
        """Run a step on a host queue. One not picked up in time is tried again while the host's
        worker is seen polling its queue — busy, not missing — for at most ``HOST_BUSY_LIMIT_S``;
        with nobody polling, the failure stands (the caller reports it)."""
        # Patched: runs begun before it failed a step at its first schedule-to-start timeout.
        patient = yield Patched("wait-for-busy-host")
        since = self.clock.now()
        while True:
            try:
                return (yield from ask(call))
            except StepFailed as err:
                late = self.clock.now() - since > timedelta(seconds=HOST_BUSY_LIMIT_S)
                if (
                    not patient
                    or late
                    or not err.failure.not_picked_up
                    or not (yield from self._host_polled())
                ):
                    raise
            yield Log(f"{self.wf_id}: the worker on {self.inp.host} is busy; asking it again")

    def _host_polled(self) -> Proc:
        presence: HostPresence | None = yield from self._tolerated(
            Call(
                Activity.HOST_POLLED,
                IdentityRequest(host=self.inp.host),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary=f"is {self.inp.host} polled?",
            ),
            "host presence unknown",
        )
        return presence is not None and presence.polled

    def _host_wait(self) -> float:
        # Long enough for a live worker to pick the task up, short enough to report a missing host.
        return max(5.0, self.inp.heartbeat_interval_s)

    def _start_lease(self, schedule_to_start_s: float | None = None) -> Proc:
        s = self.s
        assert s.resolved and s.claim
        interval = self.inp.heartbeat_interval_s
        s.leasing = True
        yield StartLease(
            Activity.HOLD_LEASE,
            LeaseRequest(
                workflow_id=self.wf_id,
                exchange_id=s.resolved.exchange.id,
                claim=s.claim,
                heartbeat_interval_s=interval,
                term_s=self.inp.lease_term_s,
            ),
            queue=self.host_queue,
            schedule_to_start_s=schedule_to_start_s or self._host_wait(),
            start_to_close_s=self.inp.lease_term_s + LEASE_SLACK_INTERVALS * interval,
            # The lease heartbeats at every k-th renewal (at least 5 s apart; the host worker does
            # not throttle them further): a silence of 1.25 such periods means the host stopped
            # answering Temporal. What that means for the claim, Redis decides (leases._reattach).
            heartbeat_timeout_s=self._heartbeat_timeout(),
            summary=f"lease epoch {s.claim.epoch} on {self.inp.host}",
        )

    def _start_standby_lease(self) -> Proc:
        interval = self.inp.heartbeat_interval_s
        self.s.leasing = True
        yield StartLease(
            Activity.HOLD_STANDBY,
            StandbyLeaseRequest(
                record=self._standby_record(), heartbeat_interval_s=interval, term_s=self.inp.lease_term_s
            ),
            queue=self.host_queue,
            schedule_to_start_s=self._host_wait(),
            start_to_close_s=self.inp.lease_term_s + LEASE_SLACK_INTERVALS * interval,
            heartbeat_timeout_s=self._heartbeat_timeout(),
            summary=f"standby watch on {self.inp.host}",
        )

    def _heartbeat_timeout(self) -> float:
        # decisions.lease_heartbeat_timeout_s: 1.25 heartbeat periods, the period never under 5 s,
        # so the server's cost does not grow as the interval shrinks. Safety does not rest on it:
        # the claim is freed only once Redis shows it unrenewed past the renew deadline (the probe
        # in leases._reattach), and a standby claims over from Redis alone. A longer timeout only
        # makes the workflow hear of a dead host later (docs/design.md gives the bound).
        return lease_heartbeat_timeout_s(self.inp.heartbeat_interval_s)

    def _cancel_lease(self) -> Proc:
        self.s.leasing = False
        yield CancelLease()

    def _take_lease(self) -> Proc:
        """The ended lease's result (its failure raised as StepFailed); the lease is forgotten."""
        self.s.leasing = False
        return (yield TakeLease())

    def _walk_down(self, stopped_at: datetime | None) -> Proc:
        """Recover to idle after the connector stopped; ``stopping``/``stopped`` carry the moment it
        did (the keeper's clock), not the moment the workflow heard of it."""
        for target in recovery_path(self.s.state):
            at = stopped_at if target in (State.STOPPING, State.STOPPED) else None
            yield from self._transition(target, at=at)

    def _connector_alive(self) -> Proc:
        try:
            report: ConnectorReport = yield from self._host_step(Activity.CONNECTOR_CHECK, timeout_s=10)
        except StepFailed:
            return False
        return report.running

    def _wake_standby(
        self,
        reason: str,
        *,
        confirm_to: str | None = None,
        act_after_s: float = 0.0,
        standbys: list[StandbyRecord] | None = None,
    ) -> Proc:
        """Signal the highest-priority live standby to take over (one whose connector could not
        start after its last promotion only after the others); returns the one told, if any.
        ``act_after_s``: how long it must wait after its claim before its connector acts;
        ``standbys``: the list the caller has just read (else it is read here)."""
        if standbys is None:
            standbys = yield from self._standbys()
        for standby in wake_order(standbys, self.clock.now()):
            refused = yield Signal(
                standby.workflow_id,
                "promote",
                PromoteRequest(
                    reason=reason,
                    min_epoch=self.s.highest_epoch,
                    confirm_to=confirm_to,
                    act_after_s=act_after_s,
                ),
            )
            if refused is not None:  # the standby's workflow is gone: try the next one
                yield Log(f"standby {standby.workflow_id} not reachable: {refused}")
                continue
            return standby
        return None

    def _reply(self, workflow_id: str, *, ok: bool, detail: str) -> Proc:
        claim = self.s.claim
        epoch = claim.epoch if claim and ok else 0
        refused = yield Signal(
            workflow_id,
            "handoff_confirmed",
            HandoffConfirm(ok=ok, epoch=epoch, host=self.inp.host, detail=detail),
        )
        if refused is not None:  # the other side is gone; it will time out on its own
            yield Log(f"handoff reply to {workflow_id} not delivered: {refused}")

    def _demote(self) -> Proc:
        """Deactivate our connector (it keeps running, warm); False if that failed (then stop it)."""
        try:
            report: ConnectorReport = yield from self._host_step(
                Activity.CONNECTOR_DEACTIVATE, timeout_s=30, retry=Retry.ONCE
            )
        except StepFailed as err:
            yield Log(f"{self.wf_id}: connector not demoted, stopping it: {err.failure.message}")
            return False
        self.s.warm_here = report.warm_ready
        return report.warm_ready

    def _activate_warm(self) -> Proc:
        """Promote the warm connector on our host under the claim just taken: ``ACTIVATE <epoch>``,
        confirmed by ``ACTIVE``. (None, False) when it is active; otherwise why not — the caller
        starts cold: the connector is gone, not ready, or did not confirm and was stopped — and
        whether no worker serves our host at all (a cold start cannot help then either)."""
        s = self.s
        s.warm_here = False  # consumed either way: active now, or stopped / gone
        timeout = self.inp.connector.active_timeout_s + CONNECTOR_HEARTBEAT_TIMEOUT_S
        try:
            # Never retried: a child that did not confirm was stopped; only a cold start helps now.
            report: ConnectorReport = yield from self._host_step(
                Activity.CONNECTOR_ACTIVATE, timeout_s=timeout, retry=Retry.ONCE
            )
        except StepFailed as err:
            reason = self._explain(err)
            yield Log(f"{self.wf_id}: warm activation failed: {reason}")
            return reason, err.failure.not_picked_up
        if report.symbol_count:
            s.symbol_count = report.symbol_count
        yield Log(f"{self.wf_id}: warm standby activated at epoch {s.claim.epoch if s.claim else 0}")
        return None, False

    def _stop_warm(self, reason: str) -> Proc:
        """Stop a warm standby's connector (the standby is leaving); no-op for a cold standby, and
        for an active instance (its connector was stopped on the way down)."""
        s = self.s
        if not self.inp.connector.warm or s.role is not Role.STANDBY:
            return
        task, s.warm_task = s.warm_task, None
        if task is not None and not task.done:
            yield CancelWarmUp()
        s.warm_here = False
        # Once: a worker that is shutting down stops its connectors itself, and one that is gone
        # took its children with it (parent-death signal); the standby must not wait on it.
        yield from self._tolerated(
            self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=15, retry=Retry.ONCE),
            f"{self.wf_id}: warm connector not stopped ({reason})",
        )

    def _fail(self, reason: str) -> Proc:
        """Retries are exhausted: record lastError + an error event, stop the connector, recover to
        idle. True when the connector is known stopped (its disconnect answered)."""
        s = self.s
        s.last_error = reason
        fields: dict[str, object] = {"lastError": reason, "lastErrorAt": iso(self.clock.now())}
        if (yield from self._one_write()):
            event = self._network_event(EventKind.ERROR, error=reason, state=s.state)
            yield from self._record(event, self._status_patch(fields))
        else:
            yield from self._patch(fields)
            yield from self._event(EventKind.ERROR, error=reason, state=s.state)
        stopped = yield from self._tolerated(
            self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=10), "connector_disconnect after failure"
        )
        for target in recovery_path(s.state):
            yield from self._transition(target)
        return stopped is not None

    def _release(self) -> Proc:
        """Stop whatever runs, then let go of the claim (graceful worker shutdown). True when the
        connector stopped and the key was ours and is gone: only then may a standby act at once."""
        stopped = True
        for target in release_path(self.s.state):
            if target is State.STOPPED:
                stopped = (
                    yield from self._tolerated(
                        self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=10), "connector_disconnect"
                    )
                ) is not None
            yield from self._transition(target)
        released = yield from self._release_claim()
        return stopped and released

    def _release_claim(self) -> Proc:
        """Delete our status key (fenced); True if it was ours and is gone."""
        s = self.s
        if s.claim is None or s.resolved is None:
            return False
        result: PatchResult | None = yield from self._tolerated(
            Call(
                Activity.RELEASE_CLAIM,
                ReleaseRequest(exchange_id=s.resolved.exchange.id, claim=s.claim),
                start_to_close_s=10,
                retry=Retry.DURABLE,
                summary="release claim",
            ),
            "release failed (the TTL frees it)",
        )
        return result is not None and result.applied

    def _tolerated(self, step: Call[Any, R] | Answer[R], why: str) -> Answer[R | None]:
        """Run ``step`` (one activity, or a procedure); if it fails, log ``why`` with the reason and
        answer None: for steps whose failure the caller rides out (the TTL frees a record, the
        connector's own deadline stops it)."""
        try:
            return (yield from ask(step)) if isinstance(step, Call) else (yield from step)
        except StepFailed as err:
            yield Log(f"{why}: {err.failure.message}", warning=True)
            return None

    def _host_step(
        self,
        activity: ActivityRef[ConnectorRequest, R],
        timeout_s: float = 120,
        *,
        standby: bool = False,
        retry: Retry = Retry.HOST,
        warm_attempt: int | None = None,
    ) -> Answer[R]:
        """One connector step on our host: its ConnectorReport. ``standby``: for a warm standby's
        connector, which is told its own standby id and epoch 0 (it holds no claim); ``warm_attempt``:
        which try of its warm-up this is (the host shows when the next one comes if it fails)."""
        s = self.s
        assert s.resolved
        request = ConnectorRequest(
            workflow_id=self.wf_id,
            exchange_id=s.resolved.exchange.id,
            exchange_name=s.resolved.exchange.name,
            spec=self.inp.connector,
            claim=Claim(instance_id=s.standby_id or "", epoch=0) if standby else s.claim,
            heartbeat_interval_s=self.inp.heartbeat_interval_s,
            role=Role.STANDBY if standby else Role.ACTIVE,
            warm_attempt=warm_attempt,
        )
        return (
            yield from self._on_host(
                Call(
                    activity,
                    request,
                    queue=self.host_queue,
                    schedule_to_start_s=self._host_wait(),
                    start_to_close_s=timeout_s,
                    # Steps heartbeat every second: a host that stops mid-step is seen within seconds.
                    heartbeat_timeout_s=CONNECTOR_HEARTBEAT_TIMEOUT_S,
                    retry=retry,
                    summary=f"{activity.value} on {self.inp.host}" + (" (warm standby)" if standby else ""),
                )
            )
        )

    def _transition(self, target: State, *, at: datetime | None = None) -> Proc:
        """One fenced status write and one ``state_transition`` event; the state machine checked it.

        ``at``: when it happened, if earlier than now (a connector its keeper stopped at the deadline).
        """
        s = self.s
        previous = s.state
        check_transition(previous, target)
        s.state = target
        now = at or self.clock.now()
        fields: dict[str, object] = {
            "connectionState": target.value,
            "lastStateChange": iso(now),
            "symbolCount": s.symbol_count,
        }
        if target is State.ACTIVE:
            s.connected_at = s.connected_at or now
            fields["connectedAt"] = iso(s.connected_at)
        if target is State.IDLE:
            s.connected_at = None
            fields["connectedAt"] = None
        if (yield from self._one_write()):
            event = self._network_event(
                EventKind.STATE_TRANSITION, from_state=previous, to_state=target, at=at
            )
            yield from self._record(event, self._status_patch(fields))
        else:
            yield from self._patch(fields)
            yield from self._event(EventKind.STATE_TRANSITION, from_state=previous, to_state=target, at=at)
        yield Log(f"{self.wf_id}: {previous.value} → {target.value}")
        yield Search(state=target)
        yield self._details()

    def _one_write(self) -> Proc:
        """Patched ``one-write-per-transition``: a transition's status merge and event are one local
        activity (no server round trip each); runs begun before it wrote them as two activities."""
        return (yield Patched("one-write-per-transition"))

    def _status_patch(self, fields: dict[str, object]) -> StatusPatch | None:
        s = self.s
        if s.claim is None or s.resolved is None:
            return None
        return StatusPatch(exchange_id=s.resolved.exchange.id, claim=s.claim, fields=fields)

    def _record(self, event: NetworkEvent, patch: StatusPatch | None = None) -> Proc:
        """Write the event (and the status merge that goes with it) in one local activity; then
        notify, if this worker notifies at all."""
        try:
            recorded: Recorded = yield from ask(
                Call(
                    Activity.RECORD,
                    RecordRequest(event=event, patch=patch),
                    start_to_close_s=10,
                    retry=Retry.DURABLE,
                    summary=f"record {event.event.value}",
                    local=True,
                )
            )
        except StepFailed as err:
            yield Log(f"{event.event.value} not recorded after retries: {err.failure.message}", warning=True)
            return
        if recorded.patch is not None and not recorded.patch.applied:
            yield Log(
                f"status write refused ({recorded.patch.reason}): we no longer hold the claim", warning=True
            )
        if recorded.notify:
            yield Notify(NotifyRequest(event=event))

    def _patch(self, fields: dict[str, object]) -> Proc:
        patch = self._status_patch(fields)
        if patch is None:
            return
        try:
            result: PatchResult = yield from ask(
                Call(
                    Activity.PATCH_STATUS,
                    patch,
                    start_to_close_s=10,
                    retry=Retry.DURABLE,
                    summary="write status",
                )
            )
        except StepFailed as err:
            yield Log(f"status write refused: {err.failure.message}", warning=True)
            return
        if not result.applied:
            yield Log(f"status write refused ({result.reason}): we no longer hold the claim", warning=True)

    def _event(
        self,
        kind: EventKind,
        *,
        claim: Claim | None = None,
        from_state: State | None = None,
        to_state: State | None = None,
        error: str | None = None,
        state: State | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> Proc:
        event = self._network_event(
            kind,
            claim=claim,
            from_state=from_state,
            to_state=to_state,
            error=error,
            state=state,
            detail=detail,
            at=at,
        )
        if (yield from self._one_write()):
            yield from self._record(event)
            return
        try:
            yield from ask(
                Call(
                    Activity.RECORD_EVENT,
                    EventRequest(event=event),
                    start_to_close_s=10,
                    retry=Retry.DURABLE,
                    summary=f"event {kind.value}",
                )
            )
        except StepFailed as err:
            yield Log(f"event {kind.value} not recorded after retries: {err.failure.message}", warning=True)
            return
        yield Notify(NotifyRequest(event=event))

    def _network_event(
        self,
        kind: EventKind,
        *,
        claim: Claim | None = None,
        from_state: State | None = None,
        to_state: State | None = None,
        error: str | None = None,
        state: State | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> NetworkEvent:
        s = self.s
        resolved: Resolved | None = s.resolved
        assert resolved
        claim = claim or s.claim
        admin = resolved.admin
        return NetworkEvent(
            event=kind,
            event_id=self.clock.uuid4(),
            timestamp=at or self.clock.now(),
            exchange_id=resolved.exchange.id,
            exchange_name=resolved.exchange.name,
            hostname=s.hostname or self.inp.host,
            ip=s.ip_address,
            instance_id=claim.instance_id if claim else "",
            epoch=claim.epoch if claim else 0,
            from_state=from_state,
            to_state=to_state,
            admin_email=admin.email if admin else None,
            error=error,
            state=state,
            detail=detail,
            actor=s.actor,
        )

    def _decided(self, line: str) -> Proc:
        """One decision, as one line for the operator: in the worker's log, and in the Web UI's
        current details until the next one."""
        self.s.last_decision = line
        yield Log(f"{self.wf_id}: {line}")
        yield self._details()

    def _details(self) -> Details:
        s = self.s
        claim = f"epoch {s.claim.epoch}" if s.claim else "no claim"
        return Details(
            f"**state**: {s.state.value}  \n**host**: {s.hostname or self.inp.host} "
            f"({s.ip_address or 'IP unknown'})  \n**claim**: {claim}  \n"
            f"**symbols**: {s.symbol_count}  \n**last heartbeat**: "
            f"{iso(s.last_heartbeat_ok) if s.last_heartbeat_ok else 'see status key'}  \n"
            f"**last error**: {s.last_error or '-'}  \n**last decision**: {s.last_decision or '-'}"
            + (f"  \n**outcome**: {s.outcome}" if s.outcome else "")
        )
