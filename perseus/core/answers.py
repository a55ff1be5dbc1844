"""The read side of an instance's core: what queries, update validators and the loop's wait are
answered from the parts' memory, and what continues as new. Changes nothing but the answers it
hands out (``take_result``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from perseus.core.actions import Details
from perseus.core.commands import Commands
from perseus.core.context import Context, details
from perseus.core.decisions import InstanceFacts, LoopFacts, Step, next_step, refuse_command, refuse_handoff
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, Role, State
from perseus.core.recovery import Recovery
from perseus.core.registration import Registration
from perseus.core.standbys import Standbys
from perseus.core.state import LoopState, Refusal, Ticket, carried_fields
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.models import (
    CarriedState,
    Claim,
    CommandResult,
    HandoffRequest,
    InstanceInput,
    InstanceSnapshot,
    NotifyRequest,
    RegistrationResult,
    Resolved,
)


@dataclass(frozen=True)
class View:
    """The memory at a glance, for tests and the operator: each part's answer, none of its slice."""

    resolved: Resolved | None
    hostname: str | None
    state: State
    role: Role
    claim: Claim | None
    leasing: bool
    outcome: str | None
    results: dict[int, CommandResult]
    queue: tuple[Ticket, ...]
    registration_error: str | None
    start_failures: int
    start_error: str | None
    start_retry_at: datetime | None


class InstanceAnswers:
    """Answers from the parts of :class:`~perseus.core.loop.InstanceCore`."""

    inp: InstanceInput
    ctx: Context
    st: LoopState
    commands: Commands
    leases: Leases
    status: Status
    standbys: Standbys
    warm: Warm
    recovery: Recovery
    registrar: Registration

    def has_result(self, ticket: Ticket) -> bool:
        return self.commands.has_result(ticket)

    def take_result(self, ticket: Ticket) -> CommandResult:
        return self.commands.take_result(ticket)

    def facts(self) -> InstanceFacts:
        return InstanceFacts(
            workflow_id=self.ctx.wf_id,
            exchange=self.inp.exchange,
            host=self.inp.host,
            role=self.standbys.role,
            state=self.status.state,
            queued=self.commands.pending,
            gone=self.st.outcome or self.registrar.error,
            host_going_down=self.st.host_going_down,
        )

    def refuse_command(self, command: Command) -> None:
        """Raise ``InvalidTransition`` if the command must be refused (before it reaches history)."""
        refuse_command(self.facts(), command)

    def refuse_handoff(self, req: HandoffRequest) -> None:
        refuse_handoff(self.facts(), req.to_host)

    def next_step(self, *, lease_done: bool, history_long: bool) -> Step | None:
        """The loop's most urgent work, given what only the workflow can see (decisions.next_step)."""
        return next_step(
            LoopFacts(
                role=self.standbys.role,
                lease_done=self.leases.leasing and lease_done,
                host_going_down=self.st.host_going_down,
                promotions=len(self.standbys.promotions),
                queued=len(self.commands.pending),
                history_long=history_long,
                host_restarted=self.st.host_restarted,
            )
        )

    def registration_settled(self) -> bool:
        return self.leases.claim is not None or self.standbys.st.visible or self.registrar.error is not None

    def registration(self) -> RegistrationResult | Refusal:
        """Once settled: the registration, or why it was refused (message, error type)."""
        ident, claim = self.ctx.identity, self.leases.claim
        if self.registrar.error is not None or ident.resolved is None:
            return self.registrar.refusal()
        return RegistrationResult(
            exchange=ident.resolved.exchange.name,
            exchange_id=ident.resolved.exchange.id,
            host=self.inp.host,
            hostname=self.ctx.hostname,
            ip_address=ident.ip_address,
            # A standby holds no claim: its own id, and epoch 0.
            instance_id=claim.instance_id if claim else self.standbys.standby_id or "",
            epoch=claim.epoch if claim else 0,
            state=self.status.state,
            workflow_id=self.ctx.wf_id,
            role=Role.ACTIVE if claim else Role.STANDBY,
        )

    def snapshot(self) -> InstanceSnapshot:
        ident, status, claim = self.ctx.identity, self.status.st, self.leases.claim
        return InstanceSnapshot(
            workflow_id=self.ctx.wf_id,
            exchange=self.inp.exchange,
            exchange_id=ident.resolved.exchange.id if ident.resolved else None,
            host=self.inp.host,
            hostname=ident.hostname,
            ip_address=ident.ip_address,
            state=status.state,
            registered=claim is not None and self.st.outcome is None,
            claim=claim,
            symbol_count=status.symbol_count,
            connected_at=status.connected_at,
            last_error=status.last_error,
            last_heartbeat_ok=self.leases.st.last_heartbeat_ok,
            pending=self.commands.pending,
            runs=self.st.runs,
            outcome=self.st.outcome,
            role=self.standbys.role,
            priority=self.inp.priority,
        )

    def carried(self, undelivered: list[NotifyRequest]) -> CarriedState:
        """What the next run is given: each part's carried slice, serialised (commands still queued
        run there; ``core.state`` says which fields carry)."""
        assert self.ctx.identity.resolved and self.ctx.identity.hostname and self.ctx.identity.registered_at
        return CarriedState(
            **carried_fields(
                self.ctx.identity,
                self.status.st,
                self.leases.st,
                self.recovery.st,
                self.standbys.st,
                self.warm.st,
            ),
            pending=self.commands.pending,
            undelivered=undelivered,
            runs=self.st.runs,
        )

    def details(self) -> Details:
        """The Web UI's current details of the run."""
        status = self.status.st
        return details(
            self.ctx,
            state=status.state.value,
            claim=self.leases.claim,
            symbols=status.symbol_count,
            last_heartbeat=self.leases.st.last_heartbeat_ok,
            last_error=status.last_error,
            last_decision=status.last_decision,
            outcome=self.st.outcome,
        )

    def view(self) -> View:
        standby = self.standbys.st
        return View(
            resolved=self.ctx.identity.resolved,
            hostname=self.ctx.identity.hostname,
            state=self.status.state,
            role=standby.role,
            claim=self.leases.claim,
            leasing=self.leases.leasing,
            outcome=self.st.outcome,
            results=self.commands.st.results,
            queue=self.commands.st.queue,
            registration_error=self.registrar.error,
            start_failures=standby.start_failures,
            start_error=standby.start_error,
            start_retry_at=standby.start_retry_at,
        )
