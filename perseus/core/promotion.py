"""A standby taking over: its watch ending (a vacancy, a lost record, a silent host), the race for
the claim, the start cold or warm, a start that failed, and the confirmation a handoff waits for.

Holds no memory of its own: it moves the exchange between the parts that own it (the claim, the
standby, the warm connector, the status). Invariants 4 and 5 of :mod:`perseus.core.decisions` rule here:
after a Redis outage the holder goes first, and a warm standby's connector acts only under a claim
just taken.
"""

from __future__ import annotations

from collections.abc import Callable

from perseus.core.actions import (
    Activity,
    CancelWarmUp,
    Log,
    Patched,
    Proc,
    Search,
    Signal,
    WaitUntil,
    tolerated,
)
from perseus.core.context import Context
from perseus.core.decisions import (
    StartPath,
    act_after_vacancy_s,
    holders_release,
    release_goes_on_to,
    released_by_holder,
    start_path,
)
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, Role, State
from perseus.core.standbys import Standbys
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.models import CommandResult, EventKind, HandoffConfirm, InstanceStatus, PromoteRequest
from perseus.timing import CONNECTOR_STOP_TIMEOUT_S

#: Patch id (docs/design.md, "Patches in use since 0.1.0"): a promotion whose lease is issued after
#: the host's worker said it started again settles that restart itself.
PROMOTION_OUTRUNS_A_RESTART = "promotion-outruns-a-host-restart"
#: Patch id: a standby woken by a holder's release that loses the race passes the release on to
#: the standby that won.
RELEASE_GOES_ON = "a-lost-race-passes-the-release-on"


class Promotion:
    """The standby's side of a takeover."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        *,
        leases: Leases,
        status: Status,
        standbys: Standbys,
        warm: Warm,
        enqueue: Callable[..., object],
        become_standby: Callable[[], Proc],
        waiting_for: Callable[[], bool],
        restart_pending: Callable[[], bool],
        restart_settled: Callable[[], None],
    ) -> None:
        self.ctx, self.host = ctx, host
        self.leases, self.status, self.standbys, self.warm = leases, status, standbys, warm
        self._enqueue, self._become_standby = enqueue, become_standby
        self._waiting_for = waiting_for
        self._restart_pending, self._restart_settled = restart_pending, restart_settled

    def promote(self, req: PromoteRequest) -> Proc:
        """Try to take the exchange. Won: drop the standby record, ``promoted``, start. Lost: stay.
        Every path that promotes (a promote signal, our own watch's vacancy) settles here a restart
        of our host's worker heard before the promotion's lease was issued (below).

        A warm standby is activated right after the claim — the one step fencing requires first —
        and the status walks starting → warming → active behind it; if it cannot be, it starts cold.
        """
        ctx, standbys, status = self.ctx, self.standbys, self.status
        self.leases.at_least(req.min_epoch)
        # Only a handoff (or drain) has someone waiting for the answer: anything else promotes
        # this standby on its own, which a pause forbids.
        automatic = req.confirm_to is None
        winner: list[InstanceStatus | None] = []
        result = yield from self.leases.take_claim(
            quiet=True, take_lapsed=req.take_lapsed, automatic=automatic, lost_to=winner.append
        )
        if result is None:
            if req.confirm_to:
                yield from self.reply(req.confirm_to, ok=False, detail="the exchange was not free to claim")
            elif (told := release_goes_on_to(req, winner[0] if winner else None, ctx.wf_id)) is not None:
                yield from self._pass_on(req, told)
            return
        standbys.activate()
        yield from self.leases.start()  # renew the fresh claim at once
        if self._restart_pending() and (yield Patched(PROMOTION_OUTRUNS_A_RESTART)):
            # Our host's worker said it started again before this lease was issued: the lease, and
            # the connector activated or started cold below, run on the new process, and nothing
            # of ours is left on the old one. Judging the restart afterwards would cancel this
            # healthy lease and wait out a whole pickup window before starting the connector (a
            # chaos run: 5 s over B after a kill while Temporal was frozen).
            self._restart_settled()
        reason = req.reason
        if req.act_after_s:
            # The holder whose key vanished may act until its renew deadline: ours must not yet —
            # unless that holder tells us meanwhile that it stopped and released (a graceful stop
            # or shutdown wakes us; our watch may have seen the key go first).
            yield WaitUntil(
                lambda: released_by_holder(standbys.promotions, req.min_epoch),
                timeout_s=req.act_after_s,
                summary="wait out the old deadline",
            )
            # The event says why we act now: the holder's word, not the vacancy our watch saw
            # first (under load it usually is first: the release deletes the key at once).
            release = holders_release(standbys.promotions, req.min_epoch)
            if release is not None:
                reason = f"{release.reason} (its key was seen gone first)"
        task = self.warm.take_task()
        warming = task is not None and not task.done
        if task is not None and warming:
            # Still warming up: the start goes cold (its prepare replaces the half-warm connector).
            yield CancelWarmUp()
            self.warm.consume()
        cold_because: str | None = None
        no_worker = False
        warm = start_path(warm_here=self.warm.warm_here, warming=warming) is StartPath.WARM
        if warm:
            cold_because, no_worker = yield from self.warm.activate()
        yield from standbys.drop(on_host=True)  # our host just took the claim for us
        yield Search(role=Role.ACTIVE)
        how = ""
        if warm:
            how = f" (warm: {'activated' if cold_because is None else 'not activated'})"
        over = f"; claimed over {result.took_over}" if result.took_over else ""
        yield from status.event(EventKind.PROMOTED, detail=reason + over + how)
        yield from status.recover()  # a former active one may still read stopped
        if warm and cold_because is None:
            status.connected_now()
            standbys.started()
            for target in (State.STARTING, State.WARMING, State.ACTIVE):
                yield from status.transition(target)
            if req.confirm_to:
                yield from self.reply(req.confirm_to, ok=True, detail=f"active on {ctx.inp.host} (warm)")
            return
        if cold_because is not None and no_worker:
            # Our host has no worker: a cold start would only wait for it again. A handoff hears at
            # once (and keeps its exchange); otherwise the lease on this host fails like any other.
            yield from status.event(EventKind.ERROR, error=f"warm activation failed: {cold_because}")
            if req.confirm_to:
                failed = CommandResult(
                    command=Command.START,
                    from_state=status.state,
                    state=status.state,
                    transitions=[],
                    error=cold_because,
                )
                yield from self.confirm_takeover(req.confirm_to, failed)
            return
        if cold_because is not None:
            yield from status.event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        self._enqueue(Command.START, first=True, internal=True, confirm_to=req.confirm_to, promoted=True)

    def _pass_on(self, req: PromoteRequest, winner: str) -> Proc:
        """Tell the standby that beat us to the exchange what its holder told us: it stopped and
        released (:func:`~perseus.core.decisions.release_goes_on_to`). Runs begun before this
        lost the race in silence."""
        if not (yield Patched(RELEASE_GOES_ON)):
            return
        refused = yield Signal(winner, "promote", req)
        if refused is not None:  # it is gone; its own deadline wait ends on its own
            yield Log(f"{self.ctx.wf_id}: the holder's release not passed on to {winner}: {refused}")

    def after_failed_promotion(self, reason: str) -> Proc:
        """We took the exchange but our connector could not start: a claim is held only by an
        instance that runs its connector. With another live standby, release and wake the best
        one (ours stopped: it may act at once) and wait here as a standby, behind every other one
        until a backoff has passed. Alone, keep the claim and try again here after that backoff."""
        ctx, status, leases = self.ctx, self.status, self.leases
        backoff = self.standbys.start_failed(reason)
        others = yield from self.standbys.others()
        if not others:
            yield from status.event(
                EventKind.ERROR,
                error=f"promoted on {ctx.inp.host}, but its connector could not start ({reason}); "
                f"no other standby: trying again here in {backoff:g}s",
                state=status.state,
            )
            # A command (or the host going down) meanwhile is the operator's say: it goes first.
            yield WaitUntil(self._waiting_for, timeout_s=backoff)
            if not self._waiting_for() and leases.claim is not None and status.state is State.IDLE:
                self._enqueue(Command.START, first=True, internal=True, promoted=True)
            return
        # Stopped for sure (the failed start's own disconnect may not have answered)? Then the next
        # standby may act the moment it claims; otherwise it waits out our renew deadline first.
        stopped = (
            yield from tolerated(
                self.host.step(
                    Activity.CONNECTOR_DISCONNECT, leases.claim, timeout_s=CONNECTOR_STOP_TIMEOUT_S
                ),
                "connector_disconnect",
            )
        ) is not None
        yield from leases.cancel()
        released = yield from leases.release()
        yield from status.event(
            EventKind.ERROR,
            error=f"promoted on {ctx.inp.host}, but its connector could not start ({reason}); "
            f"released the exchange for the next standby; {ctx.inp.host} goes behind the others "
            f"for {backoff:g}s",
            state=status.state,
        )
        if released:
            woken = yield from self.standbys.wake(
                f"{ctx.inp.exchange} on {ctx.inp.host} could not start its connector: {reason}",
                act_after_s=0.0 if stopped else act_after_vacancy_s(ctx.inp.heartbeat_interval_s),
                standbys=others,
            )
            if woken is None:
                yield Log(f"{ctx.wf_id}: no standby answered; the vacancy is theirs to find")
        yield from self._become_standby()

    def owe_confirmation(self, req: PromoteRequest, confirm_start: Callable[[str], bool]) -> Proc:
        """A promotion for an exchange we already took: answer the handoff that sent it (or, with a
        start queued, have that start answer it once done: ``confirm_start``)."""
        if req.confirm_to is None:
            return
        if confirm_start(req.confirm_to):
            return
        if self.status.state is State.ACTIVE:
            yield from self.reply(req.confirm_to, ok=True, detail=f"active on {self.ctx.inp.host}")
        else:
            yield from self.reply(
                req.confirm_to, ok=False, detail=f"{self.ctx.inp.host} is {self.status.state.value}"
            )

    def confirm_takeover(self, confirm_to: str, result: CommandResult) -> Proc:
        """After a promoted START: tell the handing-over instance; on failure give the claim back."""
        if result.error is None and self.status.state is State.ACTIVE:
            yield from self.reply(confirm_to, ok=True, detail=f"active on {self.ctx.inp.host}")
            return
        yield from self.leases.cancel()
        yield from self.leases.release()
        yield from self.reply(confirm_to, ok=False, detail=result.error or f"ended {self.status.state.value}")
        yield from self._become_standby()

    def reply(self, workflow_id: str, *, ok: bool, detail: str) -> Proc:
        claim = self.leases.claim
        epoch = claim.epoch if claim and ok else 0
        refused = yield Signal(
            workflow_id,
            "handoff_confirmed",
            HandoffConfirm(ok=ok, epoch=epoch, host=self.ctx.inp.host, detail=detail),
        )
        if refused is not None:  # the other side is gone; it will time out on its own
            yield Log(f"handoff reply to {workflow_id} not delivered: {refused}")
