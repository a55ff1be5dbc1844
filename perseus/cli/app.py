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
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from perseus import version as release
from perseus.cli import connector_output, fleet, instances, ops, views
from perseus.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    HostOption,
    JsonFlag,
    _with_catalog,
    err,
    out,
    print_json,
    run,
)
from perseus.config import (
    DEFAULT_API_PORT,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_TEMPORAL_PORT,
    DEFAULT_TEMPORAL_UI_PORT,
    Settings,
)
from perseus.errors import PerseusError
from perseus.redact import mask_url

if TYPE_CHECKING:
    from perseus.devstack.stack import DevStack


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


# --- the self-contained sub-apps, joined -------------------------------------------------------

for _sub in (instances.app, connector_output.app, views.app, fleet.app, ops.app):
    app.add_typer(_sub)


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
