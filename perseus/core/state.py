"""An instance's memory: everything its workflow knows, as one value.

:class:`InstanceState` is built from the workflow's input (a new registration, or the
:class:`~perseus.models.CarriedState` a previous run continued as new with) and is the only thing the
core's procedures change. Signals and updates change it too, through the core's handler methods;
the next run is given :meth:`InstanceState.carried`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from perseus.lifecycle import Command, Role, State
from perseus.models import (
    CarriedState,
    Claim,
    CommandResult,
    HandoffConfirm,
    HandoffRequest,
    InstanceInput,
    NotifyRequest,
    PromoteRequest,
    Resolved,
)


class Ending(StrEnum):
    """How a run of an instance ends: the first words of the workflow's result, the rest says why.

    The result stays one line of text (recorded runs returned text, and operators read it); the
    core writes these words and :func:`ending_of` reads them, so producer and reader share one
    definition (``perseus.enrol`` enrols an instance again after a loss)."""

    SHUT_DOWN = "shut down"
    RELEASED = "released"
    INSTANCE_LOST = "instance lost"
    STANDBY_LOST = "standby lost"
    HANDED_OVER = "handed over"


def ending_of(result: str) -> Ending | None:
    """The ending a run's result names; None for a registration that failed (its refusal's text)."""
    return next((e for e in Ending if result == e or result.startswith((f"{e}:", f"{e} "))), None)


@dataclass
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


@dataclass
class WarmUp:
    """A warm standby's warm-up running beside the main procedure."""

    done: bool = False


@dataclass
class InstanceState:
    # --- carried across continue-as-new ------------------------------------------------------------
    resolved: Resolved | None = None
    hostname: str | None = None
    ip_address: str | None = None
    claim: Claim | None = None
    state: State = State.IDLE
    symbol_count: int = 0
    connected_at: datetime | None = None
    registered_at: datetime | None = None
    last_error: str | None = None
    highest_epoch: int = 0
    runs: int = 1
    role: Role = Role.ACTIVE
    standby_id: str | None = None
    restarts: int = 0
    #: A warm standby's connector is prepared and warmed on our host (as far as we know): a
    #: promotion activates it instead of starting it. Consumed by the next start either way.
    warm_here: bool = False
    #: Promotions in a row whose connector could not start here; the last reason; and until when
    #: this host goes behind every other standby (CarriedState has the same three).
    start_failures: int = 0
    start_error: str | None = None
    start_retry_at: datetime | None = None
    #: Notifications a previous run had not delivered; sent again when this run begins.
    carried_notifications: list[NotifyRequest] = field(default_factory=list)
    # --- this run only -----------------------------------------------------------------------------
    queue: list[Ticket] = field(default_factory=list)
    next_ticket: int = 0
    results: dict[int, CommandResult] = field(default_factory=dict)
    registration_error: str | None = None
    registration_error_type: str | None = None
    host_going_down: bool = False
    #: The host's worker said it started again (decisions.Step.HOST_RESTARTED).
    host_restarted: bool = False
    outcome: str | None = None
    last_heartbeat_ok: datetime | None = None
    standby_visible: bool = False
    #: A lease or watch activity runs (or ended and was not looked at yet).
    leasing: bool = False
    promotions: list[PromoteRequest] = field(default_factory=list)
    handoff_reply: HandoffConfirm | None = None
    warm_task: WarmUp | None = None
    #: The actor of the command running now: every event it causes names them.
    actor: str | None = None
    #: The last decision of the loop, as the operator reads it (the Web UI's current details).
    last_decision: str | None = None

    @classmethod
    def begin(cls, inp: InstanceInput) -> InstanceState:
        """The memory a run starts with: fresh, or what the previous run carried."""
        c = inp.carried
        if c is None:
            return cls(role=Role.STANDBY if inp.standby else Role.ACTIVE)
        s = cls(
            resolved=c.resolved,
            hostname=c.hostname,
            ip_address=c.ip_address,
            claim=c.claim,
            state=c.state,
            symbol_count=c.symbol_count,
            connected_at=c.connected_at,
            registered_at=c.registered_at,
            last_error=c.last_error,
            highest_epoch=c.highest_epoch,
            runs=c.runs + 1,
            role=Role(c.role),
            standby_id=c.standby_id,
            restarts=c.restarts,
            warm_here=c.warm_here,
            start_failures=c.start_failures,
            start_error=c.start_error,
            start_retry_at=c.start_retry_at,
            carried_notifications=list(c.undelivered),
        )
        s.standby_visible = s.standby_id is not None
        return s

    def carried(self, undelivered: list[NotifyRequest]) -> CarriedState:
        """What the next run is given (commands still queued run there)."""
        assert self.resolved and self.hostname and self.registered_at
        return CarriedState(
            resolved=self.resolved,
            hostname=self.hostname,
            ip_address=self.ip_address,
            claim=self.claim,
            state=self.state,
            symbol_count=self.symbol_count,
            connected_at=self.connected_at,
            registered_at=self.registered_at,
            last_error=self.last_error,
            pending=[t.command for t in self.queue],
            undelivered=undelivered,
            role=self.role,
            standby_id=self.standby_id,
            restarts=self.restarts,
            highest_epoch=self.highest_epoch,
            runs=self.runs,
            warm_here=self.warm_here,
            start_failures=self.start_failures,
            start_error=self.start_error,
            start_retry_at=self.start_retry_at,
        )
