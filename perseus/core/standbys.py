"""The instance as a standby: its record (a TTL'd key the watch renews), the list of its exchange's
standbys, waking the best one, the promotions it is sent and its failed starts.

Owns :class:`~perseus.core.state.StandbyState`. Invariant 4 of :mod:`perseus.core.decisions` begins
here: whom to wake first (:func:`~perseus.core.decisions.wake_order`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from perseus.core.actions import Activity, Answer, Call, Log, Proc, Retry, Search, Signal, ask, tolerated
from perseus.core.context import Context
from perseus.core.decisions import wake_order, warm_retry_delay
from perseus.core.host import on_host_first
from perseus.core.lifecycle import Role, State
from perseus.core.state import StandbyState
from perseus.errors import StepFailed
from perseus.keys import iso
from perseus.models import (
    Claim,
    DropStandbyRequest,
    EventKind,
    PromoteRequest,
    StandbyList,
    StandbyQuery,
    StandbyRecord,
)
from perseus.timing import STEP_TIMEOUT_S, ttl_ms


class Standbys:
    """Our standby record, our exchange's standbys, and the promotions we are sent."""

    def __init__(
        self,
        ctx: Context,
        st: StandbyState,
        *,
        event: Callable[..., Proc],
        highest_epoch: Callable[[], int],
        state: Callable[[], State],
    ) -> None:
        self.ctx, self.st = ctx, st
        self._event, self._highest_epoch, self._state = event, highest_epoch, state

    @property
    def role(self) -> Role:
        return self.st.role

    @property
    def standby_id(self) -> str | None:
        return self.st.standby_id

    @property
    def own_claim(self) -> Claim:
        """What a standby's events and connector steps name: its own id, at epoch 0."""
        return Claim(instance_id=self.st.standby_id or "", epoch=0)

    @property
    def promotions(self) -> tuple[PromoteRequest, ...]:
        return self.st.promotions

    def _update(self, **changes: Any) -> None:
        """Replace the slice: ``role``, ``visible``, ``standby_id``."""
        self.st = replace(self.st, **changes)

    def activate(self) -> None:
        """We hold the claim now: active, no longer a standby (the record goes when dropped)."""
        self._update(role=Role.ACTIVE)

    def promoted(self, req: PromoteRequest) -> None:
        self._update(promotions=(*self.st.promotions, req))

    def next_promotion(self) -> PromoteRequest:
        first, *rest = self.st.promotions
        self._update(promotions=tuple(rest))
        return first

    def become(self, *, required: bool = False) -> Proc:
        """Wait here as a standby. ``required`` (registering): a record Redis did not take fails it;
        otherwise (after a handoff, or stepping aside) the watch's first beat writes it anyway."""
        ctx = self.ctx
        assert ctx.identity.resolved
        self._update(role=Role.STANDBY, visible=False, standby_id=ctx.clock.uuid4())
        if required:
            yield from self.put()
        else:
            yield from self.put_or_leave_to_watch()
        yield Search(role=Role.STANDBY, state=self._state())
        yield from self._event(
            EventKind.STANDBY_REGISTERED,
            claim=self.own_claim,
            detail=f"standby on {ctx.inp.host} (priority {ctx.inp.priority})",
        )
        self._update(visible=True)

    def put_or_leave_to_watch(self) -> Proc:
        """Write the record if Redis takes it now; if not, say so and go on: the watch's first beat
        (and every beat after it) writes the record anyway, so a refused write costs one beat of
        visibility, never the standby."""
        try:
            yield from self.put()
        except StepFailed as err:
            yield Log(
                f"{self.ctx.wf_id}: standby record not written yet (its watch writes it): {err}",
                warning=True,
            )

    def put(self) -> Proc:
        yield from ask(
            Call(
                Activity.PUT_STANDBY,
                self.record(),
                start_to_close_s=STEP_TIMEOUT_S,
                retry=Retry.SHARED,
                summary="register standby",
            )
        )

    def record(self) -> StandbyRecord:
        ctx, st = self.ctx, self.st
        ident = ctx.identity
        assert ident.resolved and st.standby_id and ident.registered_at
        return StandbyRecord(
            exchange_id=ident.resolved.exchange.id,
            exchange_name=ident.resolved.exchange.name,
            host=ctx.inp.host,
            hostname=ctx.hostname,
            ip_address=ident.ip_address,
            instance_id=st.standby_id,
            workflow_id=ctx.wf_id,
            priority=ctx.inp.priority,
            registered_at=iso(ident.registered_at),
            last_heartbeat=iso(ctx.clock.now()),
            ttl_ms=ttl_ms(ctx.inp.heartbeat_interval_s),
            heartbeat_interval_ms=int(ctx.inp.heartbeat_interval_s * 1000),
            warm=ctx.inp.connector.warm,
            start_error=st.start_error,
            start_retry_at=iso(st.start_retry_at) if st.start_retry_at else None,
        )

    def drop(self, *, on_host: bool = False) -> Proc:
        """Drop our record. ``on_host``: by our host's worker first (:func:`on_host_first`), for a
        standby taking over, whose host has just answered."""
        if self.st.standby_id is None or self.ctx.identity.resolved is None:
            return
        call = Call(
            Activity.DROP_STANDBY,
            DropStandbyRequest(exchange_id=self.ctx.resolved.exchange.id, instance_id=self.st.standby_id),
            start_to_close_s=STEP_TIMEOUT_S,
            retry=Retry.SHARED,
            summary="drop standby record",
        )
        step = on_host_first(self.ctx, call) if on_host else call
        yield from tolerated(step, "standby record not dropped (its TTL frees it)")
        self._update(standby_id=None)

    def others(self, *, include_self: bool = False, on_host: bool = False) -> Answer[list[StandbyRecord]]:
        """The live standbys of our exchange, best first (none if Redis cannot say); ``on_host`` as
        for :meth:`drop`."""
        standbys, _ = yield from self.others_and_pause(include_self=include_self, on_host=on_host)
        return standbys

    def others_and_pause(
        self, *, include_self: bool = False, on_host: bool = False
    ) -> Answer[tuple[list[StandbyRecord], bool]]:
        """The live standbys of our exchange, best first, and whether it is paused (``core.pause``);
        none and not paused if Redis cannot say. One activity, as :meth:`others`."""
        call = Call(
            Activity.LIST_STANDBYS,
            StandbyQuery(exchange_id=self.ctx.resolved.exchange.id),
            start_to_close_s=STEP_TIMEOUT_S,
            retry=Retry.SHARED,
            summary="list standbys",
        )
        step = on_host_first(self.ctx, call) if on_host else call
        found: StandbyList | None = yield from tolerated(step, "standbys unknown")
        if found is None:
            return [], False
        return [x for x in found.standbys if include_self or x.workflow_id != self.ctx.wf_id], found.paused

    def live(self) -> Answer[bool]:
        """Whether our standby record is still renewed (by a host that may have lost only Temporal)."""
        standbys = yield from self.others(include_self=True)
        return any(x.instance_id == self.st.standby_id for x in standbys)

    def wake(
        self,
        reason: str,
        *,
        confirm_to: str | None = None,
        act_after_s: float = 0.0,
        standbys: list[StandbyRecord] | None = None,
    ) -> Answer[StandbyRecord | None]:
        """Signal the highest-priority live standby to take over (one whose connector could not
        start after its last promotion only after the others); returns the one told, if any.
        ``act_after_s``: how long it must wait after its claim before its connector acts;
        ``standbys``: the list the caller has just read (else it is read here)."""
        if standbys is None:
            standbys = yield from self.others()
        for standby in wake_order(standbys, self.ctx.clock.now()):
            refused = yield Signal(
                standby.workflow_id,
                "promote",
                PromoteRequest(
                    reason=reason,
                    min_epoch=self._highest_epoch(),
                    confirm_to=confirm_to,
                    act_after_s=act_after_s,
                ),
            )
            if refused is not None:  # the standby's workflow is gone: try the next one
                yield Log(f"standby {standby.workflow_id} not reachable: {refused}")
                continue
            return standby
        return None

    def backing_off(self, now: datetime) -> bool:
        """Whether our last promotion's failed start still puts us behind every other standby."""
        return self.st.start_retry_at is not None and self.st.start_retry_at > now

    def started(self) -> None:
        """Our connector is active: whatever failed before on this host is forgotten."""
        self._update(start_failures=0, start_error=None, start_retry_at=None)

    def start_failed(self, reason: str) -> float:
        """A promoted start failed here: the backoff before this host goes first again."""
        failures = self.st.start_failures + 1
        backoff = warm_retry_delay(failures)
        retry_at = self.ctx.clock.now() + timedelta(seconds=backoff)
        self._update(start_failures=failures, start_error=reason, start_retry_at=retry_at)
        return backoff
