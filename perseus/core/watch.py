"""A standby's watch that ended: the exchange fell vacant (the TTL fallback), the record vanished, the
term ran out, or this standby's host stopped heartbeating to Temporal. A vacancy is raced for after
the head starts of invariant 4 (:mod:`perseus.core.decisions`); the race is a promotion.

Holds no memory of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from perseus.core.actions import Answer, CancelWarmUp, Log, WaitUntil
from perseus.core.context import Context
from perseus.core.decisions import act_after_vacancy_s, standbys_ahead, vacancy_delay
from perseus.core.leases import Leases
from perseus.core.promotion import Promotion
from perseus.core.standbys import Standbys
from perseus.core.state import Ending
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.errors import StandbyGone, StepFailed
from perseus.models import EventKind, PromoteRequest, StandbyOutcome


class Watch:
    """What a standby does when its watch ends."""

    def __init__(
        self,
        ctx: Context,
        *,
        leases: Leases,
        status: Status,
        standbys: Standbys,
        warm: Warm,
        promotion: Promotion,
        end: Callable[[str], None],
    ) -> None:
        self.ctx, self.leases, self.status, self.standbys, self.warm = ctx, leases, status, standbys, warm
        self.promotion, self._end = promotion, end

    def after_watch(self) -> Answer[bool]:
        """A standby's watch ended: the exchange fell vacant (TTL fallback), the term ran out, the
        record vanished, or this standby's host stopped heartbeating to Temporal. False: the run ends."""
        ctx, standbys = self.ctx, self.standbys
        try:
            outcome: StandbyOutcome = yield from self.leases.take()
        except StepFailed as err:
            if err.failure.kind is StandbyGone:
                # Redis lost the record (an outage longer than its TTL): make it visible again —
                # or, if Redis refuses that too, let the next watch's beats write it.
                yield from standbys.put_or_leave_to_watch()
                return True
            if err.failure.error_type is None and (yield from standbys.live()):
                # Its host still renews the record: it only lost Temporal. Watch again.
                return True
            yield from standbys.drop()
            why = f"host {ctx.inp.host} stopped heartbeating ({err.failure.message})"
            self._end(f"{Ending.STANDBY_LOST}: {why}")
            return False
        if outcome.warm_lost:
            # The warm connector stopped while it waited (the host saw it go): the loop warms it up
            # again, and a promotion before that starts cold instead of failing to activate it.
            self.warm.lost()
            yield from self.status.event(
                EventKind.ERROR,
                claim=standbys.own_claim,
                error=f"warm standby on {ctx.inp.host}: its connector stopped while waiting; "
                "warming it up again",
            )
        if outcome.vacant:
            # Nobody told us (the holder's workflow would have): the key expired. Higher priorities go
            # first; the rest give them a head start, then race — the claim script admits one. Right
            # after a Redis outage the holder itself goes first: a healthy holder whose key lapsed
            # while Redis was away must not be replaced by a race.
            # Read by our host's worker, which just answered: the holder's worker may be the one that
            # runs this task, and it is the likeliest to be cut off (core.host.on_host_first).
            others = yield from standbys.others(on_host=True)
            now = ctx.clock.now()
            ahead = standbys_ahead(
                ctx.inp.priority, backing_off_here=standbys.backing_off(now), others=others, now=now
            )
            wait = vacancy_delay(ahead, ctx.inp.heartbeat_interval_s, after_outage=outcome.after_outage)
            if wait:
                # Woken meanwhile (the standby that went first could not start its connector and
                # woke us), the head start ends at once.
                yield WaitUntil(lambda: bool(standbys.promotions), timeout_s=wait, summary="head start")
            yield from self.promotion.promote(
                PromoteRequest(
                    reason=(
                        "the holder stopped renewing its claim (past its renew deadline)"
                        if outcome.holder_silent
                        else "the holder's claim expired (TTL)"
                    ),
                    min_epoch=outcome.last_epoch,
                    # The holder may act until its renew deadline (act_after_vacancy_s); a key that
                    # lapsed by its TTL proves that deadline passed.
                    act_after_s=act_after_vacancy_s(ctx.inp.heartbeat_interval_s, lapsed=outcome.lapsed),
                    take_lapsed=outcome.holder_silent,
                )
            )
        return True

    def again(self) -> Answer[bool]:
        """The host's worker started again: the watch (and a warm connector) died with the old
        process. Drop them; the loop starts the watch again on the new one and warms up anew."""
        ctx = self.ctx
        yield Log(f"{ctx.wf_id}: the worker on {ctx.inp.host} started again: watching from it")
        yield from self.leases.cancel()
        if self.warm.warming:
            yield CancelWarmUp()
        self.warm.lost()
        return True
