"""Read views in the terminal: ``network`` (cards like the web page), ``log`` (the activity feed) and
``apikey`` (keys for the HTTP API). They read Redis and PostgreSQL directly through the same
functions as the API, so the terminal and the API never disagree and neither needs the other."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text

from perseus.cli.common import JsonFlag, _with_catalog, err, out, print_json, run
from perseus.config import Settings
from perseus.errors import ConfigError, PerseusError
from perseus.models import ApiKey, CreatedKey, Scope

T = TypeVar("T")

#: This module's commands, joined to ``perseus`` by ``perseus.cli.app``.
app = typer.Typer(rich_markup_mode=None)
apikey_app = typer.Typer(no_args_is_help=True, help="API keys for the HTTP API.")
app.add_typer(apikey_app, name="apikey")

#: Badge colours of DESIGN §4.
BADGE = {
    "offline": "red",
    "not running": "grey62",
    "active": "green",
    "starting": "blue",
    "warming": "yellow",
    "stopping": "yellow",
    "idle": "grey62",
    "stopped": "grey62",
}
HEARTBEAT = {"fresh": "green", "late": "yellow", "stale": "red"}
EVENT_STYLE = {"error": "red", "instance_lost": "red", "claim_conflict": "yellow", "state_transition": "cyan"}


async def _with_store(settings: Settings, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Open Redis and one PostgreSQL connection for one command, then close both."""
    from perseus.store.redis_store import RedisStore, make_client

    redis = make_client(str(settings.redis_url))
    try:
        return await _with_catalog(settings, lambda catalog: fn(RedisStore(redis), catalog))
    finally:
        await redis.aclose()


# --- network -------------------------------------------------------------------------------------


def _card(view: Any) -> Panel:
    """One exchange as on the network page."""
    from perseus.readmodel.network import InstanceView, readiness

    assert isinstance(view, InstanceView)
    s = view.status
    state = s.connection_state.value if s else "not running" if view.health == "not_running" else "offline"
    title = Text.assemble((view.display_name, "bold"), "  ", (f" {state} ", f"bold white on {BADGE[state]}"))
    lines: list[RenderableType] = []

    def row(label: str, value: str | Text) -> None:
        lines.append(Text.assemble((f"{label:<11} ", "dim"), value))

    if s is not None:
        row("host", s.hostname)
        row("IP", s.ip_address or "-")
        admin = s.admin_display_name or s.admin_email
        row("admin", f"{admin} <{s.admin_email}>" if s.admin_display_name and s.admin_email else admin or "-")
        row("symbols", str(s.symbol_count))
        age = view.heartbeat_age_s or 0.0
        colour = HEARTBEAT[view.heartbeat or "stale"]
        beat = Text(f"{age:.1f}s ago", style=colour)
        if view.late:
            beat.append("  (late)", style="yellow")
        row("heartbeat", beat)
        if view.running_for:
            row("uptime", f"Running for {view.running_for}")
        if s.last_error:
            row("last error", Text(f"{s.last_error} ({s.last_error_at or '?'})", style="red"))
    else:
        known = view.last_known
        if view.offline_reason:
            row("offline", Text(view.offline_reason, style="red"))
        if known is None:
            row("last known", Text("never ran: nothing in the activity log", style="dim"))
        else:
            row("last host", known.hostname or "-")
            row("last IP", known.ip or "-")
            row("last state", f"{known.state or '?'} ({known.event} at {known.at or '?'})")
            if known.admin_email:
                row("admin", known.admin_email)
            if known.last_error:
                row("last error", Text(f"{known.last_error} ({known.last_error_at or '?'})", style="red"))
    if view.paused:
        by = f" by {view.paused_by}" if view.paused_by else ""
        row(
            "paused",
            Text(f"until {view.paused_until or 'resumed'}{by}: no automatic failover", style="yellow"),
        )
    if not view.standbys:
        row("standbys", Text("no standby", style="dim"))
    for standby in view.standbys:
        beat = Text(f"{standby.heartbeat_age_s:.1f}s ago", style=HEARTBEAT[standby.heartbeat])
        ready = readiness(standby)
        ready = f", {ready}" if ready else ""
        row("standby", Text.assemble(f"{standby.hostname} (priority {standby.priority}{ready}) ", beat))
    return Panel(Group(*lines), title=title, title_align="left", border_style=BADGE[state], width=60)


def _cards(board: Any) -> RenderableType:
    cards = [_card(v) for v in board.instances]
    footer = Text(f"server time {board.server_time.isoformat()}", style="dim")
    return Group(Columns(cards) if cards else Text("no active exchanges"), footer)


@app.command()
def network(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 5.0,
    times: Annotated[int, typer.Option("--times", hidden=True, help="Stop after N refreshes.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The network view: a card per active exchange (state, host, IP, admin, heartbeat, uptime)."""
    from rich.live import Live

    from perseus.readmodel.network import StatusBoard, read_board

    if not interval > 0:
        err.print(
            f"error: --interval must be greater than 0, got {interval:g}", highlight=False, markup=False
        )
        raise typer.Exit(1)

    async def main(settings: Settings) -> None:
        async def board() -> StatusBoard:
            return await _with_store(settings, lambda store, catalog: read_board(store, catalog))

        if not watch:
            shown = await board()
            if as_json:
                print_json(shown)
            else:
                out.print(_cards(shown))
            return
        frames = 0
        # A terminal gets a live, in-place view; a pipe gets one frame after another.
        live = Live(console=out, auto_refresh=False) if out.is_terminal and not as_json else None
        with live if live is not None else contextlib.nullcontext():
            while True:
                shown = await board()
                if as_json:
                    print_json(shown)
                elif live is not None:
                    live.update(_cards(shown), refresh=True)
                else:
                    # A separator that fits any pipe's reader (the piped console is very wide).
                    out.print(Rule(shown.server_time.isoformat(), align="left"), width=100)
                    out.print(_cards(shown))
                frames += 1
                if times and frames >= times:
                    return
                await asyncio.sleep(interval)

    run(main)


# --- log -----------------------------------------------------------------------------------------


def _what(entry: dict[str, str]) -> str:
    event = entry.get("event", "")
    if event == "state_transition":
        return f"{entry.get('fromState', '?')} -> {entry.get('toState', '?')}"
    if event == "command_refused":
        return f"{entry.get('command', '?')} refused: {entry.get('reason', '')}"
    if event == "error":
        # A standby's error (its warm-up) is in no state of the exchange: the field is empty.
        state = entry.get("state")
        return f"{entry.get('error', '')}" + (f" (in {state})" if state else "")
    return entry.get("detail", "")


@app.command()
def log(
    exchange: Annotated[str | None, typer.Argument(help="Exchange name or id; omitted: all, merged.")] = None,
    count: Annotated[int, typer.Option("--count", help="Entries per page (1..200).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Start after this (a nextCursor).")] = None,
    event: Annotated[
        list[str] | None, typer.Option("--event", help="Only this event type (repeatable).")
    ] = None,
    admin_email: Annotated[
        str | None, typer.Option("--admin-email", help="Only transitions for this admin.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only what this actor caused or tried (api:NAME or NAME).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The activity log, newest first; follow the printed cursor for older entries."""
    from perseus.readmodel.log import ActivityPage, read_activity

    async def main(settings: Settings) -> ActivityPage:
        return await _with_store(
            settings,
            lambda store, catalog: read_activity(
                store,
                catalog,
                exchange=exchange,
                count=count,
                cursor=cursor,
                events=event or [],
                admin=admin_email,
                actor=actor,
            ),
        )

    page = run(main)
    if as_json:
        print_json(page)
        return
    # One line per entry in aligned columns (not a boxed table): it stays greppable in a pipe and
    # never wraps a cell. Every cell is data, so it goes in as plain Text, never as markup.
    rows = [
        [
            (entry.get("timestamp", "") or "-", "dim"),
            (entry.get("exchangeName", ""), ""),
            (entry.get("event", ""), EVENT_STYLE.get(entry.get("event", ""), "")),
            (_what(entry), ""),
            (f"host={entry['hostname']}" if entry.get("hostname") else "", "dim"),
            (f"ip={entry['ip']}" if entry.get("ip") else "", "dim"),
            (f"admin={entry['adminEmail']}" if entry.get("adminEmail") else "", "dim"),
            (f"by={entry['actor']}" if entry.get("actor") else "", "dim"),
            (entry.get("id", ""), "dim"),
        ]
        for entry in page.entries
    ]
    # Columns empty on every row of the page take no room.
    shown = [i for i in range(9) if any(row[i][0] for row in rows)]
    widths = {i: max(len(row[i][0]) for row in rows) for i in shown}
    for row in rows:
        line = Text()
        for n, i in enumerate(shown):
            text, style = row[i]
            last = n == len(shown) - 1
            line.append(text if last else text.ljust(widths[i]) + "  ", style=style)
        line.rstrip()
        out.print(line, soft_wrap=True)
    if not page.entries:
        err.print("no entries", highlight=False)
    if page.next_cursor:
        err.print(f"older entries: --cursor {page.next_cursor}", highlight=False)


# --- apikey --------------------------------------------------------------------------------------


_EXPIRY_RE = re.compile(r"^(\d{1,5})([mhd])$")


def parse_expiry(text: str) -> timedelta:
    """``--expires-in``: a number and m/h/d (``30d``), more than 0 and at most ten years."""
    match = _EXPIRY_RE.match(text.strip().lower())
    if not match:
        raise ConfigError(f"invalid --expires-in {text!r}: use a number and a unit m/h/d, e.g. 30d or 12h")
    delta = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[match[2]]: int(match[1])})
    if not timedelta(0) < delta <= timedelta(days=3650):
        raise ConfigError(f"--expires-in {text!r} must be longer than 0 and at most 3650d")
    return delta


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the key: the actor its commands carry.")],
    scope: Annotated[
        Scope, typer.Option("--scope", help="read: every GET; operate: also commands; admin: everything.")
    ] = Scope.READ,
    exchange: Annotated[
        list[str] | None,
        typer.Option("--exchange", help="Limit an operate key's commands to this exchange (repeatable)."),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", metavar="DURATION", help="e.g. 30d, 12h, 90m.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print it (it is shown once here: only its keyed hash is stored)."""

    async def main(settings: Settings) -> CreatedKey:
        if not name.strip() or len(name) > 100 or not _KEY_NAME_RE.match(name):
            raise ConfigError(
                f"invalid key name {name[:100]!r}: 1 to 100 letters, digits, '.', '_', '-', '@' or ':'"
            )
        lifetime = parse_expiry(expires_in) if expires_in is not None else None

        async def create(catalog: Any) -> CreatedKey:
            # Names are the actors of the audit trail: two live keys may not share one.
            if await catalog.api_key_exists(name):
                raise PerseusError(
                    f"an active API key named {name!r} exists: revoke it first or pick another name"
                )
            names = sorted({(await catalog.exchange(x)).name for x in exchange or []})
            expires = datetime.now(UTC) + lifetime if lifetime else None
            key = await catalog.create_api_key(name, scope=scope, exchanges=names, expires_at=expires)
            return CreatedKey(name=name, key=key, scope=scope, exchanges=names, expires_at=expires)

        return await _with_catalog(settings, create)

    created = run(main)
    if as_json:
        print_json(created)
    else:
        out.print(created.key, highlight=False)


@apikey_app.command("list")
def apikey_list(as_json: JsonFlag = False) -> None:
    """Every key: name, scope, exchanges, created, expires, last used, revoked. Never the key."""

    async def main(settings: Settings) -> list[ApiKey]:
        keys: list[ApiKey] = await _with_catalog(settings, lambda catalog: catalog.api_keys())
        return keys

    keys = run(main)
    if as_json:
        print_json({"keys": [k.model_dump(mode="json", by_alias=True) for k in keys]})
        return
    for k in keys:
        state = "revoked" if k.revoked else "active"
        out.print(
            f"{k.name}  {k.scope.value}  exchanges={','.join(k.exchanges) or '*'}"
            f"  created={_when(k.created_at)}  expires={_when(k.expires_at)}"
            f"  lastUsed={_when(k.last_used_at)}  {state}",
            highlight=False,
        )
    if not keys:
        err.print("no keys", highlight=False)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at else "-"


_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9._@:-]+$")


@apikey_app.command("revoke")
def apikey_revoke(
    name_or_key: Annotated[str, typer.Argument(help="A key's name (or the key itself).")],
) -> None:
    """Revoke an API key: it is refused from the next request on."""

    async def main(settings: Settings) -> int:
        revoked: int = await _with_catalog(settings, lambda catalog: catalog.revoke_api_keys(name_or_key))
        if not revoked:
            raise PerseusError(f"no active API key named or equal to {name_or_key!r}")
        return revoked

    revoked = run(main)
    err.print(f"revoked {revoked} key(s)", highlight=False)
