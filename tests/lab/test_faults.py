"""The lab's fault schedule (pure): a seed replays the same faults, four rounds give each clock rate
once and two each step, and every profile runs every kind plus its own Redis failovers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

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
    REPLY_DELAY_I,
    STEP_S,
    schedule,
)
from tests.lab.proxy import Shaping

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


def test_late_replies_come_past_a_renewal_for_longer_than_they_last() -> None:
    """``redis-replies-delayed`` on every profile: each fault's replies come 1.5-3 I late, drawn by
    the seed (so a replay has the same delays), always past a renewal's bound (I/2) and within the
    fault's hold (the late replies arrive while it lasts); its bound is a crash's B, as the other
    kinds that stop the holder at its deadline."""
    for kinds in PROFILE_KINDS.values():
        assert "redis-replies-delayed" in kinds
    faults = [f for f in schedule(11, 8) if f.kind == "redis-replies-delayed"]
    assert faults == [f for f in schedule(11, 8) if f.kind == "redis-replies-delayed"]
    assert len(faults) == 8
    delays = [f.arg for f in faults]
    assert all(REPLY_DELAY_I[0] <= d <= REPLY_DELAY_I[1] for d in delays)
    assert REPLY_DELAY_I[0] > 0.5
    assert len(set(delays)) > 1  # drawn, not fixed
    assert all(f.hold_i > f.arg for f in faults)
    assert {f.label for f in faults} == {"redis-replies-delayed"}  # one row in the report
    assert BOUND_S["redis-replies-delayed"] == BOUND_S["kill"]


def test_the_relay_delays_only_the_replies_of_the_ports_named(tmp_path: Path) -> None:
    """The relay's control file: replies of a ``delay_replies`` port wait the reply delay; its
    requests, and the replies of every other port, do not."""
    control = tmp_path / "control"
    control.write_text(json.dumps({"delay_replies": [6379], "reply_delay_ms": 2000}))
    shaping = Shaping(control, seed=1)

    async def one_read() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await shaping.follow()

    asyncio.run(one_read())
    assert shaping.pause(replies_of=6379) == 2.0
    assert shaping.pause() == 0.0
    assert shaping.pause(replies_of=5432) == 0.0
    control.write_text("{}")
    asyncio.run(one_read())
    assert shaping.pause(replies_of=6379) == 0.0
