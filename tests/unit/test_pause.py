"""The pause decision (perseus.core.pause) from every combination of facts: pure, no servers."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from perseus.core.pause import (
    checked_span,
    in_force,
    parse_span,
    pause_until,
    paused_for_ms,
    refuses_claim,
    steps_aside,
    watch_ends,
)
from perseus.timing import MAX_PAUSE_S


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("2h", 7200.0), ("90s", 90.0), ("1d", 86_400.0), ("45", 45.0), (" 1.5h ", 5400.0)],
)
def test_durations_read_in_their_units(text: str, seconds: float) -> None:
    assert parse_span(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "30x", "-5m", "0", "0s", "8d", "1e3", "30 minutes"])
def test_a_bad_duration_is_one_line_of_reason(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_span(text)
    assert "\n" not in str(caught.value) and str(caught.value)


def test_a_pause_is_bounded() -> None:
    assert checked_span(MAX_PAUSE_S) == MAX_PAUSE_S
    for bad in (0.0, -1.0, MAX_PAUSE_S + 1, float("nan")):
        with pytest.raises(ValueError):
            checked_span(bad)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert pause_until(now, 60) == now + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("pttl", "left"),
    [(None, None), (-2, None), (0, None), (1, 1.0), (1500, 1500.0), (-1, float("inf"))],
)
def test_the_pause_keys_ttl_is_its_deadline(pttl: int | None, left: float | None) -> None:
    # -2: no key (no pause); -1: a key without a TTL (a foreign writer) holds until resumed.
    assert paused_for_ms(pttl) == left


def test_a_pause_holds_until_its_deadline_not_after() -> None:
    assert not in_force(None, 10.0)
    assert in_force(10.5, 10.0)
    assert not in_force(10.0, 10.0)  # the deadline itself: over
    assert not in_force(9.0, 10.0)
    assert in_force(float("inf"), 1e12)


@pytest.mark.parametrize(("vacant", "silent", "paused"), list(itertools.product([False, True], repeat=3)))
def test_a_paused_watch_never_ends_for_a_vacancy(vacant: bool, silent: bool, paused: bool) -> None:
    ends = watch_ends(vacant=vacant, holder_silent=silent, paused=paused)
    if paused:
        assert not ends  # standbys keep watching: nobody races for the exchange
    else:
        assert ends == (vacant or silent)  # exactly today's rule


@pytest.mark.parametrize(("vacant", "silent", "paused"), list(itertools.product([False, True], repeat=3)))
def test_a_vacancy_handed_to_another_host_never_ends_the_watch(
    vacant: bool, silent: bool, paused: bool
) -> None:
    ends = watch_ends(vacant=vacant, holder_silent=silent, paused=paused, handed_elsewhere=True)
    # Only a silent holder (a target that claimed and died) is still raced for, and not while paused.
    assert ends == (silent and not paused)


@pytest.mark.parametrize(("paused", "automatic"), list(itertools.product([False, True], repeat=2)))
def test_only_an_automatic_claim_is_refused_and_only_while_paused(paused: bool, automatic: bool) -> None:
    # An operator's start or handoff is never held back by a pause; a self-promotion always is.
    assert refuses_claim(paused=paused, automatic=automatic) == (paused and automatic)


@pytest.mark.parametrize(("standbys", "paused"), list(itertools.product([False, True], repeat=2)))
def test_a_failing_holder_steps_aside_only_for_a_standby_allowed_to_take_over(
    standbys: bool, paused: bool
) -> None:
    # Paused, a step aside would leave the exchange vacant (no standby may claim it): restart instead.
    assert steps_aside(standbys=standbys, paused=paused) == (standbys and not paused)
