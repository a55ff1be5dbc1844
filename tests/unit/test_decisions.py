"""The instance's decisions, from every combination of facts: pure, no servers."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from perseus import timing
from perseus.core import decisions
from perseus.core.decisions import (
    HostVerdict,
    InstanceFacts,
    LeaseVerdict,
    LoopFacts,
    Step,
    judge_claim,
    lease_verdict,
    next_step,
    refuse_command,
    refuse_handoff,
    restart_delay,
    target_not_ready,
    vacancy_delay,
    warm_retry_delay,
)
from perseus.core.lifecycle import Command, Role, State, plan, projected_state
from perseus.errors import InvalidTransition, error_class
from perseus.models import PromoteRequest, StandbyRecord

pytestmark = pytest.mark.unit

ALL_FACTS = [
    LoopFacts(role, lease_done, going_down, promotions, queued, history_long, restarted)
    for role, lease_done, going_down, promotions, queued, history_long, restarted in itertools.product(
        Role, (False, True), (False, True), (0, 1, 2), (0, 1), (False, True), (False, True)
    )
]


@pytest.mark.parametrize("facts", ALL_FACTS, ids=str)
def test_next_step_takes_the_most_urgent_work_first(facts: LoopFacts) -> None:
    step = next_step(facts)
    # Invariant 2: a finished lease (maybe a lost claim) outranks everything else.
    if facts.lease_done:
        assert step is Step.LEASE_ENDED
    elif facts.host_going_down:
        assert step is Step.HOST_GOING_DOWN
    elif facts.promotions:
        assert step is (Step.PROMOTE if facts.role is Role.STANDBY else Step.CONFIRM_PROMOTION)
    elif facts.host_restarted:
        # The lease or watch died with the old worker: judged before commands wait on it.
        assert step is Step.HOST_RESTARTED
    elif facts.queued:
        # A caller waiting on a command is answered before the run continues as new.
        assert step is Step.COMMAND
    elif facts.history_long:
        assert step is Step.CONTINUE_AS_NEW
    else:
        assert step is None


def test_every_step_is_reachable() -> None:
    assert {next_step(f) for f in ALL_FACTS} == {*Step, None}


@pytest.mark.parametrize(
    ("error_type", "verdict"),
    [
        ("ConnectorFailed", LeaseVerdict.CONNECTOR_FAILED),
        ("ConnectorUnhealthy", LeaseVerdict.RESTART_UNHEALTHY),
        ("ConnectorFailover", LeaseVerdict.STEP_ASIDE),
        ("ClaimMissing", LeaseVerdict.RECLAIM),
        ("RenewDeadline", LeaseVerdict.RECLAIM),
        ("ClaimLost", LeaseVerdict.LOST),
        (None, LeaseVerdict.REATTACH),  # a heartbeat or schedule-to-start timeout
        ("ServiceUnavailable", LeaseVerdict.REATTACH),
        ("WorkerShutdown", LeaseVerdict.REATTACH),
    ],
)
def test_lease_verdicts(error_type: str | None, verdict: LeaseVerdict) -> None:
    """By the error's class, as a failure names it (ApplicationError.type); names outside the tree
    are no class at all."""
    assert lease_verdict(error_class(error_type)) is verdict


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0, 15.0, 3600.0])
def test_a_claim_is_freed_only_past_the_renew_deadline(interval: float) -> None:
    """Invariant 1, over a fine grid of ages: never STOPPED at or inside the deadline + margin —
    the workflow's own judgement does not read the record, so it draws the line for a holder that
    does not declare its deadline (the latest any holder may have)."""
    deadline_ms = timing.UNDECLARED_RENEW_DEADLINE_FACTOR * interval * 1000
    for tenth in range(0, 61):
        age_ms = int(tenth / 10 * interval * 1000)
        verdict = judge_claim(True, age_ms, interval)
        if age_ms <= deadline_ms + timing.RELEASE_MARGIN * interval * 1000:
            assert verdict is not HostVerdict.STOPPED, (age_ms, interval)
        else:
            assert verdict is HostVerdict.STOPPED, (age_ms, interval)
        if age_ms <= timing.ALIVE_INTERVALS * interval * 1000:
            assert verdict is HostVerdict.ALIVE


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0, 15.0, 3600.0])
def test_stale_in_names_the_moment_judge_claim_turns_stopped(interval: float) -> None:
    for tenth in range(0, 41):
        age_ms = int(tenth / 10 * interval * 1000)
        wait = decisions.stale_in(age_ms, interval)
        assert wait >= 0
        if wait > 0:  # not yet stale now, and not a millisecond before the wait is over
            assert judge_claim(True, age_ms, interval) is not HostVerdict.STOPPED
            assert judge_claim(True, age_ms + int(wait * 1000) - 1, interval) is not HostVerdict.STOPPED
            assert judge_claim(True, age_ms + int(wait * 1000) + 1, interval) is HostVerdict.STOPPED
        else:
            assert judge_claim(True, age_ms + 1, interval) is HostVerdict.STOPPED


def test_a_claim_that_is_not_ours_or_has_no_ttl_proves_nothing_alive() -> None:
    assert judge_claim(False, 0, 1.0) is HostVerdict.STOPPED
    assert judge_claim(True, None, 1.0) is HostVerdict.STOPPED


@pytest.mark.parametrize("interval", [0.5, 1.0, 15.0])
def test_after_a_vacancy_nothing_acts_before_a_holder_that_renewed_just_before_could(interval: float) -> None:
    """Redis lost the key right after the holder renewed: the holder acts until its renew deadline,
    so the standby that claimed the vacancy must not act before that deadline plus the margin."""
    deadline = timing.RENEW_DEADLINE_FACTOR * interval
    assert decisions.act_after_vacancy_s(interval) > deadline
    assert decisions.stale_in(0, interval) == decisions.act_after_vacancy_s(interval)


@pytest.mark.parametrize("interval", [0.5, 1.0, 15.0])
def test_a_key_seen_past_its_deadline_before_it_vanished_lapsed_and_nothing_waits(interval: float) -> None:
    """Past the renew deadline by Redis's clock is exactly judge_claim's STOPPED; only then may a
    vacancy be taken as the TTL running out (no wait), never for a key that still had life in it."""
    ttl_ms = 3 * interval * 1000
    for renewed_ms_ago in range(0, int(ttl_ms) + 1, max(1, int(ttl_ms) // 97)):
        past = decisions.past_renew_deadline(int(ttl_ms - renewed_ms_ago), interval)
        stopped = judge_claim(True, renewed_ms_ago, interval) is HostVerdict.STOPPED
        assert past == stopped, renewed_ms_ago
    fresh = int(ttl_ms - timing.RENEW_DEADLINE_FACTOR * interval * 1000)  # exactly at the deadline
    assert not decisions.past_renew_deadline(fresh, interval)
    assert decisions.act_after_vacancy_s(interval, lapsed=True) == 0.0
    assert decisions.act_after_vacancy_s(interval, lapsed=False) == decisions.act_after_vacancy_s(interval)


def test_vacancy_delay_orders_standbys_and_lets_the_holder_go_first_after_an_outage() -> None:
    assert vacancy_delay(0, 1.0, after_outage=False) == 0
    delays = [vacancy_delay(ahead, 2.0, after_outage=False) for ahead in range(4)]
    assert delays == sorted(delays) and len(set(delays)) == 4
    # After an outage even the first standby waits at least one interval for the holder.
    assert vacancy_delay(0, 2.0, after_outage=True) >= 2.0
    assert vacancy_delay(2, 2.0, after_outage=True) > vacancy_delay(2, 2.0, after_outage=False)


def test_restart_delay_backs_off_and_stops() -> None:
    assert [restart_delay("on-failure", n, 5, 1.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, None]
    assert restart_delay("no", 0, 5, 1.0) is None


def facts(**change: object) -> InstanceFacts:
    base = {
        "workflow_id": "instance-kraken-a",
        "exchange": "kraken",
        "host": "a",
        "role": Role.ACTIVE,
        "state": State.IDLE,
        "queued": (),
        "gone": None,
        "host_going_down": False,
    }
    return InstanceFacts(**{**base, **change})  # type: ignore[arg-type]


QUEUES = [(), (Command.START,), (Command.STOP,), (Command.START, Command.STOP), (Command.SHUTDOWN,)]


@pytest.mark.parametrize(
    ("role", "state", "queued", "command"),
    list(itertools.product(Role, State, QUEUES, Command)),
    ids=str,
)
def test_refuse_command_from_every_state(
    role: Role, state: State, queued: tuple[Command, ...], command: Command
) -> None:
    """Invariant 3: accepted exactly when the state machine, role and queue allow it."""
    f = facts(role=role, state=state, queued=queued)
    try:
        projected = projected_state(state, list(queued))
        plan(command, projected)
        machine_allows = True
    except InvalidTransition:
        machine_allows = False
    expected = (
        machine_allows
        and Command.SHUTDOWN not in queued
        and command is not Command.HANDOFF
        and (role is Role.ACTIVE or command is Command.SHUTDOWN)
    )
    if expected:
        refuse_command(f, command)
    else:
        with pytest.raises(InvalidTransition):
            refuse_command(f, command)


@pytest.mark.parametrize("command", list(Command))
def test_nothing_is_accepted_once_gone_or_going_down(command: Command) -> None:
    with pytest.raises(InvalidTransition, match="not registered any more"):
        refuse_command(facts(gone="shut down"), command)
    with pytest.raises(InvalidTransition, match="shutting down"):
        refuse_command(facts(host_going_down=True), command)


@pytest.mark.parametrize(("role", "state"), list(itertools.product(Role, State)), ids=str)
def test_refuse_handoff(role: Role, state: State) -> None:
    f = facts(role=role, state=state)
    try:
        plan(Command.HANDOFF, state)
        machine_allows = True
    except InvalidTransition:
        machine_allows = False
    if role is Role.ACTIVE and machine_allows:
        refuse_handoff(f, "b")
        with pytest.raises(InvalidTransition, match="already runs"):
            refuse_handoff(f, "a")
        with pytest.raises(InvalidTransition, match="busy"):
            refuse_handoff(facts(role=role, state=state, queued=(Command.STOP,)), "b")
    else:
        with pytest.raises(InvalidTransition):
            refuse_handoff(f, "b")


# --- warm standbys (invariant 5) ---------------------------------------------------------------------


@pytest.mark.parametrize(("warm_here", "warming"), list(itertools.product([False, True], repeat=2)))
def test_only_a_standby_known_warm_and_not_still_warming_is_activated(warm_here: bool, warming: bool) -> None:
    expected = decisions.StartPath.WARM if warm_here and not warming else decisions.StartPath.COLD
    assert decisions.start_path(warm_here=warm_here, warming=warming) is expected


@pytest.mark.parametrize(
    ("role", "warm", "warm_here", "warming"), list(itertools.product(Role, *[[False, True]] * 3))
)
def test_a_warm_standby_warms_up_once_and_only_as_a_standby(
    role: Role, warm: bool, warm_here: bool, warming: bool
) -> None:
    wanted = decisions.warm_up_standby(role=role, warm=warm, warm_here=warm_here, warming=warming)
    assert wanted == (role is Role.STANDBY and warm and not warm_here and not warming)
    if role is Role.ACTIVE or not warm:
        assert not wanted  # an active instance, or a cold standby, never runs a standby connector


def test_a_handoff_demotes_only_a_warm_instance_that_stays() -> None:
    assert decisions.handoff_demotes(shutdown=False, warm=True)
    assert not decisions.handoff_demotes(shutdown=True, warm=True)  # leaving: stop it
    assert not decisions.handoff_demotes(shutdown=False, warm=False)  # cold: no command pipe


@pytest.mark.parametrize(
    ("role", "connected", "activating"), list(itertools.product(Role, *[[False, True]] * 2))
)
def test_only_a_connector_that_cannot_act_outlives_its_claim(
    role: Role, connected: bool, activating: bool
) -> None:
    keeps = decisions.runs_without_claim(role=role, connected=connected, activating=activating)
    # Connected, or mid-activation (ACTIVATE sent: it may act already), or an active one: it stops.
    assert keeps == (role is Role.STANDBY and not connected and not activating)


def test_a_standby_claims_over_a_lapsed_key_only_outside_a_redis_outage() -> None:
    assert decisions.takes_over_lapsed(past_deadline=True, after_outage=False)
    # Right after Redis was away its clock may make a live holder's key look old (a restore from an
    # append-only file can lose acknowledged renewals): wait for the TTL and the holder's head start.
    assert not decisions.takes_over_lapsed(past_deadline=True, after_outage=True)
    assert not decisions.takes_over_lapsed(past_deadline=False, after_outage=False)


def test_the_moment_a_key_lapses_is_the_moment_it_is_past_the_deadline() -> None:
    interval = 1.0
    for pttl_ms in (3000, 1500, 901, 899, 0):
        lapses = decisions.lapses_in_s(pttl_ms, interval)
        assert lapses == pytest.approx((pttl_ms - 900) / 1000)
        assert decisions.past_renew_deadline(pttl_ms, interval) is (lapses < 0)


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0, 15.0])
def test_a_declared_renew_deadline_draws_the_line_an_undeclared_one_keeps_the_latest(interval: float) -> None:
    """This release's holders declare 1.7 intervals: their line is 1.8 intervals after the renewal.
    A record without the field (an earlier release's holder, Livermore's) keeps 2.1: such a holder
    may act for 2 intervals, and a standby of this release must not claim under it."""
    ttl_ms = 3 * interval * 1000
    declared = timing.renew_deadline_s(interval)
    assert declared == pytest.approx(1.7 * interval)
    for ago in (1.75, 1.79, 1.81, 2.05, 2.09, 2.11):
        pttl_ms = int(round(ttl_ms - ago * interval * 1000))
        assert decisions.past_renew_deadline(pttl_ms, interval, declared) is (ago > 1.8), ago
        assert decisions.past_renew_deadline(pttl_ms, interval) is (ago > 2.1), ago
        assert decisions.lapses_in_s(pttl_ms, interval, declared) == pytest.approx(
            (1.8 - ago) * interval, abs=1e-3
        )


@pytest.mark.parametrize("start", [0.0, 0.1, 0.39, 0.41, 0.5, 0.75, 0.99])
@pytest.mark.parametrize("interval", [1.0, 15.0])
def test_a_standbys_looks_drift_to_their_phase_after_the_holders_renewals(
    start: float, interval: float
) -> None:
    """Wherever its looks start in the holder's cycle, they reach the phase within six looks, moving
    no more than a tenth of an interval a look (a watch heartbeats every k looks and has 1.25 k
    intervals to do it), and stay there; a look with no holder to steer by keeps the interval."""
    ago = start * interval
    for _ in range(6):
        step = decisions.standby_step_s(ago, interval)
        assert 0.9 * interval - 1e-9 <= step <= 1.1 * interval + 1e-9
        ago = (ago + step) % interval
    assert ago == pytest.approx(0.4 * interval)
    assert decisions.standby_step_s(ago, interval) == pytest.approx(interval)
    assert decisions.standby_step_s(None, interval) == interval


def test_a_holder_is_late_once_it_missed_a_renewal_and_that_is_well_before_the_claim_over_line() -> None:
    interval = 1.0
    assert decisions.renewed_ago_s(3000, interval) == 0 and decisions.renewed_ago_s(1600, interval) == 1.4
    assert not decisions.holder_late(0.4, interval) and not decisions.holder_late(1.2, interval)
    # A look at the phase sees a holder that died right after a renewal as late 1.4 intervals on:
    # 0.4 of one before a holder's declared line (0.7 before an undeclared one), room for a sticky
    # wait and a replay.
    assert decisions.holder_late(1.4, interval)
    declared = timing.renew_deadline_s(interval)
    assert decisions.lapses_in_s(3000 - 1400, interval, declared) == pytest.approx(0.4)
    assert decisions.lapses_in_s(3000 - 1400, interval) == pytest.approx(0.7)


def test_a_failed_warm_up_is_tried_again_after_a_doubling_delay_up_to_a_cap() -> None:
    assert [warm_retry_delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_warm_target_that_failed_to_warm_refuses_a_handoff_with_why_and_when_it_tries_again() -> None:
    why = target_not_ready(
        host="b", warm=True, warm_ready=False, warm_error="not ready within 30s; no output", retry_in_s=39.6
    )
    assert why == (
        "the warm standby on b is not ready: its warm-up failed (not ready within 30s; no output); "
        "it tries again in 40s"
    )


@pytest.mark.parametrize(
    ("warm", "ready", "error", "waited", "refused"),
    [
        (False, False, None, None, False),  # a cold target: its host's preflight decides
        (True, True, None, None, False),  # warm and ready
        (True, True, "stale", None, False),  # ready again: an old error does not count
        (True, False, None, None, False),  # still warming: wait for it first
        (True, False, None, 62.0, True),  # waited for it, never ready
        (True, False, "boom", None, True),  # its warm-up failed
    ],
)
def test_which_handoff_targets_are_not_ready(
    warm: bool, ready: bool, error: str | None, waited: float | None, refused: bool
) -> None:
    why = target_not_ready(
        host="b", warm=warm, warm_ready=ready, warm_error=error, retry_in_s=None, waited_s=waited
    )
    assert (why is not None) is refused


# --- a host whose promoted connector could not start ----------------------------------------------

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _standby(host: str, priority: int, retry_at: str | None = None) -> StandbyRecord:
    return StandbyRecord(
        exchange_id=1,
        exchange_name="coinbase",
        host=host,
        hostname=host,
        instance_id=f"sb-{host}",
        workflow_id=f"instance-coinbase-{host}",
        priority=priority,
        registered_at="t",
        last_heartbeat="t",
        ttl_ms=45_000,
        heartbeat_interval_ms=15_000,
        start_retry_at=retry_at,
    )


LATER = (NOW + timedelta(seconds=30)).isoformat()
EARLIER = (NOW - timedelta(seconds=1)).isoformat()


@pytest.mark.parametrize(
    ("retry_at", "backing"),
    [(None, False), (LATER, True), (EARLIER, False), ("not a time", False), ("2026-12-06T12:00:30", True)],
)
def test_a_host_backs_off_until_its_retry_time(retry_at: str | None, backing: bool) -> None:
    assert decisions.backing_off(retry_at, NOW) is backing


def test_the_wake_order_puts_hosts_that_failed_to_start_last_and_keeps_priorities() -> None:
    best_failed, second, third = _standby("a", 9, LATER), _standby("b", 5), _standby("c", 1, EARLIER)
    order = decisions.wake_order([best_failed, second, third], NOW)
    assert [x.host for x in order] == ["b", "c", "a"]


def test_of_standbys_otherwise_equal_the_newest_release_is_woken_first() -> None:
    """During a rolling upgrade the exchange moves onto an upgraded host (docs/deploy.md)."""

    def on(host: str, priority: int, version: str | None, retry_at: str | None = None) -> StandbyRecord:
        return _standby(host, priority, retry_at).model_copy(update={"version": version})

    old, new, unknown = on("old", 5, "0.1.0"), on("new", 5, "0.2.0"), on("unknown", 5, None)
    assert [x.host for x in decisions.wake_order([old, unknown, new], NOW)] == ["new", "old", "unknown"]
    # Only a tie-break: priority and a failed start still come first.
    higher_old, failed_new = on("higher", 6, "0.1.0"), on("failed", 9, "0.3.0", LATER)
    order = decisions.wake_order([failed_new, higher_old, old, new], NOW)
    assert [x.host for x in order] == ["higher", "new", "old", "failed"]
    # Records of releases before the field: the order given (by priority), as before.
    same = [on("a", 5, None), on("b", 5, None), on("c", 1, None)]
    assert decisions.wake_order(same, NOW) == same


def test_a_standby_backing_off_gives_every_other_a_head_start() -> None:
    others = [_standby("a", 9, LATER), _standby("b", 5), _standby("c", 1)]
    # Priority 3: only b is ahead — a is higher but backing off.
    assert decisions.standbys_ahead(3, backing_off_here=False, others=others, now=NOW) == 1
    assert decisions.standbys_ahead(10, backing_off_here=True, others=others, now=NOW) == 3


def test_a_higher_priority_standby_gets_at_least_a_second_of_head_start() -> None:
    """Its workflow may have to leave a dead worker's sticky queue and replay first (issue 24)."""
    assert decisions.head_start_s(1.0) == 1.0
    assert decisions.head_start_s(0.5) == 1.0
    assert decisions.head_start_s(15.0) == 3.75
    assert vacancy_delay(2, 1.0, after_outage=False) == 2.0


def test_only_a_release_by_the_vacancys_holder_ends_the_wait_for_its_deadline() -> None:
    told = PromoteRequest(reason="released", min_epoch=7)
    assert decisions.released_by_holder([told], 7)
    assert decisions.released_by_holder([told], 6)
    assert not decisions.released_by_holder([told], 8)  # an older instance cannot speak for epoch 8
    assert not decisions.released_by_holder([PromoteRequest(reason="x", min_epoch=9, act_after_s=2.1)], 7)
    assert not decisions.released_by_holder([], 7)
    # The release itself is what the promoted event quotes, whichever came first.
    late = PromoteRequest(reason="x", min_epoch=9, act_after_s=2.1)
    assert decisions.holders_release([late, told], 7) is told
    assert decisions.holders_release([late], 7) is None


# --- the lease's heartbeat to Temporal ------------------------------------------------------------

INTERVALS = [0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 4.9, 5.0, 7.0, 15.0, 30.0]


@pytest.mark.parametrize(
    ("interval", "beats", "timeout"),
    [(0.5, 30, 18.75), (1.0, 15, 18.75), (2.0, 8, 20.0), (3.0, 5, 18.75), (5.0, 3, 18.75), (15.0, 1, 18.75)],
)
def test_the_heartbeat_cadence_at_the_usual_intervals(interval: float, beats: int, timeout: float) -> None:
    assert decisions.heartbeat_beats(interval) == beats
    assert decisions.heartbeat_period_s(interval) == pytest.approx(beats * interval)
    assert decisions.lease_heartbeat_timeout_s(interval) == pytest.approx(timeout)


@pytest.mark.parametrize("interval", INTERVALS)
def test_the_heartbeat_period_does_not_shrink_with_the_interval(interval: float) -> None:
    period = decisions.heartbeat_period_s(interval)
    assert period >= timing.HEARTBEAT_FLOOR_S - 1e-9  # the server's cost is bounded per instance
    assert period >= interval - 1e-9  # never less than one renewal per heartbeat
    # ...and no longer than needed: one renewal fewer would fall under the floor.
    assert period < max(timing.HEARTBEAT_FLOOR_S, interval) + interval
    if interval >= timing.HEARTBEAT_FLOOR_S:
        assert decisions.heartbeat_beats(interval) == 1  # long intervals: a heartbeat per renewal


@pytest.mark.parametrize("interval", INTERVALS)
def test_the_longest_silence_of_a_live_lease_stays_inside_its_heartbeat_timeout(interval: float) -> None:
    """A live lease heartbeats at its k-th renewal, or at the quiet fallback 0.05 intervals past it
    (activities/host.py QUIET_INTERVALS): at most k + 0.05 intervals of silence, which leaves a
    fifth of a period for the renewal (or the server) to be late before the lease is timed out."""
    beats = decisions.heartbeat_beats_within(interval, decisions.lease_heartbeat_timeout_s(interval))
    assert beats == decisions.heartbeat_beats(interval)  # the activity reads back the workflow's rule
    silence = (beats + 0.05) * interval
    period = decisions.heartbeat_period_s(interval)
    assert decisions.lease_heartbeat_timeout_s(interval) - silence >= 0.2 * period - 1e-9


@pytest.mark.parametrize("interval", INTERVALS)
def test_a_lease_scheduled_by_an_older_release_heartbeats_often_enough_for_its_timeout(
    interval: float,
) -> None:
    old_timeout = max(1.25 * interval, 2.0)  # before the cadence: 1.25 intervals, at least 2 s
    beats = decisions.heartbeat_beats_within(interval, old_timeout)
    assert beats >= 1
    assert (beats + 0.05) * interval <= old_timeout - 0.2 * beats * interval + 1e-9
    if interval >= 1.6:  # where the old floor did not apply: a heartbeat per renewal, as it expects
        assert beats == 1
    assert decisions.heartbeat_beats_within(interval, None) == decisions.heartbeat_beats(interval)


@pytest.mark.parametrize("interval", [0.3, 0.5, 1.0, 2.0, 3.0, 15.0])
@pytest.mark.parametrize("early_s", [0.0, 0.1])
def test_the_lease_heartbeats_at_exactly_every_kth_renewal(interval: float, early_s: float) -> None:
    """Renewals on their fixed schedule, each up to one 100 ms grid slot early: the heartbeat goes
    out at the first, then at every k-th — not a renewal sooner, not one later."""
    beats = decisions.heartbeat_beats(interval)
    last = float("-inf")
    sent = []
    for n in range(0, 6 * beats + 1):
        now = n * interval - (early_s if n % 2 else 0.0)  # every other renewal a slot early
        if decisions.heartbeat_due(now - last, interval, beats):
            sent.append(n)
            last = now
    assert sent == list(range(0, 6 * beats + 1, beats))


# --- the handing-over side's looks at the key while it waits for its target ----------------------


def test_a_target_that_holds_and_renews_is_waited_for_until_its_claim_could_lapse() -> None:
    look = decisions.handoff_target_look(
        holder="b", renewed_ms_ago=1500, target_host="b", since_release_s=10.0, interval_s=1.0
    )
    assert look.lost is None and not look.take_lapsed
    # The next look comes when the claim would pass its renew deadline plus the margin (2.1 s).
    assert look.look_again_s == pytest.approx(2.1 - 1.5 + timing.LOOK_SLACK_S)
    far = decisions.handoff_target_look(
        holder="b", renewed_ms_ago=0, target_host="b", since_release_s=0.5, interval_s=15.0
    )
    assert far.lost is None and far.look_again_s == 15.0  # never longer than an interval


def test_a_target_silent_past_its_renew_deadline_is_given_up_and_its_key_claimed_over() -> None:
    look = decisions.handoff_target_look(
        holder="b", renewed_ms_ago=2150, target_host="b", since_release_s=3.0, interval_s=1.0
    )
    assert look.take_lapsed
    assert look.lost == "b stopped renewing its claim (2.1s)"
    # On the line itself it is not yet past it.
    on_line = decisions.handoff_target_look(
        holder="b", renewed_ms_ago=2100, target_host="b", since_release_s=3.0, interval_s=1.0
    )
    assert on_line.lost is None


def test_an_exchange_held_by_another_host_ends_the_wait_without_claiming_over() -> None:
    look = decisions.handoff_target_look(
        holder="c", renewed_ms_ago=100, target_host="b", since_release_s=0.5, interval_s=1.0
    )
    assert look.lost == "the exchange is held by c now" and not look.take_lapsed


@pytest.mark.parametrize(
    ("interval", "patience"),
    [(0.5, timing.HANDOFF_CLAIM_FLOOR_S), (1.0, timing.HANDOFF_CLAIM_FLOOR_S), (15.0, 31.5)],
)
def test_an_empty_key_is_the_target_gone_only_after_the_claim_over_line_and_the_floor(
    interval: float, patience: float
) -> None:
    early = decisions.handoff_target_look(
        holder=None,
        renewed_ms_ago=None,
        target_host="b",
        since_release_s=patience - 0.01,
        interval_s=interval,
    )
    assert early.lost is None and 0 < early.look_again_s <= interval
    late = decisions.handoff_target_look(
        holder=None,
        renewed_ms_ago=None,
        target_host="b",
        since_release_s=patience + 0.01,
        interval_s=interval,
    )
    assert late.lost is not None and "holds no claim" in late.lost and not late.take_lapsed


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0, 15.0])
def test_the_others_hold_back_exactly_as_long_as_the_handing_over_side_waits(interval: float) -> None:
    """The reservation ends when the handing-over side gives up on its target and takes the
    exchange back: the standbys never hold back longer than that wait."""
    reserved = decisions.handoff_reservation_s(interval)
    assert reserved == max(timing.claim_over_s(interval), timing.HANDOFF_CLAIM_FLOOR_S)
    before = decisions.handoff_target_look(
        holder=None, renewed_ms_ago=None, target_host="b", since_release_s=reserved, interval_s=interval
    )
    after = decisions.handoff_target_look(
        holder=None,
        renewed_ms_ago=None,
        target_host="b",
        since_release_s=reserved + 0.01,
        interval_s=interval,
    )
    assert before.lost is None and after.lost is not None


@pytest.mark.parametrize(
    ("reserved_for", "host", "automatic", "held_back"),
    [
        ("c", "b", True, True),  # another host's race for the vacancy waits (a claim-over too)
        ("c", "c", True, False),  # the target's own race does not
        ("c", "b", False, False),  # an operator's start, or the handing-over side's take-back
        (None, "b", True, False),  # no handoff under way
    ],
)
def test_who_a_handoff_reservation_holds_back(
    reserved_for: str | None, host: str, automatic: bool, held_back: bool
) -> None:
    assert (
        decisions.held_back_by_handoff(reserved_for=reserved_for, host=host, automatic=automatic) is held_back
    )


def test_a_key_that_vanished_after_the_target_was_seen_holding_it_is_the_target_gone() -> None:
    look = decisions.handoff_target_look(
        holder=None,
        renewed_ms_ago=None,
        target_host="b",
        since_release_s=1.0,
        interval_s=1.0,
        seen_target=True,
    )
    assert look.lost == "the claim b took has vanished" and not look.take_lapsed
    # A vanished key proves nothing: the take-back waits the target's renew deadline out first.
    assert look.act_after_s == decisions.act_after_vacancy_s(1.0) == pytest.approx(2.1)


@pytest.mark.parametrize("interval", [1.0, 2.0, 15.0])
def test_a_failed_renewal_is_tried_again_once_a_quarter_interval_on(interval: float) -> None:
    sent, next_due = 100.0, 100.0 + interval
    again = decisions.quick_retry_at(sent, next_due, interval, failed=True, retried=False)
    assert again == sent + 0.25 * interval
    # Not after a renewal that got through, not twice in a row, never at or past the next slot.
    assert decisions.quick_retry_at(sent, next_due, interval, failed=False, retried=False) is None
    assert decisions.quick_retry_at(sent, next_due, interval, failed=True, retried=True) is None
    late = next_due - 0.1 * interval  # a renewal that failed only at its bound, near the next slot
    assert decisions.quick_retry_at(late, next_due, interval, failed=True, retried=False) is None
