"""``perseus``: every command is a thin wrapper that reads settings once, runs one async function,
and turns any Perseus error into one line on stderr and a non-zero exit code."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from perseus.config import (
    DEFAULT_API_PORT,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_TEMPORAL_PORT,
    DEFAULT_TEMPORAL_UI_PORT,
    Settings,
    load_settings,
)
from perseus.errors import PerseusError

app = typer.Typer(
    pretty_exceptions_enable=False,
    name="perseus",
    no_args_is_help=True,
    add_completion=False,
    help="Instance registry and health network for exchange connectors.",
)
db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL catalog.")
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
HostOption = Annotated[str | None, typer.Option("--host", help="Instance host (default: this machine).")]


def run(make: Callable[[Settings], Awaitable[T]]) -> T:
    """Read settings, run the coroutine, convert errors at the edge."""
    try:
        settings = load_settings()
        return asyncio.run(make(settings))  # type: ignore[arg-type]
    except PerseusError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    elif isinstance(value, list):
        value = [v.model_dump(mode="json", by_alias=True) if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


# --- stack ---------------------------------------------------------------------------------------


@app.command()
def dev(
    demo: Annotated[
        bool, typer.Option(help="Register and start demo instances (simulated connector).")
    ] = False,
    temporal_port: Annotated[
        int, typer.Option(help="Temporal dev server gRPC port.")
    ] = DEFAULT_TEMPORAL_PORT,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port.")] = DEFAULT_TEMPORAL_UI_PORT,
    redis_port: Annotated[
        int, typer.Option(help="Embedded Redis-compatible server port.")
    ] = DEFAULT_REDIS_PORT,
    postgres_port: Annotated[int, typer.Option(help="Embedded PostgreSQL port.")] = DEFAULT_POSTGRES_PORT,
    api_port: Annotated[int, typer.Option(help="Perseus API and network page port.")] = DEFAULT_API_PORT,
    headless: Annotated[bool, typer.Option(help="No Temporal Web UI.")] = False,
    host: HostOption = None,
) -> None:
    """Run the embedded stack: Temporal + Web UI, Redis, PostgreSQL, the worker and the API."""
    from perseus.devstack.stack import DevOptions, DevStack, run_dev, stop_on_signals
    from perseus.logs import configure_logging

    def announce(stack: DevStack) -> None:
        out.print("[bold green]Perseus dev stack is up[/bold green]  (Ctrl-C stops everything)")
        out.print(f"  Temporal        {stack.temporal_address}")
        out.print(f"  Temporal Web UI {stack.ui_url or '(headless)'}")
        out.print(f"  API             {stack.api_url}/api/network/instances")
        out.print(f"  Network page    {stack.api_url}/network")
        out.print(f"  API key         {stack.api_key}")
        out.print(f"  Redis           {stack.settings.redis_url}")
        out.print(f"  PostgreSQL      {stack.settings.database_url}")
        out.print(f"  Data            {stack.settings.data_dir.resolve()}")
        if stack.postgres_data is not None:
            out.print(f"  PostgreSQL data {stack.postgres_data}")
        out.print(f"  Child PIDs      {' '.join(map(str, stack.child_pids()))}", highlight=False)

    async def main(settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_format)
        stop = asyncio.Event()
        stop_on_signals(stop)
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
        out.print("stopped.")

    run(main)


@app.command()
def worker(
    host: HostOption = None,
    shared: Annotated[bool, typer.Option(help="Also serve the shared queue (workflows).")] = True,
) -> None:
    """Run a worker for the shared queue and this host's queue."""
    # The worker is the user's composition root (worker.py, beside workflows/ and activities/): this
    # process becomes ``python -m worker`` with the same flags, so perseus/ never imports it.
    argv = [sys.executable, "-m", "worker"] + (["--host", host] if host else [])
    argv += [] if shared else ["--no-shared"]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        err.print(f"error: cannot start the worker: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None


@app.command()
def api(port: Annotated[int | None, typer.Option(help="Port (default PERSEUS_API_PORT).")] = None) -> None:
    """Serve the HTTP API and the network page."""
    import uvicorn

    from perseus.api.app import create_app
    from perseus.api.server import Server
    from perseus.logs import configure_logging

    def serve(settings: Settings) -> Awaitable[None]:
        configure_logging(settings.log_level, settings.log_format)
        server = Server(
            uvicorn.Config(
                create_app(settings),
                host=settings.api_host,
                port=port or settings.api_port,
                log_config=None,  # perseus.logs configured the root logger: level and format
                log_level=settings.log_level.lower(),
            )
        )
        return server.serve()

    run(serve)


@db_app.command("init")
def db_init() -> None:
    """Apply schema.sql (idempotent)."""
    from perseus.store import db

    async def main(settings: Settings) -> None:
        await db.apply_schema(settings.database_url)
        err.print("schema applied")

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
from perseus.cli import instances as _instances  # noqa: E402,F401  (registers its commands on app)
from perseus.cli import views as _views  # noqa: E402,F401  (registers network, log, apikey)


def main() -> None:
    """Entry point: run the app, flush, and leave without Python's finalisers.

    The Temporal SDK's native runtime can abort a short-lived process during interpreter shutdown
    (sdk-python#300), so the exit status is handed straight to the OS once output is flushed.
    """
    code = 0
    try:
        returned = app(standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except typer.Abort:
        err.print("aborted")
        code = 130
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc}", highlight=False, markup=False)
        code = int(getattr(exc, "exit_code", 2))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
