"""The watch part alone (``perseus.core.watch``), exhaustively: every way a standby's watch can end,
every field of the evidence it brings, every field of standbys ahead of it, woken or not while it
gives them their head start, and every answer to what it asks after — with its invariants after each.

The watch is handed the leases, status, standbys, warm and promotion parts and the core's ``end``;
here they are the real parts over a scripted world (``part_driver.World``). Every ``Patched`` is
answered True.

The invariants, from ``perseus/core/watch.py``, invariants 1 and 4 of ``perseus.core.decisions``
and ``docs/design.md``:

1. **Only a vacancy is raced for:** a watch that ran its term, or failed, claims nothing.
2. **Head starts first (invariant 4):** a standby claims no sooner after the vacancy than a head
   start per standby ahead of it (the higher priorities not backing off; every other one if it is
   backing off itself), plus the holder's head start right after a Redis outage — unless it is woken
   meanwhile, which ends the wait at once.
3. **The race carries the evidence:** the claim asks above the vacant epoch, claims over the
   holder's key only when the holder was seen silent past its deadline, is automatic (a pause
   refuses it), and the connector then waits out the old holder's renew deadline unless the key
   lapsed by its TTL (the holder's connector has stopped by then) or a later holder of the exchange
   said it stopped and released (it woke us to act at once).
4. **A failed watch ends the standby only when it is gone:** a record Redis lost is written back; a
   silent host whose record is still renewed keeps watching; otherwise the record is dropped and
   the run ends once, as ``standby lost``.
5. **A warm connector lost while waiting is forgotten** (warmed up again, a promotion starts cold)
   and said so in one error event under the standby's own id at epoch 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.lifecycle import Role, State
from perseus.core.promotion import Promotion
from perseus.core.state import Ending, WarmUp
from perseus.core.watch import Watch
from perseus.models import ClaimResult, EventKind, PromoteRequest, StandbyList, StandbyOutcome
from perseus.timing import HOLDER_HEAD_START, PRIORITY_HEAD_START, PRIORITY_HEAD_START_FLOOR_S, claim_over_s
from tests.unit.part_driver import (
    ACTING,
    APP_ERROR,
    HOST_QUEUE,
    NOT_PICKED_UP,
    SILENT,
    T0,
    Parts,
    World,
    case,
    context,
    drive,
    parts,
    standby,
)

pytestmark = pytest.mark.unit

A = act.Activity
SB_ID = "sb-1"
LAST_EPOCH = 11
PRIORITY = 5
STANDBY_GONE = act.Failure(message="standby record gone", error_type="StandbyGone")
BACKING_OFF_UNTIL = "2026-12-01T00:10:00Z"  # after T0: still behind every other standby


@dataclass
class Run:
    value: Any
    world: World
    parts: Parts
    promotion_at: Any = None


def watch(
    ending: Any,
    *,
    interval_s: float = 15.0,
    others: Any = None,
    backing_off: bool = False,
    woken: str | None = None,
    put: Any = None,
    live: Any = None,
    claim: Any = None,
    warm_here: bool = True,
    task: Any = None,
) -> Run:
    ctx = context(warm=True, interval_s=interval_s, priority=PRIORITY)
    p = parts(
        ctx,
        state=State.IDLE,
        claim=None,
        role=Role.STANDBY,
        standby_id=SB_ID,
        warm_here=warm_here,
        task=task,
        highest_epoch=3,
        start_retry_at=T0 + timedelta(minutes=10) if backing_off else None,
    )
    promotion = Promotion(
        ctx,
        p.host,
        warm=p.warm,
        waiting_for=lambda: False,
        enqueue=p.enqueue,
        become_standby=p.become_standby,
        # The host's restart is the loop's to remember (tests/unit/test_core.py drives it).
        restart_pending=lambda: False,
        restart_settled=lambda: None,
        leases=p.leases,
        status=p.status,
        standbys=p.standbys,
    )
    w = Watch(
        ctx,
        warm=p.warm,
        promotion=promotion,
        end=p.end,
        leases=p.leases,
        status=p.status,
        standbys=p.standbys,
    )

    def until(wait: act.WaitUntil) -> bool:
        if wait.summary == "head start" and woken:
            # The standby that went first could not start its connector: it wakes us, to act at
            # once if its connector is known stopped, else after its renew deadline.
            after = 0.0 if woken == "stopped" else claim_over_s(interval_s)
            p.standbys.promoted(
                PromoteRequest(reason="could not start", min_epoch=LAST_EPOCH + 1, act_after_s=after)
            )
        return wait.condition()

    scripts: dict[Any, list[Any]] = {}
    if others is not None:
        scripts[A.LIST_STANDBYS] = others if isinstance(others, list) else [others]
    if live is not None:
        scripts[A.LIST_STANDBYS] = [live]
    if put is not None:
        scripts[A.PUT_STANDBY] = [put]
    if claim is not None:
        scripts[A.CLAIM_AND_HOLD] = [claim]
    world = World(ctx, scripts, leases=[ending], until=until)
    value, _ = drive(w.after_watch(), world)
    return Run(value, world, p)


def ahead_of_us(others: Any, *, backing_off: bool) -> int:
    """Who goes first, counted here from the records themselves (not by the code under test)."""
    records = others.standbys if isinstance(others, StandbyList) else []
    if backing_off:
        return len(records)
    return sum(1 for x in records if x.priority > PRIORITY and x.start_retry_at is None)


def check(
    r: Run, ending: Any, *, others: Any = None, backing_off: bool = False, woken: str | None = None
) -> None:
    """The watch's invariants (the module docstring), after any run."""
    w, p = r.world, r.parts
    ended_at = w.seen[0].at  # the watch is taken at once: the vacancy is seen then
    claims = w.calls_of(A.CLAIM_AND_HOLD)
    vacant = isinstance(ending, StandbyOutcome) and ending.vacant
    # 1. Only a vacancy is raced for, once.
    assert len(claims) == (1 if vacant else 0)
    # 5. A warm connector lost while waiting is forgotten, and said so under our own id.
    lost_warm = isinstance(ending, StandbyOutcome) and ending.warm_lost
    errors = [e for e in w.events(EventKind.ERROR) if "stopped while waiting" in (e.error or "")]
    assert len(errors) == (1 if lost_warm else 0)
    for e in errors:
        assert (e.instance_id, e.epoch) == (SB_ID, 0)
    if lost_warm:
        assert not w.calls_of(A.CONNECTOR_ACTIVATE)  # a promotion now starts cold
    if not vacant:
        assert not w.calls_of(*ACTING) and not p.enqueued and p.standbys.role is Role.STANDBY
        return
    assert isinstance(ending, StandbyOutcome)
    interval = p.ctx.inp.heartbeat_interval_s
    # 2. Head starts first, unless woken.
    head_start = max(PRIORITY_HEAD_START * interval, PRIORITY_HEAD_START_FLOOR_S)
    owed = head_start * ahead_of_us(others, backing_off=backing_off)
    if ending.after_outage:
        owed += HOLDER_HEAD_START * interval
    waited = (claims[0].at - ended_at).total_seconds()
    if woken and owed:
        assert waited == 0.0  # woken: the wait ends at once
    else:
        assert waited == pytest.approx(owed)
    # 3. The race carries the evidence.
    request = claims[0].action.request.claim  # type: ignore[union-attr]
    assert request.highest_epoch >= LAST_EPOCH
    assert request.take_lapsed is ending.holder_silent
    assert request.automatic
    act_after = 0.0 if ending.lapsed else claim_over_s(interval)
    # A later holder that stopped and released (it woke us to act at once) ends that wait early.
    if any(not x.act_after_s and x.min_epoch >= LAST_EPOCH for x in p.standbys.promotions):
        act_after = 0.0
    won = isinstance(claims[0].answer, ClaimResult) and claims[0].answer.claimed
    for s in w.seen:
        if isinstance(s.action, act.Call) and s.action.activity in ACTING:
            assert (s.at - claims[0].at).total_seconds() >= act_after
    for q in p.enqueued:
        assert q.at is not None and (q.at - claims[0].at).total_seconds() >= act_after
    assert p.standbys.role is (Role.ACTIVE if won else Role.STANDBY)
    assert (p.leases.claim is not None) is won


# --- a watch that ended: the term, or a vacancy with every kind of evidence -----------------------

OUTCOMES = [
    StandbyOutcome(
        vacant=vacant,
        last_epoch=LAST_EPOCH,
        after_outage=outage,
        lapsed=lapsed,
        holder_silent=silent,
        warm_lost=warm_lost,
    )
    for vacant in (False, True)
    for outage in (False, True)
    for lapsed in (False, True)
    for silent in (False, True)
    for warm_lost in (False, True)
    if vacant or not (outage or lapsed or silent)
]
OTHERS: list[Any] = [
    pytest.param(APP_ERROR, id="list-unknown"),
    pytest.param(StandbyList(standbys=[]), id="alone"),
    pytest.param(StandbyList(standbys=[standby("host-b", priority=1)]), id="one-lower"),
    pytest.param(StandbyList(standbys=[standby("host-b", priority=9)]), id="one-higher"),
    pytest.param(
        StandbyList(
            standbys=[standby("host-b", priority=9), standby("host-c", priority=7), standby("host-d")]
        ),
        id="two-higher-one-lower",
    ),
    pytest.param(
        StandbyList(standbys=[standby("host-b", priority=9, start_retry_at=BACKING_OFF_UNTIL)]),
        id="higher-backing-off",
    ),
]


@pytest.mark.parametrize("interval_s", [1.0, 15.0])
@pytest.mark.parametrize(
    "woken", [None, "stopped", "not-stopped"], ids=["not-woken", "woken-at-once", "woken-later"]
)
@pytest.mark.parametrize("backing_off", [False, True], ids=["first-try", "backing-off-here"])
@pytest.mark.parametrize("others", OTHERS)
def test_a_vacancy_is_raced_for_only_after_the_head_starts_it_owes(
    others: Any, backing_off: bool, woken: str | None, interval_s: float
) -> None:
    for ending in OUTCOMES:
        for claim in (
            ClaimResult(claimed=True, epoch=LAST_EPOCH + 1),
            ClaimResult(claimed=False, epoch=LAST_EPOCH + 1),
        ):
            r = watch(
                ending,
                interval_s=interval_s,
                others=others,
                backing_off=backing_off,
                woken=woken,
                claim=claim,
            )
            with case(f"{ending}, {claim}"):
                assert r.value is True and not r.parts.ended
                check(r, ending, others=others, backing_off=backing_off, woken=woken)


@pytest.mark.parametrize("warming", [False, True], ids=["warm", "warming"])
@pytest.mark.parametrize("warm_lost", [False, True], ids=["connector-kept", "connector-lost"])
def test_a_watch_that_ran_its_term_claims_nothing_and_forgets_a_lost_warm_connector(
    warm_lost: bool, warming: bool
) -> None:
    ending = StandbyOutcome(vacant=False, last_epoch=LAST_EPOCH, warm_lost=warm_lost)
    r = watch(ending, task=WarmUp() if warming else None)
    check(r, ending)
    assert r.value is True and not r.parts.ended
    assert not r.world.calls_of(A.DROP_STANDBY) and r.parts.standbys.standby_id == SB_ID
    assert r.parts.warm.warm_here is not warm_lost
    assert (r.parts.warm.st.task is None) is (warm_lost or not warming)


# --- a watch that failed ---------------------------------------------------------------------------

LIVE: list[Any] = [
    pytest.param(StandbyList(standbys=[standby("host-a")]), id="record-renewed"),
    pytest.param(StandbyList(standbys=[standby("host-b")]), id="record-gone"),
    pytest.param(APP_ERROR, id="list-unknown"),
]


def _ours(record_list: Any) -> Any:
    """The list as Redis shows it with our own record in it (the standby id is ours)."""
    if not isinstance(record_list, StandbyList):
        return record_list
    return StandbyList(
        standbys=[
            x.model_copy(update={"instance_id": SB_ID}) if x.host == "host-a" else x
            for x in record_list.standbys
        ]
    )


@pytest.mark.parametrize("live", LIVE)
@pytest.mark.parametrize(
    "ending",
    [STANDBY_GONE, SILENT, NOT_PICKED_UP, APP_ERROR],
    ids=["record-lost", "silent", "no-worker", "app-error"],
)
def test_a_failed_watch_ends_the_standby_only_when_it_is_gone(ending: act.Failure, live: Any) -> None:
    r = watch(ending, live=_ours(live))
    check(r, ending)
    p, w = r.parts, r.world
    if ending is STANDBY_GONE:
        # Redis lost the record: write it back, and watch again.
        assert r.value is True and len(w.calls_of(A.PUT_STANDBY)) == 1
        assert not w.calls_of(A.DROP_STANDBY) and not p.ended
        return
    renewed = (
        ending.error_type is None and isinstance(live, StandbyList) and live.standbys[0].host == "host-a"
    )
    if renewed:
        # Its host still renews the record: it only lost Temporal.
        assert r.value is True and not p.ended and not w.calls_of(A.DROP_STANDBY)
    else:
        assert r.value is False
        assert len(w.calls_of(A.DROP_STANDBY)) == 1 and p.standbys.standby_id is None
        assert len(p.ended) == 1 and p.ended[0].startswith(f"{Ending.STANDBY_LOST}: ")


def test_a_vacancy_lists_the_standbys_on_our_host_first_then_on_the_shared_queue() -> None:
    """The holder's worker, likeliest to be cut off, may run our task: our host's worker, which just
    saw the vacancy, reads the list; only if nobody there takes it does the shared queue."""
    ahead = StandbyList(standbys=[standby(priority=PRIORITY + 1)])
    vacancy = StandbyOutcome(vacant=True, last_epoch=LAST_EPOCH, lapsed=True)
    for answers, queues in (([ahead], [HOST_QUEUE]), ([NOT_PICKED_UP, ahead], [HOST_QUEUE, None])):
        with case(f"{len(answers)} answers"):
            r = watch(vacancy, others=answers, interval_s=1.0)
            listed = r.world.calls_of(A.LIST_STANDBYS)
            assert [s.action.queue for s in listed] == queues  # type: ignore[union-attr]
            # The list read is the one the head start counts: one standby ahead of us.
            (claim,) = r.world.calls_of(A.CLAIM_AND_HOLD)
            waited = (claim.at - r.world.seen[0].at).total_seconds()
            assert waited == pytest.approx(PRIORITY_HEAD_START_FLOOR_S)


def test_a_standby_whose_lost_record_cannot_be_written_back_yet_keeps_watching() -> None:
    """Redis lost the record and refuses it back too: the standby says so and watches on (the
    watch's beats write the record), where it once failed its workflow run."""
    r = watch(STANDBY_GONE, put=APP_ERROR)
    assert r.value is True and not r.parts.ended
    assert any(isinstance(s.action, act.Log) and "not written yet" in s.action.message for s in r.world.seen)


# --- the host's worker started again -------------------------------------------------------------


@pytest.mark.parametrize("warm_here", [False, True])
@pytest.mark.parametrize("warming", [False, True])
def test_a_new_worker_drops_the_watch_and_the_warm_connector_of_the_old_one(
    warming: bool, warm_here: bool
) -> None:
    ctx = context(warm=True)
    p = parts(
        ctx,
        state=State.IDLE,
        claim=None,
        role=Role.STANDBY,
        standby_id=SB_ID,
        warm_here=warm_here,
        task=WarmUp() if warming else None,
    )
    promotion = Promotion(
        ctx,
        p.host,
        warm=p.warm,
        waiting_for=lambda: False,
        enqueue=p.enqueue,
        become_standby=p.become_standby,
        restart_pending=lambda: False,
        restart_settled=lambda: None,
        **p.shared(),
    )
    w = Watch(ctx, warm=p.warm, promotion=promotion, end=p.end, **p.shared())
    world = World(ctx)
    value, actions = drive(w.again(), world)
    assert value is True
    assert any(isinstance(a, act.CancelLease) for a in actions) and not p.leases.leasing
    assert any(isinstance(a, act.CancelWarmUp) for a in actions) is warming
    assert not p.warm.warm_here and p.warm.st.task is None
    assert not [a for a in actions if isinstance(a, act.Call)]  # asks nothing of the world
    assert p.standbys.role is Role.STANDBY and p.standbys.standby_id == SB_ID and not p.ended
