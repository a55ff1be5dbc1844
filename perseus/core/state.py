"""An instance's memory, in slices: each part of the core owns one, a frozen value it replaces on
every change, and no part reads another's.

What continues as new is the slices' fields marked ``carried``: :func:`carried_fields` serialises
a slice into the fields of :class:`~perseus.models.CarriedState` (same names; the wire format of
running workflows, so it never changes shape) and :func:`restored` builds a slice back from it.
Nothing copies the memory field by field by hand.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from perseus.core.lifecycle import Command, Role, State
from perseus.models import (
    CarriedState,
    Claim,
    CommandResult,
    HandoffConfirm,
    HandoffRequest,
    PromoteRequest,
    Resolved,
)

#: A field that continues as new (its name is CarriedState's).
CARRIED = {"carried": True}


class Ending(StrEnum):
    """How a run of an instance ends: the first words of the workflow's result, the rest says why.

    The result stays one line of text (recorded runs returned text, and operators read it); the
    core writes these words and :func:`ending_of` reads them, so producer and reader share one
    definition (``perseus.fleet.enrol`` enrols an instance again after a loss)."""

    SHUT_DOWN = "shut down"
    RELEASED = "released"
    INSTANCE_LOST = "instance lost"
    STANDBY_LOST = "standby lost"
    HANDED_OVER = "handed over"


def ending_of(result: str) -> Ending | None:
    """The ending a run's result names; None for a registration that failed (its refusal's text)."""
    return next((e for e in Ending if result == e or result.startswith((f"{e}:", f"{e} "))), None)


@dataclass(frozen=True)
class Ticket:
    """A queued command. Internal ones (a restart, a promotion's start) have nobody waiting: -1."""

    number: int
    command: Command
    #: For HANDOFF: where to.
    handoff: HandoffRequest | None = None
    #: For a START that completes a handoff: the workflow waiting to hear how it went.
    confirm_to: str | None = None
    #: A START a promotion queued: if the connector cannot start, the exchange goes to the next
    #: standby rather than staying claimed by an instance that runs nothing.
    promoted: bool = False
    #: Who asked for it (None: the instance itself, or a caller from before actors).
    actor: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a registration failed: the message, and the error type callers see."""

    message: str
    error_type: str


class WarmUp:
    """The handle of a warm standby's warm-up running beside the main procedure (like the lease's
    handle the workflow keeps: not memory, a way to ask whether that procedure has finished)."""

    def __init__(self) -> None:
        self.done = False


# --- the slices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who and where the instance is; learnt once at registration (``core.registration``)."""

    resolved: Resolved | None = field(default=None, metadata=CARRIED)
    hostname: str | None = field(default=None, metadata=CARRIED)
    ip_address: str | None = field(default=None, metadata=CARRIED)
    registered_at: datetime | None = field(default=None, metadata=CARRIED)


@dataclass(frozen=True)
class StatusState:
    """What the status key and the events say (``core.status``)."""

    state: State = field(default=State.IDLE, metadata=CARRIED)
    symbol_count: int = field(default=0, metadata=CARRIED)
    connected_at: datetime | None = field(default=None, metadata=CARRIED)
    last_error: str | None = field(default=None, metadata=CARRIED)
    #: The last decision of the loop, as the operator reads it (the Web UI's current details).
    last_decision: str | None = None


@dataclass(frozen=True)
class LeaseState:
    """The claim and the activity that renews it (``core.leases``)."""

    claim: Claim | None = field(default=None, metadata=CARRIED)
    highest_epoch: int = field(default=0, metadata=CARRIED)
    #: A lease or watch activity runs (or ended and was not looked at yet).
    leasing: bool = False
    last_heartbeat_ok: datetime | None = None


@dataclass(frozen=True)
class RecoveryState:
    """Restarts of a connector that failed while active (``core.recovery``)."""

    restarts: int = field(default=0, metadata=CARRIED)


@dataclass(frozen=True)
class StandbyState:
    """The instance as a standby (``core.standbys``)."""

    role: Role = field(default=Role.ACTIVE, metadata=CARRIED)
    standby_id: str | None = field(default=None, metadata=CARRIED)
    #: Promotions in a row whose connector could not start here; the last reason; and until when
    #: this host goes behind every other standby.
    start_failures: int = field(default=0, metadata=CARRIED)
    start_error: str | None = field(default=None, metadata=CARRIED)
    start_retry_at: datetime | None = field(default=None, metadata=CARRIED)
    visible: bool = False
    promotions: tuple[PromoteRequest, ...] = ()


@dataclass(frozen=True)
class WarmState:
    """A warm standby's connector on our host (``core.warm``)."""

    #: Prepared and warmed (as far as we know): a promotion activates it instead of starting it.
    #: Consumed by the next start either way.
    warm_here: bool = field(default=False, metadata=CARRIED)
    task: WarmUp | None = None


@dataclass(frozen=True)
class HandoffState:
    """The target's answer to our handoff (``core.handoffs``)."""

    reply: HandoffConfirm | None = None


@dataclass(frozen=True)
class CommandState:
    """Commands queued and answered (``core.commands``)."""

    queue: tuple[Ticket, ...] = ()
    next_ticket: int = 0
    results: dict[int, CommandResult] = field(default_factory=dict)
    #: The actor of the command running now: every event it causes names them.
    actor: str | None = None


@dataclass(frozen=True)
class RegistrationState:
    """Why registration failed, if it did (``core.registration``)."""

    error: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class LoopState:
    """The run as a whole (``core.loop``)."""

    runs: int = 1
    host_going_down: bool = False
    #: The host's worker said it started again (decisions.Step.HOST_RESTARTED).
    host_restarted: bool = False
    outcome: str | None = None


# --- continue-as-new -------------------------------------------------------------------------------

S = TypeVar("S")


def _carried(cls: type[Any]) -> list[Field[Any]]:
    return [f for f in fields(cls) if f.metadata.get("carried")]


def carried_fields(*slices: object) -> dict[str, Any]:
    """The carried fields of ``slices``, by CarriedState's names."""
    return {f.name: getattr(s, f.name) for s in slices for f in _carried(type(s))}


def restored(cls: type[S], carried: CarriedState | None, **this_run: Any) -> S:
    """A slice as a previous run carried it (fresh when nothing was carried)."""
    values = {f.name: getattr(carried, f.name) for f in _carried(cls)} if carried else {}
    return cls(**values, **this_run)
