"""One exchange instance on one host, as a durable workflow (id ``instance-{exchange}-{host}``).

The workflow decides nothing by itself: :mod:`perseus.lifecycle` says which transitions a command
makes, and activities do the I/O. The workflow owns the memory that makes recovery safe: the claim
(instanceId + epoch) it holds, the highest epoch it has seen, the state, and the queued commands.

Life of a run::

    register: resolve exchange/admin → detect identity (host queue) → claim (new epoch) → idle
              (or, as a standby: a TTL'd standby record, no claim)
    loop:     active: a lease activity on the host queue renews the claim and heartbeats
              standby: a watch activity renews the record and waits for the exchange to fall vacant
              commands (updates/signals) run one at a time: start, stop, shutdown, handoff
              lease failure → a restarted worker resumes the claim; a vanished key is reclaimed;
                              otherwise the instance is lost: record it, walk down to idle,
                              release the key, wake the best standby, end the run
              promote signal / vacancy (standby) → claim above every known epoch → start
              history long → cancel the lease, continue-as-new with all state
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
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
    from perseus.errors import NON_RETRYABLE_ERROR_TYPES, InvalidTransition
    from perseus.keys import host_task_queue, iso, ttl_ms
    from perseus.lifecycle import (
        Command,
        Role,
        State,
        check_transition,
        plan,
        recovery_path,
        release_path,
    )
    from perseus.models import (
        CarriedState,
        Claim,
        ClaimProbe,
        ClaimProbeRequest,
        ClaimRequest,
        ClaimResult,
        CommandRequest,
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
        LeaseEnd,
        LeaseOutcome,
        LeaseRequest,
        NetworkEvent,
        NotifyRequest,
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
    from perseus.temporal import CONNECTION_STATE, INSTANCE_ROLE
    from workflows import calls

RUNNING_STATES = (State.STARTING, State.WARMING, State.ACTIVE)
T = TypeVar("T")

SHARED_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
#: Status and event writes, releases and reclaims: retried until Redis answers, never dropped after N
#: attempts — the record must not lose a transition because Redis was away for a while.
DURABLE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
HOST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=[*NON_RETRYABLE_ERROR_TYPES, "ConnectorGone"],
)


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


def describe_failure(err: BaseException) -> str:
    """A one-line reason from an ActivityError chain."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name if cause.type else 'unknown'})"
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)


def lease_stop_time(err: BaseException) -> datetime | None:
    """When the keeper stopped the connector, if the lease's error says (see ``LeaseEnd``)."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError) and cause.details:
        try:
            return LeaseEnd.model_validate(cause.details[0]).stopped_at
        except ValueError:
            return None
    return None


def not_picked_up(err: BaseException) -> bool:
    """Whether an activity failed because no worker started it within its schedule-to-start."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, TimeoutError) and cause.type is TimeoutType.SCHEDULE_TO_START


def failure_type(err: BaseException) -> str | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


@dataclass
class _Ticket:
    number: int
    command: Command
    #: For HANDOFF: where to.
    handoff: HandoffRequest | None = None
    #: For a START that completes a handoff: the workflow waiting to hear how it went.
    confirm_to: str | None = None


@workflow.defn(name="InstanceWorkflow")
class InstanceWorkflow:
    @workflow.init
    def __init__(self, inp: InstanceInput) -> None:
        self.inp = inp
        self.host_queue = host_task_queue(inp.host)
        self.wf_id = workflow.info().workflow_id
        c = inp.carried
        self.resolved: Resolved | None = c.resolved if c else None
        self.hostname: str | None = c.hostname if c else None
        self.ip_address: str | None = c.ip_address if c else None
        self.claim: Claim | None = c.claim if c else None
        self.state: State = c.state if c else State.IDLE
        self.symbol_count = c.symbol_count if c else 0
        self.connected_at = c.connected_at if c else None
        self.registered_at = c.registered_at if c else None
        self.last_error: str | None = c.last_error if c else None
        self.highest_epoch = c.highest_epoch if c else 0
        self.runs = (c.runs + 1) if c else 1
        self.queue: list[_Ticket] = []
        self.next_ticket = 0
        self.results: dict[int, CommandResult] = {}
        for command in c.pending if c else []:
            self._enqueue(command)
        self.registration_error: str | None = None
        self.registration_error_type: str | None = None
        self.host_going_down = False
        self.outcome: str | None = None
        self.last_heartbeat_ok: datetime | None = None
        self.role: Role = Role(c.role) if c else (Role.STANDBY if inp.standby else Role.ACTIVE)
        self.standby_id: str | None = c.standby_id if c else None
        self.standby_visible = self.standby_id is not None
        self.restarts = c.restarts if c else 0
        self.lease: workflow.ActivityHandle[Any] | None = None
        self.promotions: list[PromoteRequest] = []
        self.handoff_reply: HandoffConfirm | None = None
        self.notifications: list[tuple[workflow.ActivityHandle[str], NotifyRequest]] = []
        self.carried_notifications: list[NotifyRequest] = list(c.undelivered) if c else []
        #: A warm standby's connector is prepared and warmed on our host (as far as we know): a
        #: promotion activates it instead of starting it. Consumed by the next start either way.
        self.warm_here: bool = c.warm_here if c else False
        #: The standby's warm-up running in the background (prepare + warm_up, role standby).
        self.warm_task: asyncio.Task[None] | None = None

    # --- queries, updates, signals ---------------------------------------------------------------

    @workflow.query
    def snapshot(self) -> InstanceSnapshot:
        return InstanceSnapshot(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            exchange_id=self.resolved.exchange.id if self.resolved else None,
            host=self.inp.host,
            hostname=self.hostname,
            ip_address=self.ip_address,
            state=self.state,
            registered=self.claim is not None and self.outcome is None,
            claim=self.claim,
            symbol_count=self.symbol_count,
            connected_at=self.connected_at,
            last_error=self.last_error,
            last_heartbeat_ok=self.last_heartbeat_ok,
            pending=[t.command for t in self.queue],
            runs=self.runs,
            outcome=self.outcome,
            role=self.role,
            priority=self.inp.priority,
        )

    @workflow.update
    async def wait_registered(self) -> RegistrationResult:
        """Completes once registration has succeeded; fails with the refusal otherwise."""
        await workflow.wait_condition(
            lambda: self.claim is not None or self.standby_visible or self.registration_error is not None
        )
        if self.registration_error is not None or self.resolved is None:
            raise ApplicationError(
                self.registration_error or "registration failed",
                type=self.registration_error_type or "RegistrationFailed",
            )
        return RegistrationResult(
            exchange=self.resolved.exchange.name,
            exchange_id=self.resolved.exchange.id,
            host=self.inp.host,
            hostname=self.hostname or self.inp.host,
            ip_address=self.ip_address,
            # A standby holds no claim: its own id, and epoch 0.
            instance_id=self.claim.instance_id if self.claim else self.standby_id or "",
            epoch=self.claim.epoch if self.claim else 0,
            state=self.state,
            workflow_id=self.wf_id,
            role=Role.ACTIVE if self.claim else Role.STANDBY,
        )

    @workflow.update
    async def command(self, req: CommandRequest) -> CommandResult:
        """Run start/stop/shutdown; returns once the command's transitions are done."""
        return await self._await_ticket(self._enqueue(req.command))

    @command.validator
    def _validate_command(self, req: CommandRequest) -> None:
        # Refusals happen here, before anything reaches history or Redis.
        refuse_command(self._facts(), req.command)

    def _facts(self) -> InstanceFacts:
        return InstanceFacts(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            host=self.inp.host,
            role=self.role,
            state=self.state,
            queued=[t.command for t in self.queue],
            gone=self.outcome or self.registration_error,
            host_going_down=self.host_going_down,
        )

    @workflow.update
    async def handoff(self, req: HandoffRequest) -> CommandResult:
        """Planned switchover to a live standby on ``req.to_host``: notify → takeover → confirm."""
        return await self._await_ticket(self._enqueue(Command.HANDOFF, handoff=req))

    async def _await_ticket(self, ticket: _Ticket) -> CommandResult:
        """The caller's side of a queued command: its result, or its failure as an error."""
        await workflow.wait_condition(lambda: ticket.number in self.results)
        result = self.results.pop(ticket.number)
        if result.error is not None:
            raise ApplicationError(result.error, result, type="CommandFailed")
        return result

    @handoff.validator
    def _validate_handoff(self, req: HandoffRequest) -> None:
        refuse_handoff(self._facts(), req.to_host)

    @workflow.signal
    def promote(self, req: PromoteRequest) -> None:
        """Sent to a standby: the exchange is (about to be) free — try to take it now.

        It may arrive after this standby already took the exchange on its own (its watch saw the key
        vanish first): then only the confirmation the sender waits for is still owed.
        """
        if self.outcome is None:
            self.promotions.append(req)

    @workflow.signal
    def handoff_confirmed(self, reply: HandoffConfirm) -> None:
        """The target of our handoff says whether it took over."""
        self.handoff_reply = reply

    @workflow.signal
    def command_signal(self, req: CommandRequest) -> None:
        """Fire-and-forget form of :meth:`command`; an invalid command is logged and dropped."""
        try:
            self._validate_command(req)
        except InvalidTransition as exc:
            workflow.logger.warning("signal refused: %s", exc)
            return
        self._enqueue(req.command)

    @workflow.signal
    def host_shutting_down(self) -> None:
        """The host's worker is stopping gracefully: stop, release the claim, finish."""
        self.host_going_down = True

    def _enqueue(
        self,
        command: Command,
        *,
        handoff: HandoffRequest | None = None,
        confirm_to: str | None = None,
        first: bool = False,
        internal: bool = False,
    ) -> _Ticket:
        """Queue a command; ``internal`` ones (promotion, restart) have no caller waiting (number -1)."""
        ticket = _Ticket(
            -1 if internal else self.next_ticket, command, handoff=handoff, confirm_to=confirm_to
        )
        if not internal:
            self.next_ticket += 1
        if first:
            self.queue.insert(0, ticket)
        else:
            self.queue.append(ticket)
        return ticket

    # --- main ------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: InstanceInput) -> str:
        if self.resolved is None:
            registered = await (self._register_standby() if inp.standby else self._register())
            if not registered:
                return await self._finish(self.registration_error or "registration failed")
            if inp.start_immediately and self.role is Role.ACTIVE:
                self._enqueue(Command.START)
        for req in self.carried_notifications:
            self._notify(req)
        while True:
            if self.lease is None:
                self.lease = self._start_lease() if self.role is Role.ACTIVE else self._start_standby_lease()
                self._maybe_warm_standby()
            await workflow.wait_condition(lambda: self._next_step() is not None)
            step = self._next_step()
            workflow.logger.info("%s: %s (%s)", self.wf_id, step, self.state.value)
            if step is Step.LEASE_ENDED:
                lease, self.lease = self.lease, None
                carry_on = await (
                    self._after_lease(lease) if self.role is Role.ACTIVE else self._after_watch(lease)
                )
                if not carry_on:
                    return await self._finish(self.outcome or "instance lost")
            elif step is Step.HOST_GOING_DOWN:
                await self._cancel_lease()
                if self.role is Role.ACTIVE:
                    await self._release()
                else:
                    await self._drop_standby()
                    await self._stop_warm("the worker is shutting down")
                return await self._finish(f"released: the worker on {self.inp.host} shut down")
            elif step is Step.PROMOTE:
                await self._cancel_lease()
                await self._promote(self.promotions.pop(0))
            elif step is Step.CONFIRM_PROMOTION:
                await self._owe_confirmation(self.promotions.pop(0))
            elif step is Step.COMMAND:
                ticket = self.queue.pop(0)
                result, outcome = await self._run_ticket(ticket)
                if ticket.number >= 0:  # internal tickets (promotion, restart) have nobody waiting
                    self.results[ticket.number] = result
                if outcome is not None:
                    return await self._finish(outcome)
            elif step is Step.CONTINUE_AS_NEW:
                await self._cancel_lease()
                # A command accepted meanwhile has a caller waiting on this run: run it first
                # (its handler would never finish otherwise) and continue as new afterwards.
                await workflow.wait_condition(lambda: bool(self.queue) or workflow.all_handlers_finished())
                if not self.queue:
                    workflow.continue_as_new(self._carry())

    async def _run_ticket(self, ticket: _Ticket) -> tuple[CommandResult, str | None]:
        """Run one queued command; the outcome is set when it ends the instance."""
        if ticket.command is Command.SHUTDOWN:
            result = await self._execute(ticket.command)
            if result.error is not None:
                return result, None
            # The caller hears back only once the claim is released.
            await self._cancel_lease()
            await self._release_claim()
            await self._drop_standby()
            await self._stop_warm("shut down")
            return result, "shut down"
        if ticket.command is Command.HANDOFF:
            result = await self._handoff(ticket)
            return result, self.outcome
        result = await self._execute(ticket.command)
        if ticket.confirm_to is not None:
            await self._confirm_takeover(ticket.confirm_to, result)
        return result, None

    def _next_step(self) -> Step | None:
        return next_step(
            LoopFacts(
                role=self.role,
                lease_done=self.lease is not None and self.lease.done(),
                host_going_down=self.host_going_down,
                promotions=len(self.promotions),
                queued=len(self.queue),
                history_long=self._history_long(),
            )
        )

    async def _finish(self, outcome: str) -> str:
        self.outcome = outcome
        # Give in-flight update handlers their answer before the run closes.
        for ticket in self.queue:
            self.results[ticket.number] = CommandResult(
                command=ticket.command,
                from_state=self.state,
                state=self.state,
                transitions=[],
                error=f"instance ended: {outcome}",
            )
        self.queue.clear()
        self._details()
        await self._drain_notifications()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome

    def _history_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested() or info.get_current_history_length() > self.inp.history_limit
        )

    def _carry(self) -> InstanceInput:
        assert self.resolved and self.hostname and self.registered_at
        carried = CarriedState(
            resolved=self.resolved,
            hostname=self.hostname,
            ip_address=self.ip_address,
            claim=self.claim,
            state=self.state,
            symbol_count=self.symbol_count,
            connected_at=self.connected_at,
            registered_at=self.registered_at,
            last_error=self.last_error,
            pending=[t.command for t in self.queue],
            undelivered=self._undelivered(),
            role=self.role,
            standby_id=self.standby_id,
            restarts=self.restarts,
            highest_epoch=self.highest_epoch,
            runs=self.runs,
            warm_here=self.warm_here,
        )
        return self.inp.model_copy(update={"carried": carried, "start_immediately": False})

    # --- registration ----------------------------------------------------------------------------

    async def _identify(self) -> bool:
        """Resolve the exchange and admin, and learn the host's identity on its own queue."""
        try:
            self.resolved = await workflow.execute_activity(
                calls.resolve_instance,
                ResolveRequest(exchange=self.inp.exchange, admin_email=self.inp.admin_email),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="resolve exchange and admin",
            )
            identity: Identity = await self._on_host(
                lambda: workflow.execute_activity(
                    calls.detect_identity,
                    IdentityRequest(host=self.inp.host),
                    task_queue=self.host_queue,
                    schedule_to_start_timeout=self._host_wait(),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=HOST_RETRY,
                    summary=f"identity on {self.inp.host}",
                )
            )
        except ActivityError as err:
            self.registration_error = self._explain(err)
            # A timeout (no worker for the host, a server that never answered) is unavailability.
            self.registration_error_type = failure_type(err) or "ServiceUnavailable"
            return False
        self.hostname, self.ip_address = identity.hostname, identity.ip_address
        self.registered_at = workflow.now()
        return True

    async def _register(self) -> bool:
        if not await self._identify():
            return False
        result = await self._claim()
        if result is None:
            return False
        workflow.upsert_search_attributes([CONNECTION_STATE.value_set(self.state.value)])
        self._details()
        return True

    async def _register_standby(self) -> bool:
        """Become visible as a standby: no claim, a record with a TTL, a ``standby_registered`` event."""
        if not await self._identify():
            return False
        try:
            await self._become_standby()
        except ActivityError as err:
            self.registration_error = f"standby registration failed: {describe_failure(err)}"
            self.registration_error_type = failure_type(err) or "ServiceUnavailable"
            return False
        return True

    async def _become_standby(self) -> None:
        assert self.resolved
        self.role = Role.STANDBY
        self.claim = None
        self.standby_visible = False
        self.warm_task = None  # the loop warms the connector up again unless it is still warm
        self.standby_id = str(workflow.uuid4())
        await self._put_standby()
        workflow.upsert_search_attributes(
            [INSTANCE_ROLE.value_set(Role.STANDBY.value), CONNECTION_STATE.value_set(self.state.value)]
        )
        await self._event(
            EventKind.STANDBY_REGISTERED,
            claim=Claim(instance_id=self.standby_id, epoch=0),
            detail=f"standby on {self.inp.host} (priority {self.inp.priority})",
        )
        self.standby_visible = True
        self._details()

    async def _put_standby(self) -> None:
        await workflow.execute_activity(
            calls.put_standby,
            self._standby_record(),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=SHARED_RETRY,
            summary="register standby",
        )

    def _standby_record(self) -> StandbyRecord:
        assert self.resolved and self.standby_id and self.registered_at
        stamp = iso(workflow.now())
        return StandbyRecord(
            exchange_id=self.resolved.exchange.id,
            exchange_name=self.resolved.exchange.name,
            host=self.inp.host,
            hostname=self.hostname or self.inp.host,
            ip_address=self.ip_address,
            instance_id=self.standby_id,
            workflow_id=self.wf_id,
            priority=self.inp.priority,
            registered_at=iso(self.registered_at),
            last_heartbeat=stamp,
            ttl_ms=ttl_ms(self.inp.heartbeat_interval_s),
            heartbeat_interval_ms=int(self.inp.heartbeat_interval_s * 1000),
            warm=self.inp.connector.warm,
        )

    async def _drop_standby(self) -> None:
        if self.standby_id is None or self.resolved is None:
            return
        try:
            await workflow.execute_activity(
                calls.drop_standby,
                DropStandbyRequest(exchange_id=self.resolved.exchange.id, instance_id=self.standby_id),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="drop standby record",
            )
        except ActivityError as err:
            workflow.logger.warning(
                "standby record not dropped (its TTL frees it): %s", describe_failure(err)
            )
        self.standby_id = None

    async def _standbys(self, *, include_self: bool = False) -> list[StandbyRecord]:
        assert self.resolved
        try:
            found: StandbyList = await workflow.execute_activity(
                calls.list_standbys,
                StandbyQuery(exchange_id=self.resolved.exchange.id),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="list standbys",
            )
        except ActivityError as err:
            workflow.logger.warning("standbys unknown: %s", describe_failure(err))
            return []
        return [s for s in found.standbys if include_self or s.workflow_id != self.wf_id]

    async def _claim(self, *, quiet: bool = False, retry: RetryPolicy = SHARED_RETRY) -> ClaimResult | None:
        """Claim with a fresh instanceId; on refusal record ``claim_conflict`` and remember why.

        ``quiet``: a standby racing for a vacancy (or an instance taking back its own exchange) is
        not a conflict worth an event when it loses.
        """
        assert self.resolved and self.hostname and self.registered_at
        instance_id = str(workflow.uuid4())
        status = self._status(instance_id)
        request = ClaimRequest(status=status, highest_epoch=self.highest_epoch)
        try:
            result = await self._claim_activity(request, retry)
        except ActivityError as err:
            if not quiet:
                self.registration_error = f"claim failed: {self._explain(err)}"
                self.registration_error_type = failure_type(err) or "ServiceUnavailable"
            return None
        self.highest_epoch = max(self.highest_epoch, result.epoch)
        if not result.claimed:
            if quiet:
                return None
            self.registration_error = result.message or "exchange already claimed"
            self.registration_error_type = "ClaimConflict"
            await self._event(
                EventKind.CLAIM_CONFLICT,
                claim=Claim(instance_id=instance_id, epoch=result.epoch),
                detail=result.message,
            )
            return None
        self.claim = Claim(instance_id=instance_id, epoch=result.epoch)
        self.registration_error = None
        return result

    async def _claim_activity(self, request: ClaimRequest, retry: RetryPolicy) -> ClaimResult:
        """Claim on this instance's host, whose keeper renews from that moment on (patched
        ``claim-on-host``); runs begun before it claimed on the shared queue and replay so."""
        result: ClaimResult
        if not workflow.patched("claim-on-host"):
            result = await workflow.execute_activity(
                calls.claim_exchange,
                request,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=retry,
                summary="claim",
            )
            return result
        held = HostClaimRequest(
            claim=request,
            workflow_id=self.wf_id,
            heartbeat_interval_s=self.inp.heartbeat_interval_s,
            term_s=self.inp.lease_term_s,
        )
        result = await self._on_host(
            lambda: workflow.execute_activity(
                calls.claim_and_hold,
                held,
                task_queue=self.host_queue,
                schedule_to_start_timeout=self._host_wait(),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=retry,
                summary=f"claim on {self.inp.host}",
            )
        )
        return result

    def _status(self, instance_id: str) -> InstanceStatus:
        assert self.resolved and self.hostname and self.registered_at
        admin = self.resolved.admin
        stamp = iso(workflow.now())
        return InstanceStatus(
            exchange_id=self.resolved.exchange.id,
            exchange_name=self.resolved.exchange.name,
            hostname=self.hostname,
            ip_address=self.ip_address,
            admin_email=admin.email if admin else None,
            admin_display_name=admin.display_name if admin else None,
            connection_state=self.state,
            symbol_count=self.symbol_count,
            connected_at=iso(self.connected_at) if self.connected_at else None,
            last_heartbeat=stamp,
            last_state_change=stamp,
            registered_at=iso(self.registered_at),
            last_error=self.last_error,
            instance_id=instance_id,
            epoch=0,
            workflow_id=self.wf_id,
            heartbeat_interval_ms=int(self.inp.heartbeat_interval_s * 1000),
            ttl_ms=ttl_ms(self.inp.heartbeat_interval_s),
        )

    def _explain(self, err: ActivityError) -> str:
        cause = err.cause
        if isinstance(cause, TimeoutError) and cause.type is TimeoutType.SCHEDULE_TO_START:
            return (
                f"no worker is serving host {self.inp.host!r} (task queue {self.host_queue}); "
                f"start one with: perseus worker --host {self.inp.host}"
            )
        return describe_failure(err)

    async def _on_host(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run a step on this instance's host queue. One not picked up in time is tried again while
        the host's worker is seen polling its queue — busy, not missing — for at most
        ``HOST_BUSY_LIMIT_S``; with nobody polling, the timeout stands (the caller reports it)."""
        # Patched: runs begun before it failed a step at its first schedule-to-start timeout.
        patient = workflow.patched("wait-for-busy-host")
        since = workflow.now()
        while True:
            try:
                return await step()
            except ActivityError as err:
                late = workflow.now() - since > timedelta(seconds=HOST_BUSY_LIMIT_S)
                if not patient or late or not not_picked_up(err) or not await self._host_polled():
                    raise
            workflow.logger.info("%s: the worker on %s is busy; asking it again", self.wf_id, self.inp.host)

    async def _host_polled(self) -> bool:
        try:
            presence: HostPresence = await workflow.execute_activity(
                calls.host_polled,
                IdentityRequest(host=self.inp.host),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary=f"is {self.inp.host} polled?",
            )
        except ActivityError as err:
            workflow.logger.warning("host presence unknown: %s", describe_failure(err))
            return False
        return presence.polled

    def _host_wait(self) -> timedelta:
        # Long enough for a live worker to pick the task up, short enough to report a missing host.
        return timedelta(seconds=max(5.0, self.inp.heartbeat_interval_s))

    # --- the lease -------------------------------------------------------------------------------

    def _start_lease(
        self, schedule_to_start: timedelta | None = None
    ) -> workflow.ActivityHandle[LeaseOutcome]:
        assert self.resolved and self.claim
        interval = self.inp.heartbeat_interval_s
        return workflow.start_activity(
            calls.hold_lease,
            LeaseRequest(
                workflow_id=self.wf_id,
                exchange_id=self.resolved.exchange.id,
                claim=self.claim,
                heartbeat_interval_s=interval,
                term_s=self.inp.lease_term_s,
            ),
            task_queue=self.host_queue,
            schedule_to_start_timeout=schedule_to_start or self._host_wait(),
            start_to_close_timeout=timedelta(seconds=self.inp.lease_term_s + 4 * interval),
            # Every renewal heartbeats at once (the host worker does not throttle them), so a silence
            # of 1.25 intervals means the host stopped renewing. See _lease_failed for the margins.
            heartbeat_timeout=self._heartbeat_timeout(),
            retry_policy=RetryPolicy(maximum_attempts=1),
            # Request cancellation without waiting for it: the activity only hears of it at its next
            # heartbeat, and nothing here needs it gone first (a lingering renewal with the same token
            # is harmless, and after a release it finds no key and creates none).
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=f"lease epoch {self.claim.epoch} on {self.inp.host}",
        )

    def _start_standby_lease(self) -> workflow.ActivityHandle[StandbyOutcome]:
        interval = self.inp.heartbeat_interval_s
        return workflow.start_activity(
            calls.hold_standby,
            StandbyLeaseRequest(
                record=self._standby_record(), heartbeat_interval_s=interval, term_s=self.inp.lease_term_s
            ),
            task_queue=self.host_queue,
            schedule_to_start_timeout=self._host_wait(),
            start_to_close_timeout=timedelta(seconds=self.inp.lease_term_s + 4 * interval),
            heartbeat_timeout=self._heartbeat_timeout(),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=f"standby watch on {self.inp.host}",
        )

    def _heartbeat_timeout(self) -> timedelta:
        # A floor keeps short intervals from mistaking a busy worker for a dead host. The zombie
        # margin holds either way: the release comes at timeout + pickup >= 2 intervals (the renew
        # deadline) after the host's last heartbeat, and a longer timeout only makes it later.
        return timedelta(
            seconds=max(self.inp.heartbeat_interval_s * HEARTBEAT_TIMEOUT_FACTOR, HEARTBEAT_TIMEOUT_FLOOR_S)
        )

    async def _cancel_lease(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None or lease.done():
            return
        lease.cancel()
        try:
            await lease
        except (ActivityError, CancelledError, asyncio.CancelledError):
            pass

    async def _after_lease(self, lease: workflow.ActivityHandle[Any]) -> bool:
        """Decide what a finished lease means; False when the run must end."""
        try:
            outcome: LeaseOutcome = lease.result()
        except ActivityError as err:
            return await self._lease_failed(err)
        self.last_heartbeat_ok = outcome.last_renewed
        return True  # the term ran out normally: the loop issues the next one

    async def _lease_failed(self, err: ActivityError) -> bool:
        """Act on a lease that ended with an error; False when the run must end."""
        reason = describe_failure(err)
        stopped_at = lease_stop_time(err)
        verdict = lease_verdict(failure_type(err))
        workflow.logger.info("%s: lease ended (%s): %s", self.wf_id, verdict, reason)
        if verdict is LeaseVerdict.CONNECTOR_FAILED:
            await self._connector_failed(reason)
            return True
        if verdict is LeaseVerdict.RESTART_UNHEALTHY:
            await self._connector_failed(reason, policy="on-failure")
            return True
        if verdict is LeaseVerdict.STEP_ASIDE:
            await self._step_aside(reason)
            return True
        if verdict is LeaseVerdict.RECLAIM and await self._reclaim(reason, stopped_at):
            return True
        if verdict is LeaseVerdict.REATTACH:
            patched = workflow.patched("reattach-by-claim-probe")
            answer = await (self._reattach(reason) if patched else self._reattach_v1(reason))
            if answer is None:
                return True
            if isinstance(answer, ActivityError):
                return await self._lease_failed(answer)
            reason = answer
        await self._instance_lost(reason, stopped_at)
        return False

    async def _reattach_v1(self, reason: str) -> ActivityError | str | None:
        """Before the keeper: a host whose lease was not picked up again within the pickup window
        was lost. Kept so that runs begun before ``reattach-by-claim-probe`` replay as they ran."""
        pickup = self.inp.heartbeat_interval_s * PICKUP_FACTOR
        resumed = self._start_lease(schedule_to_start=timedelta(seconds=pickup))
        try:
            await workflow.wait_condition(
                resumed.done, timeout=timedelta(seconds=pickup + max(self.inp.heartbeat_interval_s, 3.0))
            )
        except builtins.TimeoutError:
            self.lease = resumed
            if self.state in RUNNING_STATES and not await self._connector_alive():
                await self._fail(f"connector not running after the worker on {self.inp.host} restarted")
            return None
        try:
            resumed.result()
            return None
        except ActivityError as again:
            if failure_type(again) in LOSS_TYPES:
                return describe_failure(again)
            return f"host {self.inp.host} stopped heartbeating ({reason}) and did not come back"

    async def _reattach(self, reason: str) -> ActivityError | str | None:
        """The lease stopped heartbeating to Temporal, which proves nothing about Redis: re-attach.

        The host's keeper renews on its own, so a host that only lost Temporal (an outage, a
        partition, a worker restart) is picked up again by a fresh lease within the pickup window:
        no transition, no new epoch (None). Meanwhile Redis is asked at once, and again when the
        claim would pass its renew deadline: unrenewed past it (its connector is stopped by now: its
        keeper or watchdog saw to it) → lost (the reason, a str); still renewed → keep waiting.
        A lease that fails with a typed error is handed back for the caller to judge (ActivityError).
        """
        interval = self.inp.heartbeat_interval_s
        pickup = interval * PICKUP_FACTOR
        # Patched: runs begun before it waited out the whole pickup window before asking Redis,
        # which made a crash at long intervals wait longer than the TTL.
        at_once = workflow.patched("probe-claim-at-once")
        while True:
            resumed = self._start_lease(schedule_to_start=timedelta(seconds=pickup))
            # Longer than the pickup window (timers fire late under load): a lease still running by
            # then was picked up by a worker, not refused for want of one.
            picked_up_at = workflow.now() + timedelta(seconds=pickup + max(interval, 3.0))
            while True:
                wake_at = picked_up_at
                if at_once:
                    probe = await self._probe_claim()
                    if probe is not None:
                        lost = self._lost_by(probe, reason)
                        if lost is not None:
                            self.lease = resumed
                            await self._cancel_lease()
                            return lost
                        stale = stale_in(probe.renewed_ms_ago or 0, interval)
                        wake_at = min(picked_up_at, workflow.now() + timedelta(seconds=stale + 0.05))
                try:
                    await workflow.wait_condition(
                        resumed.done, timeout=max(wake_at - workflow.now(), timedelta(milliseconds=50))
                    )
                except builtins.TimeoutError:
                    if wake_at < picked_up_at:
                        continue  # the moment the claim would go stale: ask Redis again
                    self.lease = resumed
                    workflow.logger.info("%s: re-attached to the renewals on %s", self.wf_id, self.inp.host)
                    if self.state in RUNNING_STATES and not await self._connector_alive():
                        # The claim is still ours (its renewals run) but the connector is gone (a new
                        # worker process, or it was stopped meanwhile): record it and bring it back.
                        await self._fail(f"connector not running on {self.inp.host} after re-attaching")
                        self._enqueue(Command.START, first=True, internal=True)
                    return None
                break
            try:
                resumed.result()
                return None
            except ActivityError as again:
                if failure_type(again) is not None:
                    return again
            if at_once:
                continue  # no worker took it (or it went silent again): ask Redis at once, re-issue
            probe = await self._probe_claim()
            if probe is None:
                continue  # Redis does not answer here either: no evidence either way
            lost = self._lost_by(probe, reason)
            if lost is not None:
                return lost

    def _lost_by(self, probe: ClaimProbe, reason: str) -> str | None:
        """Why the claim is lost, if Redis proves it (the reason), or None: its host still renews."""
        if not probe.held_by_us:
            return (
                f"host {self.inp.host} stopped heartbeating ({reason}) and its claim is gone "
                f"({'held by ' + probe.holder if probe.holder else 'the key expired'})"
            )
        interval = self.inp.heartbeat_interval_s
        host = judge_claim(probe.held_by_us, probe.renewed_ms_ago, interval)
        age = f"{probe.renewed_ms_ago / 1000:.1f}s ago" if probe.renewed_ms_ago is not None else "never"
        if host is HostVerdict.STOPPED:
            return f"host {self.inp.host} stopped heartbeating ({reason}) and renewing its claim ({age})"
        workflow.logger.info(
            "%s: no worker on %s answers Temporal, but Redis shows the claim renewed %s (%s): waiting",
            self.wf_id,
            self.inp.host,
            age,
            host,
        )
        return None

    async def _probe_claim(self) -> ClaimProbe | None:
        """What Redis proves about our claim now (None: Redis did not answer)."""
        assert self.resolved and self.claim
        try:
            probe: ClaimProbe = await workflow.execute_activity(
                calls.probe_claim,
                ClaimProbeRequest(exchange_id=self.resolved.exchange.id, claim=self.claim),
                start_to_close_timeout=timedelta(seconds=5),
                retry_policy=RetryPolicy(maximum_attempts=2),
                summary="probe claim",
            )
        except ActivityError as err:
            workflow.logger.warning("claim probe failed: %s", describe_failure(err))
            return None
        return probe

    async def _connector_failed(self, reason: str, policy: str | None = None) -> None:
        """The connector died (or failed its health checks) while running; the claim is still ours.
        Record, recover, and restart if the spec (or ``policy``) says so."""
        await self._fail(reason)
        spec = self.inp.connector
        delay = restart_delay(
            policy or spec.restart, self.restarts, spec.max_restarts, spec.restart_backoff_s
        )
        if delay is not None:
            # Counted in the worker's Temporal metrics (its /metrics): restarts write no event.
            workflow.metric_meter().create_counter(
                "perseus_connector_restarts", "Connector restarts after a failure while active"
            ).add(1, {"exchange": self.inp.exchange})
            self.restarts += 1
            self.lease = self._start_lease()  # keep renewing while we back off
            await workflow.sleep(timedelta(seconds=delay), summary=f"restart {self.restarts} backoff")
            self._enqueue(Command.START, first=True, internal=True)

    async def _step_aside(self, reason: str) -> None:
        """An unhealthy connector whose policy is failover: record it, let go of the exchange and wake
        the best standby, then wait as a standby here. With no live standby, restart in place."""
        await self._fail(reason)
        if not await self._standbys():
            workflow.logger.info("%s: no live standby to take over; restarting in place", self.wf_id)
            self._enqueue(Command.START, first=True, internal=True)
            return
        await self._cancel_lease()
        await self._release_claim()
        await self._wake_standby(f"{self.inp.exchange} on {self.inp.host} unhealthy: {reason}")
        await self._become_standby()

    async def _reclaim(self, reason: str, stopped_at: datetime | None = None) -> bool:
        """Our key vanished (expired while paused, or Redis lost its data) and nobody else took it:
        take the exchange again above every epoch we know, then bring the connector back."""
        was_running = self.state in (State.STARTING, State.WARMING, State.ACTIVE)
        lost_claim = self.claim
        # If Redis only stalled, our old key may still be there: free it (fenced) and claim afresh,
        # so the connector restarts under a new epoch rather than the one it stopped under.
        await self._release_claim()
        self.claim = None
        # Retried until Redis answers: after an outage the holder must get its exchange back first.
        if await self._claim(quiet=True, retry=DURABLE_RETRY) is None:
            self.claim = lost_claim
            return False
        # Renew the fresh claim at once: the walk below can outlast a short TTL.
        self.lease = self._start_lease()
        await self._event(
            EventKind.ERROR, error=f"{reason}; reclaimed at epoch {self.highest_epoch}", state=self.state
        )
        await self._walk_down(stopped_at)
        if was_running:
            self._enqueue(Command.START, first=True, internal=True)
        return True

    async def _walk_down(self, stopped_at: datetime | None) -> None:
        """Recover to idle after the connector stopped; ``stopping``/``stopped`` carry the moment it
        did (the keeper's clock), not the moment the workflow heard of it."""
        for target in recovery_path(self.state):
            at = stopped_at if target in (State.STOPPING, State.STOPPED) else None
            await self._transition(target, at=at)

    async def _connector_alive(self) -> bool:
        try:
            report = await self._host_activity(calls.connector_check, timeout_s=10)
        except ActivityError:
            return False
        return report.running

    async def _instance_lost(self, reason: str, stopped_at: datetime | None = None) -> None:
        """The claim is gone or the host is: record it, walk the state down, free the key if still
        ours, and wake the best standby so it need not wait for the TTL."""
        self.last_error = reason
        await self._event(EventKind.INSTANCE_LOST, detail=reason)
        await self._walk_down(stopped_at)
        await self._release_claim()
        # Patched: runs that lost their instance before standbys existed did not look for one.
        if workflow.patched("wake-standby-on-loss"):
            await self._wake_standby(f"{self.inp.exchange} on {self.inp.host} lost: {reason}")
        self.outcome = f"instance lost: {reason}"

    async def _wake_standby(self, reason: str, *, confirm_to: str | None = None) -> StandbyRecord | None:
        """Signal the highest-priority live standby to take over; returns the one told, if any."""
        for standby in await self._standbys():
            try:
                await workflow.get_external_workflow_handle(standby.workflow_id).signal(
                    "promote",
                    PromoteRequest(reason=reason, min_epoch=self.highest_epoch, confirm_to=confirm_to),
                )
            except Exception as exc:  # the standby's workflow is gone: try the next one
                workflow.logger.info("standby %s not reachable: %s", standby.workflow_id, exc)
                continue
            return standby
        return None

    # --- standby ---------------------------------------------------------------------------------

    async def _after_watch(self, watch: workflow.ActivityHandle[Any]) -> bool:
        """A standby's watch ended: the exchange fell vacant (TTL fallback), the term ran out, the
        record vanished, or this standby's host stopped heartbeating to Temporal."""
        try:
            outcome: StandbyOutcome = watch.result()
        except ActivityError as err:
            if failure_type(err) == "StandbyGone" and workflow.patched("standby-reattach"):
                # Redis lost the record (an outage longer than its TTL): make it visible again.
                await self._put_standby()
                return True
            if (
                failure_type(err) is None
                and workflow.patched("standby-reattach")
                and await self._standby_live()
            ):
                # Its host still renews the record: it only lost Temporal. Watch again.
                return True
            await self._drop_standby()
            self.outcome = (
                f"standby lost: host {self.inp.host} stopped heartbeating ({describe_failure(err)})"
            )
            return False
        if outcome.vacant:
            # Nobody told us (the holder's workflow would have): the key expired. Higher priorities go
            # first; the rest give them a head start, then race — the claim script admits one. Right
            # after a Redis outage the holder itself goes first: a healthy holder whose key lapsed
            # while Redis was away must not be replaced by a race.
            ahead = sum(1 for s in await self._standbys() if s.priority > self.inp.priority)
            wait = vacancy_delay(ahead, self.inp.heartbeat_interval_s, after_outage=outcome.after_outage)
            if wait:
                await workflow.sleep(timedelta(seconds=wait))
            # Patched: runs begun before it acted right after the claim (see act_after_vacancy_s).
            hold = workflow.patched("vacancy-waits-out-deadline")
            # Patched: runs begun before it waited even when the key had lapsed by its TTL.
            lapsed = outcome.lapsed and workflow.patched("lapsed-key-acts-at-once")
            await self._promote(
                PromoteRequest(
                    reason="the holder's claim expired (TTL)",
                    min_epoch=outcome.last_epoch,
                    act_after_s=(
                        act_after_vacancy_s(self.inp.heartbeat_interval_s, lapsed=lapsed) if hold else 0.0
                    ),
                )
            )
        return True

    async def _standby_live(self) -> bool:
        """Whether our standby record is still renewed (by a host that may have lost only Temporal)."""
        return any(s.instance_id == self.standby_id for s in await self._standbys(include_self=True))

    async def _promote(self, req: PromoteRequest) -> None:
        """Try to take the exchange. Won: drop the standby record, ``promoted``, start. Lost: stay.

        A warm standby is activated right after the claim — the one step fencing requires first —
        and the status walks starting → warming → active behind it; if it cannot be, it starts cold.
        """
        self.highest_epoch = max(self.highest_epoch, req.min_epoch)
        result = await self._claim(quiet=True)
        if result is None:
            if req.confirm_to:
                await self._reply(req.confirm_to, ok=False, detail="the exchange was not free to claim")
            return
        self.role = Role.ACTIVE
        self.lease = self._start_lease()  # renew the fresh claim at once
        if req.act_after_s:
            # The holder whose key vanished may act until its renew deadline: ours must not yet.
            await workflow.sleep(timedelta(seconds=req.act_after_s), summary="wait out the old deadline")
        task, self.warm_task = self.warm_task, None
        warming = task is not None and not task.done()
        if task is not None and warming:
            # Still warming up: the start goes cold (its prepare replaces the half-warm connector).
            task.cancel()
            self.warm_here = False
        cold_because: str | None = None
        warm = start_path(warm_here=self.warm_here, warming=warming) is StartPath.WARM and workflow.patched(
            "warm-activate-on-promotion"
        )
        if warm:
            cold_because, no_worker = await self._activate_warm()
        await self._drop_standby()
        workflow.upsert_search_attributes([INSTANCE_ROLE.value_set(Role.ACTIVE.value)])
        how = ""
        if warm:
            how = f" (warm: {'activated' if cold_because is None else 'not activated'})"
        await self._event(EventKind.PROMOTED, detail=req.reason + how)
        for target in recovery_path(self.state):  # a former active one may still read stopped
            await self._transition(target)
        if warm and cold_because is None:
            self.connected_at = workflow.now()
            for target in (State.STARTING, State.WARMING, State.ACTIVE):
                await self._transition(target)
            if req.confirm_to:
                await self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host} (warm)")
            return
        if cold_because is not None and no_worker:
            # Our host has no worker: a cold start would only wait for it again. A handoff hears at
            # once (and keeps its exchange); otherwise the lease on this host fails like any other.
            await self._event(EventKind.ERROR, error=f"warm activation failed: {cold_because}")
            if req.confirm_to:
                failed = CommandResult(
                    command=Command.START,
                    from_state=self.state,
                    state=self.state,
                    transitions=[],
                    error=cold_because,
                )
                await self._confirm_takeover(req.confirm_to, failed)
            return
        if cold_because is not None:
            await self._event(EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}")
        self._enqueue(Command.START, first=True, internal=True, confirm_to=req.confirm_to)

    async def _owe_confirmation(self, req: PromoteRequest) -> None:
        """A promotion for an exchange we already took: answer the handoff that sent it."""
        if req.confirm_to is None:
            return
        starting = next((t for t in self.queue if t.command is Command.START), None)
        if starting is not None:
            starting.confirm_to = req.confirm_to  # answered once that start is done
        elif self.state is State.ACTIVE:
            await self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host}")
        else:
            await self._reply(req.confirm_to, ok=False, detail=f"{self.inp.host} is {self.state.value}")

    async def _confirm_takeover(self, confirm_to: str, result: CommandResult) -> None:
        """After a promoted START: tell the handing-over instance; on failure give the claim back."""
        if result.error is None and self.state is State.ACTIVE:
            await self._reply(confirm_to, ok=True, detail=f"active on {self.inp.host}")
            return
        await self._cancel_lease()
        await self._release_claim()
        await self._reply(confirm_to, ok=False, detail=result.error or f"ended {self.state.value}")
        await self._become_standby()

    async def _reply(self, workflow_id: str, *, ok: bool, detail: str) -> None:
        epoch = self.claim.epoch if self.claim and ok else 0
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(
                "handoff_confirmed", HandoffConfirm(ok=ok, epoch=epoch, host=self.inp.host, detail=detail)
            )
        except Exception as exc:  # the other side is gone; it will time out on its own
            workflow.logger.info("handoff reply to %s not delivered: %s", workflow_id, exc)

    async def _handoff(self, ticket: _Ticket) -> CommandResult:
        """notify → takeover → confirm → step down. A failure midway takes the exchange back."""
        assert ticket.handoff and self.claim and self.resolved
        req = ticket.handoff
        start_state = self.state
        target = next((s for s in await self._standbys() if s.host == req.to_host), None)
        if target is None:
            live = ", ".join(sorted({s.host for s in await self._standbys()})) or "none"
            return self._handoff_refused(
                f"no live standby of {self.inp.exchange} on host {req.to_host} (live standbys: {live})"
            )
        silent = await self._target_silent(target)
        if silent is not None:
            await self._event(EventKind.HANDOFF, detail=f"aborted: {silent}; {self.inp.exchange} stays here")
            return self._handoff_refused(f"handoff to {target.host} failed ({silent}); nothing changed")
        if target.warm and start_state is State.ACTIVE and workflow.patched("warm-handoff"):
            # Make before break: the target's connector is warm before ours stops.
            target = await self._until_warm(target)
        await self._event(
            EventKind.HANDOFF,
            detail=f"notify: handing over to {target.host} (standby {target.instance_id}"
            + (", warm)" if target.warm_ready else ")"),
        )
        done: list[State] = []
        # Handing over while staying here as a warm standby: demote our connector instead of
        # stopping it, so that a handoff back is as quick as this one.
        keep_warm = handoff_demotes(shutdown=req.shutdown, warm=self.inp.connector.warm) and workflow.patched(
            "warm-handback"
        )
        for state in plan(Command.HANDOFF, self.state):
            if state is State.STOPPED:
                if not keep_warm or not await self._demote():
                    await self._host_activity(calls.connector_disconnect, timeout_s=30)
            await self._transition(state)
            done.append(state)
        old_claim = self.claim
        old_epoch = old_claim.epoch
        await self._cancel_lease()
        await self._release_claim()
        # To a warm target, the signal goes first: nobody is active until it is, so the takeover
        # event is written while it activates rather than before.
        signal_first = target.warm_ready and workflow.patched("warm-handoff-signal-first")
        if not signal_first:
            await self._event(
                EventKind.HANDOFF, detail=f"takeover: released epoch {old_epoch} to {target.host}"
            )
        self.handoff_reply = None
        told = True
        try:
            await workflow.get_external_workflow_handle(target.workflow_id).signal(
                "promote",
                PromoteRequest(
                    reason=f"handoff from {self.inp.host}",
                    min_epoch=self.highest_epoch,
                    confirm_to=self.wf_id,
                ),
            )
        except Exception as exc:
            told = False
            self.handoff_reply = HandoffConfirm(
                ok=False, host=target.host, detail=f"standby unreachable: {exc}"
            )
        if signal_first:
            await self._event(
                EventKind.HANDOFF, detail=f"takeover: released epoch {old_epoch} to {target.host}"
            )
        if told:
            try:
                await workflow.wait_condition(
                    lambda: self.handoff_reply is not None,
                    timeout=timedelta(seconds=HANDOFF_TIMEOUT_S + 4 * self.inp.heartbeat_interval_s),
                )
            except builtins.TimeoutError:
                self.handoff_reply = HandoffConfirm(
                    ok=False, host=target.host, detail="no confirmation in time"
                )
        reply = self.handoff_reply
        assert reply is not None
        self.claim = None
        if reply.ok:
            # Handoff events speak for the instance handing over; the target's epoch is in the text.
            await self._event(
                EventKind.HANDOFF,
                claim=old_claim,
                detail=f"confirm: {target.host} active at epoch {reply.epoch}",
            )
            if req.shutdown:
                self.outcome = f"handed over to {target.host}"
            else:
                await self._become_standby()  # still warm if our connector was demoted
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=self.state,
                transitions=done,
                detail=f"{target.host} active at epoch {reply.epoch} (was epoch {old_epoch} here); "
                + ("this instance shut down" if req.shutdown else "this instance is a standby"),
            )
        # Midway failure: the exchange must not be left with nobody. Take it back.
        await self._event(
            EventKind.HANDOFF,
            claim=old_claim,
            detail=f"aborted: {reply.detail}; taking {self.inp.exchange} back",
        )
        if await self._claim(quiet=True) is not None:
            if start_state is State.ACTIVE:
                self._enqueue(Command.START, first=True, internal=True)
            error = f"handoff to {target.host} failed ({reply.detail}); kept {self.inp.exchange} here"
        else:
            await self._become_standby()
            error = f"handoff to {target.host} failed ({reply.detail}) and the exchange is held elsewhere now"
        return CommandResult(
            command=Command.HANDOFF, from_state=start_state, state=self.state, transitions=done, error=error
        )

    # --- commands --------------------------------------------------------------------------------

    async def _execute(self, command: Command) -> CommandResult:
        start_state = self.state
        try:
            path = plan(command, self.state)
        except InvalidTransition as exc:
            return CommandResult(
                command=command, from_state=start_state, state=self.state, transitions=[], error=str(exc)
            )
        done: list[State] = []
        try:
            if command is Command.START:
                await self._transition(State.STARTING)
                done.append(State.STARTING)
                how = start_path(warm_here=self.warm_here, warming=self.warm_task is not None)
                if how is StartPath.WARM and workflow.patched("warm-activate"):
                    cold_because, _ = await self._activate_warm()
                    if cold_because is None:
                        self.connected_at = workflow.now()
                        for state in (State.WARMING, State.ACTIVE):
                            await self._transition(state)
                            done.append(state)
                        return CommandResult(
                            command=command,
                            from_state=start_state,
                            state=self.state,
                            transitions=done,
                            detail=f"warm standby activated at epoch {self.claim.epoch if self.claim else 0}",
                        )
                    await self._event(
                        EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
                    )
                report = await self._host_activity(calls.connector_prepare)
                self.symbol_count = report.symbol_count
                await self._transition(State.WARMING)
                done.append(State.WARMING)
                await self._host_activity(calls.connector_warm_up)
                await self._host_activity(calls.connector_connect)
                self.connected_at = workflow.now()
                await self._transition(State.ACTIVE)
                done.append(State.ACTIVE)
            else:
                for target in path:
                    if target is State.STOPPED:
                        await self._host_activity(calls.connector_disconnect)
                    await self._transition(target)
                    done.append(target)
        except ActivityError as err:
            reason = self._explain(err)
            await self._fail(reason)
            return CommandResult(
                command=command,
                from_state=start_state,
                state=self.state,
                transitions=done,
                error=f"{command.value} failed: {reason}; recovered to {self.state.value}",
            )
        return CommandResult(command=command, from_state=start_state, state=self.state, transitions=done)

    def _handoff_refused(self, error: str) -> CommandResult:
        """A handoff that stopped before anything changed here."""
        return CommandResult(
            command=Command.HANDOFF, from_state=self.state, state=self.state, transitions=[], error=error
        )

    async def _target_silent(self, target: StandbyRecord) -> str | None:
        """Why the target's worker cannot take over now (it did not answer on its host queue), or
        None. Asked before anything stops here (patched ``handoff-asks-target-first``): a frozen or
        partitioned target otherwise leaves the exchange with nobody until the handoff times out."""
        if not workflow.patched("handoff-asks-target-first"):
            return None
        wait = self._host_wait()
        try:
            await workflow.execute_activity(
                calls.detect_identity,
                IdentityRequest(host=target.host),
                task_queue=host_task_queue(target.host),
                schedule_to_start_timeout=wait,
                start_to_close_timeout=wait,
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"is {target.host} answering?",
            )
        except ActivityError as err:
            return f"the worker on {target.host} did not answer: {describe_failure(err)}"
        return None

    async def _until_warm(self, target: StandbyRecord) -> StandbyRecord:
        """Wait (bounded by the connector's ready timeout) until the warm target says it is ready;
        the latest record of it either way — a target that never gets ready is handed over cold."""
        waited = 0.0
        limit = self.inp.connector.ready_timeout_s + 2 * self.inp.heartbeat_interval_s
        step = max(1.0, self.inp.heartbeat_interval_s / 2)
        while not target.warm_ready and waited < limit:
            await workflow.sleep(timedelta(seconds=step), summary=f"wait for {target.host} to be warm")
            waited += step
            found = next((s for s in await self._standbys() if s.instance_id == target.instance_id), None)
            if found is None:
                break  # gone meanwhile: the promote signal below finds out
            target = found
        if not target.warm_ready:
            workflow.logger.info(
                "%s: %s not warm after %.0fs: handing over cold", self.wf_id, target.host, waited
            )
        return target

    async def _demote(self) -> bool:
        """Deactivate our connector (it keeps running, warm); False if that failed (then stop it)."""
        try:
            report = await self._host_activity(
                calls.connector_deactivate, timeout_s=30, retry=RetryPolicy(maximum_attempts=1)
            )
        except ActivityError as err:
            workflow.logger.info(
                "%s: connector not demoted, stopping it: %s", self.wf_id, describe_failure(err)
            )
            return False
        self.warm_here = report.warm_ready
        return report.warm_ready

    async def _activate_warm(self) -> tuple[str | None, bool]:
        """Promote the warm connector on our host under the claim just taken: ``ACTIVATE <epoch>``,
        confirmed by ``ACTIVE``. (None, False) when it is active; otherwise why not — the caller
        starts cold: the connector is gone, not ready, or did not confirm and was stopped — and
        whether no worker serves our host at all (a cold start cannot help then either)."""
        self.warm_here = False  # consumed either way: active now, or stopped / gone
        timeout = self.inp.connector.active_timeout_s + CONNECTOR_HEARTBEAT_TIMEOUT_S
        try:
            # Never retried: a child that did not confirm was stopped; only a cold start helps now.
            report = await self._host_activity(
                calls.connector_activate, timeout_s=timeout, retry=RetryPolicy(maximum_attempts=1)
            )
        except ActivityError as err:
            reason = self._explain(err)
            cause = err.cause
            no_worker = isinstance(cause, TimeoutError) and cause.type is TimeoutType.SCHEDULE_TO_START
            workflow.logger.info("%s: warm activation failed: %s", self.wf_id, reason)
            return reason, no_worker
        if report.symbol_count:
            self.symbol_count = report.symbol_count
        workflow.logger.info(
            "%s: warm standby activated at epoch %s", self.wf_id, self.claim.epoch if self.claim else 0
        )
        return None, False

    def _maybe_warm_standby(self) -> None:
        """A warm standby keeps its connector prepared and warmed while it waits (in the background:
        the watch must renew the record meanwhile, and a warm-up can take minutes)."""
        if self.standby_id is None or not warm_up_standby(
            role=self.role,
            warm=self.inp.connector.warm,
            warm_here=self.warm_here,
            warming=self.warm_task is not None,
        ):
            return
        if workflow.patched("warm-standby"):
            self.warm_task = asyncio.create_task(self._warm_up_standby())

    async def _warm_up_standby(self) -> None:
        try:
            # Already warm here (a run that continued as new while, or after, it warmed up)?
            found = await self._host_activity(calls.connector_check, timeout_s=10, standby=True)
            if found.warm_ready:
                self.warm_here = self.role is Role.STANDBY
                return
            report = await self._host_activity(calls.connector_prepare, standby=True)
            self.symbol_count = report.symbol_count
            await self._host_activity(calls.connector_warm_up, standby=True)
        except ActivityError as err:
            reason = self._explain(err)
            workflow.logger.warning("%s: warm standby not warmed: %s", self.wf_id, reason)
            await self._event(
                EventKind.ERROR,
                claim=Claim(instance_id=self.standby_id or "", epoch=0),
                error=f"warm standby on {self.inp.host} not warmed (a promotion starts cold): {reason}",
            )
            return
        if self.role is Role.STANDBY:
            self.warm_here = True
            workflow.logger.info("%s: warm standby ready on %s", self.wf_id, self.inp.host)

    async def _stop_warm(self, reason: str) -> None:
        """Stop a warm standby's connector (the standby is leaving); no-op for a cold standby, and
        for an active instance (its connector was stopped on the way down)."""
        if not self.inp.connector.warm or self.role is not Role.STANDBY:
            return
        task, self.warm_task = self.warm_task, None
        if task is not None and not task.done():
            task.cancel()
        self.warm_here = False
        try:
            # Once: a worker that is shutting down stops its connectors itself, and one that is gone
            # took its children with it (parent-death signal); the standby must not wait on it.
            await self._host_activity(
                calls.connector_disconnect, timeout_s=15, retry=RetryPolicy(maximum_attempts=1)
            )
        except ActivityError as err:
            workflow.logger.warning(
                "%s: warm connector not stopped (%s): %s", self.wf_id, reason, describe_failure(err)
            )

    async def _fail(self, reason: str) -> None:
        """Retries are exhausted: record lastError + an error event, stop the connector, recover to idle."""
        self.last_error = reason
        now = workflow.now()
        fields: dict[str, object] = {"lastError": reason, "lastErrorAt": iso(now)}
        if self._one_write():
            event = self._network_event(EventKind.ERROR, error=reason, state=self.state)
            await self._record(event, self._status_patch(fields))
        else:
            await self._patch(fields)
            await self._event(EventKind.ERROR, error=reason, state=self.state)
        try:
            await self._host_activity(calls.connector_disconnect, timeout_s=10)
        except ActivityError as err:
            workflow.logger.warning("connector_disconnect after failure: %s", describe_failure(err))
        for target in recovery_path(self.state):
            await self._transition(target)

    async def _release(self) -> None:
        """Stop whatever runs, then let go of the claim (graceful worker shutdown)."""
        for target in release_path(self.state):
            if target is State.STOPPED:
                try:
                    await self._host_activity(calls.connector_disconnect, timeout_s=10)
                except ActivityError as err:
                    workflow.logger.warning("connector_disconnect: %s", describe_failure(err))
            await self._transition(target)
        await self._release_claim()

    async def _release_claim(self) -> None:
        if self.claim is None or self.resolved is None:
            return
        try:
            await workflow.execute_activity(
                calls.release_claim,
                ReleaseRequest(exchange_id=self.resolved.exchange.id, claim=self.claim),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=DURABLE_RETRY,
                summary="release claim",
            )
        except ActivityError as err:
            workflow.logger.warning("release failed (the TTL frees it): %s", describe_failure(err))

    async def _host_activity(
        self,
        step: calls.ConnectorStep,
        timeout_s: float = 120,
        *,
        standby: bool = False,
        retry: RetryPolicy = HOST_RETRY,
    ) -> ConnectorReport:
        """One connector step (a ``calls.connector_*`` stub) on our host. ``standby``: for a warm
        standby's connector, which is told its own standby id and epoch 0 (it holds no claim)."""
        assert self.resolved
        request = ConnectorRequest(
            workflow_id=self.wf_id,
            exchange_id=self.resolved.exchange.id,
            exchange_name=self.resolved.exchange.name,
            spec=self.inp.connector,
            claim=Claim(instance_id=self.standby_id or "", epoch=0) if standby else self.claim,
            heartbeat_interval_s=self.inp.heartbeat_interval_s,
            role=Role.STANDBY if standby else Role.ACTIVE,
        )
        report: ConnectorReport = await self._on_host(
            lambda: workflow.execute_activity(
                step,
                request,
                task_queue=self.host_queue,
                schedule_to_start_timeout=self._host_wait(),
                start_to_close_timeout=timedelta(seconds=timeout_s),
                # Steps heartbeat every second: a host that stops mid-step is seen within seconds.
                heartbeat_timeout=timedelta(seconds=CONNECTOR_HEARTBEAT_TIMEOUT_S),
                retry_policy=retry,
                # Each stub is named as its activity (tests/unit/test_activity_calls.py holds that).
                summary=f"{step.__name__} on {self.inp.host}" + (" (warm standby)" if standby else ""),
            )
        )
        return report

    # --- writes ----------------------------------------------------------------------------------

    async def _transition(self, target: State, *, at: datetime | None = None) -> None:
        """One fenced status write and one ``state_transition`` event; the state machine checked it.

        ``at``: when it happened, if earlier than now (a connector its keeper stopped at the deadline).
        """
        previous = self.state
        check_transition(previous, target)
        self.state = target
        now = at or workflow.now()
        fields: dict[str, object] = {
            "connectionState": target.value,
            "lastStateChange": iso(now),
            "symbolCount": self.symbol_count,
        }
        if target is State.ACTIVE:
            self.connected_at = self.connected_at or now
            fields["connectedAt"] = iso(self.connected_at)
        if target is State.IDLE:
            self.connected_at = None
            fields["connectedAt"] = None
        if self._one_write():
            event = self._network_event(
                EventKind.STATE_TRANSITION, from_state=previous, to_state=target, at=at
            )
            await self._record(event, self._status_patch(fields))
        else:
            await self._patch(fields)
            await self._event(EventKind.STATE_TRANSITION, from_state=previous, to_state=target, at=at)
        workflow.upsert_search_attributes([CONNECTION_STATE.value_set(target.value)])
        self._details()

    def _one_write(self) -> bool:
        """Patched ``one-write-per-transition``: a transition's status merge and event are one local
        activity (no server round trip each); runs begun before it wrote them as two activities."""
        return workflow.patched("one-write-per-transition")

    def _status_patch(self, fields: dict[str, object]) -> StatusPatch | None:
        if self.claim is None or self.resolved is None:
            return None
        return StatusPatch(exchange_id=self.resolved.exchange.id, claim=self.claim, fields=fields)

    async def _record(self, event: NetworkEvent, patch: StatusPatch | None = None) -> None:
        """Write the event (and the status merge that goes with it) in one local activity; then
        notify, if this worker notifies at all."""
        try:
            recorded: Recorded = await workflow.execute_local_activity(
                calls.record,
                RecordRequest(event=event, patch=patch),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=DURABLE_RETRY,
                summary=f"record {event.event.value}",
            )
        except ActivityError as err:
            workflow.logger.warning(
                "%s not recorded after retries: %s", event.event.value, describe_failure(err)
            )
            return
        if recorded.patch is not None and not recorded.patch.applied:
            workflow.logger.warning(
                "status write refused (%s): we no longer hold the claim", recorded.patch.reason
            )
        if recorded.notify:
            self._notify(NotifyRequest(event=event))

    async def _patch(self, fields: dict[str, object]) -> None:
        if self.claim is None or self.resolved is None:
            return
        try:
            result = await workflow.execute_activity(
                calls.patch_status,
                StatusPatch(exchange_id=self.resolved.exchange.id, claim=self.claim, fields=fields),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=DURABLE_RETRY,
                summary="write status",
            )
        except ActivityError as err:
            workflow.logger.warning("status write refused: %s", describe_failure(err))
            return
        if not result.applied:
            workflow.logger.warning("status write refused (%s): we no longer hold the claim", result.reason)

    async def _event(
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
    ) -> None:
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
        if self._one_write():
            await self._record(event)
            return
        try:
            await workflow.execute_activity(
                calls.record_event,
                EventRequest(event=event),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=DURABLE_RETRY,
                summary=f"event {kind.value}",
            )
        except ActivityError as err:
            workflow.logger.warning(
                "event %s not recorded after retries: %s", kind.value, describe_failure(err)
            )
            return
        self._notify(NotifyRequest(event=event))

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
        assert self.resolved
        claim = claim or self.claim
        admin = self.resolved.admin
        return NetworkEvent(
            event=kind,
            event_id=str(workflow.uuid4()),
            timestamp=at or workflow.now(),
            exchange_id=self.resolved.exchange.id,
            exchange_name=self.resolved.exchange.name,
            hostname=self.hostname or self.inp.host,
            ip=self.ip_address,
            instance_id=claim.instance_id if claim else "",
            epoch=claim.epoch if claim else 0,
            from_state=from_state,
            to_state=to_state,
            admin_email=admin.email if admin else None,
            error=error,
            state=state,
            detail=detail,
        )

    def _notify(self, req: NotifyRequest) -> None:
        """Fire and forget within the run: awaited before the run ends, carried across continue-as-new."""
        self.notifications = [(h, r) for h, r in self.notifications if not h.done()]
        handle = workflow.start_activity(
            calls.notify_event,
            req,
            schedule_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=2),
                maximum_interval=timedelta(seconds=60),
                non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
            ),
            summary=f"notify {req.event.event.value}",
        )
        self.notifications.append((handle, req))

    async def _drain_notifications(self) -> None:
        for handle, _ in self.notifications:
            try:
                await handle
            except ActivityError as err:
                workflow.logger.warning("notification not delivered: %s", describe_failure(err))
        self.notifications = []

    def _undelivered(self) -> list[NotifyRequest]:
        # Re-sent by the next run; the notifier delivers each eventId once, so an overlap is harmless.
        return [req for handle, req in self.notifications if not handle.done()]

    def _details(self) -> None:
        claim = f"epoch {self.claim.epoch}" if self.claim else "no claim"
        workflow.set_current_details(
            f"**state**: {self.state.value}  \n**host**: {self.hostname or self.inp.host} "
            f"({self.ip_address or 'IP unknown'})  \n**claim**: {claim}  \n"
            f"**symbols**: {self.symbol_count}  \n**last heartbeat**: "
            f"{iso(self.last_heartbeat_ok) if self.last_heartbeat_ok else 'see status key'}  \n"
            f"**last error**: {self.last_error or '-'}"
            + (f"  \n**outcome**: {self.outcome}" if self.outcome else "")
        )
