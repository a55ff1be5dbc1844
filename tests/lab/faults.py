"""Faults by name, drawn by a seeded schedule so that any run replays (same seed, same faults in the
same order with the same durations). Each fault injects, holds, heals — the durations in renew
intervals I, so the same schedule means the same thing at any interval."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.lab.stack import ROOT, LabStack

#: Every kind the CI schedule runs once. "standby" faults hit a standby; the others the active host.
KINDS = (
    "partition-redis",
    "partition-redis-one-way",
    "redis-replies-lost",
    "redis-replies-delayed",
    "partition-temporal",
    "partition-both",
    "partition-standby",
    "delay-past-renewal",
    "pause",
    "kill",
    "clock-drift",
    "clock-step",
)

#: The Redis HA faults (tests/lab/redis_faults.py), by the infrastructure profile that has them; every
#: profile also runs every kind of :data:`KINDS`.
PROFILE_KINDS = {
    "single": KINDS,
    "sentinel": (*KINDS, "sentinel-failover", "failover-lagging"),
    "cluster": (*KINDS, "cluster-failover"),
}
#: The failsafe's kinds (docs/design.md, "Failsafe: holding through a Redis outage"), run against an
#: exchange registered with the failsafe on (``perseus register --failsafe``), so in a schedule of
#: their own (tests/lab/test_lab.py; `make lab`, `make lab-failsafe`, never `make test`): Redis cut
#: from every host; from the holder only; from one standby only; and cut from every host while it
#: restarts without its data, then back empty. Redis is cut both ways, Temporal stays up (it carries
#: the promises).
FAILSAFE_KINDS = (
    "failsafe-redis-all",
    "failsafe-redis-holder",
    "failsafe-redis-standby",
    "failsafe-redis-empty",
)
#: By profile. Back empty on the single server only: there it is one process restarted without its
#: data; a Sentinel group's or a Cluster's nodes restarted empty is a failover fault of its own.
FAILSAFE_PROFILE_KINDS = {
    "single": FAILSAFE_KINDS,
    "sentinel": FAILSAFE_KINDS[:3],
    "cluster": FAILSAFE_KINDS[:3],
}
#: What the sink must see of each failsafe kind (tests/lab/judge.Window): the holder before the
#: fault the only one acting through it, same host and epoch (``kept``), or another host acting
#: under a newer epoch at the end (``moved``).
FAILSAFE_EXPECT = {
    "failsafe-redis-all": "kept",
    "failsafe-redis-holder": "moved",
    "failsafe-redis-standby": "kept",
    "failsafe-redis-empty": "kept",
}
ALL_KINDS = (*KINDS, "sentinel-failover", "failover-lagging", "cluster-failover", *FAILSAFE_KINDS)

#: The rates a drifting clock runs at (1 % and 10 % fast or slow), one per round in turn, so four
#: rounds run each once; a step is +30 s or -30 s, alternately.
DRIFT_RATES = (1.10, 0.90, 1.01, 0.99)
STEP_S = (30.0, -30.0)
#: How late Redis's replies reach the holder under ``redis-replies-delayed``, in renew intervals,
#: drawn by the seed: always past a renewal's bound (I/2), and from under to past the renew deadline
#: (2 I), so that some late replies arrive while the holder would still act and some after.
REPLY_DELAY_I = (1.5, 3.0)

#: The liveness bound each kind is held to in the report (seconds at I = 1 s; docs/design.md, "At
#: least one"): a crash's B for faults that stop the holder; for those that must change nothing, a
#: few of the connector's 0.1 s action periods (a loaded machine's scheduling, not a failover).
BOUND_S = {
    "partition-redis": 4.9,
    # Redis's answers dropped by route: the holder stops at its deadline, while its requests that
    # still get through (TCP retransmits) keep its key fresh for as long as the connection lives —
    # the known liveness bug (docs/design.md, "The lab"); measured 6.9 s at a hold of 7.6 I. Bound: 8 I + B.
    "partition-redis-one-way": 12.9,
    # Requests reach Redis, replies never come back, TCP stays up: the holder stops at its deadline;
    # should its retried reclaim keep rewriting its key (the known liveness bug), no standby could
    # take over until the fault heals (measured 1.1-2.3 s: it did not). Bound: 8 I + B.
    "redis-replies-lost": 12.9,
    # Requests reach Redis at once, replies come 1.5-3 I late: no renewal is answered within its
    # bound, so the holder stops at its deadline and renews no more; its key ages from its last
    # renewal as after a crash, and a standby claims over. B.
    "redis-replies-delayed": 4.9,
    "partition-temporal": 0.5,
    "partition-both": 4.9,
    "partition-standby": 0.5,
    "delay-past-renewal": 4.9,
    "pause": 4.9,
    "kill": 4.9,
    # A wrong wall clock must change nothing: Perseus decides with monotonic and Redis-side time.
    "clock-drift": 0.5,
    "clock-step": 0.5,
    # With one replica and wait_replicas=1 (the sentinel profile) nothing acknowledges a claim until
    # the old primary follows the new one: Sentinel reconfigures it at its next INFO of it (every
    # 10 s), then a full resync. Bound: failover-timeout 4 s + 10 s + 3 s resync + B 4.9 s.
    "sentinel-failover": 22.0,
    # The same, after the fault's own hold (up to 8 I: the replica cut for half, the primary frozen
    # for the other half) and Sentinel's down-after (1 s).
    "failover-lagging": 31.0,
    # CLUSTER FAILOVER is coordinated: the old master follows its replica at once. B.
    "cluster-failover": 4.9,
    # Redis gone for every host: the holder acts on on its standbys' promises, so nothing changes.
    "failsafe-redis-all": 0.5,
    # Redis gone for the holder only: its standbys refuse to promise, it stops at its deadline and a
    # standby claims over, as without the failsafe. B.
    "failsafe-redis-holder": 4.9,
    "failsafe-redis-standby": 0.5,
    # Back empty: the holder writes its key again, same epoch (invariant 7); nothing changes.
    "failsafe-redis-empty": 0.5,
}


@dataclass(frozen=True)
class Fault:
    kind: str
    #: Host number it hits (1-based).
    host: int
    #: How long it is held, in renew intervals.
    hold_i: float
    #: The kind's parameter: a drift's rate, a step in seconds, how many intervals late replies
    #: come (``redis-replies-delayed``); 0 for the other kinds.
    arg: float = 0.0

    @property
    def label(self) -> str:
        """The kind, with its parameter where it has one (the report's rows)."""
        if self.kind == "clock-drift":
            return f"clock-drift x{self.arg:.2f}"
        if self.kind == "clock-step":
            return f"clock-step {self.arg:+.0f}s"
        return self.kind


@dataclass
class Injected:
    fault: Fault
    start: float
    healed: float


def schedule(seed: int, rounds: int = 1, kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    """``rounds`` of every kind, each round shuffled; hosts and hold times drawn from ``seed``.
    The target host number is resolved when the fault runs (the active one, or a standby)."""
    rng = random.Random(seed)
    out: list[Fault] = []
    for r in range(rounds):
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            arg = {"clock-drift": DRIFT_RATES[(seed + r) % 4], "clock-step": STEP_S[(seed + r) % 2]}
            hold = round(rng.uniform(4.0, 8.0), 2)
            host = rng.randint(1, 3)
            if kind == "redis-replies-delayed":
                arg[kind] = round(rng.uniform(*REPLY_DELAY_I), 2)
            out.append(Fault(kind, host=host, hold_i=hold, arg=arg.get(kind, 0.0)))
    return out


def inject(stack: LabStack, fault: Fault, active: int, standby: int) -> Injected:
    """Run one fault against the host acting now (``active``) or a standby, and heal it."""
    lab, i = stack.lab, active
    hold = fault.hold_i * stack.interval
    start = time.monotonic()
    heal: Callable[[], None]
    if fault.kind == "partition-redis":
        lab.partition(i, "redis")
        heal = lambda: lab.heal(i, "redis")  # noqa: E731
    elif fault.kind == "partition-redis-one-way":
        lab.partition(i, "redis", direction="in")
        heal = lambda: lab.heal(i, "redis")  # noqa: E731
    elif fault.kind == "redis-replies-lost":
        control = stack.link_control(i)
        control.write_text(json.dumps({"drop_replies": stack.redis_ports}))

        def heal() -> None:
            control.write_text("{}")

    elif fault.kind == "redis-replies-delayed":
        # Redis's replies to the active host wait fault.arg intervals on its relay; its requests
        # (and everything else on its link) pass at once.
        control = stack.link_control(i)
        late_ms = 1000 * fault.arg * stack.interval
        control.write_text(json.dumps({"delay_replies": stack.redis_ports, "reply_delay_ms": late_ms}))

        def heal() -> None:
            control.write_text("{}")

    elif fault.kind == "partition-temporal":
        lab.partition(i, "temporal")
        heal = lambda: lab.heal(i, "temporal")  # noqa: E731
    elif fault.kind == "partition-both":
        lab.partition(i, "redis")
        lab.partition(i, "temporal")

        def heal() -> None:
            lab.heal(i, "redis")
            lab.heal(i, "temporal")

    elif fault.kind == "partition-standby":
        i = standby
        lab.partition(i, "redis")
        lab.partition(i, "temporal")

        def heal() -> None:
            lab.heal(i, "redis")
            lab.heal(i, "temporal")

    elif fault.kind == "delay-past-renewal":
        # Every chunk on the host's link waits 2.5 I ± 0.2 I: longer than a renewal's bound.
        control = stack.link_control(i)
        control.write_text(json.dumps({"delay_ms": 2500 * stack.interval, "jitter_ms": 200 * stack.interval}))

        def heal() -> None:
            control.write_text("{}")

    elif fault.kind == "pause":
        worker = stack.workers[i]
        worker.send_signal(signal.SIGSTOP)
        heal = lambda: worker.send_signal(signal.SIGCONT)  # noqa: E731
    elif fault.kind == "kill":
        stack.workers[i].kill()
        stack.workers[i].wait(10)
        heal = lambda: stack.start_worker(i)  # noqa: E731
    elif fault.kind == "clock-drift":
        # The active host's wall clock runs fast or slow from now on (no step: FAKETIME_XRESET);
        # healed as NTP would: the rate back to 1, then the clock stepped back to true time.
        clock = stack.clock_file(i)
        clock.write_text(f"+0 x{fault.arg}\n")

        def heal() -> None:
            clock.write_text("+0 x1\n")
            time.sleep(0.2)  # read at the worker's next clock call; then the offset goes
            clock.write_text("+0\n")

    elif fault.kind == "clock-step":
        clock = stack.clock_file(i)
        clock.write_text(f"{fault.arg:+.0f}\n")

        def heal() -> None:
            clock.write_text("+0\n")

    elif fault.kind in ("failsafe-redis-all", "failsafe-redis-empty"):
        cut = range(1, lab.hosts + 1)
        for h in cut:
            lab.partition(h, "redis")
        if fault.kind == "failsafe-redis-empty":
            # Restarted without its data half-way through, while no host reaches it.
            time.sleep(hold / 2)
            stack.restart_redis_empty()
            hold -= time.monotonic() - start

        def heal() -> None:
            for h in cut:
                lab.heal(h, "redis")

    elif fault.kind in ("failsafe-redis-holder", "failsafe-redis-standby"):
        i = standby if fault.kind == "failsafe-redis-standby" else active
        lab.partition(i, "redis")
        heal = lambda: lab.heal(i, "redis")  # noqa: E731
    elif fault.kind in ("sentinel-failover", "failover-lagging", "cluster-failover"):
        # Run where the servers are; it holds (a lagging replica's pause) and settles by itself.
        argv = [sys.executable, "-m", "tests.lab.redis_faults", fault.kind, "--info", str(stack.info_path)]
        done = subprocess.run(
            lab.exec_argv(lab.infra, [*argv, "--hold", str(hold)]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"{fault.kind}: {done.stdout}{done.stderr[-1500:]}"
        print(done.stdout.strip())
        return Injected(Fault(fault.kind, 0, fault.hold_i, fault.arg), start, time.monotonic())
    else:
        raise ValueError(f"unknown fault {fault.kind!r}: one of {', '.join(ALL_KINDS)}")
    time.sleep(max(hold, 0.0))
    heal()
    return Injected(Fault(fault.kind, i, fault.hold_i, fault.arg), start, time.monotonic())
