"""Every timing rule of Perseus, in one place: the interval's bounds and default, what a claim's
TTL and renew deadline are in intervals, the claim-over line, the health thresholds, the heartbeat
to Temporal and the head starts.

Everything that times a claim reads it from here (settings, CLI, fleet file, workflow input, the
decision core, the keeper, the read model), so a rule changes in one line.
``tests/unit/test_timing.py`` fails when one of these figures is written out again anywhere else
in ``perseus/``, ``workflows/``, ``activities/`` or ``worker.py``. Pure: imports only ``math``.

In intervals (``I``, the instance's heartbeat interval)::

    0        1.5 I        2 I              2.1 I           3 I
    renewed  late (ALIVE) renew deadline   claim-over line  TTL: the key expires
             (the keeper  (the holder      (a standby may
             is overdue)  stops acting)    claim over)
"""

from __future__ import annotations

import math

# --- the interval ----------------------------------------------------------------------------------

#: The heartbeat interval's bounds, checked at every edge (settings, CLI, fleet file, workflow
#: input): below half a second the lease cannot renew in time; above an hour a dead host would hold
#: an exchange for three. Infinity and NaN are refused (an infinite TTL cannot be encoded).
MIN_INTERVAL_S = 0.5
MAX_INTERVAL_S = 3600.0
#: The default interval (DESIGN §2.6), and Livermore v6's constant: a status record that does not
#: carry its own interval is judged at this one.
DEFAULT_INTERVAL_S = 15.0


def interval_in_bounds(seconds: float) -> bool:
    """The one rule for a heartbeat interval, wherever it comes from (NaN and infinity fail)."""
    return math.isfinite(seconds) and MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S


#: How the bounds read in an error message.
BOUNDS_TEXT = f"between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} seconds"

# --- a claim's life, in intervals ------------------------------------------------------------------

#: How many intervals a claim lives without renewal (DESIGN §2.1: TTL = 3 × interval).
TTL_FACTOR = 3
#: A holder that could not renew for this many intervals stops its connector: well before the TTL.
RENEW_DEADLINE_FACTOR = 2.0
#: The margin past the renew deadline before a silent holder's claim may be freed or claimed over:
#: one grid slot at 1 s covers the look's Redis round trip and a renewal the grid starts early.
RELEASE_MARGIN = 0.1
#: The claim-over line: unrenewed this long, a claim's connector has stopped (its keeper or
#: watchdog saw to it) and a standby may claim over it.
CLAIM_OVER_INTERVALS = RENEW_DEADLINE_FACTOR + RELEASE_MARGIN
#: Within this many intervals of its last renewal a holder counts as alive; past it, its renewal is
#: late (health, the read views) — half an interval before the renew deadline stops the connector.
ALIVE_INTERVALS = 1.5
#: A standby that saw Redis fail within this many intervals treats a vacancy as "after an outage".
OUTAGE_MEMORY_INTERVALS = 2.0


def ttl_ms(interval_s: float) -> int:
    """A claim's (and a standby record's) TTL in milliseconds."""
    return int(interval_s * 1000 * TTL_FACTOR)


def ttl_s(interval_s: float) -> float:
    return interval_s * TTL_FACTOR


def renew_deadline_s(interval_s: float) -> float:
    return interval_s * RENEW_DEADLINE_FACTOR


def claim_over_s(interval_s: float) -> float:
    """Seconds after its last renewal that a silent holder's claim may be freed or claimed over."""
    return CLAIM_OVER_INTERVALS * interval_s


# --- health, as the read views judge a renewal -----------------------------------------------------

#: A renewal older than this many intervals is late (one missed beat, with slack) …
LATE_FACTOR = ALIVE_INTERVALS
#: … and stale from the renew deadline on (the holder has stopped its connector by then).
STALE_FACTOR = RENEW_DEADLINE_FACTOR

# --- the lease's heartbeat to Temporal -------------------------------------------------------------

#: A lease or a standby's watch heartbeats to Temporal no more often than this, whatever the
#: interval: at any interval an instance costs the control plane what it costs at the default 15 s.
#: Nothing on the data plane waits for those heartbeats — renewals run in the host's keeper, a
#: standby claims over a silent holder from Redis alone — so a heartbeat per renewal at short
#: intervals bought nothing but server load: about 2 ms of the dev server's CPU per heartbeat RPC,
#: 0.57 cores for 200 instances at 1 s. A 5 s floor still left 0.51 cores for 1,000 instances at
#: 1 s; 15 s brings it to about 0.2 (docs/benchmarks.md). What it costs: the workflow hears of a
#: dead host up to one timeout (18.75 s) after its last heartbeat, as at 15 s.
HEARTBEAT_FLOOR_S = 15.0
#: The activity's heartbeat timeout, in heartbeat periods: a period plus a quarter of one for the
#: renewal that carries the heartbeat being held up (a slow Redis, a busy event loop).
HEARTBEAT_TIMEOUT_FACTOR = 1.25

# --- head starts in a race for a vacancy -----------------------------------------------------------

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

# --- the workflow's own waits, in intervals --------------------------------------------------------

#: How long a handoff waits for the target's confirmation (plus LEASE_SLACK_INTERVALS intervals).
HANDOFF_TIMEOUT_S = 60.0
#: A lease's (or watch's) start-to-close beyond its term, and a handoff's wait for the target's
#: confirmation beyond its fixed part.
LEASE_SLACK_INTERVALS = 4.0
#: A handing-over instance waits for a warm target's readiness this much beyond its ready timeout.
WARM_WAIT_SLACK_INTERVALS = 2.0

# --- the failsafe: holding through a Redis outage (docs/design.md, "Failsafe") --------------------

#: How long a standby's promise not to claim lasts, in intervals, on the standby's own clock: the
#: TTL, so a promise outlasts the holder's next two rounds of asking (one lost round costs nothing).
FAILSAFE_PROMISE_INTERVALS = 3.0
#: A holder that cannot renew asks for promises this often, in intervals, from its first failed
#: renewal until it renews again or stops: twice an interval, so that the one round between the
#: first failed renewal and the renew deadline can lose a message and still be made good in time.
FAILSAFE_ASK_INTERVALS = 0.5
#: The bound on how far any two hosts' clocks may disagree in *rate* (not in reading: only
#: durations measured on one host are ever compared): 1 %, twenty times the 500 ppm an NTP-slewed
#: Linux clock may be steered by. The renew deadline's own margin (0.1 of 2 intervals) already
#: assumes rates agree within about 5 %; the failsafe charges its promises 2 × this rate.
FAILSAFE_DRIFT = 0.01


def failsafe_promise_s(interval_s: float) -> float:
    """Seconds a standby's promise binds it, on the standby's clock, from the moment it grants."""
    return FAILSAFE_PROMISE_INTERVALS * interval_s


def failsafe_counted_s(interval_s: float) -> float:
    """Seconds a holder counts a promise for, on its own clock, from the moment it *asked*: the
    promise, less what two clocks drifting apart in opposite directions can take from it, less the
    release margin (the watchdog's kill and the standby's first claim are not instantaneous)."""
    return failsafe_promise_s(interval_s) * (1 - 2 * FAILSAFE_DRIFT) - RELEASE_MARGIN * interval_s


# --- the failsafe's wiring (issue 29): the figures of the keeper's probes and rounds ---------------

#: A renewal that has gone unanswered this many intervals starts the failsafe's first round (the
#: design's "failed or a quarter interval overdue"), and a granter's probe of Redis gives up after
#: as long: the last beat's view is up to an interval old, so the granter asks Redis at once.
FAILSAFE_PROBE_INTERVALS = 0.25


def failsafe_probe_s(interval_s: float) -> float:
    """Seconds a granter waits for Redis before it counts Redis as not answering it."""
    return FAILSAFE_PROBE_INTERVALS * interval_s


#: A failsafe claim bound for no longer than this (a keeper that just started, an enrolment) waits
#: its bound out inside the claim step instead of being refused: the step's own budget is 10 s.
FAILSAFE_CLAIM_WAIT_S = 5.0

#: How long a status view (``perseus status EXCHANGE``, the exchange view with ``?failsafe=true``)
#: waits for Temporal's view of the exchange's failsafe before it shows the rest without it.
FAILSAFE_VIEW_TIMEOUT_S = 5.0

#: A holder's failsafe events (holding began, ended) are written once Redis takes them: tried again
#: every interval, given up after this long (the log line and the gauge said it meanwhile).
FAILSAFE_EVENT_GIVE_UP_S = 900.0
