"""The lab's fault schedule (pure): a seed replays the same faults, four rounds give each clock rate
once and two each step, and every profile runs every kind plus its own Redis failovers."""

from __future__ import annotations

import pytest

from tests.lab.faults import (
    ALL_KINDS,
    BOUND_S,
    DRIFT_RATES,
    FAILSAFE_EXPECT,
    FAILSAFE_KINDS,
    FAILSAFE_PROFILE_KINDS,
    KINDS,
    PROFILE_KINDS,
    STEP_S,
    schedule,
)

pytestmark = pytest.mark.unit


def test_a_seed_replays_the_same_schedule() -> None:
    assert schedule(42, 3, PROFILE_KINDS["sentinel"]) == schedule(42, 3, PROFILE_KINDS["sentinel"])
    assert schedule(42, 3) != schedule(43, 3)


def test_rounds_cover_every_rate_and_both_steps() -> None:
    faults = schedule(7, 4)
    rates = sorted(f.arg for f in faults if f.kind == "clock-drift")
    steps = sorted(f.arg for f in faults if f.kind == "clock-step")
    assert rates == sorted(DRIFT_RATES)
    assert steps == sorted(STEP_S * 2)
    assert {f.label for f in faults if f.kind == "clock-drift"} == {
        "clock-drift x1.10",
        "clock-drift x0.90",
        "clock-drift x1.01",
        "clock-drift x0.99",
    }
    assert [f.kind for f in faults].count("kill") == 4


def test_every_profile_runs_every_kind_and_every_kind_has_a_bound() -> None:
    for profile, kinds in PROFILE_KINDS.items():
        assert set(KINDS) <= set(kinds), profile
        assert {f.kind for f in schedule(1, 1, kinds)} == set(kinds)
    every = {
        k for table in (PROFILE_KINDS, FAILSAFE_PROFILE_KINDS) for kinds in table.values() for k in kinds
    }
    assert set(BOUND_S) == every == set(ALL_KINDS)


def test_the_failsafe_kinds_are_a_schedule_of_their_own() -> None:
    """They need an exchange with the failsafe on, so no profile's plain schedule (the one `make
    test` runs) has them; every one has its expected outcome, and a seed replays them too."""
    assert not set(FAILSAFE_KINDS) & {k for kinds in PROFILE_KINDS.values() for k in kinds}
    assert set(FAILSAFE_EXPECT) == set(FAILSAFE_KINDS) == set(FAILSAFE_PROFILE_KINDS["single"])
    assert set(FAILSAFE_PROFILE_KINDS) == set(PROFILE_KINDS)
    faults = schedule(5, 3, FAILSAFE_KINDS)
    assert faults == schedule(5, 3, FAILSAFE_KINDS)
    assert sorted(f.kind for f in faults) == sorted(FAILSAFE_KINDS * 3)
    # Held past the renew deadline (2 I), so that the holder acts on promises for a while.
    assert min(f.hold_i for f in faults) >= 4.0
