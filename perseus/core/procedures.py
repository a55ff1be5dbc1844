"""The instance's decisions and procedures, free of I/O: the core that ``workflows/instance.py`` runs.

:class:`InstanceCore` holds an :class:`~perseus.core.state.InstanceState` and runs the instance's
procedures — registration, the main loop, a lease that ended, a standby's watch, promotion, a
handoff, commands — as generators. Each yields one :mod:`action <perseus.core.actions>` at a time
and is sent the answer; it never waits on anything else, reads no clock but the one it is given and
imports nothing of Temporal, Redis or the operating system. So the same code runs under the
workflow (which carries each action out as it is yielded) and under plain tests that answer the
actions themselves, from any point of any path (``tests/unit/test_core*.py``).

The verdicts it acts on are the plain functions of :mod:`perseus.decisions` and
:mod:`perseus.lifecycle`; their invariants hold here. In short: a claim is freed early only when
Redis proves its holder stopped; a lost claim outranks everything; refusals happen before history;
after a Redis outage the holder goes first; a warm standby acts only under a claim just taken; a
handoff that fails midway takes the exchange back; nothing is written without the claim's fence.

Patches: wherever the behaviour changed after runs had been recorded, the procedure asks
(:class:`~perseus.core.actions.Patched`) at the very point the new behaviour begins, so old runs
replay the old branch (``docs/design.md`` lists each patch id).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from perseus.core.actions import (
    Activity,
    Call,
    CancelLease,
    CancelWarmUp,
    ContinueAsNew,
    CountRestart,
    Details,
    DrainNotifications,
    Log,
    Notify,
    Patched,
    Proc,
    Retry,
    Search,
    Signal,
    Sleep,
    SpawnWarmUp,
    StartLease,
    TakeLease,
    Undelivered,
    WaitForWork,
    WaitHandlers,
    WaitLease,
    WaitUntil,
)
from perseus.core.state import InstanceState, Ticket, WarmUp
from perseus.decisions import (
    LOSS_TYPES,
    HostVerdict,
    InstanceFacts,
    LeaseVerdict,
    LoopFacts,
    StartPath,
    Step,
    act_after_vacancy_s,
    handoff_demotes,
    judge_claim,
    lease_verdict,
    next_step,
    refuse_command,
    refuse_handoff,
    restart_delay,
    stale_in,
    start_path,
    vacancy_delay,
    warm_up_standby,
)
from perseus.errors import InvalidTransition, StepFailed
from perseus.keys import host_task_queue, iso, ttl_ms
from perseus.lifecycle import Command, Role, State, check_transition, plan, recovery_path, release_path
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimProbeRequest,
    ClaimRequest,
    ClaimResult,
    CommandResult,
    ConnectorReport,
    ConnectorRequest,
    DropStandbyRequest,
    EventKind,
    EventRequest,
    HandoffConfirm,
    HandoffRequest,
    HostClaimRequest,
    HostPresence,
    Identity,
    IdentityRequest,
    InstanceInput,
    InstanceSnapshot,
    InstanceStatus,
    LeaseOutcome,
    LeaseRequest,
    NetworkEvent,
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
    StatusPatch,
)

RUNNING_STATES = (State.STARTING, State.WARMING, State.ACTIVE)

#: A host is presumed dead after this many intervals without a heartbeat (before the 3-interval TTL).
HEARTBEAT_TIMEOUT_FACTOR = 1.25
#: ...but never less than this, in seconds.
HEARTBEAT_TIMEOUT_FLOOR_S = 2.0
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


class InstanceCore:
    """One exchange instance on one host (workflow id ``instance-{exchange}-{host}``), decided.

    ``run()`` is the run's whole procedure; it returns the run's outcome, or ends in
    :class:`~perseus.core.actions.ContinueAsNew`. The ``on_*``/``enqueue`` methods are what signals
    and updates do to the memory; ``refuse_*`` judge a command before it is accepted.
    """

    def __init__(self, inp: InstanceInput, workflow_id: str, clock: Clock) -> None:
        self.inp = inp
        self.wf_id = workflow_id
        self.clock = clock
        self.host_queue = host_task_queue(inp.host)
        self.s = InstanceState.begin(inp)
        for command in inp.carried.pending if inp.carried else []:
            self.enqueue(command)

    # --- what signals and updates do -------------------------------------------------------------

    def enqueue(
        self,
        command: Command,
        *,
        handoff: HandoffRequest | None = None,
        confirm_to: str | None = None,
        first: bool = False,
        internal: bool = False,
    ) -> Ticket:
        """Queue a command; ``internal`` ones (promotion, restart) have no caller waiting (number -1)."""
        s = self.s
        ticket = Ticket(-1 if internal else s.next_ticket, command, handoff=handoff, confirm_to=confirm_to)
        if not internal:
            s.next_ticket += 1
        if first:
            s.queue.insert(0, ticket)
        else:
            s.queue.append(ticket)
        return ticket

    def has_result(self, ticket: Ticket) -> bool:
        return ticket.number in self.s.results

    def take_result(self, ticket: Ticket) -> CommandResult:
        return self.s.results.pop(ticket.number)

    def on_promote(self, req: PromoteRequest) -> None:
        """A standby is told the exchange is (about to be) free. It may arrive after this standby
        already took the exchange on its own: then only the confirmation the sender waits for is owed."""
        if self.s.outcome is None:
            self.s.promotions.append(req)

    def on_handoff_reply(self, reply: HandoffConfirm) -> None:
        self.s.handoff_reply = reply

    def on_host_shutting_down(self) -> None:
        self.s.host_going_down = True

    def facts(self) -> InstanceFacts:
        s = self.s
        return InstanceFacts(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            host=self.inp.host,
            role=s.role,
            state=s.state,
            queued=[t.command for t in s.queue],
            gone=s.outcome or s.registration_error,
            host_going_down=s.host_going_down,
        )

    def refuse_command(self, command: Command) -> None:
        """Raise ``InvalidTransition`` if the command must be refused (before it reaches history)."""
        refuse_command(self.facts(), command)

    def refuse_handoff(self, req: HandoffRequest) -> None:
        refuse_handoff(self.facts(), req.to_host)

    def registration_settled(self) -> bool:
        s = self.s
        return s.claim is not None or s.standby_visible or s.registration_error is not None

    def registration(self) -> RegistrationResult | tuple[str, str]:
        """Once settled: the registration, or why it was refused (message, error type)."""
        s = self.s
        if s.registration_error is not None or s.resolved is None:
            return (
                s.registration_error or "registration failed",
                s.registration_error_type or "RegistrationFailed",
            )
        return RegistrationResult(
            exchange=s.resolved.exchange.name,
            exchange_id=s.resolved.exchange.id,
            host=self.inp.host,
            hostname=s.hostname or self.inp.host,
            ip_address=s.ip_address,
            # A standby holds no claim: its own id, and epoch 0.
            instance_id=s.claim.instance_id if s.claim else s.standby_id or "",
            epoch=s.claim.epoch if s.claim else 0,
            state=s.state,
            workflow_id=self.wf_id,
            role=Role.ACTIVE if s.claim else Role.STANDBY,
        )

    def snapshot(self) -> InstanceSnapshot:
        s = self.s
        return InstanceSnapshot(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            exchange_id=s.resolved.exchange.id if s.resolved else None,
            host=self.inp.host,
            hostname=s.hostname,
            ip_address=s.ip_address,
            state=s.state,
            registered=s.claim is not None and s.outcome is None,
            claim=s.claim,
            symbol_count=s.symbol_count,
            connected_at=s.connected_at,
            last_error=s.last_error,
            last_heartbeat_ok=s.last_heartbeat_ok,
            pending=[t.command for t in s.queue],
            runs=s.runs,
            outcome=s.outcome,
            role=s.role,
            priority=self.inp.priority,
        )

    def next_step(self, *, lease_done: bool, history_long: bool) -> Step | None:
        """The loop's most urgent work, given what only the workflow can see (decisions.next_step)."""
        s = self.s
        return next_step(
            LoopFacts(
                role=s.role,
                lease_done=s.leasing and lease_done,
                host_going_down=s.host_going_down,
                promotions=len(s.promotions),
                queued=len(s.queue),
                history_long=history_long,
            )
        )

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> Proc:
        """Register (unless carried over), then serve: the loop of DESIGN §3."""
        s = self.s
        if s.resolved is None:
            registered = yield from (self._register_standby() if self.inp.standby else self._register())
            if not registered:
                return (yield from self._finish(s.registration_error or "registration failed"))
            if self.inp.start_immediately and s.role is Role.ACTIVE:
                self.enqueue(Command.START)
        for req in s.carried_notifications:
            yield Notify(req)
        while True:
            if not s.leasing:
                yield from (self._start_lease() if s.role is Role.ACTIVE else self._start_standby_lease())
                yield from self._maybe_warm_standby()
            step = yield WaitForWork()
            yield Log(f"{self.wf_id}: {step} ({s.state.value})")
            outcome = yield from self._serve(step)
            if outcome is not None:
                return (yield from self._finish(outcome))

    def _serve(self, step: Step) -> Proc:
        """Do one piece of the loop's work; the run's outcome when it must end, else None."""
        s = self.s
        if step is Step.LEASE_ENDED:
            carry_on = yield from (self._after_lease() if s.role is Role.ACTIVE else self._after_watch())
            return None if carry_on else s.outcome or "instance lost"
        if step is Step.HOST_GOING_DOWN:
            yield from self._cancel_lease()
            if s.role is Role.ACTIVE:
                yield from self._release()
            else:
                yield from self._drop_standby()
                yield from self._stop_warm("the worker is shutting down")
            return f"released: the worker on {self.inp.host} shut down"
        if step is Step.PROMOTE:
            yield from self._cancel_lease()
            yield from self._promote(s.promotions.pop(0))
            return None
        if step is Step.CONFIRM_PROMOTION:
            yield from self._owe_confirmation(s.promotions.pop(0))
            return None
        if step is Step.COMMAND:
            ticket = s.queue.pop(0)
            result, outcome = yield from self._run_ticket(ticket)
            if ticket.number >= 0:  # internal tickets (promotion, restart) have nobody waiting
                s.results[ticket.number] = result
            return outcome
        # Step.CONTINUE_AS_NEW
        yield from self._cancel_lease()
        # A command accepted meanwhile has a caller waiting on this run: run it first (its handler
        # would never finish otherwise) and continue as new afterwards.
        yield WaitUntil(lambda: bool(s.queue), or_handlers_finished=True)
        if not s.queue:
            undelivered = yield Undelivered()
            carried = s.carried(undelivered)
            yield ContinueAsNew(self.inp.model_copy(update={"carried": carried, "start_immediately": False}))
        return None

    def _run_ticket(self, ticket: Ticket) -> Proc:
        """Run one queued command: (its result, the run's outcome if it ends the instance)."""
        if ticket.command is Command.SHUTDOWN:
            result = yield from self._execute(ticket.command)
            if result.error is not None:
                return result, None
            # The caller hears back only once the claim is released.
            yield from self._cancel_lease()
            yield from self._release_claim()
            yield from self._drop_standby()
            yield from self._stop_warm("shut down")
            return result, "shut down"
        if ticket.command is Command.HANDOFF:
            result = yield from self._handoff(ticket)
            return result, self.s.outcome
        result = yield from self._execute(ticket.command)
        if ticket.confirm_to is not None:
            yield from self._confirm_takeover(ticket.confirm_to, result)
        return result, None

    def _finish(self, outcome: str) -> Proc:
        s = self.s
        s.outcome = outcome
        # Give in-flight update handlers their answer before the run closes.
        for ticket in s.queue:
            s.results[ticket.number] = CommandResult(
                command=ticket.command,
                from_state=s.state,
                state=s.state,
                transitions=[],
                error=f"instance ended: {outcome}",
            )
        s.queue.clear()
        yield self._details()
        yield DrainNotifications()
        yield WaitHandlers()
        return outcome

    # --- registration ----------------------------------------------------------------------------

    def _identify(self) -> Proc:
        """Resolve the exchange and admin, and learn the host's identity on its own queue."""
        s = self.s
        try:
            s.resolved = yield Call(
                Activity.RESOLVE_INSTANCE,
                ResolveRequest(exchange=self.inp.exchange, admin_email=self.inp.admin_email),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="resolve exchange and admin",
            )
            identity: Identity = yield from self._on_host(
                Call(
                    Activity.DETECT_IDENTITY,
                    IdentityRequest(host=self.inp.host),
                    queue=self.host_queue,
                    schedule_to_start_s=self._host_wait(),
                    start_to_close_s=30,
                    retry=Retry.HOST,
                    summary=f"identity on {self.inp.host}",
                )
            )
        except StepFailed as err:
            s.registration_error = self._explain(err)
            # A timeout (no worker for the host, a server that never answered) is unavailability.
            s.registration_error_type = err.failure.error_type or "ServiceUnavailable"
            return False
        s.hostname, s.ip_address = identity.hostname, identity.ip_address
        s.registered_at = self.clock.now()
        return True

    def _register(self) -> Proc:
        if not (yield from self._identify()):
            return False
        result = yield from self._claim()
        if result is None:
            return False
        yield Search(state=self.s.state)
        yield self._details()
        return True

    def _register_standby(self) -> Proc:
        """Become visible as a standby: no claim, a record with a TTL, a ``standby_registered`` event."""
        s = self.s
        if not (yield from self._identify()):
            return False
        try:
            yield from self._become_standby(required=True)
        except StepFailed as err:
            s.registration_error = f"standby registration failed: {err.failure.message}"
            s.registration_error_type = err.failure.error_type or "ServiceUnavailable"
            return False
        return True

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
        yield Call(
            Activity.PUT_STANDBY,
            self._standby_record(),
            start_to_close_s=10,
            retry=Retry.SHARED,
            summary="register standby",
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
        )

    def _drop_standby(self) -> Proc:
        s = self.s
        if s.standby_id is None or s.resolved is None:
            return
        try:
            yield Call(
                Activity.DROP_STANDBY,
                DropStandbyRequest(exchange_id=s.resolved.exchange.id, instance_id=s.standby_id),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="drop standby record",
            )
        except StepFailed as err:
            yield Log(f"standby record not dropped (its TTL frees it): {err.failure.message}", warning=True)
        s.standby_id = None

    def _standbys(self, *, include_self: bool = False) -> Proc:
        """The live standbys of our exchange, best first (none if Redis cannot say)."""
        s = self.s
        assert s.resolved
        try:
            found: StandbyList = yield Call(
                Activity.LIST_STANDBYS,
                StandbyQuery(exchange_id=s.resolved.exchange.id),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="list standbys",
            )
        except StepFailed as err:
            yield Log(f"standbys unknown: {err.failure.message}", warning=True)
            return []
        return [x for x in found.standbys if include_self or x.workflow_id != self.wf_id]

    def _claim(self, *, quiet: bool = False, retry: Retry = Retry.SHARED) -> Proc:
        """Claim with a fresh instanceId: the ClaimResult, or None (refused; why is remembered).

        ``quiet``: a standby racing for a vacancy (or an instance taking back its own exchange) is
        not a conflict worth an event when it loses.
        """
        s = self.s
        assert s.resolved and s.hostname and s.registered_at
        instance_id = self.clock.uuid4()
        request = ClaimRequest(status=self._status(instance_id), highest_epoch=s.highest_epoch)
        try:
            result: ClaimResult = yield from self._claim_activity(request, retry)
        except StepFailed as err:
            if not quiet:
                s.registration_error = f"claim failed: {self._explain(err)}"
                s.registration_error_type = err.failure.error_type or "ServiceUnavailable"
            return None
        s.highest_epoch = max(s.highest_epoch, result.epoch)
        if not result.claimed:
            if quiet:
                return None
            s.registration_error = result.message or "exchange already claimed"
            s.registration_error_type = "ClaimConflict"
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
                yield Call(
                    Activity.CLAIM_EXCHANGE, request, start_to_close_s=10, retry=retry, summary="claim"
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

    def _on_host(self, call: Call) -> Proc:
        """Run a step on a host queue. One not picked up in time is tried again while the host's
        worker is seen polling its queue — busy, not missing — for at most ``HOST_BUSY_LIMIT_S``;
        with nobody polling, the failure stands (the caller reports it)."""
        # Patched: runs begun before it failed a step at its first schedule-to-start timeout.
        patient = yield Patched("wait-for-busy-host")
        since = self.clock.now()
        while True:
            try:
                return (yield call)
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
        try:
            presence: HostPresence = yield Call(
                Activity.HOST_POLLED,
                IdentityRequest(host=self.inp.host),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary=f"is {self.inp.host} polled?",
            )
        except StepFailed as err:
            yield Log(f"host presence unknown: {err.failure.message}", warning=True)
            return False
        return presence.polled

    def _host_wait(self) -> float:
        # Long enough for a live worker to pick the task up, short enough to report a missing host.
        return max(5.0, self.inp.heartbeat_interval_s)

    # --- the lease -------------------------------------------------------------------------------

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
            start_to_close_s=self.inp.lease_term_s + 4 * interval,
            # Every renewal heartbeats at once (the host worker does not throttle them), so a silence
            # of 1.25 intervals means the host stopped renewing. See _lease_failed for the margins.
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
            start_to_close_s=self.inp.lease_term_s + 4 * interval,
            heartbeat_timeout_s=self._heartbeat_timeout(),
            summary=f"standby watch on {self.inp.host}",
        )

    def _heartbeat_timeout(self) -> float:
        # A floor keeps short intervals from mistaking a busy worker for a dead host. The zombie
        # margin holds either way: the release comes at timeout + pickup >= 2 intervals (the renew
        # deadline) after the host's last heartbeat, and a longer timeout only makes it later.
        return max(self.inp.heartbeat_interval_s * HEARTBEAT_TIMEOUT_FACTOR, HEARTBEAT_TIMEOUT_FLOOR_S)

    def _cancel_lease(self) -> Proc:
        self.s.leasing = False
        yield CancelLease()

    def _take_lease(self) -> Proc:
        """The ended lease's result (its failure raised as StepFailed); the lease is forgotten."""
        self.s.leasing = False
        return (yield TakeLease())

    def _after_lease(self) -> Proc:
        """Decide what a finished lease means; False when the run must end."""
        try:
            outcome: LeaseOutcome = yield from self._take_lease()
        except StepFailed as err:
            return (yield from self._lease_failed(err))
        self.s.last_heartbeat_ok = outcome.last_renewed
        return True  # the term ran out normally: the loop issues the next one

    def _lease_failed(self, err: StepFailed) -> Proc:
        """Act on a lease that ended with an error; False when the run must end."""
        reason = err.failure.message
        stopped_at = err.failure.stopped_at
        verdict = lease_verdict(err.failure.error_type)
        yield Log(f"{self.wf_id}: lease ended ({verdict}): {reason}")
        if verdict is LeaseVerdict.CONNECTOR_FAILED:
            yield from self._connector_failed(reason)
            return True
        if verdict is LeaseVerdict.RESTART_UNHEALTHY:
            yield from self._connector_failed(reason, policy="on-failure")
            return True
        if verdict is LeaseVerdict.STEP_ASIDE:
            yield from self._step_aside(reason)
            return True
        if verdict is LeaseVerdict.RECLAIM and (yield from self._reclaim(reason, stopped_at)):
            return True
        if verdict is LeaseVerdict.REATTACH:
            patched = yield Patched("reattach-by-claim-probe")
            answer = yield from (self._reattach(reason) if patched else self._reattach_v1(reason))
            if answer is None:
                return True
            if isinstance(answer, StepFailed):
                return (yield from self._lease_failed(answer))
            reason = answer
        yield from self._instance_lost(reason, stopped_at)
        return False

    def _reattach_v1(self, reason: str) -> Proc:
        """Before the keeper: a host whose lease was not picked up again within the pickup window
        was lost. Kept so that runs begun before ``reattach-by-claim-probe`` replay as they ran."""
        s = self.s
        pickup = self.inp.heartbeat_interval_s * PICKUP_FACTOR
        yield from self._start_lease(schedule_to_start_s=pickup)
        ended = yield WaitLease(pickup + max(self.inp.heartbeat_interval_s, 3.0))
        if not ended:
            if s.state in RUNNING_STATES and not (yield from self._connector_alive()):
                yield from self._fail(f"connector not running after the worker on {self.inp.host} restarted")
            return None
        try:
            yield from self._take_lease()
            return None
        except StepFailed as again:
            if again.failure.error_type in LOSS_TYPES:
                return again.failure.message
            return f"host {self.inp.host} stopped heartbeating ({reason}) and did not come back"

    def _reattach(self, reason: str) -> Proc:
        """The lease stopped heartbeating to Temporal, which proves nothing about Redis: re-attach.

        The host's keeper renews on its own, so a host that only lost Temporal (an outage, a
        partition, a worker restart) is picked up again by a fresh lease within the pickup window:
        no transition, no new epoch (None). Meanwhile Redis is asked at once, and again when the
        claim would pass its renew deadline: unrenewed past it (its connector is stopped by now: its
        keeper or watchdog saw to it) → lost (the reason, a str); still renewed → keep waiting.
        A lease that fails with a typed error is handed back for the caller to judge (StepFailed).
        """
        s = self.s
        interval = self.inp.heartbeat_interval_s
        pickup = interval * PICKUP_FACTOR
        # Patched: runs begun before it waited out the whole pickup window before asking Redis,
        # which made a crash at long intervals wait longer than the TTL.
        at_once = yield Patched("probe-claim-at-once")
        while True:
            yield from self._start_lease(schedule_to_start_s=pickup)
            # Longer than the pickup window (timers fire late under load): a lease still running by
            # then was picked up by a worker, not refused for want of one.
            picked_up_at = self.clock.now() + timedelta(seconds=pickup + max(interval, 3.0))
            while True:
                wake_at = picked_up_at
                if at_once:
                    probe = yield from self._probe_claim()
                    if probe is not None:
                        lost = yield from self._lost_by(probe, reason)
                        if lost is not None:
                            yield from self._cancel_lease()
                            return lost
                        stale = stale_in(probe.renewed_ms_ago or 0, interval)
                        wake_at = min(picked_up_at, self.clock.now() + timedelta(seconds=stale + 0.05))
                wait = max(wake_at - self.clock.now(), timedelta(milliseconds=50))
                if not (yield WaitLease(wait.total_seconds())):
                    if wake_at < picked_up_at:
                        continue  # the moment the claim would go stale: ask Redis again
                    yield Log(f"{self.wf_id}: re-attached to the renewals on {self.inp.host}")
                    if s.state in RUNNING_STATES and not (yield from self._connector_alive()):
                        # The claim is still ours (its renewals run) but the connector is gone (a new
                        # worker process, or it was stopped meanwhile): record it and bring it back.
                        yield from self._fail(f"connector not running on {self.inp.host} after re-attaching")
                        self.enqueue(Command.START, first=True, internal=True)
                    return None
                break
            try:
                yield from self._take_lease()
                return None
            except StepFailed as again:
                if again.failure.error_type is not None:
                    return again
            if at_once:
                continue  # no worker took it (or it went silent again): ask Redis at once, re-issue
            probe = yield from self._probe_claim()
            if probe is None:
                continue  # Redis does not answer here either: no evidence either way
            lost = yield from self._lost_by(probe, reason)
            if lost is not None:
                return lost

    def _lost_by(self, probe: ClaimProbe, reason: str) -> Proc:
        """Why the claim is lost, if Redis proves it (the reason), or None: its host still renews."""
        if not probe.held_by_us:
            return (
                f"host {self.inp.host} stopped heartbeating ({reason}) and its claim is gone "
                f"({'held by ' + probe.holder if probe.holder else 'the key expired'})"
            )
        host = judge_claim(probe.held_by_us, probe.renewed_ms_ago, self.inp.heartbeat_interval_s)
        age = f"{probe.renewed_ms_ago / 1000:.1f}s ago" if probe.renewed_ms_ago is not None else "never"
        if host is HostVerdict.STOPPED:
            return f"host {self.inp.host} stopped heartbeating ({reason}) and renewing its claim ({age})"
        yield Log(
            f"{self.wf_id}: no worker on {self.inp.host} answers Temporal, but Redis shows the claim "
            f"renewed {age} ({host}): waiting"
        )
        return None

    def _probe_claim(self) -> Proc:
        """What Redis proves about our claim now (None: Redis did not answer)."""
        s = self.s
        assert s.resolved and s.claim
        try:
            probe: ClaimProbe = yield Call(
                Activity.PROBE_CLAIM,
                ClaimProbeRequest(exchange_id=s.resolved.exchange.id, claim=s.claim),
                start_to_close_s=5,
                retry=Retry.TWICE,
                summary="probe claim",
            )
        except StepFailed as err:
            yield Log(f"claim probe failed: {err.failure.message}", warning=True)
            return None
        return probe

    def _connector_failed(self, reason: str, policy: str | None = None) -> Proc:
        """The connector died (or failed its health checks) while running; the claim is still ours.
        Record, recover, and restart if the spec (or ``policy``) says so."""
        s = self.s
        yield from self._fail(reason)
        spec = self.inp.connector
        delay = restart_delay(policy or spec.restart, s.restarts, spec.max_restarts, spec.restart_backoff_s)
        if delay is not None:
            # Counted in the worker's Temporal metrics (its /metrics): restarts write no event.
            yield CountRestart(self.inp.exchange)
            s.restarts += 1
            yield from self._start_lease()  # keep renewing while we back off
            yield Sleep(delay, summary=f"restart {s.restarts} backoff")
            self.enqueue(Command.START, first=True, internal=True)

    def _step_aside(self, reason: str) -> Proc:
        """An unhealthy connector whose policy is failover: record it, let go of the exchange and wake
        the best standby, then wait as a standby here. With no live standby, restart in place."""
        yield from self._fail(reason)
        if not (yield from self._standbys()):
            yield Log(f"{self.wf_id}: no live standby to take over; restarting in place")
            self.enqueue(Command.START, first=True, internal=True)
            return
        yield from self._cancel_lease()
        yield from self._release_claim()
        yield from self._wake_standby(f"{self.inp.exchange} on {self.inp.host} unhealthy: {reason}")
        yield from self._become_standby()

    def _reclaim(self, reason: str, stopped_at: datetime | None = None) -> Proc:
        """Our key vanished (expired while paused, or Redis lost its data) and nobody else took it:
        take the exchange again above every epoch we know, then bring the connector back."""
        s = self.s
        was_running = s.state in RUNNING_STATES
        lost_claim = s.claim
        # If Redis only stalled, our old key may still be there: free it (fenced) and claim afresh,
        # so the connector restarts under a new epoch rather than the one it stopped under.
        yield from self._release_claim()
        s.claim = None
        # Retried until Redis answers: after an outage the holder must get its exchange back first.
        if (yield from self._claim(quiet=True, retry=Retry.DURABLE)) is None:
            s.claim = lost_claim
            return False
        # Renew the fresh claim at once: the walk below can outlast a short TTL.
        yield from self._start_lease()
        yield from self._event(
            EventKind.ERROR, error=f"{reason}; reclaimed at epoch {s.highest_epoch}", state=s.state
        )
        yield from self._walk_down(stopped_at)
        if was_running:
            self.enqueue(Command.START, first=True, internal=True)
        return True

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

    def _instance_lost(self, reason: str, stopped_at: datetime | None = None) -> Proc:
        """The claim is gone or the host is: record it, walk the state down, free the key if still
        ours, and wake the best standby so it need not wait for the TTL."""
        s = self.s
        s.last_error = reason
        yield from self._event(EventKind.INSTANCE_LOST, detail=reason)
        yield from self._walk_down(stopped_at)
        yield from self._release_claim()
        # Patched: runs that lost their instance before standbys existed did not look for one.
        if (yield Patched("wake-standby-on-loss")):
            yield from self._wake_standby(f"{self.inp.exchange} on {self.inp.host} lost: {reason}")
        s.outcome = f"instance lost: {reason}"

    def _wake_standby(self, reason: str, *, confirm_to: str | None = None) -> Proc:
        """Signal the highest-priority live standby to take over; returns the one told, if any."""
        for standby in (yield from self._standbys()):
            refused = yield Signal(
                standby.workflow_id,
                "promote",
                PromoteRequest(reason=reason, min_epoch=self.s.highest_epoch, confirm_to=confirm_to),
            )
            if refused is not None:  # the standby's workflow is gone: try the next one
                yield Log(f"standby {standby.workflow_id} not reachable: {refused}")
                continue
            return standby
        return None

    # --- standby ---------------------------------------------------------------------------------

    def _after_watch(self) -> Proc:
        """A standby's watch ended: the exchange fell vacant (TTL fallback), the term ran out, the
        record vanished, or this standby's host stopped heartbeating to Temporal."""
        s = self.s
        try:
            outcome: StandbyOutcome = yield from self._take_lease()
        except StepFailed as err:
            if err.failure.error_type == "StandbyGone" and (yield Patched("standby-reattach")):
                # Redis lost the record (an outage longer than its TTL): make it visible again.
                yield from self._put_standby()
                return True
            if (
                err.failure.error_type is None
                and (yield Patched("standby-reattach"))
                and (yield from self._standby_live())
            ):
                # Its host still renews the record: it only lost Temporal. Watch again.
                return True
            yield from self._drop_standby()
            s.outcome = f"standby lost: host {self.inp.host} stopped heartbeating ({err.failure.message})"
            return False
        if outcome.vacant:
            # Nobody told us (the holder's workflow would have): the key expired. Higher priorities go
            # first; the rest give them a head start, then race — the claim script admits one. Right
            # after a Redis outage the holder itself goes first: a healthy holder whose key lapsed
            # while Redis was away must not be replaced by a race.
            standbys: list[StandbyRecord] = yield from self._standbys()
            ahead = sum(1 for x in standbys if x.priority > self.inp.priority)
            wait = vacancy_delay(ahead, self.inp.heartbeat_interval_s, after_outage=outcome.after_outage)
            if wait:
                yield Sleep(wait)
            # Patched: runs begun before it acted right after the claim (see act_after_vacancy_s).
            hold = yield Patched("vacancy-waits-out-deadline")
            # Patched: runs begun before it waited even when the key had lapsed by its TTL.
            lapsed = outcome.lapsed and (yield Patched("lapsed-key-acts-at-once"))
            yield from self._promote(
                PromoteRequest(
                    reason="the holder's claim expired (TTL)",
                    min_epoch=outcome.last_epoch,
                    act_after_s=(
                        act_after_vacancy_s(self.inp.heartbeat_interval_s, lapsed=lapsed) if hold else 0.0
                    ),
                )
            )
        return True

    def _standby_live(self) -> Proc:
        """Whether our standby record is still renewed (by a host that may have lost only Temporal)."""
        standbys: list[StandbyRecord] = yield from self._standbys(include_self=True)
        return any(x.instance_id == self.s.standby_id for x in standbys)

    def _promote(self, req: PromoteRequest) -> Proc:
        """Try to take the exchange. Won: drop the standby record, ``promoted``, start. Lost: stay.

        A warm standby is activated right after the claim — the one step fencing requires first —
        and the status walks starting → warming → active behind it; if it cannot be, it starts cold.
        """
        s = self.s
        s.highest_epoch = max(s.highest_epoch, req.min_epoch)
        result = yield from self._claim(quiet=True)
        if result is None:
            if req.confirm_to:
                yield from self._reply(req.confirm_to, ok=False, detail="the exchange was not free to claim")
            return
        s.role = Role.ACTIVE
        yield from self._start_lease()  # renew the fresh claim at once
        if req.act_after_s:
            # The holder whose key vanished may act until its renew deadline: ours must not yet.
            yield Sleep(req.act_after_s, summary="wait out the old deadline")
        task, s.warm_task = s.warm_task, None
        warming = task is not None and not task.done
        if task is not None and warming:
            # Still warming up: the start goes cold (its prepare replaces the half-warm connector).
            yield CancelWarmUp()
            s.warm_here = False
        cold_because: str | None = None
        no_worker = False
        warm = start_path(warm_here=s.warm_here, warming=warming) is StartPath.WARM and (
            yield Patched("warm-activate-on-promotion")
        )
        if warm:
            cold_because, no_worker = yield from self._activate_warm()
        yield from self._drop_standby()
        yield Search(role=Role.ACTIVE)
        how = ""
        if warm:
            how = f" (warm: {'activated' if cold_because is None else 'not activated'})"
        yield from self._event(EventKind.PROMOTED, detail=req.reason + how)
        for target in recovery_path(s.state):  # a former active one may still read stopped
            yield from self._transition(target)
        if warm and cold_because is None:
            s.connected_at = self.clock.now()
            for target in (State.STARTING, State.WARMING, State.ACTIVE):
                yield from self._transition(target)
            if req.confirm_to:
                yield from self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host} (warm)")
            return
        if cold_because is not None and no_worker:
            # Our host has no worker: a cold start would only wait for it again. A handoff hears at
            # once (and keeps its exchange); otherwise the lease on this host fails like any other.
            yield from self._event(EventKind.ERROR, error=f"warm activation failed: {cold_because}")
            if req.confirm_to:
                failed = CommandResult(
                    command=Command.START,
                    from_state=s.state,
                    state=s.state,
                    transitions=[],
                    error=cold_because,
                )
                yield from self._confirm_takeover(req.confirm_to, failed)
            return
        if cold_because is not None:
            yield from self._event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        self.enqueue(Command.START, first=True, internal=True, confirm_to=req.confirm_to)

    def _owe_confirmation(self, req: PromoteRequest) -> Proc:
        """A promotion for an exchange we already took: answer the handoff that sent it."""
        s = self.s
        if req.confirm_to is None:
            return
        starting = next((t for t in s.queue if t.command is Command.START), None)
        if starting is not None:
            starting.confirm_to = req.confirm_to  # answered once that start is done
        elif s.state is State.ACTIVE:
            yield from self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host}")
        else:
            yield from self._reply(req.confirm_to, ok=False, detail=f"{self.inp.host} is {s.state.value}")

    def _confirm_takeover(self, confirm_to: str, result: CommandResult) -> Proc:
        """After a promoted START: tell the handing-over instance; on failure give the claim back."""
        if result.error is None and self.s.state is State.ACTIVE:
            yield from self._reply(confirm_to, ok=True, detail=f"active on {self.inp.host}")
            return
        yield from self._cancel_lease()
        yield from self._release_claim()
        yield from self._reply(confirm_to, ok=False, detail=result.error or f"ended {self.s.state.value}")
        yield from self._become_standby()

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

    # --- handoff ---------------------------------------------------------------------------------

    def _handoff(self, ticket: Ticket) -> Proc:
        """notify → takeover → confirm → step down. A failure midway takes the exchange back."""
        s = self.s
        assert ticket.handoff and s.claim and s.resolved
        req = ticket.handoff
        start_state = s.state
        standbys: list[StandbyRecord] = yield from self._standbys()
        target = next((x for x in standbys if x.host == req.to_host), None)
        if target is None:
            standbys = yield from self._standbys()
            live = ", ".join(sorted({x.host for x in standbys})) or "none"
            return self._handoff_refused(
                f"no live standby of {self.inp.exchange} on host {req.to_host} (live standbys: {live})"
            )
        silent = yield from self._target_silent(target)
        if silent is not None:
            yield from self._event(
                EventKind.HANDOFF, detail=f"aborted: {silent}; {self.inp.exchange} stays here"
            )
            return self._handoff_refused(f"handoff to {target.host} failed ({silent}); nothing changed")
        if target.warm and start_state is State.ACTIVE and (yield Patched("warm-handoff")):
            # Make before break: the target's connector is warm before ours stops.
            target = yield from self._until_warm(target)
        yield from self._event(
            EventKind.HANDOFF,
            detail=f"notify: handing over to {target.host} (standby {target.instance_id}"
            + (", warm)" if target.warm_ready else ")"),
        )
        done: list[State] = []
        # Handing over while staying here as a warm standby: demote our connector instead of
        # stopping it, so that a handoff back is as quick as this one.
        keep_warm = handoff_demotes(shutdown=req.shutdown, warm=self.inp.connector.warm) and (
            yield Patched("warm-handback")
        )
        try:
            for state in plan(Command.HANDOFF, s.state):
                if state is State.STOPPED:
                    if not keep_warm or not (yield from self._demote()):
                        yield from self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=30)
                yield from self._transition(state)
                done.append(state)
        except StepFailed as err:
            # Our connector did not stop: nothing was handed over and the claim is still ours.
            # Record it, recover, and bring the connector back if it was running.
            reason = self._explain(err)
            yield from self._event(
                EventKind.HANDOFF,
                detail=f"aborted: the connector did not stop ({reason}); {self.inp.exchange} stays here",
            )
            yield from self._fail(reason)
            if start_state is State.ACTIVE:
                self.enqueue(Command.START, first=True, internal=True)
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=s.state,
                transitions=done,
                error=f"handoff to {target.host} failed (the connector did not stop: {reason}); "
                f"kept {self.inp.exchange} here",
            )
        old_claim = s.claim
        old_epoch = old_claim.epoch
        yield from self._cancel_lease()
        yield from self._release_claim()
        # To a warm target, the signal goes first: nobody is active until it is, so the takeover
        # event is written while it activates rather than before.
        signal_first = target.warm_ready and (yield Patched("warm-handoff-signal-first"))
        takeover = f"takeover: released epoch {old_epoch} to {target.host}"
        if not signal_first:
            yield from self._event(EventKind.HANDOFF, detail=takeover)
        s.handoff_reply = None
        refused = yield Signal(
            target.workflow_id,
            "promote",
            PromoteRequest(
                reason=f"handoff from {self.inp.host}", min_epoch=s.highest_epoch, confirm_to=self.wf_id
            ),
        )
        if refused is not None:
            s.handoff_reply = HandoffConfirm(
                ok=False, host=target.host, detail=f"standby unreachable: {refused}"
            )
        if signal_first:
            yield from self._event(EventKind.HANDOFF, detail=takeover)
        if refused is None:
            answered = yield WaitUntil(
                lambda: s.handoff_reply is not None,
                timeout_s=HANDOFF_TIMEOUT_S + 4 * self.inp.heartbeat_interval_s,
            )
            if not answered:
                s.handoff_reply = HandoffConfirm(ok=False, host=target.host, detail="no confirmation in time")
        reply = s.handoff_reply
        assert reply is not None
        s.claim = None
        if reply.ok:
            # Handoff events speak for the instance handing over; the target's epoch is in the text.
            yield from self._event(
                EventKind.HANDOFF,
                claim=old_claim,
                detail=f"confirm: {target.host} active at epoch {reply.epoch}",
            )
            if req.shutdown:
                s.outcome = f"handed over to {target.host}"
            else:
                yield from self._become_standby()  # still warm if our connector was demoted
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=s.state,
                transitions=done,
                detail=f"{target.host} active at epoch {reply.epoch} (was epoch {old_epoch} here); "
                + ("this instance shut down" if req.shutdown else "this instance is a standby"),
            )
        # Midway failure: the exchange must not be left with nobody. Take it back.
        yield from self._event(
            EventKind.HANDOFF,
            claim=old_claim,
            detail=f"aborted: {reply.detail}; taking {self.inp.exchange} back",
        )
        if (yield from self._claim(quiet=True)) is not None:
            if start_state is State.ACTIVE:
                self.enqueue(Command.START, first=True, internal=True)
            error = f"handoff to {target.host} failed ({reply.detail}); kept {self.inp.exchange} here"
        else:
            yield from self._become_standby()
            error = f"handoff to {target.host} failed ({reply.detail}) and the exchange is held elsewhere now"
        return CommandResult(
            command=Command.HANDOFF, from_state=start_state, state=s.state, transitions=done, error=error
        )

    def _handoff_refused(self, error: str) -> CommandResult:
        """A handoff that stopped before anything changed here."""
        s = self.s
        return CommandResult(
            command=Command.HANDOFF, from_state=s.state, state=s.state, transitions=[], error=error
        )

    def _target_silent(self, target: StandbyRecord) -> Proc:
        """Why the target's worker cannot take over now (it did not answer on its host queue), or
        None. Asked before anything stops here (patched ``handoff-asks-target-first``): a frozen or
        partitioned target otherwise leaves the exchange with nobody until the handoff times out."""
        if not (yield Patched("handoff-asks-target-first")):
            return None
        wait = self._host_wait()
        try:
            yield Call(
                Activity.DETECT_IDENTITY,
                IdentityRequest(host=target.host),
                queue=host_task_queue(target.host),
                schedule_to_start_s=wait,
                start_to_close_s=wait,
                retry=Retry.ONCE,
                summary=f"is {target.host} answering?",
            )
        except StepFailed as err:
            return f"the worker on {target.host} did not answer: {err.failure.message}"
        return None

    def _until_warm(self, target: StandbyRecord) -> Proc:
        """Wait (bounded by the connector's ready timeout) until the warm target says it is ready;
        the latest record of it either way — a target that never gets ready is handed over cold."""
        waited = 0.0
        limit = self.inp.connector.ready_timeout_s + 2 * self.inp.heartbeat_interval_s
        step = max(1.0, self.inp.heartbeat_interval_s / 2)
        while not target.warm_ready and waited < limit:
            yield Sleep(step, summary=f"wait for {target.host} to be warm")
            waited += step
            standbys: list[StandbyRecord] = yield from self._standbys()
            found = next((x for x in standbys if x.instance_id == target.instance_id), None)
            if found is None:
                break  # gone meanwhile: the promote signal below finds out
            target = found
        if not target.warm_ready:
            yield Log(f"{self.wf_id}: {target.host} not warm after {waited:.0f}s: handing over cold")
        return target

    # --- commands --------------------------------------------------------------------------------

    def _execute(self, command: Command) -> Proc:
        s = self.s
        start_state = s.state
        try:
            path = plan(command, s.state)
        except InvalidTransition as exc:
            return CommandResult(
                command=command, from_state=start_state, state=s.state, transitions=[], error=str(exc)
            )
        done: list[State] = []
        try:
            if command is Command.START:
                activated = yield from self._start(done)
                if activated is not None:
                    return CommandResult(
                        command=command,
                        from_state=start_state,
                        state=s.state,
                        transitions=done,
                        detail=activated,
                    )
            else:
                for target in path:
                    if target is State.STOPPED:
                        yield from self._host_step(Activity.CONNECTOR_DISCONNECT)
                    yield from self._transition(target)
                    done.append(target)
        except StepFailed as err:
            reason = self._explain(err)
            yield from self._fail(reason)
            return CommandResult(
                command=command,
                from_state=start_state,
                state=s.state,
                transitions=done,
                error=f"{command.value} failed: {reason}; recovered to {s.state.value}",
            )
        return CommandResult(command=command, from_state=start_state, state=s.state, transitions=done)

    def _start(self, done: list[State]) -> Proc:
        """idle → starting → warming → active, appending to ``done``; a warm standby's connector is
        activated instead of started (what it says, then), a cold one is started (None)."""
        s = self.s
        yield from self._transition(State.STARTING)
        done.append(State.STARTING)
        how = start_path(warm_here=s.warm_here, warming=s.warm_task is not None)
        if how is StartPath.WARM and (yield Patched("warm-activate")):
            cold_because, _ = yield from self._activate_warm()
            if cold_because is None:
                s.connected_at = self.clock.now()
                for state in (State.WARMING, State.ACTIVE):
                    yield from self._transition(state)
                    done.append(state)
                return f"warm standby activated at epoch {s.claim.epoch if s.claim else 0}"
            yield from self._event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        report: ConnectorReport = yield from self._host_step(Activity.CONNECTOR_PREPARE)
        s.symbol_count = report.symbol_count
        yield from self._transition(State.WARMING)
        done.append(State.WARMING)
        yield from self._host_step(Activity.CONNECTOR_WARM_UP)
        yield from self._host_step(Activity.CONNECTOR_CONNECT)
        s.connected_at = self.clock.now()
        yield from self._transition(State.ACTIVE)
        done.append(State.ACTIVE)
        return None

    # --- warm standbys ---------------------------------------------------------------------------

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

    def _maybe_warm_standby(self) -> Proc:
        """A warm standby keeps its connector prepared and warmed while it waits (in the background:
        the watch must renew the record meanwhile, and a warm-up can take minutes)."""
        s = self.s
        if s.standby_id is None or not warm_up_standby(
            role=s.role, warm=self.inp.connector.warm, warm_here=s.warm_here, warming=s.warm_task is not None
        ):
            return
        if (yield Patched("warm-standby")):
            s.warm_task = task = WarmUp()
            yield SpawnWarmUp(self._warm_up_standby(task))

    def _warm_up_standby(self, task: WarmUp) -> Proc:
        s = self.s
        try:
            # Already warm here (a run that continued as new while, or after, it warmed up)?
            found: ConnectorReport = yield from self._host_step(
                Activity.CONNECTOR_CHECK, timeout_s=10, standby=True
            )
            if found.warm_ready:
                s.warm_here = s.role is Role.STANDBY
                return
            report: ConnectorReport = yield from self._host_step(Activity.CONNECTOR_PREPARE, standby=True)
            s.symbol_count = report.symbol_count
            yield from self._host_step(Activity.CONNECTOR_WARM_UP, standby=True)
        except StepFailed as err:
            reason = self._explain(err)
            yield Log(f"{self.wf_id}: warm standby not warmed: {reason}", warning=True)
            yield from self._event(
                EventKind.ERROR,
                claim=Claim(instance_id=s.standby_id or "", epoch=0),
                error=f"warm standby on {self.inp.host} not warmed (a promotion starts cold): {reason}",
            )
            return
        finally:
            task.done = True
        if s.role is Role.STANDBY:
            s.warm_here = True
            yield Log(f"{self.wf_id}: warm standby ready on {self.inp.host}")

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
        try:
            # Once: a worker that is shutting down stops its connectors itself, and one that is gone
            # took its children with it (parent-death signal); the standby must not wait on it.
            yield from self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=15, retry=Retry.ONCE)
        except StepFailed as err:
            yield Log(
                f"{self.wf_id}: warm connector not stopped ({reason}): {err.failure.message}", warning=True
            )

    # --- failures and releases -------------------------------------------------------------------

    def _fail(self, reason: str) -> Proc:
        """Retries are exhausted: record lastError + an error event, stop the connector, recover to idle."""
        s = self.s
        s.last_error = reason
        fields: dict[str, object] = {"lastError": reason, "lastErrorAt": iso(self.clock.now())}
        if (yield from self._one_write()):
            event = self._network_event(EventKind.ERROR, error=reason, state=s.state)
            yield from self._record(event, self._status_patch(fields))
        else:
            yield from self._patch(fields)
            yield from self._event(EventKind.ERROR, error=reason, state=s.state)
        try:
            yield from self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=10)
        except StepFailed as err:
            yield Log(f"connector_disconnect after failure: {err.failure.message}", warning=True)
        for target in recovery_path(s.state):
            yield from self._transition(target)

    def _release(self) -> Proc:
        """Stop whatever runs, then let go of the claim (graceful worker shutdown)."""
        for target in release_path(self.s.state):
            if target is State.STOPPED:
                try:
                    yield from self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=10)
                except StepFailed as err:
                    yield Log(f"connector_disconnect: {err.failure.message}", warning=True)
            yield from self._transition(target)
        yield from self._release_claim()

    def _release_claim(self) -> Proc:
        s = self.s
        if s.claim is None or s.resolved is None:
            return
        try:
            yield Call(
                Activity.RELEASE_CLAIM,
                ReleaseRequest(exchange_id=s.resolved.exchange.id, claim=s.claim),
                start_to_close_s=10,
                retry=Retry.DURABLE,
                summary="release claim",
            )
        except StepFailed as err:
            yield Log(f"release failed (the TTL frees it): {err.failure.message}", warning=True)

    def _host_step(
        self, activity: Activity, timeout_s: float = 120, *, standby: bool = False, retry: Retry = Retry.HOST
    ) -> Proc:
        """One connector step on our host: its ConnectorReport. ``standby``: for a warm standby's
        connector, which is told its own standby id and epoch 0 (it holds no claim)."""
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

    # --- writes ----------------------------------------------------------------------------------

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
            recorded: Recorded = yield Call(
                Activity.RECORD,
                RecordRequest(event=event, patch=patch),
                start_to_close_s=10,
                retry=Retry.DURABLE,
                summary=f"record {event.event.value}",
                local=True,
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
            result: PatchResult = yield Call(
                Activity.PATCH_STATUS, patch, start_to_close_s=10, retry=Retry.DURABLE, summary="write status"
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
            yield Call(
                Activity.RECORD_EVENT,
                EventRequest(event=event),
                start_to_close_s=10,
                retry=Retry.DURABLE,
                summary=f"event {kind.value}",
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
        )

    def _details(self) -> Details:
        s = self.s
        claim = f"epoch {s.claim.epoch}" if s.claim else "no claim"
        return Details(
            f"**state**: {s.state.value}  \n**host**: {s.hostname or self.inp.host} "
            f"({s.ip_address or 'IP unknown'})  \n**claim**: {claim}  \n"
            f"**symbols**: {s.symbol_count}  \n**last heartbeat**: "
            f"{iso(s.last_heartbeat_ok) if s.last_heartbeat_ok else 'see status key'}  \n"
            f"**last error**: {s.last_error or '-'}" + (f"  \n**outcome**: {s.outcome}" if s.outcome else "")
        )
