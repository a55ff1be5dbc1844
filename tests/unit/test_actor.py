"""The actor of a command is written into every event the command causes, and into nothing else:
the core's part of the audit trail (DESIGN §2.10), on the simulated world of test_core."""

from __future__ import annotations

import pytest

from perseus.core import actions as act
from perseus.core.lifecycle import Command
from perseus.core.loop import InstanceCore
from perseus.models import ConnectorSpec, EventKind, InstanceInput, NetworkEvent, RecordRequest
from tests.unit.test_core import HOST, Clock, World, drive

pytestmark = pytest.mark.unit


def _events(actions: list[act.Action]) -> list[NetworkEvent]:
    calls = [a for a in actions if isinstance(a, act.Call)]
    return [c.request.event for c in calls if isinstance(c.request, RecordRequest)]


def test_the_registrar_and_each_command_name_the_events_they_cause() -> None:
    clock = Clock()
    inp = InstanceInput(
        exchange="coinbase",
        host=HOST,
        start_immediately=True,
        connector=ConnectorSpec(),
        actor="fleet:api:deploy",
    )
    core = InstanceCore(inp, f"instance-coinbase-{HOST}", clock)
    run = drive(core, World([]), clock)
    started = _events(run.actions)
    assert [e.to_state.value for e in started if e.event is EventKind.STATE_TRANSITION and e.to_state] == [
        "starting",
        "warming",
        "active",
    ]
    assert {e.actor for e in started} == {"fleet:api:deploy"}

    assert core.commands.actor is None  # what the instance does by itself afterwards names nobody


def test_a_queued_command_names_its_own_actor_not_the_registrars() -> None:
    clock = Clock()
    inp = InstanceInput(exchange="coinbase", host=HOST, connector=ConnectorSpec(), actor="cli:me@box")
    core = InstanceCore(inp, f"instance-coinbase-{HOST}", clock)
    core.enqueue(Command.START, actor="api:ops")
    events = _events(drive(core, World([]), clock).actions)
    moves = [e for e in events if e.event is EventKind.STATE_TRANSITION]
    assert [e.to_state.value for e in moves if e.to_state] == ["starting", "warming", "active"]
    assert {e.actor for e in moves} == {"api:ops"}
    assert "actor" in moves[0].fields() and moves[0].fields()["actor"] == "api:ops"


def test_an_event_without_an_actor_has_no_actor_field() -> None:
    """Livermore's readers see exactly the fields they knew when nobody asked for anything."""
    event = NetworkEvent(
        event=EventKind.INSTANCE_LOST,
        event_id="e",
        timestamp="2026-01-01T00:00:00Z",
        exchange_id=1,
        exchange_name="coinbase",
        hostname="h",
        instance_id="i",
        epoch=1,
    )
    assert not {"actor", "command", "reason"} & set(event.fields())
