"""The instance's writes: a fenced merge into its status key and an event in its stream, as one
local activity (no server round trip each), then a notification if the worker notifies. A worker
that cannot write it within RECORD_HERE_S hands the same write to the instance's own host (a
regular activity), rather than hold the workflow task until its Redis returns; for RECORD_AWAY_S
after that, the instance's records go there first (the one thing the writer remembers). Each write
is fenced by the claim and names the actor it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from perseus.core.actions import Activity, Call, Log, Notify, Patched, Proc, Retry, ask
from perseus.core.context import Context
from perseus.core.decisions import RecordRoute, record_moves_to, record_starts
from perseus.core.lifecycle import State
from perseus.errors import NON_RETRYABLE_ERROR_TYPES, StepFailed
from perseus.models import (
    Claim,
    EventKind,
    NetworkEvent,
    NotifyRequest,
    Recorded,
    RecordRequest,
    StatusPatch,
)
from perseus.timing import RECORD_AWAY_S, RECORD_HERE_S, STEP_TIMEOUT_S

#: Guards the record moving off a worker that could not write it (issue 24): a run begun before it
#: retried the local activity until Redis answered, and replays that way.
RECORD_MOVES = "record-moves-off-a-cut-off-worker"

_WHERE = {
    RecordRoute.HERE: "by the worker running this workflow",
    RecordRoute.HOST: "on the host's queue",
    RecordRoute.SHARED: "on the shared queue",
}


class Writer:
    """Status merges and events, fenced by the claim."""

    def __init__(
        self, ctx: Context, *, claim: Callable[[], Claim | None], actor: Callable[[], str | None]
    ) -> None:
        self.ctx, self._claim, self._actor = ctx, claim, actor
        #: Until when records skip this worker: one of them could not be written here (RECORD_AWAY_S).
        self._away_until: datetime | None = None

    def status_patch(self, fields: dict[str, object]) -> StatusPatch | None:
        claim = self._claim()
        if claim is None or self.ctx.identity.resolved is None:
            return None
        return StatusPatch(exchange_id=self.ctx.resolved.exchange.id, claim=claim, fields=fields)

    def record(self, event: NetworkEvent, patch: StatusPatch | None = None) -> Proc:
        """Write the event (and the status merge that goes with it) in one local activity; then
        notify, if this worker notifies at all.

        Tried here only briefly: a worker cut off from Redis must not hold the workflow of an
        instance whose own host is fine, so the same write then goes to a worker that can make it
        (:func:`~perseus.core.decisions.record_moves_to`), behind :data:`RECORD_MOVES`."""
        request = RecordRequest(event=event, patch=patch)
        route: RecordRoute | None = record_starts(self.ctx.clock.now(), self._away_until)
        while route is not None:
            try:
                recorded: Recorded = yield from ask(self._record_call(route, request))
                break
            except StepFailed as err:
                failure = err.failure
                tried = route
                route = record_moves_to(
                    tried,
                    retryable=failure.error_type not in NON_RETRYABLE_ERROR_TYPES,
                    not_picked_up=failure.not_picked_up,
                )
                # Runs begun before the record moved retried it here until Redis answered: none of
                # their histories holds a record given up here for a retryable failure.
                if tried is RecordRoute.HERE and route is not None and not (yield Patched(RECORD_MOVES)):
                    route = None
                if route is None:
                    yield Log(
                        f"{event.event.value} not recorded after retries: {failure.message}", warning=True
                    )
                    return
                if tried is RecordRoute.HERE:
                    self._away_until = self.ctx.clock.now() + timedelta(seconds=RECORD_AWAY_S)
                yield Log(
                    f"{event.event.value} not recorded {_WHERE[tried]} ({failure.message}); "
                    f"trying {_WHERE[route]}",
                    warning=True,
                )
        if recorded.patch is not None and not recorded.patch.applied:
            yield Log(
                f"status write refused ({recorded.patch.reason}): we no longer hold the claim", warning=True
            )
        if recorded.notify:
            yield Notify(NotifyRequest(event=event))

    def _record_call(self, route: RecordRoute, request: RecordRequest) -> Call[RecordRequest, Recorded]:
        summary = f"record {request.event.event.value}"
        if route is RecordRoute.HERE:
            return Call(
                Activity.RECORD,
                request,
                start_to_close_s=RECORD_HERE_S,
                schedule_to_close_s=RECORD_HERE_S,
                # Once: a failure here moves the write to the host at once (RECORD_HERE_S).
                retry=Retry.ONCE,
                summary=summary,
                local=True,
            )
        ctx = self.ctx
        on_host = route is RecordRoute.HOST
        return Call(
            Activity.RECORD,
            request,
            queue=ctx.host_queue if on_host else None,
            # A host with no worker polling its queue (down) leaves it to the shared queue.
            schedule_to_start_s=ctx.host_wait() if on_host else None,
            start_to_close_s=STEP_TIMEOUT_S,
            retry=Retry.DURABLE,
            summary=f"{summary} on {ctx.inp.host}" if on_host else summary,
        )

    def event(
        self,
        kind: EventKind,
        *,
        claim: Claim | None = None,
        from_state: State | None = None,
        to_state: State | None = None,
        error: str | None = None,
        state: State | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> Proc:
        event = self.network_event(
            kind,
            claim=claim,
            from_state=from_state,
            to_state=to_state,
            error=error,
            state=state,
            detail=detail,
            at=at,
        )
        yield from self.record(event)

    def network_event(
        self,
        kind: EventKind,
        *,
        claim: Claim | None = None,
        from_state: State | None = None,
        to_state: State | None = None,
        error: str | None = None,
        state: State | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> NetworkEvent:
        ctx = self.ctx
        resolved = ctx.resolved
        claim = claim or self._claim()
        admin = resolved.admin
        return NetworkEvent(
            event=kind,
            event_id=ctx.clock.uuid4(),
            timestamp=at or ctx.clock.now(),
            exchange_id=resolved.exchange.id,
            exchange_name=resolved.exchange.name,
            hostname=ctx.hostname,
            ip=ctx.identity.ip_address,
            instance_id=claim.instance_id if claim else "",
            epoch=claim.epoch if claim else 0,
            from_state=from_state,
            to_state=to_state,
            admin_email=admin.email if admin else None,
            error=error,
            state=state,
            detail=detail,
            actor=self._actor(),
        )
