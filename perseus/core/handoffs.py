"""A planned handoff: notify → takeover → confirm → step down; a failure midway takes the exchange back.

Nothing stops here before the target's worker has answered on its own queue; a warm target is
warm before our connector stops; the exchange is never left with nobody: a handoff that is not
confirmed in time claims the exchange again.
"""

from __future__ import annotations

from datetime import datetime

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
    handoff_target_look,
    seconds_until,
    target_not_ready,
)
from perseus.errors import StepFailed
from perseus.keys import host_task_queue
from perseus.lifecycle import Command, Role, State, plan
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimProbeRequest,
    CommandResult,
    ConnectorPreflight,
    ConnectorRequest,
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
        silent, checks_ready = yield from self._target_silent(target)
        if silent is None and checks_ready:
            silent = self._target_not_ready(target)
        if silent is not None:
            return (yield from self._handoff_aborted(target, silent))
        if target.warm and start_state is State.ACTIVE and (yield Patched("warm-handoff")):
            # Make before break: the target's connector is warm before ours stops.
            waited_from = self.clock.now()
            target = yield from self._until_warm(target)
            if checks_ready:
                # Not warm in time: handing over cold would stop ours for a start likely to fail too.
                waited = (self.clock.now() - waited_from).total_seconds()
                unready = self._target_not_ready(target, waited_s=waited)
                if unready is not None:
                    return (yield from self._handoff_aborted(target, unready))
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
        released_at = self.clock.now()
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
        take_lapsed, act_after_s = False, 0.0
        if refused is None:
            # Patched: runs begun before it waited for the target's workflow alone, which hears of
            # a dead host only when Temporal times its activity out (a heartbeat timeout: 18.75 s
            # at 1 s), and the exchange had no connector meanwhile.
            if (yield Patched("handoff-watches-target-claim")):
                take_lapsed, act_after_s = yield from self._await_confirmation(target, old_claim, released_at)
            else:
                answered = yield WaitUntil(
                    lambda: s.handoff_reply is not None,
                    timeout_s=HANDOFF_TIMEOUT_S + 4 * self.inp.heartbeat_interval_s,
                )
                if not answered:
                    s.handoff_reply = HandoffConfirm(
                        ok=False, host=target.host, detail="no confirmation in time"
                    )
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
        if act_after_s:
            yield Sleep(act_after_s, summary=f"wait out {target.host}'s renew deadline")
        if (yield from self._claim(quiet=True, take_lapsed=take_lapsed)) is not None:
            if start_state is State.ACTIVE:
                self.enqueue(Command.START, first=True, internal=True)
            error = f"handoff to {target.host} failed ({reply.detail}); kept {self.inp.exchange} here"
        else:
            yield from self._become_standby()
            error = f"handoff to {target.host} failed ({reply.detail}) and the exchange is held elsewhere now"
        return CommandResult(
            command=Command.HANDOFF, from_state=start_state, state=s.state, transitions=done, error=error
        )

    def _await_confirmation(self, target: StandbyRecord, old_claim: Claim, released_at: datetime) -> Proc:
        """Wait for the target's confirmation, looking at the key meanwhile
        (:func:`~perseus.decisions.handoff_target_look`): a target that died or froze midway is
        given up as soon as Redis shows it, not when its workflow hears of it. Leaves the answer in
        ``handoff_reply``; returns whether the take-back may claim over the target's key, and how
        long it waits before it claims."""
        s = self.s
        assert s.resolved
        interval = self.inp.heartbeat_interval_s
        limit = HANDOFF_TIMEOUT_S + 4 * interval
        look_in = interval
        seen_target = False
        while True:
            waited = (self.clock.now() - released_at).total_seconds()
            if waited >= limit:
                s.handoff_reply = HandoffConfirm(ok=False, host=target.host, detail="no confirmation in time")
                return False, 0.0
            answered = yield WaitUntil(
                lambda: s.handoff_reply is not None,
                timeout_s=min(look_in, limit - waited),
                summary=f"confirmation from {target.host}",
            )
            if answered:
                return False, 0.0
            probe: ClaimProbe | None = yield from self._tolerated(
                Call(
                    Activity.PROBE_CLAIM,
                    ClaimProbeRequest(exchange_id=s.resolved.exchange.id, claim=old_claim),
                    start_to_close_s=5,
                    retry=Retry.TWICE,
                    summary=f"has {target.host} claimed?",
                ),
                "claim probe failed",
            )
            if s.handoff_reply is not None:
                return False, 0.0  # answered while we looked
            if probe is None:
                look_in = interval  # Redis did not answer: the target's workflow may still
                continue
            look = handoff_target_look(
                holder=probe.holder,
                renewed_ms_ago=probe.renewed_ms_ago,
                target_host=target.host,
                since_release_s=(self.clock.now() - released_at).total_seconds(),
                interval_s=interval,
                seen_target=seen_target,
            )
            if look.lost is not None:
                yield Log(f"{self.wf_id}: handoff to {target.host}: {look.lost}", warning=True)
                s.handoff_reply = HandoffConfirm(ok=False, host=target.host, detail=look.lost)
                return look.take_lapsed, look.act_after_s
            seen_target = seen_target or probe.holder == target.host
            look_in = look.look_again_s

    def _handoff_aborted(self, target: StandbyRecord, why: str) -> Proc:
        """Refused before anything stopped here: an ``aborted`` event, and the reason for the caller."""
        yield Log(f"{self.wf_id}: handoff to {target.host} refused: {why}", warning=True)
        yield from self._event(EventKind.HANDOFF, detail=f"aborted: {why}; {self.inp.exchange} stays here")
        return self._handoff_refused(f"handoff to {target.host} refused ({why}); nothing changed")

    def _target_not_ready(self, target: StandbyRecord, *, waited_s: float | None = None) -> str | None:
        """Why the target's record says its connector is not ready (decisions.target_not_ready)."""
        return target_not_ready(
            host=target.host,
            warm=target.warm,
            warm_ready=target.warm_ready,
            warm_error=target.warm_error,
            retry_in_s=seconds_until(target.warm_retry_at, self.clock.now()),
            waited_s=waited_s,
        )

    def _handoff_refused(self, error: str) -> CommandResult:
        """A handoff that stopped before anything changed here."""
        s = self.s
        return CommandResult(
            command=Command.HANDOFF, from_state=s.state, state=s.state, transitions=[], error=error
        )

    def _target_silent(self, target: StandbyRecord) -> Proc:
        """Why the target cannot take over now, or None; and whether its readiness is checked.

        Asked before anything stops here (patched ``handoff-asks-target-first``): a frozen or
        partitioned target otherwise leaves the exchange with nobody until the handoff times out.
        Since ``handoff-checks-target-ready`` the target's host is asked whether our connector could
        start there (its worker answering proves it alive, as the identity call did), and the
        caller refuses a warm target that is not ready: a handoff whose cold start then fails left
        the exchange without a connector for half a minute before it was taken back."""
        if not (yield Patched("handoff-asks-target-first")):
            return None, False
        checks_ready: bool = yield Patched("handoff-checks-target-ready")
        wait = self._host_wait()
        try:
            if not checks_ready:
                yield Call(
                    Activity.DETECT_IDENTITY,
                    IdentityRequest(host=target.host),
                    queue=host_task_queue(target.host),
                    schedule_to_start_s=wait,
                    start_to_close_s=wait,
                    retry=Retry.ONCE,
                    summary=f"is {target.host} answering?",
                )
                return None, False
            s = self.s
            assert s.resolved
            found: ConnectorPreflight = yield Call(
                Activity.CONNECTOR_PREFLIGHT,
                ConnectorRequest(
                    workflow_id=target.workflow_id,
                    exchange_id=s.resolved.exchange.id,
                    exchange_name=s.resolved.exchange.name,
                    spec=self.inp.connector,
                    heartbeat_interval_s=self.inp.heartbeat_interval_s,
                    role=Role.STANDBY,
                ),
                queue=host_task_queue(target.host),
                schedule_to_start_s=wait,
                start_to_close_s=wait,
                retry=Retry.ONCE,
                summary=f"can {target.host} start the connector?",
            )
        except StepFailed as err:
            return f"the worker on {target.host} did not answer: {err.failure.message}", checks_ready
        if found.cannot_start is not None:
            return f"{target.host} cannot start the connector: {found.cannot_start}", True
        return None, True

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
