"""Every view rendered with data that looks like Rich markup: it is printed as it is, the view's own
styles are styles (``fleet status`` printed ``[red]none[/red]`` literally), and output to a pipe is
not cut at 80 columns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console, RenderableType

from perseus.cli.common import PIPE_WIDTH, make_console
from perseus.cli.fleet import fleet_table
from perseus.cli.instances import _status_table
from perseus.cli.views import _cards
from perseus.core.lifecycle import State
from perseus.fleet.enrol import FleetExchangeView
from perseus.keys import iso
from perseus.models import InstanceStatus
from perseus.readmodel.network import InstanceView, LastKnown, StandbyView, StatusBoard

pytestmark = pytest.mark.unit

#: Markup-like text in every field data can reach; a long tail that an 80-column pipe would cut.
MARKUP = "[bold]x[/bold] [red]"
LONG = "child said " + "[/dim]" + "y" * 300 + " end-of-error"
NOW = datetime.now(UTC)


def board() -> StatusBoard:
    status = InstanceStatus(
        exchange_id=1,
        exchange_name="ex1",
        hostname=f"h{MARKUP}",
        ip_address=MARKUP,
        admin_email=MARKUP,
        admin_display_name=MARKUP,
        connection_state=State.ACTIVE,
        last_heartbeat=iso(NOW),
        last_state_change=iso(NOW),
        registered_at=iso(NOW),
        last_error=LONG,
        last_error_at=MARKUP,
        instance_id="i-1",
        epoch=3,
        workflow_id="instance-ex1-h",
        heartbeat_interval_ms=1000,
        ttl_ms=3000,
    )
    standby = StandbyView(
        host=f"s{MARKUP}",
        hostname=f"s{MARKUP}",
        instance_id="i-2",
        priority=1,
        heartbeat_age_s=0.5,
        ttl_ms=3000,
    )
    standby = standby.model_copy(update={"heartbeat": "fresh"})
    online = InstanceView(
        exchange_id=1,
        exchange_name="ex1",
        display_name=f"Ex{MARKUP}",
        online=True,
        up=True,
        status=status,
        heartbeat_age_s=0.2,
        heartbeat="fresh",
        ttl_ms=2800,
        health="healthy",
        standbys=[standby],
    )
    offline = InstanceView(
        exchange_id=2,
        exchange_name="ex2",
        display_name=f"Ex2{MARKUP}",
        online=False,
        status=None,
        health="offline",
        offline_reason=MARKUP,
        last_known=LastKnown(
            entry_id="1-0",
            event="error",
            at=MARKUP,
            hostname=MARKUP,
            ip=MARKUP,
            state=MARKUP,
            admin_email=MARKUP,
            last_error=LONG,
            last_error_at=MARKUP,
        ),
    )
    return StatusBoard(instances=[online, offline], server_time=NOW)


def fleet() -> list[FleetExchangeView]:
    placed = FleetExchangeView(
        exchange=f"ex{MARKUP}",
        in_fleet=True,
        desired_hosts=[f"h{MARKUP}"],
        active_host=None,
        active_state=None,
        standbys=[],
        instances=[],
        drift=[LONG],
    )
    by_hand = FleetExchangeView(
        exchange="ex2",
        in_fleet=False,
        desired_hosts=[],
        active_host=f"h{MARKUP}",
        active_state="active",
        standbys=[f"s{MARKUP}"],
        instances=[],
        drift=[],
    )
    return [placed, by_hand]


def render(renderable: RenderableType) -> tuple[str, Console]:
    console = make_console()  # stdout is not a terminal under pytest: as in a pipe
    assert console.width == PIPE_WIDTH
    with console.capture() as captured:
        console.print(renderable)
    return captured.get(), console


@pytest.mark.parametrize(
    "view",
    [
        lambda: _status_table(board(), None),
        lambda: _status_table(board(), f"http://ui{MARKUP}"),
        lambda: _cards(board()),
        lambda: fleet_table(fleet()),
    ],
    ids=["status", "status-with-links", "network", "fleet-status"],
)
def test_every_view_prints_markup_like_data_as_it_is(view: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # As piped output with nobody saying how wide: pytest-xdist's workers run with COLUMNS=80.
    monkeypatch.delenv("COLUMNS", raising=False)
    text, _ = render(view())  # type: ignore[operator]
    # Data: as it is. Cards are 60 columns wide by design and wrap; tables keep a line whole.
    flat = "".join(line.strip().strip("│").strip() for line in text.splitlines())
    assert "[/bold]" in text and "[red]" in text, text
    if "Ex[bold]" not in text:  # a table: the long error in one piece, not cut at 80 columns
        assert LONG in text, text
    else:
        assert "end-of-error" in flat, text


def test_the_fleet_views_own_styles_are_styles_not_text() -> None:
    console = Console(markup=False, highlight=False, width=200, force_terminal=True, color_system="standard")
    with console.capture() as captured:
        console.print(fleet_table(fleet()))
    text = captured.get()
    assert "[red]none[/red]" not in text and "[green]" not in text and "[dim]" not in text
    assert "\x1b[31mnone" in text  # red, as an escape code
    assert "not in the fleet" in text
