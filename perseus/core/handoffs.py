"""A planned handoff: notify → takeover → confirm → step down; a failure midway takes the exchange back.

Nothing stops here before the target's worker has answered on its own queue; a warm target is
warm before our connector stops; the exchange is never left with nobody: a handoff that is not
confirmed in time claims the exchange again.
"""

from __future__ import annotations

from perseus.core.actions import (
    Activity,
    Call,
    Log,
    Patched,
    Proc,
    Retry,
    Signal,
    Sleep,
    WaitUntil,
)
from perseus.core.state import Ending, Ticket
from perseus.core.steps import HANDOFF_TIMEOUT_S, InstanceSteps
from perseus.decisions import (
    handoff_demotes,
)
from perseus.errors import StepFailed
from perseus.keys import host_task_queue
from perseus.lifecycle import Command, State, plan
from perseus.models import (
    CommandResult,
    EventKind,
    HandoffConfirm,
    IdentityRequest,
    PromoteRequest,
    StandbyRecord,
)


class HandoffProcedures(InstanceSteps):
    """The handing-over side of a planned handoff (the target's side is a promotion)."""

    def _handoff(self, ticket: Ticket) -> Proc:
        """notify → takeover → confirm → step down. A failure midway takes the exchange back."""
        s = self.s
        assert ticket.handoff and s.claim and s.resolved
        req = ticket.handoff
        start_state = s.state
        standbys: list[StandbyRecord] = yield from self._standbys()
        target = next((x for x in standbys if x.host == req.to_host), None)
        if target is None:
            standbys = yield from self._standbys()
            live = ", ".join(sorted({x.host for x in standbys})) or "none"
            return self._handoff_refused(
                f"no live standby of {self.inp.exchange} on host {req.to_host} (live standbys: {live})"
            )
        silent = yield from self._target_silent(target)
        if silent is not None:
            yield from self._event(
                EventKind.HANDOFF, detail=f"aborted: {silent}; {self.inp.exchange} stays here"
            )
            return self._handoff_refused(f"handoff to {target.host} failed ({silent}); nothing changed")
        if target.warm and start_state is State.ACTIVE and (yield Patched("warm-handoff")):
            # Make before break: the target's connector is warm before ours stops.
            target = yield from self._until_warm(target)
        yield from self._event(
            EventKind.HANDOFF,
            detail=f"notify: handing over to {target.host} (standby {target.instance_id}"
            + (", warm)" if target.warm_ready else ")"),
        )
        done: list[State] = []
        # Handing over while staying here as a warm standby: demote our connector instead of
        # stopping it, so that a handoff back is as quick as this one.
        keep_warm = handoff_demotes(shutdown=req.shutdown, warm=self.inp.connector.warm) and (
            yield Patched("warm-handback")
        )
        try:
            for state in plan(Command.HANDOFF, s.state):
                if state is State.STOPPED:
                    if not keep_warm or not (yield from self._demote()):
                        yield from self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=30)
                yield from self._transition(state)
                done.append(state)
        except StepFailed as err:
            # Our connector did not stop: nothing was handed over and the claim is still ours.
            # Record it, recover, and bring the connector back if it was running.
            reason = self._explain(err)
            yield from self._event(
                EventKind.HANDOFF,
                detail=f"aborted: the connector did not stop ({reason}); {self.inp.exchange} stays here",
            )
            yield from self._fail(reason)
            if start_state is State.ACTIVE:
                self.enqueue(Command.START, first=True, internal=True)
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=s.state,
                transitions=done,
                error=f"handoff to {target.host} failed (the connector did not stop: {reason}); "
                f"kept {self.inp.exchange} here",
            )
        old_claim = s.claim
        old_epoch = old_claim.epoch
        yield from self._cancel_lease()
        yield from self._release_claim()
        # To a warm target, the signal goes first: nobody is active until it is, so the takeover
        # event is written while it activates rather than before.
        signal_first = target.warm_ready and (yield Patched("warm-handoff-signal-first"))
        takeover = f"takeover: released epoch {old_epoch} to {target.host}"
        if not signal_first:
            yield from self._event(EventKind.HANDOFF, detail=takeover)
        s.handoff_reply = None
        refused = yield Signal(
            target.workflow_id,
            "promote",
            PromoteRequest(
                reason=f"handoff from {self.inp.host}", min_epoch=s.highest_epoch, confirm_to=self.wf_id
            ),
        )
        if refused is not None:
            s.handoff_reply = HandoffConfirm(
                ok=False, host=target.host, detail=f"standby unreachable: {refused}"
            )
        if signal_first:
            yield from self._event(EventKind.HANDOFF, detail=takeover)
        if refused is None:
            answered = yield WaitUntil(
                lambda: s.handoff_reply is not None,
                timeout_s=HANDOFF_TIMEOUT_S + 4 * self.inp.heartbeat_interval_s,
            )
            if not answered:
                s.handoff_reply = HandoffConfirm(ok=False, host=target.host, detail="no confirmation in time")
        reply = s.handoff_reply
        assert reply is not None
        s.claim = None
        if reply.ok:
            # Handoff events speak for the instance handing over; the target's epoch is in the text.
            yield from self._event(
                EventKind.HANDOFF,
                claim=old_claim,
                detail=f"confirm: {target.host} active at epoch {reply.epoch}",
            )
            if req.shutdown:
                s.outcome = f"{Ending.HANDED_OVER} to {target.host}"
            else:
                yield from self._become_standby()  # still warm if our connector was demoted
            return CommandResult(
                command=Command.HANDOFF,
                from_state=start_state,
                state=s.state,
                transitions=done,
                detail=f"{target.host} active at epoch {reply.epoch} (was epoch {old_epoch} here); "
                + ("this instance shut down" if req.shutdown else "this instance is a standby"),
            )
        # Midway failure: the exchange must not be left with nobody. Take it back.
        yield from self._event(
            EventKind.HANDOFF,
            claim=old_claim,
            detail=f"aborted: {reply.detail}; taking {self.inp.exchange} back",
        )
        if (yield from self._claim(quiet=True)) is not None:
            if start_state is State.ACTIVE:
                self.enqueue(Command.START, first=True, internal=True)
            error = f"handoff to {target.host} failed ({reply.detail}); kept {self.inp.exchange} here"
        else:
            yield from self._become_standby()
            error = f"handoff to {target.host} failed ({reply.detail}) and the exchange is held elsewhere now"
        return CommandResult(
            command=Command.HANDOFF, from_state=start_state, state=s.state, transitions=done, error=error
        )

    def _handoff_refused(self, error: str) -> CommandResult:
        """A handoff that stopped before anything changed here."""
        s = self.s
        return CommandResult(
            command=Command.HANDOFF, from_state=s.state, state=s.state, transitions=[], error=error
        )

    def _target_silent(self, target: StandbyRecord) -> Proc:
        """Why the target's worker cannot take over now (it did not answer on its host queue), or
        None. Asked before anything stops here (patched ``handoff-asks-target-first``): a frozen or
        partitioned target otherwise leaves the exchange with nobody until the handoff times out."""
        if not (yield Patched("handoff-asks-target-first")):
            return None
        wait = self._host_wait()
        try:
            yield Call(
                Activity.DETECT_IDENTITY,
                IdentityRequest(host=target.host),
                queue=host_task_queue(target.host),
                schedule_to_start_s=wait,
                start_to_close_s=wait,
                retry=Retry.ONCE,
                summary=f"is {target.host} answering?",
            )
        except StepFailed as err:
            return f"the worker on {target.host} did not answer: {err.failure.message}"
        return None

    def _until_warm(self, target: StandbyRecord) -> Proc:
        """Wait (bounded by the connector's ready timeout) until the warm target says it is ready;
        the latest record of it either way — a target that never gets ready is handed over cold."""
        waited = 0.0
        limit = self.inp.connector.ready_timeout_s + 2 * self.inp.heartbeat_interval_s
        step = max(1.0, self.inp.heartbeat_interval_s / 2)
        while not target.warm_ready and waited < limit:
            yield Sleep(step, summary=f"wait for {target.host} to be warm")
            waited += step
            standbys: list[StandbyRecord] = yield from self._standbys()
            found = next((x for x in standbys if x.instance_id == target.instance_id), None)
            if found is None:
                break  # gone meanwhile: the promote signal below finds out
            target = found
        if not target.warm_ready:
            yield Log(f"{self.wf_id}: {target.host} not warm after {waited:.0f}s: handing over cold")
        return target
