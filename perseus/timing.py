"""Every timing rule of Perseus, in one place: the interval's bounds and default, what a claim's
TTL and renew deadline are in intervals, the claim-over line, the health thresholds, the heartbeat
to Temporal and the head starts.

Everything that times a claim reads it from here (settings, CLI, fleet file, workflow input, the
decision core, the keeper, the read model), so a rule changes in one line.
``tests/unit/test_timing.py`` fails when one of these figures is written out again anywhere else
in ``perseus/``, ``workflows/``, ``activities/`` or ``worker.py``. Pure: imports only ``math``.

In intervals (``I``, the instance's heartbeat interval)::

    0        1.5 I        1.7 I            1.8 I            3 I
    renewed  late (ALIVE) renew deadline   claim-over line  TTL: the key expires
             (the keeper  (the holder      (a standby may
             is overdue)  stops acting,    claim over)
                          and its record
                          says so)

A record that does not declare its deadline (0.1.0's, Livermore's) is given 2 I, and its line 2.1 I.
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
#: Its claim record says so (``renewDeadlineMs``), and its standbys draw their claim-over line from
#: that. 1.7, not 2.0 as in 0.1.0: the line comes 0.3 intervals sooner, so a cold
#: standby is active within 0.8 of the TTL at 2 s even when its holder died right after a renewal
#: (docs/benchmarks.md). What it costs: a holder's worker may now pause 0.7 intervals past a due
#: renewal, not 1.0, before its connector stops — still above the collector's full pass at 1,000
#: instances at 1 s (0.5–0.6 s untuned), and a failed renewal still gets its quick retry.
RENEW_DEADLINE_FACTOR = 1.7
#: The renew deadline of a holder whose record does not say (``renewDeadlineMs`` absent:
#: 0.1.0, or Livermore): the latest any holder may act, and what a decision that cannot see the
#: holder's record assumes.
UNDECLARED_RENEW_DEADLINE_FACTOR = 2.0
#: The margin past the renew deadline before a silent holder's claim may be freed or claimed over:
#: one grid slot at 1 s covers the look's Redis round trip and a renewal the grid starts early.
RELEASE_MARGIN = 0.1
#: The claim-over line of a holder that does not declare its deadline — and so the latest line of
#: any holder: unrenewed this long, a claim's connector has stopped (its keeper or watchdog saw to
#: it) and a standby may claim over it.
CLAIM_OVER_INTERVALS = UNDECLARED_RENEW_DEADLINE_FACTOR + RELEASE_MARGIN
#: Within this many intervals of its last renewal a holder counts as alive; past it, its renewal is
#: late (health, the read views) — before the renew deadline stops the connector.
ALIVE_INTERVALS = 1.5
#: A standby that saw Redis fail within this many intervals treats a vacancy as "after an outage".
OUTAGE_MEMORY_INTERVALS = 2.0


def ttl_ms(interval_s: float) -> int:
    """A claim's (and a standby record's) TTL in milliseconds."""
    return int(interval_s * 1000 * TTL_FACTOR)


def ttl_s(interval_s: float) -> float:
    return interval_s * TTL_FACTOR


def renew_deadline_s(interval_s: float) -> float:
    """This release's holders' renew deadline (what its keeper enforces and its claims declare)."""
    return interval_s * RENEW_DEADLINE_FACTOR


def claim_over_s(interval_s: float, renew_deadline_s: float | None = None) -> float:
    """Seconds after its last renewal that a silent holder's claim may be freed or claimed over:
    the holder's declared ``renew_deadline_s`` plus the margin; without one (an earlier release,
    Livermore, or a decision that cannot see the record), the latest line any holder may have."""
    if renew_deadline_s is None:
        return CLAIM_OVER_INTERVALS * interval_s
    return renew_deadline_s + RELEASE_MARGIN * interval_s


# --- health, as the read views judge a renewal -----------------------------------------------------

#: A renewal older than this many intervals is late (one missed beat, with slack) …
LATE_FACTOR = ALIVE_INTERVALS
#: … and stale from the renew deadline on (the holder has stopped its connector by then): the one
#: its record declares, or this many intervals for a record that declares none.
STALE_FACTOR = UNDECLARED_RENEW_DEADLINE_FACTOR

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
#: serve the workflows too) — up to about a second for its task to leave that worker's sticky queue
#: (STICKY_TIMEOUT_S, below, which a server left at its default time shift stretches to a second),
#: and a replay of its history on the worker that takes it. A quarter of a 1 s interval lost that
#: race in the chaos suite: the priority-1 standby won, cold, over a warm priority-2 one whose task
#: was 1.1 s late.
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
#: A failsafe holder renews this often, in intervals (``decisions.renewal_step_s`` says why): its
#: first round must have more than an interval before the renew deadline (1.7 intervals) when Redis
#: is cut right after a renewal.
FAILSAFE_RENEW_INTERVALS = 0.25
#: The bound on how far any two hosts' clocks may disagree in *rate* (not in reading: only
#: durations measured on one host are ever compared): 1 %, twenty times the 500 ppm an NTP-slewed
#: Linux clock may be steered by. The renew deadline's own margin (0.1 of 1.7 intervals) already
#: assumes rates agree within about 6 %; the failsafe charges its promises 2 × this rate.
FAILSAFE_DRIFT = 0.01


def failsafe_promise_s(interval_s: float) -> float:
    """Seconds a standby's promise binds it, on the standby's clock, from the moment it grants."""
    return FAILSAFE_PROMISE_INTERVALS * interval_s


def failsafe_counted_s(interval_s: float) -> float:
    """Seconds a holder counts a promise for, on its own clock, from the moment it *asked*: the
    promise, less what two clocks drifting apart in opposite directions can take from it, less the
    release margin (the watchdog's kill and the standby's first claim are not instantaneous)."""
    return failsafe_promise_s(interval_s) * (1 - 2 * FAILSAFE_DRIFT) - RELEASE_MARGIN * interval_s


# --- the decision core: its steps and waits (perseus/core) -----------------------------------------
# Each activity the core asks for, and each wait it makes, is timed by one of these: the core writes
# no number of seconds of its own (tests/unit/test_timing.py holds that).

#: A short step on the shared queue or a host's: one Redis or PostgreSQL round trip (resolve the
#: exchange, claim, release, put/drop/list standbys, record an event) or a look at Temporal (is the
#: host polled?). Such a step answers in milliseconds when its server is well; its retry policy, not
#: a long timeout, carries it through an outage.
STEP_TIMEOUT_S = 10.0
#: A transition's record, tried once in the worker that runs the workflow task (a local activity),
#: for this long. A healthy write takes milliseconds; a worker that cannot reach Redis (a partition
#: of its host, which also serves other hosts' instances) would otherwise hold the workflow task of
#: an instance whose own host is fine until its Redis returns (the lab's `partition-redis`: a
#: standby promoted 8.7 s late). Past this, or at its first failure, the same write goes to a
#: regular activity on the instance's own host (docs/design.md, "One write per transition"). Not
#: retried here: a second try a second later cost a promotion that second whenever the worker's
#: connection was refused outright, and on the host the write costs one dispatch more, no more.
#: One second, not two: a promotion's first record comes before its connector starts, so a cut-off
#: worker's wait counts against the bound B (4.9 s at 1 s, a crash's detection taking 2.1 s of it).
RECORD_HERE_S = 1.0
#: After a record had to leave the worker running the workflow, the instance's next records go
#: straight to its host for this long: the next workflow tasks stay on that worker (its cache), and
#: each record tried there first would cost RECORD_HERE_S again (a start's three transitions, 3 s).
#: A partition lasts seconds to minutes; meanwhile a record costs a dispatch through the server.
RECORD_AWAY_S = 30.0
#: A probe of the claim's key: asked while the workflow waits (re-attaching, a handoff's target), and
#: retried once, so that a stuck Redis costs the wait no more than two of these.
PROBE_TIMEOUT_S = 5.0
#: Learning the host's identity: its hostname and public IP, the IP lookup bounded as a whole by the
#: worker's ``Settings.ip_timeout`` (2 s by default, which an operator may raise); the step leaves
#: room above any sensible setting.
IDENTITY_TIMEOUT_S = 30.0
#: The longest a process connector may be given to get ready, to stop after SIGTERM, and to answer
#: an activation (``ConnectorSpec`` refuses more): each must fit inside the host step that waits
#: for it, with room to spare for the rest of that step.
MAX_READY_TIMEOUT_S = 110.0
MAX_STOP_GRACE_S = 10.0
MAX_ACTIVE_TIMEOUT_S = 60.0
#: What a connector step needs beyond the connector's own wait: the spawn, the kill after a grace,
#: the answer's way back.
CONNECTOR_STEP_SPARE_S = 10.0
#: A connector step (prepare, warm up, connect): it runs for as long as the connector takes to get
#: ready, bounded by MAX_READY_TIMEOUT_S, with the spare for the rest of the step.
CONNECTOR_STEP_TIMEOUT_S = MAX_READY_TIMEOUT_S + CONNECTOR_STEP_SPARE_S
#: Asking the host whether a connector runs (it looks at its own process table: no waiting).
CONNECTOR_CHECK_TIMEOUT_S = 10.0
#: Stopping a connector after a failure, on a graceful release or when a promoted start failed: its
#: stop grace (5 s by default, MAX_STOP_GRACE_S at most) and the kill after it. A stop that does not
#: answer in time counts as not known stopped, and the callers act on that (a standby woken then
#: waits out the renew deadline before its connector acts) — so the longest grace must fit, spare
#: included (it once equalled the step's whole timeout).
CONNECTOR_STOP_TIMEOUT_S = MAX_STOP_GRACE_S + CONNECTOR_STEP_SPARE_S / 2
#: Stopping a warm standby's connector as the standby leaves: a little more than a stop, and tried
#: once (a worker shutting down stops its connectors itself).
WARM_STOP_TIMEOUT_S = 15.0
#: Stopping the connector to hand the exchange over: nothing is handed over until it has stopped,
#: and a handoff that fails here leaves the exchange where it was, so this step may take its time.
HANDOFF_STOP_TIMEOUT_S = 30.0
#: Demoting an active connector to a warm standby (``DEACTIVATE``) as a handoff stays warm here; on
#: failure the connector is stopped instead.
DEMOTE_TIMEOUT_S = 30.0
#: Connector steps heartbeat every second; silence this long means their host stopped.
CONNECTOR_HEARTBEAT_TIMEOUT_S = 5.0
#: How long a host step is asked again while the host's worker polls but does not pick it up.
HOST_BUSY_LIMIT_S = 120.0
#: The least schedule-to-start of a step on a host's queue (else one interval): long enough for a
#: live worker to pick the task up, short enough to report a missing host.
HOST_WAIT_FLOOR_S = 5.0
#: How long a restarted worker has to pick a re-attaching lease up again, in intervals.
PICKUP_FACTOR = 1.0
#: A re-issued lease counts as picked up once it has run this long past its pickup window, or one
#: interval if longer: timers fire late under load, and a lease still running by then was picked up
#: by a worker, not refused for want of one.
PICKUP_SLACK_FLOOR_S = 3.0
#: A look at a key this long after the moment it should pass a line (stale, or the claim-over line):
#: Redis' PTTL is whole milliseconds, and a look a hair early finds nothing.
LOOK_SLACK_S = 0.05
#: The least a re-attaching workflow waits between two looks at Redis, so that a look whose moment
#: has already passed does not turn into a loop of zero-length timers.
LOOK_WAIT_FLOOR_S = 0.05
#: However short the interval, the handing-over side gives its target this long to claim before a
#: missing key counts as the target gone: the promote signal, one workflow task and the claim on the
#: target's host usually take a few tenths of a second; a busy machine can take a second or two.
HANDOFF_CLAIM_FLOOR_S = 3.0
#: A handing-over instance looks whether its warm target is ready every half interval, and no more
#: often than this: each look lists the standbys and adds to the history.
WARM_POLL_FLOOR_S = 1.0
#: A warm-up that failed is tried again after this many seconds, doubling per failure in a row up
#: to the cap: quick enough to recover from a blip, slow enough not to hammer a host whose connector
#: cannot start (each try spawns a child and adds a few events to the history).
WARM_RETRY_FIRST_S = 5.0
WARM_RETRY_CAP_S = 300.0
#: ``perseus pause`` without ``--for``: long enough for routine maintenance, short enough that a
#: forgotten pause does not leave the exchange unprotected for the night (``perseus.core.pause``).
DEFAULT_PAUSE_S = 30 * 60.0
#: No pause may last longer: failover must come back by itself.
MAX_PAUSE_S = 7 * 86_400.0

# --- the host: keeper, grid, watchdog, health, worker records (perseus/host) -----------------------

#: The grid's step. Small against any interval (the smallest allowed is well above it), so a
#: renewal starts at most this much before it is due; large enough that at 1,000 claims × 15 s
#: about seven share a round trip.
GRID_SLOT_S = 0.1
#: With tracing on, a healthy batch gets a span at most this often (per process); a batch in which a
#: renewal failed, was refused or found its key missing, or whose round trip took SLOW_BATCH_S or
#: more, always gets one (perseus.tracing).
HEALTHY_SPAN_EVERY_S = 1.0
SLOW_BATCH_S = 0.25
#: A renewal's round trip is bounded by what is left of the renew deadline and by this share of an
#: interval (the next renewal is due then anyway), and never below the floor: one started at its
#: deadline's edge still gets a round trip's chance rather than failing before Redis could answer.
#: A whole interval, not half: a renewal counts from when it was sent, so a reply read late is as
#: good as one read early, and the worker's process does pause — the collector's full pass took
#: 0.5–0.6 s at 1,000 instances (docs/benchmarks.md), failing every renewal of a grid slot at half
#: an interval of 1 s, and with it, one renewal short of the deadline, a hundred claims at once.
RENEWAL_BOUND_INTERVALS = 1.0
RENEWAL_BOUND_FLOOR_S = 0.05
#: A renewal that failed is tried once more this share of an interval after it was sent, before its
#: next slot (:func:`perseus.core.decisions.quick_retry_at` says why).
RENEWAL_RETRY_INTERVALS = 0.25
#: A standby's looks at its holder's key (its own renewals) are steered to fall this share of an
#: interval after the holder's renewals, by at most STANDBY_STEER_INTERVALS of an interval per look
#: (a heartbeat every k looks has 1.25 k intervals: a look never moves far). Then a holder that
#: stopped right after a renewal is seen late at 1.4 intervals, 0.7 before the claim-over line,
#: wherever in its cycle it died (:func:`perseus.core.decisions.standby_step_s`).
STANDBY_LOOK_PHASE = 0.4
STANDBY_STEER_INTERVALS = 0.1
#: A holder not renewed for this many intervals has missed a renewal: its standbys' workflows are
#: told at once (a heads-up signal, which changes nothing there), so that a run cached on the dead
#: holder's worker has waited out that worker's sticky queue and replayed elsewhere before the
#: claim-over line, not after it (docs/design.md, "A heads-up before the task").
HOLDER_LATE_INTERVALS = 1.2
#: A heads-up is given up after this long (it is an optimisation; the watch goes on regardless).
HEADS_UP_TIMEOUT_S = 2.0
#: A keeper loop with no activity attached for this many intervals (at least DETACHED_FLOOR_S) asks
#: Temporal whether its workflow still exists, and again at most once per interval after that.
DETACHED_INTERVALS = 3.0
DETACHED_FLOOR_S = 10.0
#: A keeper loop that survived a cancellation is cancelled again this often until it ends.
RECANCEL_S = 0.05
#: A standby's keeper looks at its holder's key this long after the moment it should pass its renew
#: deadline plus the margin: Redis's PTTL is in whole milliseconds, and a look a hair early finds
#: nothing.
LAPSE_LOOK_S = 0.005
#: How often the watchdog wakes when nothing is armed (it wakes earlier for a due deadline).
WATCHDOG_IDLE_WAKE_S = 1.0
#: A deadline handed to the watchdog rules until the next one has had this long to reach it and for
#: the worker to see the child's death: a child seen dead of SIGKILL within it, once the older
#: deadline had passed, was the watchdog's doing (its pipe, the exit poll, a busy event loop).
WATCHDOG_NOTICE_S = 1.0
#: How far apart the worker's and the watchdog's readings of one instant may be (two clocks of one
#: kernel, converted at each arming).
WATCHDOG_CLOCK_SLACK_S = 0.005
#: Seconds each server check of ``/readyz`` may take. Redis answers in a millisecond when well;
#: Temporal's describe call takes longer on a loaded machine, and a probe that flaps under load is
#: worse than one that is a second slower to see a frozen server.
HEALTH_CHECK_TIMEOUT_S = 2.0
#: A worker renews its record this often, and the record lives three times as long.
ANNOUNCE_EVERY_S = 5.0
ANNOUNCE_TTL_S = 3 * ANNOUNCE_EVERY_S
#: Temporal's answer is awaited this long per host queue; then ``lastPollAt`` is left out.
POLL_LOOKUP_S = 3.0
#: The whole lookup of one host queue is bounded by POLL_LOOKUP_S and this much more: a lazy
#: client's first call also connects, which the RPC's own timeout does not cover.
POLL_LOOKUP_CONNECT_S = 1.0
#: Temporal's description of a host's task queue (who polled it, when) is awaited this long.
DESCRIBE_QUEUE_TIMEOUT_S = 5.0
#: A host counts as live when a worker polled its queue this recently. An idle worker renews its
#: long poll about once a minute, so a shorter window would call healthy idle hosts dead; a host
#: that died within the window is called live, and registering there fails within the workflow's
#: host wait (a few seconds) with "no worker for host …" — reported, not fatal.
LIVE_POLL_WINDOW_S = 75.0

# --- the worker and its activities (worker.py, activities/, workflows/) ----------------------------

#: A poller seen this recently is a live worker (``host_polled``). A busy worker with free slots
#: polls again as soon as it takes a task, so its last poll is seconds old; a killed worker's stays
#: where it was (and Temporal keeps listing it for minutes). A step is asked after a
#: schedule-to-start of at least HOST_WAIT_FLOOR_S, so a host whose last poll is older than this has
#: not been asking for work meanwhile.
POLLED_WITHIN_S = 10.0
#: A connector step heartbeats this often while it runs, so a host that stops (paused, partitioned)
#: is seen by CONNECTOR_HEARTBEAT_TIMEOUT_S within seconds, not after the step's whole timeout.
CONNECTOR_HEARTBEAT_EVERY_S = 1.0
#: A host's public IP changes rarely; an answer this recent is reused rather than asked again …
IP_ANSWER_REUSE_S = 300.0
#: … and no answer at all for this long before the services are asked again.
IP_NO_ANSWER_REUSE_S = 30.0
#: A lease wakes at each renewal, and on its own only when no renewal has come for this many
#: intervals: just past the next one's due time, so that a renewal held up by a slow Redis does not
#: make a live host look dead (at 0.9 the fallback fired before every renewal, doubling the
#: heartbeats and their RPCs). It heartbeats at every k-th wake (``activities.host.Cadence``), so
#: its longest silence is k + 0.05 intervals, inside the heartbeat timeout of 1.25 k intervals.
QUIET_INTERVALS = 1.05
#: A worker shutting down waits this long for its instances' workflows to release their exchanges
#: (then their TTL frees them), looking again every RELEASE_LOOK_S.
GRACEFUL_RELEASE_S = 30.0
RELEASE_LOOK_S = 0.2
#: Where another worker serves the shared queue, a stopping worker stops serving it before it
#: releases (worker.run_worker): a workflow task the server hands a worker as it shuts down is lost
#: until the task timeout, and a released instance's standbys would be woken into exactly that. If
#: its instances have not all closed this long after, the peer may have died since it last
#: announced itself: the worker serves the shared queue again to finish its own release.
HANDOVER_STALL_S = 3.0
#: A peer counts as serving the shared queue when it announced itself this recently (two
#: announcements: one may be late on a busy machine).
PEER_FRESH_S = 2 * ANNOUNCE_EVERY_S
#: … and Temporal lists it among the shared queue's pollers, asked within this long.
PEER_LOOKUP_S = 1.0
#: A stopping worker waits this long for its shared-queue worker to finish what it took; it has
#: stopped polling by then, and whatever remains finishes while the release goes on.
SHARED_STOP_WAIT_S = 2.0
#: How long a workflow task may run on the worker that took it before the server gives it to
#: another, as a share of the instance's interval, with a floor and a cap (the SDK's default is
#: 10 s). A worker cut off from Temporal, or paused, keeps its long polls open on the server, which
#: goes on handing them tasks: such a task counts as started and sits there until this timeout (the
#: lab's `partition-both`: a standby's promotion 6.5 s late, held by the partitioned holder's
#: worker, against B 4.9 s). The floor keeps a slow replay on a loaded machine from timing out;
#: a task that does costs one more replay elsewhere, and a local activity that runs longer keeps
#: its task alive (the SDK heartbeats it).
WORKFLOW_TASK_TIMEOUT_SHARE = 0.5
WORKFLOW_TASK_TIMEOUT_FLOOR_S = 1.0
WORKFLOW_TASK_TIMEOUT_CAP_S = 10.0


def workflow_task_timeout_s(interval_s: float) -> float:
    """An instance workflow's task timeout at ``interval_s``: half an interval, 1 s to 10 s."""
    share = WORKFLOW_TASK_TIMEOUT_SHARE * interval_s
    return min(WORKFLOW_TASK_TIMEOUT_CAP_S, max(WORKFLOW_TASK_TIMEOUT_FLOOR_S, share))


#: An instance's run continues as new after this many history events (unless Temporal suggests it
#: sooner). A worker that takes over a run it does not have cached — its worker died, or stopped —
#: replays the whole history before the run can act, and a replay costs about 0.4 ms an event on a
#: 2-core machine (the SDK's round trips per workflow task, not Perseus' code: a handoff adds about
#: 60 events to each of the two runs): 1,000 events took 0.45 s, and a handoff after the kill of
#: the worker that had both runs cached replays both on the one worker left. 500 keeps each such
#: replay near 0.2 s (docs/benchmarks.md, "Session 18"); a continue-as-new every eight handoffs or
#: so costs nothing a holder or a standby would notice (the keeper holds the claim throughout).
INSTANCE_HISTORY_LIMIT = 500
#: How long a workflow task waits for the worker that has its run cached (see worker.run_worker).
#: Measured in docs/benchmarks.md against no cache at all, which doubled every handoff's workflow
#: time. The SDK's 10 s held a standby's promotion on a dead host's queue. 0.2 s rather than 0.5 s
#: ("Killed workflow worker", 0.5, 0.3 and 0.2 s measured in the same runs, issue 24): where the
#: server kept the timeout, a handoff right after its worker was killed took +0.3 s over the
#: baseline instead of +0.6 s, and a live worker missed the window for 1 baseline workflow task in
#: 773 (0.5 s: none in 787), which costs one replay elsewhere, not a failover. A server fires so
#: short a timeout no sooner than its history.timerProcessorMaxTimeShift (1 s by default: the task
#: waited about a second; Perseus' dev servers: 250 ms): see devstack.services.TEMPORAL_DYNAMIC_CONFIG
#: and docs/deploy.md.
STICKY_TIMEOUT_S = 0.2
#: The SDK throttles activity heartbeats to 0.8 × their timeout unless capped: capped this low, each
#: heartbeat goes out when sent (the lease and the watch set their own cadence; connector steps hear
#: a cancellation within a second).
HEARTBEAT_THROTTLE_CAP_S = 0.1
#: A worker shutting down lets its running activities finish for this long before cancelling them.
WORKER_SHUTDOWN_GRACE_S = 5.0
#: The keeper asks whether a workflow has closed with this RPC timeout: one describe call, asked in
#: a task of its own so a frozen Temporal never holds up a renewal.
CLOSED_LOOKUP_TIMEOUT_S = 2.0
#: The workflow's retry policies (``workflows.instance.RETRY_POLICIES``): the first retry after a
#: second, doubling up to the cap; a step on a host's queue caps lower (it is tried three times).
ACTIVITY_RETRY_FIRST_S = 1.0
ACTIVITY_RETRY_CAP_S = 10.0
HOST_RETRY_CAP_S = 5.0
#: A notification is retried from two seconds up to a minute apart, for ten minutes in all; then it
#: is given up (the workflow awaits its notifications before the run ends, so they must end).
NOTIFY_RETRY_FIRST_S = 2.0
NOTIFY_RETRY_CAP_S = 60.0
NOTIFY_TIMEOUT_S = 10 * 60.0

# --- the failsafe's wiring (issue 29): the figures of the keeper's probes and rounds ---------------

#: A renewal that has gone unanswered this many intervals starts the failsafe's first round (the
#: design's "failed or a quarter interval overdue"), and a granter's probe of Redis gives up after
#: as long: the last beat's view is up to an interval old, so the granter asks Redis at once.
FAILSAFE_PROBE_INTERVALS = 0.25


def failsafe_probe_s(interval_s: float) -> float:
    """Seconds a granter waits for Redis before it counts Redis as not answering it."""
    return FAILSAFE_PROBE_INTERVALS * interval_s


#: Enrolling in the failsafe roster: an update of the roster workflow through Temporal, sent from
#: the instance's host — a workflow task away, more on a busy server than a Redis step.
ROSTER_STEP_TIMEOUT_S = 30.0

#: A failsafe claim bound for no longer than this (a keeper that just started, an enrolment) waits
#: its bound out inside the claim step instead of being refused: the step's own budget is 10 s.
FAILSAFE_CLAIM_WAIT_S = 5.0

#: How long a status view (``perseus status EXCHANGE``, the exchange view with ``?failsafe=true``)
#: waits for Temporal's view of the exchange's failsafe before it shows the rest without it.
FAILSAFE_VIEW_TIMEOUT_S = 5.0

#: The network page's failsafe lines (``GET /api/network/failsafe``) are read from Temporal at most
#: this often per API process, however many pages poll it (each poll every 5 s by default): one list
#: of the roster workflows, then a query and a describe per member of each failsafe exchange.
FAILSAFE_PAGE_CACHE_S = 2.0

#: A holder's failsafe events (holding began, ended) are written once Redis takes them: tried again
#: every interval, given up after this long (the log line and the gauge said it meanwhile).
FAILSAFE_EVENT_GIVE_UP_S = 900.0
