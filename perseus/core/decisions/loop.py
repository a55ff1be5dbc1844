"""The loop's next piece of work (invariant 2: a lost claim outranks everything), and the refusals
that happen before history (invariant 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from perseus.core.lifecycle import Command, Role, State, plan, projected_state
from perseus.errors import (
    InvalidTransition,
)

if TYPE_CHECKING:
    pass


class Step(StrEnum):
    """The next piece of work of an instance's main loop."""

    LEASE_ENDED = "lease ended"
    HOST_GOING_DOWN = "host going down"
    #: The host's worker started again: what ran on the old process — a standby's watch and warm
    #: connector, a holder's lease and connector — is gone, and is judged and started again now.
    HOST_RESTARTED = "host restarted"
    PROMOTE = "promote"
    CONFIRM_PROMOTION = "confirm promotion"
    COMMAND = "command"
    CONTINUE_AS_NEW = "continue as new"


@dataclass(frozen=True)
class LoopFacts:
    role: Role
    lease_done: bool
    host_going_down: bool
    promotions: int
    queued: int
    history_long: bool
    #: The host's worker told this instance it started again (``host_restarted``).
    host_restarted: bool = False


def next_step(facts: LoopFacts) -> Step | None:
    """The most urgent work (invariant 2), or None: wait for something to happen."""
    if facts.lease_done:
        return Step.LEASE_ENDED
    if facts.host_going_down:
        return Step.HOST_GOING_DOWN
    if facts.promotions:
        return Step.PROMOTE if facts.role is Role.STANDBY else Step.CONFIRM_PROMOTION
    if facts.host_restarted:
        # Without this the workflow hears of the old process only when its lease or watch times
        # out (18.75 s at 1 s): a standby is missing from Redis all that time.
        return Step.HOST_RESTARTED
    if facts.queued:
        return Step.COMMAND
    if facts.history_long:
        return Step.CONTINUE_AS_NEW
    return None


@dataclass(frozen=True)
class InstanceFacts:
    """What the validators see of an instance."""

    workflow_id: str
    exchange: str
    host: str
    role: Role
    state: State
    queued: Sequence[Command]
    #: Why the instance is no longer registered (ended, or registration failed); None while it is.
    gone: str | None
    host_going_down: bool


def refuse_command(facts: InstanceFacts, command: Command) -> None:
    """Raise :class:`InvalidTransition` if ``command`` must be refused (invariant 3)."""
    if facts.gone is not None:
        raise InvalidTransition(f"instance {facts.workflow_id} is not registered any more ({facts.gone})")
    if Command.SHUTDOWN in facts.queued or facts.host_going_down:
        raise InvalidTransition(f"instance {facts.workflow_id} is shutting down")
    if facts.role is Role.STANDBY and command is not Command.SHUTDOWN:
        raise InvalidTransition(
            f"{facts.exchange} on {facts.host} is a standby: it holds no claim and starts "
            f"only when promoted (perseus handoff {facts.exchange} --to {facts.host}); "
            "shutdown is allowed"
        )
    if command is Command.HANDOFF:
        raise InvalidTransition("use the handoff update, which names the target host")
    plan(command, projected_state(facts.state, list(facts.queued)))


def refuse_handoff(facts: InstanceFacts, to_host: str) -> None:
    """Raise :class:`InvalidTransition` if a handoff to ``to_host`` must be refused (invariant 3)."""
    if facts.gone is not None or facts.host_going_down:
        raise InvalidTransition(f"instance {facts.workflow_id} is not registered any more")
    if facts.role is not Role.ACTIVE:
        raise InvalidTransition(f"{facts.exchange} on {facts.host} is a standby: nothing to hand off")
    if to_host == facts.host:
        raise InvalidTransition(f"{facts.exchange} already runs on {to_host}")
    if facts.queued:
        raise InvalidTransition(f"instance {facts.workflow_id} is busy with {facts.queued[0].value}; retry")
    plan(Command.HANDOFF, facts.state)
