"""The instance's writes: a fenced merge into its status key and an event in its stream, as one
local activity (no server round trip each), then a notification if the worker notifies.

Holds no memory: each write is fenced by the claim and names the actor it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from perseus.core.actions import Activity, Call, Log, Notify, Proc, Retry, ask
from perseus.core.context import Context
from perseus.core.lifecycle import State
from perseus.errors import StepFailed
from perseus.models import (
    Claim,
    EventKind,
    NetworkEvent,
    NotifyRequest,
    Recorded,
    RecordRequest,
    StatusPatch,
)
from perseus.timing import STEP_TIMEOUT_S


class Writer:
    """Status merges and events, fenced by the claim."""

    def __init__(
        self, ctx: Context, *, claim: Callable[[], Claim | None], actor: Callable[[], str | None]
    ) -> None:
        self.ctx, self._claim, self._actor = ctx, claim, actor

    def status_patch(self, fields: dict[str, object]) -> StatusPatch | None:
        claim = self._claim()
        if claim is None or self.ctx.identity.resolved is None:
            return None
        return StatusPatch(exchange_id=self.ctx.resolved.exchange.id, claim=claim, fields=fields)

    def record(self, event: NetworkEvent, patch: StatusPatch | None = None) -> Proc:
        """Write the event (and the status merge that goes with it) in one local activity; then
        notify, if this worker notifies at all."""
        try:
            recorded: Recorded = yield from ask(
                Call(
                    Activity.RECORD,
                    RecordRequest(event=event, patch=patch),
                    start_to_close_s=STEP_TIMEOUT_S,
                    retry=Retry.DURABLE,
                    summary=f"record {event.event.value}",
                    local=True,
                )
            )
        except StepFailed as err:
            yield Log(f"{event.event.value} not recorded after retries: {err.failure.message}", warning=True)
            return
        if recorded.patch is not None and not recorded.patch.applied:
            yield Log(
                f"status write refused ({recorded.patch.reason}): we no longer hold the claim", warning=True
            )
        if recorded.notify:
            yield Notify(NotifyRequest(event=event))

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
