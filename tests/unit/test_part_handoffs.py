"""The handoffs part alone (``perseus.core.handoffs``, with the target it asks, ``core.targets``),
exhaustively: every target a handoff can find, every answer its worker, our connector, Redis and the
target's workflow can give at each step, and the part's invariants after each run.

The part is handed the leases, status, standbys and warm parts and the core's hooks; here they are
the real parts over a scripted world (``part_driver.World``), the hooks recorded. Every ``Patched``
is answered True. The target's answer arrives as the core delivers it: ``on_reply`` while the part
waits.

The invariants, from ``perseus/core/handoffs.py``, ``core/targets.py`` and ``docs/design.md``:

1. **Nothing stops before the target answered:** no connector step and no transition before the
   target's worker said our connector could start there; a refusal changes nothing here (same state,
   the claim and its lease kept, nothing released, nobody signalled) and says why.
2. **Make before break:** an active instance stops its connector for a warm target only once that
   target's record says it is warm.
3. **A connector that did not stop keeps the exchange:** nothing released, nobody told, the state
   recovered and (if it was active) started again.
4. **Let go in order:** the lease is cancelled and the key released only after our connector stopped
   (or was demoted) and the status walked down; the target is told only after the release, once,
   with an epoch floor at least ours, and asked to answer us.
5. **Exactly one side ends up with the exchange, or we take it back:** confirmed, we hold no claim
   and are a standby (or ended, for a shutdown handoff); not confirmed, we claim again — quietly,
   after the wait the last look asked for, over the target's key only if Redis showed it lapsed —
   and either hold it (restarted if we were active) or, refused, wait as a standby. We are never
   left holding nothing without being a standby or ended.
6. **The result tells the truth:** from our start state, the transitions walked, an error exactly
   when the handoff did not happen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.decisions import act_after_vacancy_s
from perseus.core.handoffs import Handoffs
from perseus.core.lifecycle import Command, Role, State
from perseus.core.state import Ending, HandoffState, Ticket
from perseus.models import (
    ClaimProbe,
    ClaimResult,
    CommandResult,
    ConnectorPreflight,
    ConnectorReport,
    EventKind,
    HandoffConfirm,
    HandoffRequest,
    PatchResult,
    PromoteRequest,
    StandbyList,
    StandbyRecord,
)
from perseus.timing import claim_over_s
from tests.unit.part_driver import (
    APP_ERROR,
    CLAIM,
    STEP_FAILURE_IDS,
    STEP_FAILURES,
    WF_ID,
    Parts,
    World,
    case,
    context,
    drive,
    parts,
    standby,
)

pytestmark = pytest.mark.unit

INTERVAL = 15.0
A = act.Activity
TO = "host-b"
STOPS = {A.CONNECTOR_DISCONNECT, A.CONNECTOR_DEACTIVATE}


def listed(*records: StandbyRecord) -> StandbyList:
    return StandbyList(standbys=list(records))


COLD = standby(TO)
WARM_READY = standby(TO, warm=True, warm_ready=True)
WARMING = standby(TO, warm=True)
WARM_FAILED = standby(TO, warm=True, warm_error="child exited", start_retry_at=None)
TARGETS = [COLD, WARM_READY, WARMING, WARM_FAILED]
TARGET_IDS = ["cold", "warm", "warming", "warm-up-failed"]
PREFLIGHTS: list[Any] = [
    ConnectorPreflight(hostname="host-b.lan"),
    ConnectorPreflight(hostname="host-b.lan", cannot_start="no such command"),
    *STEP_FAILURES,
]
PREFLIGHT_IDS = ["can-start", "cannot-start", *STEP_FAILURE_IDS]
#: What the standby list says of a warming target while we wait for it: ready, never, or gone.
WARMING_LATER: dict[str, list[Any]] = {
    "ready": [listed(WARM_READY)],
    "never": [listed(WARMING)] * 100,
    "gone": [listed()],
}

OK = HandoffConfirm(ok=True, epoch=CLAIM.epoch + 1, host=TO, detail="active on host-b")
FAILED = HandoffConfirm(ok=False, host=TO, detail="connector did not start")
FRESH = ClaimProbe(held_by_us=False, renewed_ms_ago=500, holder=TO)
STALE = ClaimProbe(held_by_us=False, renewed_ms_ago=int(claim_over_s(INTERVAL) * 1000) + 1000, holder=TO)
OTHER = ClaimProbe(held_by_us=False, renewed_ms_ago=500, holder="host-c")
EMPTY = ClaimProbe(held_by_us=False)


@dataclass(frozen=True)
class Confirmation:
    """How the wait for the target goes: what each wait hears (None: nothing), what each look at the
    key shows."""

    replies: tuple[HandoffConfirm | None, ...]
    probes: tuple[Any, ...] = ()


CONFIRMATIONS = {
    "confirmed": Confirmation((OK,)),
    "target-failed": Confirmation((FAILED,)),
    "confirmed-after-a-look": Confirmation((None, OK), (FRESH,)),
    "target-stopped-renewing": Confirmation((None,) * 3, (FRESH, STALE)),
    "another-took-it": Confirmation((None,), (OTHER,)),
    "target-never-claimed": Confirmation((None,) * 20, (EMPTY,) * 20),
    "target-claim-vanished": Confirmation((None,) * 3, (FRESH, EMPTY)),
    "redis-silent-until-timeout": Confirmation((None,) * 40, (APP_ERROR,) * 40),
}
TAKE_BACKS: list[Any] = [
    ClaimResult(claimed=True, epoch=CLAIM.epoch + 5),
    ClaimResult(claimed=False, epoch=9),
    APP_ERROR,
]
TAKE_BACK_IDS = ["taken-back", "held-elsewhere", "claim-failed"]


@dataclass
class Run:
    result: CommandResult
    world: World
    parts: Parts
    handoffs: Handoffs
    start: State
    shutdown: bool
    warm_here: bool


def handoff(
    *,
    state: State = State.ACTIVE,
    target: StandbyRecord = COLD,
    first_list: Any = None,
    later: list[Any] | None = None,
    preflight: Any = PREFLIGHTS[0],
    shutdown: bool = False,
    warm: bool = False,
    stop: Any = None,
    demote: Any = None,
    release: Any = None,
    signal: str | None = None,
    confirmation: Confirmation = CONFIRMATIONS["confirmed"],
    take_back: Any = TAKE_BACKS[0],
) -> Run:
    ctx = context(warm=warm, interval_s=INTERVAL)
    p = parts(ctx, state=state)
    h = Handoffs(ctx, p.host, HandoffState(), warm=p.warm, **p.hooks(), **p.shared())
    replies = list(confirmation.replies)

    def until(wait: act.WaitUntil) -> bool:
        if (wait.summary or "").startswith("confirmation from") and replies:
            reply = replies.pop(0)
            if reply is not None:
                h.on_reply(reply)
        return wait.condition()

    scripts: dict[Any, list[Any]] = {
        A.LIST_STANDBYS: [first_list if first_list is not None else listed(target), *(later or [])],
        A.CONNECTOR_PREFLIGHT: [preflight],
        A.CONNECTOR_DISCONNECT: [stop] if stop is not None else [],
        A.CONNECTOR_DEACTIVATE: [
            demote if demote is not None else ConnectorReport(running=True, warm_ready=True)
        ],
        A.RELEASE_CLAIM: [release] if release is not None else [],
        A.PROBE_CLAIM: list(confirmation.probes),
        A.CLAIM_AND_HOLD: [take_back],
    }
    world = World(ctx, scripts, signals=[signal], until=until)
    ticket = Ticket(number=0, command=Command.HANDOFF, handoff=HandoffRequest(to_host=TO, shutdown=shutdown))
    result, _ = drive(h.handoff(ticket), world)
    return Run(result, world, p, h, state, shutdown, warm)


def _stopped(w: World) -> int | None:
    """Where the handoff's own stop of our connector succeeded (a demotion that left it warm, else
    the first disconnect answered), if it did."""
    for i, s in enumerate(w.seen):
        a = s.action
        if not isinstance(a, act.Call) or a.activity not in STOPS:
            continue
        answered = not isinstance(s.answer, act.Failure)
        if a.activity is A.CONNECTOR_DEACTIVATE:
            if answered and s.answer.warm_ready:
                return i
            continue
        return i if answered else None
    return None


def check(r: Run) -> None:
    """The invariants of a handoff (the module docstring), after any run."""
    w, p, result = r.world, r.parts, r.result
    seen = w.seen
    # 6. The result tells the truth.
    assert result.command is Command.HANDOFF and result.from_state is r.start
    assert result.state is p.status.state
    walked = [e.to_state for e in w.events(EventKind.STATE_TRANSITION)]
    assert result.transitions == walked[: len(result.transitions)]
    # Anything that changes something here or tells the target: a stop, a status write, the lease
    # cancelled, the key released, the promote signal.
    touched = [
        i
        for i, s in enumerate(seen)
        if (isinstance(s.action, act.Call) and s.action.activity in (*STOPS, A.RELEASE_CLAIM))
        or (
            isinstance(s.action, act.Call)
            and s.action.activity is A.RECORD
            and s.action.request.patch is not None
        )
        or isinstance(s.action, (act.CancelLease, act.Signal))
    ]
    ready_at = [
        i
        for i, s in enumerate(seen)
        if isinstance(s.action, act.Call)
        and s.action.activity is A.CONNECTOR_PREFLIGHT
        and isinstance(s.answer, ConnectorPreflight)
        and s.answer.cannot_start is None
    ]
    # 1. Nothing changes here before the target's worker said it could start our connector.
    for i in touched:
        assert ready_at and ready_at[0] < i, "changed something before the target answered"
    released = w.calls_of(A.RELEASE_CLAIM)
    promoted = w.signals_sent("promote")
    if not touched:
        # Refused before anything changed here.
        assert result.error is not None and result.transitions == []
        assert p.status.state is r.start and p.leases.claim == CLAIM and p.leases.leasing
        assert not released and not promoted and not p.enqueued
        assert p.became_standby == 0 and not p.ended
        assert not any(isinstance(a, act.CancelLease) for a in w.actions())
        return
    # 2. Make before break: a warm target's record said warm before our connector stopped.
    if r.start is State.ACTIVE:
        stop_at = touched[0]
        records = [
            x
            for s in seen[:stop_at]
            if isinstance(s.action, act.Call)
            and s.action.activity is A.LIST_STANDBYS
            and isinstance(s.answer, StandbyList)
            for x in s.answer.standbys
            if x.host == TO
        ]
        assert records and (not records[-1].warm or records[-1].warm_ready)
    stopped_at = _stopped(w)
    if r.start is State.ACTIVE and stopped_at is None:
        # 3. Our connector did not stop: the exchange stays here.
        assert result.error is not None and "did not stop" in result.error
        assert not released and not promoted and p.leases.claim == CLAIM
        assert p.status.state is State.IDLE
        assert [q.command for q in p.enqueued] == [Command.START]
        assert p.became_standby == 0 and not p.ended
        return
    # 4. Let go in order: stopped and walked down, lease cancelled, released, then the target told.
    assert len(released) == 1
    release_at = seen.index(released[0])
    cancel_at = w.first(lambda a: isinstance(a, act.CancelLease))
    if stopped_at is not None:
        assert stopped_at < cancel_at
    idle_writes = [
        i
        for i, s in enumerate(seen)
        if isinstance(s.action, act.Call)
        and s.action.activity is A.RECORD
        and s.action.request.event.to_state is State.IDLE
    ]
    if r.start is State.ACTIVE:
        assert idle_writes and idle_writes[0] < cancel_at
    assert cancel_at < release_at
    assert len(promoted) == 1
    signal_at, signal = promoted[0]
    assert release_at < signal_at
    assert isinstance(signal.payload, PromoteRequest)
    assert signal.payload.min_epoch >= CLAIM.epoch and signal.payload.confirm_to == WF_ID
    assert signal.payload.act_after_s == 0.0  # ours is stopped and released: it may act at once
    # 5. Exactly one side, or taken back.
    reply = r.handoffs.st.reply
    assert reply is not None
    claims = w.calls_of(A.CLAIM_AND_HOLD)
    if reply.ok:
        assert result.error is None and not claims
        assert p.leases.claim is None
        if r.shutdown:
            assert p.ended == [f"{Ending.HANDED_OVER} to {TO}"] and p.became_standby == 0
        else:
            assert p.became_standby == 1 and p.standbys.role is Role.STANDBY and not p.ended
        assert not p.enqueued
        return
    assert result.error is not None and not p.ended
    assert len(claims) == 1
    claim_at = seen.index(claims[0])
    assert claim_at > signal_at
    assert not w.events(EventKind.CLAIM_CONFLICT)  # quiet: taking back our own is no conflict
    took = isinstance(claims[0].answer, ClaimResult) and claims[0].answer.claimed
    if took:
        assert p.leases.claim is not None and p.leases.claim.epoch == claims[0].answer.epoch
        assert p.became_standby == 0
        assert [q.command for q in p.enqueued] == ([Command.START] if r.start is State.ACTIVE else [])
    else:
        assert p.leases.claim is None and p.became_standby == 1 and not p.enqueued
    assert p.leases.claim is not None or p.became_standby == 1 or p.ended


# --- refused before anything stops ---------------------------------------------------------------


@pytest.mark.parametrize("state", [State.ACTIVE, State.IDLE])
@pytest.mark.parametrize("found", [None, "absent", "unknown"], ids=["listed", "absent", "list-unknown"])
def test_a_handoff_asks_its_target_before_anything_stops(state: State, found: str | None) -> None:
    for target, tid in zip(TARGETS, TARGET_IDS, strict=True):
        for preflight, pid in zip(PREFLIGHTS, PREFLIGHT_IDS, strict=True):
            for later_id, later in WARMING_LATER.items():
                first = {None: None, "absent": listed(standby("host-c")), "unknown": APP_ERROR}[found]
                r = handoff(state=state, target=target, first_list=first, later=later, preflight=preflight)
                with case(f"{tid} target, preflight {pid}, later {later_id}"):
                    check(r)
                    proceeds = (
                        found is None
                        and preflight is PREFLIGHTS[0]
                        and target is not WARM_FAILED
                        and (target is not WARMING or state is State.IDLE or later_id == "ready")
                    )
                    assert (r.result.error is None) is proceeds
                    if found is not None:
                        assert not r.world.calls_of(A.CONNECTOR_PREFLIGHT)  # nobody to ask
                    if not proceeds:
                        assert r.result.error is not None and TO in r.result.error


# --- our connector stops, or is demoted, or does not stop ------------------------------------------

DEMOTES: list[Any] = [
    ConnectorReport(running=True, warm_ready=True),
    ConnectorReport(running=True),
    *STEP_FAILURES,
]
DEMOTE_IDS = ["demoted-warm", "demoted-not-warm", *STEP_FAILURE_IDS]


@pytest.mark.parametrize("demote", DEMOTES, ids=DEMOTE_IDS)
@pytest.mark.parametrize("stop", [None, *STEP_FAILURES], ids=["stopped", *STEP_FAILURE_IDS])
@pytest.mark.parametrize("shutdown", [False, True], ids=["stays", "shutdown"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold-here", "warm-here"])
def test_our_connector_stops_before_the_exchange_is_let_go(
    warm: bool, shutdown: bool, stop: Any, demote: Any
) -> None:
    r = handoff(warm=warm, shutdown=shutdown, stop=stop, demote=demote, target=WARM_READY)
    check(r)
    keeps_warm = warm and not shutdown
    # Staying as a warm standby: demoted, not stopped — unless the demotion did not leave it warm.
    assert bool(r.world.calls_of(A.CONNECTOR_DEACTIVATE)) is keeps_warm
    demoted = keeps_warm and isinstance(demote, ConnectorReport) and demote.warm_ready
    assert bool(r.world.calls_of(A.CONNECTOR_DISCONNECT)) is not demoted
    assert r.parts.warm.warm_here is demoted
    handed = demoted or stop is None
    assert (r.result.error is None) is handed


# --- the wait for the target, and taking the exchange back -----------------------------------------


@pytest.mark.parametrize(
    "release", [None, PatchResult(applied=False), APP_ERROR], ids=["released", "not-ours", "unanswered"]
)
@pytest.mark.parametrize("state", [State.ACTIVE, State.IDLE])
@pytest.mark.parametrize("name", list(CONFIRMATIONS))
def test_a_handoff_ends_with_one_side_holding_the_exchange_or_takes_it_back(
    name: str, state: State, release: Any
) -> None:
    for shutdown, signal, (take_back, tid) in itertools.product(
        (False, True), (None, "workflow gone"), zip(TAKE_BACKS, TAKE_BACK_IDS, strict=True)
    ):
        with case(f"shutdown {shutdown}, signal refused {signal}, take-back {tid}"):
            one_side_or_taken_back(name, state, release, signal, take_back, shutdown)


def one_side_or_taken_back(
    name: str, state: State, release: Any, signal: str | None, take_back: Any, shutdown: bool
) -> None:
    confirmation = CONFIRMATIONS[name]
    r = handoff(
        state=state,
        shutdown=shutdown,
        release=release,
        signal=signal,
        confirmation=confirmation,
        take_back=take_back,
    )
    check(r)
    w = r.world
    confirmed = signal is None and name in ("confirmed", "confirmed-after-a-look")
    assert (r.result.error is None) is confirmed
    if confirmed:
        return
    (claim,) = w.calls_of(A.CLAIM_AND_HOLD)
    request = claim.action.request.claim  # type: ignore[union-attr]
    # Over the target's key only when Redis showed it lapsed; after its deadline when its claim
    # vanished (that proves nothing about whether it stopped).
    lapsed = signal is None and name == "target-stopped-renewing"
    assert request.take_lapsed is lapsed
    sleeps = [s.action.seconds for s in w.seen if isinstance(s.action, act.Sleep)]
    vanished = signal is None and name == "target-claim-vanished"
    assert sleeps == ([act_after_vacancy_s(INTERVAL)] if vanished else [])
    if signal is not None:
        # The target cannot be told: we take it back at once, without waiting for anything.
        assert not any(isinstance(s.action, act.WaitUntil) for s in w.seen)
