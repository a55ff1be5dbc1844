"""The invariant checker: pure functions over the connector journal, the stream and the fault schedule.

Safety: never two connectors of one exchange acting at once. Liveness: never longer than the bound
B (:func:`liveness_bound_s`) without one while an instance of the exchange could run its connector.

A connector *acts* while it is connected and the claim it renewed is still valid on its own clock:
``valid_until`` (last renewal + renewal deadline) is written to the journal at each renewal. Journal
times are CLOCK_MONOTONIC, one clock for every process on the machine, so intervals from different
worker processes compare directly.

Warm standbys: a standby's connector runs before it may act, so its ``connect`` line is written when
``ACTIVATE <epoch>`` is sent (``warm: true``, with that epoch). It must carry the epoch of a claim just
taken — above every epoch any connector of the exchange acted under before — and while it acts, the
renewals of its own workflow must be of that epoch and no other.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from perseus.core.decisions import (
    act_after_vacancy_s,
    handoff_reservation_s,
    head_start_s,
    vacancy_delay,
)
from perseus.timing import CLAIM_OVER_INTERVALS, GRID_SLOT_S


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    acting_intervals: int = 0
    transitions: int = 0
    #: Every stretch without an acting connector that liveness judged, violation or not.
    gaps: list[Gap] = field(default_factory=list)


def load_journal(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def acting_intervals(
    journal: list[dict[str, object]], now: float, killed: Mapping[int, float] | None = None
) -> dict[str, list[tuple[float, float, str]]]:
    """Per exchange: (start, end, who) intervals during which a connector acted.

    ``killed`` (worker pid → when it was SIGKILLed) ends a connector that was acting in that process
    at the kill, instead of at its validity's end: it died with the process (a process connector's
    child by its parent-death signal). Only liveness may use it; safety keeps the validity, which
    is what bounds a connector the journal cannot see stop.
    """
    killed = killed or {}
    by_connector: dict[tuple[object, object], list[dict[str, object]]] = defaultdict(list)
    for line in sorted(journal, key=lambda x: float(x["t"])):  # type: ignore[arg-type]
        by_connector[(line["pid"], line["workflowId"])].append(line)
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for (pid, wf), lines in by_connector.items():
        exchange = str(next((x["exchange"] for x in lines if "exchange" in x), wf))
        valid: list[tuple[float, float]] = []  # (renewed at, valid until)
        connected_at: float | None = None
        died = killed.get(pid, now) if isinstance(pid, int) else now
        for line in lines:
            t = float(line["t"])  # type: ignore[arg-type]
            if line["kind"] == "valid_until":
                valid.append((t, float(line["until"])))  # type: ignore[arg-type]
            elif line["kind"] == "connect":
                connected_at = t
            elif line["kind"] == "disconnect" and connected_at is not None:
                out[exchange] += _clip(connected_at, _ended(connected_at, t, died), valid, f"{wf}@{pid}")
                connected_at = None
        if connected_at is not None:  # still connected when the journal was read, or killed
            out[exchange] += _clip(connected_at, _ended(connected_at, now, died), valid, f"{wf}@{pid}")
    return out


def _ended(connected_at: float, end: float, died: float) -> float:
    """When a connector stopped: at ``end``, or at its process's kill if that came first. A pid
    killed before this connector connected is a later process that reused the number."""
    return min(end, died) if died >= connected_at else end


def _clip(
    start: float, end: float, valid: list[tuple[float, float]], who: str
) -> list[tuple[float, float, str]]:
    """The part of [start, end] covered by the validity windows in force (the last one before
    ``start`` counts from ``start``)."""
    windows: list[tuple[float, float]] = []
    before = [v for v in valid if v[0] <= start]
    if before:
        windows.append((start, before[-1][1]))
    windows += [(t, u) for t, u in valid if start < t <= end]
    merged: list[tuple[float, float, str]] = []
    for t, u in windows:
        lo, hi = max(t, start), min(u, end)
        if hi <= lo:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi), who)
        else:
            merged.append((lo, hi, who))
    return merged


def check(
    journal: list[dict[str, object]],
    stream: list[dict[str, str]],
    now: float,
    holders: list[tuple[str, int]] | None = None,
    liveness: Liveness | None = None,
) -> Report:
    """Judge a run: split brain, warm activations, epochs, events, transition chains — and, given
    ``liveness``, every stretch without a connector (:func:`liveness_gaps`)."""
    holders = holders or []
    report = Report()
    for exchange, intervals in acting_intervals(journal, now).items():
        intervals.sort()
        report.acting_intervals += len(intervals)
        reach, owner = float("-inf"), ""
        for start, end, who in intervals:  # a sweep: any overlap with the furthest-reaching interval
            if owner and who != owner and start < reach:
                report.violations.append(
                    f"{exchange}: {owner} and {who} both acted for {min(reach, end) - start:.3f}s"
                )
            if end > reach:
                reach, owner = end, who
    report.violations += warm_violations(journal)
    if liveness is not None:
        report.gaps = liveness_gaps(journal, now, liveness)
        report.violations += [gap.describe() for gap in report.gaps if gap.violates]
    # Epochs: every claim has its own epoch, and the holders seen in the status key over time only
    # ever move to higher epochs. (Stream order alone is not claim order: a lost instance writes its
    # walk down to idle after the new holder's first events.)
    epoch_of: dict[str, int] = {}
    for entry in stream:
        if (
            entry["event"] == "claim_conflict"
            or entry.get("epoch", "0") == "0"
            or not entry.get("instanceId")
        ):
            continue  # a refused claimant never held; standbys hold nothing
        epoch_of.setdefault(entry["instanceId"], int(entry["epoch"]))
    by_epoch: dict[int, set[str]] = defaultdict(set)
    for instance, epoch in epoch_of.items():
        by_epoch[epoch].add(instance)
    for epoch, instances in by_epoch.items():
        if len(instances) > 1:
            report.violations.append(f"epoch {epoch} was used by {len(instances)} claims")
    previous: tuple[str, int] | None = None
    for instance, epoch in holders:
        if previous is not None and instance != previous[0] and epoch <= previous[1]:
            report.violations.append(f"holder went from epoch {previous[1]} to {epoch}")
        previous = (instance, epoch)
    # Every event exactly once, and each claim's transitions form one unbroken chain.
    ids = [e["eventId"] for e in stream]
    if len(ids) != len(set(ids)):
        report.violations.append("an event was written twice")
    last_state: dict[str, str] = {}
    for entry in stream:
        if entry["event"] != "state_transition":
            continue
        report.transitions += 1
        key = entry["instanceId"]
        if key in last_state and last_state[key] != entry["fromState"]:
            report.violations.append(
                f"{key}: transition from {entry['fromState']} after {last_state[key]} (missing or repeated)"
            )
        last_state[key] = entry["toState"]
    return report


def warm_violations(journal: list[dict[str, object]]) -> list[str]:
    """A warm standby never acts before ACTIVATE with its own new epoch (see the module docstring)."""
    found: list[str] = []
    ordered = sorted(journal, key=lambda x: float(x["t"]))  # type: ignore[arg-type]
    highest: dict[str, int] = defaultdict(int)  # per exchange: the highest epoch acted under so far
    for line in ordered:
        if line["kind"] != "connect" or line.get("epoch") is None:
            continue
        exchange, epoch = str(line.get("exchange")), int(line["epoch"])  # type: ignore[call-overload]
        who = f"{line['workflowId']}@{line['pid']}"
        if line.get("warm"):
            if epoch <= 0:
                found.append(f"{exchange}: warm standby {who} activated without a claim (epoch {epoch})")
            elif epoch <= highest[exchange]:
                found.append(
                    f"{exchange}: warm standby {who} activated at epoch {epoch}, not above epoch "
                    f"{highest[exchange]} that acted before"
                )
        highest[exchange] = max(highest[exchange], epoch)
    # While a warm-activated connector acts, its own workflow renews that epoch only.
    by_connector: dict[tuple[object, object], list[dict[str, object]]] = defaultdict(list)
    for line in ordered:
        by_connector[(line["pid"], line["workflowId"])].append(line)
    for (pid, wf), lines in by_connector.items():
        acting_at: int | None = None
        for line in lines:
            if line["kind"] == "connect":
                acting_at = int(line["epoch"]) if line.get("warm") else None  # type: ignore[call-overload]
            elif line["kind"] == "disconnect":
                acting_at = None
            elif line["kind"] == "valid_until" and acting_at is not None and line.get("epoch") != acting_at:
                found.append(
                    f"warm standby {wf}@{pid} activated at epoch {acting_at} acted on renewals of epoch "
                    f"{line.get('epoch')}"
                )
                acting_at = None
    return found


# --- liveness: at least one, within B -----------------------------------------------------------


class Recovery(StrEnum):
    """How an exchange comes to need a new active instance; each path has its own bound."""

    CRASH = "crash"  # the holder died or froze: a standby must see it (the claim-over line)
    GRACEFUL = "graceful stop"  # the holder's worker stopped: it releases and wakes a standby
    HANDOFF = "handoff"  # planned: the holder stops, the named target starts
    REDIS_BACK = "Redis back"  # after a Redis outage: the holder re-claims first, or a standby does
    #: A handoff whose target dies after the old connector stopped: the handoff's part, then a
    #: crash of the target (which may hold the key by then) that another standby must detect.
    HANDOFF_TARGET_LOST = "handoff, target lost"
    #: A crash whose best standby cannot start its connector: it claims, fails, releases and wakes
    #: the next one, which starts.
    FAILED_PROMOTION = "failed promotion"
    #: A handoff whose target's host answers late: the exchange is reserved for it, and the
    #: handing-over side takes it back if the target has not claimed when the reservation ends.
    HANDOFF_LATE_TARGET = "handoff, target late"


#: Seconds of Temporal round trips on the way to active, whatever the path: the claim activity
#: and the walk's three (prepare, warm up, connect), each a workflow task then an activity task,
#: plus the transitions' local activities. About 0.1 s each on an idle 2-core machine. The suite
#: runs beside the rest of ``make test``, and CI machines differ: on one that ran the whole suite in
#: 22 minutes (11.6 here) two graceful stops took 2.79 s and 2.86 s against the 2.7 s a 1 s margin
#: gave — a cold takeover's dozen round trips at that machine's pace, on the path they should take
#: (the chaos suite checks the path of each graceful stop apart from its time). Hence 1.5 s.
DISPATCH_MARGIN_S = 1.5
#: A standby looks at the holder's key at the claim-over line itself (timing.LAPSE_LOOK_S past it)
#: or at a beat that the renewal grid may start a slot early; one slot covers that and the look's
#: Redis round trip.
LOOK_SLACK_S = GRID_SLOT_S


def liveness_bound_s(
    interval_s: float,
    walk_s: float,
    path: Recovery = Recovery.CRASH,
    *,
    hosts: int = 3,
    margin_s: float = DISPATCH_MARGIN_S,
) -> float:
    """B: the longest an exchange may go without an acting connector while an instance could run it.

    ``walk_s`` is the connector's cold walk (prepare + warm up + connect; a warm activation is
    shorter); ``hosts`` the number of hosts the exchange is registered on. By path (docs/design.md,
    "At least one: the liveness bound"):

    * crash: detection — the claim-over line, renew deadline plus margin (2.1 intervals) after
      the holder's last renewal, which came at most at the crash, and one grid slot for the look —
      then a head start for each standby ahead of the winner whose host is gone but whose record
      still lives (every host but the holder's and the winner's), the walk and the dispatch margin;
    * graceful stop: the release wakes the best standby; missing that, its next look finds the
      vacancy within one interval (nobody else died: no head start); the walk and the margin;
    * handoff: the target is told directly: the walk and two margins (a signal, then its claim);
    * handoff, target late: the release reserves the exchange for the target
      (:func:`perseus.core.decisions.handoff_reservation_s`); it claims within that, or the handing-
      over side takes the exchange back when it ends; the walk and the margin;
    * handoff, target lost: the handoff's bound (the old connector stopped, the target began its
      walk), then a crash's (the target may have claimed; another standby must see its key lapse);
    * failed promotion: a crash's bound, whose winner's walk fails; then that walk once more and
      the margin — it releases and wakes the next standby, which acts at once (the release proves
      the failed one stopped);
    * Redis back (counted from its return): a standby's next look, within an interval, finds the
      key gone; it gives the holder its head start after an outage and the standbys ahead theirs,
      claims, and — a vanished key proves nothing — waits out the old holder's renew deadline
      before its connector acts (:func:`perseus.core.decisions.vacancy_delay`,
      :func:`perseus.core.decisions.act_after_vacancy_s`); the walk and the margin. A holder that
      re-claims first is quicker.
    """
    ahead = max(0, hosts - 2)  # every host but the holder's and the winner's
    if path is Recovery.HANDOFF:
        # One dispatch more than a failover's: the handing-over workflow signals the target's,
        # whose task then claims — two workflow tasks in a row on a loaded machine (a planned
        # handoff measured 1.64 s beside four other test runs, against walk + one margin, 1.7 s).
        return walk_s + 2 * margin_s
    if path is Recovery.HANDOFF_LATE_TARGET:
        return handoff_reservation_s(interval_s) + walk_s + margin_s
    if path is Recovery.HANDOFF_TARGET_LOST:
        handoff = liveness_bound_s(interval_s, walk_s, Recovery.HANDOFF, hosts=hosts, margin_s=margin_s)
        return handoff + liveness_bound_s(interval_s, walk_s, Recovery.CRASH, hosts=hosts, margin_s=margin_s)
    if path is Recovery.FAILED_PROMOTION:
        crash = liveness_bound_s(interval_s, walk_s, Recovery.CRASH, hosts=hosts, margin_s=margin_s)
        return crash + walk_s + margin_s
    if path is Recovery.GRACEFUL:
        return interval_s + walk_s + margin_s
    if path is Recovery.REDIS_BACK:
        detection = (
            interval_s + vacancy_delay(ahead, interval_s, after_outage=True) + act_after_vacancy_s(interval_s)
        )
        return detection + walk_s + margin_s
    detection = CLAIM_OVER_INTERVALS * interval_s + LOOK_SLACK_S
    head_starts = ahead * head_start_s(interval_s)
    return detection + head_starts + walk_s + margin_s


@dataclass(frozen=True)
class Window:
    """A stretch of the run on the journal's clock (CLOCK_MONOTONIC): a fault from its injection
    until the suite saw the exchange healed, or a time in which no instance could run."""

    start: float
    end: float
    what: str
    #: The path by which the exchange must get an active instance again: after a fault, or when
    #: a window in which nothing could run ends (Redis back, or a crash's for Temporal back).
    path: Recovery = Recovery.CRASH

    @property
    def kind(self) -> str:
        """The fault's name without its ordinal ("SIGKILL active worker #3" → "SIGKILL active worker")."""
        return self.what.rsplit(" #", 1)[0]


@dataclass(frozen=True)
class Timing:
    """What an exchange's bound depends on."""

    interval_s: float
    walk_s: float
    hosts: int = 3
    #: The Temporal round trips' allowance (DISPATCH_MARGIN_S unless a test of the checker says).
    margin_s: float = DISPATCH_MARGIN_S


@dataclass(frozen=True)
class Liveness:
    """What the liveness check needs beyond the journal.

    ``cannot_run``: windows in which no registered instance of any exchange could start its
    connector — Redis unreachable (nothing can be claimed), Temporal unreachable (a start is a
    workflow step), every instance stopped on purpose, every host down. A connector already acting
    may go on through them; an exchange without one is not held to B inside them, and its clock
    starts again when they end, with the bound of their path (overlapping ones: the loosest).
    ``faults`` say which bound the rest of a gap is held to and whom to blame.
    """

    timing: Mapping[str, Timing]
    faults: Sequence[Window] = ()
    cannot_run: Sequence[Window] = ()
    #: Worker pid → when it was SIGKILLed (see :func:`acting_intervals`).
    killed: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    """A stretch in which no connector of ``exchange`` acted."""

    exchange: str
    start: float
    end: float
    #: The part of it outside every ``cannot_run`` window that came nearest its bound (or went
    #: furthest past it): what B is held against, and that part's B and path.
    counted: float
    bound: float
    path: Recovery
    #: The fault in progress when it began (or the last one before it); None before any.
    fault: Window | None
    #: Whether it began after that fault was healed (a late effect) rather than during it.
    after_fault: bool = False

    @property
    def length(self) -> float:
        return self.end - self.start

    @property
    def violates(self) -> bool:
        return self.counted > self.bound

    def describe(self) -> str:
        during = "before any fault"
        if self.fault is not None:
            during = f"{'after' if self.after_fault else 'during'} {self.fault.what!r}"
        excused = f" ({self.length:.3f}s in all)" if self.length > self.counted else ""
        return (
            f"{self.exchange}: no connector acted for {self.counted:.3f}s while an instance could run "
            f"it{excused}, over B {self.bound:.3f}s ({self.path}), {during}"
        )


def idle_stretches(
    intervals: Sequence[tuple[float, float, str]], since: float, until: float
) -> list[tuple[float, float]]:
    """The parts of [since, until] that no interval covers, in order."""
    out: list[tuple[float, float]] = []
    reach = since
    for start, end, _ in sorted(intervals):
        if start > reach:
            out.append((reach, min(start, until)))
        reach = max(reach, end)
        if reach >= until:
            break
    if reach < until:
        out.append((reach, until))
    return [(a, b) for a, b in out if b > a]


def runnable_parts(
    start: float, end: float, cannot_run: Sequence[Window]
) -> list[tuple[float, float, list[Window]]]:
    """The parts of [start, end] outside every ``cannot_run`` window, each with the windows of the
    outage it follows — all that overlap into it, also those inside a longer one (none for a part
    that begins at ``start``)."""
    parts: list[tuple[float, float, list[Window]]] = []
    reach, before = start, list[Window]()
    for window in sorted(cannot_run, key=lambda w: w.start):
        if window.end <= start or window.start >= end:
            continue
        if window.start > reach:
            parts.append((reach, window.start, before))
            before = []
        before = [*before, window]
        reach = max(reach, window.end)
    if end > reach:
        parts.append((reach, end, before))
    return parts


def longest_runnable(start: float, end: float, cannot_run: Sequence[Window]) -> float:
    """The longest part of [start, end] outside every ``cannot_run`` window."""
    return max((b - a for a, b, _ in runnable_parts(start, end, cannot_run)), default=0.0)


def blame(at: float, faults: Sequence[Window]) -> tuple[Window | None, bool]:
    """The fault in progress at ``at``, else the last one that began before it (and True: the gap
    came after it was healed); (None, False) before any."""
    began = [f for f in faults if f.start <= at]
    if not began:
        return None, False
    latest = max(began, key=lambda f: f.start)
    return latest, at > latest.end


def liveness_gaps(journal: list[dict[str, object]], now: float, liveness: Liveness) -> list[Gap]:
    """Every stretch, per exchange, from its first acting connector until ``now``, in which none
    acted. Its parts in which an instance could run are each held to a bound: the first to that of
    the path of the fault it began in (a crash's outside any fault or after one was healed), a part
    after a ``cannot_run`` window to the loosest of those windows' paths.

    An exchange with no acting connector at all is not judged: the journal says nothing of when it
    could first have had one.
    """
    gaps: list[Gap] = []
    for exchange, intervals in sorted(acting_intervals(journal, now, liveness.killed).items()):
        if exchange not in liveness.timing:
            raise ValueError(f"no liveness timing for exchange {exchange!r}")
        timing = liveness.timing[exchange]

        def bound(path: Recovery, timing: Timing = timing) -> float:
            return liveness_bound_s(
                timing.interval_s, timing.walk_s, path, hosts=timing.hosts, margin_s=timing.margin_s
            )

        since = min(start for start, _, _ in intervals)
        for start, end in idle_stretches(intervals, since, now):
            fault, after = blame(start, liveness.faults)
            first = fault.path if fault is not None and not after else Recovery.CRASH
            judged = [
                (b - a, max((w.path for w in windows), key=bound) if windows else first)
                for a, b, windows in runnable_parts(start, end, liveness.cannot_run)
            ]
            # The part that came nearest its bound; none when the gap lies wholly in cannot_run.
            counted, path = max(judged or [(0.0, first)], key=lambda part: part[0] - bound(part[1]))
            gaps.append(
                Gap(
                    exchange=exchange,
                    start=start,
                    end=end,
                    counted=counted,
                    bound=bound(path),
                    path=path,
                    fault=fault,
                    after_fault=after,
                )
            )
    return gaps
