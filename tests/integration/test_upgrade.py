"""The upgrade runbook (docs/deploy.md, "Upgrading Perseus") as a test: a fleet on the last release
(``RELEASES``), upgraded host by host to the working tree, then rolled back the same way.

The last release is built from its commit (``git archive``, no tags needed) and the working tree from
a copy, each into a venv of its own outside the checkout; every process of the fleet runs from one of
them. The fleet: three hosts whose workers also serve the shared queue (the README's topology, so
workflow tasks run on both releases while the upgrade is under way), three exchanges on two hosts
each — a process connector, a warm simulated one, a cold simulated one — on a private Temporal and
Redis. Throughout, the connector journal is held to: never two connectors of an exchange acting at
once (tests/chaos/invariants.py), no stretch without one longer than one planned handoff's bound,
and the process connector's children never overlap (their file lock). After each host: every
placement has its instance again, each exchange one active and one standby. At the end of the
upgrade every host runs the new release, every holder and standby says so, and every instance
workflow answers from it.

The working tree is installed as the next release: if its version is not above the last release's,
the copy's pyproject says the next patch version (what the release step would do), so that old and
new hosts can be told apart by version as an operator would.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus

from perseus import version as release
from perseus.devstack import services
from perseus.fleet.enrol import live_hosts
from perseus.keys import workflow_id
from perseus.models import ConnectorSpec
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import QUERY_SNAPSHOT, converter
from tests.chaos.invariants import Liveness, Recovery, Timing, Window, check, liveness_bound_s, load_journal
from tests.conftest import ROOT, Servers, _killed_with_this_process
from tests.integration.helpers import events, wait_for
from tests.integration.test_package import copy_source, fresh_venv, head_commit

pytestmark = [pytest.mark.upgrade, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

INTERVAL = 1.0
CHILD = ROOT / "tests" / "connectors" / "child.py"
#: The process connector's child prints READY this long after it starts.
READY_AFTER_S = 0.3
#: A Python child's own start on a loaded 2-core machine, beside its READY delay: its cold walk.
PROCESS_WALK_S = READY_AFTER_S + 1.0
SIMULATED_WALK_S = (
    ConnectorSpec().prepare_delay_s + ConnectorSpec().warmup_delay_s + ConnectorSpec().connect_delay_s
)
#: Added to each connector's walk in the bound: this test runs three workers and a CLI process beside
#: the rest of the suite on two cores, where a cold handoff's gap reached 2.8 s against the chaos
#: suite's 1.7 s (its 1 s dispatch margin). With it a handoff's bound stays below a crash's (3.9 s:
#: what a rollout costs that loses a host's steps), and far below what breaking replay costs (12 s,
#: measured with a deliberately incompatible change).
LOAD_SLACK_S = 2.0
#: A step of the runbook is given this long to show its result (enrolment, a drain's handoffs).
STEP_S = 90.0


def last_release() -> tuple[str, str]:
    """(version, commit) of the last release, from RELEASES (one line ``<version> <commit>``)."""
    lines = [line.split() for line in (ROOT / "RELEASES").read_text().splitlines()]
    (entry,) = [parts for parts in lines if parts and not parts[0].startswith("#")]
    version, commit = entry
    return version, commit


def next_patch(version: str) -> str:
    major, minor, patch = (int(x) for x in re.findall(r"\d+", version)[:3])
    return f"{major}.{minor}.{patch + 1}"


@dataclass
class Install:
    """One release installed in a venv of its own; its processes run in ``home`` (outside the
    checkout: ``python -m worker`` must find the installed module, not the checkout's)."""

    label: str
    home: Path
    version: str = ""
    build: str = ""

    @property
    def perseus(self) -> str:
        return str(self.home / "venv" / "bin" / "perseus")


def install(label: str, home: Path, source: Path, *, stamp: str) -> Install:
    """Build ``source`` into a wheel stamped ``stamp`` and install it into a fresh venv. Dependencies
    come from the project's venv when the source pins the same ones (the usual case), else from its
    own requirements.lock."""
    dist = home / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    env = {**os.environ, "PERSEUS_BUILD": stamp}
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], check=True, env=env)
    (wheel,) = dist.glob("perseus-*.whl")
    venv = home / "venv"
    if (source / "requirements.lock").read_bytes() == (ROOT / "requirements.lock").read_bytes():
        python = fresh_venv(venv)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        lock = str(source / "requirements.lock")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", lock], check=True)
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    made = Install(label, home)
    shown = subprocess.run([made.perseus, "--version"], capture_output=True, text=True, check=True, cwd=home)
    made.version = shown.stdout.split()[1]
    made.build = stamp
    return made


def archive(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` as a clone would have it (``git archive``; bench/fleet.py does the same)."""
    present = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], check=False)
    assert present.returncode == 0, (
        f"the last release's commit {commit} (RELEASES) is not in this clone: fetch it "
        f"(git fetch origin {commit}; a shallow CI checkout needs enough depth)"
    )
    dest.mkdir(parents=True)
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as files:
        files.extractall(dest, filter="data")
    return dest


def working_tree_as_next_release(dest: Path, released: str) -> Path:
    dest.mkdir(parents=True)
    copy_source(dest)
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text()
    ours = tomllib.loads(text)["project"]["version"]
    if not release.is_older(released, ours):
        text = text.replace(f'version = "{ours}"', f'version = "{next_patch(released)}"', 1)
        pyproject.write_text(text)
    return dest


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Install, Install]:
    base = tmp_path_factory.mktemp("releases")
    version, commit = last_release()
    old = install("old", base / "old", archive(commit, base / "old" / "src"), stamp=commit[:12])
    assert old.version == version, f"RELEASES says {version}, the tree of {commit} says {old.version}"
    source = working_tree_as_next_release(base / "new" / "src", version)
    new = install("new", base / "new", source, stamp=f"{head_commit()}-wt")
    assert release.is_older(old.version, new.version), (old.version, new.version)
    return old, new


def spawn(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """A fleet process, its output in ``log``; killed with the test process if that dies first."""
    with log.open("w") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_killed_with_this_process,
        )


@dataclass
class Host:
    name: str
    install: Install
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    base: Path
    servers: Servers
    temporal: services.Service
    redis: services.Service
    client: Client
    store: RedisStore
    journal: Path
    child_journal: Path
    exchanges: dict[str, int] = field(default_factory=dict)  # name → id
    placements: dict[str, list[str]] = field(default_factory=dict)  # name → hosts
    walks: dict[str, float] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    #: The drains, for the liveness check: a gap that begins in one is a planned handoff's.
    windows: list[Window] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return self.servers.env(
            TEMPORAL_ADDRESS=f"127.0.0.1:{self.temporal.port}",
            PERSEUS_REDIS_URL=f"redis://127.0.0.1:{self.redis.port}/0",
            PERSEUS_CONNECTOR_JOURNAL=str(self.journal),
            PERSEUS_DATA_DIR=str(self.base / "cli"),
        )

    async def cli(self, install: Install, *args: str) -> Any:
        """A ``perseus`` command of ``install`` as an operator types it; its JSON answer."""
        done = await asyncio.to_thread(
            subprocess.run,
            [install.perseus, *args, "--json"],
            capture_output=True,
            text=True,
            timeout=STEP_S,
            env=self.env(),
            cwd=install.home,
        )
        assert done.returncode == 0, f"perseus {' '.join(args)} ({install.label}): {done.stderr}"
        return json.loads(done.stdout)

    async def start(self, name: str, install: Install) -> None:
        log = self.base / f"worker-{name}-{install.label}-{uuid.uuid4().hex[:4]}.log"
        proc = spawn([install.perseus, "worker", "--host", name], log, self.env(), install.home)
        self.hosts[name] = Host(name, install, proc, log)

        async def ready() -> bool:
            assert proc.poll() is None, f"worker {name} exited: {log.read_text()[-3000:]}"
            return "worker ready" in log.read_text()

        await wait_for(ready, timeout=STEP_S)

    async def stop(self, name: str) -> None:
        """SIGTERM, as systemd stops the unit; the worker releases what it holds and exits."""
        host = self.hosts.pop(name)
        host.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(host.proc.wait, STEP_S)
        assert code == 0, f"worker {name} exited {code}: {host.log.read_text()[-3000:]}"

    async def mine(self, install: Install) -> dict[str, dict[str, Any]]:
        """``perseus fleet status`` for this test's exchanges."""
        return {
            v["exchange"]: v
            for v in await self.cli(install, "fleet", "status")
            if v["exchange"] in self.exchanges
        }

    async def settled(self, install: Install) -> dict[str, dict[str, Any]]:
        """Wait until every exchange has one active instance and its other host as a live standby,
        with nothing missing (no worker, not enrolled) — the runbook's "standbys back"."""

        async def whole() -> dict[str, dict[str, Any]] | None:
            views = await self.mine(install)
            for name, hosts in self.placements.items():
                view = views.get(name)
                if view is None or view["activeHost"] not in hosts or view["activeState"] != "active":
                    return None
                if sorted([view["activeHost"], *view["standbys"]]) != sorted(hosts):
                    return None
                if any("no worker" in d or "not enrolled" in d for d in view["drift"]):
                    return None
            return views

        # Asked once a second, as an operator would: each ask is a CLI process (about a second of
        # CPU on this machine), and back-to-back ones would starve the rest of the suite.
        deadline = time.monotonic() + STEP_S
        while (views := await whole()) is None:
            assert time.monotonic() < deadline, f"the fleet did not settle: {await self.mine(install)}"
            await asyncio.sleep(1.0)
        return views


@pytest_asyncio.fixture
async def fleet(servers: Servers, tmp_path: Path) -> AsyncIterator[Fleet]:
    temporal = await services.start_temporal(tmp_path / "temporal", None, None)
    redis = await services.start_redis(tmp_path / "redis", None)
    client = await Client.connect(f"127.0.0.1:{temporal.port}", data_converter=converter)
    made = Fleet(
        tmp_path,
        servers,
        temporal,
        redis,
        client,
        RedisStore(make_client(f"redis://127.0.0.1:{redis.port}/0")),
        tmp_path / "journal.jsonl",
        tmp_path / "children.jsonl",
    )
    try:
        yield made
    finally:
        for host in made.hosts.values():
            if host.proc.poll() is None:
                host.proc.kill()
                host.proc.wait(10)
        await made.store.client.aclose()
        conn = await db.connect(servers.database_url)
        async with conn:
            await db.Catalog(db.OneConnection(conn)).store_placements([], forget=list(made.exchanges))
        temporal.stop()
        redis.stop()


async def new_exchanges(servers: Servers, names: list[str]) -> dict[str, int]:
    conn = await db.connect(servers.database_url)
    made = {}
    async with conn:
        for name in names:
            row = await (
                await conn.execute(
                    "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id",
                    (name, name.upper()),
                )
            ).fetchone()
            assert row is not None
            made[name] = int(row["id"])
    return made


async def upgrade_host(fleet: Fleet, name: str, to: Install) -> None:
    """The runbook's step 2 for one host (docs/deploy.md, "Upgrading Perseus")."""
    # a. Hand every exchange active here to its best standby.
    began = time.monotonic()
    await fleet.cli(to, "drain", name)
    fleet.windows.append(Window(began, time.monotonic(), f"drain {name}", Recovery.HANDOFF))
    # b. Nothing is active here any more: stop the worker (SIGTERM); its standbys go with it.
    views = await fleet.mine(to)
    assert not [v["exchange"] for v in views.values() if v["activeHost"] == name], views
    await fleet.stop(name)
    # c. Start the other release's worker on the host; it enrols the host's placements by itself.
    await fleet.start(name, to)
    # d. fleet status: the host's standbys are back; hosts: it runs the release it should.
    await fleet.settled(to)
    hosts = {h["host"]: h for h in (await fleet.cli(to, "hosts"))["hosts"]}
    assert hosts[name]["version"] == to.version


async def judge(fleet: Fleet) -> None:
    """The invariants over everything so far: never two, no gap past one handoff's bound, the
    process connector's children never overlap."""
    journal = load_journal(fleet.journal)
    now = time.monotonic()
    for name in fleet.exchanges:
        walk = fleet.walks[name] + LOAD_SLACK_S
        timing = {name: Timing(INTERVAL, walk, hosts=2)}
        # By workflow: a renewal's line (valid_until) does not name its exchange.
        ids = {workflow_id(name, host) for host in fleet.placements[name]}
        mine = [line for line in journal if line["workflowId"] in ids]
        stream = await events(fleet.store, name)
        report = check(mine, stream, now, liveness=Liveness(timing=timing, faults=fleet.windows))
        assert not report.violations, "\n".join(report.violations)
        assert report.acting_intervals > 0, f"{name}: no connector ever acted"
        handoff = liveness_bound_s(INTERVAL, walk, Recovery.HANDOFF, hosts=2)
        longest = max((g.counted for g in report.gaps), default=0.0)
        print(
            f"{name}: {len(report.gaps)} stretches without a connector, "
            f"longest {longest:.2f}s (B {handoff:.2f}s)"
        )
        late = [g.describe() for g in report.gaps if g.counted > handoff]
        assert not late, f"{name}: longer without a connector than one handoff ({handoff:.2f}s): {late}"
        # And only during a planned handoff: each stretch began in a drain and ended before the
        # drain returned (it returns once the target confirmed, after its connector acted).
        outside = [
            g.describe()
            for g in report.gaps
            if g.fault is None or g.after_fault or g.end > g.fault.end + INTERVAL
        ]
        assert not outside, f"{name}: without a connector outside a handoff: {outside}"
    doubles = [line for line in load_journal(fleet.child_journal) if line.get("event") == "double"]
    assert not doubles, doubles


async def test_upgrade_from_the_last_release_host_by_host_and_back(
    servers: Servers, fleet: Fleet, releases: tuple[Install, Install]
) -> None:
    old, new = releases
    tag = uuid.uuid4().hex[:6]
    hosts = [f"up{i}-{tag}" for i in range(3)]
    process, warm, cold = f"upp_{tag}", f"upw_{tag}", f"upc_{tag}"
    fleet.exchanges = await new_exchanges(servers, [process, warm, cold])
    fleet.placements = {process: [hosts[0], hosts[1]], warm: [hosts[1], hosts[2]], cold: [hosts[2], hosts[0]]}
    fleet.walks = {process: PROCESS_WALK_S, warm: SIMULATED_WALK_S, cold: SIMULATED_WALK_S}
    command = (
        f"{sys.executable} {CHILD} --ready-after {READY_AFTER_S} --lock {fleet.base / 'process.lock'} "
        f"--journal {fleet.child_journal}"
    )
    body = (
        f"heartbeat_interval = {INTERVAL}\n"
        f'[exchanges.{process}]\nhosts = {json.dumps(fleet.placements[process])}\nexec = "{command}"\n'
        'ready_line = "READY"\n'
        f'[exchanges.{warm}]\nhosts = {json.dumps(fleet.placements[warm])}\nconnector = "simulated"\n'
        "warm = true\n"
        f'[exchanges.{cold}]\nhosts = {json.dumps(fleet.placements[cold])}\nconnector = "simulated"\n'
    )
    fleet_file = fleet.base / "fleet.toml"
    fleet_file.write_text(body)

    # The fleet on the last release: its workers, then the file applied (from then on every
    # worker enrols its host's placements when it starts).
    await asyncio.gather(*(fleet.start(h, old) for h in hosts))

    async def polling() -> bool:
        return set(hosts) <= await live_hosts(fleet.client, hosts)

    await wait_for(polling, timeout=STEP_S)
    await fleet.cli(old, "fleet", "apply", str(fleet_file))
    await fleet.settled(old)

    # The runbook, step 1: every exchange has a standby on another host (settled says so). Step 2,
    # host by host.
    for i, name in enumerate(hosts):
        await upgrade_host(fleet, name, new)
        if i == 0:
            # Mid-upgrade, the hosts still on the old release are named as such.
            listed = {h["host"]: h for h in (await fleet.cli(new, "hosts"))["hosts"]}
            assert [h for h in hosts if listed[h]["outdated"]] == hosts[1:]
            views = await fleet.mine(new)
            assert set(views[warm]["outdated"]) == {hosts[1], hosts[2]}, views[warm]
            assert any(f"runs {old.version}, older than {new.version}" in d for d in views[warm]["drift"])

    # Upgraded: every host on the new release, every holder and standby says so, every instance
    # workflow answers from it (the only workers left).
    listed = (await fleet.cli(new, "hosts"))["hosts"]
    assert {h["host"]: (h["version"], h["outdated"]) for h in listed} == dict.fromkeys(
        hosts, (new.version, False)
    )
    for name, ex_id in fleet.exchanges.items():
        holder = (await fleet.store.status(ex_id)).record
        assert holder is not None and holder.perseus_version == new.version, (name, holder)
        # A holder of this release declares its renew deadline (0.1.0's declared none).
        assert holder.renew_deadline_s is not None, (name, holder)
        assert [s.version for s in await fleet.store.standbys(ex_id)] == [new.version]
        for host in fleet.placements[name]:
            handle = fleet.client.get_workflow_handle(workflow_id(name, host))
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            # A query is answered by a worker: only the new release's are left to replay the run.
            snapshot = await handle.query(QUERY_SNAPSHOT)
            assert snapshot, (name, host)
    await judge(fleet)

    # Rollback: the same steps, back to the last release.
    for name in hosts:
        await upgrade_host(fleet, name, old)
    listed = (await fleet.cli(old, "hosts"))["hosts"]
    assert {h["host"]: h["version"] for h in listed} == dict.fromkeys(hosts, old.version)
    for name in fleet.exchanges:
        for host in fleet.placements[name]:
            handle = fleet.client.get_workflow_handle(workflow_id(name, host))
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    await judge(fleet)
