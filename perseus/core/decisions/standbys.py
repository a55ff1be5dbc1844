"""Standbys (invariants 4 and 5): head starts in a race for a vacancy, whom to wake first, the one
backoff of Perseus, and how a warm standby's connector starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from perseus.core.lifecycle import Role
from perseus.keys import parse_iso
from perseus.timing import (
    HOLDER_HEAD_START,
    PRIORITY_HEAD_START,
    PRIORITY_HEAD_START_FLOOR_S,
    WARM_RETRY_CAP_S,
    WARM_RETRY_FIRST_S,
)
from perseus.version import release_key

if TYPE_CHECKING:
    from perseus.models import InstanceStatus, PromoteRequest, StandbyRecord


def head_start_s(interval_s: float) -> float:
    """Seconds a standby gives each higher-priority one before it races for a vacancy."""
    return max(PRIORITY_HEAD_START * interval_s, PRIORITY_HEAD_START_FLOOR_S)


def vacancy_delay(ahead: int, interval_s: float, *, after_outage: bool) -> float:
    """Seconds a standby waits after seeing the exchange vacant before it races (invariant 4)."""
    delay = head_start_s(interval_s) * ahead
    if after_outage:
        delay += HOLDER_HEAD_START * interval_s
    return delay


def doubling_delay(first_s: float, earlier: int, cap_s: float = math.inf) -> float:
    """The one backoff of Perseus: ``first_s``, doubled for each of the ``earlier`` failures in a
    row before this one, at most ``cap_s``."""
    return float(min(cap_s, first_s * 2 ** max(0, earlier)))


def restart_delay(policy: str, restarts: int, max_restarts: int, backoff_s: float) -> float | None:
    """Seconds before restarting a connector that failed while active; None: do not restart."""
    if policy != "on-failure" or restarts >= max_restarts:
        return None
    return doubling_delay(backoff_s, restarts)


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


def release_goes_on_to(
    woken_by: PromoteRequest, winner: InstanceStatus | None, own_workflow_id: str
) -> str | None:
    """We were woken by a holder that stopped and released, and lost the race for its exchange:
    the workflow to tell instead, if any — the instance that won, when it claimed after that
    holder. It may be waiting out a vanished key's old deadline (its watch saw the key go before
    the holder's word reached anyone but us), and the holder's word ends that wait
    (:func:`holders_release`), as if it had been woken itself (a chaos run: 3.1 s without a
    connector after a graceful stop, against B 2.7 s)."""
    if woken_by.act_after_s or woken_by.confirm_to is not None or winner is None:
        return None
    if winner.workflow_id is None or winner.workflow_id == own_workflow_id:
        return None
    if winner.epoch is None or winner.epoch <= woken_by.min_epoch:
        return None
    return winner.workflow_id


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
