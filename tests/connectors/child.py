"""A stand-in for a real connector, run by the process connector in tests.

    python child.py [--ready-after S] [--http PORT] [--ignore-term] [--exit-after S] [--code N]
                    [--crash-once FILE] [--journal FILE] [--lock FILE] [--spam N] [--spawn-grandchild]
                    [--say LINE]... [--hang-health-after S] [--commands] [--active-delay S]

It prints a few lines, then ``READY`` after ``--ready-after`` seconds (never if negative); with
``--http`` it serves ``GET /health`` (503 until ready, then 200). ``--journal`` appends one JSON line
per event (start with its PERSEUS_* environment, term). ``--lock`` takes an exclusive flock on a
file shared by every child of one exchange: if another child still holds it, two connectors run at
once, which the child records as ``double`` before it exits — the tests' proof of mutual exclusion.

The line protocol (DESIGN §2.9): ``--say`` prints a line once ready (``PERSEUS symbols=3``...);
``--hang-health-after`` makes ``/health`` stop answering (hang) that many seconds after start;
``--commands`` reads ``ACTIVATE <epoch>`` / ``DEACTIVATE`` from stdin (journalled as ``activate`` /
``deactivate``) and answers ``ACTIVE`` after ``--active-delay`` seconds (never if negative).
"""

from __future__ import annotations

import argparse
import fcntl
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--http", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--exit-after", type=float, default=-1.0)
    parser.add_argument("--code", type=int, default=3)
    parser.add_argument("--crash-once", type=Path)
    parser.add_argument("--journal", type=Path)
    parser.add_argument("--lock", type=Path)
    parser.add_argument("--spam", type=int, default=0)
    parser.add_argument("--spawn-grandchild", action="store_true")
    parser.add_argument("--say", action="append", default=[])
    parser.add_argument("--hang-health-after", type=float, default=-1.0)
    parser.add_argument("--commands", action="store_true")
    parser.add_argument("--active-delay", type=float, default=0.0)
    args = parser.parse_args()

    def journal(event: str, **fields: object) -> None:
        if args.journal:
            line = {"event": event, "pid": os.getpid(), "t": time.monotonic(), **fields}
            with args.journal.open("a") as out:
                out.write(json.dumps(line) + "\n")

    perseus_env = {k: v for k, v in os.environ.items() if k.startswith("PERSEUS_")}
    lock_file = None
    if args.lock:
        lock_file = args.lock.open("a")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            journal("double", env=perseus_env)
            print("another connector for this exchange is running!", flush=True)
            sys.exit(4)
    journal("start", env=perseus_env)

    def on_term(signum: int, frame: object) -> None:
        journal("term")
        print("got SIGTERM" + (", ignoring it" if args.ignore_term else ", bye"), flush=True)
        if not args.ignore_term:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(
        f"child {os.getpid()} for {os.environ.get('PERSEUS_EXCHANGE')} "
        f"epoch {os.environ.get('PERSEUS_EPOCH')}",
        flush=True,
    )
    if args.spawn_grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        journal("grandchild", grandchild=grandchild.pid)
    for n in range(args.spam):
        print(f"spam line {n:06d} " + "x" * 80, flush=True)
    if args.crash_once is not None:
        if args.crash_once.exists():
            args.exit_after = -1.0
        else:
            args.crash_once.write_text("crashed once")

    ready = threading.Event()
    began = time.monotonic()
    if args.http:

        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if args.hang_health_after >= 0 and time.monotonic() - began >= args.hang_health_after:
                    journal("health_hangs")
                    time.sleep(3600)  # stops answering: the probe times out
                self.send_response(200 if ready.is_set() else 503)
                self.end_headers()

            def log_message(self, format: str, *a: object) -> None:  # noqa: A002
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.http), Health)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["ACTIVATE"]:
                journal("activate", epoch=words[1] if len(words) > 1 else None)
                if args.active_delay >= 0:
                    time.sleep(args.active_delay)
                    print("ACTIVE", flush=True)
            elif words == ["DEACTIVATE"]:
                journal("deactivate")
                print("standby again", flush=True)

    if args.commands:
        threading.Thread(target=commands, daemon=True).start()

    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if args.ready_after >= 0 and elapsed >= args.ready_after and not ready.is_set():
            ready.set()
            print("connector READY to serve", flush=True)
            for line in args.say:
                print(line, flush=True)
        if args.exit_after >= 0 and elapsed >= args.exit_after:
            print(f"fatal: lost the exchange websocket, exiting with {args.code}", flush=True)
            sys.stderr.write("traceback: boom\n")
            sys.stderr.flush()
            sys.exit(args.code)
        time.sleep(0.02)


if __name__ == "__main__":
    main()
