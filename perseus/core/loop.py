"""The instance core: its parts composed, the main loop, and what signals and updates do.

:class:`InstanceCore` runs the instance's procedures as generators: each yields one
:mod:`action <perseus.core.actions>` at a time and is sent the answer, reads no clock but the one it
is given and imports nothing of Temporal, Redis or the operating system. So the same code runs
under the workflow and under plain tests that answer the actions themselves (``tests/unit/``).

The memory is in parts, each owning a frozen slice it replaces on change (``core/state.py``): the
claim and its lease (``leases``), the status (``status``), the standby (``standbys``), its warm
connector (``warm``), the commands (``commands``), the registration, and here the run itself. No
part reads another's slice; what they share is handed to them here, as functions. The loop routes
each piece of work to the part that does it (:func:`perseus.core.decisions.next_step` says which).

Patches: a change after a release that alters a run's commands asks (:class:`~perseus.core.actions.Patched`)
where the new behaviour begins: runs begun on the release replay the old branch (``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import replace

from perseus.core import state as slices
from perseus.core.actions import (
    Answer,
    ContinueAsNew,
    DrainNotifications,
    Notify,
    Proc,
    Undelivered,
    WaitForWork,
    WaitHandlers,
    WaitUntil,
)
from perseus.core.answers import InstanceAnswers
from perseus.core.commands import Commands
from perseus.core.context import Clock, Context
from perseus.core.decisions import Step
from perseus.core.execute import Execution
from perseus.core.failsafe import Failsafe
from perseus.core.handoffs import Handoffs
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, Role
from perseus.core.parts import Hooks, Shared
from perseus.core.promotion import Promotion
from perseus.core.recovery import Recovery
from perseus.core.registration import Registration
from perseus.core.standbys import Standbys
from perseus.core.state import Ending, LoopState, Ticket, restored
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.core.watch import Watch
from perseus.models import (
    CommandResult,
    HandoffConfirm,
    HostRestarted,
    InstanceInput,
    NotifyRequest,
    PromoteRequest,
)


class InstanceCore(InstanceAnswers):
    """One exchange instance on one host (workflow id ``instance-{exchange}-{host}``), decided.

    ``run()`` is the run's whole procedure; it returns the run's outcome, or ends in
    :class:`~perseus.core.actions.ContinueAsNew`. The ``on_*``/``enqueue`` methods are what signals
    and updates do to the memory; its base (:mod:`perseus.core.answers`) answers queries, validators
    and the loop's question of what to do next.
    """

    def __init__(self, inp: InstanceInput, workflow_id: str, clock: Clock) -> None:
        c = inp.carried
        self.inp = inp
        self.ctx = ctx = Context(inp, workflow_id, clock, restored(slices.Identity, c))
        self.st = LoopState(runs=c.runs + 1) if c else LoopState()
        self.carried_notifications: list[NotifyRequest] = list(c.undelivered) if c else []
        self.commands = Commands(slices.CommandState())
        #: Queue a command (an update or signal, or the core itself): ``Commands.enqueue``.
        self.enqueue = self.commands.enqueue
        self.host = host = Host(ctx)
        self.status = Status(
            ctx,
            host,
            restored(slices.StatusState, c),
            claim=lambda: self.leases.claim,
            actor=lambda: self.commands.actor,
            details=self.details,
        )
        self.leases = Leases(
            ctx,
            host,
            restored(slices.LeaseState, c),
            record_for=self.status.record_for,
            event=self.status.event,
            refused=lambda refusal: self.registrar.refused(refusal),
        )
        self.failsafe = Failsafe(
            ctx,
            host,
            holds_claim=lambda: self.leases.claim is not None,
            highest_epoch=lambda: self.leases.highest_epoch,
        )
        self.registrar = Registration(
            ctx,
            host,
            slices.RegistrationState(),
            leases=self.leases,
            status=self.status,
            become_standby=self._become_standby,
            details=self.details,
            enrol=self.failsafe.enrol,
        )
        role = Role.STANDBY if inp.standby else Role.ACTIVE
        standby = restored(slices.StandbyState, c) if c else slices.StandbyState(role=role)
        self.standbys = Standbys(
            ctx,
            replace(standby, visible=standby.standby_id is not None),
            event=self.status.event,
            highest_epoch=lambda: self.leases.highest_epoch,
            state=lambda: self.status.state,
        )
        self.warm = Warm(
            ctx,
            host,
            restored(slices.WarmState, c),
            role=lambda: self.standbys.role,
            own_claim=lambda: self.standbys.own_claim,
            claim=lambda: self.leases.claim,
            symbols=self.status.symbols,
            event=self.status.event,
        )
        shared = Shared(leases=self.leases, status=self.status, standbys=self.standbys)
        hooks = Hooks(enqueue=self.enqueue, become_standby=self._become_standby, end=self._end)
        self.execution = Execution(host, warm=self.warm, **shared)
        waiting_for = lambda: self.commands.queued or self.st.host_going_down  # noqa: E731
        self.promotion = Promotion(
            ctx,
            host,
            warm=self.warm,
            waiting_for=waiting_for,
            enqueue=self.enqueue,
            become_standby=self._become_standby,
            restart_pending=lambda: self.st.host_restarted,
            restart_settled=self._restart_settled,
            **shared,
        )
        self.watch = Watch(ctx, warm=self.warm, promotion=self.promotion, end=self._end, **shared)
        self.recovery = Recovery(ctx, host, restored(slices.RecoveryState, c), **hooks, **shared)
        self.handoffs = Handoffs(ctx, host, slices.HandoffState(), warm=self.warm, **hooks, **shared)
        for command in c.pending if c else []:
            self.enqueue(command)

    # --- what signals and updates do ---------------------------------------------------------------

    def on_promote(self, req: PromoteRequest) -> None:
        """A standby is told the exchange is (about to be) free. It may arrive after this standby
        already took the exchange on its own: then only the confirmation the sender waits for is owed."""
        if self.st.outcome is None:
            self.standbys.promoted(req)

    def on_handoff_reply(self, reply: HandoffConfirm) -> None:
        self.handoffs.on_reply(reply)

    def on_host_shutting_down(self) -> None:
        self.st = replace(self.st, host_going_down=True)

    def on_host_restarted(self, req: HostRestarted) -> None:
        """This instance's host has a new worker process: whatever ran on the old one is gone."""
        if req.host == self.inp.host and self.st.outcome is None:
            self.st = replace(self.st, host_restarted=True)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> Proc:
        """Register (unless carried over), then serve: the loop of DESIGN §3."""
        if self.ctx.identity.resolved is None:
            self.commands.acting(self.inp.actor)
            try:
                registered = yield from self.registrar.register(standby=self.inp.standby)
            finally:
                self.commands.acting(None)
            if not registered:
                return (yield from self._finish(self.registrar.error or "registration failed"))
            if self.inp.start_immediately and self.standbys.role is Role.ACTIVE:
                self.enqueue(Command.START, actor=self.inp.actor)
        for req in self.carried_notifications:
            yield Notify(req)
        while True:
            if not self.leases.leasing:
                active = self.standbys.role is Role.ACTIVE
                yield from (self.leases.start() if active else self.leases.watch(self.standbys.record()))
                yield from self.warm.maybe_warm(self.standbys.standby_id)
            step = yield WaitForWork()
            yield from self.status.decided(f"{step} ({self.status.state.value})")
            outcome = yield from self._serve(step)
            if outcome is not None:
                return (yield from self._finish(outcome))

    def _serve(self, step: Step) -> Answer[str | None]:
        """Do one piece of the loop's work; the run's outcome when it must end, else None."""
        ctx, leases, standbys = self.ctx, self.leases, self.standbys
        if step is Step.LEASE_ENDED:
            active = standbys.role is Role.ACTIVE
            carry_on = yield from (self.recovery.after_lease() if active else self.watch.after_watch())
            return None if carry_on else self.st.outcome or str(Ending.INSTANCE_LOST)
        if step is Step.HOST_GOING_DOWN:
            yield from leases.cancel()
            if standbys.role is Role.ACTIVE:
                # Woken, a standby acts at once: only when our connector is known stopped and the key
                # was ours. Otherwise it finds the key gone on its own and waits out the renew deadline.
                released = yield from self.execution.release()
                if released:
                    yield from standbys.wake(
                        f"{ctx.inp.exchange} on {ctx.inp.host} released: its worker shut down"
                    )
            else:
                yield from standbys.drop()
                yield from self.warm.stop("the worker is shutting down")
            return f"{Ending.RELEASED}: the worker on {ctx.inp.host} shut down"
        if step is Step.HOST_RESTARTED:
            self.st = replace(self.st, host_restarted=False)
            active = standbys.role is Role.ACTIVE
            carry_on = yield from (self.recovery.host_restarted() if active else self.watch.again())
            return None if carry_on else self.st.outcome or str(Ending.INSTANCE_LOST)
        if step is Step.PROMOTE:
            yield from leases.cancel()
            yield from self.promotion.promote(standbys.next_promotion())
            return None
        if step is Step.CONFIRM_PROMOTION:
            yield from self.promotion.owe_confirmation(standbys.next_promotion(), self.commands.confirm_start)
            return None
        if step is Step.COMMAND:
            ticket = self.commands.next()
            self.commands.acting(ticket.actor)
            try:
                result, outcome = yield from self._run_ticket(ticket)
            finally:
                self.commands.acting(None)
            self.commands.answer(ticket, result)
            return outcome
        # Step.CONTINUE_AS_NEW
        yield from leases.cancel()
        # A command accepted meanwhile has a caller waiting on this run: run it first, then continue.
        yield WaitUntil(lambda: self.commands.queued, or_handlers_finished=True)
        if not self.commands.queued:
            undelivered = yield Undelivered()
            carried = self.carried(undelivered)
            yield ContinueAsNew(self.inp.continued(carried))
        return None

    def _run_ticket(self, ticket: Ticket) -> Answer[tuple[CommandResult, str | None]]:
        """Run one queued command: (its result, the run's outcome if it ends the instance)."""
        ctx, execution = self.ctx, self.execution
        if ticket.command is Command.SHUTDOWN:
            result = yield from execution.execute(ticket.command)
            if result.error is not None:
                return result, None
            # The caller hears back only once the claim is released.
            yield from self.leases.cancel()
            released = yield from self.leases.release()
            # Our connector stopped: the best standby may act at once, not wait out our renew deadline.
            if released:
                yield from self.standbys.wake(f"{ctx.inp.exchange} on {ctx.inp.host} shut down")
            yield from self.standbys.drop()
            yield from self.warm.stop("shut down")
            return result, str(Ending.SHUT_DOWN)
        if ticket.command is Command.HANDOFF:
            result = yield from self.handoffs.handoff(ticket)
            return result, self.st.outcome
        result = yield from execution.execute(ticket.command, promoted=ticket.promoted)
        if ticket.confirm_to is not None:
            yield from self.promotion.confirm_takeover(ticket.confirm_to, result)
        elif ticket.promoted and result.error is not None:
            # A claim is held only by an instance that runs its connector: never kept in idle.
            yield from self.promotion.after_failed_promotion(result.error)
        return result, None

    def _finish(self, outcome: str) -> Answer[str]:
        self._end(outcome)
        yield from self.failsafe.leave()
        # Give in-flight update handlers their answer before the run closes.
        self.commands.close(outcome, self.status.state)
        yield self.details()
        yield DrainNotifications()
        yield WaitHandlers()
        return outcome

    def _end(self, outcome: str) -> None:
        self.st = replace(self.st, outcome=outcome)

    def _restart_settled(self) -> None:
        self.st = replace(self.st, host_restarted=False)

    def _become_standby(self, *, required: bool = False) -> Proc:
        """Give up the claim (if any) and wait here as a standby (``Standbys.become``)."""
        self.leases.drop_claim()
        self.warm.forget_task()  # the loop warms the connector up again unless it is still warm
        yield from self.standbys.become(required=required)
        yield self.details()
