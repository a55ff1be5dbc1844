"""Redis claims, fenced status writes and network events: location-free, on the shared queue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from temporalio import activity

from activities.edge import edge
from perseus import metrics
from perseus.core.decisions import held_back_by_handoff
from perseus.core.pause import paused_for_ms, refuses_claim
from perseus.errors import ConfigError, ServiceUnavailable
from perseus.keys import retention_min_id
from perseus.models import (
    ClaimProbe,
    ClaimProbeRequest,
    ClaimRequest,
    ClaimResult,
    DropStandbyRequest,
    EventRequest,
    InstanceStatus,
    PatchResult,
    Recorded,
    RecordRequest,
    ReleaseRequest,
    StandbyList,
    StandbyQuery,
    StandbyRecord,
    StatusPatch,
)
from perseus.timing import CLAIM_OVER_INTERVALS, MAX_PAUSE_S, RELEASE_MARGIN
from perseus.tracing import span

if TYPE_CHECKING:
    from perseus.store.db import Catalog
    from perseus.store.redis_store import ClaimGates, RedisStore, StatusRead

log = logging.getLogger(__name__)

#: From this attempt on, ``record_event`` returns once the stream has the event even if PostgreSQL
#: is still unreachable. Below the workflow's SHARED_RETRY.maximum_attempts (5), so the last
#: attempts still succeed and the event's notification is sent.
DURABLE_ATTEMPTS = 4


def describe_holder(
    exchange_id: int, exchange_name: str, held: StatusRead
) -> tuple[InstanceStatus | None, str]:
    """The refusal an operator reads when someone else holds the exchange."""
    pttl_ms = held.pttl_ms
    ttl = f"{pttl_ms / 1000:.1f}s" if pttl_ms >= 0 else "no TTL"
    holder = held.record
    if holder is None:
        return None, (
            f"exchange {exchange_id} ({exchange_name}) is held by an unreadable status record "
            f"(TTL left {ttl}); wait for it to expire"
        )
    return holder, (
        f"exchange {exchange_id} ({exchange_name}) is already claimed by {holder.hostname} "
        f"({holder.ip_address or 'IP unknown'}) since {holder.connected_at or 'not connected yet'}, "
        f"state {holder.connection_state.value}, epoch {holder.epoch}; TTL left {ttl}"
    )


async def take_claim(store: RedisStore, catalog: Catalog, req: ClaimRequest) -> ClaimResult:
    """Take a new epoch and claim the status key with it, atomically against other claimants.

    Retrying is safe: the payload's instanceId is fixed by the workflow, so a claim that succeeded
    before a lost reply is recognised as ours (outcome ``self``).
    """
    status = req.status
    if status.instance_id is None or status.ttl_ms is None:
        raise ConfigError("a claim's status record needs its instanceId and ttlMs")
    # Read apart from the claim (the keys may live on different cluster nodes): a pause set in the
    # instant between is honoured from the standby's next look on; a handoff's reservation is set
    # before its release deletes the key, so whoever saw that vacancy reads the reservation here.
    gates = await store.claim_gates(status.exchange_id)
    left = paused_for_ms(gates.pause_pttl_ms)
    if refuses_claim(paused=left is not None, automatic=req.automatic):
        pause = gates.pause
        until = f" until {pause.until}" if pause is not None else ""
        by = f" by {pause.actor}" if pause is not None and pause.actor else ""
        message = f"{status.exchange_name} is paused{until}{by}: no automatic takeover"
        log.info("%s: claim by %s refused: %s", status.exchange_name, status.hostname, message)
        return ClaimResult(
            claimed=False,
            epoch=req.highest_epoch,
            message=message,
            # Finite on the wire (JSON has no infinity): a key without a TTL, as the longest pause.
            paused_ms=min(left or 0.0, MAX_PAUSE_S * 1000),
        )
    handoff = gates.handoff
    held_back = handoff is not None and held_back_by_handoff(
        reserved_for=handoff.to_host, host=status.hostname, automatic=req.automatic
    )
    if held_back and not req.take_lapsed:
        return _held_back(status, req, gates)
    # The floor is the workflow's memory and PostgreSQL's durable high-water mark: after Redis
    # lost its data, even a newly registered instance claims above every epoch ever used.
    floor = max(req.highest_epoch, await catalog.epoch_floor(status.exchange_id))
    epoch = await store.next_epoch(status.exchange_id, floor)
    payload = status.model_copy(update={"epoch": epoch}).wire()
    over = CLAIM_OVER_INTERVALS if req.take_lapsed else 0.0
    with span("redis claim", exchange=status.exchange_name, host=status.hostname, epoch=epoch) as current:
        # Held back, a claim-over may still take a silent holder's key, never the reserved vacancy.
        reply = await store.claim(
            status.exchange_id,
            payload,
            status.ttl_ms,
            take_lapsed_after=over,
            declared_margin=RELEASE_MARGIN,
            only_lapsed=held_back,
        )
        current.set_attribute("outcome", reply.outcome)
    if reply.outcome == "vacant":
        return _held_back(status, req, gates)
    if reply.outcome in ("claimed", "taken") and gates.handoff_raw is not None:
        # Whoever claims ends the reservation: the target that was handed the exchange, or the
        # handing-over side taking it back. Left to its TTL, it would hold back the race for a
        # vacancy that the new holder leaves soon after (a graceful stop right after a handoff).
        with contextlib.suppress(ServiceUnavailable):  # it expires by itself
            await store.drop_handoff(status.exchange_id, gates.handoff_raw)
    if reply.outcome == "claimed":
        await catalog.raise_epoch(status.exchange_id, epoch)
        return ClaimResult(claimed=True, epoch=epoch)
    if reply.outcome == "taken":
        await catalog.raise_epoch(status.exchange_id, epoch)
        gone = reply.previous.record if reply.previous is not None else None
        whom = f"{gone.hostname} (epoch {gone.epoch})" if gone is not None else "an unreadable record"
        log.info(
            "%s: took over the claim of %s, unrenewed past its renew deadline",
            status.exchange_name,
            whom,
        )
        return ClaimResult(claimed=True, epoch=epoch, took_over=whom)
    if reply.outcome == "self":
        # Our own record (the script matched its instanceId), written by an earlier attempt.
        ours = reply.holder.record
        held = ours.epoch if ours is not None and ours.epoch is not None else epoch
        await catalog.raise_epoch(status.exchange_id, held)
        return ClaimResult(claimed=True, epoch=held)
    holder, message = describe_holder(status.exchange_id, status.exchange_name, reply.holder)
    # Refused: the epoch drawn above was never held by anyone; what the claimant learned is the
    # holder's. The workflow remembers the answer's epoch as one it has seen, and a failsafe granter
    # refuses any holder older than that (decisions.failsafe.grant_verdict): with the drawn epoch,
    # every standby that lost a race would refuse the winner its promises (the lab found it). Not
    # needed as a floor either: the counter is past it, and after Redis lost its data no holder
    # ever had it.
    seen = max(req.highest_epoch, holder.epoch if holder is not None and holder.epoch is not None else 0)
    return ClaimResult(claimed=False, epoch=seen, holder=holder, holder_ttl_ms=reply.pttl_ms, message=message)


def _held_back(status: InstanceStatus, req: ClaimRequest, gates: ClaimGates) -> ClaimResult:
    """The refusal of a claim that found the exchange handed over to another host."""
    handoff = gates.handoff
    assert handoff is not None
    message = (
        f"{status.exchange_name} was handed over to {handoff.to_host} by {handoff.from_host}: "
        "its claim goes first"
    )
    log.info("%s: claim by %s held back: %s", status.exchange_name, status.hostname, message)
    return ClaimResult(
        claimed=False, epoch=req.highest_epoch, message=message, held_back_ms=max(0, gates.handoff_pttl_ms)
    )


class RegistryActivities:
    def __init__(self, store: RedisStore, catalog: Catalog, *, notifications: bool) -> None:
        self._store = store
        self._catalog = catalog
        #: Whether this worker delivers notifications (a webhook is configured): told to workflows
        #: with every record, so they schedule no notification activity when there is nobody to tell.
        self._notifications = notifications

    @activity.defn(name="record")
    @edge
    async def record(self, req: RecordRequest) -> Recorded:
        """A transition's status merge and its event, or an event alone, in one step.

        Run by the workflow as a local activity: the short, idempotent writes of a transition cost no
        round trip through the Temporal server each. Retrying is safe for the same reasons as
        :meth:`patch_status` and :meth:`record_event`.
        """
        patched = await self.patch_status(req.patch) if req.patch is not None else None
        stream_id = await self.record_event(EventRequest(event=req.event))
        return Recorded(stream_id=stream_id, patch=patched, notify=self._notifications)

    @edge
    async def patch_status(self, req: StatusPatch) -> PatchResult:
        """Merge fields into the status key if our claim still matches (never resets the TTL): the
        first half of :meth:`record`."""
        reply = await self._store.fenced(
            req.exchange_id, req.claim.instance_id, req.claim.epoch, mode="merge", patch=req.fields
        )
        return PatchResult(
            applied=reply.outcome == "ok", reason=None if reply.outcome == "ok" else reply.outcome
        )

    @activity.defn(name="release_claim")
    @edge
    async def release_claim(self, req: ReleaseRequest) -> PatchResult:
        """Delete the status key if it is still ours; a handoff's release reserves the exchange for
        its target first (``req.reserve``), so that no standby sees the vacancy without it."""
        if req.reserve is not None:
            await self._store.reserve_handoff(req.exchange_id, req.reserve, req.reserve_ms)
        reply = await self._store.fenced(
            req.exchange_id, req.claim.instance_id, req.claim.epoch, mode="delete"
        )
        if req.reserve is not None and reply.outcome == "fenced":
            # Someone else's now (lost meanwhile): nothing to hand over, and nobody should wait.
            # A key already gone ("missing") keeps the reservation: a retry after our own delete.
            await self._store.drop_handoff(req.exchange_id, req.reserve.model_dump_json(by_alias=True))
        return PatchResult(
            applied=reply.outcome == "ok", reason=None if reply.outcome == "ok" else reply.outcome
        )

    @edge
    async def record_event(self, req: EventRequest) -> str:
        """Append one network event, exactly once per eventId even when retried; returns the stream id
        (the second half of :meth:`record`, whose retries are its own).

        The stream (the live feed) is written first, then the durable copy in PostgreSQL with the
        stream ID it got. Both writes are idempotent by eventId, so a retry after either failed
        completes the other without duplicating anything.
        """
        event = req.event
        fields = event.fields()
        stream_id = await self._store.append_event(
            event.exchange_name, event.event_id, retention_min_id(datetime.now(UTC)), fields
        )
        try:
            await self._catalog.record_event(event, stream_id, fields)
        except ServiceUnavailable as exc:
            attempt = activity.info().attempt if activity.in_activity() else 1
            if attempt < DURABLE_ATTEMPTS:
                raise  # retried: PostgreSQL is usually back within seconds
            # The event is in the stream; failing now would also cost its notification (the
            # workflow gives up after its last attempt), so the durable copy is what is given up.
            log.warning(
                "event %s of %s is in the stream but not in PostgreSQL after %d attempts: %s",
                event.event_id,
                event.exchange_name,
                attempt,
                exc,
            )
        await metrics.count_recorded_event(self._store, event.exchange_name, stream_id, fields)
        return stream_id

    @activity.defn(name="put_standby")
    @edge
    async def put_standby(self, record: StandbyRecord) -> None:
        """Make a standby visible: its own key with a TTL, listed in the exchange's standby index."""
        await self._store.put_standby(
            record.exchange_id, record.instance_id, record.wire(), record.ttl_ms, record.priority
        )

    @activity.defn(name="list_standbys")
    @edge
    async def list_standbys(self, req: StandbyQuery) -> StandbyList:
        """Live standbys of an exchange, highest priority first (unreadable records are skipped), and
        whether the exchange is paused (then none of them may take it over by itself)."""
        standbys = await self._store.standbys(req.exchange_id)
        _, pttl = await self._store.pause(req.exchange_id)
        return StandbyList(standbys=standbys, paused=paused_for_ms(pttl) is not None)

    @activity.defn(name="probe_claim")
    @edge
    async def probe_claim(self, req: ClaimProbeRequest) -> ClaimProbe:
        """Whether the status key still holds ``req.claim``, and how long ago it was last renewed.

        The age comes from the key's remaining TTL on Redis' own clock (``ttlMs − PTTL``), so it is
        free of any host's clock skew: the workflow uses it to tell a host that still renews (it
        only lost Temporal) from one that stopped.
        """
        read = await self._store.status(req.exchange_id)
        record, pttl = read.record, read.pttl_ms
        if record is None:
            if read.exists:
                return ClaimProbe(held_by_us=False, holder="an unreadable record")
            return ClaimProbe(held_by_us=False)
        ttl = record.ttl_ms or 0
        age = max(0, ttl - pttl) if pttl >= 0 and ttl > 0 else None
        return ClaimProbe(held_by_us=record.held_by(req.claim), renewed_ms_ago=age, holder=record.hostname)

    @activity.defn(name="drop_standby")
    @edge
    async def drop_standby(self, req: DropStandbyRequest) -> None:
        await self._store.drop_standby(req.exchange_id, req.instance_id)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.record,
            self.release_claim,
            self.put_standby,
            self.list_standbys,
            self.drop_standby,
            self.probe_claim,
        ]
