"""The promotion part alone (``perseus.core.promotion``), exhaustively: every promotion a standby can
be sent, in every state of its warm connector, against every answer the world can give at each step;
a promoted start that failed; and the confirmations a handoff waits for.

Promotion holds no memory: it is handed the leases, status, standbys and warm parts and the core's
hooks; here they are the real parts over a scripted world (``part_driver.World``), the hooks
recorded. Every ``Patched`` is answered True.

The invariants, from ``perseus/core/promotion.py``, invariants 4 and 5 of ``perseus.core.decisions``
and ``docs/design.md``:

1. **Nothing acts without the claim.** No connector is activated and no start queued unless Redis
   granted the claim first; an activation runs under exactly that claim, after the fresh claim's
   lease was started.
2. **Nothing acts before the old holder's deadline.** With ``act_after_s``, no activation and no
   start come sooner than that after the claim — unless the holder of at least the vacant epoch said
   meanwhile that it stopped and released.
3. **A lost race changes nothing:** still a standby, its record kept, no claim, no lease, and a
   handoff waiting for the answer hears "no" once.
4. **A won race makes an active instance:** role active, the standby record dropped, one
   ``promoted`` event, and exactly one way on — warm and active now, a cold start queued (first,
   internal, promoted, carrying the handoff's reply), or (no worker on our host) nothing started,
   and a handoff waiting gets the exchange back.
5. **Warm only when known warm:** the warm connector is activated only if it is known warm and no
   warm-up is still running (that one is cancelled, and the start goes cold); a promotion consumes it.
6. **One answer per handoff:** whoever waits (``confirm_to``) hears at most once from the promotion
   itself, exactly once unless the queued start will answer; "yes" only when active, with the epoch
   of the claim, "no" with epoch 0.
7. **The floor rises:** the claim asks above the promotion's ``min_epoch``; it is automatic (a pause
   refuses it) exactly when nobody waits for the answer.
8. **A failed promoted start moves on:** with another standby the claim is let go (lease cancelled,
   then released) and the best standby is woken only once it is released — told to act at once only
   if our connector is known stopped — and this host waits as a standby behind the others for the
   doubling backoff; alone, it keeps the claim and tries again after the backoff unless a command
   came first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.decisions import act_after_vacancy_s, warm_retry_delay
from perseus.core.lifecycle import Command, Role, State
from perseus.core.promotion import RELEASE_GOES_ON, Promotion
from perseus.core.state import WarmUp
from perseus.errors import NON_RETRYABLE_ERROR_TYPES as NON_RETRYABLE
from perseus.models import (
    ClaimResult,
    CommandResult,
    ConnectorReport,
    EventKind,
    HandoffConfirm,
    InstanceStatus,
    PatchResult,
    PromoteRequest,
    StandbyList,
)
from perseus.timing import claim_over_s
from tests.unit.part_driver import (
    ACTING,
    APP_ERROR,
    CLAIM,
    HOST_QUEUE,
    NOT_PICKED_UP,
    STEP_FAILURE_IDS,
    STEP_FAILURES,
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
HANDOFF_FROM = "instance-coinbase-host-c"
MIN_EPOCH = 11
SB_ID = "sb-1"
DEADLINE_WAIT = "wait out the old deadline"


@dataclass
class Run:
    value: Any
    world: World
    parts: Parts
    req: PromoteRequest | None = None


def done_task() -> WarmUp:
    task = WarmUp()
    task.done = True
    return task


#: The warm connector here: (configured warm, known warm, its warm-up's handle).
WARM_CASES: list[Any] = [
    pytest.param(False, False, None, id="cold-standby"),
    pytest.param(True, True, None, id="warm"),
    pytest.param(True, True, done_task, id="warm-task-done"),
    pytest.param(True, False, WarmUp, id="still-warming"),
    pytest.param(True, True, WarmUp, id="warm-but-warming-again"),
    pytest.param(True, False, None, id="warm-lost"),
]
CLAIMS_WON: list[Any] = [
    ClaimResult(claimed=True, epoch=MIN_EPOCH + 1),
    ClaimResult(claimed=True, epoch=MIN_EPOCH + 1, took_over="host-dead (epoch 11)"),
]
CLAIMS_LOST: list[Any] = [
    ClaimResult(claimed=False, epoch=MIN_EPOCH + 2, message="held by host-b"),
    *STEP_FAILURES,
]
ACTIVATIONS: list[Any] = [
    ConnectorReport(running=True),
    ConnectorReport(running=True, symbol_count=42),
    *STEP_FAILURES,
]
#: While the standby waits out the old deadline: nobody says anything, the holder says it released,
#: or an older holder does (it does not count).
RELEASES = ["none", "holder", "older-holder"]


def promotion(ctx: Any, p: Parts, *, waiting: bool = False) -> Promotion:
    return Promotion(
        ctx,
        p.host,
        warm=p.warm,
        waiting_for=lambda: waiting,
        enqueue=p.enqueue,
        become_standby=p.become_standby,
        # The host's restart is the loop's to remember (tests/unit/test_core.py drives it).
        restart_pending=lambda: False,
        restart_settled=lambda: None,
        leases=p.leases,
        status=p.status,
        standbys=p.standbys,
    )


def promote(
    req: PromoteRequest,
    *,
    warm: bool = False,
    warm_here: bool = False,
    task: Any = None,
    claim: Any = CLAIMS_WON[0],
    activation: Any = ACTIVATIONS[0],
    release: str = "none",
    signal: str | None = None,
    drop: Any = None,
) -> Run:
    ctx = context(warm=warm, interval_s=INTERVAL)
    p = parts(
        ctx,
        state=State.IDLE,
        claim=None,
        leasing=False,
        role=Role.STANDBY,
        standby_id=SB_ID,
        warm_here=warm_here,
        task=task() if task else None,
    )

    def until(wait: act.WaitUntil) -> bool:
        if wait.summary == DEADLINE_WAIT and release != "none":
            epoch = req.min_epoch if release == "holder" else req.min_epoch - 1
            p.standbys.promoted(PromoteRequest(reason="holder shut down", min_epoch=epoch))
        return wait.condition()

    scripts: dict[Any, list[Any]] = {
        A.CLAIM_AND_HOLD: [claim],
        A.CONNECTOR_ACTIVATE: [activation],
        A.DROP_STANDBY: [drop],
    }
    world = World(ctx, scripts, signals=[signal] * 3, until=until)
    value, _ = drive(promotion(ctx, p).promote(req), world)
    return Run(value, world, p, req)


def replies(w: World) -> list[HandoffConfirm]:
    found = []
    for _, s in w.signals_sent("handoff_confirmed"):
        assert s.workflow_id == HANDOFF_FROM
        assert isinstance(s.payload, HandoffConfirm)
        found.append(s.payload)
    return found


def check(r: Run) -> None:
    """The invariants of a promotion (the module docstring), after any run."""
    w, p, req = r.world, r.parts, r.req
    assert req is not None
    seen = w.seen
    claims = w.calls_of(A.CLAIM_AND_HOLD)
    assert len(claims) == 1
    asked = claims[0].action.request.claim  # type: ignore[union-attr]
    won = isinstance(claims[0].answer, ClaimResult) and claims[0].answer.claimed
    claimed_at = seen.index(claims[0])
    # 7. Above the floor; automatic exactly when nobody waits.
    assert asked.highest_epoch >= req.min_epoch and p.leases.highest_epoch >= req.min_epoch
    assert asked.automatic is (req.confirm_to is None) and asked.take_lapsed is req.take_lapsed
    acting = [i for i, s in enumerate(seen) if isinstance(s.action, act.Call) and s.action.activity in ACTING]
    answers = replies(w)
    assert len(answers) <= 1
    if req.confirm_to is None:
        assert not answers
    for answer in answers:
        assert answer.ok is (p.status.state is State.ACTIVE)
        assert answer.epoch == (p.leases.claim.epoch if answer.ok and p.leases.claim else 0)
    if not won:
        # 3. A lost race changes nothing.
        assert not acting and not p.enqueued
        assert p.standbys.role is Role.STANDBY and p.standbys.standby_id == SB_ID
        assert p.leases.claim is None and not p.leases.leasing
        assert not w.calls_of(A.DROP_STANDBY) and not any(isinstance(a, act.StartLease) for a in w.actions())
        assert len(answers) == (1 if req.confirm_to else 0)
        return
    granted = claims[0].answer.epoch
    # 1. Nothing acts without the claim, and only under it, its lease started first.
    lease_at = w.first(lambda a: isinstance(a, act.StartLease))
    assert claimed_at < lease_at
    assert seen[lease_at].action.request.claim.epoch == granted  # type: ignore[union-attr]
    for i in acting:
        assert lease_at < i
        assert seen[i].action.request.claim.epoch == granted  # type: ignore[union-attr]
    # 2. Nothing acts before the old holder's deadline, unless it said it released.
    released = any(x.min_epoch >= req.min_epoch and not x.act_after_s for x in p.standbys.promotions)
    if req.act_after_s and not released:
        claimed_time = seen[claimed_at].at
        for i in acting:
            assert (seen[i].at - claimed_time).total_seconds() >= req.act_after_s
        for q in p.enqueued:
            assert q.at is not None and (q.at - claimed_time).total_seconds() >= req.act_after_s
    # 4. A won race makes an active instance, and goes on exactly one way.
    handed_back = p.became_standby == 1
    assert p.standbys.role is (Role.STANDBY if handed_back else Role.ACTIVE)
    # Our host, which just took the claim for us, drops the record; the shared queue only if nobody
    # there picked it up.
    drops = w.calls_of(A.DROP_STANDBY)
    assert drops[0].action.queue == HOST_QUEUE  # type: ignore[union-attr]
    failed_there = isinstance(drops[0].answer, act.Failure)
    assert len(drops) == (2 if failed_there and drops[0].answer.error_type not in NON_RETRYABLE else 1)
    assert len(w.events(EventKind.PROMOTED)) == 1
    warm_active = p.status.state is State.ACTIVE
    cold = bool(p.enqueued)
    no_worker = not warm_active and not cold
    assert warm_active + cold + no_worker == 1
    if warm_active:
        assert p.standbys.st.start_failures == 0 and not p.standbys.st.start_error
    if cold:
        (q,) = p.enqueued
        assert q.command is Command.START and q.first and q.internal and q.promoted
        assert q.confirm_to == req.confirm_to
        assert p.status.state is State.IDLE
    if no_worker:
        assert p.status.state is State.IDLE
        failed_activation = w.calls_of(A.CONNECTOR_ACTIVATE)
        assert failed_activation and failed_activation[-1].answer is NOT_PICKED_UP
        # A handoff hears at once, and gets its exchange back: we let go of ours.
        assert handed_back is (req.confirm_to is not None)
        if handed_back:
            assert p.leases.claim is None and w.calls_of(A.RELEASE_CLAIM)
    # 5. Warm only when known warm; consumed either way.
    assert not p.warm.warm_here or not w.calls_of(A.CONNECTOR_ACTIVATE)
    # 6. One answer per handoff, unless the queued start gives it.
    if req.confirm_to is not None:
        assert len(answers) == (0 if cold else 1)


# --- a race lost ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", [None, "gone"], ids=["delivered", "refused"])
@pytest.mark.parametrize("take_lapsed", [False, True])
@pytest.mark.parametrize("confirm_to", [None, HANDOFF_FROM], ids=["vacancy", "handoff"])
@pytest.mark.parametrize("claim", CLAIMS_LOST, ids=["held", *STEP_FAILURE_IDS])
def test_a_promotion_that_loses_the_race_stays_a_standby(
    claim: Any, confirm_to: str | None, take_lapsed: bool, signal: str | None
) -> None:
    req = PromoteRequest(reason="vacant", min_epoch=MIN_EPOCH, confirm_to=confirm_to, take_lapsed=take_lapsed)
    r = promote(req, warm=True, warm_here=True, claim=claim, signal=signal)
    check(r)
    assert not r.world.calls_of(A.CONNECTOR_ACTIVATE) and r.parts.warm.warm_here  # untouched


def winner(
    workflow_id: str | None = "instance-coinbase-host-d", epoch: int | None = MIN_EPOCH + 1
) -> InstanceStatus:
    """The status record of the instance that won the race (as the refused claim reports it)."""
    at = "2026-12-01T00:00:00Z"
    return InstanceStatus(
        exchange_id=1,
        exchange_name="coinbase",
        hostname="host-d",
        connection_state=State.IDLE,
        last_heartbeat=at,
        last_state_change=at,
        registered_at=at,
        workflow_id=workflow_id,
        epoch=epoch,
    )


@pytest.mark.parametrize("refused", [None, "gone"], ids=["delivered", "refused"])
def test_a_standby_woken_by_a_release_that_loses_the_race_passes_the_release_on(refused: str | None) -> None:
    """The winner may be waiting out a vanished key's old deadline (its watch saw the key go before
    the holder's word reached anyone but us): the holder's word, passed on, ends that wait."""
    woken = PromoteRequest(reason="released: its worker shut down", min_epoch=MIN_EPOCH)
    r = promote(woken, claim=ClaimResult(claimed=False, epoch=MIN_EPOCH + 1, holder=winner()), signal=refused)
    check(r)
    sent = [s for _, s in r.world.signals_sent("promote")]
    assert [(s.workflow_id, s.payload) for s in sent] == [("instance-coinbase-host-d", woken)]
    assert any(isinstance(a, act.Patched) and a.patch_id == RELEASE_GOES_ON for a in r.world.actions())
    # What is not passed on: a vacancy our own watch saw (no holder's word), a handoff's (someone
    # waits for its answer), a winner that claimed before the holder released, ourselves, nobody known.
    vacancy = woken.model_copy(update={"act_after_s": claim_over_s(INTERVAL)})
    handoff = woken.model_copy(update={"confirm_to": HANDOFF_FROM})
    for label, req, holder in (
        ("vacancy", vacancy, winner()),
        ("handoff", handoff, winner()),
        ("older winner", woken, winner(epoch=MIN_EPOCH)),
        ("ourselves", woken, winner(workflow_id=context().wf_id)),
        ("no workflow", woken, winner(workflow_id=None)),
        ("no record", woken, None),
    ):
        with case(label):
            r = promote(req, claim=ClaimResult(claimed=False, epoch=MIN_EPOCH + 1, holder=holder))
            check(r)
            assert not r.world.signals_sent("promote")


# --- a race won: every warm state, every answer ---------------------------------------------------


@pytest.mark.parametrize(("warm", "warm_here", "task"), WARM_CASES)
@pytest.mark.parametrize("confirm_to", [None, HANDOFF_FROM], ids=["vacancy", "handoff"])
def test_a_promotion_that_wins_acts_only_under_its_claim_and_after_the_old_deadline(
    confirm_to: str | None, warm: bool, warm_here: bool, task: Any
) -> None:
    waits = [(0.0, "none"), *((claim_over_s(INTERVAL), release) for release in RELEASES)]
    for act_after_s, release in waits:
        for claim in CLAIMS_WON:
            for activation in ACTIVATIONS:
                for drop in (None, APP_ERROR, NOT_PICKED_UP):
                    req = PromoteRequest(
                        reason="vacant",
                        min_epoch=MIN_EPOCH,
                        confirm_to=confirm_to,
                        act_after_s=act_after_s,
                        take_lapsed=claim.took_over is not None,
                    )
                    r = promote(
                        req,
                        warm=warm,
                        warm_here=warm_here,
                        task=task,
                        claim=claim,
                        activation=activation,
                        release=release,
                        drop=drop,
                    )
                    label = f"wait {act_after_s} ({release}), {claim}, activation {activation}, drop {drop}"
                    with case(label):
                        check(r)
                        activated = r.world.calls_of(A.CONNECTOR_ACTIVATE)
                        warming = task is WarmUp
                        assert bool(activated) is (warm_here and not warming)
                        assert any(isinstance(a, act.CancelWarmUp) for a in r.world.actions()) is warming
                        assert not r.parts.warm.warm_here and r.parts.warm.st.task is None
                        if activated and isinstance(activation, ConnectorReport):
                            assert r.parts.status.state is State.ACTIVE
                            assert r.parts.status.st.symbol_count == activation.symbol_count
                        # The deadline wait ends early only on the word of the vacant epoch's holder.
                        if act_after_s:
                            deadline = [
                                s
                                for s in r.world.seen
                                if isinstance(s.action, act.WaitUntil) and s.action.summary == DEADLINE_WAIT
                            ]
                            assert len(deadline) == 1 and deadline[0].answer is (release == "holder")
                        else:
                            assert not any(
                                isinstance(a, (act.WaitUntil, act.Sleep)) for a in r.world.actions()
                            )


# --- a promoted start that failed ------------------------------------------------------------------

OTHERS: list[Any] = [
    pytest.param(APP_ERROR, id="unknown"),
    pytest.param(StandbyList(standbys=[]), id="alone"),
    pytest.param(StandbyList(standbys=[standby("host-b")]), id="one-other"),
    pytest.param(StandbyList(standbys=[standby("host-b", priority=5), standby("host-c")]), id="two-others"),
]


FAILED_START_SIGNALS: list[list[str | None]] = [[None, None], ["gone", None], ["gone", "gone"]]
FAILED_START_RELEASES: list[Any] = [None, PatchResult(applied=False), APP_ERROR]


@pytest.mark.parametrize(
    "disconnect", [None, NOT_PICKED_UP, APP_ERROR], ids=["stopped", "no-worker", "refused"]
)
@pytest.mark.parametrize("waiting", [False, True], ids=["quiet", "command-waiting"])
@pytest.mark.parametrize("listed", OTHERS)
def test_a_promoted_start_that_failed_moves_the_exchange_on_or_tries_again_here(
    listed: Any, waiting: bool, disconnect: Any
) -> None:
    for failures in (0, 3):
        for release in FAILED_START_RELEASES:
            for signals in FAILED_START_SIGNALS:
                with case(f"{failures} failures before, release {release}, signals {signals}"):
                    failed_start(listed, waiting, disconnect, release, signals, failures)


def failed_start(
    listed: Any, waiting: bool, disconnect: Any, release: Any, signals: list[str | None], failures: int
) -> None:
    ctx = context(interval_s=INTERVAL)
    p = parts(ctx, state=State.IDLE, claim=CLAIM, start_failures=failures)
    scripts: dict[Any, list[Any]] = {A.LIST_STANDBYS: [listed]}
    if disconnect is not None:
        scripts[A.CONNECTOR_DISCONNECT] = [disconnect]
    if release is not None:
        scripts[A.RELEASE_CLAIM] = [release]
    world = World(ctx, scripts, signals=signals)
    started = ctx.clock.now()
    drive(promotion(ctx, p, waiting=waiting).after_failed_promotion("cannot start"), world)
    backoff = warm_retry_delay(failures + 1)
    st = p.standbys.st
    assert st.start_failures == failures + 1 and st.start_error == "cannot start"
    assert st.start_retry_at is not None and (st.start_retry_at - started).total_seconds() == backoff
    assert len(world.calls_of(A.LIST_STANDBYS)) == 1  # the list read once is the one woken from
    assert not world.calls_of(*ACTING)
    others = listed.standbys if isinstance(listed, StandbyList) else []
    if not others:
        # Alone: the claim stays here, and a start is tried again after the backoff unless a
        # command (or the host going down) came first.
        assert p.leases.claim == CLAIM and not world.calls_of(A.RELEASE_CLAIM)
        assert p.became_standby == 0 and not world.signals_sent("promote")
        (wait,) = [a for a in world.actions() if isinstance(a, act.WaitUntil)]
        assert wait.timeout_s == backoff
        assert [q.command for q in p.enqueued] == ([] if waiting else [Command.START])
        assert all(q.first and q.internal and q.promoted for q in p.enqueued)
        return
    # With others: lease cancelled, then released, then (only if released) the best one woken.
    cancelled = world.first(lambda a: isinstance(a, act.CancelLease))
    assert cancelled < world.first_call(A.RELEASE_CLAIM)
    woken = world.signals_sent("promote")
    released = release is None
    if not released:
        assert not woken
    else:
        expected = [f"instance-coinbase-{x.host}" for x in others][: len(woken)]
        assert [s.workflow_id for _, s in woken] == expected
        # Told in order of priority until one answers.
        assert len(woken) == min(len(others), 1 + sum(1 for x in signals[: len(others)] if x))
        stopped = disconnect is None
        for i, s in woken:
            assert i > world.first_call(A.RELEASE_CLAIM)
            act_after = s.payload.act_after_s  # type: ignore[attr-defined]
            assert act_after == (0.0 if stopped else act_after_vacancy_s(INTERVAL))
    assert p.became_standby == 1 and p.leases.claim is None and p.standbys.role is Role.STANDBY
    assert not p.enqueued


# --- the confirmations a handoff waits for ---------------------------------------------------------


@pytest.mark.parametrize("signal", [None, "gone"], ids=["delivered", "refused"])
@pytest.mark.parametrize("state", [State.ACTIVE, State.IDLE, State.STARTING])
@pytest.mark.parametrize("start_answers", [True, False], ids=["queued-start-answers", "nothing-queued"])
@pytest.mark.parametrize("confirm_to", [None, HANDOFF_FROM], ids=["nobody-waits", "handoff"])
def test_a_promotion_for_an_exchange_already_taken_answers_the_handoff_once(
    confirm_to: str | None, start_answers: bool, state: State, signal: str | None
) -> None:
    ctx = context()
    p = parts(ctx, state=state)
    world = World(ctx, signals=[signal])
    asked: list[str] = []

    def confirm_start(to: str) -> bool:
        asked.append(to)
        return start_answers

    req = PromoteRequest(reason="handoff", min_epoch=3, confirm_to=confirm_to)
    drive(promotion(ctx, p).owe_confirmation(req, confirm_start), world)
    answers = replies(world)
    if confirm_to is None or start_answers:
        assert answers == []
        assert asked == ([] if confirm_to is None else [confirm_to])
        return
    (answer,) = answers
    assert answer.ok is (state is State.ACTIVE)
    assert answer.epoch == (CLAIM.epoch if answer.ok else 0)
    assert p.leases.claim == CLAIM and p.became_standby == 0  # nothing given up here


@pytest.mark.parametrize("signal", [None, "gone"], ids=["delivered", "refused"])
@pytest.mark.parametrize("state", [State.ACTIVE, State.IDLE])
@pytest.mark.parametrize("error", [None, "connector did not start"], ids=["started", "failed"])
def test_a_promoted_start_confirms_the_takeover_or_gives_the_exchange_back(
    error: str | None, state: State, signal: str | None
) -> None:
    ctx = context()
    p = parts(ctx, state=state)
    world = World(ctx, signals=[signal])
    result = CommandResult(
        command=Command.START, from_state=State.IDLE, state=state, transitions=[], error=error
    )
    drive(promotion(ctx, p).confirm_takeover(HANDOFF_FROM, result), world)
    (answer,) = replies(world)
    ok = error is None and state is State.ACTIVE
    assert answer.ok is ok and answer.epoch == (CLAIM.epoch if ok else 0)
    if ok:
        assert p.leases.claim == CLAIM and p.became_standby == 0 and not world.calls_of(A.RELEASE_CLAIM)
    else:
        # Given back: lease cancelled, key released, and only then the handing-over side told.
        released = world.first_call(A.RELEASE_CLAIM)
        assert world.first(lambda a: isinstance(a, act.CancelLease)) < released
        assert released < world.first(lambda a: isinstance(a, act.Signal))
        assert p.became_standby == 1 and p.leases.claim is None
