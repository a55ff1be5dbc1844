"""A whole lab: the namespaces (tests/lab/netns.py), the servers in the infrastructure namespace
(tests/lab/infra.py), and per host a relay to them plus a ``perseus worker`` — every process
inside its namespace, so the lab's tear-down ends them all."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.infra import RESTARTED
from tests.lab.judge import read_log
from tests.lab.netns import SERVICES, Lab

ROOT = Path(__file__).resolve().parents[2]
PERSEUS = str(Path(sys.executable).parent / "perseus")
CONNECTOR = str(ROOT / "tests" / "lab" / "connector.py")


def faketime_library() -> Path:
    """libfaketime's preload library as the pinned ``libfaketime`` wheel ships it (never built here)."""
    spec = importlib.util.find_spec("libfaketime")
    assert spec is not None and spec.origin is not None, "libfaketime is a dev dependency: make install"
    return Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"


@dataclass
class LabStack:
    lab: Lab
    base: Path
    interval: float = 1.0
    #: The infrastructure's Redis (tests/lab/infra.py): single, sentinel or cluster.
    profile: str = "single"
    #: Every registration with the failsafe on (``perseus register --failsafe``): an exchange's
    #: instances have it all or none.
    failsafe: bool = False
    info: dict[str, object] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The infrastructure process (tests/lab/infra.py), the servers' parent.
    infra: subprocess.Popen[bytes] | None = None
    #: Each host's current worker process (by host number).
    workers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(
        self, ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - the child holds it
        try:
            proc = subprocess.Popen(
                self.lab.exec_argv(ns, argv), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise AssertionError(f"{log.name} exited: {log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.1)
        raise AssertionError(
            f"no {text!r} in {log} within {timeout:.0f}s: {log.read_text(errors='replace')[-1500:]}"
        )

    @property
    def ports(self) -> dict[str, int]:
        return self.info["ports"]  # type: ignore[return-value]

    def env(self, host: str) -> dict[str, str]:
        """A worker's or the CLI's environment: every server on the namespace's loopback."""
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEUS_", "TEMPORAL_"))}
        env.update(
            TEMPORAL_ADDRESS=f"127.0.0.1:{self.ports['temporal']}",
            PERSEUS_REDIS_URL=str(self.info["redis_url"]),
            PERSEUS_DATABASE_URL=str(self.info["database_url"]),
            PERSEUS_HEARTBEAT_INTERVAL=str(self.interval),
            PERSEUS_IP_SERVICES="[]",
            PERSEUS_DATA_DIR=str(self.base / host),
            PERSEUS_PAYLOAD_PLAINTEXT="1",
        )
        return env

    @property
    def info_path(self) -> Path:
        """The infrastructure's ports, URLs and Redis pids (tests/lab/infra.py writes it)."""
        return self.base / "infra.json"

    def up(self) -> None:
        self.lab.up()
        self.base.mkdir(parents=True, exist_ok=True)
        out = self.info_path
        infra = self._spawn(
            self.lab.infra,
            [
                sys.executable,
                "-m",
                "tests.lab.infra",
                "--dir",
                str(self.base / "infra"),
                "--out",
                str(out),
                "--profile",
                self.profile,
            ],
            self.base / "infra.log",
        )
        self._wait_line(self.base / "infra.log", "infra ready", infra)
        self.infra = infra
        self.info = json.loads(out.read_text())
        for i in range(1, self.lab.hosts + 1):
            ns = self.lab.host(i)
            # Perseus' own servers through the shaped link; the exchange (the sink) on a path of its
            # own, unshaped, so the judge's link delay stays the wire's and not a fault's.
            relays = [
                f"127.0.0.1:{port}={SERVICES[name]}:{port}"
                for name, port in self.ports.items()
                if name != "sink"
            ]
            relays += [f"127.0.0.1:{port}={SERVICES['redis']}:{port}" for port in self.redis_ports]
            relay = self._spawn(
                ns,
                [sys.executable, "-m", "tests.lab.proxy", *relays, "--control", str(self.link_control(i))],
                self.base / f"{ns}-relay.log",
            )
            self._wait_line(self.base / f"{ns}-relay.log", "proxy ready", relay)
            sink = self.ports["sink"]
            exchange_path = self._spawn(
                ns,
                [sys.executable, "-m", "tests.lab.proxy", f"127.0.0.1:{sink}={SERVICES['sink']}:{sink}"],
                self.base / f"{ns}-exchange.log",
            )
            self._wait_line(self.base / f"{ns}-exchange.log", "proxy ready", exchange_path)
            self.start_worker(i)

    @property
    def redis_ports(self) -> list[int]:
        """Every Redis port (data nodes, Sentinels): each relayed at the Redis address."""
        return self.info["redis_ports"]  # type: ignore[return-value]

    def start_worker(self, i: int) -> None:
        """Host ``i``'s ``perseus worker`` (again, after a kill), ready to poll."""
        ns = self.lab.host(i)
        log = self.base / f"{ns}-worker-{len(self.procs)}.log"
        env = {**self.env(ns), **self.clock_env(i)}
        worker = self._spawn(ns, [PERSEUS, "worker", "--host", ns], log, env)
        self._wait_line(log, "worker ready", worker)
        self.workers[i] = worker

    def clock_file(self, i: int) -> Path:
        """The file that sets host ``i``'s wall clock (libfaketime's spec; tests/lab/faults.py)."""
        return self.base / f"clock-{i}.txt"

    def clock_env(self, i: int) -> dict[str, str]:
        """Host ``i``'s worker (and its connector, which inherits it) on a wall clock the lab can make
        drift or step while it runs: libfaketime preloaded, reading its spec from :meth:`clock_file`
        at every call. Only the wall clock: monotonic faking hangs asyncio (platform notes §5), and
        Perseus' deadlines are monotonic or Redis-side. ``XRESET``: a new rate continues from the
        current faked time, so changing the rate does not step the clock."""
        clock = self.clock_file(i)
        if not clock.exists():
            clock.write_text("+0\n")
        return {
            "LD_PRELOAD": str(faketime_library()),
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_XRESET": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        }

    def link_control(self, i: int) -> Path:
        """The file that shapes host ``i``'s link (delay and jitter: tests/lab/proxy.py)."""
        return self.base / f"link-{i}.json"

    def perseus(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The CLI, run in the infrastructure namespace (where the servers are)."""
        return subprocess.run(
            self.lab.exec_argv(self.lab.infra, [PERSEUS, *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env("cli"),
            cwd=ROOT,
        )

    def register(self, exchange: str, i: int, *, standby: bool) -> None:
        ns = self.lab.host(i)
        command = f"{sys.executable} {CONNECTOR} --sink 127.0.0.1:{self.ports['sink']} --host {ns}"
        args = ["register", exchange, "--host", ns, "--exec", command, "--ready-line", "READY"]
        args += ["--standby", "--priority", str(10 - i)] if standby else ["--start"]
        args += ["--failsafe"] if self.failsafe else []
        done = self.perseus(*args)
        assert done.returncode == 0, done.stdout + done.stderr

    def board(self, exchange: str) -> tuple[str | None, set[str]]:
        """The host holding ``exchange`` while active (None: nobody) and its live standbys' hosts."""
        done = self.perseus("status", exchange, "--json")
        if done.returncode != 0:
            return None, set()
        doc = json.loads(done.stdout)
        doc = doc[0] if isinstance(doc, list) else doc
        status = doc.get("status") or {}
        active = status.get("hostname") if status.get("connectionState") == "active" else None
        return active, {s["host"] for s in doc.get("standbys", [])}

    def heal(self, exchange: str, timeout: float = 180, grace: float = 0.0) -> None:
        """What a supervisor would do after a fault: every dead worker restarted, and every host
        that neither holds the exchange nor stands by (its instance lost its claim and went idle,
        or ended) shut down and registered again as a standby; until one holder is active.
        ``grace``: a host is shut down only once it has been missing from the board that long (a
        standby's record comes back within an interval of Redis returning, or coming back empty)."""
        deadline = time.monotonic() + timeout
        missing_since: dict[int, float] = {}
        while time.monotonic() < deadline:
            for i, worker in list(self.workers.items()):
                if worker.poll() is not None:
                    self.start_worker(i)
            active, standbys = self.board(exchange)
            missing = [i for i in range(1, self.lab.hosts + 1) if self.lab.host(i) not in {active, *standbys}]
            now = time.monotonic()
            missing_since = {i: missing_since.get(i, now) for i in missing}
            for i in missing:
                if now - missing_since[i] < grace:
                    continue
                try:
                    self.register(exchange, i, standby=True)
                except AssertionError:  # still running (idle): end it first, register next turn
                    # Unless it became the holder since the board was read (a promotion in
                    # flight): a supervisor must not shut down the connector that just took over.
                    active_now, _ = self.board(exchange)
                    if active_now != self.lab.host(i) and self.lab.host(i) not in self.acted_within(1.0):
                        self.perseus("shutdown", exchange, "--host", self.lab.host(i))
            if active is not None and not missing:
                return
            time.sleep(0.5)
        raise AssertionError(f"the lab did not heal within {timeout:.0f}s: {self.board(exchange)}")

    def restart_redis_empty(self, timeout: float = 60) -> None:
        """The single Redis restarted without its data (SIGKILL, its files removed, started again on
        its port): the infrastructure process does it on SIGUSR1 (tests/lab/infra.py), being the
        servers' parent; returns once it answers again."""
        import os
        import signal

        log = self.base / "infra.log"
        said = log.read_text(errors="replace").count(RESTARTED)
        os.kill(int(str(self.info["infra_pid"])), signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count(RESTARTED) == said:
            assert time.monotonic() < deadline, f"Redis not restarted within {timeout:.0f}s"
            time.sleep(0.05)

    def acted_within(self, seconds: float) -> set[str]:
        """The hosts whose connectors the sink accepted an action from in the last ``seconds``."""
        if not self.sink_log.exists():
            return set()
        since = time.monotonic() - seconds
        return {a.host for a in read_log(self.sink_log) if a.accepted and a.at >= since}

    def _stop_infra(self, timeout: float = 30) -> None:
        """Let the infrastructure process stop its servers itself before the namespaces are swept
        (which SIGKILLs whatever runs in them): as root, its PostgreSQL keeps its data under
        /var/lib/perseus, and only a server stopped through its handle takes that folder with it."""
        infra = self.infra
        if infra is None or infra.poll() is not None:
            return
        infra.terminate()
        try:
            infra.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # the sweep below kills it; the folder stays, as it would have before

    @property
    def sink_log(self) -> Path:
        return Path(str(self.info["sink_log"]))

    def down(self) -> None:
        self._stop_infra()
        self.lab.down()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
