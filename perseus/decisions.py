"""What an instance workflow decides, as plain functions over values: no I/O, no clock, no Temporal.

:mod:`perseus.lifecycle` says which transitions a command makes; this module decides everything else
an instance decides. The workflow gathers the facts (its own memory, what an activity reported, what
Redis proves), asks here, and carries out the answer. The invariants these functions keep:

1. **A claim is freed early only when Redis proves its holder stopped.** A heartbeat timeout proves
   nothing about Redis: the host may have lost only Temporal. A claim unrenewed for longer than the
   renew deadline (2 intervals, plus a margin) is one whose connector its keeper or watchdog has
   already stopped, so releasing it — or a standby claiming over it — cannot put two connectors on
   one exchange.
2. **A lost claim outranks everything.** The loop handles a finished lease before the host going
   down, promotions, commands or continue-as-new, so nothing is done on the strength of a claim
   that is gone.
3. **Refusals happen before history.** A command is judged against the state it will meet (after
   the queued ones); a standby accepts only shutdown; nothing is accepted after shutdown or once
   the instance ended; a handoff needs an idle queue and a target other than itself.
4. **After a Redis outage the holder goes first.** A standby that finds the exchange vacant right
   after Redis was away gives the holder a head start (higher priorities go before lower ones
   in any case), so a healthy holder is not replaced by a race.
5. **A warm standby acts only under a claim just taken.** Its connector runs before it may act;
   ``ACTIVATE <epoch>`` comes after the claim and nothing else has to. Whatever makes it doubtful
   (no warm connector known here, a warm-up still running) means a cold start, never a guess. A
   connector that does not act (a warm standby's, or one demoted by a handback) needs no claim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from perseus.errors import InvalidTransition
from perseus.keys import TTL_FACTOR, parse_iso
from perseus.lifecycle import Command, Role, State, plan, projected_state
from perseus.version import release_key

if TYPE_CHECKING:
    from perseus.models import PromoteRequest, StandbyRecord

#: Lease error types that mean the claim is no longer ours (the keeper already stopped the connector).
LOSS_TYPES: frozenset[str] = frozenset({"ClaimLost", "ClaimMissing", "RenewDeadline"})
#: The renew deadline, in intervals (keys.RENEW_DEADLINE_FACTOR), and the margin past it before a
#: silent holder's claim may be freed.
RENEW_DEADLINE_INTERVALS = 2.0
RELEASE_MARGIN = 0.1
#: Within this many intervals of its last renewal a holder counts as alive.
ALIVE_INTERVALS = 1.5
#: Head start per higher-priority standby, and for the holder after a Redis outage, in intervals.
PRIORITY_HEAD_START = 0.25
HOLDER_HEAD_START = 1.0
#: The least head start a higher-priority standby gets, in seconds, whatever the interval: its
#: workflow may have been cached on a worker that just died with the holder (the README's hosts
#: serve the workflows too) — half a second for its task to leave that worker's sticky queue
#: (worker.STICKY_TIMEOUT), and a replay of its history on the worker that takes it. A quarter of a
#: 1 s interval lost that race in the chaos suite: the priority-1 standby won, cold, over a warm
#: priority-2 one whose task was 1.1 s late.
PRIORITY_HEAD_START_FLOOR_S = 1.0


# --- the loop --------------------------------------------------------------------------------------


class Step(StrEnum):
    """The next piece of work of an instance's main loop."""

    LEASE_ENDED = "lease ended"
    HOST_GOING_DOWN = "host going down"
    PROMOTE = "promote"
    CONFIRM_PROMOTION = "confirm promotion"
    COMMAND = "command"
    CONTINUE_AS_NEW = "continue as new"


@dataclass(frozen=True)
class LoopFacts:
    role: Role
    lease_done: bool
    host_going_down: bool
    promotions: int
    queued: int
    history_long: bool


def next_step(facts: LoopFacts) -> Step | None:
    """The most urgent work (invariant 2), or None: wait for something to happen."""
    if facts.lease_done:
        return Step.LEASE_ENDED
    if facts.host_going_down:
        return Step.HOST_GOING_DOWN
    if facts.promotions:
        return Step.PROMOTE if facts.role is Role.STANDBY else Step.CONFIRM_PROMOTION
    if facts.queued:
        return Step.COMMAND
    if facts.history_long:
        return Step.CONTINUE_AS_NEW
    return None


# --- a lease that ended ----------------------------------------------------------------------------


class LeaseVerdict(StrEnum):
    CONNECTOR_FAILED = "connector failed"  # the claim is still ours: record, recover, maybe restart
    RESTART_UNHEALTHY = "restart unhealthy"  # failed its health checks: restart it in place
    STEP_ASIDE = "step aside"  # failed its health checks: let the best standby take over
    RECLAIM = "reclaim"  # our key vanished or lapsed: take the exchange again if nobody else did
    REATTACH = "reattach"  # heartbeats stopped: that proves nothing about Redis (invariant 1)
    LOST = "lost"  # someone else holds the claim


def lease_verdict(error_type: str | None) -> LeaseVerdict:
    """What a failed lease means, by its error type (None: a timeout, no type)."""
    if error_type == "ConnectorFailed":
        return LeaseVerdict.CONNECTOR_FAILED
    if error_type == "ConnectorUnhealthy":
        return LeaseVerdict.RESTART_UNHEALTHY
    if error_type == "ConnectorFailover":
        return LeaseVerdict.STEP_ASIDE
    if error_type in ("ClaimMissing", "RenewDeadline"):
        return LeaseVerdict.RECLAIM
    if error_type in LOSS_TYPES:
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
    if age_intervals > RENEW_DEADLINE_INTERVALS + RELEASE_MARGIN:
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
    limit_s = (RENEW_DEADLINE_INTERVALS + RELEASE_MARGIN) * interval_s
    return max(0.0, limit_s - renewed_ms_ago / 1000)


def renewal_overdue(since_last_ok_s: float, interval_s: float) -> bool:
    """Whether a claim this host holds has gone unrenewed for longer than a holder counts as alive
    (:data:`ALIVE_INTERVALS`): its worker is not ready. Said half an interval before the renew
    deadline stops the connector, so a probe sees a stalled keeper before its claims can lapse."""
    return since_last_ok_s > ALIVE_INTERVALS * interval_s


# --- the lease's heartbeat to Temporal ------------------------------------------------------------

#: A lease or a standby's watch heartbeats to Temporal no more often than this, whatever the
#: interval. Nothing on the data plane waits for those heartbeats — renewals run in the host's
#: keeper, a standby claims over a silent holder from Redis alone (:func:`lapses_in_s`) — so a
#: heartbeat per renewal at short intervals bought nothing but server load: about 2 ms of the dev
#: server's CPU per heartbeat RPC, 0.57 cores for 200 instances at 1 s. A 15 s floor was measured
#: (0.265 cores at 1,000 × 1 s, docs/benchmarks.md) and taken back: the chaos suite then found
#: exchanges waiting on paths that end at the heartbeat timeout (18.75 s) — see that document.
HEARTBEAT_FLOOR_S = 5.0
#: The activity's heartbeat timeout, in heartbeat periods: a period plus a quarter of one for the
#: renewal that carries the heartbeat being held up (a slow Redis, a busy event loop).
HEARTBEAT_TIMEOUT_FACTOR = 1.25
#: Float noise when a period is divided back into intervals.
_EPSILON = 1e-9


def heartbeat_beats(interval_s: float) -> int:
    """Every how many renewals a lease (or watch) heartbeats to Temporal: the fewest that span
    :data:`HEARTBEAT_FLOOR_S` — 5 at 1 s, 3 at 2 s, 1 from 5 s up (every renewal, as before)."""
    return max(1, math.ceil(HEARTBEAT_FLOOR_S / interval_s - _EPSILON))


def heartbeat_period_s(interval_s: float) -> float:
    """Seconds between two heartbeats of a healthy lease: ``heartbeat_beats × interval``, so never
    less than :data:`HEARTBEAT_FLOOR_S` nor than one interval."""
    return heartbeat_beats(interval_s) * interval_s


def lease_heartbeat_timeout_s(interval_s: float) -> float:
    """The heartbeat timeout a lease or watch is scheduled with: 1.25 heartbeat periods — 6.25 s at
    1 s and 5 s, 7.5 s at 2 s, 18.75 s at 15 s (1.25 intervals from 5 s up, as before). A dead host
    is still released on Redis' evidence, not on this: the workflow that hears of the silence asks
    Redis (:func:`judge_claim`), and a standby claims over at 2.1 intervals whatever Temporal
    knows."""
    return HEARTBEAT_TIMEOUT_FACTOR * heartbeat_period_s(interval_s)


def heartbeat_beats_within(interval_s: float, heartbeat_timeout_s: float | None) -> int:
    """The activity's side of the rule: every how many renewals it heartbeats so that its silence
    stays inside the heartbeat timeout its workflow gave it. A lease scheduled by an older release
    (1.25 intervals, at least 2 s) heartbeats at every renewal, as it expects; one scheduled with
    :func:`lease_heartbeat_timeout_s` at every :func:`heartbeat_beats`-th. None (no timeout): the
    rule's own cadence."""
    beats = heartbeat_beats(interval_s)
    if heartbeat_timeout_s is None:
        return beats
    fits = math.floor(heartbeat_timeout_s / (HEARTBEAT_TIMEOUT_FACTOR * interval_s) + _EPSILON)
    return max(1, min(beats, fits))


def heartbeat_due(since_last_s: float, interval_s: float, beats: int) -> bool:
    """Whether a lease woken by a renewal (or by the quiet fallback) heartbeats now, ``since_last_s``
    after its last heartbeat: at the ``beats``-th renewal since. Renewals come an interval apart,
    up to a grid slot early, so half an interval of slack picks exactly that renewal."""
    return since_last_s >= (beats - 0.5) * interval_s


# --- standbys --------------------------------------------------------------------------------------


def head_start_s(interval_s: float) -> float:
    """Seconds a standby gives each higher-priority one before it races for a vacancy."""
    return max(PRIORITY_HEAD_START * interval_s, PRIORITY_HEAD_START_FLOOR_S)


def vacancy_delay(ahead: int, interval_s: float, *, after_outage: bool) -> float:
    """Seconds a standby waits after seeing the exchange vacant before it races (invariant 4)."""
    delay = head_start_s(interval_s) * ahead
    if after_outage:
        delay += HOLDER_HEAD_START * interval_s
    return delay


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
    return (RENEW_DEADLINE_INTERVALS + RELEASE_MARGIN) * interval_s


def past_renew_deadline(pttl_ms: int, interval_s: float) -> bool:
    """Whether a claim with ``pttl_ms`` left to live (Redis's own clock: no skew between hosts) went
    unrenewed past its holder's renew deadline plus the margin — :func:`judge_claim`'s STOPPED,
    told by the time left instead of the time since the renewal (the key lives TTL_FACTOR
    intervals from each renewal)."""
    return lapses_in_s(pttl_ms, interval_s) < 0


def lapses_in_s(pttl_ms: int, interval_s: float) -> float:
    """Seconds until a claim with ``pttl_ms`` left to live passes its holder's renew deadline plus
    the margin (negative: it has). A standby's watch looks again at that moment rather than at its
    next beat, up to an interval later: at short intervals that wait is most of the failover."""
    renewed_ms_ago = TTL_FACTOR * interval_s * 1000 - pttl_ms
    return ((RENEW_DEADLINE_INTERVALS + RELEASE_MARGIN) * interval_s * 1000 - renewed_ms_ago) / 1000


def takes_over_lapsed(*, past_deadline: bool, after_outage: bool) -> bool:
    """Whether a standby may claim over a key that is still there but unrenewed past its holder's
    renew deadline plus the margin, instead of waiting for the TTL to remove it (invariant 1: the
    holder's keeper or watchdog has stopped its connector by then).

    Not right after Redis was away: a Redis restored from an append-only file may have lost the
    holder's last acknowledged renewals, so its key can look older than the holder knows it is —
    that case waits for the TTL and the holder's head start (invariant 4), as before.
    """
    return past_deadline and not after_outage


def doubling_delay(first_s: float, earlier: int, cap_s: float = math.inf) -> float:
    """The one backoff of Perseus: ``first_s``, doubled for each of the ``earlier`` failures in a
    row before this one, at most ``cap_s``."""
    return float(min(cap_s, first_s * 2 ** max(0, earlier)))


def restart_delay(policy: str, restarts: int, max_restarts: int, backoff_s: float) -> float | None:
    """Seconds before restarting a connector that failed while active; None: do not restart."""
    if policy != "on-failure" or restarts >= max_restarts:
        return None
    return doubling_delay(backoff_s, restarts)


# --- warm standbys (invariant 5) --------------------------------------------------------------------


class StartPath(StrEnum):
    WARM = "warm"  # activate the warm connector under the claim just taken: ACTIVATE <epoch>
    COLD = "cold"  # prepare → warm up → connect


def start_path(*, warm_here: bool, warming: bool) -> StartPath:
    """How a start after a promotion (or a take-back) brings the connector up."""
    return StartPath.WARM if warm_here and not warming else StartPath.COLD


def warm_up_standby(*, role: Role, warm: bool, warm_here: bool, warming: bool) -> bool:
    """Whether a standby should prepare and warm its connector now (once, in the background)."""
    return role is Role.STANDBY and warm and not warm_here and not warming


def handoff_demotes(*, shutdown: bool, warm: bool) -> bool:
    """A handing-over instance that stays as a warm standby demotes its connector (DEACTIVATE)
    instead of stopping it, so that handing back is as quick."""
    return warm and not shutdown


#: A warm-up that failed is tried again after this many seconds, doubling per failure in a row up
#: to the cap: quick enough to recover from a blip, slow enough not to hammer a host whose connector
#: cannot start (each try spawns a child and adds a few events to the history).
WARM_RETRY_FIRST_S = 5.0
WARM_RETRY_CAP_S = 300.0


def warm_retry_delay(failures: int) -> float:
    """Seconds before a warm standby warms its connector up again after ``failures`` in a row; also
    how long a host whose promoted connector could not start ``failures`` times in a row waits
    behind every other standby (the same trade-off: recover from a blip, never hammer a host)."""
    return doubling_delay(WARM_RETRY_FIRST_S, failures - 1, WARM_RETRY_CAP_S)


def seconds_until(moment: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` until an ISO time a record carries (0 once it has passed; a time with no
    zone is UTC); None when there is none or it cannot be read."""
    if moment is None:
        return None
    try:
        at = parse_iso(moment)
    except ValueError:
        return None
    return max(0.0, ((at if at.tzinfo else at.replace(tzinfo=UTC)) - now).total_seconds())


def backing_off(retry_at: str | None, now: datetime) -> bool:
    """Whether a standby whose promotion failed to start its connector is still in its backoff:
    it is tried after every other standby until ``retry_at`` (ISO; None or unreadable: not)."""
    return bool(seconds_until(retry_at, now))


def wake_order(standbys: Sequence[StandbyRecord], now: datetime) -> list[StandbyRecord]:
    """Which standby to wake first: by priority (the order given), but a host whose connector could
    not start after its last promotion only after every one that has not failed (stable). Of
    standbys otherwise equal, the one on the newest release first: during a rolling upgrade the
    exchange moves onto an upgraded host, not onto one that is still to be drained."""
    return sorted(
        standbys, key=lambda x: (backing_off(x.start_retry_at, now), -x.priority, newest_first(x.version))
    )


def newest_first(version: str | None) -> tuple[int, ...]:
    """A sort key that puts newer releases first, and an unknown version after every known one."""
    key = release_key(version)
    return tuple(-part for part in key) if key is not None else (1,)


def holders_release(promotions: Sequence[PromoteRequest], vacant_epoch: int) -> PromoteRequest | None:
    """The promotion that says the holder of the vacancy we claimed stopped its connector and
    released its key, if one arrived: one that asks us to act at once, from an instance that held
    at least that epoch. Then there is no old renew deadline left to wait out."""
    return next((p for p in promotions if not p.act_after_s and p.min_epoch >= vacant_epoch), None)


def released_by_holder(promotions: Sequence[PromoteRequest], vacant_epoch: int) -> bool:
    """Whether :func:`holders_release` found one."""
    return holders_release(promotions, vacant_epoch) is not None


def standbys_ahead(
    priority: int, *, backing_off_here: bool, others: Sequence[StandbyRecord], now: datetime
) -> int:
    """How many other standbys go before us in a race for a vacancy (each gets a head start): the
    higher priorities, except those backing off after a failed start; all of them if we are."""
    if backing_off_here:
        return len(others)
    return sum(1 for x in others if x.priority > priority and not backing_off(x.start_retry_at, now))


def target_not_ready(
    *,
    host: str,
    warm: bool,
    warm_ready: bool,
    warm_error: str | None,
    retry_in_s: float | None,
    waited_s: float | None = None,
) -> str | None:
    """Why a handoff to the standby on ``host`` must be refused before anything stops here, from
    its record; None: go ahead (or, for a warm target still warming, wait for it first).

    A warm target that is not ready would be handed over cold: our connector stops, and if its cold
    start fails as its warm-up did, the exchange is without a connector until we take it back.
    ``waited_s``: we already waited this long for it to become ready."""
    if not warm or warm_ready:
        return None
    if warm_error is not None:
        retry = f"; it tries again in {retry_in_s:.0f}s" if retry_in_s is not None else ""
        return f"the warm standby on {host} is not ready: its warm-up failed ({warm_error}){retry}"
    if waited_s is not None:
        return f"the warm standby on {host} is still not ready after {waited_s:.0f}s of warming up"
    return None


def runs_without_claim(*, role: Role, connected: bool, activating: bool) -> bool:
    """Whether a connector may keep running when its claim ends: only one that does not act — a warm
    standby's, never activated or demoted — and is not being activated (it may act already)."""
    return role is Role.STANDBY and not connected and not activating


# --- refusals --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceFacts:
    """What the validators see of an instance."""

    workflow_id: str
    exchange: str
    host: str
    role: Role
    state: State
    queued: Sequence[Command]
    #: Why the instance is no longer registered (ended, or registration failed); None while it is.
    gone: str | None
    host_going_down: bool


def refuse_command(facts: InstanceFacts, command: Command) -> None:
    """Raise :class:`InvalidTransition` if ``command`` must be refused (invariant 3)."""
    if facts.gone is not None:
        raise InvalidTransition(f"instance {facts.workflow_id} is not registered any more ({facts.gone})")
    if Command.SHUTDOWN in facts.queued or facts.host_going_down:
        raise InvalidTransition(f"instance {facts.workflow_id} is shutting down")
    if facts.role is Role.STANDBY and command is not Command.SHUTDOWN:
        raise InvalidTransition(
            f"{facts.exchange} on {facts.host} is a standby: it holds no claim and starts "
            f"only when promoted (perseus handoff {facts.exchange} --to {facts.host}); "
            "shutdown is allowed"
        )
    if command is Command.HANDOFF:
        raise InvalidTransition("use the handoff update, which names the target host")
    plan(command, projected_state(facts.state, list(facts.queued)))


def refuse_handoff(facts: InstanceFacts, to_host: str) -> None:
    """Raise :class:`InvalidTransition` if a handoff to ``to_host`` must be refused (invariant 3)."""
    if facts.gone is not None or facts.host_going_down:
        raise InvalidTransition(f"instance {facts.workflow_id} is not registered any more")
    if facts.role is not Role.ACTIVE:
        raise InvalidTransition(f"{facts.exchange} on {facts.host} is a standby: nothing to hand off")
    if to_host == facts.host:
        raise InvalidTransition(f"{facts.exchange} already runs on {to_host}")
    if facts.queued:
        raise InvalidTransition(f"instance {facts.workflow_id} is busy with {facts.queued[0].value}; retry")
    plan(Command.HANDOFF, facts.state)
