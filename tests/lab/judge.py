"""The judge outside Perseus: it reads only the sink's log (what the "exchange" received, stamped on
the sink's own clock) and says whether two connectors ever acted for one exchange at once, whether
the epochs the sink accepted ever went down, and how much of the time each exchange had exactly
one acting connector. Pure: values in, a verdict out (tests/lab/test_judge.py).

Rules, per exchange, actions in order of arrival:

* **one epoch, one host** — an epoch is a claim; two hosts acting under one epoch is a split brain;
* **epochs never go down** — an accepted action under an epoch older than one already accepted is a
  stale holder still acting, unless it arrived within ``link_delay_s`` of the newer epoch's first
  action (it was on the wire before the handover: the link's measured delay, nothing more);
* with ``fenced`` (the sink refuses older epochs) no accepted action may be older than the newest
  accepted before it, link delay or not.

Availability: an exchange counts as *acting* at time t through host h when h's last accepted action
arrived no more than ``gap_s`` before t (a connector acts every ``period`` seconds; ``gap_s`` is a
few periods). The share of [first action, end] with exactly one acting host is its availability;
with none, unavailable; with two, overlap (reported, not a violation by itself: the rules above
decide whether it was two holders or one handing over within the link delay).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Action:
    exchange: str
    host: str
    epoch: int
    seq: int
    #: Seconds on the sink's own monotonic clock.
    at: float
    accepted: bool = True


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    #: Per exchange: (exactly-one share, none share, overlap share) of its observed time.
    availability: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: Per exchange: the longest stretch with no acting host (seconds).
    longest_gap: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def read_log(path: Path) -> list[Action]:
    """The sink's JSON-lines log as actions (lines that do not parse are a violation elsewhere)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            out.append(
                Action(
                    exchange=str(doc["exchange"]),
                    host=str(doc["host"]),
                    epoch=int(doc["epoch"]),
                    seq=int(doc["seq"]),
                    at=float(doc["at"]),
                    accepted=bool(doc["accepted"]),
                )
            )
    return out


def judge(
    actions: list[Action],
    *,
    link_delay_s: float,
    gap_s: float,
    end: float | None = None,
    fenced: bool = False,
) -> Verdict:
    verdict = Verdict()
    by_exchange: dict[str, list[Action]] = defaultdict(list)
    for action in actions:
        by_exchange[action.exchange].append(action)
    for exchange, seen in sorted(by_exchange.items()):
        seen.sort(key=lambda a: a.at)
        accepted = [a for a in seen if a.accepted]
        owner: dict[int, str] = {}
        newest = -1
        newest_since = float("-inf")
        for a in accepted:
            if owner.setdefault(a.epoch, a.host) != a.host:
                verdict.violations.append(
                    f"{exchange}: epoch {a.epoch} acted by {owner[a.epoch]} and {a.host} (at {a.at:.3f})"
                )
            if a.epoch > newest:
                newest, newest_since = a.epoch, a.at
            elif a.epoch < newest:
                late = a.at - newest_since
                if fenced or late > link_delay_s:
                    verdict.violations.append(
                        f"{exchange}: {a.host} acted under epoch {a.epoch} {late:.3f}s after epoch {newest} "
                        f"began (link delay {link_delay_s:.3f}s)"
                    )
        if accepted:
            verdict.availability[exchange], verdict.longest_gap[exchange] = _coverage(
                accepted, gap_s, end if end is not None else accepted[-1].at
            )
    return verdict


def _coverage(accepted: list[Action], gap_s: float, end: float) -> tuple[tuple[float, float, float], float]:
    """Shares of [first, end] with one, none and several acting hosts, and the longest none."""
    # Each action makes its host "acting" for [at, at + gap_s); sweep the interval ends.
    events: list[tuple[float, int, str]] = []
    spans = [(a.host, a.at, min(a.at + gap_s, end)) for a in accepted]
    for host, lo, hi in spans:
        if hi > lo:
            events.append((lo, 1, host))
            events.append((hi, -1, host))
    events.sort()
    begin = accepted[0].at
    total = max(end - begin, 1e-9)
    one = none = several = 0.0
    longest = 0.0
    active: dict[str, int] = defaultdict(int)
    t = begin
    for when, step, host in events:
        when = min(max(when, begin), end)
        hosts = sum(1 for n in active.values() if n > 0)
        length = when - t
        if length > 0:
            if hosts == 1:
                one += length
            elif hosts == 0:
                none += length
                longest = max(longest, length)
            else:
                several += length
        t = when
        active[host] += step
    if end > t:
        none += end - t
        longest = max(longest, end - t)
    return (one / total, none / total, several / total), longest


@dataclass(frozen=True)
class Window:
    """What the sink saw of one exchange around one fault: who acted last before it, every
    (host, epoch) it accepted from the fault's start on, and the longest silence among those."""

    #: The (host, epoch) of the last accepted action before the window (None: nobody had acted).
    before: tuple[str, int] | None
    #: Every (host, epoch) accepted within the window.
    during: frozenset[tuple[str, int]]
    #: The (host, epoch) of the window's last accepted action (None: nobody acted in it).
    after: tuple[str, int] | None
    #: The longest time between two accepted actions in the window (seconds).
    longest_silence: float

    @property
    def kept(self) -> bool:
        """The holder before the fault was the only one to act through it, same host and epoch."""
        return self.before is not None and self.during == {self.before}

    @property
    def moved(self) -> bool:
        """Another host took over under a newer epoch, and acts at the window's end."""
        return (
            self.before is not None
            and self.after is not None
            and self.after[0] != self.before[0]
            and self.after[1] > self.before[1]
        )


def window(actions: list[Action], exchange: str, start: float, end: float | None = None) -> Window:
    """The sink's view of ``exchange`` from ``start`` (a fault's injection, on the sink's clock) to
    ``end`` (default: the last action), from its accepted actions only."""
    accepted = sorted((a for a in actions if a.accepted and a.exchange == exchange), key=lambda a: a.at)
    earlier = [a for a in accepted if a.at < start]
    inside = [a for a in accepted if start <= a.at and (end is None or a.at <= end)]
    times = [a.at for a in inside]
    return Window(
        before=(earlier[-1].host, earlier[-1].epoch) if earlier else None,
        during=frozenset((a.host, a.epoch) for a in inside),
        after=(inside[-1].host, inside[-1].epoch) if inside else None,
        longest_silence=max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0),
    )
