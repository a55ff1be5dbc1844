"""The lab's network: connector hosts in network namespaces of their own, and an infrastructure
namespace, joined by veth pairs on a bridge; partitions by routes. Root only.

Layout, ``<lab>`` being one run's name (:meth:`Lab.for_run`: ``plab-<owner pid>-<4 hex>``, so two
runs on one machine never share, nor tear down, each other's namespaces)::

    <lab>-infra   bridge br0 10.77.0.1/24, plus one service address per server:
                  .2 Redis, .3 Temporal, .4 PostgreSQL, .5 the sink (the judge's exchange)
    <lab>-h<i>    eth0 10.77.0.(10+i)/24, its veth peer ``h<i>-<4 hex>`` on the infra bridge

Set-up and tear-down are idempotent for one name. A run that crashed leaves namespaces whose owner
pid is dead: :func:`reap_stale` (called by every set-up) removes those, and only those. Interface
names stay within the kernel's 15 characters (IFNAMSIZ - 1) whatever the pid: the tag in them is the
4 hex digits, not the pid.

Everything lives inside the lab's namespaces (nothing in the machine's own namespace), so deleting
the namespaces removes every interface; processes started in them are killed first (a namespace
"persists until it has no more users", ip-netns(8)). The machine's ``ip`` (iproute2) does the work:
no container engine, nothing downloaded. This kernel has no netem: delay, jitter and loss are the
job of a userspace proxy on the link, not of this module.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass

SUBNET = "10.77.0"
SERVICES = {
    "redis": f"{SUBNET}.2",
    "temporal": f"{SUBNET}.3",
    "postgres": f"{SUBNET}.4",
    "sink": f"{SUBNET}.5",
}


#: Every lab namespace's name starts so; a run's own name is ``plab-<pid>-<tag>`` (:meth:`Lab.for_run`).
PREFIX = "plab-"
_RUN_NAME = re.compile(r"^plab-(\d+)-([0-9a-f]{4})-")
#: The kernel's interface name limit (IFNAMSIZ is 16 with the terminating NUL).
IFNAME_MAX = 15


def root_reason() -> str | None:
    """Why the lab cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth pairs, routes); CI runs it as root"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "the lab needs iproute2's ip command"
    return None


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def namespaces() -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_stale() -> list[str]:
    """Remove every run's namespaces whose owner pid is dead (a crashed or killed earlier run), with
    the processes in them; never a live run's. The labs removed, by name."""
    stale = sorted(
        {m.group(0)[:-1] for ns in namespaces() if (m := _RUN_NAME.match(ns)) and not _alive(int(m.group(1)))}
    )
    for name in stale:
        Lab(name=name).down()
    return stale


@dataclass(frozen=True)
class Lab:
    """One lab's namespaces by name; :meth:`up` and :meth:`down` may each run any number of times."""

    name: str
    hosts: int = 3

    @classmethod
    def for_run(cls, hosts: int = 3) -> Lab:
        """A lab of its own for this process: ``plab-<pid>-<4 random hex>``."""
        return cls(name=f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}", hosts=hosts)

    @property
    def tag(self) -> str:
        """The short tag interface names carry (the name's last 4 characters)."""
        return self.name[-4:]

    def peer(self, i: int) -> str:
        """Host ``i``'s veth end on the infrastructure bridge."""
        name = f"h{i}-{self.tag}"
        assert len(name) <= IFNAME_MAX, name
        return name

    @property
    def infra(self) -> str:
        return f"{self.name}-infra"

    def host(self, i: int) -> str:
        return f"{self.name}-h{i}"

    def host_address(self, i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def all_namespaces(self) -> list[str]:
        return [self.infra, *(self.host(i) for i in range(1, self.hosts + 1))]

    def up(self) -> None:
        """Create the lab from whatever is there (its own leftovers, and every dead run's, removed first)."""
        reap_stale()
        self.down()
        try:
            _ip("netns", "add", self.infra)
            _ip("link", "set", "lo", "up", ns=self.infra)
            _ip("link", "add", "br0", "type", "bridge", ns=self.infra)
            _ip("addr", "add", f"{SUBNET}.1/24", "dev", "br0", ns=self.infra)
            for address in SERVICES.values():
                _ip("addr", "add", f"{address}/32", "dev", "br0", ns=self.infra)
            _ip("link", "set", "br0", "up", ns=self.infra)
            for i in range(1, self.hosts + 1):
                ns = self.host(i)
                _ip("netns", "add", ns)
                _ip("link", "set", "lo", "up", ns=ns)
                # Created inside the host's namespace, its peer moved straight into the infra one.
                peer = self.peer(i)
                _ip("link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", self.infra, ns=ns)
                _ip("addr", "add", f"{self.host_address(i)}/24", "dev", "eth0", ns=ns)
                _ip("link", "set", "eth0", "up", ns=ns)
                _ip("link", "set", peer, "master", "br0", ns=self.infra)
                _ip("link", "set", peer, "up", ns=self.infra)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Kill every process in the lab's namespaces, then delete them (their interfaces go too)."""
        present = [ns for ns in self.all_namespaces() if ns in namespaces()]
        # Any namespace of this lab beyond the host count asked now (an earlier, larger lab).
        present += [ns for ns in namespaces() if ns.startswith(f"{self.name}-") and ns not in present]
        for ns in present:
            for pid in pids_in(ns):
                with _gone():
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pids_in(ns) for ns in present) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ns in present:
            _ip("netns", "del", ns, check=False)

    # --- faults: partitions by routes -----------------------------------------------------------

    def partition(self, i: int, service: str, *, direction: str = "both") -> None:
        """Cut host ``i`` off from ``service`` ("redis", "temporal", "postgres", "sink").

        ``out``: the host's packets to the service are dropped (a route on the host's side);
        ``in``: the service's packets to the host are dropped (a policy rule on the infra side,
        by source address); ``both``: the two."""
        address = SERVICES[service]
        if direction in ("out", "both"):
            _ip("route", "replace", "blackhole", f"{address}/32", ns=self.host(i))
        if direction in ("in", "both"):
            rule = ("rule", "add", "from", address, "to", self.host_address(i), "blackhole")
            _ip(*rule, ns=self.infra, check=False)

    def heal(self, i: int, service: str) -> None:
        address = SERVICES[service]
        _ip("route", "del", "blackhole", f"{address}/32", ns=self.host(i), check=False)
        while (
            _ip(
                "rule", "del", "from", address, "to", self.host_address(i), ns=self.infra, check=False
            ).returncode
            == 0
        ):
            pass

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]


class _gone:
    """Suppress ProcessLookupError: a process that exited between listing and killing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return kind is ProcessLookupError
