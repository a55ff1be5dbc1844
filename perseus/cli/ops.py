"""``pause`` and ``resume`` (maintenance mode for an exchange, ``perseus.core.pause``) and ``hosts``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from perseus.cli.common import JsonFlag, err, error_line, out, print_json, run
from perseus.cli.views import _with_store
from perseus.client.actors import cli_actor
from perseus.config import Settings
from perseus.errors import ConfigError, PerseusError

ExchangeArgument = Annotated[
    str, typer.Argument(metavar="EXCHANGE", help="Exchange name or id from the catalog.")
]


#: This module's commands, joined to ``perseus`` by ``perseus.cli.app``.
app = typer.Typer(rich_markup_mode=None)


@app.command()
def pause(
    exchange: ExchangeArgument,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for", metavar="DURATION", help="How long: 90s, 30m, 2h, 1d (default 30m, at most 7d)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Maintenance mode: no automatic promotion or claim-over until resumed or the deadline passes.
    The active instance keeps running; standbys keep watching; a start or handoff still works."""
    from perseus.client import maintenance, remote
    from perseus.core.pause import parse_span
    from perseus.timing import DEFAULT_PAUSE_S

    async def main(settings: Settings) -> Any:
        try:
            seconds = DEFAULT_PAUSE_S if for_ is None else parse_span(for_)
        except ValueError as exc:
            raise ConfigError(f"--for: {exc}") from None
        if remote.enabled(settings):  # API mode: the key's name is the actor
            return maintenance.PauseView.model_validate(await remote.pause(settings, exchange, for_s=seconds))
        return await _with_store(
            settings,
            lambda store, catalog: maintenance.pause(
                store, catalog, exchange, actor=cli_actor(), for_s=seconds
            ),
        )

    view = run(main)
    if as_json:
        print_json(view.model_dump(mode="json", by_alias=True))
        return
    out.print(
        f"{view.exchange} paused until {view.paused_until}: no automatic failover "
        f"(`perseus resume {view.exchange}` ends it)"
    )


@app.command()
def resume(exchange: ExchangeArgument, as_json: JsonFlag = False) -> None:
    """End an exchange's pause now: standbys take over a vacancy again within an interval."""
    from perseus.client import maintenance, remote

    async def main(settings: Settings) -> Any:
        if remote.enabled(settings):
            return maintenance.PauseView.model_validate(await remote.resume(settings, exchange))
        return await _with_store(
            settings, lambda store, catalog: maintenance.resume(store, catalog, exchange, actor=cli_actor())
        )

    view = run(main)
    if as_json:
        print_json(view.model_dump(mode="json", by_alias=True))
        return
    out.print(f"{view.exchange} resumed: automatic failover is back")


@app.command()
def hosts(as_json: JsonFlag = False) -> None:
    """Every live host worker: version, last poll (from Temporal), claims and watches held,
    capacity, whether it serves the shared queue, its metrics URL."""
    from perseus.host.workers import HostsBoard, read_hosts
    from perseus.store.redis_store import RedisStore, make_client
    from perseus.temporal import connect

    async def main(settings: Settings) -> tuple[HostsBoard, str | None]:
        redis = make_client(str(settings.redis_url))
        try:
            store = RedisStore(redis)
            try:
                client = await connect(settings)
            except PerseusError as exc:  # the view is Redis's; Temporal adds only the last polls
                return await read_hosts(store, None), error_line(exc)
            return await read_hosts(store, client), None
        finally:
            await redis.aclose()

    board, warning = run(main)
    if warning is not None:
        err.print(f"last polls unknown: {warning}")
    if as_json:
        print_json(board.model_dump(mode="json", by_alias=True))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("host", "version", "last poll", "claims", "watches", "capacity", "shared queue", "metrics")
    for view in board.hosts:
        table.add_row(
            Text(view.host),
            Text.assemble(
                view.version,
                (" (older)", "yellow") if view.outdated else "",
                (f" {view.build}", "dim") if view.build != "unknown" else "",
            ),
            Text(view.last_poll_at or "?"),
            str(view.claims),
            str(view.watches),
            str(view.capacity),
            "yes" if view.shared_queue else "no",
            Text(view.metrics_url or "-"),
        )
    if not board.hosts:
        err.print("no host worker is running (start one with `perseus worker --host NAME`)")
        return
    out.print(table)
