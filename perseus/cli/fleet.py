"""``perseus fleet apply|diff|status`` and ``perseus drain``: the declared fleet (DESIGN §2.7)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.text import Text

from perseus.cli.common import JsonFlag, err, out, print_json, run
from perseus.config import Settings
from perseus.fleet.file import read_fleet_file

#: This module's commands, joined to ``perseus`` by ``perseus.cli.app``.
app = typer.Typer(rich_markup_mode=None)
fleet_app = typer.Typer(
    no_args_is_help=True, help="The declared fleet: placements in a file, enrolled by hosts."
)
app.add_typer(fleet_app, name="fleet")

T = TypeVar("T")

FileArg = Annotated[Path, typer.Argument(help="The fleet file (TOML).", dir_okay=False)]


async def _with_clients(
    settings: Settings, fn: Callable[[Any, Any, Any], Awaitable[T]], *, read_only: bool = False
) -> T:
    """Open PostgreSQL, Redis and Temporal for one command, and close them afterwards. ``read_only``:
    a view, which needs no payload key (as ``perseus status`` needs none)."""
    from perseus.store import db
    from perseus.store.redis_store import RedisStore, make_client
    from perseus.temporal import connect

    conn = await db.connect(settings.database_url)
    async with conn:
        catalog = db.Catalog(db.OneConnection(conn))
        redis = make_client(str(settings.redis_url))
        try:
            client = await connect(settings, read_only=read_only)
            return await fn(client, catalog, RedisStore(redis))
        finally:
            await redis.aclose()


async def _read(catalog: Any, text: str) -> list[Any]:
    """The file's placements, validated whole (catalog names and admins included)."""
    from perseus.fleet.enrol import check_admins
    from perseus.fleet.file import parse_fleet

    known = [e.name for e in await catalog.exchanges(active_only=True)]
    placements = parse_fleet(text, known)
    await check_admins(catalog, placements)
    return placements


def _print_actions(actions: list[Any], *, verb: str) -> None:
    changes = [a for a in actions if a.changes]
    for action in actions:
        mark = "- " if action.kind in ("shutdown", "forget") else "+ " if action.changes else "  "
        out.print(mark + action.describe(), highlight=False, markup=False)
    if not changes and not _differs(actions):
        out.print(f"nothing to {verb}: the fleet runs as declared", highlight=False)


def _differs(actions: list[Any]) -> bool:
    """An instance runs with a failsafe the file no longer gives it: the fleet does not run as
    declared, though apply changes nothing about it (it says what to do instead)."""
    return any(a.kind == "failsafe-differs" for a in actions)


@fleet_app.command("apply")
def apply(
    file: FileArg,
    prune: Annotated[
        bool, typer.Option("--prune", help="Shut down instances the file no longer names.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Store the file's placements and enrol what can run now (first live host active, the rest standbys)."""
    from perseus.fleet.enrol import EnrolReport, apply_fleet
    from perseus.fleet.file import Change

    async def main(settings: Settings) -> tuple[list[Any], EnrolReport]:
        text = read_fleet_file(file)  # bounded, before any server is contacted
        from perseus.client import remote

        if remote.enabled(settings):
            answer = await remote.fleet(settings, text, dry_run=False, prune=prune)
            report = EnrolReport(done=answer["done"], waiting=answer["waiting"], failed=answer["failed"])
            return [Change.model_validate(a) for a in answer["actions"]], report

        async def go(client: Any, catalog: Any, store: Any) -> tuple[list[Any], EnrolReport]:
            from perseus.client.actors import cli_actor

            placements = await _read(catalog, text)
            return await apply_fleet(client, catalog, store, placements, prune=prune, actor=cli_actor())

        return await _with_clients(settings, go)

    actions, report = run(main)
    if as_json:
        print_json(
            {
                "actions": [a.model_dump(mode="json") for a in actions],
                "done": report.done,
                "waiting": report.waiting,
                "failed": report.failed,
            }
        )
    else:
        for line in report.done:
            out.print(line, highlight=False, markup=False)
        for line in report.waiting:
            out.print(line, highlight=False, markup=False)
        if not [a for a in actions if a.changes] and not _differs(actions):
            out.print("nothing to change: the fleet runs as declared", highlight=False)
    for line in report.failed:
        err.print(f"error: {line}", highlight=False, markup=False)
    if report.failed:
        raise typer.Exit(1)


@fleet_app.command("diff")
def diff(
    file: FileArg,
    prune: Annotated[bool, typer.Option("--prune", help="Include what --prune would shut down.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print what `fleet apply` would change; changes nothing."""
    from perseus.fleet.enrol import plan_fleet
    from perseus.fleet.file import Change

    async def main(settings: Settings) -> list[Any]:
        text = read_fleet_file(file)  # bounded, before any server is contacted
        from perseus.client import remote

        if remote.enabled(settings):
            answer = await remote.fleet(settings, text, dry_run=True, prune=prune)
            return [Change.model_validate(a) for a in answer["actions"]]

        async def go(client: Any, catalog: Any, store: Any) -> list[Any]:
            placements = await _read(catalog, text)
            actions, _ = await plan_fleet(client, catalog, store, placements, prune=prune)
            return actions

        return await _with_clients(settings, go, read_only=True)

    actions = run(main)
    if as_json:
        print_json([a.model_dump(mode="json") for a in actions])
    else:
        _print_actions(actions, verb="apply")


@fleet_app.command("status")
def status(as_json: JsonFlag = False) -> None:
    """Per exchange: desired hosts, who is active, who stands by, and the drift."""
    from perseus.fleet.enrol import fleet_status

    async def main(settings: Settings) -> list[Any]:
        return await _with_clients(settings, fleet_status, read_only=True)

    views = run(main)
    if as_json:
        print_json(views)
        return
    out.print(fleet_table(views))


def fleet_table(views: list[Any]) -> Any:
    """``fleet status`` as a table. Styles are given as styles: the console reads no markup, so a
    "[red]" in a string would be printed as it is (data and labels alike)."""
    from rich.table import Table

    table = Table("exchange", "desired hosts", "active", "standbys", "drift")
    for v in views:
        table.add_row(
            Text(v.exchange),
            Text(", ".join(v.desired_hosts)) if v.desired_hosts else Text("not in the fleet", style="dim"),
            Text(f"{v.active_host} ({v.active_state})") if v.active_host else Text("none", style="red"),
            Text(", ".join(v.standbys) or "-"),
            Text("; ".join(v.drift)) if v.drift else Text("none", style="green"),
        )
    return table


@app.command()
def drain(
    host: Annotated[str, typer.Argument(help="The host to empty (for an upgrade or a reboot).")],
    force: Annotated[
        bool, typer.Option("--force", help="Shut down exchanges that have no standby instead of refusing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Hand every instance active on HOST to its best live standby, one exchange at a time."""
    from perseus.fleet.enrol import drain_host
    from perseus.keys import valid_host

    if not valid_host(host):
        err.print(f"error: invalid host name {host!r}", highlight=False, markup=False)
        raise typer.Exit(1)

    async def main(settings: Settings) -> list[str]:
        from perseus.client import remote
        from perseus.client.actors import cli_actor

        if remote.enabled(settings):
            return await remote.drain(settings, host, force=force)

        async def go(client: Any, catalog: Any, store: Any) -> list[str]:
            return await drain_host(client, catalog, store, host, force=force, actor=cli_actor())

        return await _with_clients(settings, go)

    done = run(main)
    if as_json:
        print_json(done)
        return
    for line in done:
        out.print(line, highlight=False, markup=False)
    if not done:
        out.print(f"nothing to drain: {host} holds no exchange", highlight=False)
