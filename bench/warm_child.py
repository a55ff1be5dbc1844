"""The connector the warm-failover benchmark runs: a long warm-up, then it acts; it notes when.

    python bench/warm_child.py --warmup 30      (BENCH_GAP_FILE=path in its environment)

It "backfills" for ``--warmup`` seconds, then prints ``READY``. Started with ``PERSEUS_ROLE=active`` it
acts from then on; as a warm standby it waits for ``ACTIVATE <epoch>`` on stdin, answers ``ACTIVE``
and acts; ``DEACTIVATE`` makes it wait again; SIGTERM ends it. Each start and end of acting is one
line ``active|inactive <pid> <epoch> <CLOCK_MONOTONIC>`` in ``BENCH_GAP_FILE`` — the benchmark's
"no connector active" gap is read from those lines (one clock for every process of the machine). A
child killed with its worker (SIGKILL) writes nothing: the benchmark notes the kill itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

GAP_FILE = os.environ.get("BENCH_GAP_FILE", "")
lock = threading.Lock()
acting: list[str] = []  # the epoch it acts under, while it acts


def note(kind: str, epoch: str) -> None:
    if GAP_FILE:
        with lock, open(GAP_FILE, "a") as out:
            out.write(f"{kind} {os.getpid()} {epoch} {time.monotonic():.6f}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args()
    role = os.environ.get("PERSEUS_ROLE", "active")

    def on_term(signum: int, frame: object) -> None:
        if acting:
            note("inactive", acting.pop())
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(args.warmup)  # the backfill
    print("READY", flush=True)
    if role == "active":
        acting.append(os.environ.get("PERSEUS_EPOCH", "0"))
        note("active", acting[-1])
    for line in sys.stdin:  # /dev/null for a cold active child: EOF at once
        words = line.split()
        if words[:1] == ["ACTIVATE"] and len(words) == 2 and not acting:
            acting.append(words[1])
            note("active", words[1])  # acting from here (a real one starts its fenced writes)
            print("ACTIVE", flush=True)
        elif words == ["DEACTIVATE"] and acting:
            note("inactive", acting.pop())
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
