"""``register``, ``start``, ``stop``, ``shutdown``, ``status``, ``handoff``.

Every command first resolves the exchange in the catalog (an unknown one is "not found", exit 4,
with the known names listed), so no hint ever names an exchange that does not exist. "The active
instance" is the workflow the exchange's status key names (``workflowId``), not whatever search
attributes say: they lag behind a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from perseus.cli.common import (
    HostOption,
    JsonFlag,
    TimeoutOption,
    WaitOption,
    _with_catalog,
    err,
    out,
    print_json,
    run,
    waiting,
)
from perseus.config import Settings
from perseus.core.lifecycle import Command, Role
from perseus.errors import ConfigError
from perseus.models import CommandResult, Exchange, FailsafeView, RegistrationResult
from perseus.temporal import web_ui_base
from perseus.timing import FAILSAFE_VIEW_TIMEOUT_S

if TYPE_CHECKING:
    from perseus.client.control import CommandSent
    from perseus.client.operate import Operator

T = TypeVar("T")

ExchangeArgument = Annotated[
    str, typer.Argument(metavar="EXCHANGE", help="Exchange name or id from the catalog.")
]


#: This module's commands, joined to ``perseus`` by ``perseus.cli.app``.
app = typer.Typer(rich_markup_mode=None)


async def _resolve(settings: Settings, exchange: str) -> Exchange:
    """The catalog's exchange for a name or id; UnknownExchange (exit 4) lists the known ones. A name
    that cannot be one (a quote, a space) is refused before it reaches any query."""
    from perseus.client.control import check_exchange

    if not exchange.isdigit():
        check_exchange(exchange)
    return await _with_catalog(settings, lambda catalog: catalog.exchange(exchange))


async def _holder(settings: Settings, exchange_id: int) -> str | None:
    """The workflowId in the exchange's status key: the instance that holds the claim now."""
    from perseus.client.control import holder_workflow_id
    from perseus.store.redis_store import RedisStore, make_client

    redis = make_client(str(settings.redis_url))
    try:
        return await holder_workflow_id(RedisStore(redis), exchange_id)
    finally:
        await redis.aclose()


async def _with_operator(settings: Settings, fn: Callable[[Operator], Awaitable[T]]) -> T:
    """Run ``fn`` with Redis, one PostgreSQL connection and Temporal open for one command, as this
    machine's operator (``cli:<user>@<machine>``)."""
    from perseus.client.actors import cli_actor
    from perseus.client.operate import Operator
    from perseus.store.redis_store import RedisStore, make_client
    from perseus.temporal import connect

    async def with_catalog(catalog: Any) -> T:
        redis = make_client(str(settings.redis_url))
        try:
            return await fn(
                Operator(
                    lambda: connect(settings), RedisStore(redis), catalog, settings.host_name(), cli_actor()
                )
            )
        finally:
            await redis.aclose()

    return await _with_catalog(settings, with_catalog)


ActorOption = Annotated[
    str | None,
    typer.Option(
        "--actor",
        metavar="NAME",
        help="API mode with an admin key: record NAME as who asked (default: the key's name).",
    ),
]


def _direct_actor(actor: str | None) -> None:
    """``--actor`` is an admin key's privilege: without the API there is no key to check."""
    if actor is not None:
        raise ConfigError(
            "--actor needs API mode with an admin key (PERSEUS_API_URL, PERSEUS_API_KEY); "
            "a direct command is recorded as cli:<user>@<machine>"
        )


def _timeout(timeout: float | None) -> float:
    """The wait for this call: ``--timeout`` checked before anything is asked, or the default."""
    from perseus.client.control import ANSWER_TIMEOUT_S, check_timeout

    return ANSWER_TIMEOUT_S if timeout is None else check_timeout(timeout)


@app.command()
def register(
    exchange: ExchangeArgument,
    host: HostOption = None,
    admin_email: Annotated[
        str | None, typer.Option("--admin-email", metavar="EMAIL", help="Admin user's e-mail.")
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            metavar="SECONDS",
            help="Seconds between heartbeats (TTL is 3x). Default PERSEUS_HEARTBEAT_INTERVAL.",
        ),
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it right after registering.")] = False,
    standby: Annotated[
        bool, typer.Option("--standby", help="Register a standby: no claim until promoted.")
    ] = False,
    priority: Annotated[
        int, typer.Option("--priority", metavar="N", help="Standby priority: higher is promoted first.")
    ] = 0,
    exec_command: Annotated[
        str | None,
        typer.Option(
            "--exec",
            metavar="COMMAND",
            help="Run this command on the host while the instance holds the exchange (split like a "
            "shell would, run without one); it gets PERSEUS_EXCHANGE, PERSEUS_EXCHANGE_ID, "
            "PERSEUS_EPOCH, PERSEUS_INSTANCE_ID.",
        ),
    ] = None,
    ready_line: Annotated[
        str | None,
        typer.Option(
            "--ready-line", metavar="REGEX", help="Ready once a line of its output matches this regex."
        ),
    ] = None,
    ready_url: Annotated[
        str | None,
        typer.Option("--ready-url", metavar="URL", help="Ready once this http(s) URL answers 2xx."),
    ] = None,
    ready_timeout: Annotated[
        float | None,
        typer.Option(
            "--ready-timeout", metavar="SECONDS", help="Seconds to become ready (default 30, max 110)."
        ),
    ] = None,
    stop_grace: Annotated[
        float | None,
        typer.Option(
            "--stop-grace", metavar="SECONDS", help="Seconds from SIGTERM to SIGKILL (default 5, max 10)."
        ),
    ] = None,
    restart: Annotated[
        str | None,
        typer.Option(
            "--restart", metavar="POLICY", help="no | on-failure: start again, with backoff, after a crash."
        ),
    ] = None,
    health_url: Annotated[
        str | None,
        typer.Option(
            "--health-url", metavar="URL", help="Probed every heartbeat while active (default: ready URL)."
        ),
    ] = None,
    health_failures: Annotated[
        int | None,
        typer.Option(
            "--health-failures", metavar="N", help="Failed checks in a row that make it unhealthy (3)."
        ),
    ] = None,
    on_unhealthy: Annotated[
        str | None,
        typer.Option(
            "--on-unhealthy", metavar="POLICY", help="restart | failover, for an unhealthy connector."
        ),
    ] = None,
    warm: Annotated[
        bool,
        typer.Option("--warm", help="A standby keeps its connector warm; promoted by ACTIVATE <epoch>."),
    ] = False,
    active_timeout: Annotated[
        float | None,
        typer.Option(
            "--active-timeout",
            metavar="SECONDS",
            help="Seconds for ACTIVE after ACTIVATE (default 10, max 60).",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="NAME=VALUE",
            help="An extra variable for the --exec command's environment (repeatable): the child "
            "inherits only an allow-list of the worker's, never its PERSEUS_* settings.",
        ),
    ] = None,
    failsafe: Annotated[
        bool,
        typer.Option(
            "--failsafe",
            help="Keep the active connector through a Redis outage on promises from every other "
            'instance of the exchange (docs/design.md, "Failsafe"). Every instance of the exchange '
            "must be registered with it.",
        ),
    ] = False,
    timeout: TimeoutOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an instance of EXCHANGE on a host: claims the exchange (state idle), or waits as a standby."""
    from perseus.cli.connector_output import connector_spec
    from perseus.client import control
    from perseus.temporal import connect

    async def main(settings: Settings) -> RegistrationResult:
        spec = connector_spec(
            exec_command=exec_command,
            ready_line=ready_line,
            ready_url=ready_url,
            ready_timeout=ready_timeout,
            stop_grace=stop_grace,
            restart=restart,
            health_url=health_url,
            health_failures=health_failures,
            on_unhealthy=on_unhealthy,
            warm=warm,
            active_timeout=active_timeout,
            env=env or [],
        )
        interval = heartbeat_interval if heartbeat_interval is not None else settings.heartbeat_interval
        try:
            control.check_heartbeat_interval(interval)
        except ConfigError as exc:
            raise ConfigError(f"--heartbeat-interval: {exc}") from None
        control.check_exchange(exchange)
        wait_s = _timeout(timeout)

        # Refuse unknown exchanges and admins before anything is started (lists the known ones).
        async def check(catalog: object) -> Exchange:
            found: Exchange = await catalog.exchange(exchange)  # type: ignore[attr-defined]
            if admin_email:
                await catalog.admin(admin_email)  # type: ignore[attr-defined]
            return found

        known = await _with_catalog(settings, check)
        from perseus.client.actors import cli_actor

        where = host or settings.host_name()
        client = await connect(settings)
        with waiting(f"registering {known.name} on {where}", as_json=as_json):
            return await control.register(
                client,
                exchange=known.name,
                host=where,
                admin_email=admin_email,
                heartbeat_interval_s=interval,
                start=start,
                standby=standby,
                priority=priority,
                connector=spec,
                timeout_s=wait_s,
                actor=cli_actor(),
                failsafe=failsafe,
            )

    result = run(main)
    if as_json:
        print_json(result)
    else:
        out.print(
            f"registered {result.exchange} on {result.host} ({result.ip_address or 'IP unknown'}): "
            + (
                f"standby {result.instance_id}, waiting"
                if result.role is Role.STANDBY
                else f"epoch {result.epoch}, state {result.state.value}"
            )
            + f", workflow {result.workflow_id}"
        )
        if start:
            out.print("start requested; follow it with: perseus status " + result.exchange)


def _command(
    exchange: str,
    host: str | None,
    command: Command,
    as_json: bool,
    wait: bool,
    timeout: float | None,
    actor: str | None = None,
) -> None:

    async def main(settings: Settings) -> tuple[str, CommandResult | CommandSent]:
        from perseus.client import operate

        wait_s = _timeout(timeout)

        from perseus.client import remote

        if remote.enabled(settings):
            return await remote.command(
                settings, exchange, command, host=host, wait=wait, timeout_s=wait_s, actor=actor
            )
        _direct_actor(actor)

        async def go(op: operate.Operator) -> tuple[str, CommandResult | CommandSent]:
            with (
                waiting(f"{command.value} {exchange}", as_json=as_json) if wait else contextlib.nullcontext()
            ):
                known, result = await operate.command(
                    op, exchange, command, host=host, wait=wait, timeout_s=wait_s
                )
            return known.name, result

        return await _with_operator(settings, go)

    name, result = run(main)
    if as_json:
        print_json(result)
    elif isinstance(result, CommandResult):
        path = " -> ".join([result.from_state.value, *(s.value for s in result.transitions)])
        out.print(f"{name}: {command.value} done ({path})")
    else:
        state = f"from {result.state.value}" if result.state else "not validated: no worker answered"
        out.print(
            f"{name}: {command.value} sent to {result.workflow_id} (signal {result.signal}, {state}); "
            f"follow it with: perseus status {name}"
        )


@app.command()
def start(
    exchange: ExchangeArgument,
    host: HostOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    actor: ActorOption = None,
    as_json: JsonFlag = False,
) -> None:
    """idle -> starting -> warming -> active."""
    _command(exchange, host, Command.START, as_json, wait, timeout, actor)


@app.command()
def stop(
    exchange: ExchangeArgument,
    host: HostOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    actor: ActorOption = None,
    as_json: JsonFlag = False,
) -> None:
    """active -> stopping -> stopped -> idle (stays registered)."""
    _command(exchange, host, Command.STOP, as_json, wait, timeout, actor)


@app.command()
def shutdown(
    exchange: ExchangeArgument,
    host: HostOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    actor: ActorOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Stop if needed, release the claim; the instance's workflow completes."""
    _command(exchange, host, Command.SHUTDOWN, as_json, wait, timeout, actor)


@app.command()
def status(
    exchange: Annotated[str | None, typer.Argument()] = None,
    watch: Annotated[
        float | None,
        typer.Option("--watch", metavar="SECONDS", help="Redraw every SECONDS until Ctrl-C (like `watch`)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """One row per instance, like ``patronictl list``: the active one, then its standbys by priority,
    with state, epoch, heartbeat age and TTL left. Heartbeat colours follow each instance's own
    interval: yellow past 1.5 intervals, red past 2 (the renew deadline). With an EXCHANGE, each
    instance's Temporal Web UI link is listed too (``webUi`` in ``--json``)."""
    import time

    from perseus.readmodel.network import StatusBoard, read_board
    from perseus.store.redis_store import RedisStore, make_client

    async def main(settings: Settings) -> tuple[StatusBoard, str]:
        if watch is not None and not (0.2 <= watch <= 3600):
            raise ConfigError(f"--watch takes 0.2 to 3600 seconds, got {watch:g}")
        if watch is not None and as_json:
            raise ConfigError("--watch redraws a table; it does not go with --json")
        redis = make_client(str(settings.redis_url))
        try:
            board = await _with_catalog(settings, lambda c: read_board(RedisStore(redis), c, exchange))
        finally:
            await redis.aclose()
        if exchange is not None and board.instances:
            board.instances[0].failsafe = await _failsafe(settings, board.instances[0].exchange_name)
        return board, web_ui_base(settings.temporal_ui_url)

    board, ui = run(main)
    if as_json:
        items = [_with_links(v.model_dump(mode="json", by_alias=True), ui) for v in board.instances]
        print_json(items if exchange is None else items[0])
        return
    if watch is not None:
        # Ctrl-C ends the view at once, whatever it is doing: a redraw interrupted mid-read would
        # otherwise wait for its drivers' cancellation clean-up (seen to take over 20 s on a loaded
        # machine). A read-only view has nothing to undo; the OS closes its connections.
        signal.signal(signal.SIGINT, _leave_at_once)
    while True:
        out.print(_status_table(board, ui if exchange else None))
        err.print(f"server time {board.server_time.isoformat()}")
        if watch is None:
            return
        time.sleep(watch)
        board, ui = run(main)
        out.clear()


async def _failsafe(settings: Settings, exchange: str) -> FailsafeView | None:
    """The exchange's failsafe, from Temporal (its roster and its holder's lease): best effort — a
    Temporal that does not answer in a few seconds leaves it out of the view."""
    from perseus.client import control
    from perseus.temporal import connect

    try:
        async with asyncio.timeout(FAILSAFE_VIEW_TIMEOUT_S):
            client = await connect(settings, read_only=True)
            return await control.failsafe_view(client, exchange)
    except Exception:  # noqa: BLE001 - a view without the failsafe's line rather than no view
        return None


def _leave_at_once(signum: int, frame: object) -> None:
    """SIGINT in ``status --watch``: flush what was drawn and exit now (status 0, as ``watch`` does)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _with_links(item: dict[str, Any], ui: str) -> dict[str, Any]:
    """Each instance's Temporal Web UI link: the holder's workflow (from the status key) and the
    standbys' (one workflow per exchange × host)."""
    status = item.get("status") or {}
    item["webUi"] = f"{ui}/{status['workflowId']}" if status.get("workflowId") else None
    for standby in item.get("standbys", []):
        standby["webUi"] = f"{ui}/instance-{item['exchangeName']}-{standby['host']}"
    return item


def _status_table(board: Any, ui: str | None) -> Any:
    from rich.table import Table
    from rich.text import Text

    from perseus import version as release
    from perseus.readmodel.network import readiness

    colours = {"fresh": "green", "late": "yellow", "stale": "red"}
    # A host behind the newest release on the board says so in its role: an upgrade not finished.
    seen = [v.status.perseus_version for v in board.instances if v.status is not None]
    newest_seen = release.newest(seen + [sb.version for v in board.instances for sb in v.standbys])

    def behind(running: str | None) -> str:
        return f", runs {running} (older)" if release.is_older(running, newest_seen) else ""

    columns = ["exchange", "role", "host", "IP", "state", "epoch", "heartbeat", "TTL left", "symbols"]
    table = Table(*columns, "last error", *(["Web UI"] if ui else []))
    for view in board.instances:
        s = view.status
        link: list[Any] = []
        if s is not None:
            colour = colours[view.heartbeat or "stale"]
            link = [Text(f"{ui}/{s.workflow_id}")] if ui else []
            health = "" if s.healthy is None else (" healthy" if s.healthy else " unhealthy")
            table.add_row(
                Text(view.exchange_name),
                "active" + behind(s.perseus_version),
                Text(s.hostname),
                Text(s.ip_address or "-"),
                Text(s.connection_state.value + health, style="red" if s.healthy is False else ""),
                str(s.epoch),
                Text(f"{view.heartbeat_age_s:.1f}s ago", style=colour),
                f"{(view.ttl_ms or 0) / 1000:.1f}s",
                str(s.symbol_count),
                Text(s.last_error or ""),
                *link,
            )
        else:
            # No live record. Never ran: a neutral row. Ran before: offline, with what the activity log
            # last knew, dimmed so it is not mistaken for live data.
            known = view.last_known
            never = view.health == "not_running"
            state = Text("not running" if never else "offline", style="grey62" if never else "red")
            if known:
                state.append(f" (last {known.state or known.event} at {known.at})", style="dim")
            error = view.offline_reason or (known.last_error if known else None) or ""
            table.add_row(
                Text(view.exchange_name),
                "-",
                Text(known.hostname or "-", style="dim") if known else "-",
                Text(known.ip or "-", style="dim") if known else "-",
                state,
                "-",
                "-",
                "-",
                "-",
                Text(error),
                *([""] if ui else []),
            )
        for standby in view.standbys:
            ready = readiness(standby)
            role = f"standby (priority {standby.priority})" + (f", {ready}" if ready else "")
            role += behind(standby.version)
            if view.paused:  # it keeps watching, but takes nothing over by itself
                role += f", paused until {view.paused_until or 'resumed'}"
            table.add_row(
                Text(view.exchange_name),
                role,
                Text(standby.hostname),
                Text(standby.ip_address or "-"),
                "standby",
                "-",
                Text(f"{standby.heartbeat_age_s:.1f}s ago", style=colours[standby.heartbeat]),
                f"{standby.ttl_ms / 1000:.1f}s",
                "-",
                "",
                *([Text(f"{ui}/instance-{view.exchange_name}-{standby.host}")] if ui else []),
            )
    paused = [
        f"{v.exchange_name} paused until {v.paused_until or 'resumed'}"
        + (f" by {v.paused_by}" if v.paused_by else "")
        for v in board.instances
        if v.paused
    ]
    if paused:  # shown even for an exchange with no standby line to carry it
        table.caption = Text("; ".join(paused) + ": no automatic failover", style="yellow")
    failsafe = [f"{v.exchange_name}: {v.failsafe.line()}" for v in board.instances if v.failsafe is not None]
    if failsafe:
        lines = "; ".join(failsafe)
        table.caption = Text(f"{table.caption}\n{lines}" if table.caption else lines, style="yellow")
    return table


@app.command()
def handoff(
    exchange: ExchangeArgument,
    to: Annotated[
        str, typer.Option("--to", metavar="HOST", help="Host of the live standby that takes over.")
    ],
    from_host: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="HOST", help="Host now active (default: the one the status key names)."
        ),
    ] = None,
    shutdown_after: Annotated[
        bool, typer.Option("--shutdown", help="Shut the old instance down afterwards.")
    ] = False,
    timeout: TimeoutOption = None,
    actor: ActorOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Planned switchover to a standby: notify, takeover, confirm; the old one becomes a standby."""

    async def main(settings: Settings) -> tuple[str, CommandResult]:
        from perseus.client import operate

        wait_s = _timeout(timeout)

        from perseus.client import remote

        if remote.enabled(settings):
            with waiting(f"handing {exchange} over to {to}", as_json=as_json):
                return await remote.handoff(
                    settings,
                    exchange,
                    to_host=to,
                    from_host=from_host,
                    shutdown=shutdown_after,
                    timeout_s=wait_s,
                    actor=actor,
                )
        _direct_actor(actor)

        async def go(op: operate.Operator) -> tuple[str, CommandResult]:
            with waiting(f"handing {exchange} over to {to}", as_json=as_json):
                known, result = await operate.handoff(
                    op, exchange, to_host=to, from_host=from_host, shutdown=shutdown_after, timeout_s=wait_s
                )
            return known.name, result

        return await _with_operator(settings, go)

    name, result = run(main)
    if as_json:
        print_json(result)
    else:
        out.print(f"{name}: handed over to {to}: {result.detail}")
