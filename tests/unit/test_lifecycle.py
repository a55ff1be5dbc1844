"""The state machine from every state: every allowed and every refused transition and command."""

from __future__ import annotations

import itertools

import pytest

from perseus.core.lifecycle import (
    ALLOWED,
    RUNNING,
    Command,
    State,
    check_transition,
    legacy_state,
    plan,
    projected_state,
    recovery_path,
    release_path,
)
from perseus.errors import InvalidTransition

pytestmark = pytest.mark.unit

CONTRACT = {  # DESIGN §2.2, written out independently of the implementation's table
    ("idle", "starting"),
    ("starting", "warming"),
    ("starting", "stopping"),
    ("starting", "idle"),
    ("warming", "active"),
    ("warming", "stopping"),
    ("warming", "idle"),
    ("active", "stopping"),
    ("stopping", "stopped"),
    ("stopped", "idle"),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(State, State)))
def test_every_pair_follows_the_contract(current: State, target: State) -> None:
    if (current.value, target.value) in CONTRACT:
        check_transition(current, target)
    else:
        with pytest.raises(InvalidTransition, match=f"invalid transition {current.value} -> {target.value}"):
            check_transition(current, target)


def test_table_has_exactly_the_contract_edges() -> None:
    edges = {(a.value, b.value) for a, targets in ALLOWED.items() for b in targets}
    assert edges == CONTRACT


@pytest.mark.parametrize(
    ("state", "legacy"),
    [
        (State.IDLE, "idle"),
        (State.STARTING, "connecting"),
        (State.WARMING, "connecting"),
        (State.ACTIVE, "connected"),
        (State.STOPPING, "disconnected"),
        (State.STOPPED, "disconnected"),
    ],
)
def test_legacy_mapping(state: State, legacy: str) -> None:
    assert legacy_state(state) == legacy


@pytest.mark.parametrize("current", list(State))
def test_start_only_from_idle(current: State) -> None:
    if current is State.IDLE:
        assert plan(Command.START, current) == (State.STARTING, State.WARMING, State.ACTIVE)
    else:
        with pytest.raises(InvalidTransition, match=f"cannot start: the instance is {current.value}"):
            plan(Command.START, current)


@pytest.mark.parametrize("current", list(State))
def test_stop_only_while_running(current: State) -> None:
    if current in RUNNING:
        assert plan(Command.STOP, current) == (State.STOPPING, State.STOPPED, State.IDLE)
    else:
        with pytest.raises(InvalidTransition, match="nothing is running"):
            plan(Command.STOP, current)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (State.IDLE, ()),
        (State.STARTING, (State.STOPPING, State.STOPPED)),
        (State.WARMING, (State.STOPPING, State.STOPPED)),
        (State.ACTIVE, (State.STOPPING, State.STOPPED)),
        (State.STOPPING, (State.STOPPED,)),
        (State.STOPPED, ()),
    ],
)
def test_shutdown_from_every_state(current: State, expected: tuple[State, ...]) -> None:
    assert plan(Command.SHUTDOWN, current) == expected
    assert release_path(current) == expected


@pytest.mark.parametrize("current", list(State))
def test_recovery_always_reaches_idle_by_valid_steps(current: State) -> None:
    path = recovery_path(current)
    state = current
    for target in path:
        check_transition(state, target)
        state = target
    assert state is State.IDLE
    # Starting/warming recover directly: the error-recovery edges of the contract.
    if current in (State.STARTING, State.WARMING):
        assert path == (State.IDLE,)


def test_projected_state_follows_queued_commands() -> None:
    assert projected_state(State.IDLE, []) is State.IDLE
    assert projected_state(State.IDLE, [Command.START]) is State.ACTIVE
    assert projected_state(State.IDLE, [Command.START, Command.STOP]) is State.IDLE
    assert projected_state(State.ACTIVE, [Command.SHUTDOWN]) is State.STOPPED
    with pytest.raises(InvalidTransition):
        projected_state(State.IDLE, [Command.STOP])


@pytest.mark.parametrize("current", list(State))
def test_handoff_only_from_settled_states(current: State) -> None:
    if current is State.ACTIVE:
        assert plan(Command.HANDOFF, current) == (State.STOPPING, State.STOPPED, State.IDLE)
    elif current is State.IDLE:
        assert plan(Command.HANDOFF, current) == ()
    else:
        with pytest.raises(InvalidTransition, match="cannot hand off"):
            plan(Command.HANDOFF, current)
