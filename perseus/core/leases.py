"""The claim and the activity that keeps it: claim with a fresh instanceId above every epoch known,
start the lease (or a standby's watch) on the host, cancel it, take its result, ask Redis about
it, release it.

Owns :class:`~perseus.core.state.LeaseState`. What a claim writes comes from the status part, and
a conflict's event is written by it, and why a claim was refused goes to the registration (all
handed in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from perseus.core.actions import (
    Activity,
    Answer,
    Call,
    CancelLease,
    Proc,
    Retry,
    StartLease,
    TakeLease,
    tolerated,
)
from perseus.core.context import Context
from perseus.core.decisions import handoff_reservation_s
from perseus.core.host import Host
from perseus.core.state import LeaseState, Refusal
from perseus.errors import ClaimConflict, ServiceUnavailable, StepFailed
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimProbeRequest,
    ClaimRequest,
    ClaimResult,
    EventKind,
    HandoffReservation,
    HostClaimRequest,
    InstanceStatus,
    LeaseRequest,
    PatchResult,
    ReleaseRequest,
    StandbyLeaseRequest,
    StandbyRecord,
)
from perseus.timing import LEASE_SLACK_INTERVALS, PROBE_TIMEOUT_S, STEP_TIMEOUT_S

#: Writes a ``claim_conflict`` event (the status part's ``event``).
ConflictEvent = Callable[..., Proc]


class Leases:
    """The claim, and the lease activity that renews it on the host."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: LeaseState,
        *,
        record_for: Callable[[str], InstanceStatus],
        event: ConflictEvent,
        refused: Callable[[Refusal | None], None],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self._record_for, self._event, self._refused = record_for, event, refused

    @property
    def claim(self) -> Claim | None:
        return self.st.claim

    @property
    def highest_epoch(self) -> int:
        return self.st.highest_epoch

    @property
    def leasing(self) -> bool:
        return self.st.leasing

    def _update(self, **changes: Any) -> None:
        """Replace the slice: ``claim``, ``last_heartbeat_ok``."""
        self.st = replace(self.st, **changes)

    def at_least(self, epoch: int) -> None:
        """Every epoch we hear of raises the floor of our next claim."""
        self._update(highest_epoch=max(self.st.highest_epoch, epoch))

    def drop_claim(self) -> Claim | None:
        """Forget the claim (it is being given up, or replaced); the one we held."""
        claim = self.st.claim
        self._update(claim=None)
        return claim

    def keep_claim(self, claim: Claim | None) -> None:
        """Hold on to ``claim`` again (a reclaim that was refused leaves the old one in place)."""
        self._update(claim=claim)

    def renewed(self, at: datetime | None) -> None:
        self._update(last_heartbeat_ok=at)

    def take_claim(
        self,
        *,
        quiet: bool = False,
        retry: Retry = Retry.SHARED,
        take_lapsed: bool = False,
        automatic: bool = False,
        lost_to: Callable[[InstanceStatus | None], None] | None = None,
    ) -> Answer[ClaimResult | None]:
        """Claim with a fresh instanceId: the ClaimResult, or None (refused; why goes to ``refused``).

        ``quiet``: a standby racing for a vacancy (or an instance taking back its own exchange) is
        not a conflict worth an event when it loses; ``lost_to`` then hears who holds it.
        ``take_lapsed``: a standby whose watch saw the holder past its renew deadline may claim
        over its key. ``automatic``: nobody asked for this
        claim (a promotion after a vacancy or a wake-up), so a pause refuses it (``core.pause``).
        """
        ctx = self.ctx
        instance_id = ctx.clock.uuid4()
        request = ClaimRequest(
            status=self._record_for(instance_id),
            highest_epoch=self.st.highest_epoch,
            take_lapsed=take_lapsed,
            automatic=automatic,
        )
        try:
            result: ClaimResult = yield from self._claim_activity(request, retry)
        except StepFailed as err:
            if not quiet:
                why = f"claim failed: {self.host.explain(err)}"
                self._refused(Refusal(why, err.failure.error_type or ServiceUnavailable.__name__))
            return None
        self.at_least(result.epoch)
        if not result.claimed:
            if quiet:
                if lost_to is not None:
                    lost_to(result.holder)
                return None
            why = result.message or "exchange already claimed"
            self._refused(Refusal(why, ClaimConflict.__name__))
            yield from self._event(
                EventKind.CLAIM_CONFLICT,
                claim=Claim(instance_id=instance_id, epoch=result.epoch),
                detail=result.message,
            )
            return None
        self._update(claim=Claim(instance_id=instance_id, epoch=result.epoch))
        self._refused(None)
        return result

    def _claim_activity(self, request: ClaimRequest, retry: Retry) -> Answer[ClaimResult]:
        """Claim on this instance's host, whose keeper renews from that moment on."""
        ctx = self.ctx
        held = HostClaimRequest(
            claim=request,
            workflow_id=ctx.wf_id,
            heartbeat_interval_s=ctx.inp.heartbeat_interval_s,
            term_s=ctx.inp.lease_term_s,
            failsafe=ctx.inp.failsafe,
        )
        return (
            yield from self.host.on_host(
                Call(
                    Activity.CLAIM_AND_HOLD,
                    held,
                    queue=ctx.host_queue,
                    schedule_to_start_s=ctx.host_wait(),
                    start_to_close_s=STEP_TIMEOUT_S,
                    retry=retry,
                    summary=f"claim on {ctx.inp.host}",
                )
            )
        )

    def start(self, schedule_to_start_s: float | None = None) -> Proc:
        """Start the lease on our host: it renews the claim and heartbeats to Temporal."""
        ctx, claim = self.ctx, self.st.claim
        assert claim
        interval = ctx.inp.heartbeat_interval_s
        self._update(leasing=True)
        yield StartLease(
            Activity.HOLD_LEASE,
            LeaseRequest(
                workflow_id=ctx.wf_id,
                exchange_id=ctx.resolved.exchange.id,
                claim=claim,
                heartbeat_interval_s=interval,
                term_s=ctx.inp.lease_term_s,
                failsafe=ctx.inp.failsafe,
                exchange=ctx.inp.exchange if ctx.inp.failsafe else None,
            ),
            queue=ctx.host_queue,
            schedule_to_start_s=schedule_to_start_s or ctx.host_wait(),
            start_to_close_s=ctx.inp.lease_term_s + LEASE_SLACK_INTERVALS * interval,
            # The lease heartbeats at every k-th renewal (at least 5 s apart; the host worker does
            # not throttle them further): a silence of 1.25 such periods means the host stopped
            # answering Temporal. What that means for the claim, Redis decides (recovery.reattach).
            heartbeat_timeout_s=self.host.heartbeat_timeout(),
            summary=f"lease epoch {claim.epoch} on {ctx.inp.host}",
        )

    def watch(self, record: StandbyRecord) -> Proc:
        """Start a standby's watch on our host: it renews the record and waits for a vacancy."""
        ctx = self.ctx
        interval = ctx.inp.heartbeat_interval_s
        self._update(leasing=True)
        yield StartLease(
            Activity.HOLD_STANDBY,
            StandbyLeaseRequest(record=record, heartbeat_interval_s=interval, term_s=ctx.inp.lease_term_s),
            queue=ctx.host_queue,
            schedule_to_start_s=ctx.host_wait(),
            start_to_close_s=ctx.inp.lease_term_s + LEASE_SLACK_INTERVALS * interval,
            heartbeat_timeout_s=self.host.heartbeat_timeout(),
            summary=f"standby watch on {ctx.inp.host}",
        )

    def cancel(self) -> Proc:
        self._update(leasing=False)
        yield CancelLease()

    def take(self) -> Answer[Any]:
        """The ended lease's result (its failure raised as StepFailed); the lease is forgotten."""
        self._update(leasing=False)
        return (yield TakeLease())

    def release(self, *, to_host: str | None = None) -> Answer[bool]:
        """Delete our status key (fenced); True if it was ours and is gone. ``to_host``: a handoff's
        release, which first reserves the exchange for its target (``decisions.held_back_by_handoff``)."""
        claim = self.st.claim
        if claim is None or self.ctx.identity.resolved is None:
            return False
        reserve = (
            HandoffReservation(to_host=to_host, from_host=self.ctx.inp.host, epoch=claim.epoch)
            if to_host is not None
            else None
        )
        reserve_s = handoff_reservation_s(self.ctx.inp.heartbeat_interval_s) if reserve is not None else 0.0
        result: PatchResult | None = yield from tolerated(
            Call(
                Activity.RELEASE_CLAIM,
                ReleaseRequest(
                    exchange_id=self.ctx.resolved.exchange.id,
                    claim=claim,
                    reserve=reserve,
                    reserve_ms=round(reserve_s * 1000),
                ),
                start_to_close_s=STEP_TIMEOUT_S,
                retry=Retry.DURABLE,
                summary="release claim",
            ),
            "release failed (the TTL frees it)",
        )
        return result is not None and result.applied

    def probe(self) -> Answer[ClaimProbe | None]:
        """What Redis proves about our claim now (None: Redis did not answer)."""
        claim = self.st.claim
        assert claim
        probe: ClaimProbe | None = yield from tolerated(
            Call(
                Activity.PROBE_CLAIM,
                ClaimProbeRequest(exchange_id=self.ctx.resolved.exchange.id, claim=claim),
                start_to_close_s=PROBE_TIMEOUT_S,
                retry=Retry.TWICE,
                summary="probe claim",
            ),
            "claim probe failed",
        )
        return probe
