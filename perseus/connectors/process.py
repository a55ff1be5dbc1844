"""Supervise a real connector command while the claim is held, like ``consul lock PREFIX COMMAND``.

The lifecycle maps onto the child process:

* ``prepare`` (*starting*) spawns the command with ``PERSEUS_EXCHANGE``, ``PERSEUS_EXCHANGE_ID``,
  ``PERSEUS_EPOCH``, ``PERSEUS_INSTANCE_ID`` (plus ``PERSEUS_WORKFLOW_ID`` and ``PERSEUS_SYMBOLS``, a
  comma-separated list of the exchange's active symbols) in its environment;
* ``warm_up`` (*warming*) waits until a line of its output matches ``ready_line``, or ``ready_url``
  answers 2xx, for at most ``ready_timeout_s``; ``connect`` makes it *active*;
* ``failure`` reports a child that exited while it should run: exit code or signal, and the tail of
  its output (the workflow records it as ``lastError`` and walks down to idle, or restarts);
* ``disconnect`` stops it: SIGTERM to its process group, SIGKILL after ``stop_grace_s``, and returns
  only once the child is gone. When the claim is lost (the keeper stops it ``at_once`` for a lost
  claim or a passed renew deadline) there is no grace at all: SIGKILL at once, since a connector must
  never act without the claim, and the keeper stops the connector before it reports the loss.

Process hygiene, so that the child cannot outlive its supervisor:

* its own session and process group (``start_new_session``): signals reach whatever it forks, and a
  Ctrl-C on the worker's terminal does not reach it behind the worker's back;
* ``PR_SET_PDEATHSIG`` = SIGKILL, set in the child between fork and exec. The kernel sends it when
  the *thread* that forked the child exits, not the process. asyncio forks synchronously in the
  event loop's own thread (``loop.subprocess_exec`` runs ``Popen`` there; the child watcher thread
  only waits), and the worker's loop runs in the main thread, which lives exactly as long as the
  worker process. So a worker killed with SIGKILL takes its children with it at once — well inside
  the renew deadline. A ``getppid()`` check after ``prctl`` closes the race where the worker died
  between fork and ``prctl``. PDEATHSIG covers the direct child only: a command that forks workers
  of its own should keep them in its process group (the default) and exec rather than wrap itself
  in a shell.

The child's stdout and stderr go through a pipe to this process, which keeps the last lines in
memory (for failure messages) and appends everything to a rotating file,
``{data dir}/connectors/{workflow id}.log`` (shown by ``perseus output EXCHANGE``).

The child talks back (DESIGN §2.9): stdout lines ``PERSEUS symbols=<n>``, ``PERSEUS error=<text>`` and
``PERSEUS health=ok|degraded|failed [reason]`` are reflected in :meth:`ProcessConnector.health`; a
malformed ``PERSEUS`` line is logged once and ignored. While active, ``health_url`` (default:
``ready_url``) is probed every heartbeat interval by a task the connector owns (started when it
becomes active, cancelled when it stops being active); ``health_failures`` failed probes in a row —
or as many ``health=failed`` lines in a row — make it unhealthy: :meth:`ProcessConnector.fault` then
reports ``kind="unhealthy"`` with the spec's ``on_unhealthy`` policy.

Warm standby: a connector built with ``role=Role.STANDBY`` spawns its child with ``PERSEUS_ROLE=standby``
and warms it up like an active one, then waits. :meth:`ProcessConnector.activate` writes
``ACTIVATE <epoch>`` on the child's stdin and waits for a line ``ACTIVE`` (``active_timeout_s``);
:meth:`ProcessConnector.deactivate` writes ``DEACTIVATE``. The child's stdin is a pipe only for a
standby or a ``warm`` spec; otherwise it is ``/dev/null`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from perseus.connectors.base import Connector
from perseus.core.lifecycle import Role
from perseus.errors import ConnectorError, ConnectorNotActive, ConnectorNotReady
from perseus.keys import iso
from perseus.models import Claim, ConnectorFailure, ConnectorHealth, ConnectorSpec
from perseus.redact import clean_output, mask_argv, mask_text

if TYPE_CHECKING:
    from perseus.connectors.factory import ConnectorContext

log = logging.getLogger(__name__)

#: Output lines kept in memory; the last few go into a failure message.
TAIL_LINES = 200
FAILURE_TAIL_LINES = 8
#: The tail in a failure message (it becomes ``lastError`` in Redis, the stream, the workflow and
#: Discord): control characters and ANSI stripped, secrets masked, at most this long.
FAILURE_TAIL_CHARS = 300
#: A line longer than this is cut into pieces (the readiness pattern sees each piece).
MAX_LINE_BYTES = 64 * 1024
#: How long to wait for the rest of the output after the child exited (a grandchild may hold the pipe).
DRAIN_S = 1.0
#: How often a stop checks whether the child has exited while its pipes are still open.
EXIT_POLL_S = 0.1
URL_POLL_S = 0.2
#: A health probe waits at most this long (and at most half the interval, so probes keep their pace).
HEALTH_PROBE_TIMEOUT_S = 2.0
#: The prefix of the child's messages to Perseus (DESIGN §2.9), and the longest error text kept.
PROTOCOL_PREFIX = "PERSEUS "
MAX_REPORTED_ERROR_CHARS = 500
_HEALTH_LINE = re.compile(r"health=(ok|degraded|failed)(?:\s+(.*))?")
#: Subdirectory of the data dir holding the children's output files.
OUTPUT_SUBDIR = "connectors"

#: The worker's variables a child inherits (besides the PERSEUS_* ones Perseus sets for it on purpose
#: and the spec's own ``env``): what a program needs to find itself, its locale and its CA bundle.
#: Everything else stays behind — above all the worker's credentials: ``PERSEUS_*`` settings (the
#: database URL, the API key) and ``TEMPORAL_*`` (``TEMPORAL_API_KEY``, TLS keys).
CHILD_ENV_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR", "TERM"}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "VIRTUAL_ENV"}
)
CHILD_ENV_PREFIXES = ("LC_", "PYTHON")
#: Output files are the child's own words (they may hold its secrets): only the worker's user reads.
OUTPUT_FILE_MODE = 0o600
OUTPUT_DIR_MODE = 0o700

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None


# --- output files ----------------------------------------------------------------------------------


def output_dir(data_dir: Path) -> Path:
    return data_dir / OUTPUT_SUBDIR


def output_path(log_dir: Path, workflow_id: str) -> Path:
    return log_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", workflow_id) + ".log")


def read_output(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of an output file, reaching into rotated files (``.1``, ``.2``...)."""
    if lines <= 0:
        return []
    found: list[str] = []
    candidates = [path, *(path.with_name(f"{path.name}.{n}") for n in range(1, 21))]
    for candidate in candidates:
        if not candidate.exists():
            break
        text = candidate.read_bytes().decode("utf-8", "replace").splitlines()
        found = text[-(lines - len(found)) :] + found
        if len(found) >= lines:
            break
    return found


class OutputLog:
    """Append-only bytes file rotated by size: ``name.log`` → ``name.log.1`` → … → ``name.log.N``.

    A write error (disk full) is logged once and dropped: the child's pipe must keep draining.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(mode=OUTPUT_DIR_MODE, parents=True, exist_ok=True)
        path.parent.chmod(OUTPUT_DIR_MODE)  # also when an older Perseus made it with the umask's mode
        self.path = path
        self._max = max_bytes
        self._backups = backups
        self._file = self._open("ab")
        self._size = self._file.tell()
        self._failed = False

    def write(self, data: bytes) -> None:
        try:
            while self._size + len(data) > self._max:
                # Fill this file up to a line boundary (or cut a line too long for one file).
                room = self._max - self._size
                cut = data.rfind(b"\n", 0, room) + 1 or (room if self._size == 0 else 0)
                self._file.write(data[:cut])
                data = data[cut:]
                self._rotate()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write connector output to %s: %s", self.path, exc)
                self._failed = True

    def note(self, text: str) -> None:
        """A line from Perseus itself, marked so it is not mistaken for the child's output."""
        self.write(f"[perseus {iso(datetime.now(UTC))}] {text}\n".encode())

    def _rotate(self) -> None:
        self._file.close()
        if self._backups:
            for n in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self._file = self._open("ab")
        else:
            self._file = self._open("wb")
        self._size = 0

    def _open(self, mode: str) -> BinaryIO:
        """Open with mode 0600 from the first byte (never a window with the umask's mode)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if "a" in mode else os.O_TRUNC)
        fd = os.open(self.path, flags, OUTPUT_FILE_MODE)
        os.fchmod(fd, OUTPUT_FILE_MODE)  # a file from before this rule keeps no wider mode
        return os.fdopen(fd, "ab" if "a" in mode else "wb")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


# --- the child ---------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> Callable[[], None]:
    """``preexec_fn``: SIGKILL this child when the forking thread dies (see the module docstring).

    libc is resolved here, in the parent, before the fork: the child only makes the call (loading a
    library after fork in a multi-threaded process could deadlock on the loader's lock).
    """
    global _prctl
    if _prctl is None:
        _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    prctl = _prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever kill us
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


async def _exit_code(proc: asyncio.subprocess.Process) -> int:
    """The child's exit code, as soon as it has exited.

    On Python 3.11 ``proc.wait()`` returns only once the child's pipes are closed too, which a process
    it left behind outside its group can postpone forever; the exit code itself is known at once.
    """
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None and not waiter.done():
            await asyncio.wait({waiter}, timeout=EXIT_POLL_S)
    finally:
        waiter.cancel()
    code = proc.returncode
    assert code is not None
    return code


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close the child's pipes once it has exited and its output is drained (or the drain timed out).

    asyncio closes them by itself only when every pipe reaches end-of-file: something the child left
    behind outside its process group (``setsid``) that still holds stdout would keep the pipe, the
    output task and the transport alive forever, and the garbage collector would later report an
    unclosed transport. Closing the transport ends the output task (its read sees end-of-file).
    """
    transport = getattr(proc, "_transport", None)  # asyncio keeps it private; close() is idempotent
    if transport is not None:
        transport.close()


class ProcessConnector(Connector):
    """A real connector command, run while the claim is held. See the module docstring."""

    def __init__(self, exchange_name: str, spec: ConnectorSpec, context: ConnectorContext) -> None:
        super().__init__(exchange_name, spec, context.role)
        self.context = context
        #: The claim the child acts under: the context's, then the one ``activate`` was given.
        self.claim: Claim | None = context.claim
        self._warm = False
        self._active_seen = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        # What the child and the probes said (see health()).
        self._reported_symbols: int | None = None
        self._reported_error: tuple[str, datetime] | None = None
        self._report: str | None = None  # "ok" | "degraded" | "failed": the last health line
        self._report_reason: str | None = None
        self._report_failures = 0
        self._probe_ok: bool | None = None
        self._probe_failures = 0
        self._last_health_at: datetime | None = None
        self._unhealthy: str | None = None
        self._malformed_logged = False
        self.symbols: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._pattern = re.compile(spec.ready_line) if spec.ready_line else None
        self._ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._connected = False
        #: Set once the child has exited and its output is drained: how it ended.
        self._exit: str | None = None
        #: When it was seen dead of SIGKILL (CLOCK_MONOTONIC): the watchdog's signal, or another's.
        self._killed_at: float | None = None
        #: Why we stopped it (None while nobody asked it to stop).
        self._stopping: str | None = None
        self._stop_lock = asyncio.Lock()
        self._last_probe = "no answer yet"
        self._log: OutputLog | None = None
        self.output_path = output_path(context.log_dir, context.workflow_id) if context.log_dir else None

    # --- introspection -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def tail(self, lines: int = FAILURE_TAIL_LINES) -> list[str]:
        return list(self._tail)[-lines:] if lines > 0 else []

    def _tail_text(self) -> str:
        """The child's last lines for a failure message, safe to record (see :func:`clean_output`)."""
        lines = [line.strip() for line in self.tail()]
        text = clean_output(" | ".join(line for line in lines if line), FAILURE_TAIL_CHARS)
        return f"; last output: {text}" if text else "; no output"

    def environment(self) -> dict[str, str]:
        """An allow-listed environment: the worker's variables named in :data:`CHILD_ENV_NAMES` or
        starting with :data:`CHILD_ENV_PREFIXES`, the spec's extra variables, and what Perseus
        tells the child. Nothing else of the worker's (its credentials above all) reaches it."""
        env = {
            k: v for k, v in os.environ.items() if k in CHILD_ENV_NAMES or k.startswith(CHILD_ENV_PREFIXES)
        }
        env.update(self.spec.env)
        ctx = self.context
        env.update(
            PERSEUS_EXCHANGE=self.exchange_name,
            PERSEUS_EXCHANGE_ID=str(ctx.exchange_id),
            PERSEUS_WORKFLOW_ID=ctx.workflow_id,
            PERSEUS_SYMBOLS=",".join(self.symbols),
        )
        if ctx.claim is not None:
            env.update(PERSEUS_EPOCH=str(ctx.claim.epoch), PERSEUS_INSTANCE_ID=ctx.claim.instance_id)
        env["PERSEUS_ROLE"] = self.role.value
        return env

    # --- the lifecycle -------------------------------------------------------------------------

    async def prepare(self, symbols: list[str]) -> int:
        """Spawn the command (*starting*); return the number of symbols it serves."""
        if self._proc is not None:
            raise ConnectorNotReady(f"the {self.exchange_name} connector was already started")
        self.symbols = list(symbols)
        command = self.spec.command
        if self.output_path is not None:
            try:
                self._log = OutputLog(self.output_path, self.spec.log_max_bytes, self.spec.log_backups)
            except OSError as exc:
                raise ConnectorNotReady(f"cannot open the connector output file: {exc}") from None
        claim = self.context.claim
        self._note(
            f"starting {mask_argv(command)} for {self.exchange_name}"
            + (f" (epoch {claim.epoch}, instance {claim.instance_id})" if claim else "")
        )
        if claim is None:
            log.warning("starting %s without its claim: PERSEUS_EPOCH/INSTANCE_ID unset", self.exchange_name)
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "the %s connector is spawned from thread %s: its parent-death signal fires when that "
                "thread ends, not when the worker does",
                self.exchange_name,
                threading.current_thread().name,
            )
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.PIPE if self._takes_commands else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.spec.cwd,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self._note(f"cannot start: {exc}")
            self._close_log()
            raise ConnectorNotReady(
                f"cannot start the {self.exchange_name} connector {command[0]!r}: {exc}"
            ) from None
        self._note(f"pid {self._proc.pid}")
        log.info("%s connector started: pid %s: %s", self.exchange_name, self._proc.pid, mask_argv(command))
        name = self.context.workflow_id
        self._pump_task = asyncio.create_task(self._pump(self._proc), name=f"output {name}")
        self._watch_task = asyncio.create_task(self._watch(self._proc), name=f"watch {name}")
        return len(self.symbols)

    async def warm_up(self) -> None:
        """Wait until the child is ready (*warming*), for at most ``ready_timeout_s``."""
        self._require()
        if self._pattern is None and self.spec.ready_url is None:
            if self._exit is not None:
                await self._not_ready(f"{self._exit} before it was ready")
            self._warm = True
            return  # nothing to wait for: ready once spawned
        exited = asyncio.create_task(self._until(self._exited))
        url = self.spec.ready_url
        ready = asyncio.create_task(self._poll_url(url) if url is not None else self._until(self._ready))
        try:
            done, _ = await asyncio.wait(
                {exited, ready}, timeout=self.spec.ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (exited, ready):
                waiter.cancel()
            await asyncio.gather(exited, ready, return_exceptions=True)
        if ready in done and not ready.cancelled() and ready.exception() is None:
            self._note("ready" + (" (warm standby)" if self.role is Role.STANDBY else ""))
            self._warm = True
            return
        if exited in done:
            await self._not_ready(f"{self._exit} before it was ready")
        waited_for = (
            f"a line matching /{self.spec.ready_line}/"
            if self._pattern is not None
            else f"{self.spec.ready_url} to answer 2xx (last: {self._last_probe})"
        )
        await self._not_ready(
            f"{self.exchange_name} connector not ready within {self.spec.ready_timeout_s:g}s "
            f"(waited for {waited_for}); stopped it"
        )

    async def connect(self) -> None:
        """Ready and still running: *active*."""
        proc = self._require()
        if self.role is not Role.ACTIVE:
            raise ConnectorError(
                f"the {self.exchange_name} connector is a warm standby: it becomes active by activate()"
            )
        if self._exit is not None or proc.returncode is not None:
            ended = self._exit or describe_exit(proc.returncode or 0)
            await self._not_ready(f"{ended} before it became active")
        self._connected = True
        self._note("active")
        self._signal_fault()  # a child that reported health=failed while warming up
        self._start_health()

    def process_group(self) -> int | None:
        # The child leads its own session and group (start_new_session), so its pid is the pgid.
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def activate(self, epoch: int, instance_id: str) -> None:
        """Promote the warm standby: ``ACTIVATE <epoch>`` on its stdin, then wait for ``ACTIVE``.

        Not confirmed within ``active_timeout_s`` (or the child exited): the child is stopped — it may
        be half-active — and :class:`ConnectorNotActive` raised.
        """
        proc = self._require()
        if self.connected:
            raise ConnectorError(f"the {self.exchange_name} connector is already active")
        if not self.warm_ready:
            state = self._exit or ("stopped" if self._stopping else "not warmed up yet")
            raise ConnectorError(
                f"the {self.exchange_name} connector is not a warm standby ({state}): cannot activate it"
            )
        if proc.stdin is None:
            raise ConnectorError(
                f"the {self.exchange_name} connector was started without a command pipe (not warm): "
                "cannot activate it"
            )
        self.claim = Claim(instance_id=instance_id, epoch=epoch)
        self._active_seen.clear()
        self._unhealthy, self._report_failures, self._probe_failures = None, 0, 0
        self.faulted.clear()
        self._note(f"ACTIVATE {epoch} (instance {instance_id})")
        try:
            proc.stdin.write(f"ACTIVATE {epoch}\n".encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self._not_active(
                f"cannot send ACTIVATE {epoch} to the {self.exchange_name} connector: {exc}"
            )
        exited = asyncio.create_task(self._until(self._exited))
        confirmed = asyncio.create_task(self._until(self._active_seen))
        try:
            done, _ = await asyncio.wait(
                {exited, confirmed}, timeout=self.spec.active_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (exited, confirmed):
                waiter.cancel()
            await asyncio.gather(exited, confirmed, return_exceptions=True)
        if confirmed not in done:
            why = (
                f"{self._exit} after ACTIVATE {epoch}"
                if exited in done
                else f"{self.exchange_name} connector did not answer ACTIVATE {epoch} with ACTIVE "
                f"within {self.spec.active_timeout_s:g}s; stopped it"
            )
            await self._not_active(why)
        self.role = Role.ACTIVE
        self._connected = True
        self._note(f"active (epoch {epoch})")
        log.info("%s connector activated: epoch %s, instance %s", self.exchange_name, epoch, instance_id)
        self._start_health()

    async def deactivate(self) -> None:
        """Demote to a warm standby: ``DEACTIVATE`` on its stdin; it keeps running. Idempotent."""
        proc = self._require()
        if proc.stdin is None:
            raise ConnectorError(
                f"the {self.exchange_name} connector was started without a command pipe (not warm): "
                "it cannot be demoted, only stopped"
            )
        was_active = self._connected
        self._connected = False
        self.role = Role.STANDBY
        await self._stop_health()
        if not was_active:
            return
        self._note("DEACTIVATE")
        try:
            proc.stdin.write(b"DEACTIVATE\n")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            log.warning("cannot send DEACTIVATE to the %s connector: %s", self.exchange_name, exc)

    def fault(self) -> ConnectorFailure | None:
        if self._stopping is not None:
            return None  # a stop we asked for is no failure
        # A warm standby's child that dies is a failure too (it can no longer be promoted warm);
        # an active one between warm_up and connect is not: connect() reports that itself.
        if (self._connected or (self.role is Role.STANDBY and self._warm)) and self._exit is not None:
            return ConnectorFailure(
                kind="crashed",
                reason=f"{mask_text(self._exit, tokens=False)}{self._tail_text()}",
                killed_at=self._killed_at,
            )
        if self._connected and self._unhealthy is not None:
            return ConnectorFailure(kind="unhealthy", reason=self._unhealthy, policy=self.spec.on_unhealthy)
        return None

    def health(self) -> ConnectorHealth:
        """What the probes and the child's report lines say; a reported error is returned once."""
        known = self._probe_ok is not None or self._report is not None
        failing = (
            self._unhealthy is not None
            or self._probe_ok is False
            or self._report == "failed"
            or self._exit is not None
        )
        error, self._reported_error = self._reported_error, None
        return ConnectorHealth(
            healthy=(not failing) if (known or self._exit is not None) else None,
            last_health_at=self._last_health_at,
            symbol_count=self._reported_symbols,
            last_error=error[0] if error else None,
            last_error_at=error[1] if error else None,
            degraded_reason=self._unhealthy
            or (self._last_probe if self._probe_ok is False else None)
            or (self._report_reason if self._report in ("degraded", "failed") else None),
            warm_ready=self.warm_ready,
        )

    @property
    def connected(self) -> bool:
        proc = self._proc
        return self._connected and self._exit is None and proc is not None and proc.returncode is None

    @property
    def warm_ready(self) -> bool:
        proc = self._proc
        return (
            self._warm
            and self._stopping is None
            and self._exit is None
            and proc is not None
            and proc.returncode is None
        )

    async def disconnect(self, reason: str, *, at_once: bool = False) -> None:
        """Stop the child and return once it is gone: SIGTERM, SIGKILL after the grace, or SIGKILL
        ``at_once``. Idempotent; never raises (the emergency brake)."""
        self._connected = False
        health_task, self._health_task = self._health_task, None
        if health_task is not None:
            health_task.cancel()  # at once; reaped below, after the child
        try:
            await self._disconnect(reason, at_once=at_once)
        finally:
            if health_task is not None:
                await asyncio.wait({health_task}, timeout=1.0)
            self._close_stdin()

    async def _disconnect(self, reason: str, *, at_once: bool) -> None:
        proc = self._proc
        if proc is None:
            self._close_log()
            return
        async with self._stop_lock:
            if self._stopping is None:
                self._stopping = reason
            try:
                await self._terminate(proc, reason, at_once=at_once)
            except asyncio.CancelledError:
                self._killpg(proc, signal.SIGKILL)
                raise
            except Exception:  # must not fail: make sure it is dead, say why, carry on
                log.exception("stopping the %s connector (pid %s)", self.exchange_name, proc.pid)
                self._killpg(proc, signal.SIGKILL)
            finally:
                if proc.returncode is not None:
                    self._close_log()

    # --- internals -----------------------------------------------------------------------------

    def _require(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise ConnectorError(f"the {self.exchange_name} connector was not started")
        return self._proc

    @property
    def _takes_commands(self) -> bool:
        """Whether the child gets a stdin pipe for ACTIVATE / DEACTIVATE."""
        return self.role is Role.STANDBY or self.spec.warm

    async def _not_active(self, why: str) -> None:
        message = f"{why}{self._tail_text()}"
        self._note(message)
        await self.disconnect("not active")
        raise ConnectorNotActive(message)

    def _close_stdin(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is not None:
            proc.stdin.close()

    # --- health while active -------------------------------------------------------------------

    def _start_health(self) -> None:
        url = self.spec.health_url or self.spec.ready_url
        if url is None or self._health_task is not None:
            return
        self._probe_failures = 0
        self._health_task = asyncio.create_task(
            self._probe_health(url, self.context.heartbeat_interval_s),
            name=f"health {self.context.workflow_id}",
        )

    async def _stop_health(self) -> None:
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _probe_health(self, url: str, interval: float) -> None:
        """Probe ``url`` on a fixed schedule, one interval apart, while active."""
        import httpx

        timeout = min(HEALTH_PROBE_TIMEOUT_S, interval / 2)
        async with httpx.AsyncClient(trust_env=False, timeout=timeout) as http:
            due = asyncio.get_running_loop().time()
            while True:
                due += interval
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                try:
                    response = await http.get(url)
                except httpx.HTTPError as exc:
                    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    self._probe_result(False, f"health check {url}: {what}")
                except Exception as exc:  # a probe must never take the supervisor down
                    self._probe_result(False, f"health check {url}: {type(exc).__name__}")
                else:
                    ok = response.is_success
                    self._probe_result(ok, None if ok else f"health check {url}: HTTP {response.status_code}")

    def _probe_result(self, ok: bool, why: str | None) -> None:
        self._probe_ok = ok
        self._last_health_at = datetime.now(UTC)
        if ok:
            self._probe_failures = 0
            return
        self._last_probe = why or "failed"
        self._probe_failures += 1
        if self._probe_failures >= self.spec.health_failures:
            self._set_unhealthy(f"{self._probe_failures} health checks failed in a row (last: {why})")

    def _signal_fault(self) -> None:
        if self.fault() is not None:
            self.faulted.set()

    def _set_unhealthy(self, why: str) -> None:
        # Kept even while not active (a child reporting failure during warm-up): fault() reports it
        # once it is active; activate() starts a promoted standby afresh.
        if self._unhealthy is None:
            self._unhealthy = f"{self.exchange_name} connector unhealthy: {why}"
            self._signal_fault()
            self._note(self._unhealthy)
            log.warning("%s (policy: %s)", self._unhealthy, self.spec.on_unhealthy)

    # --- the child's messages (DESIGN §2.9) ----------------------------------------------------

    def _message(self, text: str) -> None:
        """One ``PERSEUS …`` line from the child: reflect it in health(), or ignore it (logged once)."""
        body = text[len(PROTOCOL_PREFIX) :].strip()
        key, _, value = body.partition("=")
        if key == "symbols" and value.isdigit():
            self._reported_symbols = int(value)
            return
        if key == "error" and value.strip():
            clean = "".join(ch if ch.isprintable() else " " for ch in value.strip())
            self._reported_error = (clean[:MAX_REPORTED_ERROR_CHARS], datetime.now(UTC))
            return
        if key == "health" and (match := _HEALTH_LINE.fullmatch(body)):
            state, reason = match.group(1), (match.group(2) or "").strip() or None
            self._report, self._report_reason = state, reason
            self._last_health_at = datetime.now(UTC)
            if state != "failed":
                self._report_failures = 0
                return
            self._report_failures += 1
            if self._report_failures >= self.spec.health_failures:
                self._set_unhealthy(
                    f"it reported health=failed {self._report_failures} times in a row"
                    + (f" ({reason})" if reason else "")
                )
            return
        if not self._malformed_logged:
            self._malformed_logged = True
            log.warning(
                "%s connector: ignoring malformed line %r (expected symbols=<n>, error=<text> or "
                "health=ok|degraded|failed [reason]); further ones are ignored silently",
                self.exchange_name,
                text[:200],
            )

    async def _not_ready(self, why: str) -> None:
        message = f"{mask_text(why, tokens=False)}{self._tail_text()}"
        self._note(message)
        await self.disconnect("not ready")
        raise ConnectorNotReady(message)

    def _note(self, text: str) -> None:
        if self._log is not None:
            self._log.note(text)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _killpg(self, proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The group outlives the child while something it forked still runs; once the child is
        # reaped and the group is empty, there is nothing left to signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _terminate(self, proc: asyncio.subprocess.Process, reason: str, *, at_once: bool) -> None:
        grace = self.spec.stop_grace_s
        if proc.returncode is None:
            if grace <= 0 or at_once:
                self._note(f"stopping ({reason}): SIGKILL now")
                self._killpg(proc, signal.SIGKILL)
            else:
                self._note(f"stopping ({reason}): SIGTERM, SIGKILL after {grace:g}s")
                self._killpg(proc, signal.SIGTERM)
                try:
                    await asyncio.wait_for(_exit_code(proc), grace)
                except TimeoutError:
                    self._note(f"still running after {grace:g}s: SIGKILL")
                    self._killpg(proc, signal.SIGKILL)
            await _exit_code(proc)
            log.info("%s connector (pid %s) stopped: %s", self.exchange_name, proc.pid, reason)
        self._killpg(proc, signal.SIGKILL)  # whatever it forked and left behind in its group
        if self._watch_task is not None:
            await asyncio.wait({self._watch_task}, timeout=DRAIN_S + 1.0)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the child's output to the file and the in-memory tail; spot the ready line."""
        assert proc.stdout is not None
        pending = b""
        try:
            while chunk := await proc.stdout.read(65536):
                if self._log is not None:
                    self._log.write(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    lines.append(pending)
                    pending = b""
                for raw in lines:
                    self._line(raw)
            if pending:
                self._line(pending)
        except Exception:  # the output must not take the supervisor down
            log.exception("reading the output of the %s connector", self.exchange_name)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._tail.append(text)
        if text.startswith(PROTOCOL_PREFIX):
            self._message(text)
        elif text.strip() == "ACTIVE":
            self._active_seen.set()
        if self._pattern is not None and not self._ready.is_set() and self._pattern.search(text):
            self._ready.set()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the child to end; then, once its last output is read, say how it ended."""
        code = await _exit_code(proc)
        if code == -signal.SIGKILL:
            self._killed_at = time.monotonic()
        if self._pump_task is not None:
            await asyncio.wait({self._pump_task}, timeout=DRAIN_S)
        _close_pipes(proc)
        program = self.spec.command[0]
        self._exit = f"{self.exchange_name} connector {program} (pid {proc.pid}) {describe_exit(code)}"
        self._note(self._exit)
        if self._stopping is None:
            log.warning("%s%s", self._exit, self._tail_text())
        self._exited.set()
        self._signal_fault()

    @staticmethod
    async def _until(event: asyncio.Event) -> None:
        await event.wait()

    async def _poll_url(self, url: str) -> None:
        import httpx

        async with httpx.AsyncClient(trust_env=False, timeout=min(2.0, self.spec.ready_timeout_s)) as http:
            while True:
                try:
                    response = await http.get(url)
                except httpx.HTTPError as exc:
                    self._last_probe = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    if response.is_success:
                        return
                    self._last_probe = f"HTTP {response.status_code}"
                await asyncio.sleep(URL_POLL_S)
