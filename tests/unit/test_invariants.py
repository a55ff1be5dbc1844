"""The invariant checker must catch what it is there to catch (checked on hand-made journals)."""

from __future__ import annotations

import pytest

from tests.chaos.invariants import check

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
