"""What every command of ``perseus`` shares: the consoles, the options, reading settings once and
running one coroutine, JSON output, and errors turned into one line and the exit code of DESIGN
§2.4. A leaf: it imports none of the command modules, so each of them is a self-contained sub-app
(``perseus.cli.app`` joins them with ``add_typer``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, RenderResult
from rich.spinner import Spinner
from rich.text import Text

from perseus.config import (
    Settings,
    load_settings,
)
from perseus.errors import PerseusError, Server, ServiceUnavailable
from perseus.redact import mask_text

#: Exit codes (DESIGN §2.4). A PerseusError carries its own; these name the rest.
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

#: How wide output is when it goes to a pipe or file and COLUMNS does not say: Rich's default of 80
#: columns cut table cells (a stored error, a host list) for whoever reads the file or greps it.
PIPE_WIDTH = 1_000


def make_console(*, stderr: bool = False) -> Console:
    """A console that reads no markup (anything printed may contain data, "[/bold]" in a stored
    error) and is not cut at 80 columns when it writes to a pipe."""
    console = Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


out = make_console()
err = make_console(stderr=True)
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
HostOption = Annotated[
    str | None, typer.Option("--host", metavar="HOST", help="Instance host (default: this machine).")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Give up waiting for a worker's answer after this many seconds (default 90).",
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Wait until the transition is done (default), or send the command signal and return at once.",
    ),
]


def perseus_version() -> str:
    try:
        return version("perseus")
    except PackageNotFoundError:  # running from a tree that was never installed
        return "unknown"


# --- output helpers ------------------------------------------------------------------------------

#: Servers the CLI talks to → the setting that points at each (for "unreachable" messages).
_REACH = {
    Server.TEMPORAL: "TEMPORAL_ADDRESS",
    Server.REDIS: "PERSEUS_REDIS_URL",
    Server.POSTGRESQL: "PERSEUS_DATABASE_URL",
}


def error_line(exc: PerseusError) -> str:
    """The error as one line; an unreachable server's line says how to start or reach it."""
    # Credentials masked: a driver's message may quote the URL it was given.
    line = mask_text(" ".join(part.strip() for part in str(exc).splitlines() if part.strip()), tokens=False)
    if isinstance(exc, ServiceUnavailable) and exc.server is not None:
        server, setting = exc.server, _REACH[exc.server]
        hint = f"start the stack with `perseus dev`, or set {setting} to reach your {server}"
        line = f"{line.rstrip('. ')}; {hint}"
    return line


def _json_requested() -> bool:
    """True when the running command was given ``--json`` (every command names it ``as_json``)."""
    # Typer 0.29 carries its own copy of click; its context is the one a command runs in.
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def report_error(message: str, type_name: str, code: int, *, as_json: bool) -> None:
    """One line on stderr; with ``--json`` also ``{"error", "type", "exitCode"}`` on stdout."""
    if as_json:
        print_json({"error": message, "type": type_name, "exitCode": code})
    err.print(Text.assemble(("error:", "red"), " ", message))


def fail(exc: PerseusError) -> typer.Exit:
    """Report ``exc`` and return the exit to raise (its class's code)."""
    report_error(error_line(exc), type(exc).__name__, exc.exit_code, as_json=_json_requested())
    return typer.Exit(exc.exit_code)


def run(make: Callable[[Settings], Awaitable[T]]) -> T:
    """Read settings, run the coroutine, convert errors at the edge."""
    from perseus import tracing
    from perseus.config import load_otel_env

    provider = None
    try:
        settings = load_settings()
        # Off unless OTEL_* or PERSEUS_TRACE_FILE say otherwise (perseus/tracing.py).
        provider = tracing.install(
            "perseus", tracing.tracing_mode(load_otel_env(), settings.trace_file), settings.trace_file
        )
        return asyncio.run(make(settings))  # type: ignore[arg-type]
    except PerseusError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        converted = _temporal_error(exc)
        if converted is None:
            raise  # a bug: let its traceback show
        raise fail(converted) from None
    finally:
        tracing.shutdown(provider)


def _temporal_error(exc: Exception) -> PerseusError | None:
    """A Temporal RPC failure that no layer below converted, as a Perseus error (else None).

    The safety net under the conversions in perseus.client.control: a server that goes away mid-command
    must still be one line and exit 3, never an RPCError traceback."""
    from temporalio.service import RPCError, RPCStatusCode

    if not isinstance(exc, RPCError):
        return None
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return ServiceUnavailable(f"Temporal did not answer: {exc.message}", server=Server.TEMPORAL)
    return PerseusError(f"Temporal refused the request: {exc.message}")


#: Fields that are numbers but arrive as strings (Redis stream fields are all strings).
NUMERIC_FIELDS = frozenset({"epoch", "exchangeId", "priority", "symbolCount", "ttlMs", "heartbeatAgeS"})


def _numbers(value: Any) -> Any:
    """``value`` with the known numeric fields turned from strings into numbers, at any depth."""
    if isinstance(value, dict):
        return {k: _number(v) if k in NUMERIC_FIELDS else _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


_INTEGER = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?\d+\.\d+")


def _number(value: Any) -> Any:
    """A decimal string as a number; anything else (an empty field) as it was stored."""
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return float(value)
    return value


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    elif isinstance(value, list):
        value = [v.model_dump(mode="json", by_alias=True) if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(_numbers(value), indent=2) + "\n")
    sys.stdout.flush()


class _Elapsed:
    """A spinner whose text shows the seconds since it started, recomputed on every refresh."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.spinner.text = Text(f"{self.label} ({time.monotonic() - self.started:.1f}s)")
        yield self.spinner


@contextlib.contextmanager
def waiting(label: str, *, as_json: bool = False) -> Iterator[None]:
    """A spinner with elapsed time on stderr while the block runs: only when stderr is a terminal
    and the output is not JSON, so pipes and scripts see nothing of it. It is erased afterwards."""
    if as_json or not err.is_terminal:
        yield
        return
    from rich.live import Live

    with Live(
        _Elapsed(label),
        console=err,
        transient=True,
        refresh_per_second=10,
        redirect_stdout=False,
        redirect_stderr=False,
    ):
        yield


# --- catalog -------------------------------------------------------------------------------------


async def _with_catalog(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from perseus.store import db

    conn = await db.connect(settings.database_url)
    async with conn:
        return await fn(db.Catalog(db.OneConnection(conn)))
