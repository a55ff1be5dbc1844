"""A planned handoff: notify → takeover → confirm → step down; a failure midway takes the exchange back.

Nothing stops here before the target's worker has answered on its own queue; a warm target is
warm before our connector stops; the exchange is never left with nobody: a handoff that is not
confirmed in time claims the exchange again.
"""

from __future__ import annotations

from collections.abc import Callable

from perseus.core.actions import (
    Activity,
    Answer,
    Log,
    Proc,
    Signal,
    Sleep,
)
from perseus.core.context import Context
from perseus.core.decisions import (
    handoff_demotes,
)
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, State, plan
from perseus.core.standbys import Standbys
from perseus.core.state import Ending, HandoffState, Ticket
from perseus.core.status import Status
from perseus.core.targets import Target
from perseus.core.warm import Warm
from perseus.errors import StepFailed
from perseus.models import (
    CommandResult,
    EventKind,
    HandoffConfirm,
    PromoteRequest,
    StandbyRecord,
)
from perseus.timing import HANDOFF_STOP_TIMEOUT_S


class Handoffs:
    """The handing-over side of a planned handoff (the target's side is a promotion)."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: HandoffState,
        *,
        leases: Leases,
        status: Status,
        standbys: Standbys,
        warm: Warm,
        enqueue: Callable[..., object],
        become_standby: Callable[[], Proc],
        end: Callable[[str], None],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self.leases, self.status, self.standbys, self.warm = leases, status, standbys, warm
        self._enqueue, self._become_standby, self._end = enqueue, become_standby, end
        self.target = Target(ctx, standbys)

    def on_reply(self, reply: HandoffConfirm | None) -> None:
        """The target's answer (None: none yet)."""
        self.st = HandoffState(reply=reply)

    def handoff(self, ticket: Ticket) -> Answer[CommandResult]:
        """notify → takeover → confirm → step down. A failure midway takes the exchange back."""
        assert ticket.handoff and self.leases.claim and self.ctx.identity.resolved
        req = ticket.handoff
        start_state = self.status.state
        standbys: list[StandbyRecord] = yield from self.standbys.others()
        target = next((x for x in standbys if x.host == req.to_host), None)
        if target is None:
            standbys = yield from self.standbys.others()
            live = ", ".join(sorted({x.host for x in standbys})) or "none"
            return self._handoff_refused(
                f"no live standby of {self.ctx.inp.exchange} on host {req.to_host} (live standbys: {live})"
            )
        silent = yield from self.target.silent(target)
        if silent is None:
            silent = self.target.not_ready(target)
        if silent is not None:
            return (yield from self._handoff_aborted(target, silent))
        if target.warm and start_state is State.ACTIVE:
            # Make before break: the target's connector is warm before ours stops.
            waited_from = self.ctx.clock.now()
            target = yield from self.target.until_warm(target)
            # Not warm in time: handing over cold would stop ours for a start likely to fail too.
            waited = (self.ctx.clock.now() - waited_from).total_seconds()
            unready = self.target.not_ready(target, waited_s=waited)
            if unready is not None:
                return (yield from self._handoff_aborted(target, unready))
        yield from self.status.event(
            EventKind.HANDOFF,
            detail=f"notify: handing over to {target.host} (standby {target.instance_id}"
            + (", warm)" if target.warm_ready else ")"),
        )
        done: list[State] = []
        # Handing over while staying here as a warm standby: demote our connector instead of
        # stopping it, so that a handoff back is as quick as this one.
        keep_warm = handoff_demotes(shutdown=req.shutdown, warm=self.ctx.inp.connector.warm)
        try:
            for state in plan(Command.HANDOFF, self.status.state):
                if state is State.STOPPED:
                    if not keep_warm or not (yield from self.warm.demote()):
                        yield from self.host.step(
                            Activity.CONNECTOR_DISCONNECT, self.leases.claim, timeout_s=HANDOFF_STOP_TIMEOUT_S
                        )
                yield from self.status.transition(state)
                done.append(state)
        except StepFailed as err:
            # Our connector did not stop: nothing was handed over and the claim is still ours.
            # Record it, recover, and bring the connector back if it was running.
            reason = self.host.explain(err)
            yield from self.status.event(
                EventKind.HANDOFF,
                detail=f"aborted: the connector did not stop ({reason}); {self.ctx.inp.exchange} stays here",
            )
            yield from self.status.fail(reason)
            if start_state is State.ACTIVE:
                self._enqueue(Command.START, first=True, internal=True)
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=self.status.state,
                transitions=done,
                error=f"handoff to {target.host} failed (the connector did not stop: {reason}); "
                f"kept {self.ctx.inp.exchange} here",
            )
        old_claim = self.leases.claim
        assert old_claim
        old_epoch = old_claim.epoch
        yield from self.leases.cancel()
        # Reserved for the target: a standby above it in priority must not take the vacancy while
        # the target's claim is on its way (its workflow may be replaying on a new worker).
        yield from self.leases.release(to_host=target.host)
        released_at = self.ctx.clock.now()
        # To a warm target, the signal goes first: nobody is active until it is, so the takeover
        # event is written while it activates rather than before.
        signal_first = target.warm_ready
        takeover = f"takeover: released epoch {old_epoch} to {target.host}"
        if not signal_first:
            yield from self.status.event(EventKind.HANDOFF, detail=takeover)
        self.on_reply(None)
        refused = yield Signal(
            target.workflow_id,
            "promote",
            PromoteRequest(
                reason=f"handoff from {self.ctx.inp.host}",
                min_epoch=self.leases.highest_epoch,
                confirm_to=self.ctx.wf_id,
            ),
        )
        if refused is not None:
            self.on_reply(
                HandoffConfirm(ok=False, host=target.host, detail=f"standby unreachable: {refused}")
            )
        if signal_first:
            yield from self.status.event(EventKind.HANDOFF, detail=takeover)
        take_lapsed, act_after_s = False, 0.0
        if refused is None:
            # Not the target's workflow alone: it hears of a dead host only when Temporal times its
            # activity out (a heartbeat timeout: 18.75 s at 1 s), and the exchange would have no
            # connector meanwhile. The key in Redis shows it sooner.
            lost, take_lapsed, act_after_s = yield from self.target.await_confirmation(
                target, old_claim, released_at, answered=lambda: self.st.reply is not None
            )
            if lost is not None:
                self.on_reply(HandoffConfirm(ok=False, host=target.host, detail=lost))
        reply = self.st.reply
        assert reply is not None
        self.leases.drop_claim()
        if reply.ok:
            # Handoff events speak for the instance handing over; the target's epoch is in the text.
            yield from self.status.event(
                EventKind.HANDOFF,
                claim=old_claim,
                detail=f"confirm: {target.host} active at epoch {reply.epoch}",
            )
            if req.shutdown:
                self._end(f"{Ending.HANDED_OVER} to {target.host}")
            else:
                yield from self._become_standby()  # still warm if our connector was demoted
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=self.status.state,
                transitions=done,
                detail=f"{target.host} active at epoch {reply.epoch} (was epoch {old_epoch} here); "
                + ("this instance shut down" if req.shutdown else "this instance is a standby"),
            )
        # Midway failure: the exchange must not be left with nobody. Take it back.
        yield from self.status.event(
            EventKind.HANDOFF,
            claim=old_claim,
            detail=f"aborted: {reply.detail}; taking {self.ctx.inp.exchange} back",
        )
        if act_after_s:
            yield Sleep(act_after_s, summary=f"wait out {target.host}'s renew deadline")
        if (yield from self.leases.take_claim(quiet=True, take_lapsed=take_lapsed)) is not None:
            if start_state is State.ACTIVE:
                self._enqueue(Command.START, first=True, internal=True)
            error = f"handoff to {target.host} failed ({reply.detail}); kept {self.ctx.inp.exchange} here"
        else:
            yield from self._become_standby()
            error = f"handoff to {target.host} failed ({reply.detail}) and the exchange is held elsewhere now"
        return CommandResult(
            command=Command.HANDOFF,
            from_state=start_state,
            state=self.status.state,
            transitions=done,
            error=error,
        )

    def _handoff_aborted(self, target: StandbyRecord, why: str) -> Answer[CommandResult]:
        """Refused before anything stopped here: an ``aborted`` event, and the reason for the caller."""
        yield Log(f"{self.ctx.wf_id}: handoff to {target.host} refused: {why}", warning=True)
        yield from self.status.event(
            EventKind.HANDOFF, detail=f"aborted: {why}; {self.ctx.inp.exchange} stays here"
        )
        return self._handoff_refused(f"handoff to {target.host} refused ({why}); nothing changed")

    def _handoff_refused(self, error: str) -> CommandResult:
        """A handoff that stopped before anything changed here."""
        state = self.status.state
        return CommandResult(
            command=Command.HANDOFF, from_state=state, state=state, transitions=[], error=error
        )
