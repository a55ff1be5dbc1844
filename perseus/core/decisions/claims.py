"""What a claim's silence proves (invariant 1): a failed lease's verdict, what Redis shows of a holder
that stopped heartbeating, when a standby may claim over or act after a vacancy, and what the
handing-over side makes of its target's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from perseus.errors import (
    ClaimLost,
    ClaimMissing,
    ConnectorFailed,
    ConnectorFailover,
    ConnectorUnhealthy,
    PerseusError,
    RenewDeadline,
)
from perseus.timing import (
    ALIVE_INTERVALS,
    CLAIM_OVER_INTERVALS,
    HANDOFF_CLAIM_FLOOR_S,
    HOLDER_LATE_INTERVALS,
    LOOK_SLACK_S,
    RENEWAL_RETRY_INTERVALS,
    STANDBY_LOOK_PHASE,
    STANDBY_STEER_INTERVALS,
    TTL_FACTOR,
    claim_over_s,
)

if TYPE_CHECKING:
    pass


#: Lease error types that mean the claim is no longer ours (the keeper already stopped the connector).
LOSS_TYPES: frozenset[type[PerseusError]] = frozenset({ClaimLost, ClaimMissing, RenewDeadline})


class LeaseVerdict(StrEnum):
    CONNECTOR_FAILED = "connector failed"  # the claim is still ours: record, recover, maybe restart
    RESTART_UNHEALTHY = "restart unhealthy"  # failed its health checks: restart it in place
    STEP_ASIDE = "step aside"  # failed its health checks: let the best standby take over
    RECLAIM = "reclaim"  # our key vanished or lapsed: take the exchange again if nobody else did
    REATTACH = "reattach"  # heartbeats stopped: that proves nothing about Redis (invariant 1)
    LOST = "lost"  # someone else holds the claim


def lease_verdict(kind: type[PerseusError] | None) -> LeaseVerdict:
    """What a failed lease means, by its error's class (None: a timeout, or not one of ours). The
    class itself, not a subclass test: each verdict belongs to exactly the class the keeper raises."""
    if kind is ConnectorFailed:
        return LeaseVerdict.CONNECTOR_FAILED
    if kind is ConnectorUnhealthy:
        return LeaseVerdict.RESTART_UNHEALTHY
    if kind is ConnectorFailover:
        return LeaseVerdict.STEP_ASIDE
    if kind is ClaimMissing or kind is RenewDeadline:
        return LeaseVerdict.RECLAIM
    if kind in LOSS_TYPES:
        return LeaseVerdict.LOST
    return LeaseVerdict.REATTACH


class HostVerdict(StrEnum):
    ALIVE = "alive"  # renewed recently: it lost only Temporal; wait and re-attach
    UNSURE = "unsure"  # between the two: look again
    STOPPED = "stopped"  # unrenewed past the deadline, or the key is not ours: lost


def judge_claim(held_by_us: bool, renewed_ms_ago: int | None, interval_s: float) -> HostVerdict:
    """What Redis proves about a holder that stopped heartbeating to Temporal (invariant 1)."""
    if not held_by_us:
        return HostVerdict.STOPPED
    if renewed_ms_ago is None:  # a key without TTL is a bug; never trust it to prove life
        return HostVerdict.STOPPED
    age_intervals = renewed_ms_ago / 1000 / interval_s
    if age_intervals > CLAIM_OVER_INTERVALS:
        return HostVerdict.STOPPED
    if age_intervals <= ALIVE_INTERVALS:
        return HostVerdict.ALIVE
    return HostVerdict.UNSURE


def stale_in(renewed_ms_ago: int, interval_s: float) -> float:
    """Seconds until a claim last renewed ``renewed_ms_ago`` ago is past its renew deadline plus
    the margin — when :func:`judge_claim` would say STOPPED; 0 if it already is. A workflow whose
    holder went silent asks Redis at once and again at this moment, instead of waiting out a fixed
    window first: the silent host's connector has stopped by then (invariant 1), whatever Temporal
    knows."""
    limit_s = claim_over_s(interval_s)
    return max(0.0, limit_s - renewed_ms_ago / 1000)


def renewal_overdue(since_last_ok_s: float, interval_s: float) -> bool:
    """Whether a claim this host holds has gone unrenewed for longer than a holder counts as alive
    (:data:`ALIVE_INTERVALS`): its worker is not ready. Said half an interval before the renew
    deadline stops the connector, so a probe sees a stalled keeper before its claims can lapse."""
    return since_last_ok_s > ALIVE_INTERVALS * interval_s


def act_after_vacancy_s(interval_s: float, *, lapsed: bool = False) -> float:
    """Seconds a standby that claimed a vacant exchange waits before its connector acts.

    A vacant key proves its holder stopped only when it expired by its TTL. A key that Redis lost
    (a restart without its data, a flush) vanishes at once, while its holder may have renewed a
    moment before and acts until its renew deadline — a warm standby that claimed and activated at
    once overlapped it (the chaos suite caught it). The claim itself may go ahead (it is fenced, and
    keeps the priority order of the race); acting waits the renew deadline plus the margin out.

    ``lapsed``: the standby's watch saw the key unrenewed past the holder's renew deadline before it
    vanished (:func:`past_renew_deadline`): the holder's connector has stopped and its keeper renews
    no more, so the vacancy is the TTL running out and there is nothing to wait for.
    """
    if lapsed:
        return 0.0
    return claim_over_s(interval_s)


def past_renew_deadline(pttl_ms: int, interval_s: float, renew_deadline_s: float | None = None) -> bool:
    """Whether a claim with ``pttl_ms`` left to live (Redis's own clock: no skew between hosts) went
    unrenewed past its holder's renew deadline plus the margin — :func:`judge_claim`'s STOPPED,
    told by the time left instead of the time since the renewal (the key lives TTL_FACTOR
    intervals from each renewal). ``renew_deadline_s``: the one its record declares (None: it
    declares none, and the latest any holder may have counts)."""
    return lapses_in_s(pttl_ms, interval_s, renew_deadline_s) < 0


def quick_retry_at(
    sent: float, next_due: float, interval_s: float, *, failed: bool, retried: bool
) -> float | None:
    """When a holder tries a renewal sent at ``sent`` again before its next slot ``next_due`` (None:
    it waits for that slot). Only a failed one, only once until a renewal gets through
    (``retried``), a quarter interval on. Why: a renewal that fails at once — a pooled connection a
    Redis restart closed, a connect refused while Redis comes back — would otherwise leave the claim
    unrenewed until the next slot, an interval on, and then a single slow answer at that slot is
    the renew deadline's: the chaos suite saw a Redis pause of 0.4 intervals end a claim that way.
    Once only: a Redis that is away gets no more than one extra try per holder."""
    if not failed or retried:
        return None
    at = sent + RENEWAL_RETRY_INTERVALS * interval_s
    return at if at < next_due else None


def lapses_in_s(pttl_ms: int, interval_s: float, renew_deadline_s: float | None = None) -> float:
    """Seconds until a claim with ``pttl_ms`` left to live passes its holder's renew deadline (as
    its record declares it; None: the latest any holder may have) plus the margin (negative: it
    has). A standby's watch looks again at that moment rather than at its next beat, up to an
    interval later: at short intervals that wait is most of the failover."""
    return claim_over_s(interval_s, renew_deadline_s) - renewed_ago_s(pttl_ms, interval_s)


def renewed_ago_s(pttl_ms: int, interval_s: float) -> float:
    """Seconds since a claim with ``pttl_ms`` left to live was renewed (each renewal gives the key
    TTL_FACTOR intervals: Redis's own clock, no skew between hosts)."""
    return (TTL_FACTOR * interval_s * 1000 - pttl_ms) / 1000


def holder_late(renewed_ago: float, interval_s: float) -> bool:
    """Whether a holder renewed ``renewed_ago`` seconds ago has missed a renewal: its standbys'
    workflows get a heads-up (:data:`~perseus.timing.HOLDER_LATE_INTERVALS` says why)."""
    return renewed_ago > HOLDER_LATE_INTERVALS * interval_s


def standby_step_s(renewed_ago: float | None, interval_s: float) -> float:
    """Seconds from a standby's look to its next one: an interval, shortened or lengthened by at
    most :data:`~perseus.timing.STANDBY_STEER_INTERVALS` of one so that its looks drift to
    :data:`~perseus.timing.STANDBY_LOOK_PHASE` of an interval after the holder's renewals.
    ``renewed_ago``: what this look saw, None when the phase means nothing (no holder, or one on
    another interval). Why: only a look at that phase sees a holder that died right after a renewal
    as late early enough to matter (:func:`holder_late`): one just before the holder's next renewal
    would see it late only past the claim-over line."""
    if renewed_ago is None:
        return interval_s
    # How far past the wanted phase this look came, folded into half an interval either way.
    off = (renewed_ago - STANDBY_LOOK_PHASE * interval_s + interval_s / 2) % interval_s - interval_s / 2
    steer = STANDBY_STEER_INTERVALS * interval_s
    return interval_s - max(-steer, min(steer, off))


@dataclass(frozen=True)
class HandoffLook:
    """What the handing-over side makes of one look at the key while it waits for the target."""

    #: Why the target will not confirm (stop waiting and take the exchange back), or None.
    lost: str | None
    #: Claim over the target's key: Redis showed it unrenewed past its renew deadline plus the
    #: margin, so the target's keeper or watchdog has stopped its connector (invariant 1).
    take_lapsed: bool
    #: Seconds until the next look, if still waiting.
    look_again_s: float
    #: Seconds the take-back waits before it claims: the target's key vanished after it was seen
    #: held, which — like any vacancy — does not prove the target stopped (:func:`act_after_vacancy_s`).
    act_after_s: float = 0.0


def handoff_reservation_s(interval_s: float) -> float:
    """How long a handoff's target has to claim the exchange it was handed: the other standbys hold
    back from the vacancy that long (the release reserves it, ``exchange:{id}:handoff``), and the
    handing-over side, which waits as long, then takes the exchange back. The claim-over line, so
    that a target is never judged slower than a dead holder would be, and at least
    :data:`~perseus.timing.HANDOFF_CLAIM_FLOOR_S`."""
    return max(claim_over_s(interval_s), HANDOFF_CLAIM_FLOOR_S)


def held_back_by_handoff(*, reserved_for: str | None, host: str, automatic: bool) -> bool:
    """Whether a claim from ``host`` may not take the vacancy because the exchange was handed to
    another host (``reserved_for``, None: no handoff under way).

    Only an automatic race holds back: an operator's command goes ahead, as under a pause. Only the
    vacancy is reserved: a claim over a silent holder's key still takes that key (once a target has
    claimed, its key is judged like any holder's, and a reservation never delays the failover of a
    target that died) — but a claim-over that finds the key gone leaves it to the target (the claim
    step's ``only_lapsed``: a standby that saw an earlier holder go silent, claiming late, took a
    reserved vacancy in a chaos run). Without the reservation, a standby above the target in
    priority, which has nobody ahead of it to yield to, takes the exchange whenever its watch looks
    before the target's claim arrives (a target whose worker was just replaced replays its history
    first)."""
    return reserved_for is not None and reserved_for != host and automatic


def handoff_target_look(
    *,
    holder: str | None,
    renewed_ms_ago: int | None,
    target_host: str,
    since_release_s: float,
    interval_s: float,
    seen_target: bool = False,
) -> HandoffLook:
    """The handing-over side's verdict on a look at the key while it waits for its target.

    Its workflow would otherwise wait for the target's workflow to confirm or fail, and a target
    whose host died midway fails only when Temporal notices — its activity's heartbeat timeout or
    a schedule-to-start timeout, many seconds — while the exchange has no connector. Redis knows
    sooner: a target that claimed and stopped renewing is past any holder's renew deadline plus
    the margin 2.1 intervals after its last renewal (this look does not read the deadline the
    target's record declares: a later line, never an unsafe one), and one that never claimed
    leaves the key empty.

    * held by the target and renewed within the deadline plus the margin: wait, and look again
      when it would pass it (or in an interval);
    * held by the target, unrenewed past it: lost; claim over its key;
    * held by someone else: lost (a standby got it; the caller becomes a standby);
    * empty after an earlier look saw the target hold it (``seen_target``): lost — its key lapsed
      between two looks, or Redis lost it; the take-back waits out the target's renew deadline as a
      standby finding a vacancy would;
    * empty, longer after the release than the claim-over line (and
      :data:`~perseus.timing.HANDOFF_CLAIM_FLOOR_S`):
      lost — the target never claimed.
    """
    line_s = claim_over_s(interval_s)
    if holder == target_host:
        if renewed_ms_ago is not None and renewed_ms_ago / 1000 > line_s:
            return HandoffLook(
                lost=f"{target_host} stopped renewing its claim ({renewed_ms_ago / 1000:.1f}s)",
                take_lapsed=True,
                look_again_s=0.0,
            )
        left = line_s - (renewed_ms_ago or 0) / 1000
        return HandoffLook(lost=None, take_lapsed=False, look_again_s=min(interval_s, left + LOOK_SLACK_S))
    if holder is not None:
        return HandoffLook(lost=f"the exchange is held by {holder} now", take_lapsed=False, look_again_s=0.0)
    if seen_target:
        return HandoffLook(
            lost=f"the claim {target_host} took has vanished",
            take_lapsed=False,
            look_again_s=0.0,
            act_after_s=act_after_vacancy_s(interval_s),
        )
    wait_s = handoff_reservation_s(interval_s)
    if since_release_s > wait_s:
        return HandoffLook(
            lost=f"{target_host} holds no claim {since_release_s:.1f}s after the release",
            take_lapsed=False,
            look_again_s=0.0,
        )
    return HandoffLook(
        lost=None,
        take_lapsed=False,
        look_again_s=min(interval_s, wait_s - since_release_s + LOOK_SLACK_S),
    )


def takes_over_lapsed(*, past_deadline: bool, after_outage: bool) -> bool:
    """Whether a standby may claim over a key that is still there but unrenewed past its holder's
    renew deadline plus the margin, instead of waiting for the TTL to remove it (invariant 1: the
    holder's keeper or watchdog has stopped its connector by then).

    Not right after Redis was away: a Redis restored from an append-only file may have lost the
    holder's last acknowledged renewals, so its key can look older than the holder knows it is —
    that case waits for the TTL and the holder's head start (invariant 4), as before.
    """
    return past_deadline and not after_outage
