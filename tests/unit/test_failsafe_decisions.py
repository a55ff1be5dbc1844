"""The failsafe's rules one by one (the model checker, ``test_failsafe_model.py``, runs them together)."""

from __future__ import annotations

import pytest

from perseus import timing
from perseus.core.decisions import failsafe as fs

pytestmark = pytest.mark.unit

T = fs.FailsafeTiming.of(1.0)


def test_a_counted_promise_ends_before_the_promise_under_the_drift_bound() -> None:
    """Real time: the holder's count lasts at most counted/(1-ρ), the promise at least P/(1+ρ) from a
    later start (granted after asked); the release margin must be left between them."""
    rho = timing.FAILSAFE_DRIFT
    for interval in (timing.MIN_INTERVAL_S, 1.0, timing.DEFAULT_INTERVAL_S):
        t = fs.FailsafeTiming.of(interval)
        assert t.counted_s / (1 - rho) < t.promise_s / (1 + rho)
        assert t.counted_s > t.renew_deadline_s  # a round's promises outlast the renew deadline
        assert t.ask_every_s < t.counted_s - t.renew_deadline_s  # a lost round is made good in time


def test_the_holder_acts_on_the_promises_of_its_whole_roster_only() -> None:
    facts = fs.HolderFacts(renewed_at=0.0)
    assert fs.acts_until(facts, T, failsafe=True) == T.renew_deadline_s
    facts = fs.start_round(facts, 1.0, ["s1", "s2"])
    facts = fs.record_grant(facts, "s1", 1.0)
    assert fs.acts_until(facts, T, failsafe=True) == T.renew_deadline_s  # s2 has not promised
    facts = fs.record_grant(facts, "s2", 1.0)
    assert fs.acts_until(facts, T, failsafe=True) == pytest.approx(1.0 + T.counted_s)
    assert fs.acts_until(facts, T, failsafe=False) == T.renew_deadline_s
    # A later round with a newcomer does not shorten what the earlier round covers …
    later = fs.start_round(fs.record_grant(facts, "s1", 1.5), 1.5, ["s1", "s2", "n"])
    assert fs.acts_until(fs.record_grant(later, "s2", 1.5), T, failsafe=True) == pytest.approx(
        1.0 + T.counted_s
    )
    # … and extends it only once the newcomer has promised too.
    everyone = fs.record_grant(fs.record_grant(later, "s2", 1.5), "n", 1.5)
    assert fs.acts_until(everyone, T, failsafe=True) == pytest.approx(1.5 + T.counted_s)
    verdict = fs.holder_verdict(2.5, everyone, T, failsafe=True)
    assert verdict.acts and verdict.holding and (verdict.promised, verdict.members) == (3, 3)


def test_a_late_answer_counts_from_its_own_round_and_old_grants_are_kept_latest() -> None:
    facts = fs.start_round(fs.HolderFacts(renewed_at=0.0), 1.0, ["s1"])
    facts = fs.record_grant(fs.record_grant(facts, "s1", 1.0), "s1", 0.5)
    assert facts.granted_at("s1") == 1.0
    assert fs.prune(facts, 1.0 + T.counted_s, T).rounds == ()


def test_rounds_follow_a_fixed_schedule_from_the_first_failed_renewal() -> None:
    assert fs.next_round_at(failed_since=None, last_round_at=None, timing=T) is None
    assert fs.next_round_at(failed_since=1.0, last_round_at=None, timing=T) == 1.0
    assert fs.next_round_at(failed_since=1.0, last_round_at=0.2, timing=T) == 1.0  # an earlier outage's
    # A round taken late (1.07) does not push the next one back.
    assert fs.next_round_at(failed_since=1.0, last_round_at=1.07, timing=T) == pytest.approx(
        1.0 + T.ask_every_s
    )


def test_a_failsafe_holder_renews_faster_than_it_asks() -> None:
    """A failsafe holder renews four times an interval (its first round starts sooner after a cut,
    and its key is re-established within a quarter interval of Redis answering); failsafe off, at an
    interval's pace."""
    for interval in (timing.MIN_INTERVAL_S, 2.0, timing.DEFAULT_INTERVAL_S):
        fast = fs.renewal_step_s(interval, failsafe=True)
        assert fast == pytest.approx(interval / 4)
        assert fast < fs.FailsafeTiming.of(interval).ask_every_s < interval
        assert fs.renewal_step_s(interval, failsafe=False) == interval


def test_a_cut_just_after_a_renewal_leaves_the_first_round_over_an_interval() -> None:
    """The worst case for the first round: Redis cut right after a renewal. The next renewal is
    tried one step later and counts as failed a quarter interval after that; from there to the renew
    deadline the round has more than an interval (it had 0.75 of one at an interval's pace)."""
    for interval in (timing.MIN_INTERVAL_S, 2.0, timing.DEFAULT_INTERVAL_S):
        T = fs.FailsafeTiming.of(interval)
        first_round = fs.renewal_step_s(interval, failsafe=True) + timing.failsafe_probe_s(interval)
        assert T.renew_deadline_s - first_round > interval


@pytest.mark.parametrize(
    ("answer", "acting", "failsafe", "action"),
    [
        (fs.KeyAnswer.OURS, True, True, fs.KeyAction.RENEWED),
        (fs.KeyAnswer.ABSENT, True, True, fs.KeyAction.REESTABLISH),
        (fs.KeyAnswer.ABSENT, False, True, fs.KeyAction.STOP),
        (fs.KeyAnswer.ABSENT, True, False, fs.KeyAction.STOP),
        (fs.KeyAnswer.OTHERS, True, True, fs.KeyAction.STOP),
    ],
)
def test_what_a_holder_does_when_redis_answers_again(
    answer: fs.KeyAnswer, acting: bool, failsafe: bool, action: fs.KeyAction
) -> None:
    assert fs.when_redis_answers(answer, acting=acting, failsafe=failsafe) is action


def test_a_granter_promises_only_when_it_cannot_reach_redis_either() -> None:
    base = {
        "failsafe": True,
        "holds_claim": False,
        "redis_answers": False,
        "asker_epoch": 3,
        "highest_epoch_seen": 3,
    }
    assert fs.grant_verdict(**base).grant  # type: ignore[arg-type]
    for change in (
        {"failsafe": False},
        {"holds_claim": True},
        {"redis_answers": True},
        {"highest_epoch_seen": 4},
    ):
        verdict = fs.grant_verdict(**{**base, **change})  # type: ignore[arg-type]
        assert not verdict.grant and verdict.reason


def test_a_promise_binds_every_claim_until_it_runs_out() -> None:
    bound = fs.bound_until(fs.NEVER, promised_at=10.0, timing=T)
    assert bound == 10.0 + T.promise_s
    assert fs.bound_until(bound, promised_at=9.0, timing=T) == bound  # never shortened
    assert fs.claim_refusal(bound - 0.01, bound) is not None
    assert fs.claim_refusal(bound, bound) is None
