"""Pause and resume an exchange (maintenance mode): the edge that writes what ``core.pause`` reads.

A pause is one Redis key with a TTL (its deadline) and one network event; nothing goes through
Temporal, so a pause holds — and ends — whatever the control plane is doing. Shared by the CLI
and, through the API, by anyone with the right to operate the exchange.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from perseus.core.pause import checked_span, pause_until, paused_for_ms
from perseus.errors import ConfigError, InvalidTransition, ServiceUnavailable
from perseus.keys import iso, retention_min_id
from perseus.models import EventKind, Exchange, NetworkEvent, PauseRecord, Wire
from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore
from perseus.timing import DEFAULT_PAUSE_S

log = logging.getLogger(__name__)


class PauseView(Wire):
    """What ``perseus pause`` / ``resume`` answer (``--json``)."""

    exchange: str
    exchange_id: int
    paused: bool
    paused_until: str | None = None
    actor: str | None = None
    #: The stream id of the event the command wrote.
    event_id: str | None = None


async def pause(
    store: RedisStore, catalog: Catalog, exchange: str, *, actor: str, for_s: float = DEFAULT_PAUSE_S
) -> PauseView:
    """Pause ``exchange`` for ``for_s`` seconds (a pause in force is replaced: new deadline)."""
    try:
        seconds = checked_span(for_s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = await catalog.exchange(exchange)
    now = datetime.now(UTC)
    until = iso(pause_until(now, seconds))
    before, pttl = await store.pause(known.id)
    await store.set_pause(
        known.id, PauseRecord(until=until, since=iso(now), actor=actor), int(seconds * 1000)
    )
    again = f" (was until {before.until})" if before is not None and paused_for_ms(pttl) is not None else ""
    detail = f"until {until}{again}: no automatic promotion or claim-over; the active instance keeps running"
    stream_id = await _record(store, catalog, known, EventKind.PAUSED, detail, actor, now)
    log.info("%s paused until %s by %s", known.name, until, actor)
    return PauseView(
        exchange=known.name,
        exchange_id=known.id,
        paused=True,
        paused_until=until,
        actor=actor,
        event_id=stream_id,
    )


async def resume(store: RedisStore, catalog: Catalog, exchange: str, *, actor: str) -> PauseView:
    """End ``exchange``'s pause now; refused (nothing changes) when it is not paused."""
    known = await catalog.exchange(exchange)
    before, _ = await store.pause(known.id)
    if not await store.clear_pause(known.id):
        raise InvalidTransition(f"{known.name} is not paused")
    now = datetime.now(UTC)
    planned = f"before {before.until}: " if before is not None else ""
    detail = f"{planned}standbys take over a vacancy again"
    stream_id = await _record(store, catalog, known, EventKind.RESUMED, detail, actor, now)
    log.info("%s resumed by %s", known.name, actor)
    return PauseView(exchange=known.name, exchange_id=known.id, paused=False, actor=actor, event_id=stream_id)


async def _record(
    store: RedisStore,
    catalog: Catalog,
    exchange: Exchange,
    kind: EventKind,
    detail: str,
    actor: str,
    now: datetime,
) -> str:
    """The event in the stream (the live feed), then its durable copy; it names the holder, if any."""
    holder = (await store.status(exchange.id)).record
    event = NetworkEvent(
        event=kind,
        event_id=str(uuid.uuid4()),
        timestamp=now,
        exchange_id=exchange.id,
        exchange_name=exchange.name,
        hostname=holder.hostname if holder is not None else "",
        ip=holder.ip_address if holder is not None else None,
        instance_id=(holder.instance_id or "") if holder is not None else "",
        epoch=(holder.epoch or 0) if holder is not None else 0,
        detail=detail,
        actor=actor,
    )
    fields = event.fields()
    stream_id = await store.append_event(exchange.name, event.event_id, retention_min_id(now), fields)
    try:
        await catalog.record_event(event, stream_id, fields)
    except ServiceUnavailable as exc:
        # The pause is in force and the live feed has its event: failing the command now would
        # tell the operator otherwise. Only the durable copy is missing.
        log.warning("%s event %s is in the stream but not in PostgreSQL: %s", kind.value, event.event_id, exc)
    return stream_id
