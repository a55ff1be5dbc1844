"""Driving one part of the decision core alone: a clock, a context, a procedure run to its end
against answers, and the parts a part is handed, wired as :class:`~perseus.core.loop.InstanceCore`
wires them — with the core's own hooks (queue a command, become a standby, end the run) recorded.

A failed activity is thrown in as ``StepFailed``, as the workflow does. Every ``Patched`` is
answered True: a run begun on this code takes every patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from perseus.core import actions as act
from perseus.core.context import Context
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, Role, State
from perseus.core.standbys import Standbys
from perseus.core.state import Identity, LeaseState, StandbyState, StatusState, Ticket, WarmState, WarmUp
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.errors import StepFailed
from perseus.keys import host_task_queue
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimResult,
    ConnectorPreflight,
    ConnectorReport,
    ConnectorSpec,
    Exchange,
    HostPresence,
    InstanceInput,
    PatchResult,
    Recorded,
    Resolved,
    StandbyList,
    StandbyRecord,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
HOST = "host-a"
WF_ID = f"instance-coinbase-{HOST}"
HOST_QUEUE = host_task_queue(HOST)
CLAIM = Claim(instance_id="mine", epoch=7)
NOT_PICKED_UP = act.Failure(message="timed out (SCHEDULE_TO_START)", timeout="SCHEDULE_TO_START")
SILENT = act.Failure(message="timed out (HEARTBEAT)", timeout="HEARTBEAT")
APP_ERROR = act.Failure(message="connector not ready", error_type="ConnectorNotReady")
#: Each way a step can fail: no worker picked it up, the activity raised, its host went silent.
STEP_FAILURES = [NOT_PICKED_UP, APP_ERROR, SILENT]
STEP_FAILURE_IDS = ["no-worker", "app-error", "silent"]
#: Steps that make a connector act on the exchange: only ever under a claim just taken.
ACTING = {act.Activity.CONNECTOR_CONNECT, act.Activity.CONNECTOR_ACTIVATE}
#: A bound on any one procedure: a part that loops forever fails its test instead of hanging it.
MAX_ACTIONS = 2000


class Clock:
    def __init__(self) -> None:
        self.t = T0
        self.ids = itertools.count(1)

    def now(self) -> datetime:
        return self.t

    def uuid4(self) -> str:
        return f"id-{next(self.ids)}"

    def advance(self, seconds: float | None) -> None:
        self.t += timedelta(seconds=seconds or 0.0)


def context(*, warm: bool = False, interval_s: float = 15.0, priority: int = 0, **spec: Any) -> Context:
    inp = InstanceInput(
        exchange="coinbase",
        host=HOST,
        heartbeat_interval_s=interval_s,
        priority=priority,
        connector=ConnectorSpec(warm=warm, **spec),
    )
    resolved = Resolved(
        exchange=Exchange(id=1, name="coinbase", display_name="Coinbase", is_active=True), admin=None
    )
    identity = Identity(resolved=resolved, hostname="host-a.lan", ip_address="10.0.0.1", registered_at=T0)
    return Context(inp, WF_ID, Clock(), identity)


def drive(
    proc: Generator[act.Action, Any, Any], answer: Callable[[act.Action], Any]
) -> tuple[Any, list[Any]]:
    """Run a procedure to its end: each action answered by ``answer`` (a Failure is thrown in)."""
    actions: list[act.Action] = []
    reply: Any = None
    failed: StepFailed | None = None
    while True:
        try:
            action = proc.send(reply) if failed is None else proc.throw(failed)
        except StopIteration as done:
            return done.value, actions
        actions.append(action)
        assert len(actions) <= MAX_ACTIONS, f"does not settle: {actions[-5:]}"
        reply, failed = None, None
        out = answer(action)
        if isinstance(out, act.Failure):
            failed = StepFailed(out)
        else:
            reply = out


@contextmanager
def case(label: str) -> Iterator[None]:
    """Name the case an assertion failed in (for a test that loops over many cases)."""
    try:
        yield
    except AssertionError as err:
        raise AssertionError(f"{label}: {err}") from err


def calls(actions: list[act.Action]) -> list[str]:
    return [a.activity.value for a in actions if isinstance(a, act.Call)]


def default_answer(call: act.Call[Any, Any]) -> Any:
    """A world where every write is taken, every claim granted and every connector step succeeds."""
    activity = call.activity
    if activity is act.Activity.RECORD:
        return Recorded(stream_id="1-0", patch=PatchResult(applied=True), notify=False)
    if activity is act.Activity.RELEASE_CLAIM:
        return PatchResult(applied=True)
    if activity is act.Activity.NOTIFY_EVENT:
        return "1-0"
    if activity is act.Activity.HOST_POLLED:
        return HostPresence(polled=False, pollers=0)
    if activity is act.Activity.CLAIM_AND_HOLD:
        return ClaimResult(claimed=True, epoch=call.request.claim.highest_epoch + 1)
    if activity is act.Activity.LIST_STANDBYS:
        return StandbyList(standbys=[])
    if activity is act.Activity.CONNECTOR_PREFLIGHT:
        return ConnectorPreflight(hostname="target.lan")
    if activity in (act.Activity.PUT_STANDBY, act.Activity.DROP_STANDBY):
        return None
    if activity is act.Activity.PROBE_CLAIM:
        return ClaimProbe(held_by_us=False)  # the key is gone
    return ConnectorReport(running=True, symbol_count=0)


def world(*, on_call: Callable[[act.Call[Any, Any]], Any] | None = None) -> Callable[[act.Action], Any]:
    """Answers: every patch taken (a run begun on this code), writes accepted, the rest by ``on_call``."""

    def answer(action: act.Action) -> Any:
        if isinstance(action, act.Patched):
            return True
        if isinstance(action, act.Call):
            if on_call is not None:
                found = on_call(action)
                if found is not None:
                    return found
            if action.activity is act.Activity.RECORD:
                return Recorded(stream_id="1-0", patch=PatchResult(applied=True), notify=False)
            if action.activity is act.Activity.RELEASE_CLAIM:
                return PatchResult(applied=True)
            return ConnectorReport(running=False, symbol_count=0)
        return None

    return answer


@dataclass
class Seen:
    """One action a part asked for, when (the world's clock), and what the world answered."""

    at: datetime
    action: act.Action
    answer: Any


class World:
    """Answers a part's actions from scripts, and remembers each one with the time it was asked.

    ``scripts``: per activity, the answers in turn (a Failure is thrown in); once a script runs out,
    ``fallback`` answers (default: :func:`default_answer`). ``leases``: what each ended lease gives
    (TakeLease), ``waits``: whether each WaitLease sees the lease end, ``signals``: each Signal's
    refusal (None: delivered). ``until``: answers a WaitUntil (default: its condition, now). Every
    wait that times out moves the clock on by its timeout, as the timer would.
    """

    def __init__(
        self,
        ctx: Context,
        scripts: Mapping[act.ActivityRef[Any, Any], Iterable[Any]] | None = None,
        *,
        leases: Iterable[Any] = (),
        waits: Iterable[bool] = (),
        signals: Iterable[str | None] = (),
        until: Callable[[act.WaitUntil], bool] | None = None,
        fallback: Callable[[act.Call[Any, Any]], Any] = default_answer,
    ) -> None:
        assert isinstance(ctx.clock, Clock)
        self.clock = ctx.clock
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.leases, self.waits, self.signals = list(leases), list(waits), list(signals)
        self.until, self.fallback = until, fallback
        self.seen: list[Seen] = []

    def __call__(self, action: act.Action) -> Any:
        at = self.clock.now()
        answer = self._answer(action)
        self.seen.append(Seen(at, action, answer))
        return answer

    def _answer(self, action: act.Action) -> Any:
        if isinstance(action, act.Patched):
            return True
        if isinstance(action, act.Call):
            script = self.scripts.get(action.activity)
            return script.pop(0) if script else self.fallback(action)
        if isinstance(action, act.TakeLease):
            assert self.leases, "a lease was taken that the script did not end"
            return self.leases.pop(0)
        if isinstance(action, act.WaitLease):
            ended = self.waits.pop(0) if self.waits else False
            if not ended:
                self.clock.advance(action.timeout_s)
            return ended
        if isinstance(action, act.WaitUntil):
            held = self.until(action) if self.until is not None else action.condition()
            if not held:
                assert action.timeout_s is not None, "waits forever on a condition nobody changes"
                self.clock.advance(action.timeout_s)
            return held
        if isinstance(action, act.Sleep):
            self.clock.advance(action.seconds)
            return None
        if isinstance(action, act.Signal):
            return self.signals.pop(0) if self.signals else None
        return None

    # --- what the part asked for ---------------------------------------------------------------

    def actions(self) -> list[act.Action]:
        return [s.action for s in self.seen]

    def calls_of(self, *activities: act.ActivityRef[Any, Any]) -> list[Seen]:
        return [s for s in self.seen if isinstance(s.action, act.Call) and s.action.activity in activities]

    def index(self, pred: Callable[[act.Action], bool]) -> int | None:
        """Where the first action ``pred`` holds for was asked (None: never)."""
        return next((i for i, s in enumerate(self.seen) if pred(s.action)), None)

    def first(self, pred: Callable[[act.Action], bool]) -> int:
        """Where the first action ``pred`` holds for was asked (it must have been)."""
        found = self.index(pred)
        assert found is not None, "never asked"
        return found

    def first_call(self, activity: act.ActivityRef[Any, Any]) -> int:
        return self.first(lambda a: isinstance(a, act.Call) and a.activity is activity)

    def writes(self) -> list[tuple[int, Claim]]:
        """Every status write (they ride with an event), where it was asked and the claim fencing it."""
        return [
            (i, s.action.request.patch.claim)
            for i, s in enumerate(self.seen)
            if isinstance(s.action, act.Call)
            and s.action.activity is act.Activity.RECORD
            and s.action.request.patch is not None
        ]

    def events(self, kind: Any) -> list[Any]:
        """The events of ``kind`` written (each in one record, with or without a status write)."""
        return [
            s.action.request.event
            for s in self.seen
            if isinstance(s.action, act.Call)
            and s.action.activity is act.Activity.RECORD
            and s.action.request.event.event == kind
        ]

    def signals_sent(self, name: str) -> list[tuple[int, act.Signal]]:
        return [
            (i, s.action)
            for i, s in enumerate(self.seen)
            if isinstance(s.action, act.Signal) and s.action.signal == name
        ]


def standby(
    host: str = "host-b",
    *,
    priority: int = 0,
    warm: bool = False,
    warm_ready: bool = False,
    warm_error: str | None = None,
    start_retry_at: str | None = None,
) -> StandbyRecord:
    """Another live standby of the exchange."""
    return StandbyRecord(
        exchange_id=1,
        exchange_name="coinbase",
        host=host,
        hostname=f"{host}.lan",
        instance_id=f"sb-{host}",
        workflow_id=f"instance-coinbase-{host}",
        priority=priority,
        registered_at="2026-12-01T00:00:00Z",
        last_heartbeat="2026-12-01T00:00:00Z",
        ttl_ms=45_000,
        heartbeat_interval_ms=15_000,
        warm=warm,
        warm_ready=warm_ready,
        warm_error=warm_error,
        start_retry_at=start_retry_at,
    )


@dataclass(frozen=True)
class Queued:
    """A command a part queued: first (ahead of the operator's) and internal (nobody waits)?"""

    command: Command
    first: bool = False
    internal: bool = False
    confirm_to: str | None = None
    promoted: bool = False
    #: When it was queued (the world's clock).
    at: datetime | None = None


@dataclass
class Parts:
    """The parts a part is handed, and what it asked of the core itself (the hooks, recorded)."""

    ctx: Context
    host: Host
    status: Status
    leases: Leases
    standbys: Standbys
    warm: Warm
    enqueued: list[Queued] = field(default_factory=list)
    became_standby: int = 0
    ended: list[str] = field(default_factory=list)

    def enqueue(self, command: Command, **how: Any) -> Ticket:
        """The core's queue, as far as a part can see it: what was asked, and how."""
        self.enqueued.append(Queued(command, **how, at=self.ctx.clock.now()))
        return Ticket(number=-1, command=command, confirm_to=how.get("confirm_to"))

    def become_standby(self, *, required: bool = False) -> act.Proc:
        """As the core does: give up the claim, forget the warm-up, wait here as a standby."""
        self.became_standby += 1
        self.leases.drop_claim()
        self.warm.forget_task()
        yield from self.standbys.become(required=required)

    def end(self, outcome: str) -> None:
        self.ended.append(outcome)

    def hooks(self) -> dict[str, Any]:
        return {"enqueue": self.enqueue, "become_standby": self.become_standby, "end": self.end}

    def shared(self) -> dict[str, Any]:
        return {"leases": self.leases, "status": self.status, "standbys": self.standbys}


def parts(
    ctx: Context,
    *,
    state: State = State.ACTIVE,
    claim: Claim | None = CLAIM,
    leasing: bool = True,
    highest_epoch: int = CLAIM.epoch,
    role: Role = Role.ACTIVE,
    standby_id: str | None = None,
    warm_here: bool = False,
    task: WarmUp | None = None,
    promotions: tuple[Any, ...] = (),
    start_failures: int = 0,
    start_retry_at: datetime | None = None,
) -> Parts:
    """The shared parts, wired as the instance core wires them, in the given state."""
    host = Host(ctx)
    box: dict[str, Any] = {}
    status = Status(
        ctx,
        host,
        StatusState(state=state, connected_at=T0 if state is State.ACTIVE else None),
        claim=lambda: box["leases"].claim,
        actor=lambda: None,
        details=lambda: act.Details("-"),
    )
    leases = Leases(
        ctx,
        host,
        LeaseState(claim=claim, highest_epoch=highest_epoch, leasing=leasing),
        record_for=status.record_for,
        event=status.event,
        refused=lambda refusal: None,
    )
    box["leases"] = leases
    standbys = Standbys(
        ctx,
        StandbyState(
            role=role,
            standby_id=standby_id,
            visible=standby_id is not None,
            promotions=promotions,
            start_failures=start_failures,
            start_retry_at=start_retry_at,
        ),
        event=status.event,
        highest_epoch=lambda: leases.highest_epoch,
        state=lambda: status.state,
    )
    warm = Warm(
        ctx,
        host,
        WarmState(warm_here=warm_here, task=task),
        role=lambda: standbys.role,
        own_claim=lambda: standbys.own_claim,
        claim=lambda: leases.claim,
        symbols=status.symbols,
        event=status.event,
    )
    return Parts(ctx, host, status, leases, standbys, warm)
