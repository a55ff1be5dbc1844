"""Faults by name, drawn by a seeded schedule so that any run replays (same seed, same faults in the
same order with the same durations). Each fault injects, holds, heals — the durations in renew
intervals I, so the same schedule means the same thing at any interval."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.lab.stack import LabStack

#: Every kind the CI schedule runs once. "standby" faults hit a standby; the others the active host.
KINDS = (
    "partition-redis",
    "partition-redis-one-way",
    "partition-temporal",
    "partition-both",
    "partition-standby",
    "delay-past-renewal",
    "pause",
    "kill",
)

#: The liveness bound each kind is held to in the report (seconds at I = 1 s; docs/design.md, "At
#: least one"): a crash's B for faults that stop the holder; for those that must change nothing, a
#: few of the connector's 0.1 s action periods (a loaded machine's scheduling, not a failover).
BOUND_S = {
    "partition-redis": 4.9,
    "partition-redis-one-way": 4.9,
    "partition-temporal": 0.5,
    "partition-both": 4.9,
    "partition-standby": 0.5,
    "delay-past-renewal": 4.9,
    "pause": 4.9,
    "kill": 4.9,
}


@dataclass(frozen=True)
class Fault:
    kind: str
    #: Host number it hits (1-based).
    host: int
    #: How long it is held, in renew intervals.
    hold_i: float


@dataclass
class Injected:
    fault: Fault
    start: float
    healed: float


def schedule(seed: int, rounds: int = 1) -> list[Fault]:
    """``rounds`` of every kind, each round shuffled; hosts and hold times drawn from ``seed``.
    The target host number is resolved when the fault runs (the active one, or a standby)."""
    rng = random.Random(seed)
    out: list[Fault] = []
    for _ in range(rounds):
        kinds = list(KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            out.append(Fault(kind, host=rng.randint(1, 3), hold_i=round(rng.uniform(4.0, 8.0), 2)))
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
    else:
        raise ValueError(f"unknown fault {fault.kind!r}: one of {', '.join(KINDS)}")
    time.sleep(hold)
    heal()
    return Injected(Fault(fault.kind, i, fault.hold_i), start, time.monotonic())
