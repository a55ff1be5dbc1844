"""The invariant checker must catch what it is there to catch (checked on hand-made journals)."""

from __future__ import annotations

import pytest

from tests.chaos.invariants import (
    DISPATCH_MARGIN_S,
    Liveness,
    Recovery,
    Timing,
    Window,
    blame,
    check,
    idle_stretches,
    liveness_bound_s,
    longest_runnable,
    runnable_parts,
)

pytestmark = pytest.mark.unit


def line(t: float, kind: str, pid: int, **kw: object) -> dict[str, object]:
    return {"t": t, "kind": kind, "pid": pid, "workflowId": f"wf{pid}", "exchange": "x", **kw}


def transition(eid: str, inst: str, epoch: int, frm: str, to: str) -> dict[str, str]:
    return {
        "event": "state_transition",
        "eventId": eid,
        "instanceId": inst,
        "epoch": str(epoch),
        "fromState": frm,
        "toState": to,
    }


def test_overlapping_acting_connectors_are_a_violation() -> None:
    journal = [
        line(0, "valid_until", 1, until=10),
        line(1, "connect", 1),
        line(5, "valid_until", 2, until=15),
        line(6, "connect", 2),
    ]
    violations = check(journal, [], now=8).violations
    assert len(violations) == 1 and "wf1@1 and wf2@2 both acted" in violations[0]


def test_a_paused_holder_stops_acting_when_its_validity_ends() -> None:
    # Holder 1 renewed at t=0 (valid until 2) then froze; it disconnects only at t=9 on resume.
    journal = [
        line(0, "valid_until", 1, until=2),
        line(0.5, "connect", 1),
        line(9, "disconnect", 1),
        line(3, "valid_until", 2, until=5),
        line(3.5, "connect", 2),
    ]
    assert check(journal, [], now=10).violations == []


def test_epochs_and_chains() -> None:
    good = [
        transition("a", "i1", 1, "idle", "starting"),
        transition("b", "i1", 1, "starting", "warming"),
        transition("c", "i2", 2, "idle", "starting"),
        transition("d", "i1", 1, "warming", "idle"),
    ]
    assert check([], good, now=0, holders=[("i1", 1), ("i1", 1), ("i2", 2)]).violations == []
    reused = good + [transition("e", "i3", 1, "idle", "starting")]
    assert any("epoch 1 was used by 2 claims" in v for v in check([], reused, now=0).violations)
    assert any(
        "holder went from epoch 2 to 1" in v
        for v in check([], good, now=0, holders=[("i2", 2), ("i1", 1)]).violations
    )
    dup = good + [good[0]]
    assert any("written twice" in v for v in check([], dup, now=0).violations)
    gap = [transition("a", "i1", 1, "idle", "starting"), transition("b", "i1", 1, "warming", "active")]
    assert any("missing or repeated" in v for v in check([], gap, now=0).violations)


def test_a_warm_standby_acts_only_after_activate_with_its_own_new_epoch() -> None:
    good = [
        line(0, "valid_until", 1, until=2, epoch=4),
        line(0.1, "connect", 1, epoch=4),
        line(1, "disconnect", 1),
        line(1.1, "valid_until", 2, until=3, epoch=5),
        line(1.2, "connect", 2, epoch=5, warm=True),
        line(2, "valid_until", 2, until=4, epoch=5),
    ]
    assert check(good, [], now=3).violations == []
    no_claim = [*good[:3], line(1.2, "connect", 2, epoch=0, warm=True)]
    assert any("activated without a claim" in v for v in check(no_claim, [], now=3).violations)
    stale = [
        *good[:3],
        line(1.1, "valid_until", 2, until=3, epoch=4),
        line(1.2, "connect", 2, epoch=4, warm=True),
    ]
    assert any("not above epoch 4" in v for v in check(stale, [], now=3).violations)
    foreign = [*good, line(2.5, "valid_until", 2, until=5, epoch=6)]
    assert any("acted on renewals of epoch 6" in v for v in check(foreign, [], now=3).violations)


# --- liveness ----------------------------------------------------------------------------------------

#: The chaos suite's timing: a 1 s interval and the simulated connector's 0.7 s cold walk.
#: The checker's scenarios below are written for a 1 s dispatch margin (the suite's own is
#: DISPATCH_MARGIN_S).
TIMING = {"x": Timing(interval_s=1.0, walk_s=0.7, margin_s=1.0)}


def acts(pid: int, start: float, end: float) -> list[dict[str, object]]:
    """Connector ``pid`` connected at ``start`` with its claim renewed every second, and
    disconnected at ``end``."""
    renewals = [line(t, "valid_until", pid, until=t + 2) for t in range(int(start), int(end) + 1)]
    return [*renewals, line(start, "connect", pid), line(end, "disconnect", pid)]


def test_the_suite_allows_its_own_dispatch_margin() -> None:
    assert liveness_bound_s(1.0, 0.7) == pytest.approx(4.9 - 1.0 + DISPATCH_MARGIN_S)
    assert Timing(1.0, 0.7).margin_s == DISPATCH_MARGIN_S


def test_the_bound_is_detection_plus_walk_plus_margin_per_path() -> None:
    # Crash on three hosts: claim-over line 2.1 + look 0.1 + one head start (a quarter interval,
    # at least 1 s) + walk 0.7 + dispatch 1.0.
    assert liveness_bound_s(1.0, 0.7, margin_s=1.0) == pytest.approx(4.9)
    # Graceful stop: one interval + walk + dispatch; handoff: walk + two dispatches.
    assert liveness_bound_s(1.0, 0.7, Recovery.GRACEFUL, margin_s=1.0) == pytest.approx(2.7)
    assert liveness_bound_s(1.0, 0.7, Recovery.HANDOFF, margin_s=1.0) == pytest.approx(2.7)
    # A failed promotion: the crash's bound, then the failed walk once more and the margin.
    assert liveness_bound_s(1.0, 0.7, Recovery.FAILED_PROMOTION, margin_s=1.0) == pytest.approx(4.9 + 1.7)
    # Detection scales with the interval, the walk is added once; every further host may be a
    # dead standby ahead of the winner; with two hosts nobody is.
    assert liveness_bound_s(15.0, 0.7, margin_s=1.0) == pytest.approx(2.35 * 15 + 0.1 + 0.7 + 1.0)
    assert liveness_bound_s(1.0, 0.7, hosts=5, margin_s=1.0) == pytest.approx(6.9)
    assert liveness_bound_s(1.0, 0.7, hosts=2, margin_s=1.0) == pytest.approx(3.9)
    # Redis back: next look 1 + holder's head start 1 + one standby's 1 + the vacancy's wait
    # 2.1 + walk + dispatch.
    assert liveness_bound_s(1.0, 0.7, Recovery.REDIS_BACK, margin_s=1.0) == pytest.approx(6.8)


def test_a_gap_within_the_bound_passes_and_is_measured() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 9, 12)
    report = check(journal, [], now=12, liveness=Liveness(TIMING))
    assert report.violations == []
    assert [(g.start, g.end, g.counted) for g in report.gaps] == [(5, 9, 4)]


def test_a_gap_over_the_bound_is_a_violation_blamed_on_its_fault() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 10, 12)
    kill = Window(4.9, 10.5, "SIGKILL active worker #3")
    violations = check(journal, [], now=12, liveness=Liveness(TIMING, faults=[kill])).violations
    assert violations == [
        "x: no connector acted for 5.000s while an instance could run it, over B 4.900s (crash), "
        "during 'SIGKILL active worker #3'"
    ]


def test_an_exchange_that_never_comes_back_is_judged_until_now() -> None:
    journal = acts(1, 0.5, 5)
    assert check(journal, [], now=9, liveness=Liveness(TIMING)).violations == []
    assert len(check(journal, [], now=10, liveness=Liveness(TIMING)).violations) == 1


def test_a_deliberate_stop_of_every_instance_is_excluded() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 30, 32)
    stopped = Window(5, 27, "every instance stopped")
    assert check(journal, [], now=32, liveness=Liveness(TIMING, cannot_run=[stopped])).violations == []
    # The clock starts again when they may run: 3 s after the window is fine, 5 s is not.
    early = Window(5, 25, "every instance stopped")
    violations = check(journal, [], now=32, liveness=Liveness(TIMING, cannot_run=[early])).violations
    assert len(violations) == 1 and "for 5.000s" in violations[0] and "(25.000s in all)" in violations[0]


def test_an_outage_of_every_host_is_excluded_and_the_longest_runnable_part_counts() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 20, 22)
    down = Window(6, 17, "Redis down")
    assert check(journal, [], now=22, liveness=Liveness(TIMING, cannot_run=[down])).violations == []
    # An outage in the middle does not excuse the part before it: 5 → 10 is 5 s with hosts up.
    late = Window(10, 17, "Redis down")
    violations = check(journal, [], now=22, liveness=Liveness(TIMING, cannot_run=[late])).violations
    assert len(violations) == 1 and "for 5.000s" in violations[0]


def test_the_part_after_an_outage_is_held_to_the_bound_of_its_way_back() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 17.5, 20)  # 5.5 s after the outage: over a crash's B
    redis = Window(5, 12, "Redis away", Recovery.REDIS_BACK)
    assert check(journal, [], now=20, liveness=Liveness(TIMING, cannot_run=[redis])).violations == []
    temporal = Window(5, 12, "Temporal away")
    violations = check(journal, [], now=20, liveness=Liveness(TIMING, cannot_run=[temporal])).violations
    assert len(violations) == 1 and "for 5.500s" in violations[0] and "B 4.900s (crash)" in violations[0]
    # Both away, overlapping: the loosest way back applies, also when one lies inside the other.
    both = Liveness(TIMING, cannot_run=[Window(5, 11, "Redis away", Recovery.REDIS_BACK), temporal])
    assert check(journal, [], now=20, liveness=both).violations == []
    inside = Liveness(TIMING, cannot_run=[Window(4, 12, "Temporal away"), redis])
    assert check(journal, [], now=20, liveness=inside).violations == []
    # The part before the outage keeps the fault's bound, whatever follows.
    late_outage = Liveness(TIMING, cannot_run=[Window(10, 12, "Redis away", Recovery.REDIS_BACK)])
    violations = check(journal, [], now=20, liveness=late_outage).violations
    assert len(violations) == 1 and "for 5.000s" in violations[0] and "(crash)" in violations[0]


def test_planned_paths_are_held_to_their_own_bound() -> None:
    journal = acts(1, 0.5, 5) + acts(2, 8, 9)  # 3 s without a connector
    handoff = Window(4.8, 8.5, "planned handoff #1", Recovery.HANDOFF)
    violations = check(journal, [], now=9, liveness=Liveness(TIMING, faults=[handoff])).violations
    assert len(violations) == 1 and "over B 2.700s (handoff), during 'planned handoff #1'" in violations[0]
    # The same gap beginning after the handoff was healed is a late effect: a crash's bound.
    healed = Window(1, 2, "planned handoff #1", Recovery.HANDOFF)
    assert check(journal, [], now=9, liveness=Liveness(TIMING, faults=[healed])).violations == []


def test_a_killed_worker_stops_acting_at_the_kill_not_at_its_validity() -> None:
    # Renewed at 4 (valid until 6) and killed at 4.2; the standby acts from 9.5.
    journal = [
        line(0, "valid_until", 1, until=2),
        line(0.5, "connect", 1),
        line(2, "valid_until", 1, until=4),
        line(4, "valid_until", 1, until=6),
        *acts(2, 9.5, 12),
    ]
    assert check(journal, [], now=12, liveness=Liveness(TIMING)).violations == []  # 6 → 9.5: 3.5 s
    killed = check(journal, [], now=12, liveness=Liveness(TIMING, killed={1: 4.2})).violations
    assert len(killed) == 1 and "for 5.300s" in killed[0]
    # A pid killed before the connector connected is an older process that had the same number.
    assert check(journal, [], now=12, liveness=Liveness(TIMING, killed={1: 0.1})).violations == []


def test_the_kill_does_not_excuse_an_overlap() -> None:
    # Safety keeps the validity: a killed connector's window still overlaps its successor's.
    journal = [line(0, "valid_until", 1, until=10), line(1, "connect", 1), *acts(2, 6, 8)]
    violations = check(journal, [], now=8, liveness=Liveness(TIMING, killed={1: 5})).violations
    assert any("both acted" in v for v in violations)


def test_stretches_and_blame_are_plain_interval_arithmetic() -> None:
    assert idle_stretches([(1, 2, "a"), (1.5, 3, "b"), (5, 6, "c")], 0, 7) == [(0, 1), (3, 5), (6, 7)]
    assert idle_stretches([(0, 10, "a")], 0, 7) == []
    outages = [Window(2, 3, "a"), Window(2.5, 4, "b"), Window(8, 9, "c")]
    assert longest_runnable(1, 10, outages) == 4  # 4 → 8
    assert longest_runnable(2, 3, outages) == 0
    assert runnable_parts(1, 10, outages) == [(1, 2, []), (4, 8, outages[:2]), (9, 10, outages[2:])]
    faults = [Window(1, 2, "f #1"), Window(5, 6, "g #1")]
    assert blame(0.5, faults) == (None, False)
    assert blame(1.5, faults) == (faults[0], False)
    assert blame(3, faults) == (faults[0], True)
    assert faults[1].kind == "g"


def test_a_handoff_whose_target_dies_is_held_to_the_handoff_and_then_a_crash() -> None:
    handoff = liveness_bound_s(1.0, 0.7, Recovery.HANDOFF, margin_s=1.0)
    crash = liveness_bound_s(1.0, 0.7, Recovery.CRASH, margin_s=1.0)
    lost = liveness_bound_s(1.0, 0.7, Recovery.HANDOFF_TARGET_LOST, margin_s=1.0)
    assert lost == pytest.approx(handoff + crash)
