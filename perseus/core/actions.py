"""What the instance core asks the world to do, and what the world answers.

The core (:mod:`perseus.core`) never performs I/O and never touches Temporal: it yields one
action at a time and is sent the answer. ``workflows/instance.py`` carries each action out through the
Temporal SDK, in order, at the moment it is yielded, so the workflow's command sequence is exactly the
core's action sequence — which is what makes the recorded golden histories replay.

Every action is a frozen value. The answers:

============================  =====================================================================
action                        answer sent back
============================  =====================================================================
:class:`Call`                 the activity's result model; a failure is thrown in as ``StepFailed``
:class:`StartLease`           None (the lease or watch runs in the background)
:class:`WaitLease`            True if the lease ended within the timeout
:class:`TakeLease`            the ended lease's result; its failure is thrown in as ``StepFailed``
:class:`CancelLease`          None, once the running lease (if any) is cancelled
:class:`Sleep`                None
:class:`Patched`              whether the patch applies to this run (``workflow.patched``)
:class:`Signal`               None if delivered, else why not (one line)
:class:`WaitUntil`            True if the condition held before the timeout
:class:`WaitForWork`          the loop's next :class:`~perseus.core.decisions.Step`
:class:`SpawnWarmUp`          None (the warm-up runs beside the main procedure)
:class:`CancelWarmUp`         None (cancellation requested, not awaited)
:class:`Notify`               None (delivered in the background)
:class:`DrainNotifications`   None, once every notification of the run was delivered or gave up
:class:`Undelivered`          the notifications still in flight (a new run sends them again)
:class:`WaitHandlers`         None, once every update and signal handler has finished
:class:`ContinueAsNew`        never answered: the run continues as new
:class:`Search`, :class:`Details`, :class:`Log`, :class:`CountRestart`   None
============================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic

from pydantic import BaseModel

from perseus.core.activities import ACTIVITIES as ACTIVITIES
from perseus.core.activities import Activity as Activity
from perseus.core.activities import ActivityRef as ActivityRef
from perseus.core.activities import Q, R
from perseus.core.lifecycle import Role, State
from perseus.errors import PerseusError, StepFailed, error_class
from perseus.models import InstanceInput, NotifyRequest


class Retry(StrEnum):
    """Retry policies by purpose; ``workflows/instance.py`` maps each to the SDK's policy."""

    SHARED = "shared"  # catalog, standby records, claims: a few attempts, then report
    DURABLE = "durable"  # status and event writes, releases, reclaims: until Redis answers
    HOST = "host"  # connector steps and identity on a host queue: a few attempts
    ONCE = "once"  # a single attempt (leases, warm activation, asking a handoff target, a record here)
    TWICE = "twice"  # two attempts (a claim probe: a quick answer or none)


@dataclass(frozen=True)
class Failure:
    """An activity that failed, as plain values (the SDK's error chain is read at the edge)."""

    #: One line: the application error's message, or "timed out (KIND)".
    message: str
    #: The application error's type (an exception class name of perseus.errors); None for a timeout.
    error_type: str | None = None
    #: The timeout's kind (``SCHEDULE_TO_START``, ``HEARTBEAT``, …) when it timed out.
    timeout: str | None = None
    #: When the keeper stopped the connector, if the lease's error says so (``LeaseEnd``).
    stopped_at: datetime | None = None
    #: A lease that went silent while its holder held through a Redis outage on failsafe promises:
    #: how many seconds its connector might still act, as the lease last reported it (heartbeat
    #: details, ``FailsafeHolding.horizon_s``). None: not holding, or nothing reported.
    failsafe_horizon_s: float | None = None

    @property
    def kind(self) -> type[PerseusError] | None:
        """The error's class in Perseus' tree (None: a timeout, or an error from outside it)."""
        return error_class(self.error_type)

    @property
    def not_picked_up(self) -> bool:
        """No worker started the activity within its schedule-to-start timeout."""
        return self.timeout == "SCHEDULE_TO_START"


@dataclass(frozen=True)
class Call(Generic[Q, R]):
    """Run one activity to its end; answered with its result (an ``R``), see :func:`ask`."""

    activity: ActivityRef[Q, R]
    request: Q
    start_to_close_s: float
    retry: Retry
    summary: str
    #: A host's task queue; None: the shared queue.
    queue: str | None = None
    schedule_to_start_s: float | None = None
    heartbeat_timeout_s: float | None = None
    #: Run as a local activity (no server round trip: short idempotent writes).
    local: bool = False
    #: All attempts together end within this (None: no bound beyond the retry policy's).
    schedule_to_close_s: float | None = None


@dataclass(frozen=True)
class StartLease:
    """Start the lease (``hold_lease``) or the standby's watch (``hold_standby``) in the background,
    single attempt, cancelled by request only (:class:`CancelLease`)."""

    activity: ActivityRef[Any, Any]
    request: BaseModel
    queue: str
    schedule_to_start_s: float
    start_to_close_s: float
    heartbeat_timeout_s: float
    summary: str


@dataclass(frozen=True)
class WaitLease:
    timeout_s: float


@dataclass(frozen=True)
class TakeLease:
    """The result of the lease that ended; the lease is forgotten."""


@dataclass(frozen=True)
class CancelLease:
    """Cancel the running lease (if any) and wait until it has ended; the lease is forgotten."""


@dataclass(frozen=True)
class Sleep:
    seconds: float
    summary: str | None = None


@dataclass(frozen=True)
class Patched:
    patch_id: str


@dataclass(frozen=True)
class Signal:
    workflow_id: str
    signal: str
    payload: BaseModel


@dataclass(frozen=True)
class WaitUntil:
    """Wait until ``condition`` (over the core's own memory, changed by signals and updates) holds."""

    condition: Callable[[], bool]
    timeout_s: float | None = None
    #: Also stop waiting once every update and signal handler has finished (SDK state).
    or_handlers_finished: bool = False
    #: What the timeout's timer is called in the history and the Web UI.
    summary: str | None = None


@dataclass(frozen=True)
class WaitForWork:
    """Wait until the loop has something to do (:meth:`InstanceCore.next_step` is not None)."""


@dataclass(frozen=True)
class SpawnWarmUp:
    """Run ``procedure`` beside the main one (a warm standby warming its connector)."""

    procedure: Generator[Any, Any, None]


@dataclass(frozen=True)
class CancelWarmUp:
    pass


@dataclass(frozen=True)
class Notify:
    req: NotifyRequest


@dataclass(frozen=True)
class DrainNotifications:
    pass


@dataclass(frozen=True)
class Undelivered:
    pass


@dataclass(frozen=True)
class WaitHandlers:
    pass


@dataclass(frozen=True)
class ContinueAsNew:
    input: InstanceInput


@dataclass(frozen=True)
class Search:
    """Index the instance in Temporal's visibility (the Web UI's filters)."""

    state: State | None = None
    role: Role | None = None


@dataclass(frozen=True)
class Details:
    """The Web UI's "current details" of the run (markdown)."""

    text: str


@dataclass(frozen=True)
class Log:
    """One line for the operator (the workflow's logger)."""

    message: str
    warning: bool = False


@dataclass(frozen=True)
class CountRestart:
    """Count one connector restart in the worker's metrics."""

    exchange: str


Action = (
    Call[Any, Any]
    | StartLease
    | WaitLease
    | TakeLease
    | CancelLease
    | Sleep
    | Patched
    | Signal
    | WaitUntil
    | WaitForWork
    | SpawnWarmUp
    | CancelWarmUp
    | Notify
    | DrainNotifications
    | Undelivered
    | WaitHandlers
    | ContinueAsNew
    | Search
    | Details
    | Log
    | CountRestart
)

#: A procedure of the core: yields actions, is sent their answers, returns its value.
Proc = Generator[Action, Any, Any]
#: A procedure whose value is an ``R``.
Answer = Generator[Action, Any, R]


def ask(call: Call[Any, R]) -> Answer[R]:
    """Run one activity: its result, typed by the activity (a failure is thrown in as StepFailed)."""
    result: R = yield call
    return result


def tolerated(step: Call[Any, R] | Answer[R], why: str) -> Answer[R | None]:
    """Run ``step`` (one activity, or a procedure); if it fails, log ``why`` with the reason and
    answer None: for steps whose failure the caller rides out (the TTL frees a record, the
    connector's own deadline stops it)."""
    try:
        return (yield from ask(step)) if isinstance(step, Call) else (yield from step)
    except StepFailed as err:
        yield Log(f"{why}: {err.failure.message}", warning=True)
        return None
