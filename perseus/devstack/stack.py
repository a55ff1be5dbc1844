"""``perseus dev``: the whole stack on one machine, with data kept under the data dir.

Services that are configured explicitly (``TEMPORAL_ADDRESS``, ``PERSEUS_REDIS_URL``,
``PERSEUS_DATABASE_URL``) are used as they are; the others are started here as children, stopped
on Ctrl-C/SIGTERM, and killed by the kernel if this process dies (no orphans).

The worker runs as a child process too (``python -m worker``), so the API served here never shares
the worker's event loop: a slow API request cannot delay a lease heartbeat. On Ctrl-C/SIGTERM the
worker is stopped first (it releases its instances' claims), then the API, then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from perseus.api.server import build_server
from perseus.codec import DEV_KEY_FILE, load_or_create_key
from perseus.config import (
    DEFAULT_API_PORT,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_TEMPORAL_PORT,
    DEFAULT_TEMPORAL_UI_PORT,
    DEV_POSTGRES_PASSWORD_FILE,
    DEV_REDIS_PASSWORD_FILE,
    Settings,
    is_loopback_host,
)
from perseus.devstack import services
from perseus.errors import ConfigError, PerseusError
from perseus.fleet.file import parse_fleet
from perseus.models import Scope
from perseus.store import db
from perseus.temporal import connect, register_search_attributes

log = logging.getLogger("perseus.dev")

#: The dev API key, whole, for whoever runs the stack (the banner shows its first characters).
DEV_API_KEY_FILE = "api.key"

DEMO_FLEET_PATH = Path(__file__).resolve().parents[1] / "demo_fleet.toml"


@dataclass
class DevOptions:
    temporal_port: int = DEFAULT_TEMPORAL_PORT
    ui_port: int = DEFAULT_TEMPORAL_UI_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    postgres_port: int = DEFAULT_POSTGRES_PORT
    api_port: int = DEFAULT_API_PORT
    demo: bool = False
    headless: bool = False
    host: str | None = None


@dataclass
class DevStack:
    """What ``perseus dev`` is running, for printing and for tests."""

    settings: Settings
    temporal_address: str
    ui_url: str | None
    api_url: str
    api_key: str
    children: list[services.Service] = field(default_factory=list)
    #: Where PostgreSQL keeps its data when it is not under the data dir (root, private checkout).
    postgres_data: Path | None = None

    def api_key_file(self) -> Path:
        return self.settings.data_dir.resolve() / DEV_API_KEY_FILE

    def secret_files(self) -> list[Path]:
        """The 0600 files this stack keeps its secrets in (the banner names them, never their text)."""
        data_dir = self.settings.data_dir.resolve()
        names = [DEV_API_KEY_FILE, DEV_KEY_FILE, DEV_POSTGRES_PASSWORD_FILE, DEV_REDIS_PASSWORD_FILE]
        return [data_dir / name for name in names if (data_dir / name).exists()]

    def child_pids(self) -> list[int]:
        return [pid for s in self.children if (pid := s.pid()) is not None]


async def start_services(settings: Settings, opts: DevOptions) -> DevStack:
    """Start whatever is not configured externally; apply the schema and demo data."""
    data_dir = settings.data_dir.resolve()
    children: list[services.Service] = []
    temporal_address = os.environ.get("TEMPORAL_ADDRESS")
    try:
        # Check every port first: a taken port must not leave half a stack running.
        if not temporal_address:
            services.require_free(opts.temporal_port, "the Temporal dev server", "--temporal-port")
            if not opts.headless:
                services.require_free(opts.ui_port, "the Temporal Web UI", "--ui-port")
        if not settings.explicitly_set("redis_url"):
            services.require_free(opts.redis_port, "Redis", "--redis-port")
        if not settings.explicitly_set("database_url"):
            services.require_free(opts.postgres_port, "PostgreSQL", "--postgres-port")
        services.require_free(opts.api_port, "the Perseus API", "--api-port")

        ui_url = None
        updates: dict[str, object] = {"api_port": opts.api_port, **dev_payload_settings(settings, data_dir)}
        if not temporal_address:
            # The Web UI asks the API's codec endpoint to show payloads in clear (dev holds the key).
            codec = (
                [] if opts.headless else ["--ui-codec-endpoint", f"http://127.0.0.1:{opts.api_port}/codec"]
            )
            temporal = await services.start_temporal(
                data_dir / "temporal",
                opts.temporal_port,
                None if opts.headless else opts.ui_port,
                extra_args=codec,
            )
            children.append(temporal)
            temporal_address = f"127.0.0.1:{opts.temporal_port}"
            ui_url = None if opts.headless else f"http://127.0.0.1:{opts.ui_port}"
            if ui_url is not None and not settings.explicitly_set("codec_cors_origins"):
                updates["codec_cors_origins"] = [ui_url, f"http://localhost:{opts.ui_port}"]
        postgres_data = None
        # Each server gets a password kept in the data dir (0600): other users of this machine
        # reach its ports too. A data dir from before gets them here, in place.
        if not settings.explicitly_set("redis_url"):
            password = services.load_or_create_secret(data_dir / DEV_REDIS_PASSWORD_FILE)
            redis = await services.start_redis(data_dir / "redis", opts.redis_port, password=password)
            children.append(redis)
            updates["redis_url"] = services.redis_url(redis)
        if not settings.explicitly_set("database_url"):
            postgres = await services.start_postgres(
                data_dir / "postgres",
                opts.postgres_port,
                password=services.load_or_create_secret(data_dir / DEV_POSTGRES_PASSWORD_FILE),
            )
            children.append(postgres)
            postgres_data = postgres.relocated_data
            updates["database_url"] = await services.ensure_database(postgres, "perseus")
        settings = settings.model_copy(update=updates)
        await db.apply_schema(settings.database_url)
        await db.apply_sql(settings.database_url, db.DEMO_DATA_PATH)
        api_key = await _dev_api_key(settings.database_url, data_dir / DEV_API_KEY_FILE)
        return DevStack(
            settings=settings,
            temporal_address=temporal_address,
            ui_url=ui_url,
            api_url=f"http://{settings.api_host}:{opts.api_port}",
            api_key=api_key,
            children=children,
            postgres_data=postgres_data,
        )
    except BaseException:
        stop_services(children)
        raise


def write_secret(path: Path, secret: str) -> None:
    """``secret`` into ``path``, readable by its owner only (also when the file was there before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")


def dev_payload_settings(settings: Settings, data_dir: Path) -> dict[str, object]:
    """Dev encrypts Temporal payloads too: with PERSEUS_PAYLOAD_KEY if given, else with a key kept in
    the data dir (created once, mode 0600), unless PERSEUS_PAYLOAD_PLAINTEXT=1 asks for plain text.
    Its API is on loopback, so the Web UI may call /codec without an API key."""
    updates: dict[str, object] = {}
    if settings.payload_key is None and not settings.payload_plaintext:
        updates["payload_key"] = SecretStr(load_or_create_key(data_dir / DEV_KEY_FILE))
    if is_loopback_host(settings.api_host) and not settings.explicitly_set("codec_allow_anonymous"):
        updates["codec_allow_anonymous"] = True
    return updates


async def _dev_api_key(url: str, path: Path) -> str:
    """The dev stack's admin key ``dev``: the one in ``path`` while it still works, else a new one
    (the old ``dev`` keys revoked) written there (0600). The database holds only its keyed hash, so
    the file is the only place it can be read back from."""
    pool = db.make_pool(url, max_size=1)
    await db.open_pool(pool)
    try:
        catalog = db.Catalog(pool)
        with contextlib.suppress(OSError, ValueError):
            kept = str(uuid.UUID(path.read_text().strip()))
            if await catalog.check_api_key(kept) is not None:
                return kept
        await catalog.revoke_api_keys("dev")
        key = await catalog.create_api_key("dev", scope=Scope.ADMIN)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret(path, key)
        return key
    finally:
        await pool.close()


def stop_services(children: list[services.Service]) -> None:
    for child in reversed(children):
        child.stop()


#: How long the worker may take to release its instances and stop (it bounds its own wait at 30 s).
WORKER_STOP_S = 60.0


def stop_on_signals(stop: asyncio.Event) -> None:
    """Ctrl-C and SIGTERM set ``stop``: the stack then shuts down in order instead of dying."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def worker_environment(stack: DevStack) -> dict[str, str]:
    """The worker child's environment: ours, pointed at the servers this stack uses."""
    env = dict(os.environ)
    env.update(
        TEMPORAL_ADDRESS=stack.temporal_address,
        PERSEUS_REDIS_URL=str(stack.settings.redis_url),
        PERSEUS_DATABASE_URL=stack.settings.database_url,
        PERSEUS_DATA_DIR=str(stack.settings.data_dir.resolve()),
    )
    if stack.settings.trace_file is not None:  # perseus dev --trace: the worker's spans too
        env["PERSEUS_TRACE_FILE"] = str(stack.settings.trace_file.resolve())
    key = stack.settings.payload_key
    if key is not None:  # the key dev made or was given: worker and API must encrypt alike
        env["PERSEUS_PAYLOAD_KEY"] = key.get_secret_value()
    return env


def start_worker(stack: DevStack, host: str) -> tuple[services.Service, Path]:
    """``python -m worker`` as a child (its log lines go to our stderr); returns it and its ready file."""
    ready_file = stack.settings.data_dir.resolve() / "worker.ready"
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.unlink(missing_ok=True)
    worker = services.Service("worker", 0, ready_file.with_name("worker.log"), inherit_output=True)
    worker.spawn(
        [sys.executable, "-m", "worker", "--host", host, "--ready-file", str(ready_file)],
        env=worker_environment(stack),
    )
    return worker, ready_file


#: How a child is named in the line that says it exited.
_CHILD_NAMES = {"temporal": "Temporal dev server", "redis": "Valkey server", "postgres": "PostgreSQL server"}


async def _child_exit(service: services.Service) -> None:
    """Returns (raising) when ``service`` exits: a dev stack without its worker or one of its servers
    is no stack (a dead PostgreSQL left a defunct child and the pools warning 41 times in 20 s), so
    it stops, whole, with this one line."""
    assert service.proc is not None
    while service.proc.poll() is None:  # noqa: ASYNC110 - a child process has no event to await
        await asyncio.sleep(0.2)
    name = _CHILD_NAMES.get(service.name, service.name)
    where = "" if service.inherit_output else f" (its log: {service.log_path})"
    raise PerseusError(f"the {name} exited with code {service.proc.returncode}: the dev stack stopped{where}")


async def _file_appears(path: Path) -> None:
    while not path.exists():  # noqa: ASYNC110 - written by another process
        await asyncio.sleep(0.1)


async def run_dev(
    settings: Settings, opts: DevOptions, stop: asyncio.Event, announce: Callable[[DevStack], None]
) -> None:
    """Run the stack until ``stop`` is set; then stop the worker gracefully and every child."""
    stack = await start_services(settings, opts)
    # Watchers first: each server started here is watched from now on (see _child_exit).
    watchers = [asyncio.create_task(_child_exit(child)) for child in stack.children]
    tasks: list[asyncio.Task[None]] = list(watchers)
    api = build_server(stack.settings, opts.api_port, stack.temporal_address)
    worker: services.Service | None = None
    try:
        client = await connect(stack.settings, stack.temporal_address)
        await register_search_attributes(client)
        host = opts.host or stack.settings.host_name()
        if opts.demo:
            for exchange in await seed_demo(stack.settings, host):
                log.info("demo: %s placed on %s", exchange, host)
        worker, ready_file = start_worker(stack, host)
        stack.children.append(worker)
        watchers.append(asyncio.create_task(_child_exit(worker)))
        tasks.append(watchers[-1])
        tasks.append(asyncio.create_task(api.serve()))
        await _first_of(_file_appears(ready_file), tasks)
        while not api.started:
            await _first_of(asyncio.sleep(0.05), tasks)
        announce(stack)
        await _first_of(stop.wait(), tasks)
    finally:
        for watcher in watchers:  # every exit is expected from here on
            watcher.cancel()
        if worker is not None:  # first, while Temporal, Redis and PostgreSQL still run
            await asyncio.to_thread(worker.stop, WORKER_STOP_S)
        api.should_exit = True
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 60)
        await asyncio.to_thread(stop_services, stack.children)


async def _first_of(awaitable: Awaitable[object], tasks: list[asyncio.Task[None]]) -> None:
    """Await ``awaitable`` but fail fast if one of the long-running tasks dies."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task in done:
            waiter.cancel()
            failure = task.exception()
            if failure is not None:
                raise failure
            raise PerseusError("a part of the dev stack stopped unexpectedly")


async def seed_demo(settings: Settings, host: str) -> list[str]:
    """Store the demo fleet (perseus/demo_fleet.toml) on this host, for each exchange that has no
    placement yet; the worker enrols every stored placement of its host when it starts, so the demo
    — and whatever the user applied — comes back after each restart. The exchanges seeded."""
    pool = db.make_pool(settings.database_url, max_size=1)
    await pool.open(wait=True, timeout=15)
    try:
        catalog = db.Catalog(pool)
        known = [e.name for e in await catalog.exchanges(active_only=True)]
        placements = parse_fleet(
            DEMO_FLEET_PATH.read_text(), known, default_interval_s=settings.heartbeat_interval
        )
        return await catalog.seed_placements([p.model_copy(update={"hosts": (host,)}) for p in placements])
    finally:
        await pool.close()


def data_dir_ok(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data dir {path} exists and is not a folder: set PERSEUS_DATA_DIR")
