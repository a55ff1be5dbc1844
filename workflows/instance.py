"""One exchange instance on one host, as a durable workflow (id ``instance-{exchange}-{host}``).

The workflow decides nothing. :class:`perseus.core.loop.InstanceCore` decides and remembers; it
yields one action at a time (:mod:`perseus.core.actions`) and this workflow carries each out through
the Temporal SDK at the moment it is yielded — an activity, a timer, a signal, a patch marker — and
sends the answer back. Signals and updates hand their news to the core; queries read its memory.
So the workflow's command sequence is the core's action sequence, and the golden histories under
``tests/histories/`` prove it replays as it ran.

Life of a run (decided in the core)::

    register: resolve exchange/admin → detect identity (host queue) → claim (new epoch) → idle
              (or, as a standby: a TTL'd standby record, no claim)
    loop:     active: a lease activity on the host queue renews the claim and heartbeats
              standby: a watch activity renews the record and waits for the exchange to fall vacant
              commands (updates/signals) run one at a time: start, stop, shutdown, handoff
              lease failure → re-attach, reclaim, restart, step aside, or lost (wake the best standby)
              promote signal / vacancy (standby) → claim above every known epoch → start
              history long → cancel the lease, continue-as-new with all state
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Generator
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from perseus.core import actions as act
    from perseus.core.lifecycle import Command
    from perseus.core.loop import InstanceCore
    from perseus.core.state import Refusal, Ticket
    from perseus.errors import NON_RETRYABLE_ERROR_TYPES, ConnectorGone, InvalidTransition, StepFailed
    from perseus.models import (
        CommandRequest,
        CommandResult,
        FailsafeHolding,
        HandoffConfirm,
        HandoffRequest,
        HeadsUp,
        HostRestarted,
        InstanceInput,
        InstanceSnapshot,
        LeaseEnd,
        NotifyRequest,
        PromiseAnswer,
        PromiseRequest,
        PromoteRequest,
        RegistrationResult,
    )
    from perseus.temporal import CONNECTION_STATE, INSTANCE_ROLE
    from perseus.timing import (
        ACTIVITY_RETRY_CAP_S,
        ACTIVITY_RETRY_FIRST_S,
        HOST_RETRY_CAP_S,
        NOTIFY_RETRY_CAP_S,
        NOTIFY_RETRY_FIRST_S,
        NOTIFY_TIMEOUT_S,
        workflow_task_timeout_s,
    )
    from workflows import calls

RETRY_POLICIES = {
    act.Retry.SHARED: RetryPolicy(
        initial_interval=timedelta(seconds=ACTIVITY_RETRY_FIRST_S),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=ACTIVITY_RETRY_CAP_S),
        maximum_attempts=5,
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    ),
    # Status and event writes, releases and reclaims: retried until Redis answers, never dropped after
    # N attempts — the record must not lose a transition because Redis was away for a while.
    act.Retry.DURABLE: RetryPolicy(
        initial_interval=timedelta(seconds=ACTIVITY_RETRY_FIRST_S),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=ACTIVITY_RETRY_CAP_S),
        non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
    ),
    act.Retry.HOST: RetryPolicy(
        initial_interval=timedelta(seconds=ACTIVITY_RETRY_FIRST_S),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=HOST_RETRY_CAP_S),
        maximum_attempts=3,
        non_retryable_error_types=[*NON_RETRYABLE_ERROR_TYPES, ConnectorGone.__name__],
    ),
    act.Retry.ONCE: RetryPolicy(maximum_attempts=1),
    act.Retry.TWICE: RetryPolicy(maximum_attempts=2),
}
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=NOTIFY_RETRY_FIRST_S),
    maximum_interval=timedelta(seconds=NOTIFY_RETRY_CAP_S),
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)

#: The stub of each activity the core names, by its registered name: each stub is named as its
#: activity and has its request and result types (tests/unit/test_activity_calls.py holds that).
STUBS: dict[str, Callable[..., Awaitable[Any]]] = {
    ref.value: getattr(calls, ref.value) for ref in act.ACTIVITIES
}

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R")


def stub(ref: act.ActivityRef[Q, R]) -> Callable[[Q], Awaitable[R]]:
    """The typed stub of an activity the core names: the SDK and mypy see its request and result
    types (``ref``'s, which the test holds equal to the stub's), never ``Any``."""
    return cast(Callable[[Q], Awaitable[R]], STUBS[ref.value])


#: Actions carried out at once, before the core runs on (nothing else may interleave with them).
IMMEDIATE = (
    act.StartLease,
    act.TakeLease,
    act.Patched,
    act.SpawnWarmUp,
    act.CancelWarmUp,
    act.Notify,
    act.Undelivered,
    act.ContinueAsNew,
    act.Search,
    act.Details,
    act.Log,
    act.CountRestart,
)


def failure_of(err: ActivityError | TimeoutError | ApplicationError) -> act.Failure:
    """An activity's failure as the core reads it: plain values from the SDK's error chain.

    A local activity's failure may reach the workflow unwrapped — the bare TimeoutError or
    ApplicationError rather than an ActivityError caused by it (a timeout read back from its marker
    on replay; a Redis refused twice in a bench run, live): each is read as its wrapped form."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, TimeoutError):
        kind = cause.type.name if cause.type else None
        return act.Failure(
            message=f"timed out ({kind or 'unknown'})", timeout=kind, failsafe_horizon_s=_horizon(cause)
        )
    if isinstance(cause, ApplicationError):
        stopped_at = None
        if cause.details:
            try:
                stopped_at = LeaseEnd.model_validate(cause.details[0]).stopped_at
            except ValueError:
                stopped_at = None
        return act.Failure(message=cause.message, error_type=cause.type, stopped_at=stopped_at)
    return act.Failure(message=str(cause or err))


def _horizon(cause: TimeoutError) -> float | None:
    """The failsafe horizon a silent lease last reported while holding (its heartbeat details)."""
    details = cause.last_heartbeat_details
    if not details:
        return None
    try:
        state = FailsafeHolding.model_validate(details[0])
    except ValueError:
        return None  # details of another shape: nothing reported
    return state.horizon_s if state.holding else None


class _Clock:
    """The workflow's deterministic time and identifiers, for the core."""

    def now(self) -> datetime:
        return workflow.now()

    def uuid4(self) -> str:
        return str(workflow.uuid4())


@workflow.defn(name="InstanceWorkflow")
class InstanceWorkflow:
    @workflow.init
    def __init__(self, inp: InstanceInput) -> None:
        self.core = InstanceCore(inp, workflow.info().workflow_id, _Clock())
        self.lease: workflow.ActivityHandle[Any] | None = None
        self.warm_up: asyncio.Task[Any] | None = None
        self.notifications: list[tuple[workflow.ActivityHandle[Any], NotifyRequest]] = []

    # --- queries, updates, signals: news for the core --------------------------------------------

    @workflow.query
    def snapshot(self) -> InstanceSnapshot:
        return self.core.snapshot()

    @workflow.update
    async def wait_registered(self) -> RegistrationResult:
        """Completes once registration has succeeded; fails with the refusal otherwise."""
        await workflow.wait_condition(self.core.registration_settled)
        result = self.core.registration()
        if isinstance(result, Refusal):
            raise ApplicationError(result.message, type=result.error_type)
        return result

    @workflow.update
    async def command(self, req: CommandRequest) -> CommandResult:
        """Run start/stop/shutdown; returns once the command's transitions are done."""
        return await self._answer(self.core.enqueue(req.command, actor=req.actor))

    @command.validator
    def _validate_command(self, req: CommandRequest) -> None:
        # Refusals happen here, before anything reaches history or Redis.
        self.core.refuse_command(req.command)

    @workflow.update
    async def handoff(self, req: HandoffRequest) -> CommandResult:
        """Planned switchover to a live standby on ``req.to_host``: notify → takeover → confirm."""
        return await self._answer(self.core.enqueue(Command.HANDOFF, handoff=req, actor=req.actor))

    @handoff.validator
    def _validate_handoff(self, req: HandoffRequest) -> None:
        self.core.refuse_handoff(req)

    async def _answer(self, ticket: Ticket) -> CommandResult:
        """The caller's side of a queued command: its result, or its failure as an error."""
        await workflow.wait_condition(lambda: self.core.has_result(ticket))
        result = self.core.take_result(ticket)
        if result.error is not None:
            raise ApplicationError(result.error, result, type="CommandFailed")
        return result

    @workflow.update
    async def failsafe_promise(self, req: PromiseRequest) -> PromiseAnswer:
        """A holder of this exchange that cannot renew asks for a promise not to claim: this
        instance's host decides and records its bound before the answer (failsafe on only)."""
        answer: PromiseAnswer = await self._drive(self.core.failsafe.promise(req))
        return answer

    @workflow.signal
    def promote(self, req: PromoteRequest) -> None:
        """Sent to a standby: the exchange is (about to be) free — try to take it now."""
        self.core.on_promote(req)

    @workflow.signal
    def handoff_confirmed(self, reply: HandoffConfirm) -> None:
        """The target of our handoff says whether it took over."""
        self.core.on_handoff_reply(reply)

    @workflow.signal
    def heads_up(self, note: HeadsUp) -> None:
        """A task of this instance is near: a handoff to it is under way (its caller sends this
        beside the request to the holder), or the holder it stands by for has missed a renewal (its
        host's keeper sends it well before the claim-over line). Nothing changes here: what it is for
        is the workflow task it costs *now*. If the worker that had this run cached is gone, that
        task waits out the sticky timeout and replays on a live worker while nothing depends on it
        — not after the release or the lapse, when the promotion would wait for it and the exchange
        has no connector."""
        del note  # said by its arrival; the history records why

    @workflow.signal
    def command_signal(self, req: CommandRequest) -> None:
        """Fire-and-forget form of :meth:`command`; an invalid command is logged and dropped."""
        try:
            self.core.refuse_command(req.command)
        except InvalidTransition as exc:
            workflow.logger.warning("signal refused: %s", exc)
            return
        self.core.enqueue(req.command, actor=req.actor)

    @workflow.signal
    def host_shutting_down(self) -> None:
        """The host's worker is stopping gracefully: stop, release the claim, finish."""
        self.core.on_host_shutting_down()

    @workflow.signal
    def host_restarted(self, req: HostRestarted) -> None:
        """The host's worker started again: a standby watches (and warms up) from the new process."""
        self.core.on_host_restarted(req)

    # --- the run: carry the core's actions out ---------------------------------------------------

    @workflow.run
    async def run(self, inp: InstanceInput) -> str:
        try:
            outcome: str = await self._drive(self.core.run())
        except StepFailed as exc:  # a failure the core let through fails the run, as the SDK's error
            raise exc.__cause__ or exc from None
        return outcome

    async def _drive(self, procedure: Generator[act.Action, Any, Any]) -> Any:
        """Run a procedure of the core: each action at once, its answer (or failure) sent back."""
        answer: Any = None
        failed: StepFailed | None = None
        while True:
            try:
                action = procedure.send(answer) if failed is None else procedure.throw(failed)
            except StopIteration as done:
                return done.value
            answer, failed = None, None
            try:
                answer = self._now(action) if isinstance(action, IMMEDIATE) else await self._later(action)
            except (ActivityError, TimeoutError, ApplicationError) as err:
                # A bare ApplicationError is a local activity's failure, unwrapped (failure_of); from
                # anything else it is the run's own failure and fails the run, as it always did.
                if isinstance(err, ApplicationError) and not (isinstance(action, act.Call) and action.local):
                    raise
                failed = StepFailed(failure_of(err))
                failed.__cause__ = err

    def _now(self, action: act.Action) -> Any:
        """Actions that complete without waiting: carried out before the core runs on."""
        match action:
            case act.StartLease():
                self.lease = workflow.start_activity(
                    stub(action.activity),
                    action.request,
                    task_queue=action.queue,
                    schedule_to_start_timeout=timedelta(seconds=action.schedule_to_start_s),
                    start_to_close_timeout=timedelta(seconds=action.start_to_close_s),
                    heartbeat_timeout=timedelta(seconds=action.heartbeat_timeout_s),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    # Cancellation is requested, not waited for: the activity hears of it at its next
                    # heartbeat, and a lingering renewal with the same token is harmless.
                    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                    summary=action.summary,
                )
            case act.TakeLease():
                lease, self.lease = self.lease, None
                assert lease is not None and lease.done()
                return lease.result()
            case act.Patched():
                return workflow.patched(action.patch_id)
            case act.SpawnWarmUp():
                self.warm_up = asyncio.create_task(self._drive(action.procedure))
            case act.CancelWarmUp():
                if self.warm_up is not None:
                    self.warm_up.cancel()
                    self.warm_up = None
            case act.Notify():
                self._notify(action.req)
            case act.Undelivered():
                # Re-sent by the next run; the notifier delivers each eventId once.
                return [req for handle, req in self.notifications if not handle.done()]
            case act.ContinueAsNew():
                # The task timeout is given again: a run started before it followed the interval
                # (10 s whatever the interval) takes it up from its next run on.
                timeout_s = workflow_task_timeout_s(action.input.heartbeat_interval_s)
                workflow.continue_as_new(action.input, task_timeout=timedelta(seconds=timeout_s))
            case act.Search():
                attributes = []
                if action.role is not None:
                    attributes.append(INSTANCE_ROLE.value_set(action.role.value))
                if action.state is not None:
                    attributes.append(CONNECTION_STATE.value_set(action.state.value))
                workflow.upsert_search_attributes(attributes)
            case act.Details():
                workflow.set_current_details(action.text)
            case act.Log():
                (workflow.logger.warning if action.warning else workflow.logger.info)("%s", action.message)
            case act.CountRestart():
                workflow.metric_meter().create_counter(
                    "perseus_connector_restarts", "Connector restarts after a failure while active"
                ).add(1, {"exchange": action.exchange})
        return None

    async def _later(self, action: act.Action) -> Any:
        """Actions that wait: an activity, a timer, a signal, a condition."""
        match action:
            case act.Call():
                return await self._call(action)
            case act.WaitLease():
                lease = self.lease
                assert lease is not None
                return await self._wait(lease.done, action.timeout_s)
            case act.CancelLease():
                lease, self.lease = self.lease, None
                if lease is not None and not lease.done():
                    lease.cancel()
                    try:
                        await lease
                    except (ActivityError, CancelledError, asyncio.CancelledError):
                        pass
            case act.Sleep():
                await workflow.sleep(timedelta(seconds=action.seconds), summary=action.summary)
            case act.Signal():
                try:
                    await workflow.get_external_workflow_handle(action.workflow_id).signal(
                        action.signal, action.payload
                    )
                except Exception as exc:  # the other workflow is gone: the core decides what follows
                    return str(exc)
            case act.WaitUntil():
                condition = action.condition
                if action.or_handlers_finished:
                    return await self._wait(lambda: condition() or workflow.all_handlers_finished())
                return await self._wait(condition, action.timeout_s, action.summary)
            case act.WaitForWork():
                await workflow.wait_condition(lambda: self._next_step() is not None)
                return self._next_step()
            case act.DrainNotifications():
                for handle, _ in self.notifications:
                    try:
                        await handle
                    except ActivityError as err:
                        workflow.logger.warning("notification not delivered: %s", failure_of(err).message)
                self.notifications = []
            case act.WaitHandlers():
                await workflow.wait_condition(workflow.all_handlers_finished)
        return None

    @staticmethod
    async def _call(action: act.Call[Q, R]) -> R:
        """One activity through its typed stub: the result is the activity's own type."""
        if action.local:
            return await workflow.execute_local_activity(
                stub(action.activity),
                action.request,
                start_to_close_timeout=timedelta(seconds=action.start_to_close_s),
                schedule_to_close_timeout=_seconds(action.schedule_to_close_s),
                retry_policy=RETRY_POLICIES[action.retry],
                summary=action.summary,
            )
        return await workflow.execute_activity(
            stub(action.activity),
            action.request,
            task_queue=action.queue,
            schedule_to_start_timeout=_seconds(action.schedule_to_start_s),
            schedule_to_close_timeout=_seconds(action.schedule_to_close_s),
            start_to_close_timeout=timedelta(seconds=action.start_to_close_s),
            heartbeat_timeout=_seconds(action.heartbeat_timeout_s),
            retry_policy=RETRY_POLICIES[action.retry],
            summary=action.summary,
        )

    @staticmethod
    async def _wait(
        condition: Callable[[], bool], timeout_s: float | None = None, summary: str | None = None
    ) -> bool:
        try:
            await workflow.wait_condition(condition, timeout=_seconds(timeout_s), timeout_summary=summary)
        except builtins.TimeoutError:
            return False
        return True

    def _next_step(self) -> Any:
        info = workflow.info()
        return self.core.next_step(
            lease_done=self.lease is not None and self.lease.done(),
            history_long=info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self.core.inp.history_limit,
        )

    def _notify(self, req: NotifyRequest) -> None:
        """Fire and forget within the run: awaited before the run ends, carried across continue-as-new."""
        self.notifications = [(h, r) for h, r in self.notifications if not h.done()]
        handle = workflow.start_activity(
            calls.notify_event,
            req,
            schedule_to_close_timeout=timedelta(seconds=NOTIFY_TIMEOUT_S),
            retry_policy=NOTIFY_RETRY,
            summary=f"notify {req.event.event.value}",
        )
        self.notifications.append((handle, req))


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)
