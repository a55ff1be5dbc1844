"""The lease's heartbeat to Temporal: every how many renewals it beats, and the timeout it is given
(the floor and the factor are perseus.timing's).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from perseus.timing import (
    HEARTBEAT_FLOOR_S,
    HEARTBEAT_TIMEOUT_FACTOR,
)

if TYPE_CHECKING:
    pass


# The floor and the timeout factor are perseus.timing's (HEARTBEAT_FLOOR_S, HEARTBEAT_TIMEOUT_FACTOR).
#: Float noise when a period is divided back into intervals.
_EPSILON = 1e-9


def heartbeat_beats(interval_s: float) -> int:
    """Every how many renewals a lease (or watch) heartbeats to Temporal: the fewest that span
    :data:`HEARTBEAT_FLOOR_S` — 15 at 1 s, 8 at 2 s, 3 at 5 s, 1 from 15 s up (every renewal, as
    before)."""
    return max(1, math.ceil(HEARTBEAT_FLOOR_S / interval_s - _EPSILON))


def heartbeat_period_s(interval_s: float) -> float:
    """Seconds between two heartbeats of a healthy lease: ``heartbeat_beats × interval``, so never
    less than :data:`HEARTBEAT_FLOOR_S` nor than one interval."""
    return heartbeat_beats(interval_s) * interval_s


def lease_heartbeat_timeout_s(interval_s: float) -> float:
    """The heartbeat timeout a lease or watch is scheduled with: 1.25 heartbeat periods — 18.75 s
    at 1 s, 5 s and 15 s, 20 s at 2 s (1.25 intervals from 15 s up, as before). A dead host
    is still released on Redis' evidence, not on this: the workflow that hears of the silence asks
    Redis (:func:`judge_claim`), and a standby claims over at its holder's line (1.8 intervals)
    whatever Temporal knows."""
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
