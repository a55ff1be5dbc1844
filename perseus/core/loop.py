"""The instance's decisions and procedures, free of I/O: the core that ``workflows/instance.py`` runs.

:class:`InstanceCore` holds an :class:`~perseus.core.state.InstanceState` and runs the instance's
procedures — registration, the main loop, a lease that ended, a standby's watch, promotion, a
handoff, commands — as generators. Each yields one :mod:`action <perseus.core.actions>` at a time
and is sent the answer; it never waits on anything else, reads no clock but the one it is given and
imports nothing of Temporal, Redis or the operating system. So the same code runs under the
workflow (which carries each action out as it is yielded) and under plain tests that answer the
actions themselves, from any point of any path (``tests/unit/test_core.py``).

The verdicts it acts on are the plain functions of :mod:`perseus.decisions` and
:mod:`perseus.lifecycle`; their invariants hold here. In short: a claim is freed early only when
Redis proves its holder stopped; a lost claim outranks everything; refusals happen before history;
after a Redis outage the holder goes first; a warm standby acts only under a claim just taken; a
handoff that fails midway takes the exchange back; nothing is written without the claim's fence.

Patches: wherever the behaviour changed after runs had been recorded, the procedure asks
(:class:`~perseus.core.actions.Patched`) at the very point the new behaviour begins, so old runs
replay the old branch (``docs/design.md`` lists each patch id).
"""

from __future__ import annotations

from perseus.core.actions import (
    Activity,
    Call,
    CancelWarmUp,
    ContinueAsNew,
    DrainNotifications,
    Failure,
    Log,
    Notify,
    Patched,
    Proc,
    Retry,
    Search,
    Undelivered,
    WaitForWork,
    WaitHandlers,
    WaitUntil,
)
from perseus.core.handoffs import HandoffProcedures
from perseus.core.leases import LeaseProcedures
from perseus.core.standbys import StandbyProcedures
from perseus.core.state import Ending, Refusal, Ticket
from perseus.decisions import (
    InstanceFacts,
    LoopFacts,
    StartPath,
    Step,
    next_step,
    refuse_command,
    refuse_handoff,
    start_path,
)
from perseus.errors import InvalidTransition, StepFailed
from perseus.lifecycle import Command, Role, State, plan
from perseus.models import (
    CommandResult,
    ConnectorReport,
    EventKind,
    HandoffConfirm,
    HandoffRequest,
    HostRestarted,
    Identity,
    IdentityRequest,
    InstanceSnapshot,
    PromoteRequest,
    RegistrationResult,
    ResolveRequest,
)


class InstanceCore(LeaseProcedures, StandbyProcedures, HandoffProcedures):
    """One exchange instance on one host (workflow id ``instance-{exchange}-{host}``), decided.

    ``run()`` is the run's whole procedure; it returns the run's outcome, or ends in
    :class:`~perseus.core.actions.ContinueAsNew`. The ``on_*``/``enqueue`` methods are what signals
    and updates do to the memory; ``refuse_*`` judge a command before it is accepted.
    """

    def has_result(self, ticket: Ticket) -> bool:
        return ticket.number in self.s.results

    def take_result(self, ticket: Ticket) -> CommandResult:
        return self.s.results.pop(ticket.number)

    def on_promote(self, req: PromoteRequest) -> None:
        """A standby is told the exchange is (about to be) free. It may arrive after this standby
        already took the exchange on its own: then only the confirmation the sender waits for is owed."""
        if self.s.outcome is None:
            self.s.promotions.append(req)

    def on_handoff_reply(self, reply: HandoffConfirm) -> None:
        self.s.handoff_reply = reply

    def on_host_shutting_down(self) -> None:
        self.s.host_going_down = True

    def on_host_restarted(self, req: HostRestarted) -> None:
        """This instance's host has a new worker process: whatever ran on the old one is gone."""
        if req.host == self.inp.host and self.s.outcome is None:
            self.s.host_restarted = True

    def facts(self) -> InstanceFacts:
        s = self.s
        return InstanceFacts(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            host=self.inp.host,
            role=s.role,
            state=s.state,
            queued=[t.command for t in s.queue],
            gone=s.outcome or s.registration_error,
            host_going_down=s.host_going_down,
        )

    def refuse_command(self, command: Command) -> None:
        """Raise ``InvalidTransition`` if the command must be refused (before it reaches history)."""
        refuse_command(self.facts(), command)

    def refuse_handoff(self, req: HandoffRequest) -> None:
        refuse_handoff(self.facts(), req.to_host)

    def registration_settled(self) -> bool:
        s = self.s
        return s.claim is not None or s.standby_visible or s.registration_error is not None

    def registration(self) -> RegistrationResult | Refusal:
        """Once settled: the registration, or why it was refused (message, error type)."""
        s = self.s
        if s.registration_error is not None or s.resolved is None:
            return Refusal(
                s.registration_error or "registration failed",
                s.registration_error_type or "RegistrationFailed",
            )
        return RegistrationResult(
            exchange=s.resolved.exchange.name,
            exchange_id=s.resolved.exchange.id,
            host=self.inp.host,
            hostname=s.hostname or self.inp.host,
            ip_address=s.ip_address,
            # A standby holds no claim: its own id, and epoch 0.
            instance_id=s.claim.instance_id if s.claim else s.standby_id or "",
            epoch=s.claim.epoch if s.claim else 0,
            state=s.state,
            workflow_id=self.wf_id,
            role=Role.ACTIVE if s.claim else Role.STANDBY,
        )

    def snapshot(self) -> InstanceSnapshot:
        s = self.s
        return InstanceSnapshot(
            workflow_id=self.wf_id,
            exchange=self.inp.exchange,
            exchange_id=s.resolved.exchange.id if s.resolved else None,
            host=self.inp.host,
            hostname=s.hostname,
            ip_address=s.ip_address,
            state=s.state,
            registered=s.claim is not None and s.outcome is None,
            claim=s.claim,
            symbol_count=s.symbol_count,
            connected_at=s.connected_at,
            last_error=s.last_error,
            last_heartbeat_ok=s.last_heartbeat_ok,
            pending=[t.command for t in s.queue],
            runs=s.runs,
            outcome=s.outcome,
            role=s.role,
            priority=self.inp.priority,
        )

    def next_step(self, *, lease_done: bool, history_long: bool) -> Step | None:
        """The loop's most urgent work, given what only the workflow can see (decisions.next_step)."""
        s = self.s
        return next_step(
            LoopFacts(
                role=s.role,
                lease_done=s.leasing and lease_done,
                host_going_down=s.host_going_down,
                promotions=len(s.promotions),
                queued=len(s.queue),
                history_long=history_long,
                host_restarted=s.host_restarted,
            )
        )

    def run(self) -> Proc:
        """Register (unless carried over), then serve: the loop of DESIGN §3."""
        s = self.s
        if s.resolved is None:
            s.actor = self.inp.actor
            try:
                registered = yield from (self._register_standby() if self.inp.standby else self._register())
            finally:
                s.actor = None
            if not registered:
                return (yield from self._finish(s.registration_error or "registration failed"))
            if self.inp.start_immediately and s.role is Role.ACTIVE:
                self.enqueue(Command.START, actor=self.inp.actor)
        for req in s.carried_notifications:
            yield Notify(req)
        while True:
            if not s.leasing:
                yield from (self._start_lease() if s.role is Role.ACTIVE else self._start_standby_lease())
                yield from self._maybe_warm_standby()
            step = yield WaitForWork()
            yield from self._decided(f"{step} ({s.state.value})")
            outcome = yield from self._serve(step)
            if outcome is not None:
                return (yield from self._finish(outcome))

    def _serve(self, step: Step) -> Proc:
        """Do one piece of the loop's work; the run's outcome when it must end, else None."""
        s = self.s
        if step is Step.LEASE_ENDED:
            carry_on = yield from (self._after_lease() if s.role is Role.ACTIVE else self._after_watch())
            return None if carry_on else s.outcome or str(Ending.INSTANCE_LOST)
        if step is Step.HOST_GOING_DOWN:
            yield from self._cancel_lease()
            if s.role is Role.ACTIVE:
                # Woken, a standby claims and acts at once: it may only when our connector is known
                # stopped and the key was ours. Otherwise it finds the key gone (or expiring) on its
                # own and waits the renew deadline out, as a vacancy that proves nothing requires.
                released = yield from self._release()
                # Patched: runs begun before it left every standby to find the vacancy by itself.
                if released and (yield Patched("wake-standby-on-release")):
                    yield from self._wake_standby(
                        f"{self.inp.exchange} on {self.inp.host} released: its worker shut down"
                    )
            else:
                yield from self._drop_standby()
                yield from self._stop_warm("the worker is shutting down")
            return f"{Ending.RELEASED}: the worker on {self.inp.host} shut down"
        if step is Step.HOST_RESTARTED:
            s.host_restarted = False
            if s.role is Role.STANDBY:
                yield Log(f"{self.wf_id}: the worker on {self.inp.host} started again: watching from it")
                yield from self._cancel_lease()
                if s.warm_task is not None:
                    yield CancelWarmUp()
                # The warm connector died with the old process: the loop warms one up again.
                s.warm_here, s.warm_task = False, None
                return None
            if not s.leasing:
                return None  # nothing of ours runs on the host between two steps
            # The lease died with the old process: judged now as its heartbeat timeout would judge
            # it later — re-attach to the renewals if Redis shows the claim still ours (the
            # connector is started again), lost if it went unrenewed past its deadline.
            yield from self._cancel_lease()
            gone = StepFailed(
                Failure(message=f"the worker on {self.inp.host} started again", timeout="RESTART")
            )
            carry_on = yield from self._lease_failed(gone)
            return None if carry_on else s.outcome or str(Ending.INSTANCE_LOST)
        if step is Step.PROMOTE:
            yield from self._cancel_lease()
            yield from self._promote(s.promotions.pop(0))
            return None
        if step is Step.CONFIRM_PROMOTION:
            yield from self._owe_confirmation(s.promotions.pop(0))
            return None
        if step is Step.COMMAND:
            ticket = s.queue.pop(0)
            s.actor = ticket.actor
            try:
                result, outcome = yield from self._run_ticket(ticket)
            finally:
                s.actor = None
            if ticket.number >= 0:  # internal tickets (promotion, restart) have nobody waiting
                s.results[ticket.number] = result
            return outcome
        # Step.CONTINUE_AS_NEW
        yield from self._cancel_lease()
        # A command accepted meanwhile has a caller waiting on this run: run it first (its handler
        # would never finish otherwise) and continue as new afterwards.
        yield WaitUntil(lambda: bool(s.queue), or_handlers_finished=True)
        if not s.queue:
            undelivered = yield Undelivered()
            carried = s.carried(undelivered)
            yield ContinueAsNew(self.inp.model_copy(update={"carried": carried, "start_immediately": False}))
        return None

    def _run_ticket(self, ticket: Ticket) -> Proc:
        """Run one queued command: (its result, the run's outcome if it ends the instance)."""
        if ticket.command is Command.SHUTDOWN:
            result = yield from self._execute(ticket.command)
            if result.error is not None:
                return result, None
            # The caller hears back only once the claim is released.
            yield from self._cancel_lease()
            released = yield from self._release_claim()
            # Our connector stopped (the walk down succeeded): the best standby may act at once.
            # Patched: runs begun before it left the standby to find a vacancy that proves nothing,
            # so it waited out our renew deadline holding the claim in idle.
            if released and (yield Patched("wake-standby-on-shutdown")):
                yield from self._wake_standby(f"{self.inp.exchange} on {self.inp.host} shut down")
            yield from self._drop_standby()
            yield from self._stop_warm("shut down")
            return result, str(Ending.SHUT_DOWN)
        if ticket.command is Command.HANDOFF:
            result = yield from self._handoff(ticket)
            return result, self.s.outcome
        result = yield from self._execute(ticket.command, promoted=ticket.promoted)
        if ticket.confirm_to is not None:
            yield from self._confirm_takeover(ticket.confirm_to, result)
        elif ticket.promoted and result.error is not None and (yield Patched("failed-promotion-moves-on")):
            # Patched: runs begun before it kept the claim in idle, running nothing, for good.
            yield from self._after_failed_promotion(result.error)
        return result, None

    def _finish(self, outcome: str) -> Proc:
        s = self.s
        s.outcome = outcome
        # Give in-flight update handlers their answer before the run closes.
        for ticket in s.queue:
            s.results[ticket.number] = CommandResult(
                command=ticket.command,
                from_state=s.state,
                state=s.state,
                transitions=[],
                error=f"instance ended: {outcome}",
            )
        s.queue.clear()
        yield self._details()
        yield DrainNotifications()
        yield WaitHandlers()
        return outcome

    def _identify(self) -> Proc:
        """Resolve the exchange and admin, and learn the host's identity on its own queue."""
        s = self.s
        try:
            s.resolved = yield Call(
                Activity.RESOLVE_INSTANCE,
                ResolveRequest(exchange=self.inp.exchange, admin_email=self.inp.admin_email),
                start_to_close_s=10,
                retry=Retry.SHARED,
                summary="resolve exchange and admin",
            )
            identity: Identity = yield from self._on_host(
                Call(
                    Activity.DETECT_IDENTITY,
                    IdentityRequest(host=self.inp.host),
                    queue=self.host_queue,
                    schedule_to_start_s=self._host_wait(),
                    start_to_close_s=30,
                    retry=Retry.HOST,
                    summary=f"identity on {self.inp.host}",
                )
            )
        except StepFailed as err:
            s.registration_error = self._explain(err)
            # A timeout (no worker for the host, a server that never answered) is unavailability.
            s.registration_error_type = err.failure.error_type or "ServiceUnavailable"
            return False
        s.hostname, s.ip_address = identity.hostname, identity.ip_address
        s.registered_at = self.clock.now()
        return True

    def _register(self) -> Proc:
        if not (yield from self._identify()):
            return False
        result = yield from self._claim()
        if result is None:
            return False
        yield Search(state=self.s.state)
        yield self._details()
        return True

    def _register_standby(self) -> Proc:
        """Become visible as a standby: no claim, a record with a TTL, a ``standby_registered`` event."""
        s = self.s
        if not (yield from self._identify()):
            return False
        try:
            yield from self._become_standby(required=True)
        except StepFailed as err:
            s.registration_error = f"standby registration failed: {err.failure.message}"
            s.registration_error_type = err.failure.error_type or "ServiceUnavailable"
            return False
        return True

    def _execute(self, command: Command, *, promoted: bool = False) -> Proc:
        """Walk ``command``'s transitions. ``promoted``: the start of a standby that just took the
        exchange, whose connector steps get one attempt each — another standby may be waiting, and
        a failed promotion hands over to it (or, alone, tries again after a backoff) sooner than
        the host steps' own retries (1 s, then 2 s) would give up."""
        s = self.s
        start_state = s.state
        try:
            path = plan(command, s.state)
        except InvalidTransition as exc:
            return CommandResult(
                command=command, from_state=start_state, state=s.state, transitions=[], error=str(exc)
            )
        done: list[State] = []
        try:
            if command is Command.START:
                # Patched: runs begun before it retried each step of a promoted start three times:
                # a promotion whose connector could not connect held the exchange 3 s longer.
                once = promoted and (yield Patched("promoted-start-tries-once"))
                activated = yield from self._start(done, retry=Retry.ONCE if once else Retry.HOST)
                if activated is not None:
                    return CommandResult(
                        command=command,
                        from_state=start_state,
                        state=s.state,
                        transitions=done,
                        detail=activated,
                    )
            else:
                for target in path:
                    if target is State.STOPPED:
                        yield from self._host_step(Activity.CONNECTOR_DISCONNECT)
                    yield from self._transition(target)
                    done.append(target)
        except StepFailed as err:
            reason = self._explain(err)
            yield from self._fail(reason)
            return CommandResult(
                command=command,
                from_state=start_state,
                state=s.state,
                transitions=done,
                error=f"{command.value} failed: {reason}; recovered to {s.state.value}",
            )
        return CommandResult(command=command, from_state=start_state, state=s.state, transitions=done)

    def _start(self, done: list[State], *, retry: Retry = Retry.HOST) -> Proc:
        """idle → starting → warming → active, appending to ``done``; a warm standby's connector is
        activated instead of started (what it says, then), a cold one is started (None)."""
        s = self.s
        yield from self._transition(State.STARTING)
        done.append(State.STARTING)
        how = start_path(warm_here=s.warm_here, warming=s.warm_task is not None)
        if how is StartPath.WARM and (yield Patched("warm-activate")):
            cold_because, _ = yield from self._activate_warm()
            if cold_because is None:
                s.connected_at = self.clock.now()
                self._started()
                for state in (State.WARMING, State.ACTIVE):
                    yield from self._transition(state)
                    done.append(state)
                return f"warm standby activated at epoch {s.claim.epoch if s.claim else 0}"
            yield from self._event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        report: ConnectorReport = yield from self._host_step(Activity.CONNECTOR_PREPARE, retry=retry)
        s.symbol_count = report.symbol_count
        yield from self._transition(State.WARMING)
        done.append(State.WARMING)
        yield from self._host_step(Activity.CONNECTOR_WARM_UP, retry=retry)
        yield from self._host_step(Activity.CONNECTOR_CONNECT, retry=retry)
        s.connected_at = self.clock.now()
        self._started()
        yield from self._transition(State.ACTIVE)
        done.append(State.ACTIVE)
        return None
