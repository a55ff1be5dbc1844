"""The decision core, exhaustively, with no server: every path, a fault at every step, every resume.

A small simulated world answers the core's actions (``perseus.core.actions``): a Redis that fences
claims and status writes, a host whose connector steps succeed, leases that end when the script says,
standbys that answer. The world is simulated on purpose — these tests are about the decisions; the
real servers are exercised by the integration, path and chaos tests. Each scenario is a script of
what happens outside (commands, a lease that ends and why, a promotion, a handoff's answer, the host
shutting down, a long history). For each one:

* the clean run must end as the scenario says;
* the run is repeated with a failure injected at each of its activity calls in turn (a host with no
  worker, an application error, a heartbeat timeout), and every run must keep the invariants: it
  settles, never walks an illegal transition, never lets a connector act without holding the claim,
  never writes status under a claim Redis does not hold, answers every command, and ends with
  nothing held that it does not know about;
* the run is fed its own answers again and must ask for exactly the same actions (what a workflow
  replaying its history does after a crash), and it is continued as new at each point the loop
  waits, from nothing but the carried state, and must end where the uninterrupted run ended.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.decisions import Step
from perseus.core.lifecycle import Command, Role, State
from perseus.core.loop import InstanceCore
from perseus.core.state import Ending, Ticket, ending_of
from perseus.errors import StepFailed
from perseus.models import (
    ClaimProbe,
    ClaimResult,
    ConnectorPreflight,
    ConnectorReport,
    ConnectorSpec,
    Exchange,
    HandoffConfirm,
    HandoffRequest,
    HostClaimRequest,
    HostPresence,
    HostRestarted,
    Identity,
    InstanceInput,
    LeaseOutcome,
    PatchResult,
    PromoteRequest,
    Recorded,
    RecordRequest,
    Resolved,
    StandbyList,
    StandbyOutcome,
    StandbyRecord,
)
from perseus.timing import INSTANCE_HISTORY_LIMIT

pytestmark = pytest.mark.unit

HOST, OTHER = "host-a", "host-b"
ACTING = {act.Activity.CONNECTOR_PREPARE, act.Activity.CONNECTOR_CONNECT, act.Activity.CONNECTOR_ACTIVATE}
FAILURES = [
    act.Failure(message="timed out (SCHEDULE_TO_START)", timeout="SCHEDULE_TO_START"),
    act.Failure(message="connector not ready", error_type="ConnectorNotReady"),
    act.Failure(message="timed out (HEARTBEAT)", timeout="HEARTBEAT"),
]


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 30, tzinfo=UTC)
        self.ids = itertools.count(1)

    def now(self) -> datetime:
        return self.t

    def uuid4(self) -> str:
        return f"id-{next(self.ids)}"


# --- what happens outside, as a scenario's script says ---------------------------------------------


@dataclass(frozen=True)
class Cmd:
    command: Command


@dataclass(frozen=True)
class Handoff:
    to_host: str
    ok: bool = True
    shutdown: bool = False


@dataclass(frozen=True)
class LeaseEnds:
    """The lease (or watch) ends with this result or failure; ``renewed_ms_ago`` is what a claim
    probe then finds (None: the key is not ours any more)."""

    result: Any
    renewed_ms_ago: int | None = 500


@dataclass(frozen=True)
class Promote:
    confirm_to: str | None = None


@dataclass(frozen=True)
class HostDown:
    pass


@dataclass(frozen=True)
class HostBack:
    """The host's worker started again (``host_restarted``)."""


@dataclass(frozen=True)
class HistoryLong:
    pass


#: One event the loop hears on its own.
Single = Cmd | Handoff | LeaseEnds | Promote | HostDown | HostBack | HistoryLong


@dataclass(frozen=True)
class Together:
    """Two events the loop hears before it picks its next step (both pending at once)."""

    first: Single
    second: Single


Event = Single | Together


SILENT_HOLDER = "host-dead (epoch 3)"


@dataclass
class World:
    """Redis, the host and the other workflows, as far as the core can tell."""

    script: list[Event]
    fail_at: int | None = None
    failure: act.Failure | None = None
    standby: bool = False
    warm: bool = False
    holder: str | None = None
    epoch: int = 0
    calls: int = 0
    lease_end: Any = None
    renewed_ms_ago: int | None = 500
    history_long: bool = False
    handoff_ok: bool = True
    tickets: list[Ticket] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    released_after_failure: bool = False
    #: Our own host's warm standby connector is up and warm.
    warm_child: bool = False
    #: A holder whose key is still there, unrenewed past its deadline: only a claim that asks to
    #: take a lapsed key over gets it.
    silent_holder: str | None = None
    #: The handoff target's host cannot start the connector (its preflight says why).
    cannot_start: str | None = None
    #: The warm target's record says its warm-up failed (why).
    target_warm_error: str | None = None
    #: Our own warm standby's warm-ups that fail before one succeeds.
    warm_fails: int = 0
    #: No other live standby of the exchange.
    alone: bool = False
    #: The exchange is paused (``core.pause``): an automatic claim is refused, the list says so.
    paused: bool = False

    def standbys(self) -> list[StandbyRecord]:
        if self.alone:
            return []
        return [
            StandbyRecord(
                exchange_id=1,
                exchange_name="coinbase",
                host=OTHER,
                hostname=OTHER,
                instance_id="sb-1",
                workflow_id=f"instance-coinbase-{OTHER}",
                registered_at="t",
                last_heartbeat="t",
                ttl_ms=45_000,
                heartbeat_interval_ms=15_000,
                warm=self.warm,
                warm_ready=self.warm and self.target_warm_error is None,
                warm_error=self.target_warm_error,
                warm_retry_at="2026-11-30T00:00:40+00:00" if self.target_warm_error else None,
            )
        ]

    def answer(self, core: InstanceCore, action: act.Action, clock: Clock) -> Any:
        match action:
            case act.Call():
                self.calls += 1
                if self.calls == self.fail_at:
                    assert self.failure
                    if action.activity is act.Activity.RELEASE_CLAIM:
                        self.released_after_failure = True
                    return self.failure
                return self.call(core, action)
            case act.StartLease():
                return None
            case act.TakeLease():
                end, self.lease_end = self.lease_end, None
                assert end is not None, "took a lease that had not ended"
                return end
            case act.WaitLease():
                if self.lost(core):  # the re-issued lease's first renewal finds the claim gone
                    self.lease_end = CLAIM_LOST
                    return True
                clock.t += timedelta(seconds=action.timeout_s)
                return False  # the re-issued lease runs: a worker picked it up
            case act.Patched():
                return True  # a run begun on this code takes every patch
            case act.Signal():
                if action.signal == "promote" and isinstance(action.payload, PromoteRequest):
                    if action.payload.confirm_to:
                        self.holder = None  # released by the instance handing over; the target
                        if self.handoff_ok:  # claims it (or could not: the exchange stays free)
                            self.holder, self.epoch = "the-target", self.epoch + 1
                        core.on_handoff_reply(
                            HandoffConfirm(ok=self.handoff_ok, epoch=self.epoch + 1, host=OTHER, detail="x")
                        )
                return None
            case act.Sleep():
                clock.t += timedelta(seconds=action.seconds)
                return None
            case act.WaitUntil():
                met = action.condition() or action.or_handlers_finished
                if not met and action.timeout_s:
                    clock.t += timedelta(seconds=action.timeout_s)
                return met
            case act.WaitForWork():
                return self.next_work(core)
            case act.Undelivered():
                return []
        return None

    def lost(self, core: InstanceCore) -> bool:
        """Whether the core's lease would find its claim gone (the keeper reports it)."""
        claim = core.view().claim
        return core.view().leasing and claim is not None and self.holder != claim.instance_id

    def next_work(self, core: InstanceCore) -> Step | None:
        while True:
            if self.lease_end is None and self.lost(core):
                self.lease_end = CLAIM_LOST
            step = core.next_step(lease_done=self.lease_end is not None, history_long=self.history_long)
            if step is not None or not self.script:
                return step
            self.apply(core, self.script.pop(0))

    def apply(self, core: InstanceCore, event: Event) -> None:
        match event:
            case Cmd():
                self.tickets.append(core.enqueue(event.command))
            case Handoff():
                self.handoff_ok = event.ok
                self.tickets.append(
                    core.enqueue(
                        Command.HANDOFF,
                        handoff=HandoffRequest(to_host=event.to_host, shutdown=event.shutdown),
                    )
                )
            case LeaseEnds():
                self.lease_end, self.renewed_ms_ago = event.result, event.renewed_ms_ago
                if isinstance(event.result, StandbyOutcome) and event.result.warm_lost:
                    self.warm_child = False
                if event.renewed_ms_ago is None:
                    self.holder = "someone-else"
                if isinstance(event.result, StandbyOutcome) and event.result.holder_silent:
                    self.holder = self.silent_holder = SILENT_HOLDER
            case Promote():
                core.on_promote(
                    PromoteRequest(reason="test", min_epoch=self.epoch, confirm_to=event.confirm_to)
                )
            case HostDown():
                core.on_host_shutting_down()
            case HostBack():
                core.on_host_restarted(HostRestarted(host=core.inp.host))
            case HistoryLong():
                self.history_long = True
            case Together():
                self.apply(core, event.first)
                self.apply(core, event.second)

    def call(self, core: InstanceCore, call: act.Call[Any, Any]) -> Any:
        req: Any = call.request
        match call.activity:
            case act.Activity.RESOLVE_INSTANCE:
                return Resolved(
                    exchange=Exchange(id=1, name="coinbase", display_name="Coinbase", is_active=True),
                    admin=None,
                )
            case act.Activity.DETECT_IDENTITY:
                return Identity(hostname=req.host, ip_address="10.0.0.1")
            case act.Activity.HOST_POLLED:
                return HostPresence(polled=False, pollers=0)
            case act.Activity.CLAIM_AND_HOLD:
                request = req.claim
                if self.paused and request.automatic:
                    return ClaimResult(
                        claimed=False, epoch=request.highest_epoch, message="paused", paused_ms=1e6
                    )
                self.epoch = max(self.epoch, request.highest_epoch) + 1
                over = self.holder is not None and self.holder == self.silent_holder and request.take_lapsed
                if self.holder is not None and not over:
                    return ClaimResult(claimed=False, epoch=self.epoch, message="held")
                self.holder = request.status.instance_id
                return ClaimResult(claimed=True, epoch=self.epoch, took_over=SILENT_HOLDER if over else None)
            case act.Activity.RELEASE_CLAIM:
                if self.holder == req.claim.instance_id:
                    self.holder = None
                return PatchResult(applied=True)
            case act.Activity.RECORD:
                patch = req.patch
                if patch is None:
                    return Recorded(stream_id="1-0", patch=None, notify=True)
                fenced = self.holder == patch.claim.instance_id
                return Recorded(stream_id="1-0", patch=PatchResult(applied=fenced), notify=True)
            case act.Activity.LIST_STANDBYS:
                return StandbyList(standbys=self.standbys(), paused=self.paused)
            case act.Activity.PROBE_CLAIM:
                ours = self.holder == req.claim.instance_id and self.renewed_ms_ago is not None
                return ClaimProbe(held_by_us=ours, renewed_ms_ago=self.renewed_ms_ago, holder=self.holder)
            case act.Activity.PUT_STANDBY | act.Activity.DROP_STANDBY:
                return None
            case act.Activity.CONNECTOR_PREFLIGHT:
                return ConnectorPreflight(hostname=OTHER, cannot_start=self.cannot_start)
        # A connector step on our host: one that acts needs the claim (fencing).
        if call.activity in ACTING and req.role is Role.ACTIVE and self.holder != req.claim.instance_id:
            self.violations.append(f"{call.activity} without the claim (holder {self.holder})")
        if call.activity is act.Activity.CONNECTOR_WARM_UP and req.role is Role.STANDBY:
            if self.warm_fails:
                self.warm_fails -= 1
                return act.Failure(message="not ready within 30s; no output", error_type="ConnectorNotReady")
            self.warm_child = True
        if call.activity is act.Activity.CONNECTOR_ACTIVATE and not self.warm_child:
            return act.Failure(message="no warm connector here", error_type="ConnectorGone")
        return ConnectorReport(symbol_count=5, running=True, warm_ready=self.warm_child)


# --- driving the core ------------------------------------------------------------------------------


@dataclass
class Run:
    actions: list[act.Action]
    answers: list[Any]
    outcome: str | None
    continued: InstanceInput | None
    core: InstanceCore
    world: World
    #: At each point the loop waited for work: the action's index, what a continue-as-new would
    #: carry, and the world then (for the resume test).
    waits: list[tuple[int, InstanceInput, World]]


def drive(core: InstanceCore, world: World, clock: Clock, *, replay: list[Any] | None = None) -> Run:
    """Run the core to its end (or idle) against the world; ``replay`` answers from a recording."""
    actions: list[act.Action] = []
    answers: list[Any] = []
    waits: list[tuple[int, InstanceInput, World]] = []
    procs: list[Iterator[act.Action]] = []
    main = core.run()
    answer: Any = None
    proc: Any = main
    while len(actions) < 5000:
        try:
            action = proc.throw(StepFailed(answer)) if isinstance(answer, act.Failure) else proc.send(answer)
        except StopIteration as stop:
            if proc is main:
                return Run(actions, answers, stop.value, None, core, world, waits)
            proc, answer = procs.pop(), None  # a warm-up ran to its end: back to the main procedure
            continue
        actions.append(action)
        if isinstance(action, act.WaitForWork) and core.view().resolved and core.view().hostname:
            carried = core.inp.model_copy(update={"carried": core.carried([])})
            waits.append(
                (
                    len(actions),
                    carried,
                    World(
                        list(world.script),
                        holder=world.holder,
                        epoch=world.epoch,
                        warm=world.warm,
                        cannot_start=world.cannot_start,
                        target_warm_error=world.target_warm_error,
                        warm_fails=world.warm_fails,
                        paused=world.paused,
                        alone=world.alone,
                    ),
                )
            )
        if isinstance(action, act.ContinueAsNew):
            return Run(actions, answers, None, action.input, core, world, waits)
        if isinstance(action, act.SpawnWarmUp):  # run it through at once, then carry on
            procs.append(proc)
            proc, answer = action.procedure, None
            answers.append(None)
            continue
        answer = world.answer(core, action, clock)
        if replay is not None:
            assert answer == replay[len(answers)], (action, answer, replay[len(answers)])
        answers.append(answer)
        if isinstance(action, act.WaitForWork) and answer is None:
            return Run(actions, answers, None, None, core, world, waits)  # idle: nothing left to do
    raise AssertionError(f"the core did not settle: {[type(a).__name__ for a in actions[-20:]]}")


def new_core(
    *, standby: bool = False, warm: bool = False, carried: InstanceInput | None = None
) -> tuple[InstanceCore, Clock]:
    clock = Clock()
    inp = carried or InstanceInput(
        exchange="coinbase",
        host=HOST,
        standby=standby,
        connector=ConnectorSpec(warm=warm) if warm else ConnectorSpec(),
    )
    return InstanceCore(inp, f"instance-coinbase-{HOST}", clock), clock


def shape(action: act.Action) -> tuple[Any, ...]:
    """An action as comparable values (callables and generators by kind only)."""
    if not is_dataclass(action):
        return (action,)
    parts: list[Any] = [type(action).__name__]
    for f in fields(action):
        value = getattr(action, f.name)
        if callable(value) or hasattr(value, "send"):
            continue
        parts.append(value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
    return tuple(parts)


# --- the scenarios ---------------------------------------------------------------------------------

CLAIM_LOST = act.Failure(message="claim held by another instance", error_type="ClaimLost")
CONNECTOR_DIED = act.Failure(message="connector exited", error_type="ConnectorFailed")
KEY_VANISHED = act.Failure(message="claim key missing", error_type="ClaimMissing")
SILENT = act.Failure(message="timed out (HEARTBEAT)", timeout="HEARTBEAT")
TERM_ENDED = LeaseOutcome(renewals=3, last_renewed=None)
UNHEALTHY_FAILOVER = act.Failure(message="health check failed", error_type="ConnectorFailover")


@dataclass(frozen=True)
class Scenario:
    name: str
    script: tuple[Event, ...]
    #: Where the clean run ends: (state, role, still holding the claim, outcome prefix or None).
    ends: tuple[State, Role, bool, str | None]
    standby: bool = False
    warm: bool = False
    #: The world's knobs (World's fields) this scenario sets.
    knobs: tuple[tuple[str, Any], ...] = ()


SCENARIOS = [
    Scenario(
        "start-stop-shutdown",
        (Cmd(Command.START), Cmd(Command.STOP), Cmd(Command.START), Cmd(Command.SHUTDOWN)),
        (State.STOPPED, Role.ACTIVE, False, "shut down"),
    ),
    Scenario(
        "term-ends-and-renews",
        (Cmd(Command.START), LeaseEnds(TERM_ENDED)),
        (State.ACTIVE, Role.ACTIVE, True, None),
    ),
    Scenario(
        "connector-dies-alone",
        (Cmd(Command.START), LeaseEnds(CONNECTOR_DIED), Cmd(Command.START)),
        (State.ACTIVE, Role.ACTIVE, True, None),
        knobs=(("alone", True),),
    ),
    Scenario(
        # No restart in the spec: a live standby takes the exchange (issue 24: a claim is held only
        # by an instance that runs its connector); this one waits as a standby.
        "connector-dies-standby-takes-over",
        (Cmd(Command.START), LeaseEnds(CONNECTOR_DIED)),
        (State.IDLE, Role.STANDBY, False, None),
    ),
    Scenario(
        "host-silent-but-renewing",
        (Cmd(Command.START), LeaseEnds(SILENT, renewed_ms_ago=500)),
        (State.ACTIVE, Role.ACTIVE, True, None),
    ),
    Scenario(
        "host-silent-and-gone",
        (Cmd(Command.START), LeaseEnds(SILENT, renewed_ms_ago=None)),
        (State.IDLE, Role.ACTIVE, False, "instance lost"),
    ),
    Scenario(
        "key-vanished-reclaimed",
        (Cmd(Command.START), LeaseEnds(KEY_VANISHED)),
        (State.ACTIVE, Role.ACTIVE, True, None),
    ),
    Scenario(
        "handoff-confirmed", (Cmd(Command.START), Handoff(OTHER)), (State.IDLE, Role.STANDBY, False, None)
    ),
    Scenario(
        "handoff-and-shut-down",
        (Cmd(Command.START), Handoff(OTHER, shutdown=True)),
        (State.IDLE, Role.ACTIVE, False, "handed over"),
    ),
    Scenario(
        "handoff-refused-taken-back",
        (Cmd(Command.START), Handoff(OTHER, ok=False)),
        (State.ACTIVE, Role.ACTIVE, True, None),
    ),
    Scenario(
        "host-shuts-down", (Cmd(Command.START), HostDown()), (State.STOPPED, Role.ACTIVE, False, "released")
    ),
    Scenario("history-long", (Cmd(Command.START), HistoryLong()), (State.ACTIVE, Role.ACTIVE, True, None)),
    Scenario(
        "standby-sees-vacancy",
        (LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=True)),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
    ),
    Scenario(
        "standby-claims-over-silent-holder",
        (LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=True, holder_silent=True)),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
    ),
    Scenario("standby-promoted-cold", (Promote(),), (State.ACTIVE, Role.ACTIVE, True, None), standby=True),
    Scenario(
        "standby-promoted-for-handoff",
        (Promote(confirm_to="instance-coinbase-host-b"),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
    ),
    Scenario(
        "warm-standby-promoted",
        (Promote(),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
    ),
    Scenario(
        "standby-host-restarted-watches-again",
        (HostBack(), Promote()),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
    ),
    Scenario(
        "standby-host-restarted-and-promoted-at-once",
        (Together(HostBack(), Promote()),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
    ),
    Scenario(
        "standby-host-restarted-and-its-watch-sees-a-vacancy",
        (Together(HostBack(), LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=True))),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
    ),
    Scenario(
        "active-host-restarted-reattaches",
        (Cmd(Command.START), HostBack()),
        (State.ACTIVE, Role.ACTIVE, True, None),
    ),
    Scenario(
        "warm-connector-lost-and-warmed-again",
        (LeaseEnds(StandbyOutcome(vacant=False, warm_lost=True)), Promote()),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
    ),
    Scenario(
        "warm-standby-shut-down",
        (Cmd(Command.SHUTDOWN),),
        (State.IDLE, Role.STANDBY, False, "shut down"),
        standby=True,
        warm=True,
    ),
    Scenario(
        "warm-handoff",
        (Cmd(Command.START), Handoff(OTHER)),
        (State.IDLE, Role.STANDBY, False, None),
        warm=True,
    ),
    Scenario(
        "handoff-to-unready-warm-target-refused",
        (Cmd(Command.START), Handoff(OTHER)),
        (State.ACTIVE, Role.ACTIVE, True, None),
        warm=True,
        knobs=(("target_warm_error", "not ready within 30s; last output: loading"),),
    ),
    Scenario(
        "handoff-to-host-that-cannot-start-refused",
        (Cmd(Command.START), Handoff(OTHER)),
        (State.ACTIVE, Role.ACTIVE, True, None),
        knobs=(("cannot_start", "the connector's executable '/opt/x' does not exist"),),
    ),
    Scenario(
        "unhealthy-steps-aside",
        (Cmd(Command.START), LeaseEnds(UNHEALTHY_FAILOVER)),
        (State.IDLE, Role.STANDBY, False, None),
    ),
    Scenario(
        "unhealthy-while-paused-restarts-in-place",
        (Cmd(Command.START), LeaseEnds(UNHEALTHY_FAILOVER)),
        (State.ACTIVE, Role.ACTIVE, True, None),
        knobs=(("paused", True),),
    ),
    Scenario(
        "standby-finds-vacancy-while-paused",
        (LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=True)),),
        (State.IDLE, Role.STANDBY, False, None),
        standby=True,
        knobs=(("paused", True),),
    ),
    Scenario(
        "warm-up-fails-and-is-retried",
        (Promote(),),
        (State.ACTIVE, Role.ACTIVE, True, None),
        standby=True,
        warm=True,
        knobs=(("warm_fails", 3),),
    ),
]
#: Handoffs refused before anything stops: the target cannot take over, so the command fails.
REFUSED_HANDOFFS = {"handoff-to-unready-warm-target-refused", "handoff-to-host-that-cannot-start-refused"}
SCENARIO_IDS = [sc.name for sc in SCENARIOS]


def play(sc: Scenario, *, fail_at: int | None = None, failure: act.Failure | None = None) -> Run:
    core, clock = new_core(standby=sc.standby, warm=sc.warm)
    world = World(list(sc.script), fail_at=fail_at, failure=failure, warm=sc.warm, **dict(sc.knobs))
    return drive(core, world, clock)


def check_invariants(run: Run) -> None:
    world, s = run.world, run.core.view()
    assert not world.violations, world.violations
    # Every command a caller sent has its answer (or travels on with a run that continued as new).
    for ticket in world.tickets:
        answered = ticket.number in s.results
        assert answered or run.continued is not None or s.outcome is None and ticket in s.queue, ticket
    if run.outcome is not None:
        # A run that ended holds nothing: its claim is released (or was never Redis's to begin with).
        ours = s.claim is not None and world.holder == s.claim.instance_id
        assert not ours or world.released_after_failure, (run.outcome, world.holder)
    elif s.role is Role.ACTIVE and run.continued is None and s.registration_error is None:
        # An active instance at rest is idle or active, and holds exactly the claim it thinks it holds.
        assert s.state in (State.IDLE, State.ACTIVE), s.state
        assert s.claim is not None and world.holder == s.claim.instance_id, (s.claim, world.holder)


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
def test_a_clean_run_ends_as_the_scenario_says(sc: Scenario) -> None:
    run = play(sc)
    check_invariants(run)
    state, role, holding, outcome = sc.ends
    s = run.core.view()
    if run.continued is not None:
        assert sc.name == "history-long"
        carried = run.continued.carried
        assert carried and carried.state is state and carried.claim is not None
        return
    assert (s.state, s.role) == (state, role)
    assert (s.claim is not None and run.world.holder == s.claim.instance_id) is holding
    if outcome is None:
        assert run.outcome is None and s.outcome is None
    else:
        assert run.outcome is not None and run.outcome.startswith(outcome), run.outcome
    # The operator sees each decision of the loop in the Web UI's current details.
    details = [a.text for a in run.actions if isinstance(a, act.Details)]
    assert details and "**last decision**: " in details[-1] and "**last decision**: -" not in details[-1]
    for ticket in run.world.tickets:
        result = s.results[ticket.number]
        if sc.name != "handoff-refused-taken-back" and sc.name not in REFUSED_HANDOFFS:
            assert result.error is None, result


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
def test_a_failure_at_any_step_keeps_the_invariants(sc: Scenario) -> None:
    clean = play(sc)
    total = sum(isinstance(a, act.Call) for a in clean.actions)
    assert total >= 3
    for at in range(1, total + 1):
        for failure in FAILURES:
            run = play(sc, fail_at=at, failure=failure)
            try:
                check_invariants(run)
            except AssertionError as exc:
                raise AssertionError(f"{sc.name}: {failure.message} at call {at}: {exc}") from exc


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.name for sc in SCENARIOS])
def test_fed_its_own_answers_the_core_asks_for_the_same_actions(sc: Scenario) -> None:
    """What a workflow does when its worker crashed between any two actions: it replays its history
    (the answers so far) and must ask for exactly what it asked before, then carry on."""
    for at in (None, 2, 5):
        run = play(sc, fail_at=at, failure=FAILURES[1] if at else None)
        core, clock = new_core(standby=sc.standby, warm=sc.warm)
        world = World(
            list(sc.script), fail_at=at, failure=FAILURES[1] if at else None, warm=sc.warm, **dict(sc.knobs)
        )
        again = drive(core, world, clock, replay=run.answers)
        assert [shape(a) for a in again.actions] == [shape(a) for a in run.actions]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.name for sc in SCENARIOS])
def test_continued_as_new_at_any_wait_it_ends_where_it_would_have(sc: Scenario) -> None:
    """The carried state is the whole memory: a run continued as new wherever the loop waits, given
    only that, ends in the same state, role and claim as the run that went on."""
    whole = play(sc)
    assert whole.waits
    for at, carried, world in whole.waits:
        resumed, clock = new_core(carried=carried)
        after = drive(resumed, world, clock)
        if whole.continued is not None:
            assert after.continued is not None, at
            continue
        s, w = after.core.view(), whole.core.view()
        assert (s.state, s.role, s.outcome is None) == (w.state, w.role, w.outcome is None), at
        assert (s.claim is not None and world.holder == s.claim.instance_id) == (
            w.claim is not None and whole.world.holder == w.claim.instance_id
        ), at
        check_invariants(after)


def test_the_next_run_brings_an_older_releases_history_limit_down_to_todays() -> None:
    """Replaying a run on a new worker costs its whole history: a run registered under an older
    release (2,000 events then) takes today's lower limit with its next run; a lower one stays."""
    _, resumed, _ = play(SCENARIOS[0]).waits[0]
    carried = resumed.carried
    assert carried is not None
    assert InstanceInput(exchange="x", host="h").history_limit == INSTANCE_HISTORY_LIMIT
    older = InstanceInput(exchange="x", host="h", history_limit=2000, start_immediately=True)
    nxt = older.continued(carried)
    assert (nxt.history_limit, nxt.carried, nxt.start_immediately) == (INSTANCE_HISTORY_LIMIT, carried, False)
    assert older.model_copy(update={"history_limit": 20}).continued(carried).history_limit == 20


def test_a_standby_whose_host_restarted_watches_and_warms_up_again_from_the_new_worker() -> None:
    sc = next(x for x in SCENARIOS if x.name == "standby-host-restarted-watches-again")
    run = play(sc)
    kinds = [type(a).__name__ for a in run.actions if isinstance(a, act.StartLease | act.CancelLease)]
    # The watch that ran on the old process is cancelled (not waited for: it cannot answer) and
    # dispatched again; then the promotion cancels that one.
    assert kinds[:3] == ["StartLease", "CancelLease", "StartLease"], kinds
    watches = [a for a in run.actions if isinstance(a, act.StartLease)]
    assert {w.activity for w in watches[:2]} == {act.Activity.HOLD_STANDBY}
    # Its warm connector died with the old process too: warmed up again on the new one.
    assert sum(isinstance(a, act.SpawnWarmUp) for a in run.actions) == 2
    assert not run.core.st.host_restarted


@pytest.mark.parametrize(
    "name",
    ["standby-host-restarted-and-promoted-at-once", "standby-host-restarted-and-its-watch-sees-a-vacancy"],
)
def test_a_promotion_issued_after_its_host_restarted_settles_the_restart_itself(name: str) -> None:
    """The restart was heard before the promotion (a promote signal, or the watch's own vacancy,
    goes first): the promotion's lease and connector run on the new worker, so the restart is not
    judged again after it — no healthy lease cancelled, no wait for a pickup window before the
    exchange has its connector."""
    sc = next(x for x in SCENARIOS if x.name == name)
    run = play(sc)
    claimed = next(
        i
        for i, a in enumerate(run.actions)
        if isinstance(a, act.Call) and a.activity is act.Activity.CLAIM_AND_HOLD
    )
    after = run.actions[claimed:]
    assert not any(isinstance(a, act.CancelLease) for a in after), [type(a).__name__ for a in after]
    assert not any(isinstance(a, act.Call) and a.activity is act.Activity.PROBE_CLAIM for a in after)
    assert any(isinstance(a, act.Patched) for a in after)
    assert not run.core.st.host_restarted
    assert run.core.view().state is State.ACTIVE


def test_a_holder_whose_host_restarted_is_judged_by_redis_at_once() -> None:
    """Its lease died with the old process: cancelled, Redis asked at once, and — the claim still
    renewed, as the world answers — the lease dispatched again to the new worker, with no event."""
    sc = next(x for x in SCENARIOS if x.name == "active-host-restarted-reattaches")
    run = play(sc)
    tail = [a for a in run.actions if isinstance(a, act.StartLease | act.CancelLease | act.Call)]
    kinds = [a.activity.value if isinstance(a, act.Call) else type(a).__name__ for a in tail]
    cancelled = kinds.index("CancelLease")
    assert kinds[cancelled : cancelled + 3] == ["CancelLease", "StartLease", "probe_claim"], kinds
    assert run.outcome is None and run.core.view().claim is not None


def test_a_warm_connector_lost_while_waiting_is_warmed_again_and_promoted_warm() -> None:
    sc = next(x for x in SCENARIOS if x.name == "warm-connector-lost-and-warmed-again")
    run = play(sc)
    spawned = [i for i, a in enumerate(run.actions) if isinstance(a, act.SpawnWarmUp)]
    assert len(spawned) == 2  # the first warm-up, and one after the loss
    calls = [a for a in run.actions if isinstance(a, act.Call)]
    recorded = [a.request for a in calls if a.activity is act.Activity.RECORD]
    assert any("stopped while waiting" in (r.event.error or "") for r in recorded)
    # The promotion activated the connector warmed again; nothing started cold after it.
    steps = [a.activity for a in calls if a.activity.value.startswith("connector_")]
    assert steps[-1] is act.Activity.CONNECTOR_ACTIVATE
    assert steps.count(act.Activity.CONNECTOR_PREPARE) == 2  # both warm-ups, as a standby


@pytest.mark.parametrize(
    ("result", "ending"),
    [
        ("shut down", Ending.SHUT_DOWN),
        ("released: the worker on host-a shut down", Ending.RELEASED),
        ("instance lost: host host-a stopped heartbeating", Ending.INSTANCE_LOST),
        ("instance lost", Ending.INSTANCE_LOST),
        ("standby lost: host host-a stopped heartbeating (timed out)", Ending.STANDBY_LOST),
        ("handed over to host-b", Ending.HANDED_OVER),
        ("exchange already claimed", None),
        ("shut downward", None),
        ("", None),
    ],
)
def test_a_run_result_names_its_ending(result: str, ending: Ending | None) -> None:
    assert ending_of(result) is ending


def test_every_ending_the_core_writes_is_read_back() -> None:
    """The words enrolment relies on (a lost instance is enrolled again) are the core's own."""
    endings = {ending_of(run.outcome) for sc in SCENARIOS if (run := play(sc)).outcome is not None}
    assert {Ending.SHUT_DOWN, Ending.RELEASED, Ending.INSTANCE_LOST, Ending.HANDED_OVER} <= endings


def _promotions(run: Run) -> list[act.Signal]:
    return [a for a in run.actions if isinstance(a, act.Signal) and a.signal == "promote"]


def test_a_graceful_release_wakes_the_best_standby_after_the_key_is_gone() -> None:
    """The host's worker stops: the connector stops, the key is released, then the best standby is
    told — so it claims at once instead of finding a vacancy that proves nothing and waiting."""
    sc = next(x for x in SCENARIOS if x.name == "host-shuts-down")
    run = play(sc)
    (woken,) = _promotions(run)
    assert woken.workflow_id == f"instance-coinbase-{OTHER}"
    calls = [a for a in run.actions if isinstance(a, act.Call | act.Signal)]
    released = next(
        i for i, a in enumerate(calls) if getattr(a, "activity", None) is act.Activity.RELEASE_CLAIM
    )
    assert calls.index(woken) > released
    assert run.world.holder is None


def test_a_graceful_release_whose_connector_did_not_stop_wakes_nobody() -> None:
    """A disconnect that failed leaves a connector that may still act: no standby may act at once
    (it finds the vacancy itself and waits the old renew deadline out)."""
    sc = next(x for x in SCENARIOS if x.name == "host-shuts-down")
    clean = play(sc)
    calls = [a for a in clean.actions if isinstance(a, act.Call)]
    at = 1 + max(i for i, a in enumerate(calls) if a.activity is act.Activity.CONNECTOR_DISCONNECT)
    failed = play(sc, fail_at=at, failure=FAILURES[0])
    assert not _promotions(failed)


@pytest.mark.parametrize("name", sorted(REFUSED_HANDOFFS))
def test_a_handoff_to_a_target_that_is_not_ready_is_refused_before_anything_stops(name: str) -> None:
    sc = next(x for x in SCENARIOS if x.name == name)
    run = play(sc)
    handoff = run.core.view().results[run.world.tickets[-1].number]
    reason = dict(sc.knobs).get("target_warm_error") or dict(sc.knobs)["cannot_start"]
    assert handoff.error is not None and reason in handoff.error and "nothing changed" in handoff.error
    assert handoff.transitions == [] and run.core.view().state is State.ACTIVE
    # Nothing was stopped, released or signalled: the connector and the claim stayed as they were.
    after = run.actions[
        next(
            i
            for i, a in enumerate(run.actions)
            if isinstance(a, act.Call) and a.activity is act.Activity.CONNECTOR_PREFLIGHT
        ) :
    ]
    calls = [a.activity for a in after if isinstance(a, act.Call)]
    assert act.Activity.CONNECTOR_DISCONNECT not in calls and act.Activity.RELEASE_CLAIM not in calls
    assert not any(isinstance(a, act.Signal) for a in after)
    assert run.world.holder == run.core.view().claim.instance_id  # type: ignore[union-attr]
    recorded = [a.request for a in after if isinstance(a, act.Call) and isinstance(a.request, RecordRequest)]
    assert any(
        (r.event.detail or "").startswith("aborted: ") and reason in (r.event.detail or "") for r in recorded
    )
    # The warm target's own retry time is part of the reason.
    if name == "handoff-to-unready-warm-target-refused":
        assert "tries again in" in handoff.error


def test_a_failed_warm_up_is_retried_with_a_doubling_backoff_and_then_promoted_warm() -> None:
    sc = next(x for x in SCENARIOS if x.name == "warm-up-fails-and-is-retried")
    run = play(sc)
    sleeps = [a.seconds for a in run.actions if isinstance(a, act.Sleep)]
    assert sleeps == [5.0, 10.0, 20.0]
    calls = [a for a in run.actions if isinstance(a, act.Call)]
    attempts = [a.request.warm_attempt for a in calls if a.activity is act.Activity.CONNECTOR_PREPARE]
    assert attempts == [1, 2, 3, 4]
    errors = [
        a.request.event.error for a in calls if a.activity is act.Activity.RECORD and a.request.event.error
    ]
    assert [e.rsplit("; ", 1)[-1] for e in errors] == [
        "trying again in 5s",
        "trying again in 10s",
        "trying again in 20s",
    ]
    assert all("no output" in e for e in errors)  # the child's last output travels with the reason
    # Warm in the end: the promotion activated it instead of starting cold.
    steps = [a.activity for a in calls if a.activity.value.startswith("connector_")]
    assert steps[-1] is act.Activity.CONNECTOR_ACTIVATE


CANNOT_START = act.Failure(
    message="cannot start the coinbase connector: no such file", error_type="ConnectorFailed"
)
PROMOTED_COLD = Scenario(
    "standby-promoted-cold", (Promote(),), (State.ACTIVE, Role.ACTIVE, True, None), standby=True
)


def _first_prepare(run: Run) -> int:
    """The number (1-based, as World.fail_at counts) of the promoted start's connector_prepare call."""
    calls = [a for a in run.actions if isinstance(a, act.Call)]
    return 1 + next(i for i, a in enumerate(calls) if a.activity is act.Activity.CONNECTOR_PREPARE)


def test_a_promotion_whose_connector_cannot_start_hands_the_exchange_to_the_next_standby() -> None:
    """A claim is held only by an instance that runs its connector: the failed host releases, wakes
    the next standby, and waits as a standby that goes behind the others for a backoff."""
    at = _first_prepare(play(PROMOTED_COLD))
    run = play(PROMOTED_COLD, fail_at=at, failure=CANNOT_START)
    check_invariants(run)
    s = run.core.view()
    assert (s.role, s.state, s.claim) == (Role.STANDBY, State.IDLE, None)
    assert run.world.holder is None  # released
    calls = [a for a in run.actions if isinstance(a, act.Call | act.Signal)]
    release = next(
        i for i, a in enumerate(calls) if getattr(a, "activity", None) is act.Activity.RELEASE_CLAIM
    )
    (woken,) = _promotions(run)
    assert calls.index(woken) > release and woken.workflow_id == f"instance-coinbase-{OTHER}"
    assert isinstance(woken.payload, PromoteRequest) and woken.payload.act_after_s == 0.0
    assert s.start_failures == 1 and s.start_error and "no such file" in s.start_error
    # The standby record it waits under says why and until when it goes behind the others.
    records = [
        a.request for a in run.actions if isinstance(a, act.Call) and a.activity is act.Activity.PUT_STANDBY
    ]
    assert records and records[-1].start_error == s.start_error
    assert records[-1].start_retry_at is not None
    errors = [
        a.request.event.error
        for a in run.actions
        if isinstance(a, act.Call) and a.activity is act.Activity.RECORD and a.request.event.error
    ]
    assert any("released the exchange for the next standby" in e for e in errors), errors


def test_alone_a_promotion_whose_connector_cannot_start_tries_again_after_a_backoff() -> None:
    at = _first_prepare(play(PROMOTED_COLD))
    core, clock = new_core(standby=True)
    world = World([Promote()], fail_at=at, failure=CANNOT_START, alone=True)
    run = drive(core, world, clock)
    check_invariants(run)
    waits = [a for a in run.actions if isinstance(a, act.WaitUntil) and a.timeout_s == 5.0]
    assert waits, "no backoff before the second start"
    prepares = [
        a for a in run.actions if isinstance(a, act.Call) and a.activity is act.Activity.CONNECTOR_PREPARE
    ]
    assert len(prepares) == 2
    assert (run.core.view().role, run.core.view().state) == (Role.ACTIVE, State.ACTIVE)
    assert (
        run.core.view().start_failures == 0 and run.core.view().start_retry_at is None
    )  # forgotten once it ran
    assert not _promotions(run)


def test_a_shutdown_of_the_active_instance_wakes_the_best_standby_after_releasing() -> None:
    sc = next(x for x in SCENARIOS if x.name == "start-stop-shutdown")
    run = play(sc)
    (woken,) = _promotions(run)
    calls = [a for a in run.actions if isinstance(a, act.Call | act.Signal)]
    released = max(
        i for i, a in enumerate(calls) if getattr(a, "activity", None) is act.Activity.RELEASE_CLAIM
    )
    assert calls.index(woken) > released and woken.workflow_id == f"instance-coinbase-{OTHER}"


@dataclass
class HolderReleasesDuringTheWait(World):
    """The holder whose key our watch saw vanish wakes us while we wait out its renew deadline."""

    woken: bool = False

    def answer(self, core: InstanceCore, action: act.Action, clock: Clock) -> Any:
        if isinstance(action, act.WaitUntil) and action.timeout_s and not self.woken:
            self.woken = True
            core.on_promote(PromoteRequest(reason="released: its worker shut down", min_epoch=3))
        return super().answer(core, action, clock)


def test_a_standby_waiting_out_a_vanished_keys_deadline_acts_once_its_holder_says_it_released() -> None:
    vanished = (LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=False)),)
    core, clock = new_core(standby=True)
    started = clock.now()
    run = drive(core, HolderReleasesDuringTheWait(list(vanished)), clock)
    check_invariants(run)
    waits = [a for a in run.actions if isinstance(a, act.WaitUntil) and a.timeout_s]
    assert len(waits) == 1 and waits[0].timeout_s == pytest.approx(2.1 * 15)
    assert (run.core.view().role, run.core.view().state) == (Role.ACTIVE, State.ACTIVE)
    assert clock.now() - started < timedelta(seconds=30)  # it did not wait the 31.5 s out


@dataclass
class WokenDuringTheHeadStart(World):
    """The higher-priority standby took the vacancy, could not start, released, and wakes us while
    we give it its head start."""

    woken: bool = False

    def standbys(self) -> list[StandbyRecord]:
        higher = super().standbys()[0].model_copy(update={"priority": 9})
        return [higher]

    def answer(self, core: InstanceCore, action: act.Action, clock: Clock) -> Any:
        if isinstance(action, act.WaitUntil) and action.summary == "head start" and not self.woken:
            self.woken = True
            core.on_promote(PromoteRequest(reason="could not start its connector", min_epoch=3))
        return super().answer(core, action, clock)


def test_a_standby_woken_during_its_head_start_races_at_once() -> None:
    lapsed = (LeaseEnds(StandbyOutcome(vacant=True, last_epoch=3, lapsed=True, holder_silent=True)),)
    core, clock = new_core(standby=True)
    started = clock.now()
    run = drive(core, WokenDuringTheHeadStart(list(lapsed)), clock)
    check_invariants(run)
    (head_start,) = [a for a in run.actions if isinstance(a, act.WaitUntil) and a.summary == "head start"]
    assert head_start.timeout_s == pytest.approx(3.75)  # a quarter of the 15 s interval
    assert (run.core.view().role, run.core.view().state) == (Role.ACTIVE, State.ACTIVE)
    assert clock.now() - started < timedelta(seconds=3)  # it did not sleep the head start out


def test_while_paused_a_vacancy_promotes_nobody_and_a_failing_holder_restarts_in_place() -> None:
    vacancy = play(next(x for x in SCENARIOS if x.name == "standby-finds-vacancy-while-paused"))
    claims = [
        a.request.claim
        for a in vacancy.actions
        if isinstance(a, act.Call) and isinstance(a.request, HostClaimRequest)
    ]
    assert claims and all(c.automatic for c in claims)  # a self-promotion: the pause refuses it
    assert vacancy.world.holder is None and vacancy.core.view().role is Role.STANDBY
    failing = next(x for x in SCENARIOS if x.name == "unhealthy-while-paused-restarts-in-place")
    held = play(failing)
    assert not _promotions(held) and held.core.view().claim is not None
    assert held.world.holder == held.core.view().claim.instance_id  # type: ignore[union-attr]  # never let go
