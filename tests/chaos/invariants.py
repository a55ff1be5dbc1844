"""The split-brain invariant checker: pure functions over the connector journal and the stream.

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
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    acting_intervals: int = 0
    transitions: int = 0


def load_journal(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def acting_intervals(
    journal: list[dict[str, object]], now: float
) -> dict[str, list[tuple[float, float, str]]]:
    """Per exchange: (start, end, who) intervals during which a connector acted."""
    by_connector: dict[tuple[object, object], list[dict[str, object]]] = defaultdict(list)
    for line in sorted(journal, key=lambda x: float(x["t"])):  # type: ignore[arg-type]
        by_connector[(line["pid"], line["workflowId"])].append(line)
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for (pid, wf), lines in by_connector.items():
        exchange = str(next((x["exchange"] for x in lines if "exchange" in x), wf))
        valid: list[tuple[float, float]] = []  # (renewed at, valid until)
        connected_at: float | None = None
        for line in lines:
            t = float(line["t"])  # type: ignore[arg-type]
            if line["kind"] == "valid_until":
                valid.append((t, float(line["until"])))  # type: ignore[arg-type]
            elif line["kind"] == "connect":
                connected_at = t
            elif line["kind"] == "disconnect" and connected_at is not None:
                out[exchange] += _clip(connected_at, t, valid, f"{wf}@{pid}")
                connected_at = None
        if connected_at is not None:  # still connected when the journal was read
            out[exchange] += _clip(connected_at, now, valid, f"{wf}@{pid}")
    return out


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
) -> Report:
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
