"""The failsafe's part of an instance (docs/design.md, "Failsafe: holding through a Redis outage"):
enrol in the exchange's roster at registration, answer a holder's ask for a promise on this
instance's own host, and leave the roster at the run's end. Only with the failsafe on; each new
command is behind a patch (``docs/design.md``, "Versioning the workflow"), so a run begun on 0.1.0
replays as it ran. The rules themselves are :mod:`perseus.core.decisions.failsafe`; the granter's
verdict needs a fresh probe of Redis, so it is decided on the host (``LeaseKeeper.grant``).
"""

from __future__ import annotations

from collections.abc import Callable

from perseus.core.actions import Activity, Answer, Call, Patched, Retry, Signal, ask
from perseus.core.context import Context
from perseus.core.host import Host
from perseus.errors import StepFailed
from perseus.keys import ROSTER_LEAVE, roster_workflow_id
from perseus.models import (
    EnrolRequest,
    GrantRequest,
    PromiseAnswer,
    PromiseRequest,
    RosterMember,
)
from perseus.timing import ROSTER_STEP_TIMEOUT_S, failsafe_counted_s

#: The patch that guards the failsafe's commands (new with the wiring; never a retired id).
FAILSAFE_PATCH = "failsafe-roster"


class Failsafe:
    """Enrol, grant, leave: the failsafe's commands of one instance."""

    def __init__(
        self, ctx: Context, host: Host, *, holds_claim: Callable[[], bool], highest_epoch: Callable[[], int]
    ) -> None:
        self.ctx, self.host = ctx, host
        self._holds_claim, self._highest_epoch = holds_claim, highest_epoch

    @property
    def on(self) -> bool:
        return self.ctx.inp.failsafe

    def member(self) -> RosterMember:
        return RosterMember(workflow_id=self.ctx.wf_id, host=self.ctx.inp.host)

    def enrol(self) -> Answer[None]:
        """Enrol in the roster on this instance's host, before it watches or claims (a failure is
        the registration's: an instance the holder cannot know of must not be able to claim)."""
        ctx = self.ctx
        if not self.on or not (yield Patched(FAILSAFE_PATCH)):
            return
        yield from self.host.on_host(
            Call(
                Activity.FAILSAFE_ENROL,
                EnrolRequest(
                    exchange=ctx.inp.exchange,
                    exchange_id=ctx.resolved.exchange.id,
                    member=self.member(),
                    heartbeat_interval_s=ctx.inp.heartbeat_interval_s,
                ),
                queue=ctx.host_queue,
                schedule_to_start_s=ctx.host_wait(),
                start_to_close_s=ROSTER_STEP_TIMEOUT_S,
                retry=Retry.HOST,
                summary=f"enrol in the failsafe roster of {ctx.inp.exchange}",
            )
        )

    def leave(self) -> Answer[None]:
        """The run ends: leave the roster (a signal; a roster that is gone needs nothing)."""
        if not self.on or not (yield Patched(FAILSAFE_PATCH)):
            return
        yield Signal(roster_workflow_id(self.ctx.inp.exchange), ROSTER_LEAVE, self.member())

    def promise(self, req: PromiseRequest) -> Answer[PromiseAnswer]:
        """A holder that cannot renew asks for a promise: this instance's host probes Redis,
        decides and records its bound before the answer leaves. No answer in time is a refusal."""
        ctx = self.ctx
        if not self.on:
            return PromiseAnswer(granted=False, reason="failsafe is off for this instance")
        if ctx.identity.resolved is None:
            return PromiseAnswer(granted=False, reason="not registered yet")
        if req.holder_workflow_id == ctx.wf_id:
            return PromiseAnswer(granted=False, reason="a holder does not promise to itself")
        if not (yield Patched(FAILSAFE_PATCH)):
            return PromiseAnswer(granted=False, reason="this run predates the failsafe")
        # Worth nothing to the holder once its count of it would have run out.
        worth_s = failsafe_counted_s(ctx.inp.heartbeat_interval_s)
        try:
            answer: PromiseAnswer = yield from ask(
                Call(
                    Activity.FAILSAFE_GRANT,
                    GrantRequest(
                        workflow_id=ctx.wf_id,
                        exchange_id=ctx.resolved.exchange.id,
                        heartbeat_interval_s=ctx.inp.heartbeat_interval_s,
                        failsafe=True,
                        holds_claim=self._holds_claim(),
                        asker_epoch=req.epoch,
                        highest_epoch_seen=self._highest_epoch(),
                    ),
                    queue=ctx.host_queue,
                    schedule_to_start_s=worth_s,
                    start_to_close_s=worth_s,
                    retry=Retry.ONCE,
                    summary=f"failsafe promise to epoch {req.epoch}",
                )
            )
        except StepFailed as err:
            return PromiseAnswer(granted=False, reason=f"no grant from this host: {err.failure.message}")
        return answer
