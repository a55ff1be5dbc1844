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
  only once the child is gone. When the claim is lost (the lease's reasons ``claim lost`` and
  ``renew deadline passed``) there is no grace at all: SIGKILL at once, since a connector must never
  act without the claim, and the lease stops the connector before it reports the loss.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from perseus.connectors.base import Connector
from perseus.errors import ConnectorError, ConnectorNotReady
from perseus.keys import iso
from perseus.models import ConnectorSpec

if TYPE_CHECKING:
    from perseus.connectors.factory import ConnectorContext

log = logging.getLogger(__name__)

#: Reasons (substrings) for which ``disconnect`` kills at once: the lease lost the claim.
EMERGENCY_REASONS = ("claim lost", "renew deadline")
#: Output lines kept in memory; the last few go into a failure message.
TAIL_LINES = 200
FAILURE_TAIL_LINES = 8
FAILURE_TAIL_CHARS = 600
#: A line longer than this is cut into pieces (the readiness pattern sees each piece).
MAX_LINE_BYTES = 64 * 1024
#: How long to wait for the rest of the output after the child exited (a grandchild may hold the pipe).
DRAIN_S = 1.0
#: How often a stop checks whether the child has exited while its pipes are still open.
EXIT_POLL_S = 0.1
URL_POLL_S = 0.2
#: Subdirectory of the data dir holding the children's output files.
OUTPUT_SUBDIR = "connectors"

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
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max = max_bytes
        self._backups = backups
        self._file = path.open("ab")
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
            self._file = self.path.open("ab")
        else:
            self._file = self.path.open("wb")
        self._size = 0

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
        super().__init__(exchange_name, spec)
        self.context = context
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
        lines = self.tail()
        if not lines:
            return "; no output"
        text = " | ".join(line.strip() for line in lines)
        if len(text) > FAILURE_TAIL_CHARS:
            text = "…" + text[-FAILURE_TAIL_CHARS:]
        return f"; last output: {text}"

    def environment(self) -> dict[str, str]:
        """The worker's environment without its own PERSEUS_* settings (they may hold secrets such
        as the database URL), the spec's extra variables, and what Perseus tells the child."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSEUS_")}
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
            f"starting {shlex.join(command)} for {self.exchange_name}"
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
                stdin=subprocess.DEVNULL,
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
        log.info("%s connector started: pid %s: %s", self.exchange_name, self._proc.pid, shlex.join(command))
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
            self._note("ready")
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
        if self._exit is not None or proc.returncode is not None:
            ended = self._exit or describe_exit(proc.returncode or 0)
            await self._not_ready(f"{ended} before it became active")
        self._connected = True
        self._note("active")

    def failure(self) -> str | None:
        if self._connected and self._stopping is None and self._exit is not None:
            return f"{self._exit}{self._tail_text()}"
        return None

    @property
    def connected(self) -> bool:
        proc = self._proc
        return self._connected and self._exit is None and proc is not None and proc.returncode is None

    async def disconnect(self, reason: str) -> None:
        """Stop the child and return once it is gone. Idempotent; never raises (the emergency brake)."""
        self._connected = False
        proc = self._proc
        if proc is None:
            self._close_log()
            return
        async with self._stop_lock:
            if self._stopping is None:
                self._stopping = reason
            try:
                await self._terminate(proc, reason)
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

    async def _not_ready(self, why: str) -> None:
        message = f"{why}{self._tail_text()}"
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

    async def _terminate(self, proc: asyncio.subprocess.Process, reason: str) -> None:
        grace = self.spec.stop_grace_s
        if proc.returncode is None:
            if grace <= 0 or any(marker in reason for marker in EMERGENCY_REASONS):
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
        if self._pattern is not None and not self._ready.is_set() and self._pattern.search(text):
            self._ready.set()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the child to end; then, once its last output is read, say how it ended."""
        code = await _exit_code(proc)
        if self._pump_task is not None:
            await asyncio.wait({self._pump_task}, timeout=DRAIN_S)
        _close_pipes(proc)
        program = self.spec.command[0]
        self._exit = f"{self.exchange_name} connector {program} (pid {proc.pid}) {describe_exit(code)}"
        self._note(self._exit)
        if self._stopping is None:
            log.warning("%s%s", self._exit, self._tail_text())
        self._exited.set()

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
