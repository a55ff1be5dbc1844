"""What an active instance does when its lease ends: re-attach, reclaim, restart, step aside, or lost.

Invariant 1 of :mod:`perseus.decisions` rules here: a heartbeat timeout proves nothing about Redis, so
a silent host is re-attached while Redis shows its claim renewed, and its claim is freed only once
Redis proves it unrenewed past the renew deadline (its connector stopped by then).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from perseus.core.actions import (
    Activity,
    Call,
    CountRestart,
    Log,
    Patched,
    Proc,
    Retry,
    Sleep,
    WaitLease,
)
from perseus.core.pause import steps_aside
from perseus.core.state import Ending
from perseus.core.steps import PICKUP_FACTOR, RUNNING_STATES, InstanceSteps
from perseus.decisions import (
    LOSS_TYPES,
    HostVerdict,
    LeaseVerdict,
    judge_claim,
    lease_verdict,
    restart_delay,
    stale_in,
)
from perseus.errors import StepFailed
from perseus.lifecycle import Command
from perseus.models import (
    ClaimProbe,
    ClaimProbeRequest,
    EventKind,
    LeaseOutcome,
)


class LeaseProcedures(InstanceSteps):
    """A lease that ended, judged and acted on."""

    def _after_lease(self) -> Proc:
        """Decide what a finished lease means; False when the run must end."""
        try:
            outcome: LeaseOutcome = yield from self._take_lease()
        except StepFailed as err:
            return (yield from self._lease_failed(err))
        self.s.last_heartbeat_ok = outcome.last_renewed
        return True  # the term ran out normally: the loop issues the next one

    def _lease_failed(self, err: StepFailed) -> Proc:
        """Act on a lease that ended with an error; False when the run must end."""
        reason = err.failure.message
        stopped_at = err.failure.stopped_at
        verdict = lease_verdict(err.failure.kind)
        yield from self._decided(f"lease ended ({verdict}): {reason}")
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
            patched = yield Patched("reattach-by-claim-probe")
            answer = yield from (self._reattach(reason) if patched else self._reattach_v1(reason))
            if answer is None:
                return True
            if isinstance(answer, StepFailed):
                return (yield from self._lease_failed(answer))
            reason = answer
        yield from self._instance_lost(reason, stopped_at)
        return False

    def _reattach_v1(self, reason: str) -> Proc:
        """Before the keeper: a host whose lease was not picked up again within the pickup window
        was lost. Kept so that runs begun before ``reattach-by-claim-probe`` replay as they ran."""
        s = self.s
        pickup = self.inp.heartbeat_interval_s * PICKUP_FACTOR
        yield from self._start_lease(schedule_to_start_s=pickup)
        ended = yield WaitLease(pickup + max(self.inp.heartbeat_interval_s, 3.0))
        if not ended:
            if s.state in RUNNING_STATES and not (yield from self._connector_alive()):
                yield from self._fail(f"connector not running after the worker on {self.inp.host} restarted")
            return None
        try:
            yield from self._take_lease()
            return None
        except StepFailed as again:
            if again.failure.kind in LOSS_TYPES:
                return again.failure.message
            return f"host {self.inp.host} stopped heartbeating ({reason}) and did not come back"

    def _reattach(self, reason: str) -> Proc:
        """The lease stopped heartbeating to Temporal, which proves nothing about Redis: re-attach.

        The host's keeper renews on its own, so a host that only lost Temporal (an outage, a
        partition, a worker restart) is picked up again by a fresh lease within the pickup window:
        no transition, no new epoch (None). Meanwhile Redis is asked at once, and again when the
        claim would pass its renew deadline: unrenewed past it (its connector is stopped by now: its
        keeper or watchdog saw to it) → lost (the reason, a str); still renewed → keep waiting.
        A lease that fails with a typed error is handed back for the caller to judge (StepFailed).
        """
        s = self.s
        interval = self.inp.heartbeat_interval_s
        pickup = interval * PICKUP_FACTOR
        # Patched: runs begun before it waited out the whole pickup window before asking Redis,
        # which made a crash at long intervals wait longer than the TTL.
        at_once = yield Patched("probe-claim-at-once")
        while True:
            yield from self._start_lease(schedule_to_start_s=pickup)
            # Longer than the pickup window (timers fire late under load): a lease still running by
            # then was picked up by a worker, not refused for want of one.
            picked_up_at = self.clock.now() + timedelta(seconds=pickup + max(interval, 3.0))
            while True:
                wake_at = picked_up_at
                if at_once:
                    probe = yield from self._probe_claim()
                    if probe is not None:
                        lost = yield from self._lost_by(probe, reason)
                        if lost is not None:
                            yield from self._cancel_lease()
                            return lost
                        stale = stale_in(probe.renewed_ms_ago or 0, interval)
                        wake_at = min(picked_up_at, self.clock.now() + timedelta(seconds=stale + 0.05))
                wait = max(wake_at - self.clock.now(), timedelta(milliseconds=50))
                if not (yield WaitLease(wait.total_seconds())):
                    if wake_at < picked_up_at:
                        continue  # the moment the claim would go stale: ask Redis again
                    yield Log(f"{self.wf_id}: re-attached to the renewals on {self.inp.host}")
                    if s.state in RUNNING_STATES and not (yield from self._connector_alive()):
                        # The claim is still ours (its renewals run) but the connector is gone (a new
                        # worker process, or it was stopped meanwhile): record it and bring it back.
                        yield from self._fail(f"connector not running on {self.inp.host} after re-attaching")
                        self.enqueue(Command.START, first=True, internal=True)
                    return None
                break
            try:
                yield from self._take_lease()
                return None
            except StepFailed as again:
                if again.failure.error_type is not None:
                    return again
            if at_once:
                continue  # no worker took it (or it went silent again): ask Redis at once, re-issue
            probe = yield from self._probe_claim()
            if probe is None:
                continue  # Redis does not answer here either: no evidence either way
            lost = yield from self._lost_by(probe, reason)
            if lost is not None:
                return lost

    def _lost_by(self, probe: ClaimProbe, reason: str) -> Proc:
        """Why the claim is lost, if Redis proves it (the reason), or None: its host still renews."""
        if not probe.held_by_us:
            return (
                f"host {self.inp.host} stopped heartbeating ({reason}) and its claim is gone "
                f"({'held by ' + probe.holder if probe.holder else 'the key expired'})"
            )
        host = judge_claim(probe.held_by_us, probe.renewed_ms_ago, self.inp.heartbeat_interval_s)
        age = f"{probe.renewed_ms_ago / 1000:.1f}s ago" if probe.renewed_ms_ago is not None else "never"
        if host is HostVerdict.STOPPED:
            return f"host {self.inp.host} stopped heartbeating ({reason}) and renewing its claim ({age})"
        yield Log(
            f"{self.wf_id}: no worker on {self.inp.host} answers Temporal, but Redis shows the claim "
            f"renewed {age} ({host}): waiting"
        )
        return None

    def _probe_claim(self) -> Proc:
        """What Redis proves about our claim now (None: Redis did not answer)."""
        s = self.s
        assert s.resolved and s.claim
        probe: ClaimProbe | None = yield from self._tolerated(
            Call(
                Activity.PROBE_CLAIM,
                ClaimProbeRequest(exchange_id=s.resolved.exchange.id, claim=s.claim),
                start_to_close_s=5,
                retry=Retry.TWICE,
                summary="probe claim",
            ),
            "claim probe failed",
        )
        return probe

    def _connector_failed(self, reason: str, policy: str | None = None) -> Proc:
        """The connector died (or failed its health checks) while running; the claim is still ours.
        Record, recover, and restart if the spec (or ``policy``) says so."""
        s = self.s
        yield from self._fail(reason)
        spec = self.inp.connector
        delay = restart_delay(policy or spec.restart, s.restarts, spec.max_restarts, spec.restart_backoff_s)
        if delay is not None:
            # Counted in the worker's Temporal metrics (its /metrics): restarts write no event.
            yield CountRestart(self.inp.exchange)
            s.restarts += 1
            yield from self._start_lease()  # keep renewing while we back off
            yield Sleep(delay, summary=f"restart {s.restarts} backoff")
            self.enqueue(Command.START, first=True, internal=True)

    def _step_aside(self, reason: str) -> Proc:
        """An unhealthy connector whose policy is failover: record it, let go of the exchange and wake
        the best standby, then wait as a standby here. With no live standby, or while the exchange is
        paused (no standby may take it over), restart in place."""
        yield from self._fail(reason)
        standbys, paused = yield from self._standbys_and_pause()
        # Patched, and asked only when it matters: a run recorded by a worker from before pauses
        # stepped aside whatever the list said, and must replay so.
        held = paused and bool(standbys) and (yield Patched("paused-restarts-in-place"))
        if not steps_aside(standbys=bool(standbys), paused=held):
            why = "the exchange is paused" if standbys else "no live standby to take over"
            yield Log(f"{self.wf_id}: {why}; restarting in place")
            self.enqueue(Command.START, first=True, internal=True)
            return
        yield from self._cancel_lease()
        yield from self._release_claim()
        yield from self._wake_standby(f"{self.inp.exchange} on {self.inp.host} unhealthy: {reason}")
        yield from self._become_standby()

    def _reclaim(self, reason: str, stopped_at: datetime | None = None) -> Proc:
        """Our key vanished (expired while paused, or Redis lost its data) and nobody else took it:
        take the exchange again above every epoch we know, then bring the connector back."""
        s = self.s
        was_running = s.state in RUNNING_STATES
        lost_claim = s.claim
        # If Redis only stalled, our old key may still be there: free it (fenced) and claim afresh,
        # so the connector restarts under a new epoch rather than the one it stopped under.
        yield from self._release_claim()
        s.claim = None
        # Retried until Redis answers: after an outage the holder must get its exchange back first.
        if (yield from self._claim(quiet=True, retry=Retry.DURABLE)) is None:
            s.claim = lost_claim
            return False
        # Renew the fresh claim at once: the walk below can outlast a short TTL.
        yield from self._start_lease()
        yield from self._event(
            EventKind.ERROR, error=f"{reason}; reclaimed at epoch {s.highest_epoch}", state=s.state
        )
        yield from self._walk_down(stopped_at)
        if was_running:
            self.enqueue(Command.START, first=True, internal=True)
        return True

    def _instance_lost(self, reason: str, stopped_at: datetime | None = None) -> Proc:
        """The claim is gone or the host is: record it, walk the state down, free the key if still
        ours, and wake the best standby so it need not wait for the TTL."""
        s = self.s
        s.last_error = reason
        yield from self._event(EventKind.INSTANCE_LOST, detail=reason)
        yield from self._walk_down(stopped_at)
        yield from self._release_claim()
        # Patched: runs that lost their instance before standbys existed did not look for one.
        if (yield Patched("wake-standby-on-loss")):
            yield from self._wake_standby(f"{self.inp.exchange} on {self.inp.host} lost: {reason}")
        s.outcome = f"{Ending.INSTANCE_LOST}: {reason}"
