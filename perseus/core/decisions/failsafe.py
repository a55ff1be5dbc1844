"""The failsafe's rules (docs/design.md, "Failsafe: holding through a Redis outage"): how long a
holder that cannot renew may keep its connector on the promises it gathered, when an instance grants
a promise not to claim, when one that promised (or just enrolled) may claim again, when the holder
asks, and what it does when Redis answers again.

Plain functions over frozen values; every moment is a float in seconds *on the clock of the host
that decides* (CLOCK_BOOTTIME on the holder's side, CLOCK_MONOTONIC on a granter's side; see the
design for why). Moments of two hosts are never compared: a promise crosses hosts as a duration,
and the holder dates it from its own moment of asking. ``tests/unit/test_failsafe_model.py`` runs
these functions as the nodes of an explicit-state model and checks "never two acting" over every
interleaving it can reach.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from perseus.timing import (
    FAILSAFE_ASK_INTERVALS,
    FAILSAFE_RENEW_INTERVALS,
    failsafe_counted_s,
    failsafe_promise_s,
    renew_deadline_s,
)

#: A moment that never comes / came: no promise, no bound.
NEVER = -math.inf


@dataclass(frozen=True)
class FailsafeTiming:
    """The failsafe's figures for one heartbeat interval (all from :mod:`perseus.timing`)."""

    renew_deadline_s: float
    #: How long a granter is bound by its promise, on its own clock, from the moment it grants.
    promise_s: float
    #: How long the holder counts a promise, on its own clock, from the moment it asked.
    counted_s: float
    #: How often a holder that cannot renew asks.
    ask_every_s: float

    @classmethod
    def of(cls, interval_s: float) -> FailsafeTiming:
        return cls(
            renew_deadline_s=renew_deadline_s(interval_s),
            promise_s=failsafe_promise_s(interval_s),
            counted_s=failsafe_counted_s(interval_s),
            ask_every_s=FAILSAFE_ASK_INTERVALS * interval_s,
        )


# --- the holder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One round of asking: the moment the holder began it (taken *before* it read the roster) and
    the roster it read — every instance that could take the exchange at that moment."""

    asked_at: float
    roster: frozenset[str]


@dataclass(frozen=True)
class HolderFacts:
    """What a holder's keeper knows when it decides whether its connector may go on acting."""

    #: When its last renewal was counted (dated from Redis's reply, as the keeper does today).
    renewed_at: float
    #: The rounds still worth keeping (:func:`prune`), oldest first.
    rounds: tuple[Round, ...] = ()
    #: For each member that granted, the latest ``asked_at`` of a round it granted in.
    granted: tuple[tuple[str, float], ...] = field(default=())

    def granted_at(self, member: str) -> float:
        return next((at for who, at in self.granted if who == member), NEVER)


def record_grant(facts: HolderFacts, member: str, asked_at: float) -> HolderFacts:
    """The facts once ``member`` granted in the round asked at ``asked_at`` (an answer may arrive
    late and out of order: only the latest round a member granted in counts)."""
    if facts.granted_at(member) >= asked_at:
        return facts
    rest = tuple(pair for pair in facts.granted if pair[0] != member)
    return replace(facts, granted=tuple(sorted((*rest, (member, asked_at)))))


def start_round(facts: HolderFacts, asked_at: float, roster: Iterable[str]) -> HolderFacts:
    return replace(facts, rounds=(*facts.rounds, Round(asked_at, frozenset(roster))))


def acts_until(facts: HolderFacts, timing: FailsafeTiming, *, failsafe: bool) -> float:
    """Until when (holder's clock) the holder's connector may act: its renew deadline, extended —
    failsafe on — to the latest moment covered by one round in which *every* member of that
    round's roster has a counted promise. A round covers no more than ``counted_s`` after it was
    asked: an instance enrolled after its roster was read is bound for ``promise_s`` from its
    enrolment, which came later, so it cannot claim within that time either.

    The keeper arms the watchdog with this moment and never lets a stopped connector act again on
    a promise that arrives after it (a late answer may move this value; the latch is the keeper's).
    """
    until = facts.renewed_at + timing.renew_deadline_s
    if not failsafe:
        return until
    for r in facts.rounds:
        covered = r.asked_at + timing.counted_s
        for member in r.roster:
            covered = min(covered, facts.granted_at(member) + timing.counted_s)
        until = max(until, covered)
    return until


@dataclass(frozen=True)
class HolderVerdict:
    acts: bool
    until: float
    #: Past the renew deadline, acting on promises alone (the status, the page, the metric).
    holding: bool
    #: Of the latest round's roster, how many have a promise still counted now, and of how many.
    promised: int
    members: int


def holder_verdict(
    now: float, facts: HolderFacts, timing: FailsafeTiming, *, failsafe: bool
) -> HolderVerdict:
    """The holder's "may I keep running at ``now``" (its own clock), with what the status shows:
    "failsafe: holding through a Redis outage, promises from 2 of 2 standbys"."""
    until = acts_until(facts, timing, failsafe=failsafe)
    roster = facts.rounds[-1].roster if facts.rounds else frozenset()
    promised = sum(1 for m in roster if facts.granted_at(m) + timing.counted_s > now)
    return HolderVerdict(
        acts=now < until,
        until=until,
        holding=now >= facts.renewed_at + timing.renew_deadline_s and now < until,
        promised=promised,
        members=len(roster),
    )


def next_round_at(
    *, failed_since: float | None, last_round_at: float | None, timing: FailsafeTiming
) -> float | None:
    """When the holder asks next (its clock): at ``failed_since`` — the moment a renewal failed or
    had gone unanswered for a quarter interval, whichever came first, so that two rounds' answers
    can arrive before the renew deadline — then every ``ask_every_s`` on a fixed schedule from
    there (a late round does not push the next one back), until it renews again (None: it renews,
    nothing to ask). A round is never held back by an earlier one that has not answered: an answer
    counts from its own round's moment however late it comes (Patroni's fixed 2 s timeout demoted
    primaries on slow links, #3550)."""
    if failed_since is None:
        return None
    if last_round_at is None or last_round_at < failed_since:
        return failed_since
    rounds = math.floor((last_round_at - failed_since) / timing.ask_every_s) + 1
    return failed_since + rounds * timing.ask_every_s


def renewal_step_s(interval_s: float, *, failsafe: bool) -> float:
    """How long after one renewal's slot the holder tries the next: an interval — but a failsafe
    holder renews four times as often (``FAILSAFE_RENEW_INTERVALS``), always. Two reasons, both
    measured in bench/failsafe_availability.py at 2 s: the first round starts at the first failed
    renewal, and at an interval's pace a cut just after a renewal left that round 0.75 of an
    interval before the renew deadline (then 2 intervals; on a loaded machine one exchange's
    promises came 0.4 s too late); and Redis' return is found out only by a renewal, the one that
    re-establishes an absent key (invariant 7), which at an interval's pace came up to a whole
    interval after Redis answered (2.01 s at 2 s). At a quarter interval the round has at least 1.2
    intervals before the 1.7-interval deadline (at half an interval, the pace before the deadline
    came down from 2, it had 1.25 before 2), and the key is back within a quarter interval plus the
    write. The cost: four renewals an interval for the exchanges that opt in."""
    if failsafe:
        return FAILSAFE_RENEW_INTERVALS * interval_s
    return interval_s


def prune(facts: HolderFacts, now: float, timing: FailsafeTiming) -> HolderFacts:
    """The facts without rounds and grants that can no longer extend anything at ``now`` (memory
    stays bounded through an outage of any length)."""
    rounds = tuple(r for r in facts.rounds if r.asked_at + timing.counted_s > now)
    granted = tuple((m, at) for m, at in facts.granted if at + timing.counted_s > now)
    return replace(facts, rounds=rounds, granted=granted)


class KeyAnswer(StrEnum):
    OURS = "ours"  # the key holds our instanceId and epoch: a renewal went through
    ABSENT = "absent"  # expired during the outage, or Redis came back without its data
    OTHERS = "others"  # someone else's instanceId or a higher epoch


class KeyAction(StrEnum):
    RENEWED = "renewed"  # back to normal: the renew deadline counts from this reply
    REESTABLISH = "reestablish"  # SET NX the same record, same epoch; raise the epoch counter to it
    STOP = "stop"  # fenced or absent with nothing left to act on: stop now (today's ClaimLost)


def when_redis_answers(answer: KeyAnswer, *, acting: bool, failsafe: bool) -> KeyAction:
    """What a holder does when Redis answers its renewal again. An absent key is re-established
    with the same instanceId and epoch while the connector still acts — nobody else can have
    claimed meanwhile, or the holder would not be acting — so standbys see the same holder and
    epoch, nothing is recorded as a change and nobody flaps. Failsafe off: today's rule (stop; the
    workflow re-claims with a new epoch)."""
    if answer is KeyAnswer.OURS:
        return KeyAction.RENEWED
    if answer is KeyAnswer.ABSENT and acting and failsafe:
        return KeyAction.REESTABLISH
    return KeyAction.STOP


# --- a granter (any instance of the exchange that is not its holder) --------------------------------


@dataclass(frozen=True)
class GrantVerdict:
    grant: bool
    reason: str


def grant_verdict(
    *,
    failsafe: bool,
    holds_claim: bool,
    redis_answers: bool,
    asker_epoch: int,
    highest_epoch_seen: int,
) -> GrantVerdict:
    """Whether an instance promises not to claim, asked by a holder that cannot renew.

    The rule decides *availability* only: whatever it answers, never two hold (a granter is bound
    by every promise it gave; a holder acts only on promises from its whole roster). It grants only
    when it cannot reach Redis either — probed at the moment of asking, not its last beat's view —
    so that a Redis lost to the holder alone ends in a failover at the renew deadline, as today,
    instead of keeping a holder no one else can confirm.
    """
    if not failsafe:
        return GrantVerdict(False, "failsafe is off for this exchange")
    if holds_claim:
        return GrantVerdict(False, "it holds the claim itself")
    if asker_epoch < highest_epoch_seen:
        return GrantVerdict(False, f"epoch {asker_epoch} is older than epoch {highest_epoch_seen} seen here")
    if redis_answers:
        return GrantVerdict(False, "Redis answers here: the holder should stop and let a standby take over")
    return GrantVerdict(True, "Redis does not answer here either")


def bound_until(current: float, *, promised_at: float, timing: FailsafeTiming) -> float:
    """Until when (granter's clock) an instance may not claim once it promised — or enrolled, or
    its keeper started (``promised_at`` the moment it did): an instance that was added to the
    roster after a round's roster was read, or whose keeper lost its memory of the promises it
    gave, is bound as if it had promised then. Promises only ever extend the bound."""
    return max(current, promised_at + timing.promise_s)


def claim_refusal(now: float, bound: float) -> str | None:
    """Why an instance may not claim at ``now`` (its clock) — any claim: a vacancy, a take-over of
    a lapsed key, a promotion, an operator's start — or None. Redis answering changes nothing: a
    holder may be acting on this very promise."""
    if now < bound:
        return f"bound by a failsafe promise for {bound - now:.1f}s more"
    return None
