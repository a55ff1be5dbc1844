"""The lab's network on real namespaces (root only; skipped with the reason otherwise): hosts reach
the infrastructure namespace's service addresses, a partition cuts exactly what it names and heals,
and tear-down — run twice — leaves no namespace, interface or process behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.lab.netns import IFNAME_MAX, SERVICES, Lab, _ip, namespaces, pids_in, reap_stale, root_reason

REASON = root_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

PORT = 7701
# A TCP server that answers each connection with one line: stands in for a service on its address.
SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'hi\\n'); c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "try:\n"
    "    c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
    "    print(c.recv(16).decode().strip())\n"
    "except OSError as e:\n"
    "    print('cut', type(e).__name__)\n"
)


def _reach(lab: Lab, i: int, service: str, timeout: float = 1.0) -> str:
    argv = lab.exec_argv(
        lab.host(i), [sys.executable, "-c", CLIENT, SERVICES[service], str(PORT), str(timeout)]
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


def _until_reached(lab: Lab, i: int, service: str) -> None:
    deadline = time.monotonic() + 30
    while _reach(lab, i, service) != "hi":
        assert time.monotonic() < deadline, f"host {i} never reached {service}"
        time.sleep(0.1)


def test_hosts_partitions_and_a_clean_tear_down() -> None:
    lab = Lab.for_run(hosts=3)
    server: subprocess.Popen[bytes] | None = None
    try:
        lab.up()
        lab.up()  # idempotent: a second set-up replaces the first
        assert set(lab.all_namespaces()) <= set(namespaces())
        server = subprocess.Popen(lab.exec_argv(lab.infra, [sys.executable, "-c", SERVER, str(PORT)]))
        for i in range(1, 4):
            _until_reached(lab, i, "redis")
            assert _reach(lab, i, "temporal") == "hi"
        # Host 1 from Redis, both ways: Redis is cut, Temporal is not; the other hosts see both.
        lab.partition(1, "redis")
        assert _reach(lab, 1, "redis").startswith("cut")
        assert _reach(lab, 1, "temporal") == "hi"
        assert _reach(lab, 2, "redis") == "hi"
        lab.heal(1, "redis")
        _until_reached(lab, 1, "redis")
        # One way, the service's answers dropped: the host's SYN arrives, nothing comes back.
        lab.partition(2, "temporal", direction="in")
        assert _reach(lab, 2, "temporal").startswith("cut")
        assert _reach(lab, 2, "redis") == "hi"
        lab.heal(2, "temporal")
        _until_reached(lab, 2, "temporal")
        assert pids_in(lab.infra)  # the server runs in the lab, so tear-down has a process to end
    finally:
        lab.down()
        lab.down()  # idempotent too
        if server is not None:
            server.wait(10)
    assert not [ns for ns in namespaces() if ns.startswith(lab.name)]
    assert server is not None and server.returncode is not None
    # Nothing leaked into the machine's own namespace (every lab interface lived in a lab one).
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert not [name for name in names if name.endswith(lab.tag)]


def test_a_dead_runs_namespaces_are_reaped_and_a_live_ones_kept() -> None:
    """Two runs on one machine: set-up removes the namespaces of a run whose owner pid is dead (it
    crashed), with the process still running in them, and leaves a live run's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    crashed = Lab(name=f"plab-{dead.pid}-dead", hosts=1)
    live = Lab.for_run(hosts=1)
    mine = Lab.for_run(hosts=1)
    orphan: subprocess.Popen[bytes] | None = None
    try:
        live.up()
        crashed.up()  # as the crashed run left it: a process still running in its namespace
        orphan = subprocess.Popen(crashed.exec_argv(crashed.host(1), ["sleep", "600"]))
        assert set(crashed.all_namespaces()) | set(live.all_namespaces()) <= set(namespaces())
        assert all(len(live.peer(i)) <= IFNAME_MAX for i in range(1, 10))
        mine.up()  # the next run's set-up reaps the dead run's namespaces
        assert crashed.name not in reap_stale()  # nothing of it left to reap: idempotent
        assert not [ns for ns in namespaces() if ns.startswith(crashed.name + "-")]
        assert set(live.all_namespaces()) <= set(namespaces())
        assert orphan.wait(10) is not None  # the crashed run's process ended with its namespace
        # The live run's own link is untouched by the other run's set-up.
        assert live.peer(1) in _ip("link", ns=live.infra).stdout
    finally:
        for lab in (crashed, live, mine):
            lab.down()
    assert not [ns for ns in namespaces() if ns.startswith((crashed.name, live.name, mine.name))]
