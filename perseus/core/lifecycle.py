"""The instance state machine: plain functions over values, no I/O and no clock.

Workflows ask this module what to do and then do it; tests drive it from every state. The table is
the contract of DESIGN §2.2 and must not change: the ``→ idle`` edges out of ``starting`` and
``warming`` are the error-recovery path.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from perseus.errors import InvalidTransition


class State(StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    WARMING = "warming"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Role(StrEnum):
    """An instance either holds the exchange's claim (active) or waits to take it over (standby)."""

    ACTIVE = "active"
    STANDBY = "standby"


class Command(StrEnum):
    START = "start"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    HANDOFF = "handoff"


ALLOWED: Mapping[State, frozenset[State]] = {
    State.IDLE: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.WARMING, State.STOPPING, State.IDLE}),
    State.WARMING: frozenset({State.ACTIVE, State.STOPPING, State.IDLE}),
    State.ACTIVE: frozenset({State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset({State.IDLE}),
}

#: What Livermore's old ControlPanel understands.
LEGACY: Mapping[State, str] = {
    State.IDLE: "idle",
    State.STARTING: "connecting",
    State.WARMING: "connecting",
    State.ACTIVE: "connected",
    State.STOPPING: "disconnected",
    State.STOPPED: "disconnected",
}

#: States in which the connector may be running (or being brought up) and must be torn down.
RUNNING: frozenset[State] = frozenset({State.STARTING, State.WARMING, State.ACTIVE})


def legacy_state(state: State) -> str:
    return LEGACY[state]


def is_allowed(current: State, target: State) -> bool:
    return target in ALLOWED[current]


def check_transition(current: State, target: State) -> None:
    """Raise :class:`InvalidTransition` unless ``current → target`` is in the table."""
    if not is_allowed(current, target):
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current]))
        raise InvalidTransition(
            f"invalid transition {current.value} -> {target.value} (from {current.value} only: {allowed})"
        )


def plan(command: Command, current: State) -> tuple[State, ...]:
    """The transitions ``command`` makes from ``current``, in order; refuses with InvalidTransition.

    ``shutdown`` may plan no transition at all (an idle instance only releases its claim).
    Every planned path is valid step by step; :func:`walk` checks it.
    """
    if command is Command.START:
        if current is not State.IDLE:
            raise InvalidTransition(f"cannot start: the instance is {current.value}; start needs idle")
        return walk(current, (State.STARTING, State.WARMING, State.ACTIVE))
    if command is Command.STOP:
        if current not in RUNNING:
            raise InvalidTransition(f"cannot stop: the instance is {current.value}; nothing is running")
        return walk(current, (State.STOPPING, State.STOPPED, State.IDLE))
    if command is Command.HANDOFF:
        # The connector stops here before the claim goes to the standby; only a settled instance
        # (active, or idle with nothing running) can hand over.
        if current is State.ACTIVE:
            return walk(current, (State.STOPPING, State.STOPPED, State.IDLE))
        if current is State.IDLE:
            return ()
        raise InvalidTransition(
            f"cannot hand off: the instance is {current.value}; it must be active or idle"
        )
    # shutdown: stop whatever runs; the claim is released afterwards by the caller.
    if current in RUNNING:
        return walk(current, (State.STOPPING, State.STOPPED))
    if current is State.STOPPING:
        return walk(current, (State.STOPPED,))
    return ()


def recovery_path(current: State) -> tuple[State, ...]:
    """The transitions that bring an instance back to ``idle`` after an error, in order."""
    paths: Mapping[State, tuple[State, ...]] = {
        State.IDLE: (),
        State.STARTING: (State.IDLE,),
        State.WARMING: (State.IDLE,),
        State.ACTIVE: (State.STOPPING, State.STOPPED, State.IDLE),
        State.STOPPING: (State.STOPPED, State.IDLE),
        State.STOPPED: (State.IDLE,),
    }
    return walk(current, paths[current])


def release_path(current: State) -> tuple[State, ...]:
    """The transitions before an instance lets go of its claim: it must not be running any more."""
    if current in RUNNING:
        return walk(current, (State.STOPPING, State.STOPPED))
    if current is State.STOPPING:
        return walk(current, (State.STOPPED,))
    return ()


def walk(current: State, path: tuple[State, ...]) -> tuple[State, ...]:
    """Check every step of ``path`` from ``current``; return it unchanged."""
    state = current
    for target in path:
        check_transition(state, target)
        state = target
    return path


def projected_state(current: State, pending: list[Command]) -> State:
    """The state the instance will be in once the queued commands have run, assuming they succeed."""
    state = current
    for command in pending:
        path = plan(command, state)
        if path:
            state = path[-1]
    return state
