"""``perseus``: every command is a thin wrapper that reads settings once, runs one async function,
and turns any Perseus error into one line on stderr and the exit code of DESIGN §2.4:

    0 ok · 1 refused (a domain rule said no) · 2 usage (bad arguments or settings) ·
    3 a server unreachable (Temporal, Redis, PostgreSQL, or no worker answered) ·
    4 not found (unknown exchange or admin, no such instance)

The code comes from the error's class (``PerseusError.exit_code``), nowhere else. With ``--json``
the error is also printed on stdout as ``{"error", "type", "exitCode"}``.

Text that comes from data (names, stored errors, a child's output) is never read as Rich markup:
both consoles have markup and highlighting off, and styling is applied with ``Text``/``style=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, RenderResult
from rich.spinner import Spinner
from rich.text import Text

from perseus import version as release
from perseus.config import (
    DEFAULT_API_PORT,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_TEMPORAL_PORT,
    DEFAULT_TEMPORAL_UI_PORT,
    Settings,
    load_settings,
)
from perseus.errors import PerseusError, Server, ServiceUnavailable
from perseus.redact import mask_text, mask_url

if TYPE_CHECKING:
    from perseus.devstack.stack import DevStack

#: Exit codes (DESIGN §2.4). A PerseusError carries its own; these name the rest.
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

app = typer.Typer(
    pretty_exceptions_enable=False,
    name="perseus",
    no_args_is_help=True,
    # Plain help: Typer's rich panels print every flag as ``--json <bool>``.
    rich_markup_mode=None,
    help="Instance registry and health network for exchange connectors.",
)
db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The PostgreSQL catalog.")
app.add_typer(db_app, name="db")

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


def _show_version(value: bool) -> None:
    if value:
        out.print(f"perseus {release.describe()}", highlight=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Instance registry and health network for exchange connectors."""


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

    The safety net under the conversions in perseus.control: a server that goes away mid-command
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


# --- stack ---------------------------------------------------------------------------------------


def dev_banner(stack: DevStack) -> list[str]:
    """What ``perseus dev`` prints once it is up: addresses, the dev API key's first characters, the
    server URLs with their credentials masked, and which files in the data dir hold the secrets (the
    banner ends up in terminals, logs and screenshots)."""
    return [
        f"  Temporal        {stack.temporal_address}",
        f"  Temporal Web UI {stack.ui_url or '(headless)'}",
        f"  API             {stack.api_url}/api/network/instances",
        f"  Network page    {stack.api_url}/network",
        f"  API key         {stack.api_key[:8]}… (the whole key is in {stack.api_key_file()})",
        f"  Redis           {mask_url(str(stack.settings.redis_url))}",
        f"  PostgreSQL      {mask_url(stack.settings.database_url)}",
        f"  Data            {stack.settings.data_dir.resolve()}",
        f"  Secrets (0600)  {' '.join(path.name for path in stack.secret_files())}",
        *([f"  PostgreSQL data {stack.postgres_data}"] if stack.postgres_data is not None else []),
        f"  Child PIDs      {' '.join(map(str, stack.child_pids()))}",
    ]


@app.command()
def dev(
    demo: Annotated[
        bool, typer.Option(help="Place the demo fleet (perseus/demo_fleet.toml) on this host; it enrols it.")
    ] = False,
    temporal_port: Annotated[
        int, typer.Option(help="Temporal dev server gRPC port.", min=1, max=65_535)
    ] = DEFAULT_TEMPORAL_PORT,
    ui_port: Annotated[
        int, typer.Option(help="Temporal Web UI port.", min=1, max=65_535)
    ] = DEFAULT_TEMPORAL_UI_PORT,
    redis_port: Annotated[
        int, typer.Option(help="Embedded Redis-compatible server port.", min=1, max=65_535)
    ] = DEFAULT_REDIS_PORT,
    postgres_port: Annotated[
        int, typer.Option(help="Embedded PostgreSQL port.", min=1, max=65_535)
    ] = DEFAULT_POSTGRES_PORT,
    api_port: Annotated[
        int, typer.Option(help="Perseus API and network page port.", min=1, max=65_535)
    ] = DEFAULT_API_PORT,
    headless: Annotated[bool, typer.Option(help="No Temporal Web UI.")] = False,
    host: HostOption = None,
    trace: Annotated[
        bool,
        typer.Option(
            help="Write trace spans (worker, API, commands) as JSON lines to {data dir}/traces.jsonl."
        ),
    ] = False,
) -> None:
    """Run the embedded stack: Temporal + Web UI, Redis, PostgreSQL, the worker and the API."""
    from perseus.devstack.stack import DevOptions, run_dev, stop_on_signals
    from perseus.logs import configure_logging

    def announce(stack: DevStack) -> None:
        out.print(Text.assemble(("Perseus dev stack is up", "bold green"), "  (Ctrl-C stops everything)"))
        for line in dev_banner(stack):
            out.print(line, highlight=False, markup=False)

    async def main(settings: Settings) -> None:
        from perseus import tracing

        configure_logging(settings.log_level, settings.log_format)
        provider = None
        if trace and settings.trace_file is None:
            settings = settings.model_copy(
                update={"trace_file": settings.data_dir.resolve() / "traces.jsonl"}
            )
            provider = tracing.install("perseus-dev", "file", settings.trace_file)
            out.print(f"traces: {settings.trace_file}", highlight=False, markup=False)
        stop = asyncio.Event()
        stop_on_signals(stop)
        try:
            await _run_dev(settings, stop)
        finally:
            tracing.shutdown(provider)
        out.print("stopped.")

    async def _run_dev(settings: Settings, stop: asyncio.Event) -> None:
        await run_dev(
            settings,
            DevOptions(
                temporal_port=temporal_port,
                ui_port=ui_port,
                redis_port=redis_port,
                postgres_port=postgres_port,
                api_port=api_port,
                demo=demo,
                headless=headless,
                host=host,
            ),
            stop,
            announce,
        )

    run(main)


@app.command()
def worker(
    host: HostOption = None,
    shared: Annotated[bool, typer.Option(help="Also serve the shared queue (workflows).")] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus /metrics (Perseus' and Temporal's), /healthz and /readyz here.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address for --metrics-port.")
    ] = "127.0.0.1",
) -> None:
    """Run a worker for the shared queue and this host's queue."""
    # The worker is the user's composition root (worker.py, beside workflows/ and activities/): this
    # process becomes ``python -m worker`` with the same flags, so perseus/ never imports it.
    argv = [sys.executable, "-m", "worker"] + (["--host", host] if host else [])
    argv += [] if shared else ["--no-shared"]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port), "--metrics-host", metrics_host]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        err.print(f"error: cannot start the worker: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None


@app.command()
def api(
    port: Annotated[
        int | None, typer.Option(help="Port (default PERSEUS_API_PORT).", min=1, max=65_535)
    ] = None,
) -> None:
    """Serve the HTTP API and the network page."""
    import uvicorn

    from perseus.api.app import create_app
    from perseus.api.ready import preflight
    from perseus.api.server import StreamingServer
    from perseus.config import load_systemd_env
    from perseus.logs import configure_logging

    async def serve(settings: Settings) -> None:
        from perseus.devstack.services import require_free

        configure_logging(settings.log_level, settings.log_format)
        # A taken port is a usage error (exit 2) in one line, before uvicorn logs its own failure.
        require_free(
            port or settings.api_port, "the Perseus API", "--port or PERSEUS_API_PORT", settings.api_host
        )
        await preflight(settings)  # PostgreSQL or Redis down: one line and exit 1, not a traceback
        # StreamingServer: live event streams end first on shutdown instead of holding it up.
        server = StreamingServer(
            uvicorn.Config(
                create_app(settings),
                host=settings.api_host,
                port=port or settings.api_port,
                log_config=None,  # perseus.logs configured the root logger: level and format
                log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=5,
            ),
            systemd=load_systemd_env(),
        )
        await server.serve()
        if not server.started:
            raise PerseusError("the API did not start (see the lines above)")

    run(serve)


@db_app.command("init")
def db_init() -> None:
    """Apply schema.sql (idempotent)."""
    from perseus.store import db

    async def main(settings: Settings) -> None:
        hashed = await db.apply_schema(settings.database_url)
        err.print(
            "schema applied" + (f"; {hashed} clear API key(s) now stored as keyed hashes" if hashed else "")
        )

    run(main)


# --- catalog -------------------------------------------------------------------------------------


async def _with_catalog(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from perseus.store import db

    conn = await db.connect(settings.database_url)
    async with conn:
        return await fn(db.Catalog(db.OneConnection(conn)))


@app.command()
def exchanges(as_json: JsonFlag = False) -> None:
    """The exchange catalog."""
    from rich.table import Table

    async def main(settings: Settings) -> list[Any]:
        return await _with_catalog(settings, lambda c: c.exchanges())

    rows = run(main)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "display name", "active")
    for ex in rows:
        table.add_row(str(ex.id), ex.name, ex.display_name, "yes" if ex.is_active else "no")
    out.print(table)


# --- lifecycle -----------------------------------------------------------------------------------

from perseus.cli import connector_output as _connector_output  # noqa: E402,F401  (registers output)
from perseus.cli import fleet as _fleet  # noqa: E402,F401  (registers fleet and drain)
from perseus.cli import instances as _instances  # noqa: E402,F401  (registers its commands on app)
from perseus.cli import ops as _ops  # noqa: E402,F401  (registers pause and resume)
from perseus.cli import views as _views  # noqa: E402,F401  (registers network, log, apikey)


def main() -> None:
    """Entry point: run the app, flush, and leave without Python's finalisers.

    The Temporal SDK's native runtime can abort a short-lived process during interpreter shutdown
    (sdk-python#300), so the exit status is handed straight to the OS once output is flushed.
    """
    code = EXIT_OK
    try:
        returned = app(standalone_mode=False)
        code = returned if isinstance(returned, int) else EXIT_OK
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_REFUSED
    except typer.Abort:
        err.print("aborted")
        code = 130
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        code = int(getattr(exc, "exit_code", EXIT_USAGE))
        if "--json" in sys.argv[1:]:
            print_json({"error": exc.format_message(), "type": type(exc).__name__, "exitCode": code})
        # One line, as every other error: the usage text is one --help away (named in the line).
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        err.print(Text.assemble(("error:", "red"), " ", message, hint))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
