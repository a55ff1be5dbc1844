"""What an active instance does when its lease ends: re-attach, reclaim, restart, step aside, or lost.

Invariant 1 of :mod:`perseus.core.decisions` rules here: a heartbeat timeout proves nothing about Redis, so
a silent host is re-attached while Redis shows its claim renewed, and its claim is freed only once
Redis proves it unrenewed past the renew deadline (its connector stopped by then).

Owns :class:`~perseus.core.state.RecoveryState` (the connector's restarts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from perseus.core.actions import Answer, CountRestart, Failure, Log, Patched, Proc, Retry, Sleep, WaitLease
from perseus.core.context import Context
from perseus.core.decisions import (
    HostVerdict,
    LeaseVerdict,
    judge_claim,
    lease_verdict,
    restart_delay,
    stale_in,
)
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, State
from perseus.core.pause import steps_aside
from perseus.core.standbys import Standbys
from perseus.core.state import Ending, RecoveryState
from perseus.core.status import Status
from perseus.errors import StepFailed
from perseus.models import ClaimProbe, EventKind, LeaseOutcome
from perseus.timing import LOOK_SLACK_S, LOOK_WAIT_FLOOR_S, PICKUP_FACTOR, PICKUP_SLACK_FLOOR_S

RUNNING_STATES = (State.STARTING, State.WARMING, State.ACTIVE)
#: The patch (after 0.1.0) by which stepping aside wakes a standby from the list it decided on rather
#: than reading the list again after the release (docs/design.md, "Versioning the workflow").
STEP_ASIDE_WAKES_FROM_ITS_LIST = "step-aside-wakes-from-its-list"
#: The patch (after 0.1.0) by which a silent holder that last reported holding through a Redis
#: outage (the failsafe) is judged lost only once the horizon it reported has passed.
LOST_WAITS_FOR_FAILSAFE_HORIZON = "lost-waits-for-failsafe-horizon"
#: The patch by which a connector that failed with no restart left hands the exchange to a standby.
FAILED_CONNECTOR_HANDS_OVER = "failed-connector-hands-over"


class Recovery:
    """A lease that ended, judged and acted on."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: RecoveryState,
        *,
        leases: Leases,
        status: Status,
        standbys: Standbys,
        enqueue: Callable[..., object],
        become_standby: Callable[[], Proc],
        end: Callable[[str], None],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self.leases, self.status, self.standbys = leases, status, standbys
        self._enqueue, self._become_standby, self._end = enqueue, become_standby, end

    def _restart_first(self) -> None:
        self._enqueue(Command.START, first=True, internal=True)

    def after_lease(self) -> Answer[bool]:
        """Decide what a finished lease means; False when the run must end."""
        try:
            outcome: LeaseOutcome = yield from self.leases.take()
        except StepFailed as err:
            return (yield from self._lease_failed(err))
        self.leases.renewed(outcome.last_renewed)
        return True  # the term ran out normally: the loop issues the next one

    def host_restarted(self) -> Answer[bool]:
        """Our host's worker started again: the lease died with the old process. Judged now as its
        heartbeat timeout would judge it later — re-attached to the renewals if Redis shows the claim
        still ours (the connector is started again), lost if it went unrenewed past its deadline.
        False when the run must end."""
        if not self.leases.leasing:
            return True  # nothing of ours runs on the host between two steps
        yield from self.leases.cancel()
        gone = StepFailed(
            Failure(message=f"the worker on {self.ctx.inp.host} started again", timeout="RESTART")
        )
        return (yield from self._lease_failed(gone))

    def _lease_failed(self, err: StepFailed) -> Answer[bool]:
        """Act on a lease that ended with an error; False when the run must end."""
        reason = err.failure.message
        stopped_at = err.failure.stopped_at
        verdict = lease_verdict(err.failure.kind)
        yield from self.status.decided(f"lease ended ({verdict}): {reason}")
        if verdict is LeaseVerdict.CONNECTOR_FAILED:
            yield from self._connector_failed(reason)
            return True
        if verdict is LeaseVerdict.RESTART_UNHEALTHY:
            yield from self._connector_failed(reason, policy="on-failure")
            return True
        if verdict is LeaseVerdict.STEP_ASIDE:
            yield from self._step_aside(reason)
            return True
        if verdict is LeaseVerdict.RECLAIM and (yield from self._reclaim(reason, stopped_at)):
            return True
        if verdict is LeaseVerdict.REATTACH:
            answer = yield from self._reattach(reason, err.failure.failsafe_horizon_s)
            if answer is None:
                return True
            if isinstance(answer, StepFailed):
                return (yield from self._lease_failed(answer))
            reason = answer
        yield from self._instance_lost(reason, stopped_at)
        return False

    def _reattach(self, reason: str, horizon_s: float | None = None) -> Answer[str | StepFailed | None]:
        """The lease stopped heartbeating to Temporal, which proves nothing about Redis: re-attach.

        The host's keeper renews on its own, so a host that only lost Temporal (an outage, a
        partition, a worker restart) is picked up again by a fresh lease within the pickup window:
        no transition, no new epoch (None). Meanwhile Redis is asked at once, and again when the
        claim would pass its renew deadline: unrenewed past it (its connector is stopped by now: its
        keeper or watchdog saw to it) → lost (the reason, a str); still renewed → keep waiting.
        A lease that fails with a typed error is handed back for the caller to judge (StepFailed).

        A lease that last reported holding through a Redis outage (``horizon_s``, the failsafe)
        may act on promises past its renew deadline: a key unrenewed past it, or gone (the holder
        writes it back when Redis answers), is judged lost only once that horizon has passed,
        counted from now — after the lease's last heartbeat, so never sooner than the holder's own
        count ends. A key held by another is judged at once (the holder stops on that answer).
        """
        ctx, leases = self.ctx, self.leases
        interval = ctx.inp.heartbeat_interval_s
        holds_until = ctx.clock.now() + timedelta(seconds=horizon_s) if horizon_s else None
        pickup = interval * PICKUP_FACTOR
        while True:
            yield from leases.start(schedule_to_start_s=pickup)
            # Longer than the pickup window (timers fire late under load): a lease still running by
            # then was picked up by a worker, not refused for want of one.
            picked_up_at = ctx.clock.now() + timedelta(seconds=pickup + max(interval, PICKUP_SLACK_FLOOR_S))
            while True:
                # Redis is asked at once, not after the whole pickup window: that made a crash at
                # long intervals wait longer than the TTL.
                wake_at = picked_up_at
                probe = yield from leases.probe()
                if probe is not None:
                    lost = yield from self._lost_by(probe, reason)
                    if lost is not None and (yield from self._still_holding(probe, holds_until)):
                        assert holds_until is not None
                        wake_at = min(picked_up_at, holds_until + timedelta(seconds=LOOK_SLACK_S))
                    elif lost is not None:
                        yield from leases.cancel()
                        return lost
                    else:
                        stale = stale_in(probe.renewed_ms_ago or 0, interval)
                        wake_at = min(picked_up_at, ctx.clock.now() + timedelta(seconds=stale + LOOK_SLACK_S))
                wait = max(wake_at - ctx.clock.now(), timedelta(seconds=LOOK_WAIT_FLOOR_S))
                if not (yield WaitLease(wait.total_seconds())):
                    if wake_at < picked_up_at:
                        continue  # the moment the claim would go stale: ask Redis again
                    yield Log(f"{ctx.wf_id}: re-attached to the renewals on {ctx.inp.host}")
                    if self.status.state in RUNNING_STATES and not (yield from self.host.alive(leases.claim)):
                        # The claim is still ours (its renewals run) but the connector is gone (a new
                        # worker process, or it was stopped meanwhile): record it and bring it back.
                        yield from self.status.fail(
                            f"connector not running on {ctx.inp.host} after re-attaching"
                        )
                        self._restart_first()
                    return None
                break
            try:
                yield from leases.take()
                return None
            except StepFailed as again:
                if again.failure.error_type is not None:
                    return again
            # No worker took it (or it went silent again): re-issue it and ask Redis at once.

    def _still_holding(self, probe: ClaimProbe, holds_until: datetime | None) -> Answer[bool]:
        """Whether a claim Redis shows lapsed or gone may still be acted on: its lease last reported
        holding through a Redis outage until a horizon not yet passed, and nobody else holds it."""
        ctx = self.ctx
        taken = probe.holder is not None and not probe.held_by_us  # a fencing answer: stopped at once
        if holds_until is None or ctx.clock.now() >= holds_until or taken:
            return False
        # Runs begun before it recorded their loss at once (no run had the failsafe then).
        if not (yield Patched(LOST_WAITS_FOR_FAILSAFE_HORIZON)):
            return False
        left = (holds_until - ctx.clock.now()).total_seconds()
        yield Log(
            f"{ctx.wf_id}: Redis shows the claim lapsed, but {ctx.inp.host} last reported holding "
            f"through a Redis outage for {left:.1f}s more (failsafe): judged when that has passed"
        )
        return True

    def _lost_by(self, probe: ClaimProbe, reason: str) -> Answer[str | None]:
        """Why the claim is lost, if Redis proves it (the reason), or None: its host still renews."""
        ctx = self.ctx
        if not probe.held_by_us:
            return (
                f"host {ctx.inp.host} stopped heartbeating ({reason}) and its claim is gone "
                f"({'held by ' + probe.holder if probe.holder else 'the key expired'})"
            )
        host = judge_claim(probe.held_by_us, probe.renewed_ms_ago, ctx.inp.heartbeat_interval_s)
        age = f"{probe.renewed_ms_ago / 1000:.1f}s ago" if probe.renewed_ms_ago is not None else "never"
        if host is HostVerdict.STOPPED:
            return f"host {ctx.inp.host} stopped heartbeating ({reason}) and renewing its claim ({age})"
        yield Log(
            f"{ctx.wf_id}: no worker on {ctx.inp.host} answers Temporal, but Redis shows the claim "
            f"renewed {age} ({host}): waiting"
        )
        return None

    def _connector_failed(self, reason: str, policy: str | None = None) -> Proc:
        """The connector died (or failed its health checks) while running; the claim is still ours.
        Record, recover, and restart if the spec (or ``policy``) says so — else hand the exchange to
        a live standby: a claim is held only by an instance that runs its connector."""
        ctx = self.ctx
        yield from self.status.fail(reason)
        spec = ctx.inp.connector
        delay = restart_delay(
            policy or spec.restart, self.st.restarts, spec.max_restarts, spec.restart_backoff_s
        )
        if delay is not None:
            # Counted in the worker's Temporal metrics (its /metrics): restarts write no event.
            yield CountRestart(ctx.inp.exchange)
            self.st = replace(self.st, restarts=self.st.restarts + 1)
            yield from self.leases.start()  # keep renewing while we back off
            yield Sleep(delay, summary=f"restart {self.st.restarts} backoff")
            self._restart_first()
        elif (yield Patched(FAILED_CONNECTOR_HANDS_OVER)):  # runs begun before kept it here, idle
            yield from self._hand_over(f"connector failed: {reason}", alone=None)

    def _step_aside(self, reason: str) -> Proc:
        """An unhealthy connector whose policy is failover: record it and hand the exchange over;
        with no live standby, or while the exchange is paused, restart in place."""
        yield from self.status.fail(reason)
        yield from self._hand_over(f"unhealthy: {reason}", alone=self._restart_first)

    def _hand_over(self, why: str, *, alone: Callable[[], None] | None) -> Proc:
        """Let go of the exchange, wake the best standby to act at once (the keeper stopped our
        connector before the lease ended) and wait as a standby here. With no live standby, or while
        the exchange is paused (no standby may take it over): ``alone`` (a restart), or keep it."""
        ctx = self.ctx
        standbys, paused = yield from self.standbys.others_and_pause()
        if not steps_aside(standbys=bool(standbys), paused=paused):
            if alone is not None:
                cause = "the exchange is paused" if standbys else "no live standby to take over"
                yield Log(f"{ctx.wf_id}: {cause}; restarting in place")
                alone()
            return
        yield from self.leases.cancel()
        yield from self.leases.release()
        why = f"{ctx.inp.exchange} on {ctx.inp.host} {why}"
        # Woken from the list read before the release (a Redis gone meanwhile left nobody woken);
        # runs begun on 0.1.0 read it again, as their histories hold.
        if (yield Patched(STEP_ASIDE_WAKES_FROM_ITS_LIST)):
            yield from self.standbys.wake(why, standbys=standbys)
        else:
            yield from self.standbys.wake(why)
        yield from self._become_standby()

    def _reclaim(self, reason: str, stopped_at: datetime | None = None) -> Answer[bool]:
        """Our key vanished (expired while paused, or Redis lost its data) and nobody else took it:
        take the exchange again above every epoch we know, then bring the connector back."""
        leases, status = self.leases, self.status
        was_running = status.state in RUNNING_STATES
        # If Redis only stalled, our old key may still be there: free it (fenced) and claim afresh,
        # so the connector restarts under a new epoch rather than the one it stopped under.
        yield from leases.release()
        lost_claim = leases.drop_claim()
        # Retried until Redis answers: after an outage the holder must get its exchange back first.
        if (yield from leases.take_claim(quiet=True, retry=Retry.DURABLE)) is None:
            leases.keep_claim(lost_claim)
            return False
        # Renew the fresh claim at once: the walk below can outlast a short TTL.
        yield from leases.start()
        yield from status.event(
            EventKind.ERROR, error=f"{reason}; reclaimed at epoch {leases.highest_epoch}", state=status.state
        )
        yield from status.walk_down(stopped_at)
        if was_running:
            self._restart_first()
        return True

    def _instance_lost(self, reason: str, stopped_at: datetime | None = None) -> Proc:
        """The claim is gone or the host is: record it, walk the state down, free the key if still
        ours, and wake the best standby so it need not wait for the TTL."""
        ctx = self.ctx
        self.status.errored(reason)
        yield from self.status.event(EventKind.INSTANCE_LOST, detail=reason)
        yield from self.status.walk_down(stopped_at)
        yield from self.leases.release()
        yield from self.standbys.wake(f"{ctx.inp.exchange} on {ctx.inp.host} lost: {reason}")
        self._end(f"{Ending.INSTANCE_LOST}: {reason}")
