"""The lab end to end (root only): three connector hosts in namespaces of their own, the servers in
the infrastructure namespace, one exchange active on one host and standing by on two; a seeded
schedule of every fault kind, each injected, held and healed. The judge, reading only the sink's
log, finds no two connectors acting at once and epochs that never went down. CI runs one round on
the single Redis; `make lab` many rounds on every profile and writes docs/lab.md."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest

from tests.lab.faults import (
    ALL_KINDS,
    BOUND_S,
    FAILSAFE_EXPECT,
    FAILSAFE_PROFILE_KINDS,
    PROFILE_KINDS,
    Injected,
    inject,
    schedule,
)
from tests.lab.judge import Verdict, Window, judge, read_log, window
from tests.lab.netns import Lab, namespaces, root_reason
from tests.lab.stack import LabStack

REASON = root_reason()
#: Rounds of every fault kind: one in CI, many under `make lab`.
ROUNDS = int(os.environ.get("PERSEUS_LAB_ROUNDS", "1"))
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600 + 240 * ROUNDS),
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

EXCHANGE = "kraken"
#: Only these kinds (comma-separated), to replay or study some: PERSEUS_LAB_KINDS=clock-drift,clock-step.
KINDS_RUN = tuple(k for k in os.environ.get("PERSEUS_LAB_KINDS", ",".join(ALL_KINDS)).split(",") if k)
#: The infrastructure profiles the schedule runs on (tests/lab/infra.py): CI the single Redis,
#: `make lab` all three.
PROFILES = tuple(p for p in os.environ.get("PERSEUS_LAB_PROFILES", "single").split(",") if p)
#: The profiles the failsafe's schedule runs on (its kinds against an exchange with the failsafe on):
#: none in CI (`make test`), `make lab` and `make lab-failsafe` name them.
FAILSAFE_PROFILES = tuple(p for p in os.environ.get("PERSEUS_LAB_FAILSAFE_PROFILES", "").split(",") if p)
#: Each schedule run: its profile, and whether it is the failsafe's (ids: "single", "single-failsafe").
RUNS = [
    *(pytest.param(p, False, id=p) for p in PROFILES),
    *(pytest.param(p, True, id=f"{p}-failsafe") for p in FAILSAFE_PROFILES),
]


def _until(what: str, check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _acting_host(stack: LabStack) -> int | None:
    """The host whose connector the sink heard last (within the last second)."""
    if not stack.sink_log.exists():
        return None
    recent = [a for a in read_log(stack.sink_log) if a.accepted and a.at > time.monotonic() - 1.0]
    if not recent:
        return None
    return int(recent[-1].host.rsplit("-h", 1)[1])


def _header() -> str:
    return "\n".join(
        [
            "# The lab: faults against real hosts, judged at the sink",
            "",
            "Written by `make lab` (tests/lab/test_lab.py::test_a_seeded_schedule_of_every_fault): three",
            "connector hosts in network namespaces of their own, the servers in an infrastructure",
            "namespace, one exchange active on one host and standing by on two, interval I = 1 s. The",
            'judge reads only the sink\'s log (docs/design.md, "The lab"). One section per Redis profile;',
            "replay one with the command under its heading.",
            "",
            "Longest silence at the sink in each fault's window (the connector acts every 0.1 s, so",
            "0.1 s is none), against the bound: a crash's B for faults that stop the holder, 0.5 s (a",
            "few action periods on a loaded machine) for those that must change nothing, and for the",
            'Redis failovers what the failover itself takes (docs/design.md, "The lab").',
            "",
            "The failsafe's sections (`make lab-failsafe`, or `make lab` with",
            "`PERSEUS_LAB_FAILSAFE_PROFILES`) run its own kinds against an exchange whose instances all",
            'have the failsafe on (docs/design.md, "Failsafe: holding through a Redis outage"): Redis',
            "cut from every host, from the holder only, from one standby only, and cut from every host",
            "while it restarts without its data; each fault's outcome is judged at the sink too.",
            "",
        ]
    )


def _heading(profile: str, failsafe: bool) -> str:
    return f"## Failsafe, profile `{profile}`" if failsafe else f"## Profile `{profile}`"


def _replay(profile: str, failsafe: bool, seed: int, rounds: int, make: bool) -> str:
    """The command that runs the same schedule again (``make``: through the Makefile's target)."""
    if failsafe:
        profiles = f"PERSEUS_LAB_PROFILES= PERSEUS_LAB_FAILSAFE_PROFILES={profile}"
    else:
        profiles = f"PERSEUS_LAB_PROFILES={profile} PERSEUS_LAB_FAILSAFE_PROFILES="
    env = f"{profiles} PERSEUS_LAB_SEED={seed} PERSEUS_LAB_ROUNDS={rounds}"
    return f"{env} make lab" if make else f"{env} .venv/bin/pytest -s {__file__} -k schedule"


def _write_report(path: Path, heading: str, section: str) -> None:
    """The report with this run's section in it: the header rewritten, a section under the same
    heading replaced, any other section (another profile's, the failsafe's, notes added by hand)
    kept."""
    sections: list[str] = []
    if path.exists():
        chunks = re.split(r"(?m)^(?=## )", path.read_text())
        sections = [c.rstrip("\n") + "\n" for c in chunks[1:]]
    heads = [c.splitlines()[0] for c in sections]
    if heading in heads:
        sections[heads.index(heading)] = section
    else:
        # After the last of its kind (a profile's, the failsafe's); the first failsafe one at the
        # end, the first profile one before the notes.
        kind = heading.split("`")[0]
        same = [n for n, h in enumerate(heads) if h.startswith(kind)]
        notes = next((n for n, h in enumerate(heads) if h.startswith("## Notes")), len(sections))
        at = same[-1] + 1 if same else len(sections) if kind.startswith("## Failsafe") else notes
        sections.insert(at, section)
    path.write_text("\n".join([_header(), *sections]))


def _section(
    profile: str,
    seed: int,
    rounds: int,
    injected: list[Injected],
    verdict: Verdict,
    gaps: dict[str, list[float]],
    failsafe: bool = False,
    outcomes: dict[str, list[Window]] | None = None,
) -> str:
    one, none, several = verdict.availability.get(EXCHANGE, (0.0, 0.0, 0.0))
    lines = [
        _heading(profile, failsafe),
        "",
        f"`{_replay(profile, failsafe, seed, rounds, make=True)}`",
        "",
        f"Seed {seed}, {rounds} round(s) of every kind: {len(injected)} faults. "
        f"**Violations: {len(verdict.violations)}.**",
        f"Time with exactly one acting connector {one:.1%}, none {none:.1%}, two {several:.1%} "
        "(within the link delay: a handover's last action in flight).",
        f"Load average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) on "
        f"{os.cpu_count()} cores: on a shared machine the silences are noisy.",
        "",
    ]
    if failsafe:
        lines[-1:-1] = [
            "",
            "Every instance registered with the failsafe on. *Expected*: `kept`, the holder before the",
            "fault the only connector acting through it and after it (same host, same epoch, judged",
            "5 I after Redis returned, once every promise ran out); `moved`, another host acting under",
            "a newer epoch at the end.",
        ]
        lines += [
            "| fault | count | longest silence (s) | bound (s) | expected | as expected |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines += ["| fault | count | longest silence (s) | bound (s) |", "|---|---|---|---|"]
    for label in sorted(gaps, key=lambda label: (ALL_KINDS.index(label.split()[0]), label)):
        seen = gaps[label]
        bound = BOUND_S[label.split()[0]]
        over = " **over**" if max(seen) > bound else ""
        row = f"| {label} | {len(seen)} | {max(seen):.2f}{over} | {bound:.1f} |"
        if failsafe and outcomes is not None:
            expect = FAILSAFE_EXPECT[label]
            met = sum(_as_expected(w, expect) for w in outcomes.get(label, []))
            row += f" {expect} | {met} of {len(outcomes.get(label, []))} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _as_expected(seen: Window, expect: str) -> bool:
    return seen.kept if expect == "kept" else seen.moved


@pytest.mark.parametrize(("profile", "failsafe"), RUNS)
def test_a_seeded_schedule_of_every_fault(tmp_path: Path, profile: str, failsafe: bool) -> None:
    """Every fault kind the profile has (once in CI; PERSEUS_LAB_ROUNDS rounds under `make lab`), in
    an order and with hold times drawn from a seed; afterwards the judge must find no violation.
    The failsafe's run: its kinds against an exchange whose instances all have the failsafe on, and
    each fault's outcome as the design says (tests/lab/faults.FAILSAFE_EXPECT)."""
    seed = int(os.environ.get("PERSEUS_LAB_SEED", str(random.randrange(1_000_000))))
    rounds = ROUNDS
    kinds = tuple(
        k for k in (FAILSAFE_PROFILE_KINDS if failsafe else PROFILE_KINDS)[profile] if k in KINDS_RUN
    )
    replay = _replay(profile, failsafe, seed, rounds, make=False)
    what = "failsafe schedule" if failsafe else "schedule"
    print(f"lab {what} on {profile} seed {seed} ({rounds} round(s)); replay: {replay}")
    lab = Lab.for_run(hosts=3)
    stack = LabStack(lab, tmp_path / "lab", interval=1.0, profile=profile, failsafe=failsafe)
    injected: list[Injected] = []
    gaps: dict[str, list[float]] = {}
    outcomes: dict[str, list[Window]] = {}
    try:
        stack.up()
        stack.register(EXCHANGE, 1, standby=False)
        stack.register(EXCHANGE, 2, standby=True)
        stack.register(EXCHANGE, 3, standby=True)
        _until("a connector acting", lambda: _acting_host(stack) is not None)
        for fault in schedule(seed, rounds, kinds):
            _until("a connector acting before the next fault", lambda: _acting_host(stack) is not None)
            active = _acting_host(stack) or 1
            standby = next(h for h in (1, 2, 3) if h != active)
            done = inject(stack, fault, active, standby)
            injected.append(done)
            # With the failsafe a standby's record is back within an interval of Redis answering
            # (or coming back empty): the supervisor does not shut it down as missing before that.
            stack.heal(EXCHANGE, grace=3 * stack.interval if failsafe else 0.0)
            _until(f"a connector acting after {fault.kind}", lambda: _acting_host(stack) is not None)
            # The failsafe's: until every promise has run out (P = 3 I after the last round), so
            # that a standby that would claim once its bound ended (flapping) is seen.
            time.sleep((5 if failsafe else 2) * stack.interval)
            seen = window(read_log(stack.sink_log), EXCHANGE, done.start - 0.5)
            gaps.setdefault(fault.label, []).append(seen.longest_silence)
            where = f"on host {done.fault.host} for {fault.hold_i} I"
            if fault.kind == "redis-replies-delayed":
                where += f", replies {fault.arg} I late"
            told = ""
            if failsafe:
                outcomes.setdefault(fault.label, []).append(seen)
                told = f"; before {seen.before}, during {sorted(seen.during)}, after {seen.after}"
            print(f"{fault.label} {where}: longest silence {seen.longest_silence:.2f}s{told}")
        actions = read_log(stack.sink_log)
        verdict = judge(actions, link_delay_s=0.05, gap_s=0.3)
        if report := os.environ.get("PERSEUS_LAB_REPORT"):
            section = _section(profile, seed, rounds, injected, verdict, gaps, failsafe, outcomes)
            _write_report(Path(report), _heading(profile, failsafe), section)
        assert verdict.ok, f"seed {seed}: {verdict.violations[:5]}; replay: {replay}"
        if failsafe:
            missed = [
                f"{label}: before {w.before}, during {sorted(w.during)}, after {w.after}"
                for label, windows in outcomes.items()
                for w in windows
                if not _as_expected(w, FAILSAFE_EXPECT[label])
            ]
            assert missed == [], f"seed {seed}: not as the design says: {missed}; replay: {replay}"
        if not failsafe or "failsafe-redis-holder" in kinds:
            # Faults that stop the holder (a kill, a partition from Redis) handed the exchange over.
            assert len({a.epoch for a in actions if a.accepted}) >= 2
    finally:
        stack.down()
    assert not [ns for ns in namespaces() if ns.startswith(lab.name)]
    home = stack.info.get("postgres_home")
    assert not (isinstance(home, str) and Path(home).exists()), f"PostgreSQL's data left in {home}"
