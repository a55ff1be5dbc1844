"""``register``, ``start``, ``stop``, ``shutdown``, ``status``."""

from __future__ import annotations

from typing import Annotated

import typer

from perseus.cli.app import HostOption, JsonFlag, _with_catalog, app, err, out, print_json, run
from perseus.config import Settings
from perseus.errors import ConfigError
from perseus.lifecycle import Command
from perseus.models import CommandResult, RegistrationResult


@app.command()
def register(
    exchange: Annotated[str, typer.Argument(help="Exchange name or id from the catalog.")],
    host: HostOption = None,
    admin_email: Annotated[str | None, typer.Option("--admin-email", help="Admin user's e-mail.")] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            help="Seconds between heartbeats (TTL is 3x). Default PERSEUS_HEARTBEAT_INTERVAL.",
        ),
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it right after registering.")] = False,
    standby: Annotated[
        bool, typer.Option("--standby", help="Register a standby: no claim until promoted.")
    ] = False,
    priority: Annotated[
        int, typer.Option("--priority", help="Standby priority: higher is promoted first.")
    ] = 0,
    exec_command: Annotated[
        str | None,
        typer.Option(
            "--exec",
            help="Run this command on the host while the instance holds the exchange (split like a "
            "shell would, run without one); it gets PERSEUS_EXCHANGE, PERSEUS_EXCHANGE_ID, "
            "PERSEUS_EPOCH, PERSEUS_INSTANCE_ID.",
        ),
    ] = None,
    ready_line: Annotated[
        str | None, typer.Option("--ready-line", help="Ready once a line of its output matches this regex.")
    ] = None,
    ready_url: Annotated[
        str | None, typer.Option("--ready-url", help="Ready once this http(s) URL answers 2xx.")
    ] = None,
    ready_timeout: Annotated[
        float | None, typer.Option("--ready-timeout", help="Seconds to become ready (default 30, max 110).")
    ] = None,
    stop_grace: Annotated[
        float | None,
        typer.Option("--stop-grace", help="Seconds from SIGTERM to SIGKILL (default 5, max 10)."),
    ] = None,
    restart: Annotated[
        str | None,
        typer.Option("--restart", help="no | on-failure: start again, with backoff, after a crash."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an instance of EXCHANGE on a host: claims the exchange (state idle), or waits as a standby."""
    from perseus import control
    from perseus.cli.connector_output import connector_spec
    from perseus.temporal import connect

    async def main(settings: Settings) -> RegistrationResult:
        spec = connector_spec(
            exec_command=exec_command,
            ready_line=ready_line,
            ready_url=ready_url,
            ready_timeout=ready_timeout,
            stop_grace=stop_grace,
            restart=restart,
        )
        interval = heartbeat_interval if heartbeat_interval is not None else settings.heartbeat_interval
        try:
            control.check_heartbeat_interval(interval)
        except ConfigError as exc:
            raise ConfigError(f"--heartbeat-interval: {exc}") from None
        control.check_exchange(exchange)

        # Refuse unknown exchanges and admins before anything is started (lists the known ones).
        async def check(catalog: object) -> None:
            await catalog.exchange(exchange)  # type: ignore[attr-defined]
            if admin_email:
                await catalog.admin(admin_email)  # type: ignore[attr-defined]

        await _with_catalog(settings, check)
        client = await connect(settings)
        return await control.register(
            client,
            exchange=exchange,
            host=host or settings.host_name(),
            admin_email=admin_email,
            heartbeat_interval_s=interval,
            start=start,
            standby=standby,
            priority=priority,
            connector=spec,
        )

    result = run(main)
    if as_json:
        print_json(result)
    else:
        out.print(
            f"registered {result.exchange} on {result.host} ({result.ip_address or 'IP unknown'}): "
            + (
                f"standby {result.instance_id}, waiting"
                if result.role == "standby"
                else f"epoch {result.epoch}, state {result.state.value}"
            )
            + f", workflow {result.workflow_id}",
            highlight=False,
        )
        if start:
            out.print("start requested; follow it with: perseus status " + result.exchange, highlight=False)


def _command(exchange: str, host: str | None, command: Command, as_json: bool) -> None:
    from perseus import control
    from perseus.temporal import connect

    async def main(settings: Settings) -> CommandResult:
        client = await connect(settings)
        return await control.command(
            client, exchange=exchange, host=host, default_host=settings.host_name(), command=command
        )

    result = run(main)
    if as_json:
        print_json(result)
    else:
        path = " -> ".join([result.from_state.value, *(s.value for s in result.transitions)])
        out.print(f"{exchange}: {command.value} done ({path})", highlight=False)


@app.command()
def start(exchange: str, host: HostOption = None, as_json: JsonFlag = False) -> None:
    """idle -> starting -> warming -> active."""
    _command(exchange, host, Command.START, as_json)


@app.command()
def stop(exchange: str, host: HostOption = None, as_json: JsonFlag = False) -> None:
    """active -> stopping -> stopped -> idle (stays registered)."""
    _command(exchange, host, Command.STOP, as_json)


@app.command()
def shutdown(exchange: str, host: HostOption = None, as_json: JsonFlag = False) -> None:
    """Stop if needed, release the claim; the instance's workflow completes."""
    _command(exchange, host, Command.SHUTDOWN, as_json)


@app.command()
def status(exchange: Annotated[str | None, typer.Argument()] = None, as_json: JsonFlag = False) -> None:
    """Status record(s): online/offline, state, heartbeat age, TTL left."""
    from rich.table import Table
    from rich.text import Text

    from perseus.network import StatusBoard, read_board
    from perseus.store.redis_store import RedisStore, make_client

    async def main(settings: Settings) -> StatusBoard:
        redis = make_client(str(settings.redis_url))
        try:
            return await _with_catalog(settings, lambda c: read_board(RedisStore(redis), c, exchange))
        finally:
            await redis.aclose()

    board = run(main)
    if as_json:
        print_json([v for v in board.instances] if exchange is None else board.instances[0])
        return
    table = Table("exchange", "state", "host", "IP", "epoch", "symbols", "heartbeat", "TTL", "last error")
    for view in board.instances:
        s = view.status
        if s is None:
            # Offline: show what the activity log last knew, dimmed, so it is not mistaken for live data.
            known = view.last_known
            last = f" (last {known.state or known.event} at {known.at})" if known else ""
            table.add_row(
                view.exchange_name,
                "[red]offline[/red]",
                f"[dim]{known.hostname or '-'}[/dim]" if known else "-",
                f"[dim]{known.ip or '-'}[/dim]" if known else "-",
                "-",
                "-",
                "-",
                "-",
                Text(
                    (view.offline_reason or "")
                    + last
                    + (f"; {known.last_error}" if known and known.last_error else "")
                ),
            )
            continue
        colour = {"fresh": "green", "late": "yellow", "stale": "red"}[view.heartbeat or "stale"]
        table.add_row(
            view.exchange_name,
            s.connection_state.value,
            s.hostname,
            s.ip_address or "-",
            str(s.epoch),
            str(s.symbol_count),
            f"[{colour}]{view.heartbeat_age_s:.1f}s ago[/{colour}]",
            f"{(view.ttl_ms or 0) / 1000:.1f}s",
            s.last_error or "",
        )
    out.print(table)
    err.print(f"server time {board.server_time.isoformat()}", highlight=False)


@app.command()
def handoff(
    exchange: str,
    to: Annotated[str, typer.Option("--to", help="Host of the live standby that takes over.")],
    from_host: Annotated[
        str | None, typer.Option("--from", help="Host now active (default: the one that is).")
    ] = None,
    shutdown_after: Annotated[
        bool, typer.Option("--shutdown", help="Shut the old instance down afterwards.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Planned switchover to a standby: notify, takeover, confirm; the old one becomes a standby."""
    from perseus import control
    from perseus.temporal import connect

    async def main(settings: Settings) -> CommandResult:
        client = await connect(settings)
        return await control.handoff(
            client,
            exchange=exchange,
            to_host=to,
            from_host=from_host,
            default_host=settings.host_name(),
            shutdown=shutdown_after,
        )

    result = run(main)
    if as_json:
        print_json(result)
    else:
        out.print(f"{exchange}: handed over to {to}: {result.detail}", highlight=False)
