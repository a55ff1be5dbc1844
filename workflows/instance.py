"""One exchange instance on one host, as a durable workflow (id ``instance-{exchange}-{host}``).

The workflow decides nothing by itself: :mod:`perseus.lifecycle` says which transitions a command
makes, and activities do the I/O. The workflow owns the memory that makes recovery safe: the claim
(instanceId + epoch) it holds, the highest epoch it has seen, the state, and the queued commands.

Life of a run::

    register: resolve exchange/admin → detect identity (host queue) → claim (new epoch) → idle
    loop:     lease activity on the host queue renews the claim and heartbeats
              commands (updates/signals) run one at a time: start, stop, shutdown
              lease failure → a restarted worker resumes the claim; otherwise the instance is
                              lost: record it, walk down to idle, release the key, end the run
              history long → cancel the lease, continue-as-new with all state
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from perseus.errors import NON_RETRYABLE_ERROR_TYPES, InvalidTransition
    from perseus.keys import host_task_queue, iso, ttl_ms
    from perseus.lifecycle import (
        Command,
        State,
        check_transition,
        plan,
        projected_state,
        recovery_path,
        release_path,
    )
    from perseus.models import (
        CarriedState,
        Claim,
        ClaimRequest,
        ClaimResult,
        CommandRequest,
        CommandResult,
        ConnectorReport,
        ConnectorRequest,
        EventKind,
        EventRequest,
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
        RegistrationResult,
        ReleaseRequest,
        Resolved,
        ResolveRequest,
        StatusPatch,
    )
    from perseus.temporal import CONNECTION_STATE, EXCHANGE_NAME, INSTANCE_HOST, INSTANCE_ROLE

SHARED_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
HOST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=[*NON_RETRYABLE_ERROR_TYPES, "ConnectorGone"],
)


def search_attributes(exchange: str, host: str, state: State, role: str = "active") -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(EXCHANGE_NAME, exchange),
            SearchAttributePair(INSTANCE_HOST, host),
            SearchAttributePair(CONNECTION_STATE, state.value),
            SearchAttributePair(INSTANCE_ROLE, role),
        ]
    )


def describe_failure(err: BaseException) -> str:
    """A one-line reason from an ActivityError chain."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name if cause.type else 'unknown'})"
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)


def failure_type(err: BaseException) -> str | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


@dataclass
class _Ticket:
    number: int
    command: Command


class InstanceLost(Exception):
    """Internal: the lease ended badly; carries why."""


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
        self.notifications: list[tuple[workflow.ActivityHandle[str], NotifyRequest]] = []
        self.carried_notifications: list[NotifyRequest] = list(c.undelivered) if c else []

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
        )

    @workflow.update
    async def wait_registered(self) -> RegistrationResult:
        """Completes once registration has succeeded; fails with the refusal otherwise."""
        await workflow.wait_condition(lambda: self.claim is not None or self.registration_error is not None)
        if self.registration_error is not None or self.claim is None or self.resolved is None:
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
            instance_id=self.claim.instance_id,
            epoch=self.claim.epoch,
            state=self.state,
            workflow_id=self.wf_id,
        )

    @workflow.update
    async def command(self, req: CommandRequest) -> CommandResult:
        """Run start/stop/shutdown; returns once the command's transitions are done."""
        ticket = self._enqueue(req.command)
        await workflow.wait_condition(lambda: ticket.number in self.results)
        result = self.results.pop(ticket.number)
        if result.error is not None:
            raise ApplicationError(result.error, result, type="CommandFailed")
        return result

    @command.validator
    def _validate_command(self, req: CommandRequest) -> None:
        # Refusals happen here, before anything reaches history or Redis.
        if self.registration_error is not None or self.outcome is not None:
            raise InvalidTransition(
                f"instance {self.wf_id} is not registered any more "
                f"({self.outcome or self.registration_error})"
            )
        if any(t.command is Command.SHUTDOWN for t in self.queue) or self.host_going_down:
            raise InvalidTransition(f"instance {self.wf_id} is shutting down")
        plan(req.command, projected_state(self.state, [t.command for t in self.queue]))

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

    def _enqueue(self, command: Command) -> _Ticket:
        ticket = _Ticket(self.next_ticket, command)
        self.next_ticket += 1
        self.queue.append(ticket)
        return ticket

    # --- main ------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: InstanceInput) -> str:
        if self.claim is None:
            if not await self._register():
                return await self._finish(self.registration_error or "registration failed")
            if inp.start_immediately:
                self._enqueue(Command.START)
        for req in self.carried_notifications:
            self._notify(req)
        lease = self._start_lease()
        while True:
            await workflow.wait_condition(functools.partial(self._has_work, lease))
            if lease.done():
                next_lease = await self._after_lease(lease)
                if next_lease is None:
                    return await self._finish(self.outcome or "instance lost")
                lease = next_lease
                continue
            if self.host_going_down:
                await self._cancel_lease(lease)
                await self._release("worker on host shut down")
                return await self._finish(f"released: the worker on {self.inp.host} shut down")
            if self.queue:
                ticket = self.queue.pop(0)
                result = await self._execute(ticket.command)
                if ticket.command is Command.SHUTDOWN and result.error is None:
                    # The caller hears back only once the claim is released.
                    await self._cancel_lease(lease)
                    await self._release_claim()
                    self.results[ticket.number] = result
                    return await self._finish("shut down")
                self.results[ticket.number] = result
                continue
            if self._history_long():
                await self._cancel_lease(lease)
                # A command accepted meanwhile has a caller waiting on this run: run it first
                # (its handler would never finish otherwise) and continue as new afterwards.
                await workflow.wait_condition(lambda: bool(self.queue) or workflow.all_handlers_finished())
                if self.queue:
                    lease = self._start_lease()
                    continue
                workflow.continue_as_new(self._carry())

    def _has_work(self, lease: workflow.ActivityHandle[LeaseOutcome]) -> bool:
        return bool(self.queue) or lease.done() or self.host_going_down or self._history_long()

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
        assert self.resolved and self.claim and self.hostname and self.registered_at
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
            highest_epoch=self.highest_epoch,
            runs=self.runs,
        )
        return self.inp.model_copy(update={"carried": carried, "start_immediately": False})

    # --- registration ----------------------------------------------------------------------------

    async def _register(self) -> bool:
        try:
            self.resolved = await workflow.execute_activity(
                "resolve_instance",
                ResolveRequest(exchange=self.inp.exchange, admin_email=self.inp.admin_email),
                result_type=Resolved,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="resolve exchange and admin",
            )
            identity = await workflow.execute_activity(
                "detect_identity",
                IdentityRequest(host=self.inp.host),
                result_type=Identity,
                task_queue=self.host_queue,
                schedule_to_start_timeout=self._host_wait(),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=HOST_RETRY,
                summary=f"identity on {self.inp.host}",
            )
        except ActivityError as err:
            self.registration_error = self._explain(err)
            # A timeout (no worker for the host, a server that never answered) is unavailability.
            self.registration_error_type = failure_type(err) or "ServiceUnavailable"
            return False
        self.hostname, self.ip_address = identity.hostname, identity.ip_address
        self.registered_at = workflow.now()
        result = await self._claim()
        if result is None:
            return False
        workflow.upsert_search_attributes([CONNECTION_STATE.value_set(self.state.value)])
        self._details()
        return True

    async def _claim(self) -> ClaimResult | None:
        """Claim with a fresh instanceId; on refusal record ``claim_conflict`` and remember why."""
        assert self.resolved and self.hostname and self.registered_at
        instance_id = str(workflow.uuid4())
        status = self._status(instance_id)
        try:
            result: ClaimResult = await workflow.execute_activity(
                "claim_exchange",
                ClaimRequest(status=status, highest_epoch=self.highest_epoch),
                result_type=ClaimResult,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="claim",
            )
        except ActivityError as err:
            self.registration_error = f"claim failed: {describe_failure(err)}"
            self.registration_error_type = failure_type(err) or "ServiceUnavailable"
            return None
        self.highest_epoch = max(self.highest_epoch, result.epoch)
        if not result.claimed:
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
            "hold_lease",
            LeaseRequest(
                workflow_id=self.wf_id,
                exchange_id=self.resolved.exchange.id,
                claim=self.claim,
                heartbeat_interval_s=interval,
                term_s=self.inp.lease_term_s,
            ),
            result_type=LeaseOutcome,
            task_queue=self.host_queue,
            schedule_to_start_timeout=schedule_to_start or self._host_wait(),
            start_to_close_timeout=timedelta(seconds=self.inp.lease_term_s + 4 * interval),
            # A dead host is seen after 1.5 intervals without a heartbeat: before the 3-interval TTL.
            heartbeat_timeout=timedelta(seconds=interval * 1.5),
            retry_policy=RetryPolicy(maximum_attempts=1),
            # Request cancellation without waiting for it: the activity only hears of it at its next
            # heartbeat, and nothing here needs it gone first (a lingering renewal with the same token
            # is harmless, and after a release it finds no key and creates none).
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            summary=f"lease epoch {self.claim.epoch} on {self.inp.host}",
        )

    async def _cancel_lease(self, lease: workflow.ActivityHandle[LeaseOutcome]) -> None:
        if lease.done():
            return
        lease.cancel()
        try:
            await lease
        except (ActivityError, CancelledError, asyncio.CancelledError):
            pass

    async def _after_lease(
        self, lease: workflow.ActivityHandle[LeaseOutcome]
    ) -> workflow.ActivityHandle[LeaseOutcome] | None:
        """Decide what a finished lease means; returns the next lease, or None when the run must end."""
        try:
            outcome = lease.result()
        except ActivityError as err:
            return await self._lease_failed(err)
        self.last_heartbeat_ok = outcome.last_renewed
        return self._start_lease()  # the term ran out normally: renew the term

    async def _lease_failed(self, err: ActivityError) -> workflow.ActivityHandle[LeaseOutcome] | None:
        reason = describe_failure(err)
        if failure_type(err) != "ClaimLost":
            # The host stopped heartbeating: its worker died or the host is gone. A restarted worker
            # resumes our claim (same instanceId + epoch, from this workflow's memory) if it comes
            # back quickly; otherwise the instance is lost.
            pickup = self.inp.heartbeat_interval_s * 0.5
            resumed = self._start_lease(schedule_to_start=timedelta(seconds=pickup))
            try:
                # Longer than the pickup window (timers fire late under load): a lease still running
                # after it was picked up by a worker, not refused for want of one.
                await workflow.wait_condition(
                    lambda: resumed.done(),
                    timeout=timedelta(seconds=pickup + max(self.inp.heartbeat_interval_s, 3.0)),
                )
            except builtins.TimeoutError:
                # Renewing again on a live worker: the host is back. Make sure the connector is too.
                if (
                    self.state in (State.STARTING, State.WARMING, State.ACTIVE)
                    and not await self._connector_alive()
                ):
                    await self._fail(f"connector not running after the worker on {self.inp.host} restarted")
                return resumed
            try:
                resumed.result()
                return self._start_lease()
            except ActivityError as again:
                if failure_type(again) == "ClaimLost":
                    err, reason = again, describe_failure(again)
                else:
                    reason = f"host {self.inp.host} stopped heartbeating ({reason}) and did not come back"
        await self._instance_lost(reason)
        return None

    async def _connector_alive(self) -> bool:
        try:
            report = await self._host_activity("connector_check", timeout_s=10)
        except ActivityError:
            return False
        return report.running

    async def _instance_lost(self, reason: str) -> None:
        """The claim is gone or the host is: record it, walk the state down, free the key if still ours."""
        self.last_error = reason
        await self._event(EventKind.INSTANCE_LOST, detail=reason)
        for target in recovery_path(self.state):
            await self._transition(target)
        await self._release_claim()
        self.outcome = f"instance lost: {reason}"

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
                report = await self._host_activity("connector_prepare")
                self.symbol_count = report.symbol_count
                await self._transition(State.WARMING)
                done.append(State.WARMING)
                await self._host_activity("connector_warm_up")
                await self._host_activity("connector_connect")
                self.connected_at = workflow.now()
                await self._transition(State.ACTIVE)
                done.append(State.ACTIVE)
            else:
                for target in path:
                    if target is State.STOPPED:
                        await self._host_activity("connector_disconnect")
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

    async def _fail(self, reason: str) -> None:
        """Retries are exhausted: record lastError + an error event, stop the connector, recover to idle."""
        self.last_error = reason
        now = workflow.now()
        await self._patch({"lastError": reason, "lastErrorAt": iso(now)})
        await self._event(EventKind.ERROR, error=reason, state=self.state)
        try:
            await self._host_activity("connector_disconnect", timeout_s=15)
        except ActivityError as err:
            workflow.logger.warning("connector_disconnect after failure: %s", describe_failure(err))
        for target in recovery_path(self.state):
            await self._transition(target)

    async def _release(self, reason: str) -> None:
        for target in release_path(self.state):
            if target is State.STOPPED:
                try:
                    await self._host_activity("connector_disconnect", timeout_s=15)
                except ActivityError as err:
                    workflow.logger.warning("connector_disconnect: %s", describe_failure(err))
            await self._transition(target)
        await self._release_claim()

    async def _release_claim(self) -> None:
        if self.claim is None or self.resolved is None:
            return
        try:
            await workflow.execute_activity(
                "release_claim",
                ReleaseRequest(exchange_id=self.resolved.exchange.id, claim=self.claim),
                result_type=PatchResult,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="release claim",
            )
        except ActivityError as err:
            workflow.logger.warning("release failed (the TTL frees it): %s", describe_failure(err))

    async def _host_activity(self, name: str, timeout_s: float = 120) -> ConnectorReport:
        assert self.resolved
        report: ConnectorReport = await workflow.execute_activity(
            name,
            ConnectorRequest(
                workflow_id=self.wf_id,
                exchange_id=self.resolved.exchange.id,
                exchange_name=self.resolved.exchange.name,
                spec=self.inp.connector,
            ),
            result_type=ConnectorReport,
            task_queue=self.host_queue,
            schedule_to_start_timeout=self._host_wait(),
            start_to_close_timeout=timedelta(seconds=timeout_s),
            retry_policy=HOST_RETRY,
            summary=f"{name} on {self.inp.host}",
        )
        return report

    # --- writes ----------------------------------------------------------------------------------

    async def _transition(self, target: State) -> None:
        """One fenced status write and one ``state_transition`` event; the state machine checked it."""
        previous = self.state
        check_transition(previous, target)
        self.state = target
        now = workflow.now()
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
        await self._patch(fields)
        await self._event(EventKind.STATE_TRANSITION, from_state=previous, to_state=target)
        workflow.upsert_search_attributes([CONNECTION_STATE.value_set(target.value)])
        self._details()

    async def _patch(self, fields: dict[str, object]) -> None:
        if self.claim is None or self.resolved is None:
            return
        try:
            result = await workflow.execute_activity(
                "patch_status",
                StatusPatch(exchange_id=self.resolved.exchange.id, claim=self.claim, fields=fields),
                result_type=PatchResult,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary="write status",
            )
        except ActivityError as err:
            workflow.logger.warning("status write failed after retries: %s", describe_failure(err))
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
    ) -> None:
        assert self.resolved
        claim = claim or self.claim
        admin = self.resolved.admin
        event = NetworkEvent(
            event=kind,
            event_id=str(workflow.uuid4()),
            timestamp=workflow.now(),
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
        try:
            await workflow.execute_activity(
                "record_event",
                EventRequest(event=event),
                result_type=str,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHARED_RETRY,
                summary=f"event {kind.value}",
            )
        except ActivityError as err:
            workflow.logger.warning(
                "event %s not recorded after retries: %s", kind.value, describe_failure(err)
            )
            return
        self._notify(NotifyRequest(event=event))

    def _notify(self, req: NotifyRequest) -> None:
        """Fire and forget within the run: awaited before the run ends, carried across continue-as-new."""
        self.notifications = [(h, r) for h, r in self.notifications if not h.done()]
        handle = workflow.start_activity(
            "notify_event",
            req,
            result_type=str,
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
