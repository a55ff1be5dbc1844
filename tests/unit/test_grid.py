"""The renewal grid's arithmetic: which slot a due time falls in, when that slot starts (never after
the due time), how a batch is split by server; and that loops waiting for one slot wake together."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from perseus.host.grid import (
    TROUBLED_SPANS_PER_S,
    RenewalGrid,
    groups_of,
    slot_of,
    slot_start,
    worth_a_span,
)
from perseus.timing import GRID_SLOT_S, HEALTHY_SPAN_EVERY_S

pytestmark = pytest.mark.unit


def test_a_renewal_never_starts_after_it_is_due_nor_more_than_a_slot_before() -> None:
    rng = random.Random(18)
    times = [rng.uniform(0, 1e7) for _ in range(20_000)]
    # Exact multiples of the slot too: where float division lands on either side of an integer.
    times += [k * GRID_SLOT_S for k in range(0, 50_000, 7)] + [k * 0.3 for k in range(10_000)]
    for t in times:
        start = slot_start(t)
        assert start <= t
        assert t - start < GRID_SLOT_S + 1e-6


def test_due_times_one_interval_apart_keep_their_place_in_the_grid() -> None:
    """A claim renewed every 15 s lands in the same place of the grid every time (150 slots on), so
    the claims that shared a batch once go on sharing it."""
    for first in (0.0, 0.05, 12.34, 98_765.4321):
        slots = [slot_of(first + k * 15.0) for k in range(200)]
        steps = {b - a for a, b in itertools.pairwise(slots)}
        assert steps <= {149, 150, 151} and sum(s == 150 for s in steps) >= 1
        assert slots[-1] - slots[0] in (199 * 150 - 1, 199 * 150, 199 * 150 + 1)


def test_slots_are_the_grid_step_wide() -> None:
    assert slot_of(0.0) == 0 and slot_of(0.0999) == 0 and slot_of(0.1001) == 1
    assert slot_of(10.05, 0.5) == 20 and slot_start(10.05, 0.5) == 10.0
    assert slot_of(-0.05) == -1  # monotonic time can be anything; the grid does not mind


def test_a_batch_splits_by_server_in_first_seen_order() -> None:
    assert groups_of([]) == []
    assert groups_of(["a"] * 4) == [[0, 1, 2, 3]]
    assert groups_of(["b", "a", "b", "c", "a"]) == [[0, 2], [1, 4], [3]]
    every = groups_of([i % 3 for i in range(10)])
    assert sorted(i for g in every for i in g) == list(range(10))


async def test_loops_due_within_one_slot_wake_in_the_same_turn() -> None:
    """Their renewals can join one batch only if they ask in the same turn of the event loop: the
    first one up schedules a callback for the next turn (as the grid's batch does), and every other
    one must be up before it runs."""
    grid = RenewalGrid(None)  # type: ignore[arg-type]  # waiting needs no Redis
    loop = asyncio.get_running_loop()
    next_turn: list[bool] = []  # set once the turn after the first wake-up has begun
    late: list[float] = []
    base = (slot_of(time.monotonic()) + 3) * GRID_SLOT_S  # a slot some way ahead
    # Inside the slot, not on its edges: k × 0.1 / 0.1 falls just below k for some k (floats), and a
    # due time exactly on the boundary may then belong to the slot before.
    dues = [base + f * GRID_SLOT_S for f in (0.01, 0.2, 0.5, 0.9, 0.99)]

    async def wait(due: float) -> None:
        await grid.until(due)
        if not next_turn:
            next_turn.append(False)
            loop.call_soon(next_turn.__setitem__, 0, True)
        elif next_turn[0]:
            late.append(due)

    try:
        await asyncio.gather(*(wait(d) for d in dues))
    finally:
        await grid.close()
    assert next_turn and late == []


async def test_a_due_time_already_past_does_not_wait() -> None:
    grid = RenewalGrid(None)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(grid.until(time.monotonic() - 5), 0.5)  # bounded: must return at once
    finally:
        await grid.close()


def test_a_batch_that_went_wrong_always_gets_a_span_a_healthy_one_once_a_second() -> None:
    assert worth_a_span(False, 0.0)  # failed, refused, missing or slow ...
    assert worth_a_span(False, 0.0, TROUBLED_SPANS_PER_S - 1)
    assert not worth_a_span(False, 0.0, TROUBLED_SPANS_PER_S)  # ... up to a few a second
    assert not worth_a_span(True, HEALTHY_SPAN_EVERY_S - 0.01)
    assert worth_a_span(True, HEALTHY_SPAN_EVERY_S)
    assert worth_a_span(True, float("inf"))  # the first healthy batch of a process
